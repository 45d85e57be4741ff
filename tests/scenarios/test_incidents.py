"""Halt, resume and the five whys, end to end: signed Slack requests → the bot → the emulator.

Pipelines are named after the test (`unique_name`), so what runs on the shared engine and in
the shared Prometheus is this test's own.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from bot.domain.incidents import Incident, KpiSample
from bot.domain.models import Rollout, RolloutKind, RolloutStatus, new_id
from bot.reports.charts import PNG_SIGNATURE
from bot.services.incidents import load_incident
from tests.scenarios.test_deploy_loop import finished, serving_version
from tests.support.bot_harness import CHANNEL, InProcessBot, docker_pipeline, free_port, wait_until
from tests.support.slack_emulator import SlackEmulator

DEV, DEV2, ADMIN, OUTSIDER = "U0DEV1", "U0DEV2", "U0ADMIN", "U0OUTSIDER"
OTHER_CHANNEL = "C0OTHER"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FULL_ANALYSIS = [
    "why 3: the new build reads CHECKOUT_URL, which production does not set",
    "Why 4 - the variable was added in the same change and nobody listed it",
    "why5: config is not part of the review checklist",
    "root cause: required settings are not checked at start-up",
    "test: <https://ci.example.com/job/1234|checkout fails without CHECKOUT_URL>",
]


# Helpers ------------------------------------------------------------------------------------


def command(
    bot: InProcessBot, name: str, text: str, user: str = DEV, channel: str = CHANNEL
) -> str:
    """Run a slash command; its (ephemeral) answer."""
    response = bot.slack.command(name, text, user_id=user, channel_id=channel)
    assert response.status == 200, response.text
    body = response.json()
    assert body["response_type"] == "ephemeral"
    return str(body["text"])


def bot_replies(emulator: SlackEmulator, thread_ts: str) -> list[str]:
    """The bot's text replies in a thread (file shares left out), oldest first."""
    return [
        m["text"]
        for m in emulator.replies(CHANNEL, thread_ts)
        if m.get("bot_id") and not m.get("files")
    ]


def say(
    bot: InProcessBot, emulator: SlackEmulator, thread_ts: str, text: str, user: str = DEV
) -> list[str]:
    """A person posts in the thread; returns what the bot replied to it."""
    before = len(bot_replies(emulator, thread_ts))
    response = bot.slack.send_message(CHANNEL, user, text, thread_ts=thread_ts)
    assert response.status == 200, response.text
    return bot_replies(emulator, thread_ts)[before:]


def buttons(message: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        element["action_id"]: element
        for block in message.get("blocks", [])
        if block["type"] == "actions"
        for element in block["elements"]
    }


def blocks_text(message: dict[str, Any]) -> str:
    return json.dumps(message.get("blocks", []), ensure_ascii=False)


def audit(bot: InProcessBot, name: str, action: str) -> list[Any]:
    return [e for e in bot.ctx.store.audit_entries(pipeline=name, limit=200) if e.action == action]


def web_without_engine(name: str, **extra: Any) -> dict[str, Any]:
    """A pipeline whose rollouts these tests never start (no image, no container)."""
    return docker_pipeline(
        image="immune-test-none/web", container_name=name, port=free_port(), **extra
    )


ERROR_RATE = {"name": "error_rate", "query": "vector(0)", "max": 0.1, "for": 2}


def breach_now(
    bot: InProcessBot, name: str, *, version: str = "3", values: tuple[float, ...] = (0.0, 0.4, 0.5)
) -> Incident:
    """A live rollout of `version` whose watch recorded `values`, then the breach (the domain's
    own Watcher.breach): for the thread and modal flows, without waiting on a real watch."""
    ctx = bot.ctx
    pipeline = ctx.pipeline(name)
    kpi = pipeline.kpis[0]
    now = ctx.clock.now()
    live_at = now - len(values) - 1
    rollout = Rollout(
        id=new_id("r"),
        pipeline=name,
        kind=RolloutKind.deploy,
        version=version,
        reference=f"{pipeline.image}:{version}",
        image_tag=version,
        requested_by=DEV,
        created_at=live_at - 2,
        status=RolloutStatus.live,
        live_at=live_at,
        channel=pipeline.channel,
    )
    ctx.store.create_rollout(rollout)
    ctx.store.update_pipeline(name, live_version=version, live_rollout=rollout.id)
    for slot, value in enumerate(values, start=1):
        sample = KpiSample(
            at=live_at + slot,
            slot=slot,
            kpi=kpi.name,
            value=value,
            verdict="breach" if kpi.breaches(value) else "ok",
        )
        ctx.store.redis.rpush(ctx.store.keys.samples(rollout.id), sample.model_dump_json())
    incident = bot.immune.watcher.breach(rollout, pipeline, kpi)
    assert incident is not None and incident.alert_ts, "the alert was posted and linked"
    return incident


