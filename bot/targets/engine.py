"""The Docker engine connection both targets share, and what "the engine is gone" looks like."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

import docker
import docker.errors
import requests

from bot.domain.errors import EngineUnreachable

P = ParamSpec("P")
R = TypeVar("R")


class OnEngine(Protocol):
    client: docker.DockerClient


S = TypeVar("S", bound=OnEngine)


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


def as_unreachable(client: docker.DockerClient, exc: Exception) -> EngineUnreachable | None:
    """The domain's EngineUnreachable when `exc` means the engine is gone, else None.

    A refused or dropped connection is the engine gone. An engine shutting down may still
    answer a call with a 5xx (its containerd already closing): that is the engine gone too
    when a ping right after fails; any other refusal is the engine's answer, not an outage.
    """
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return EngineUnreachable(f"The Docker engine does not answer ({_why(exc)}).")
    if isinstance(exc, docker.errors.APIError):
        if exc.is_server_error() and not engine_health(client)["ok"]:
            return EngineUnreachable(
                f"The Docker engine stopped answering ({exc.status_code} then no ping)."
            )
        return None
    if isinstance(exc, docker.errors.DockerException) and not engine_health(client)["ok"]:
        return EngineUnreachable(f"The Docker engine does not answer ({_why(exc)}).")
    return None


def _why(exc: Exception) -> str:
    """The innermost reason of a connection failure: `FileNotFoundError: No such file…`."""
    inner: BaseException = exc
    while True:
        deeper = inner.__cause__ or inner.__context__
        if deeper is None and inner.args and isinstance(inner.args[-1], BaseException):
            deeper = inner.args[-1]  # urllib3 keeps the socket's error as an argument
        if deeper is None:
            break
        inner = deeper
    detail = getattr(inner, "strerror", None) or str(inner) or ""
    return f"{type(inner).__name__}: {detail}" if detail else type(inner).__name__


def reaches_engine(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """A target method whose lost engine raises EngineUnreachable instead of a library error."""

    def call(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
            unreachable = as_unreachable(self.client, exc)
            if unreachable is None:
                raise
        # Raised outside the handler and without its cause: the library's exception holds the
        # frames of the failed connection, and with them its socket, which would stay open as
        # long as anything (a log record) keeps the error. Its words are in the message.
        raise unreachable from None

    functools.update_wrapper(call, method)
    return call
