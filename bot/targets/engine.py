"""The Docker engine connection both targets share."""

from __future__ import annotations

import docker


def connect_engine(docker_host: str | None, timeout: float | None = None) -> docker.DockerClient:
    """A client for `docker_host` (DOCKER_HOST), or the one the environment names; `timeout`
    (seconds) bounds each engine call (the SDK's default is 60)."""
    extra = {"timeout": timeout} if timeout is not None else {}
    client = (
        docker.DockerClient(base_url=docker_host, **extra)
        if docker_host
        else docker.from_env(**extra)
    )
    # The engine API is never reached through an HTTP proxy; skipping requests' per-call look-up
    # of proxy settings halves the cost of each engine call.
    client.api.trust_env = False
    return client


def engine_health(client: docker.DockerClient) -> dict[str, object]:
    try:
        client.ping()
    except Exception as exc:
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True}