# /halt and /resume without an incident -----------------------------------------------------


def test_halt_refuses_deploys_with_who_when_why_until_resume(
    start_bot: Any, emulator: SlackEmulator, unique_name: str
) -> None:
    name = unique_name
    bot = start_bot({"pipelines": {name: web_without_engine(name)}})

    answer = command(bot, "/halt", f"{name} freeze for the launch")
    assert answer == f":octagonal_sign: Halted `{name}`: freeze for the launch."
    [announcement] = [m["text"] for m in emulator.messages(CHANNEL)]
    assert f"`{name}` halted by <@{DEV}>: freeze for the launch" in announcement

    refusal = command(bot, "/deploy", f"{name} 2", user=DEV2)
    assert f"`{name}` is halted by <@{DEV}> since <!date^" in refusal
    assert "freeze for the launch" in refusal and f"`/resume {name}`" in refusal
    assert bot.ctx.store.rollout_lock_holder(name) is None, "nothing was started"

    again = command(bot, "/halt", name, user=DEV2)
    assert f"`{name}` was already halted by <@{DEV}>" in again
    assert "*halted* by" in command(bot, "/pipeline", name)

    # Halted by a person, not by a breach: no analysis is needed to resume.
    assert command(bot, "/resume", name, user=DEV2) == f"`{name}` is open again."
    assert not bot.ctx.store.pipeline(name).halted
    assert "resumed by <@U0DEV2>" in emulator.messages(CHANNEL)[-1]["text"]
    assert command(bot, "/resume", name) == f"`{name}` is not halted; deploys are open."
    assert [e.outcome for e in audit(bot, name, "halt")] == ["halted"]
    assert [e.outcome for e in audit(bot, name, "resume")] == ["resumed"]


def test_halt_all_stops_every_pipeline_in_one_command(
    start_bot: Any, emulator: SlackEmulator, unique_name: str
) -> None:
    emulator.add_channel(OTHER_CHANNEL, "other")
    names = [f"{unique_name}-a", f"{unique_name}-b", f"{unique_name}-c"]
    pipelines = {
        names[0]: web_without_engine(names[0]),
        names[1]: web_without_engine(names[1]),
        names[2]: web_without_engine(names[2], channel=OTHER_CHANNEL),
    }
    bot = start_bot({"pipelines": pipelines})
    command(bot, "/halt", f"{names[1]} already stopped", user=DEV2)

    answer = command(bot, "/halt", "all incident in the payment provider")
    assert f"Halted `{names[0]}`, `{names[2]}`: incident in the payment provider." in answer
    assert f"`{names[1]}` was already halted by <@{DEV2}>" in answer
    assert all(bot.ctx.store.pipeline(n).halted for n in names)
    # One announcement per channel for the whole command.
    assert f"`{names[0]}` halted by <@{DEV}>" in emulator.messages(CHANNEL)[-1]["text"]
    assert f"`{names[2]}` halted by <@{DEV}>" in emulator.messages(OTHER_CHANNEL)[-1]["text"]

    for n, channel in zip(names, (CHANNEL, CHANNEL, OTHER_CHANNEL), strict=True):
        assert "is halted by" in command(bot, "/deploy", f"{n} 2", channel=channel)
    command(bot, "/resume", names[2])
    assert [bot.ctx.store.pipeline(n).halted for n in names] == [True, True, False]


