"""The rig itself: real Redis, the demo images in the real engine, a real Prometheus scrape."""

from __future__ import annotations

import contextlib
import io
import secrets
import tarfile
import time

import docker.errors
import pytest
import redis
import requests
from docker import DockerClient

from tests.support.services import (
    NAME_PREFIX,
    TEST_RUN_LABEL,
    DemoImages,
    PrometheusServer,
    PytestRun,
    RedisServer,
    free_port,
    live_runs,
    remove_leftovers,
    run_demo_container,
    sample_value,
    wait_for_http,
)


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535


def test_redis_round_trip(redis_client: redis.Redis) -> None:
    redis_client.set("greeting", "hello")
    assert redis_client.get("greeting") == "hello"
    assert redis_client.dbsize() == 1


def test_redis_database_is_flushed_for_each_test(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0


def test_redis_restarts_on_the_same_port(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    port = redis_server.port
    redis_server.stop()
    with (
        redis.Redis.from_url(redis_server.url, socket_timeout=1, retry_on_error=[]) as probe,
        pytest.raises(redis.ConnectionError),
    ):
        probe.ping()
    redis_server.start()
    assert redis_server.port == port
    assert redis_client.ping()


def test_persistent_redis_keeps_data_across_restart_and_kill(
    redis_server_persistent: RedisServer,
) -> None:
    client = redis.Redis.from_url(redis_server_persistent.url, decode_responses=True)
    try:
        client.set("deploy", "v1")
        redis_server_persistent.restart()
        assert client.get("deploy") == "v1"
        client.set("deploy", "v2")
        redis_server_persistent.kill()  # no shutdown work: the append-only file must hold it
        redis_server_persistent.start()
        assert client.get("deploy") == "v2"
    finally:
        client.close()


@pytest.mark.docker
def test_demo_ok_answers_health_and_metrics(
    docker_client: DockerClient, demo_images: DemoImages, unique_name: str, rig_run: PytestRun
) -> None:
    port = free_port()
    container = docker_client.containers.create(
        demo_images.ref(1),
        name=unique_name,
        network_mode="host",
        environment={"PORT": str(port)},
        labels=rig_run.labels,
    )
    started = time.monotonic()
    container.start()
    health = wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=10)
    startup = time.monotonic() - started
    print(f"docker start -> first 200 on /healthz: {startup * 1000:.0f} ms")
    assert health.text.strip() == "ok"
    assert not health.history, "a healthy /healthz answers directly, without a redirect"

    image = docker_client.images.get(demo_images.ref(1))
    assert image.labels["org.opencontainers.image.version"] == "1"
    container.reload()
    assert container.attrs["Config"]["User"] == "65534:65534"

    first = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert first.status_code == 200
    assert not first.history
    assert 'demo_build_info{version="1",mode="ok"} 1' in first.text
    assert 'http_requests_total{code="500"} 0' in first.text
    time.sleep(1.5)
    later = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

    def ok_count(text: str) -> int:
        line = next(x for x in text.splitlines() if x.startswith('http_requests_total{code="200"}'))
        return int(line.split()[-1])

    assert ok_count(later) > ok_count(first.text)

    stopping = time.monotonic()
    container.stop(timeout=10)
    assert time.monotonic() - stopping < 5, "the entrypoint stops on SIGTERM"


@pytest.mark.docker
def test_demo_unhealthy_answers_500(
    docker_client: DockerClient, demo_images: DemoImages, unique_name: str, rig_run: PytestRun
) -> None:
    port = free_port()
    run_demo_container(docker_client, demo_images.ref(4), unique_name, port, rig_run.labels)
    response = wait_for_http(f"http://127.0.0.1:{port}/healthz", status=500, timeout=10)
    assert "unhealthy" in response.text
    metrics = wait_for_http(f"http://127.0.0.1:{port}/metrics")
    assert 'mode="unhealthy"' in metrics.text


@pytest.mark.docker
def test_demo_mode_can_be_overridden_at_run_time(
    docker_client: DockerClient, demo_images: DemoImages, unique_name: str, rig_run: PytestRun
) -> None:
    port = free_port()
    run_demo_container(
        docker_client,
        demo_images.ref(1),
        unique_name,
        port,
        rig_run.labels,
        environment={"DEMO_MODE": "errors"},
    )
    metrics = wait_for_http(f"http://127.0.0.1:{port}/metrics")
    assert 'demo_build_info{version="1",mode="errors"} 1' in metrics.text


@pytest.mark.docker
def test_demo_crash_exits_with_code_3(
    docker_client: DockerClient, demo_images: DemoImages, unique_name: str, rig_run: PytestRun
) -> None:
    container = run_demo_container(
        docker_client, demo_images.ref(5), unique_name, free_port(), rig_run.labels
    )
    assert container.wait(timeout=30)["StatusCode"] == 3
    assert b"fatal" in container.logs(stdout=False, stderr=True)


@pytest.mark.docker
@pytest.mark.parametrize(("tag", "status"), [(1, 0), (5, 0), (6, 1)])
def test_demo_image_tests(
    docker_client: DockerClient,
    demo_images: DemoImages,
    unique_name: str,
    rig_run: PytestRun,
    tag: int,
    status: int,
) -> None:
    container = docker_client.containers.run(
        demo_images.ref(tag),
        ["/bin/sh", "/tests/run"],
        name=f"{unique_name}-gate",
        detach=True,
        network_mode="none",
        labels=rig_run.labels,
    )
    assert container.wait(timeout=60)["StatusCode"] == status
    output = container.logs().decode()
    if status:
        assert "FAIL: test_checkout expected 200 got 500" in output
    else:
        assert "2 passed" in output


def _bare_image(client: DockerClient, ref: str) -> str:
    """An image with one file and no labels (the demo images carry the session's label)."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("marker"), io.BytesIO(b""))
    repository, tag = ref.rsplit(":", 1)
    client.api.import_image_from_data(data.getvalue(), repository=repository, tag=tag)
    return ref


@pytest.mark.docker
def test_leftovers_of_dead_sessions_are_removed(
    docker_client: DockerClient, demo_images: DemoImages, unique_name: str, rig_run: PytestRun
) -> None:
    dead_run = "0dead000"
    assert dead_run not in live_runs()
    bare = _bare_image(docker_client, f"{rig_run.image_repo}-bare:1")
    dead_image = f"immune-test-{dead_run}/web:1"
    docker_client.images.get(bare).tag(dead_image)
    orphan_name = f"{NAME_PREFIX}0{secrets.token_hex(2)}x"  # no live session handed it out
    created = []
    try:
        # Containers from the demo images inherit the session's run label: kept.
        created.append(docker_client.containers.create(demo_images.ref(1), name=unique_name))
        # Labelled by a dead session.
        created.append(
            docker_client.containers.create(
                bare, ["/marker"], name=f"other-{unique_name}", labels={TEST_RUN_LABEL: dead_run}
            )
        )
        # Named like a test's container, but no live session owns the name.
        created.append(docker_client.containers.create(bare, ["/marker"], name=orphan_name))

        removed = remove_leftovers(docker_client)

        assert f"container other-{unique_name}" in removed
        assert f"container {orphan_name}" in removed
        assert f"image {dead_image}" in removed
        assert f"container {unique_name}" not in removed
        created[0].reload()
        for container in created[1:]:
            with pytest.raises(docker.errors.NotFound):
                container.reload()
        docker_client.images.get(demo_images.ref(1))
    finally:
        for container in created:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        for ref in (dead_image, bare):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(ref, force=True)


@pytest.mark.docker
@pytest.mark.prometheus
def test_prometheus_scrapes_demo_error_rate(
    docker_client: DockerClient,
    demo_images: DemoImages,
    prometheus_server: PrometheusServer,
    unique_name: str,
    rig_run: PytestRun,
) -> None:
    errors_port, ok_port = free_port(), free_port()
    run_demo_container(
        docker_client, demo_images.ref(3), f"{unique_name}-errors", errors_port, rig_run.labels
    )
    run_demo_container(
        docker_client, demo_images.ref(1), f"{unique_name}-ok", ok_port, rig_run.labels
    )
    prometheus_server.set_targets(
        {"pipeline": unique_name}, [f"127.0.0.1:{errors_port}", f"127.0.0.1:{ok_port}"]
    )

    def error_rate(port: int) -> str:
        return (
            f'rate(http_requests_total{{job="web",pipeline="{unique_name}",'
            f'instance="127.0.0.1:{port}",code="500"}}[5s])'
        )

    bad = prometheus_server.wait_for_series(
        error_rate(errors_port), timeout=15, predicate=lambda r: sample_value(r[0]) > 0
    )
    assert sample_value(bad[0]) > 0
    good = prometheus_server.wait_for_series(error_rate(ok_port), timeout=15)
    assert sample_value(good[0]) == 0
    served = prometheus_server.wait_for_series(
        f'rate(http_requests_total{{instance="127.0.0.1:{ok_port}",code="200"}}[5s])',
        timeout=15,
        predicate=lambda r: sample_value(r[0]) > 0,
    )
    assert sample_value(served[0]) > 0
    info = prometheus_server.query(f'demo_build_info{{instance="127.0.0.1:{errors_port}"}}')
    assert info["data"]["result"][0]["metric"]["mode"] == "errors"
