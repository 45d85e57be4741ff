"""The deploy loop end to end: signed slash commands → real Docker rollouts → Slack messages."""

from __future__ import annotations

import time
from typing import Any

import docker
import pytest
import requests

from bot.domain.models import Rollout, RolloutStatus
from tests.support.bot_harness import CHANNEL, InProcessBot, wait_until

pytestmark = pytest.mark.docker


def serving_version(pipeline: dict[str, Any]) -> str | None:
    """The demo build's version label from /metrics, or None when nothing answers."""
    url = pipeline["health"]["url"].replace("/healthz", "/metrics")
    try:
        text = requests.get(url, timeout=1).text
    except requests.RequestException:
        return None
    for line in text.splitlines():
        if line.startswith("demo_build_info"):
            return line.split('version="', 1)[1].split('"', 1)[0]
    return None


def finished(bot: InProcessBot, pipeline: str, version: str, timeout: float = 30) -> Rollout:
    """Wait until the newest rollout of the pipeline, which must be of `version`, has ended."""

    def done() -> Rollout | None:
        newest = bot.ctx.store.recent_rollouts(pipeline, 1)
        if newest and newest[0].version == version and not newest[0].status.in_flight_states:
            return newest[0]
        return None

    result: Rollout = wait_until(done, timeout, what=f"rollout of {version} to end")
    return result


def deploy(bot: InProcessBot, text: str, **kwargs: Any) -> str:
    response = bot.slack.command("/deploy", text, **kwargs)
    assert response.status == 200, response.text
    body = response.json()
    assert body["response_type"] == "ephemeral"
    return str(body["text"])


def containers_of(docker_client: docker.DockerClient, pipeline: dict[str, Any]) -> list[Any]:
    """This test's containers: the live name is unique on the engine, other tests share it."""
    label = f"immune.container={pipeline['container']['name']}"
    return list(docker_client.containers.list(all=True, filters={"label": label}))


