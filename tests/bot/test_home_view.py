"""The Home tab's Block Kit: what one pipeline shows, and Slack's block limit on long lists."""

from __future__ import annotations

from typing import Any

from bot.domain.incidents import Incident
from bot.domain.models import (
    PipelineState,
    PipelineStatus,
    Provenance,
    Rollout,
    RolloutKind,
    RolloutStatus,
    Step,
    StepStatus,
)
from bot.domain.queue import QueuedDeploy, WaitsFor
from bot.plugins import parse_pipelines
from bot.services.home import HomePipeline, HomeReport
from bot.slack.home import PIPELINES_PER_PAGE, build_home_view, fingerprint
from tests.support.domain import web_config

DIGEST = "sha256:" + "a" * 64


def pipeline() -> Any:
    return parse_pipelines(web_config(), source="test").pipelines["web"]


def rollout(version: str, **fields: Any) -> Rollout:
    return Rollout(
        id=f"r-{version}",
        pipeline="web",
        kind=RolloutKind.deploy,
        version=version,
        reference=f"demo/web@{DIGEST}",
        requested_by="U0DEV1",
        created_at=1_700_000_000,
        **fields,
    )


def incident() -> Incident:
    return Incident(
        id="i-1",
        pipeline="web",
        channel="C0DEPLOY",
        rollout_id="r-3",
        bad_version="3",
        kpi="error_rate",
        query="q",
        tolerance="max 0.1",
        opened_at=1_700_000_100,
        whys={1: "one", 2: "two"},
    )


def item(name: str = "web", **fields: Any) -> HomePipeline:
    values: dict[str, Any] = {
        "state": PipelineState(name=name),
        "inflight": None,
        "live": None,
        "incident": None,
    }
    values.update(fields)
    return HomePipeline(name=name, pipeline=pipeline(), **values)


def report(items: list[HomePipeline], page: int = 0) -> HomeReport:
    return HomeReport("U0DEV1", items, len(items), page, ["U0ADMIN"])


def texts(view: dict[str, Any]) -> str:
    """Every mrkdwn text of the view: sections, and context elements."""
    parts = []
    for block in view["blocks"]:
        if isinstance(block.get("text"), dict):
            parts.append(block["text"]["text"])
        if block["type"] == "context":
            parts.extend(element["text"] for element in block["elements"])
    return "\n".join(parts)


def test_a_pipeline_shows_live_since_last_good_rollout_step_and_incident() -> None:
    state = PipelineState(
        name="web",
        status=PipelineStatus.halted,
        halted_by="immune",
        halted_reason="error_rate breached",
        halted_at=1_700_000_100,
        halted_incident="i-1",
        live_version="2",
        live_rollout="r-2",
        last_good_version="2",
    )
    inflight = rollout(
        "4",
        status=RolloutStatus.in_flight,
        steps=[
            Step(name="test gate", status=StepStatus.done, started_at=1_700_000_200),
            Step(name="health check", started_at=1_700_000_210),
        ],
    )
    live = rollout("2", status=RolloutStatus.good, live_at=1_700_000_050)
    view = build_home_view(
        report([item(state=state, inflight=inflight, live=live, incident=incident())])
    ).to_dict()
    shown = texts(view)
    assert ":octagonal_sign: *halted* by immune <!date^1700000100^" in shown
    assert f"live: `2` (`demo/web@{DIGEST}`) since <!date^1700000050^" in shown
    assert "last good: `2`" in shown
    assert (
        "in flight: deploy of `4` by <@U0DEV1>, in flight · step 2: health check (running)" in shown
    )
    assert "missing: why 3, why 4, why 5, root cause, failing test" in shown
    [button] = [b["accessory"] for b in view["blocks"] if b.get("accessory")]
    assert (button["action_id"], button["value"]) == ("five_whys_open", "i-1")


def test_a_pinned_live_version_shows_its_tag_digest_and_commit() -> None:
    state = PipelineState(name="web", live_version="2", live_rollout="r-2", last_good_version="2")
    live = rollout(
        "2",
        status=RolloutStatus.good,
        live_at=1_700_000_050,
        image_tag="2",
        image_digest=DIGEST,
        provenance=Provenance(
            revision="b284a864ff1c" + "0" * 28, source="https://github.com/example/web"
        ),
    )
    shown = texts(build_home_view(report([item(state=state, live=live)])).to_dict())
    assert "live: `2` (`demo/web:2` · digest `sha256:aaaaaaaaaaaa`) since <!date^" in shown
    assert (
        ", commit <https://github.com/example/web/commit/b284a864ff1c" + "0" * 28 + "|b284a86>"
    ) in shown


def test_long_lists_are_paged_within_slacks_block_limit() -> None:
    items = [item(f"p{n:03d}", incident=incident()) for n in range(95)]
    pages = [build_home_view(report(items, page)).to_dict() for page in range(4)]
    assert all(len(view["blocks"]) <= 100 for view in pages)
    names = [
        line.split("*")[1]
        for view in pages
        for line in texts(view).splitlines()
        if line.startswith("*p")
    ]
    assert names == [f"p{n:03d}" for n in range(95)]
    assert "page 4 of 4 (pipelines 91 to 95)" in texts(pages[3])
    assert PIPELINES_PER_PAGE * 3 + 3 <= 100
    # A page past the end (the list shrank) shows the last one.
    assert fingerprint(build_home_view(report(items, 9))) == fingerprint(
        build_home_view(report(items, 3))
    )


def test_someone_who_may_see_nothing_is_told_why_and_whom_to_ask() -> None:
    empty = HomeReport("U0OUTSIDER", [], 3, 0, ["U0ADMIN"])
    shown = texts(build_home_view(empty).to_dict())
    assert "You may see none of the 3 pipeline(s) here" in shown and "<@U0ADMIN>" in shown


def test_the_queue_is_shown_in_order_and_frozen_while_halted() -> None:
    waiting = tuple(
        QueuedDeploy(
            id=f"q-{n}",
            pipeline="web",
            version=version,
            requested_by=user,
            channel="C0DEPLOY",
            queued_at=1_700_000_000 + n,
            waits_for=WaitsFor.in_flight,
        )
        for n, (version, user) in enumerate([("3", "U0DEV2"), ("4", "U0DEV1")])
    )
    open_view = texts(build_home_view(report([item(queue=waiting)])).to_dict())
    assert ":hourglass_flowing_sand: queue: `3` by <@U0DEV2>, `4` by <@U0DEV1>" in open_view
    halted = PipelineState(name="web", status=PipelineStatus.halted, halted_by="U0DEV1")
    frozen = texts(build_home_view(report([item(state=halted, queue=waiting)])).to_dict())
    assert "queue (frozen while halted): `3` by <@U0DEV2>" in frozen
    assert "queue" not in texts(build_home_view(report([item()])).to_dict())