@pytest.mark.docker
def test_halt_stops_a_rollout_in_flight_at_a_safe_point(
    start_bot: Any,
    demo_images: Any,
    docker_client: docker.DockerClient,
    emulator: SlackEmulator,
    unique_name: str,
) -> None:
    name = unique_name
    web = docker_pipeline(
        image=demo_images.repo,
        container_name=name,
        port=free_port(),
        # A slow test gate: the halt lands while it runs, before the swap.
        tests={"command": ["/bin/sh", "-c", "sleep 3; exec /bin/sh /tests/run"], "timeout": "30s"},
    )
    bot = start_bot({"pipelines": {name: web}})
    command(bot, "/deploy", f"{name} 1")
    assert finished(bot, name, "1").status is RolloutStatus.good
    assert serving_version(web) == "1"

    command(bot, "/deploy", f"{name} 2")

    def in_test_gate() -> Rollout | None:
        newest = bot.ctx.store.recent_rollouts(name, 1)
        gate = newest[0].step("test gate") if newest and newest[0].version == "2" else None
        return newest[0] if gate is not None and gate.ended_at is None else None

    rollout = wait_until(in_test_gate, 20, what="the test gate of 2 to run")
    answer = command(bot, "/halt", f"{name} bad migration spotted")
    assert f"the deploy of `2` ({rollout.id}) in flight stops at its next safe point" in answer

    cancelled = finished(bot, name, "2")
    assert cancelled.status is RolloutStatus.cancelled
    assert f"pipeline halted by {DEV}: bad migration spotted" in cancelled.error
    # Stopped between the test gate and the swap: the swap never began.
    assert [(s.name, s.status.value) for s in cancelled.steps] == [
        ("locate image", "done"),
        ("test gate", "done"),
    ]
    service_containers = docker_client.containers.list(
        all=True, filters={"label": [f"immune.pipeline={name}", "immune.role=service"]}
    )
    assert [(c.labels["immune.version"], c.status) for c in service_containers] == [
        ("1", "running")
    ]
    assert serving_version(web) == "1"
    state = bot.ctx.store.pipeline(name)
    assert (state.live_version, state.inflight_rollout) == ("1", "")
    assert "cancelled" in emulator.message(CHANNEL, cancelled.message_ts or "")["text"]  # type: ignore[index]

    assert command(bot, "/resume", name) == f"`{name}` is open again."
    command(bot, "/deploy", f"{name} 2")
    assert finished(bot, name, "2").status is RolloutStatus.good
    assert serving_version(web) == "2"