def test_deploy_then_upgrade_keeps_the_old_container_stopped(
    start_bot: Any,
    web_pipeline: Any,
    docker_client: docker.DockerClient,
    emulator: Any,
    unique_name: str,
) -> None:
    web = web_pipeline()
    bot = start_bot({"pipelines": {"web": web}})

    started = time.monotonic()
    answer = deploy(bot, "web 1")
    assert "Deploying" in answer and ":1`" in answer
    first = finished(bot, "web", "1")
    assert first.status is RolloutStatus.good, first.error
    assert serving_version(web) == "1"
    first_live = time.monotonic() - started

    started = time.monotonic()
    deploy(bot, "web 2")
    second = finished(bot, "web", "2")
    assert second.status is RolloutStatus.good, second.error
    assert serving_version(web) == "2"
    second_live = time.monotonic() - started
    assert second.swap_gap_seconds is not None and second.swap_gap_seconds > 0

    # What runs is read from the engine by label, and the old version is kept, stopped.
    by_version = {c.labels["immune.version"]: c for c in containers_of(docker_client, web)}
    assert by_version["2"].status == "running" and by_version["2"].name == unique_name
    assert by_version["2"].labels["immune.rollout"] == second.id
    assert by_version["1"].status == "exited" and by_version["1"].name == f"{unique_name}--1"
    # Hardened by default.
    host_config = by_version["2"].attrs["HostConfig"]
    assert host_config["Init"] is True
    assert host_config["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host_config["SecurityOpt"]

    # One message per rollout in the channel, updated in place with its steps.
    messages = emulator.messages(CHANNEL)
    assert len(messages) == 2
    assert messages[1]["ts"] == second.message_ts
    assert "live and good" in messages[1]["text"]
    blocks_text = str(messages[1]["blocks"])
    for step in ("locate image", "start", "health check", "swap gap"):
        assert step in blocks_text
    assert emulator.calls("chat.update"), "progress is shown by updating the message"

    state = bot.ctx.store.pipeline("web")
    assert (state.live_version, state.last_good_version, state.inflight_rollout) == ("2", "2", "")
    print(
        f"\n/deploy → serving: first {first_live:.2f}s, upgrade {second_live:.2f}s, "
        f"swap gap {second.swap_gap_seconds:.3f}s"
    )


@pytest.mark.parametrize(
    ("tag", "why"),
    [("4", "health check"), ("5", "exited with code 3")],
    ids=["never-healthy", "container-exits"],
)
def test_failed_deploy_leaves_the_old_version_serving(
    start_bot: Any,
    web_pipeline: Any,
    docker_client: docker.DockerClient,
    emulator: Any,
    tag: str,
    why: str,
) -> None:
    web = web_pipeline()
    web["health"]["timeout"] = "3s"
    bot = start_bot({"pipelines": {"web": web}})
    deploy(bot, "web 1")
    assert finished(bot, "web", "1").status is RolloutStatus.good

    deploy(bot, f"web {tag}")
    failed = finished(bot, "web", tag)
    assert failed.status is RolloutStatus.failed
    assert why in failed.error
    assert failed.logs_tail, "the container's log tail is kept"
    assert serving_version(web) == "1"
    assert "1 serves again" in failed.notes
    running = [c for c in containers_of(docker_client, web) if c.status == "running"]
    assert [c.labels["immune.version"] for c in running] == ["1"]
    assert not [c for c in containers_of(docker_client, web) if c.labels["immune.version"] == tag]

    state = bot.ctx.store.pipeline("web")
    assert (state.live_version, state.last_good_version, state.inflight_rollout) == ("1", "1", "")
    message = emulator.messages(CHANNEL)[-1]
    assert "failed" in message["text"]
    assert why in str(message["blocks"])


def test_rollback_to_last_good_and_to_a_named_version(
    start_bot: Any, web_pipeline: Any, docker_client: docker.DockerClient, emulator: Any
) -> None:
    # A KPI whose data never comes (Prometheus unreachable, policy "ignore") keeps each new
    # version under watch, so the last good version stays behind the live one.
    web = web_pipeline(
        watch={"interval": "5s", "duration": "10m"},
        kpis=[{"name": "errors", "query": "vector(0)", "max": 1, "no_data": "ignore"}],
    )
    bot = start_bot({"pipelines": {"web": web}})
    deploy(bot, "web 1")
    assert finished(bot, "web", "1").status is RolloutStatus.live
    # Nothing is good yet: /rollback has nowhere to go.
    refusal = bot.slack.command("/rollback", "web").json()["text"]
    assert "no last good version" in refusal

    bot.ctx.store.update_pipeline("web", last_good_version="1")  # as if 1's watch had ended well
    deploy(bot, "web 2")
    assert finished(bot, "web", "2").status is RolloutStatus.live
    first_container = next(
        c for c in containers_of(docker_client, web) if c.labels["immune.version"] == "1"
    )

    started = time.monotonic()
    answer = bot.slack.command("/rollback", "web").json()["text"]
    assert "back to `1`" in answer
    back = finished(bot, "web", "1")
    rollback_seconds = time.monotonic() - started
    assert back.kind.value == "rollback" and back.status is RolloutStatus.good
    assert serving_version(web) == "1"
    # A rollback starts the kept container: no re-create.
    assert docker_client.containers.get(first_container.id).status == "running"
    assert bot.ctx.store.rollout(bot.ctx.store.pipeline("web").live_rollout).version == "1"  # type: ignore[union-attr]
    # 2 superseded, never good.
    two = next(r for r in bot.ctx.store.recent_rollouts("web") if r.version == "2")
    assert two.status is RolloutStatus.superseded

    # The live version is the last good one now: /rollback offers the earlier versions in a form
    # (tests/scenarios/test_deploy_form.py submits one), or names them when no form can open.
    assert bot.slack.command("/rollback", "web").text == ""
    form = emulator.latest_view("rollback_form")
    assert form is not None
    [versions] = [b for b in form["blocks"] if b.get("block_id") == "version"]
    assert [o["value"] for o in versions["element"]["options"]] == ["2"]
    emulator.fail_next("views.open", "expired_trigger_id")
    refusal = bot.slack.command("/rollback", "web").json()["text"]
    assert "already the last good version" in refusal and "`2`" in refusal
    answer = bot.slack.command("/rollback", "web 2").json()["text"]
    assert "back to `2`" in answer
    assert finished(bot, "web", "2").status is RolloutStatus.good
    assert serving_version(web) == "2"
    print(f"\n/rollback → serving: {rollback_seconds:.2f}s")


def test_status_and_history(start_bot: Any, web_pipeline: Any) -> None:
    web = web_pipeline()
    bot = start_bot({"pipelines": {"web": web, "api": web_pipeline("api")}})
    deploy(bot, "web 1")
    finished(bot, "web", "1")
    status = bot.slack.command("/pipeline", "").json()["text"]
    assert "*web*" in status and "*api*" in status and "live: `1`" in status
    one = bot.slack.command("/pipeline", "web").json()["text"]
    assert "open" in one and "last good: `1`" in one
    history = bot.slack.command("/pipeline", "history web").json()["text"]
    assert "deploy `1` by <@U0DEV1>: live and good" in history
    assert "<!date^" in history
    help_text = bot.slack.command("/pipeline", "help").json()["text"]
    assert "/pipeline history" in help_text


def test_bad_inputs_each_get_a_specific_ephemeral_error(
    start_bot: Any, web_pipeline: Any, emulator: Any
) -> None:
    web = web_pipeline()
    bot = start_bot({"pipelines": {"web": web}})
    deploy(bot, "web 1")
    finished(bot, "web", "1")
    posts_before = len(emulator.calls("chat.postMessage"))
    # No version: the deploy form opens instead (tests/scenarios/test_deploy_form.py).
    for text in ("", "web"):
        opened = len(emulator.calls("views.open"))
        assert bot.slack.command("/deploy", text).text == ""
        assert len(emulator.calls("views.open")) == opened + 1
    cases = {
        "web 1 2": "only a pipeline and a version",
        "nope 1": "There is no pipeline `nope`",
        "web -bad": "not a valid image tag",
        "web ../../etc": "neither a valid image tag nor a valid image reference",
        "web other/image:1": "but this pipeline deploys",
        "web 99": "is not on the Docker engine",
        "web 1": "already live",
        "web 2 --force": "`--force` needs a reason",
        "web 2 --force hotfix": "Only admins may `--force`",
        "web 2 --fast": "Unknown option `--fast`",
        "web 'unclosed": "Could not read that",
        "help": "/deploy <pipeline> <version>",
    }
    for text, expected in cases.items():
        response = bot.slack.command("/deploy", text)
        assert response.status == 200
        body = response.json()
        assert body["response_type"] == "ephemeral", text
        assert expected in body["text"], f"/deploy {text!r} → {body['text']!r}"
    assert bot.slack.command("/rollback", "").json()["text"].startswith("/rollback takes")
    assert "There is no pipeline" in bot.slack.command("/rollback", "nope").json()["text"]
    assert "There is no pipeline" in bot.slack.command("/pipeline", "nope").json()["text"]
    assert len(emulator.calls("chat.postMessage")) == posts_before, (
        "refusals are never posted in the channel"
    )
    assert [r.version for r in bot.ctx.store.recent_rollouts("web")] == ["1"]


def test_second_deploy_while_one_is_in_flight_is_refused(start_bot: Any, web_pipeline: Any) -> None:
    web = web_pipeline()
    web["health"]["timeout"] = 4
    bot = start_bot({"pipelines": {"web": web}})
    deploy(bot, "web 4")  # never healthy: stays in flight for the health timeout
    wait_until(lambda: bot.ctx.store.pipeline("web").inflight_rollout, 5, what="rollout in flight")
    refusal = deploy(bot, "web 2")
    assert "already in flight" in refusal and "`4`" in refusal
    assert finished(bot, "web", "4").status is RolloutStatus.failed
    assert "Deploying" in deploy(bot, "web 2")
    assert finished(bot, "web", "2").status is RolloutStatus.good


def test_bad_signature_and_stale_timestamp_are_rejected(
    start_bot: Any, web_pipeline: Any, emulator: Any
) -> None:
    bot = start_bot({"pipelines": {"web": web_pipeline()}})
    emulator.clear()
    bad = bot.slack.command("/deploy", "web 1", bad_signature=True)
    stale = bot.slack.command("/deploy", "web 1", timestamp=int(time.time()) - 6 * 60)
    assert (bad.status, stale.status) == (401, 401)
    time.sleep(0.5)
    assert bot.ctx.store.recent_rollouts("web") == []
    assert [c.method for c in emulator.calls() if c.method != "auth.test"] == []
    assert bot.ctx.store.audit_entries() == []


def test_healthz_and_metrics(start_bot: Any, web_pipeline: Any) -> None:
    bot = start_bot({"pipelines": {"web": web_pipeline()}})
    health = requests.get(bot.url + "/healthz", timeout=5)
    assert health.status_code == 200
    body = health.json()
    assert (
        body["redis"]["ok"] is True
        and body["docker"]["ok"] is True
        and body["scheduler"]["ok"] is True
    )
    assert body["prometheus"]["ok"] is False  # tests point PROMETHEUS_URL at a closed port
    deploy(bot, "web 1")
    finished(bot, "web", "1")
    metrics = requests.get(bot.url + "/metrics", timeout=5).text
    assert 'immune_rollouts_total{kind="deploy",outcome="live",pipeline="web"}' in metrics
    assert 'immune_commands_total{command="/deploy",outcome="ok"}' in metrics
    assert requests.get(bot.url + "/nope", timeout=5).status_code == 404
