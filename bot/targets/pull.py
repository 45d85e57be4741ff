"""Pulling an image as a rollout step: layers and bytes shown as they come, a stall bounded.

The docker SDK's `images.pull` waits without a timeout and only returns at the end, so the pull
is asked of the engine's API directly (`POST /images/create`, as the SDK does) through the
SDK's own session, with a read timeout of `pull_timeout`: a pull that sends nothing for that
long is a stall, and closing the connection makes the engine give it up.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import docker
import docker.auth
import docker.errors
import requests

from bot.domain.images import ImageRef, registry_host
from bot.ports import Progress, RolloutFailed

# Slack lets a message be updated about once a second; progress is shown no more often.
PROGRESS_INTERVAL_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 10.0


class PullRefused(Exception):
    """The engine reported an error in the pull's stream (its words, for classifying)."""

    def __init__(self, words: str) -> None:
        super().__init__(words)
        self.words = words


@dataclass
class PullTally:
    """The layers of a pull and their bytes, from the engine's progress lines."""

    total: dict[str, int] = field(default_factory=dict)
    current: dict[str, int] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)

    def add(self, line: dict[str, object]) -> None:
        layer = str(line.get("id") or "")
        status = str(line.get("status") or "")
        if not layer or status.startswith("Pulling from"):
            return  # the pull's own lines (`Pulling from …` carries the tag or digest as id)
        detail = line.get("progressDetail")
        if isinstance(detail, dict):
            if isinstance(detail.get("total"), int) and status == "Downloading":
                self.total[layer] = int(detail["total"])
            if isinstance(detail.get("current"), int) and status == "Downloading":
                self.current[layer] = int(detail["current"])
        self.total.setdefault(layer, 0)
        if status in ("Pull complete", "Already exists", "Download complete"):
            if self.total.get(layer):
                self.current[layer] = self.total[layer]
            if status != "Download complete":
                self.done.add(layer)

    def words(self) -> str:
        layers = len(self.total)
        got, of = sum(self.current.values()), sum(self.total.values())
        size = f"{megabytes(got)} of {megabytes(of)}" if of else megabytes(got)
        return f"{len(self.done)}/{layers} layers, {size}"


def megabytes(count: int) -> str:
    return f"{count / 1_000_000:.1f} MB"


def pull(
    client: docker.DockerClient,
    image: ImageRef,
    progress: Progress | None,
    stall_seconds: float,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Pull `image` (by digest when pinned), showing its progress; returns the tally's words.

    Raises RolloutFailed on a stall (nothing for `stall_seconds`), PullRefused when the engine
    reports an error, docker.errors.APIError when it refuses the request.
    """
    api = client.api
    tag = image.digest or image.tag or "latest"
    registry = registry_host(image.repository) or docker.auth.INDEX_NAME
    headers = {}
    auth = docker.auth.get_config_header(api, registry)
    if auth:
        headers["X-Registry-Auth"] = auth
    tally = PullTally()
    shown_at = 0.0
    try:
        response = api.post(
            f"{api.base_url}/v{api.api_version}/images/create",
            params={"fromImage": image.repository, "tag": tag},
            headers=headers,
            stream=True,
            timeout=(CONNECT_TIMEOUT_SECONDS, stall_seconds),
        )
    except requests.exceptions.ReadTimeout as exc:
        raise _stalled(image, stall_seconds, tally) from exc
    try:
        try:
            response.raise_for_status()
        except requests.exceptions.HTTPError as refused:
            raise docker.errors.create_api_error_from_http_exception(refused) from refused
        for line in _lines(response):
            if "error" in line:
                raise PullRefused(str(line.get("error") or line.get("errorDetail") or ""))
            tally.add(line)
            now = clock()
            if progress is not None and now - shown_at >= PROGRESS_INTERVAL_SECONDS:
                progress.detail(tally.words())
                shown_at = now
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        # A read that waited `stall_seconds` for the next line surfaces as either.
        raise _stalled(image, stall_seconds, tally) from exc
    finally:
        response.close()  # mid-pull, this tells the engine to give the pull up
    if progress is not None:
        progress.detail(tally.words())
    return tally.words()


def _lines(response: requests.Response) -> Iterator[dict[str, object]]:
    for raw in response.iter_lines():
        if not raw.strip():
            continue
        try:
            decoded = json.loads(raw)
        except ValueError:
            continue
        if isinstance(decoded, dict):
            yield decoded


def _stalled(image: ImageRef, seconds: float, tally: PullTally) -> RolloutFailed:
    return RolloutFailed(
        f"pulling `{image.reference}` stalled: nothing for {seconds:g}s (pull_timeout; "
        f"had {tally.words()})",
        restored=True,
    )