# A real breach, end to end ----------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.prometheus
def test_real_breach_alert_chart_five_whys_and_resume(
    start_bot: Any,
    demo_images: Any,
    prometheus_server: Any,
    emulator: SlackEmulator,
    unique_name: str,
    tmp_path: Path,
) -> None:
    name = unique_name
    port = free_port()
    selector = f'job="web",pipeline="{name}"'
    kpi = {
        "name": "error_rate",
        "query": f'sum(rate(http_requests_total{{{selector},code=~"5.."}}[5s]))'
        f" / sum(rate(http_requests_total{{{selector}}}[5s]))",
        "max": 0.1,
        "for": 2,
        # A fresh series needs two scrapes before rate() answers: those polls are skipped.
        "no_data": "ignore",
    }
    web = docker_pipeline(
        image=demo_images.repo,
        container_name=name,
        port=port,
        watch={"interval": "1s", "duration": "8s", "warmup": 1},
        kpis=[kpi],
    )
    prometheus_server.set_targets({"pipeline": name}, [f"127.0.0.1:{port}"])
    bot = start_bot(
        {"admins": [ADMIN], "pipelines": {name: web}}, prometheus_url=prometheus_server.url
    )

    command(bot, "/deploy", f"{name} 1")
    good = wait_until(
        lambda: next(
            (r for r in bot.ctx.store.recent_rollouts(name, 1) if r.status is RolloutStatus.good),
            None,
        ),
        30,
        what="1 to pass its watch",
    )
    assert good.version == "1" and bot.ctx.store.pipeline(name).last_good_version == "1"

    command(bot, "/deploy", f"{name} 3")  # half of its requests fail
    bad = wait_until(
        lambda: next(
            (
                r
                for r in bot.ctx.store.recent_rollouts(name, 3)
                if r.version == "3" and r.incident_id
            ),
            None,
        ),
        40,
        what="the breach of 3",
    )
    assert bad.status is RolloutStatus.rolled_back
    incident = wait_until(
        lambda: (i := load_incident(bot.ctx.store, bad.incident_id or "")).alert_ts and i,
        20,
        what="the breach alert",
    )
    assert incident.bad_version == "3" and incident.restored_version == "1"
    breaching = incident.breaching_samples()
    assert len(breaching) >= 2 and all((s.value or 0) > 0.1 for s in breaching)
    restore = finished(bot, name, "1")
    assert restore.kind is RolloutKind.auto_rollback and restore.status is RolloutStatus.good
    assert serving_version(web) == "1"

    # The alert: a top-level message in the pipeline's channel.
    alert = emulator.message(CHANNEL, incident.alert_ts or "")
    assert alert is not None
    assert alert.get("thread_ts", alert["ts"]) == alert["ts"], "not a reply: its thread's parent"
    text = blocks_text(alert)
    assert alert["blocks"][0]["type"] == "header"
    assert f"KPI breach on {name}: error_rate" in alert["blocks"][0]["text"]["text"]
    for fact in (
        "*KPI*\\n`error_rate`",
        "`error_rate ≤ 0.1`, 2 poll(s) in a row",
        f"*Bad version*\\n`3` ({bad.id})",
        "*Restored version*\\n`1`",
        "*Samples that breached*",
        "*What immune did*",
        f"halted `{name}`",
        f"rolling back to `1` ({incident.rollback_rollout_id})",
    ):
        assert fact in text, fact
    assert text.count("<!date^") >= 4, "times are Slack dates, shown in each reader's zone"
    assert f"`{breaching[-1].value:.4g}`" in text
    actions = buttons(alert)
    assert actions["five_whys_open"]["value"] == incident.id
    assert "rollback_confirm" not in actions, "auto-rollback is on: nothing to confirm"
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "breach-alert.json").write_text(
        json.dumps(alert["blocks"], indent=2, ensure_ascii=False)
    )

    # The chart, uploaded into the alert's thread once the rollback is over.
    emulator.wait_for(
        "files.completeUploadExternal", lambda call: call.body.get("thread_ts") == incident.alert_ts
    )
    [chart] = [f for f in emulator.uploaded_files().values() if f["thread_ts"] == incident.alert_ts]
    assert chart["channel"] == CHANNEL and chart["completed"]
    assert chart["filename"] == f"{incident.id}-error_rate.png"
    assert chart["title"].startswith("error_rate on ")
    png: bytes = chart["bytes"]
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    (tmp_path / "breach-chart.png").write_bytes(png)
    (ARTIFACTS / "breach-chart.png").write_bytes(png)
    [upload] = [c for c in emulator.calls("files.completeUploadExternal")]
    assert upload.body["thread_ts"] == incident.alert_ts

    # The thread opens with the template.
    template = bot_replies(emulator, incident.alert_ts or "")[0]
    for part in ("*Why 1:*", "*Why 5:*", "*Root cause:*", "*Failing test:*"):
        assert part in template

    # Halted by the breach: deploys are refused, and /resume waits for the analysis.
    refusal = command(bot, "/deploy", f"{name} 2")
    assert "is halted by immune since" in refusal and "KPI breach" in refusal
    assert "five whys, root cause and failing test come first" in refusal

    thread = incident.alert_ts or ""
    [reply] = say(bot, emulator, thread, "why 1: checkout answered 500 for half the requests")
    assert "Recorded why 1" in reply and "Still missing: why 2," in reply
    assert say(bot, emulator, thread, "looking at the logs now", user=DEV2) == []
    [reply] = say(
        bot, emulator, thread, "Why 2 - the new build cannot reach the payment API", user=DEV2
    )
    assert "Recorded why 2 from <@U0DEV2>" in reply
    [reply] = say(bot, emulator, thread, "why 7: one too many")
    assert "`why 7` is not one of the five whys: use `why 1` to `why 5`." in reply
    [reply] = say(bot, emulator, thread, "test: not-a-link")
    assert "`not-a-link` is not a link" in reply

    refusal = command(bot, "/resume", name)
    assert f"`{name}` stays halted until incident {incident.id} is analysed." in refusal
    assert "Missing: why 3, why 4, why 5, root cause, failing test." in refusal
    assert bot.ctx.store.pipeline(name).halted

    for line in FULL_ANALYSIS:
        [reply] = say(bot, emulator, thread, line)
    assert "The five whys, root cause and failing test are recorded" in reply
    assert (
        load_incident(bot.ctx.store, incident.id).failing_test == "https://ci.example.com/job/1234"
    )

    assert command(bot, "/resume", name, user=DEV2) == f"`{name}` is open again."
    assert not bot.ctx.store.pipeline(name).halted
    summary = bot_replies(emulator, thread)[-1]
    assert f"`{name}` resumed by <@{DEV2}>" in summary
    assert ">*Why 3:* the new build reads CHECKOUT_URL" in summary
    assert ">*Failing test:* <https://ci.example.com/job/1234>" in summary
    resumed = load_incident(bot.ctx.store, incident.id)
    assert resumed.resumed_by == DEV2 and resumed.force_reason == ""

    # The post-mortem export: Markdown within one ephemeral reply.
    export = command(bot, "/pipeline", f"incident {incident.id}")
    assert len(export) <= 3900
    assert export.startswith(f"# Incident {incident.id}: error_rate breach on {name}")
    for part in (
        "## Timeline",
        "`deploy` → accepted",
        "`breach` → halted",
        "`resume` → resumed",
        "## Samples of error_rate",
        "(**breach**)",
        "3. the new build reads CHECKOUT_URL",
        "## Root cause\nrequired settings are not checked at start-up",
        "<https://ci.example.com/job/1234>",
    ):
        assert part in export, part
    print(f"\nbreach chart: {ARTIFACTS / 'breach-chart.png'} ({len(png)} bytes)")


