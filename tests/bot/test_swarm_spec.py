"""The Swarm target's translation of a pipeline into a service spec (no engine needed)."""

from __future__ import annotations

from typing import Any

import docker
import pytest

from bot.domain.errors import ConfigError
from bot.domain.images import ImageRef
from bot.plugins import parse_pipelines
from bot.ports import LocatedImage, RolloutRequest
from bot.targets.swarm import SwarmTarget, health_urls


def pipeline(**extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "channel": "C0DEPLOY",
        "target": "swarm",
        "image": "demo/web",
        "container": {
            "name": "web",
            "network_mode": "host",
            "environment": {"PORT": "808{{.Task.Slot}}"},
            "user": "65534",
            "labels": {"team": "payments"},
            "command": "--verbose --port 80",
        },
        "health": {"url": "http://127.0.0.1:808{slot}/healthz"},
        "swarm": {"replicas": 3},
    }
    raw.update(extra)
    return raw


def spec_for(raw: dict[str, Any]) -> dict[str, Any]:
    config = parse_pipelines({"pipelines": {"web": raw}})
    web = config.pipelines["web"]
    image = ImageRef("demo/web", "2", None)
    request = RolloutRequest(
        pipeline_name="web",
        pipeline=web,
        image=image,
        located=LocatedImage(reference=image.reference, image_id="sha256:x", runs_as_root=False),
        rollout_id="r-1",
        from_version="1",
    )
    target = SwarmTarget(docker.DockerClient(base_url="unix:///nonexistent.sock", version="1.41"))
    return target._service_spec(request)


def test_the_whole_spec_is_set_explicitly() -> None:
    spec = spec_for(pipeline())
    update, rollback = spec["update_config"], spec["rollback_config"]
    # Not the docker SDK's defaults (parallelism 0, continue): every field is immune's.
    assert update == {
        "Parallelism": 1,
        "Delay": 1_000_000_000,
        "FailureAction": "rollback",
        "Monitor": 5_000_000_000,
        "MaxFailureRatio": 0.0,
        "Order": "stop-first",
    }
    assert rollback["FailureAction"] == "pause" and rollback["Parallelism"] == 1
    assert spec["mode"] == {"replicated": {"Replicas": 3}}
    assert spec["name"] == "web"
    assert spec["labels"] == {
        "immune.pipeline": "web",
        "immune.version": "2",
        "immune.rollout": "r-1",
        "immune.reference": "demo/web:2",
    }
    assert spec["endpoint_spec"] == {"Mode": "dnsrr"}
    template = spec["task_template"]
    assert [network["Target"] for network in template["Networks"]] == ["host"]
    container = template["ContainerSpec"]
    assert container["Image"] == "demo/web:2"
    assert container["Env"] == ["PORT=808{{.Task.Slot}}"]
    assert container["User"] == "65534"
    assert container["Args"] == ["--verbose", "--port", "80"]
    assert container["Labels"]["team"] == "payments"
    assert container["Labels"]["immune.rollout"] == "r-1"
    assert container["Labels"]["immune.role"] == "swarm-task"
    # Hardened unless the config says otherwise.
    assert container["Init"] is True and container["CapabilityDrop"] == ["ALL"]


def test_zero_delay_and_options_from_the_config() -> None:
    raw = pipeline(
        swarm={
            "replicas": 2,
            "update": {"parallelism": 2, "delay": "0s", "monitor": "2s", "order": "start-first"},
            "rollback": {"delay": 0, "failure_action": "continue"},
        },
        hardened=False,
    )
    spec = spec_for(raw)
    assert spec["update_config"]["Delay"] == 0 and spec["update_config"]["Order"] == "start-first"
    assert spec["rollback_config"]["FailureAction"] == "continue"
    assert "Init" not in spec["task_template"]["ContainerSpec"]
    assert "CapabilityDrop" not in spec["task_template"]["ContainerSpec"]


def test_updates_start_first_by_default_unless_host_networking_holds_the_port() -> None:
    host = spec_for(pipeline())
    assert host["update_config"]["Order"] == "stop-first", "a task's host port is taken"
    routed = pipeline()
    routed["container"] = {"name": "web", "environment": {"PORT": "8080"}}
    spec = spec_for(routed)
    assert spec["update_config"]["Order"] == "start-first"
    assert spec["rollback_config"]["Order"] == "start-first"
    assert spec["endpoint_spec"] == {"Mode": "vip"}


def test_health_urls_name_each_slot() -> None:
    web = parse_pipelines({"pipelines": {"web": pipeline()}}).pipelines["web"]
    assert health_urls(web) == [f"http://127.0.0.1:808{slot}/healthz" for slot in (1, 2, 3)]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (
            {"container": {"name": "web", "ports": {"80/tcp": 80}}},
            "container option(s) ports cannot be used with target: swarm",
        ),
        (
            {"container": {"name": "web", "privileged": True}},
            "privileged cannot be used with target: swarm",
        ),
        ({"container": {"name": "web", "network_mode": "bridge"}}, "only `host` is supported"),
        ({"swarm": {"rollback": {"failure_action": "rollback"}}}, "swarm.rollback.failure_action"),
        ({"target": "docker"}, "{slot} is for target: swarm only"),
    ],
)
def test_options_a_service_cannot_take_are_refused_by_name(
    change: dict[str, Any], why: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_pipelines({"pipelines": {"web": pipeline(**change)}})
    assert why in raised.value.message
