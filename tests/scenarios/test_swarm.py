"""Swarm services as a deploy target, on a real single-node Swarm with host networking.

Two replicas on one node cannot hold one port, so each task listens on a port made from its
slot: `PORT=<prefix>{{.Task.Slot}}` (Swarm expands the template per task), and the pipeline's
health URL names each slot with `{slot}`. Updates run stop-first, one task at a time.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest
import requests

from bot.domain.models import Rollout, RolloutKind, RolloutStatus
from bot.services.incidents import load_incident
from tests.support.bot_harness import CHANNEL, InProcessBot, wait_until
from tests.support.services import remove_leftovers

pytestmark = [pytest.mark.docker, pytest.mark.swarm]

REPLICAS = 2


@pytest.fixture(scope="session")
def swarm(docker_client: docker.DockerClient) -> Iterator[docker.DockerClient]:
    """The engine in Swarm mode; initialised here (and left at the end) only if it was not."""
    state = docker_client.info()["Swarm"]
    initialised = False
    if state.get("LocalNodeState") != "active":
        docker_client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
        initialised = True
    elif not state.get("ControlAvailable"):
        pytest.skip("this engine is a Swarm worker; services need a manager")
    # Services of killed sessions could only be listed once the engine is a manager.
    remove_leftovers(docker_client)
    try:
        yield docker_client
    finally:
        if initialised:
            docker_client.swarm.leave(force=True)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def slot_port_prefix(replicas: int = REPLICAS) -> str:
    """A prefix P such that ports P1..P<replicas> are free: each task slot's own port."""
    for _ in range(200):
        prefix = str(random.randint(2000, 6552))
        if all(_bindable(int(f"{prefix}{slot}")) for slot in range(1, replicas + 1)):
            return prefix
    raise RuntimeError("no free port prefix")


def slot_urls(pipeline: dict[str, Any], path: str = "/healthz") -> list[str]:
    url = pipeline["health"]["url"].replace("/healthz", path)
    return [url.replace("{slot}", str(slot)) for slot in range(1, REPLICAS + 1)]


def serving_versions(pipeline: dict[str, Any]) -> list[str | None]:
    """The demo build's version on each task slot's port (None where nothing answers)."""
    versions: list[str | None] = []
    for url in slot_urls(pipeline, "/metrics"):
        try:
            text = requests.get(url, timeout=1).text
        except requests.RequestException:
            versions.append(None)
            continue
        line = next((line for line in text.splitlines() if line.startswith("demo_build_info")), "")
        versions.append(line.split('version="', 1)[1].split('"', 1)[0] if line else None)
    return versions


@pytest.fixture
def swarm_pipeline(
    swarm: docker.DockerClient, demo_images: Any, unique_name: str
) -> Callable[..., dict[str, Any]]:
    """A `target: swarm` pipeline: 2 replicas of the demo image, each on its slot's port."""

    def make(**extra: Any) -> dict[str, Any]:
        prefix = slot_port_prefix()
        pipeline: dict[str, Any] = {
            "channel": CHANNEL,
            "target": "swarm",
            "image": demo_images.repo,
            "container": {
                "name": unique_name,
                "network_mode": "host",
                "environment": {"PORT": prefix + "{{.Task.Slot}}"},
                # The demo image has busybox wget: a task that never gets healthy fails the update.
                "healthcheck": {
                    "test": ["CMD-SHELL", "wget -q -O- http://127.0.0.1:$PORT/healthz"],
                    "interval": 500_000_000,
                    "timeout": 1_000_000_000,
                    "retries": 3,
                },
            },
            "health": {
                "url": f"http://127.0.0.1:{prefix}{{slot}}/healthz",
                "timeout": "6s",
                "interval": "100ms",
            },
            "swarm": {
                "replicas": REPLICAS,
                "update": {"parallelism": 1, "delay": "0s", "monitor": "1s"},
                "rollback": {"parallelism": 1, "delay": "0s", "monitor": "1s"},
            },
        }
        pipeline.update(extra)
        return pipeline

    return make


def both_at_once(pipeline: dict[str, Any]) -> None:
    """Replace both tasks together (faster), where a test does not follow them one by one."""
    pipeline["swarm"]["update"]["parallelism"] = REPLICAS
    pipeline["swarm"]["rollback"]["parallelism"] = REPLICAS


def deploy(bot: InProcessBot, text: str, command: str = "/deploy") -> str:
    response = bot.slack.command(command, text)
    assert response.status == 200, response.text
    return str(response.json()["text"])