# The modal, forcing, and confirming a rollback -----------------------------------------------


def test_five_whys_through_the_modal(
    start_bot: Any, emulator: SlackEmulator, unique_name: str
) -> None:
    name = unique_name
    bot = start_bot({"pipelines": {name: web_without_engine(name, kpis=[ERROR_RATE])}})
    incident = breach_now(bot, name)
    alert_ts = incident.alert_ts or ""

    pressed = bot.slack.block_action("five_whys_open", message_ts=alert_ts, user_id=DEV2)
    assert pressed.status == 200
    [opened] = emulator.wait_for("views.open")
    assert opened.ok, opened.response
    view = emulator.latest_view("five_whys")
    assert view is not None and view["private_metadata"] == incident.id
    inputs = [b["block_id"] for b in view["blocks"] if b["type"] == "input"]
    assert inputs == [f"five_whys_why_{n}" for n in range(1, 6)] + [
        "five_whys_root_cause",
        "five_whys_test",
    ]

    answers = {f"five_whys_why_{n}": {"answer": f"reason {n}"} for n in range(1, 6)}
    answers["five_whys_root_cause"] = {"answer": "no canary"}
    answers["five_whys_test"] = {"answer": "the flaky one"}
    refused = bot.slack.view_submission("five_whys", answers, user_id=DEV2)
    assert refused.status == 200
    body = refused.json()
    assert body["response_action"] == "errors" and list(body["errors"]) == ["five_whys_test"]
    assert load_incident(bot.ctx.store, incident.id).missing() == [
        "why 1",
        "why 2",
        "why 3",
        "why 4",
        "why 5",
        "root cause",
        "failing test",
    ]

    answers["five_whys_test"] = {"answer": "https://ci.example.com/job/7"}
    accepted = bot.slack.view_submission("five_whys", answers, user_id=DEV2)
    assert accepted.status == 200 and accepted.text == ""
    stored = load_incident(bot.ctx.store, incident.id)
    assert stored.missing() == [] and stored.whys[5] == "reason 5"
    assert stored.answered_by["root cause"] == DEV2
    reply = bot_replies(emulator, alert_ts)[-1]
    assert "Recorded why 1, why 2, why 3, why 4, why 5, root cause, failing test" in reply
    assert "`/resume" in reply
    # The alert follows: analysis recorded.
    assert "Five whys, root cause and failing test recorded" in blocks_text(
        emulator.message(CHANNEL, alert_ts) or {}
    )

    # Opened again, the form shows what is recorded.
    bot.slack.block_action("five_whys_open", message_ts=alert_ts)
    view = emulator.latest_view("five_whys")
    assert view is not None
    prefilled = {
        b["block_id"]: b["element"].get("initial_value")
        for b in view["blocks"]
        if b["type"] == "input"
    }
    assert prefilled["five_whys_test"] == "https://ci.example.com/job/7"

    assert command(bot, "/resume", name) == f"`{name}` is open again."


