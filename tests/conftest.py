"""Fixtures for real services: Redis, Prometheus, HAProxy, the Docker engine and the demo images.

Everything listens on 127.0.0.1 on ports the OS picks. A missing program or an engine that does
not answer skips the tests that need it, except under CI (`CI` set), where it fails them.
Tests that use Docker, Prometheus or HAProxy fixtures are marked `docker` / `prometheus` /
`haproxy` here even when their module forgets, so `-m "not docker"` really leaves them out.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest
import redis
from docker import DockerClient

from tests.support.services import (
    DemoImages,
    HAProxyServer,
    PrometheusServer,
    PytestRun,
    RedisServer,
    RegistryServer,
    ServerProcess,
    ServiceError,
    ServiceUnavailable,
    build_demo_images,
    connect_docker,
    remove_images,
    remove_leftovers,
    remove_run_containers,
    remove_test_objects,
)

DOCKER_FIXTURES = frozenset({"docker_client", "demo_images", "registry_server", "auth_registry"})
PROMETHEUS_FIXTURES = frozenset({"prometheus_server"})
HAPROXY_FIXTURES = frozenset({"haproxy_server"})

Server = TypeVar("Server", bound=ServerProcess)

# Session servers a test may have stopped: started again after each test.
_session_servers: list[ServerProcess] = []


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Skip for a missing service; in CI, fail: CI must run every test."""
    if in_ci():
        pytest.fail(f"{reason} [CI is set: every test must run]", pytrace=False)
    pytest.skip(reason)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & DOCKER_FIXTURES and item.get_closest_marker("docker") is None:
            item.add_marker(pytest.mark.docker)
        if fixtures & PROMETHEUS_FIXTURES and item.get_closest_marker("prometheus") is None:
            item.add_marker(pytest.mark.prometheus)
        if fixtures & HAPROXY_FIXTURES and item.get_closest_marker("haproxy") is None:
            item.add_marker(pytest.mark.haproxy)


def _serve(server: Server) -> Iterator[Server]:
    try:
        server.start()
    except ServiceUnavailable as error:
        unavailable(str(error))
    _session_servers.append(server)
    try:
        yield server
    finally:
        _session_servers.remove(server)
        server.stop()


@pytest.fixture(autouse=True)
def _restore_session_servers(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    for server in list(_session_servers):
        if not server.running:
            server.start()
        if isinstance(server, PrometheusServer) and "prometheus_server" in request.fixturenames:
            server.clear_targets()


@pytest.fixture(scope="session")
def rig_run() -> Iterator[PytestRun]:
    """This pytest session: `.id`; `.labels` for containers a test creates itself."""
    run = PytestRun()
    try:
        yield run
    finally:
        run.close()


@dataclass
class DockerEngine:
    client: DockerClient | None
    reason: str = ""


@pytest.fixture(scope="session")
def _docker_engine(rig_run: PytestRun) -> Iterator[DockerEngine]:
    """The engine if it answers (leftovers of dead sessions removed first), else why not."""
    try:
        client = connect_docker()
    except ServiceUnavailable as error:
        yield DockerEngine(None, str(error))
        return
    try:
        remove_leftovers(client)
        yield DockerEngine(client)
        remove_run_containers(client, rig_run.id)
    finally:
        client.close()


@pytest.fixture(scope="session")
def docker_client(_docker_engine: DockerEngine) -> DockerClient:
    """`docker.from_env()`, checked to answer."""
    if _docker_engine.client is None:
        unavailable(_docker_engine.reason)
    return _docker_engine.client


@pytest.fixture(scope="session")
def demo_images(docker_client: DockerClient, rig_run: PytestRun) -> Iterator[DemoImages]:
    """The demo images, built for this session under `immune-test-<run>/web`.

    Tags: 1, 2 ok; 3 errors (half the requests 5xx); 4 unhealthy (/healthz 500);
    5 crash (exits 3 at start); 6 ok but its /tests/run fails. `.repo`, `.ref(tag)`.
    """
    try:
        images = build_demo_images(rig_run.image_repo, labels=rig_run.labels)
    except ServiceUnavailable as error:
        unavailable(str(error))
    except ServiceError:
        remove_images(docker_client, DemoImages(rig_run.image_repo, {}))
        raise
    try:
        yield images
    finally:
        # containers from these images carry the run's label: remove them with the images
        remove_run_containers(docker_client, rig_run.id)
        remove_images(docker_client, images)


@pytest.fixture
def unique_name(rig_run: PytestRun, _docker_engine: DockerEngine) -> Iterator[str]:
    """A name of this test's own (`immune-t-<6 hex>`) for containers, services, pipelines.

    Afterwards, containers and swarm services named after it (`<name>`, `<name>-…`) or
    labelled `immune.pipeline=<name>` are removed.
    """
    name = rig_run.new_name()
    yield name
    if _docker_engine.client is not None:
        remove_test_objects(_docker_engine.client, name)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this session, without persistence: `.url`, `.port`, `.stop()`, `.start()`.

    A test that stops it gets it started again afterwards.
    """
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield from _serve(server)


@pytest.fixture
def redis_server_persistent(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own whose data survives `.stop()`/`.start()` and `.kill()`."""
    server = RedisServer(tmp_path / "redis", persistent=True)
    try:
        server.start()
    except ServiceUnavailable as error:
        unavailable(str(error))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A `decode_responses=True` client of `redis_server`, its database flushed around the test."""
    redis_server.ensure_running()
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    try:
        yield client
    finally:
        redis_server.ensure_running()
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def prometheus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """Prometheus of this session: `.url`, `.set_targets()`, `.query()`, `.wait_for_series()`.

    Scrapes every 1 s the targets set with `.set_targets(labels, ["127.0.0.1:PORT"])` as job
    `web`; targets are cleared after each test that uses it.
    """
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"))
    yield from _serve(server)


@pytest.fixture
def haproxy_server(tmp_path: Path) -> Iterator[HAProxyServer]:
    """An HAProxy of this test's own, not started yet; `.port` is its Prometheus exporter.

    `block = haproxy_server.traffic_block("web")` makes a pipelines-file traffic block on free
    loopback ports with its runtime API; `haproxy_server.serve({"web": block})` writes the config
    (`python -m bot proxy-config`'s) and starts it; `.restart()` loses the runtime state. It is
    stopped, and its socket removed, after the test.
    """
    if shutil.which("haproxy") is None:
        unavailable("haproxy not found on PATH (run scripts/setup.sh)")
    server = HAProxyServer(tmp_path / "haproxy")
    try:
        yield server
    finally:
        server.close()


def _registry(workdir: Path, **auth: str) -> Iterator[RegistryServer]:
    if shutil.which("docker-registry") is None:
        unavailable("docker-registry not found on PATH (run scripts/setup.sh)")
    try:
        server = RegistryServer(workdir, **auth)
    except ServiceUnavailable as error:
        unavailable(str(error))
    yield from _serve(server)


@pytest.fixture(scope="session")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A distribution registry of this session on a free loopback port, without auth:
    `.host` (`127.0.0.1:<port>`), `.push(client, source, repository, tag)` -> digest. A test
    that stops it gets it started again afterwards (its storage kept)."""
    yield from _registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A registry of this session that answers 401 without its user and password (htpasswd);
    `.write_docker_config(dir)` writes the `config.json` that holds them."""
    yield from _registry(
        tmp_path_factory.mktemp("auth-registry"), user="immune", password="s3cret-pass"
    )