def ended(
    bot: InProcessBot, version: str, timeout: float = 60, kind: RolloutKind | None = None
) -> Rollout:
    """The newest rollout of `version` (of `kind`), once it is no longer in flight."""

    def done() -> Rollout | None:
        for rollout in bot.ctx.store.recent_rollouts("web", 5):
            if rollout.version == version and (kind is None or rollout.kind is kind):
                if rollout.status.in_flight_states:
                    return None
                # Its lock is released just after the outcome is recorded.
                inflight = bot.ctx.store.pipeline("web").inflight_rollout
                return None if inflight == rollout.id else rollout
        return None

    result: Rollout = wait_until(done, timeout, what=f"rollout of {version} to end")
    return result


def service_of(client: docker.DockerClient, name: str) -> Any:
    return client.services.get(name)


class SlotProber:
    """Probes every slot's health URL every 20 ms and keeps each slot's longest outage."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.longest = dict.fromkeys(urls, 0.0)
        self.any_down_together = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._session = requests.Session()
        self._session.trust_env = False

    def __enter__(self) -> SlotProber:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _up(self, url: str) -> bool:
        try:
            return self._session.get(url, timeout=0.5).status_code == 200
        except requests.RequestException:
            return False

    def _run(self) -> None:
        down_since: dict[str, float | None] = dict.fromkeys(self.urls)
        while not self._stop.is_set():
            now = time.monotonic()
            states = {url: self._up(url) for url in self.urls}
            if not any(states.values()):
                self.any_down_together = True
            for url, up in states.items():
                since = down_since[url]
                if up and since is not None:
                    self.longest[url] = max(self.longest[url], now - since)
                    down_since[url] = None
                elif not up and since is None:
                    down_since[url] = now
            self._stop.wait(0.02)


def test_deploy_creates_the_service_then_updates_it_task_by_task(
    start_bot: Any, swarm_pipeline: Any, swarm: docker.DockerClient, emulator: Any, unique_name: str
) -> None:
    web = swarm_pipeline()
    bot = start_bot({"pipelines": {"web": web}})

    assert "Deploying" in deploy(bot, "web 1")
    first = ended(bot, "1")
    assert first.status is RolloutStatus.good, first.error
    assert [s.name for s in first.steps] == ["locate image", "create service", "health check"]
    assert serving_versions(web) == ["1", "1"]

    service = service_of(swarm, unique_name)
    spec = service.attrs["Spec"]
    assert spec["Mode"] == {"Replicated": {"Replicas": 2}}
    # Every field set: not the SDK's defaults (parallelism 0, continue), not left to the engine.
    assert spec["UpdateConfig"] == {
        "Parallelism": 1,
        "FailureAction": "rollback",
        "Monitor": 1_000_000_000,
        "MaxFailureRatio": 0,
        "Order": "stop-first",
    }
    assert spec["RollbackConfig"] == {
        "Parallelism": 1,
        "FailureAction": "pause",
        "Monitor": 1_000_000_000,
        "MaxFailureRatio": 0,
        "Order": "stop-first",
    }
    labels = spec["Labels"]
    assert (labels["immune.pipeline"], labels["immune.version"], labels["immune.rollout"]) == (
        "web",
        "1",
        first.id,
    )
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container["Init"] is True and container["CapabilityDrop"] == ["ALL"]
    assert container["Labels"]["immune.rollout"] == first.id
    assert any("no-new-privileges" in note for note in first.notes)
    assert (
        bot.ctx.target(bot.ctx.config.pipelines["web"])
        .live("web", bot.ctx.config.pipelines["web"])
        .version
        == "1"
    )

    with SlotProber(slot_urls(web)) as prober:
        started = time.monotonic()
        deploy(bot, "web 2")
        second = ended(bot, "2")
        took = time.monotonic() - started
    assert second.status is RolloutStatus.good, second.error
    assert [s.name for s in second.steps] == ["locate image", "update service", "health check"]
    assert serving_versions(web) == ["2", "2"]
    assert not prober.any_down_together, "one task at a time: the other slot kept serving"
    service.reload()
    assert service.attrs["UpdateStatus"]["State"] == "completed"
    assert service.attrs["PreviousSpec"]["Labels"]["immune.version"] == "1"

    # The one rollout message followed the update task by task.
    updates = [str(call.body.get("blocks", "")) for call in emulator.calls("chat.update")]
    assert any("1/2 updated" in blocks for blocks in updates)
    assert any("2/2 updated" in blocks for blocks in updates)
    outages = ", ".join(
        f"{url.split(':')[2].split('/')[0]}: {gap:.2f}s" for url, gap in prober.longest.items()
    )
    print(
        f"\nswarm update of 2 replicas, stop-first, 1 at a time: {took:.1f}s; longest outage per slot {outages}"
    )


@pytest.mark.parametrize(
    ("tag", "why"),
    [("4", "unhealthy"), ("5", "exit 3")],
    ids=["tasks-never-healthy", "tasks-crash"],
)
def test_failed_update_ends_on_the_previous_spec(
    start_bot: Any,
    swarm_pipeline: Any,
    swarm: docker.DockerClient,
    emulator: Any,
    unique_name: str,
    tag: str,
    why: str,
) -> None:
    web = swarm_pipeline()
    bot = start_bot({"pipelines": {"web": web}})
    deploy(bot, "web 1")
    assert ended(bot, "1").status is RolloutStatus.good

    deploy(bot, f"web {tag}")
    failed = ended(bot, tag)
    assert failed.status is RolloutStatus.failed
    assert "Swarm rolled the update back" in (failed.error or "")
    assert why in (failed.error or "")
    assert "1 serves again" in failed.notes
    assert serving_versions(web) == ["1", "1"]

    service = service_of(swarm, unique_name)
    assert service.attrs["UpdateStatus"]["State"] == "rollback_completed"
    assert service.attrs["Spec"]["Labels"]["immune.version"] == "1"
    running = [
        t
        for t in service.tasks(filters={"desired-state": "running"})
        if t["Status"]["State"] == "running"
    ]
    assert sorted(t["Spec"]["ContainerSpec"]["Labels"]["immune.version"] for t in running) == [
        "1",
        "1",
    ]

    state = bot.ctx.store.pipeline("web")
    assert (state.live_version, state.last_good_version, state.inflight_rollout) == ("1", "1", "")
    message = emulator.messages(CHANNEL)[-1]
    assert "failed" in message["text"]
    assert "1 serves again" in str(message["blocks"])


def test_rollback_uses_swarms_rollback_for_the_previous_spec_and_an_update_otherwise(
    start_bot: Any, swarm_pipeline: Any, swarm: docker.DockerClient, unique_name: str
) -> None:
    web = swarm_pipeline()
    both_at_once(web)
    bot = start_bot({"pipelines": {"web": web}})
    for version in ("1", "2", "6"):
        deploy(bot, f"web {version}")
        assert ended(bot, version).status is RolloutStatus.good
    service = service_of(swarm, unique_name)
    assert service.attrs["PreviousSpec"]["Labels"]["immune.version"] == "2"

    # 1 is not Swarm's previous spec (2 is): a new update, from immune's own history.
    assert "back to `1`" in deploy(bot, "web 1", "/rollback")
    back = ended(bot, "1", kind=RolloutKind.rollback)
    assert back.status is RolloutStatus.good, back.error
    assert "update service" in [s.name for s in back.steps]
    service.reload()
    assert service.attrs["UpdateStatus"]["State"] == "completed"
    assert serving_versions(web) == ["1", "1"]
    assert service.attrs["PreviousSpec"]["Labels"]["immune.version"] == "6"

    # 6 is Swarm's previous spec now: the engine's own rollback puts it back.
    deploy(bot, "web 6", "/rollback")
    again = ended(bot, "6", kind=RolloutKind.rollback)
    assert again.status is RolloutStatus.good, again.error
    assert "roll back service" in [s.name for s in again.steps]
    service.reload()
    assert service.attrs["UpdateStatus"] == {
        **service.attrs["UpdateStatus"],
        "State": "rollback_completed",
        "Message": "rollback completed",
    }
    assert service.attrs["Spec"]["Labels"]["immune.version"] == "6"
    assert serving_versions(web) == ["6", "6"]
    state = bot.ctx.store.pipeline("web")
    assert (state.live_version, state.inflight_rollout) == ("6", "")


@pytest.mark.prometheus
def test_kpi_breach_on_two_replicas_rolls_back_halts_and_alerts(
    start_bot: Any,
    swarm_pipeline: Any,
    swarm: docker.DockerClient,
    prometheus_server: Any,
    emulator: Any,
    unique_name: str,
) -> None:
    selector = f'pipeline="{unique_name}"'
    kpi = {
        "name": "error_rate",
        "query": (
            f'sum(rate(http_requests_total{{{selector},code=~"5.."}}[3s]))'
            f" / sum(rate(http_requests_total{{{selector}}}[3s]))"
        ),
        "max": 0.1,
        "for": 2,
    }
    web = swarm_pipeline(watch={"interval": "1s", "duration": "6s", "warmup": 2}, kpis=[kpi])
    both_at_once(web)
    prometheus_server.set_targets(
        {"pipeline": unique_name}, [url.split("/")[2] for url in slot_urls(web)]
    )
    prometheus_server.wait_for_series(f"up{{{selector}}}", timeout=20)
    bot = start_bot({"pipelines": {"web": web}}, prometheus_url=prometheus_server.url)

    deploy(bot, "web 1")
    first = wait_until(
        lambda: next(
            (r for r in bot.ctx.store.recent_rollouts("web", 1) if r.status is RolloutStatus.good),
            None,
        ),
        40,
        what="1 to pass its watch",
    )
    assert first.version == "1"

    deploy(bot, "web 3")  # half of each task's requests fail
    bad = wait_until(
        lambda: next(
            (
                r
                for r in bot.ctx.store.recent_rollouts("web", 3)
                # handled once its incident is recorded (the halt comes before it)
                if r.version == "3" and r.status is RolloutStatus.rolled_back and r.incident_id
            ),
            None,
        ),
        60,
        what="the breach of 3",
    )
    restore = ended(bot, "1", kind=RolloutKind.auto_rollback)
    assert restore.status is RolloutStatus.good, restore.error
    assert "roll back service" in [s.name for s in restore.steps], "Swarm's own rollback to 1"
    assert serving_versions(web) == ["1", "1"]

    state = bot.ctx.store.pipeline("web")
    assert state.halted and state.halted_reason == "KPI breach"
    assert (state.live_version, state.last_good_version) == ("1", "1")
    incident = load_incident(bot.ctx.store, bad.incident_id)
    assert incident.bad_version == "3" and incident.restored_version == "1"
    assert incident.rollback_rollout_id == restore.id
    breaching = [s for s in incident.samples if s.verdict == "breach"]
    assert len(breaching) >= 2 and all(s.value is not None and s.value > 0.1 for s in breaching)
    samples = bot.immune.watcher.samples(bad.id)
    assert len([s.slot for s in samples]) == len({s.slot for s in samples}), "each poll once"
    alerts = [
        call
        for call in emulator.calls("chat.postMessage")
        if str(call.body.get("text", "")).startswith("KPI breach on web")
    ]
    assert len(alerts) == 1 and incident.id in alerts[0].body["text"], "one alert, once"
    service = service_of(swarm, unique_name)
    assert service.attrs["UpdateStatus"]["State"] == "rollback_completed"
    assert service.attrs["Spec"]["Labels"]["immune.version"] == "1"
    print(
        f"\nswarm breach: live→rollback start {restore.created_at - (bad.live_at or 0):.2f}s, "
        f"Swarm rollback of 2 tasks {(restore.live_at or 0) - restore.created_at:.2f}s"
    )


@pytest.mark.slow
def test_a_replica_takes_over_an_update_whose_bot_died(
    start_bot_process: Any,
    swarm_pipeline: Any,
    swarm: docker.DockerClient,
    redis_client: Any,
    redis_prefix: str,
    unique_name: str,
) -> None:
    web = swarm_pipeline()
    web["swarm"]["update"]["delay"] = "2s"  # a slow update, to die in the middle of
    first = start_bot_process({"pipelines": {"web": web}})
    second = start_bot_process({"pipelines": {"web": web}})
    assert "Deploying" in first.slack.command("/deploy", "web 1").json()["text"]

    def rollout(version: str) -> dict[str, Any] | None:
        for rollout_id in redis_client.zrevrange(f"{redis_prefix}:pipeline:web:rollouts", 0, 5):
            found = json.loads(redis_client.get(f"{redis_prefix}:rollout:{rollout_id}"))
            if found["version"] == version:
                return dict(found)
        return None

    def status(version: str) -> str:
        found = rollout(version)
        return found["status"] if found else ""

    wait_until(lambda: status("1") == "good", 30, what="1 live")
    # Send the deploy to the replica that will die; it runs the rollout it accepted.
    first.slack.command("/deploy", "web 2")
    wait_until(
        lambda: any(
            s["name"] == "update service" and "1/2" in (s["detail"] or "")
            for s in (rollout("2") or {}).get("steps", [])
        ),
        30,
        what="the update half done",
    )
    first.kill()
    killed_at = time.monotonic()

    wait_until(lambda: status("2") not in ("", "queued", "in_flight"), 60, what="the takeover")
    taken_over = time.monotonic() - killed_at
    result = rollout("2")
    assert result is not None
    assert result["status"] == "good", result
    assert "bot restarted mid-rollout; finished it" in result["notes"]
    adopted = [
        fields
        for _, fields in redis_client.xrange(f"{redis_prefix}:audit")
        if fields.get("action") == "recover" and fields.get("rollout") == result["id"]
    ]
    assert len(adopted) == 1 and adopted[0]["outcome"] == "adopted"
    assert serving_versions(web) == ["2", "2"]
    assert second.process is not None and second.process.poll() is None
    service = service_of(swarm, unique_name)
    assert service.attrs["Spec"]["Labels"]["immune.rollout"] == result["id"]
    state = redis_client.hgetall(f"{redis_prefix}:pipeline:web")
    assert (state["live_version"], state["inflight_rollout"]) == ("2", "")
    print(
        f"\nswarm: runner killed mid-update → rollout finished by the other replica in {taken_over:.1f}s"
    )