def test_thread_edits_replace_answers_and_strangers_are_ignored(
    start_bot: Any, emulator: SlackEmulator, unique_name: str
) -> None:
    name = unique_name
    bot = start_bot({"pipelines": {name: web_without_engine(name, kpis=[ERROR_RATE])}})
    incident = breach_now(bot, name)
    thread = incident.alert_ts or ""
    [template] = bot_replies(emulator, thread)

    # Another bot's message, a message in another thread, a top-level one: no reply.
    other_bot = bot.slack.message_event(
        CHANNEL, "U0OTHERBOT", "why 1: a bot's guess", thread_ts=thread
    )
    assert (
        bot.slack.event({**other_bot, "bot_id": "B0OTHER", "subtype": "bot_message"}).status == 200
    )
    unrelated = emulator.add_message(CHANNEL, "a deploy question", user=DEV2)
    bot.slack.send_message(CHANNEL, DEV, "why 1: wrong thread", thread_ts=unrelated)
    bot.slack.send_message(CHANNEL, DEV, "why 1: not in a thread")
    assert bot_replies(emulator, thread) == [template]
    assert load_incident(bot.ctx.store, incident.id).whys == {}

    # An answer, then its edit (Slack's message_changed) replaces it.
    answer_ts = emulator.next_ts()
    [reply] = say_at(bot, emulator, thread, "why 2: the cache was cold", ts=answer_ts)
    assert "Recorded why 2" in reply
    response = bot.slack.send_message(
        CHANNEL, DEV, "why 3: the cache was cold", ts=answer_ts, thread_ts=thread, edited=True
    )
    assert response.status == 200
    assert load_incident(bot.ctx.store, incident.id).whys == {3: "the cache was cold"}
    reply = bot_replies(emulator, thread)[-1]
    assert "Recorded why 3" in reply and "edit removed why 2" in reply

    # The alert shows how far the analysis is.
    alert = emulator.message(CHANNEL, thread) or {}
    assert "Analysis 1/7 recorded; missing: why 1, why 2, why 4" in blocks_text(alert)


def say_at(
    bot: InProcessBot, emulator: SlackEmulator, thread_ts: str, text: str, *, ts: str
) -> list[str]:
    before = len(bot_replies(emulator, thread_ts))
    assert bot.slack.send_message(CHANNEL, DEV, text, thread_ts=thread_ts, ts=ts).status == 200
    return bot_replies(emulator, thread_ts)[before:]


def test_force_resume_is_for_admins_and_audited(
    start_bot: Any, emulator: SlackEmulator, unique_name: str
) -> None:
    name = unique_name
    bot = start_bot(
        {"admins": [ADMIN], "pipelines": {name: web_without_engine(name, kpis=[ERROR_RATE])}}
    )
    incident = breach_now(bot, name)
    say(bot, emulator, incident.alert_ts or "", "why 1: known so far")

    refusal = command(bot, "/resume", f"{name} --force hotfix verified")
    assert "Only admins may `/resume --force`." in refusal and f"<@{ADMIN}>" in refusal
    assert bot.ctx.store.pipeline(name).halted
    assert [(e.actor, e.outcome, e.detail) for e in audit(bot, name, "resume")] == [
        (DEV, "refused", "force_not_admin")
    ]
    assert "needs a reason" in command(bot, "/resume", f"{name} --force", user=ADMIN)

    answer = command(bot, "/resume", f"{name} --force hotfix verified", user=ADMIN)
    assert answer == f"`{name}` is open again (forced: hotfix verified)."
    assert not bot.ctx.store.pipeline(name).halted
    forced = audit(bot, name, "resume")[0]
    assert (forced.actor, forced.outcome, forced.detail) == (ADMIN, "forced", "hotfix verified")
    assert forced.command == f"/resume {name} --force hotfix verified"
    stored = load_incident(bot.ctx.store, incident.id)
    assert (stored.resumed_by, stored.force_reason) == (ADMIN, "hotfix verified")
    summary = bot_replies(emulator, incident.alert_ts or "")[-1]
    assert f"resumed by <@{ADMIN}>" in summary and "(forced: hotfix verified)" in summary
    assert ">*Why 1:* known so far" in summary and ">*Root cause:* _(missing)_" in summary


@pytest.mark.docker
def test_rollback_confirm_when_auto_rollback_is_off(
    start_bot: Any,
    demo_images: Any,
    emulator: SlackEmulator,
    unique_name: str,
) -> None:
    name = unique_name
    web = docker_pipeline(
        image=demo_images.repo,
        container_name=name,
        port=free_port(),
        deployers=[DEV, DEV2],
        auto_rollback=False,
        # No Prometheus answers (policy ignore): each version stays under watch until the
        # breach below is raised through the domain.
        watch={"interval": "5s", "duration": "10m"},
        kpis=[{**ERROR_RATE, "no_data": "ignore"}],
    )
    bot = start_bot({"pipelines": {name: web}})
    command(bot, "/deploy", f"{name} 1")
    assert finished(bot, name, "1").status is RolloutStatus.live
    bot.ctx.store.update_pipeline(name, last_good_version="1")  # as if 1's watch had ended well
    command(bot, "/deploy", f"{name} 3")
    bad = finished(bot, name, "3")
    assert bad.status is RolloutStatus.live

    pipeline = bot.ctx.pipeline(name)
    incident = bot.immune.watcher.breach(bad, pipeline, pipeline.kpis[0])
    assert incident is not None and incident.alert_ts
    assert incident.restored_version == "1" and incident.rollback_rollout_id is None
    alert = emulator.message(CHANNEL, incident.alert_ts)
    assert alert is not None
    confirm = buttons(alert)["rollback_confirm"]
    assert confirm["value"] == incident.id and confirm["style"] == "danger"
    assert "waiting for someone to confirm the rollback" in blocks_text(alert)
    assert serving_version(web) == "3", "nothing is rolled back before someone confirms"
    assert bot.ctx.store.pipeline(name).halted

    # Only deployers may roll back, as with /rollback.
    refused = bot.slack.block_action(
        "rollback_confirm", message_ts=incident.alert_ts, user_id=OUTSIDER
    )
    [post] = emulator.wait_for_response(id=refused.response_url)
    assert f"You are not a deployer of `{name}`." in (post.text or "")

    # Two people press at once: one rollback.
    presses: list[Any] = []
    threads = [
        threading.Thread(
            target=lambda user=user: presses.append(
                bot.slack.block_action(
                    "rollback_confirm", message_ts=incident.alert_ts or "", user_id=user
                )
            )
        )
        for user in (DEV, DEV2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    texts = sorted(emulator.wait_for_response(id=p.response_url)[0].text or "" for p in presses)
    started = [t for t in texts if t.startswith(f"Rolling `{name}` back to `1`")]
    assert len(started) == 1, texts
    assert "already confirmed the rollback" in " ".join(texts)

    restore = finished(bot, name, "1")
    assert restore.kind is RolloutKind.rollback and restore.status is RolloutStatus.good
    assert serving_version(web) == "1"
    rollbacks = [
        r for r in bot.ctx.store.recent_rollouts(name, 10) if r.kind is RolloutKind.rollback
    ]
    assert [r.id for r in rollbacks] == [restore.id]
    stored = load_incident(bot.ctx.store, incident.id)
    assert stored.rollback_rollout_id == restore.id
    assert stored.rollback_confirmed_by in (DEV, DEV2)
    assert bot.ctx.store.rollout(bad.id).status is RolloutStatus.rolled_back  # type: ignore[union-attr]
    assert bot.ctx.store.pipeline(name).halted, "rolling back does not resume"
    assert "confirmed the rollback" in bot_replies(emulator, incident.alert_ts)[-1]
    alert = emulator.message(CHANNEL, incident.alert_ts)
    assert alert is not None and "rollback_confirm" not in buttons(alert)

    # A press from a client still showing the old alert.
    later = bot.slack.block_action(
        "rollback_confirm", incident.id, message_ts=incident.alert_ts, user_id=DEV
    )
    [post] = emulator.wait_for_response(id=later.response_url)
    assert f"<@{stored.rollback_confirmed_by}> already confirmed the rollback" in (post.text or "")
    time.sleep(0.2)
    assert (
        len([r for r in bot.ctx.store.recent_rollouts(name, 10) if r.kind is RolloutKind.rollback])
        == 1
    )
