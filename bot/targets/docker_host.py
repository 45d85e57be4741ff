"""One Docker engine: swap the live container for the new version's (DESIGN.md, "The swap").

With host networking the old and new containers cannot hold the same port at once, so the old
one stops first; it is kept (stopped, renamed `<name>--<version>`) so a rollback is a start.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import docker
import docker.errors
import requests
from docker.models.containers import RUN_CREATE_KWARGS, RUN_HOST_CONFIG_KWARGS, Container

from bot.domain.config import ConfigProblem, Pipeline
from bot.domain.errors import DigestMismatch, ImageNotFound
from bot.domain.images import ImageRef, short_digest
from bot.ports import (
    LiveVersion,
    LocatedImage,
    Progress,
    RolloutFailed,
    RolloutRequest,
    RunningVersion,
    SwapResult,
    TestResult,
)
from bot.targets.engine import engine_health, reaches_engine
from bot.targets.hardening import container_options, hardened_defaults
from bot.targets.health import probe
from bot.targets.pull import PullRefused, pull
from bot.targets.registry import RegistryLookup, registry_of

logger = logging.getLogger(__name__)

LABEL_PIPELINE = "immune.pipeline"
LABEL_VERSION = "immune.version"
LABEL_ROLLOUT = "immune.rollout"
LABEL_REFERENCE = "immune.reference"
LABEL_ROLE = "immune.role"  # "service" or "test"
# The live container name is unique on an engine, so it tells this install's containers apart
# from another install's pipeline of the same name on a shared engine.
LABEL_CONTAINER = "immune.container"
LABEL_PORT = "immune.port"  # behind a proxy: the loopback port this version listens on

STOP_TIMEOUT_SECONDS = 10
LOG_TAIL_LINES = 20


# containers.run() also takes these, which it splits over the create call and the host config
# (docker/models/containers.py, _create_container_args).
RUN_SPLIT_KWARGS = frozenset({"ports", "volumes", "network", "networking_config"})


def unknown_container_options(pipeline: Pipeline) -> list[str]:
    known = set(RUN_CREATE_KWARGS) | set(RUN_HOST_CONFIG_KWARGS) | RUN_SPLIT_KWARGS
    return sorted(set(pipeline.container) - known)


def check_container_options(pipeline: Pipeline) -> list[ConfigProblem]:
    """`container:` takes the docker SDK's containers.run() keyword names, nothing else."""
    unknown = unknown_container_options(pipeline)
    if not unknown:
        return []
    return [
        ConfigProblem(
            "container",
            f"unknown container option(s) {', '.join(unknown)}: "
            "use the docker SDK's containers.run() keyword names",
        )
    ]


def check_pipeline(pipeline: Pipeline) -> list[ConfigProblem]:
    """What one engine's container cannot take."""
    problems = check_container_options(pipeline)
    if "{slot}" in pipeline.health.url:
        problems.append(ConfigProblem("health.url", "{slot} is for target: swarm only"))
    if pipeline.traffic is not None:
        mode = pipeline.container.get("network_mode")
        if mode not in (None, "host"):
            problems.append(
                ConfigProblem(
                    "container.network_mode",
                    "behind a proxy each version listens on a loopback port of the host: "
                    "use network_mode: host (or leave it out)",
                )
            )
        if "ports" in pipeline.container:
            problems.append(
                ConfigProblem(
                    "container.ports",
                    "behind a proxy the bot gives each version its port ($PORT); remove ports",
                )
            )
    return problems


def with_port(value: Any, port: int) -> Any:
    """`{port}` replaced in every string of a container option (lists and maps included)."""
    if isinstance(value, str):
        return value.replace("{port}", str(port))
    if isinstance(value, list):
        return [with_port(item, port) for item in value]
    if isinstance(value, dict):
        return {key: with_port(item, port) for key, item in value.items()}
    return value


def _with_port_variable(environment: Any, port: int) -> Any:
    if isinstance(environment, list):
        return [*[e for e in environment if not str(e).startswith("PORT=")], f"PORT={port}"]
    return {**dict(environment or {}), "PORT": str(port)}


def port_taken(port: int) -> bool:
    """Whether something already listens on 127.0.0.1:`port` (we bind only to find out)."""
    probe_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Without SO_REUSEADDR a port whose last connections linger in TIME_WAIT would look taken
    # for a minute; with it, only a socket bound or listening there makes the bind fail.
    probe_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe_socket.bind(("127.0.0.1", port))
    except OSError as exc:
        return exc.errno in (errno.EADDRINUSE, errno.EACCES)
    finally:
        probe_socket.close()
    return False


# Listing containers sparsely is one engine call instead of one per container; a sparse
# object carries the list's fields (Labels, Names, State, ImageID), not an inspect's.
def _labels(container: Container) -> dict[str, str]:
    if "Labels" in container.attrs:
        return dict(container.attrs["Labels"] or {})
    return dict(container.labels)


def _name(container: Container) -> str:
    names = container.attrs.get("Names")
    if names:
        return str(names[0]).lstrip("/")
    return str(container.name)


def _image_id(container: Container) -> str:
    return str(container.attrs.get("ImageID") or container.attrs.get("Image") or "")


def _logs_tail(container: Container, lines: int = LOG_TAIL_LINES) -> str:
    try:
        raw: bytes = container.logs(tail=lines, stdout=True, stderr=True)
    except docker.errors.APIError:
        return ""
    return raw.decode("utf-8", "replace").strip()


def _of_repository(name: str, repository: str) -> bool:
    """`name` (`repo:tag` or `repo@sha256:…`) is one of `repository`'s."""
    return name.startswith((repository + ":", repository + "@"))


def _natural(version: str) -> tuple[tuple[int, str], ...]:
    """A sort key that orders `1.10` after `1.9`: digit runs as numbers, the rest as text."""
    return tuple(
        (int(part), "") if part.isdigit() else (-1, part)
        for part in re.findall(r"\d+|\D+", version)
    )


class DockerHostTarget:
    """Deploys to the engine the docker SDK finds (`DOCKER_HOST` or the default socket)."""

    def __init__(
        self,
        client: docker.DockerClient,
        sleep: Callable[[float], None] = time.sleep,
        lookup_client: docker.DockerClient | None = None,
    ) -> None:
        self.client = client
        self.sleep = sleep
        # Tag lookups inside an ack go through `lookup_client`, whose timeout is short.
        self.registry = RegistryLookup(client, lookup_client)
        self.http = requests.Session()
        # Health URLs are the service's own; a proxy from the environment must not intercept.
        self.http.trust_env = False

    def health(self) -> dict[str, object]:
        return engine_health(self.client)

    def close(self) -> None:
        """Release the health checks' connections (the engine client is shared, closed apart)."""
        self.http.close()
        self.registry.close()

    # Images ------------------------------------------------------------------------------

    def resolve(self, pipeline: Pipeline, image: ImageRef, *, quick: bool) -> str:
        return self.registry.digest(image, quick=quick)

    @reaches_engine
    def locate(
        self,
        pipeline_name: str,
        pipeline: Pipeline,
        image: ImageRef,
        progress: Progress | None = None,
    ) -> LocatedImage:
        try:
            if pipeline.pull == "always":
                found = self._pull(image, pipeline, progress)
            else:
                try:
                    found = self.client.images.get(image.reference)
                except docker.errors.ImageNotFound:
                    if pipeline.pull == "never":
                        raise
                    found = self._pull(image, pipeline, progress)
        except docker.errors.ImageNotFound as exc:
            if pipeline.pull != "never":
                raise self.registry.classify(exc, image) from exc
            raise ImageNotFound(
                f"Image `{image.reference}` is not on the Docker engine.",
                hint="Build or load it there (this pipeline has `pull: never`), "
                "or check the version.",
            ) from exc
        except docker.errors.APIError as exc:
            if pipeline.pull != "never":
                raise self.registry.classify(exc, image) from exc
            raise ImageNotFound(
                f"Could not get image `{image.reference}`: {exc.explanation}"
            ) from exc
        if image.digest and pipeline.pull != "never":
            # The engine checks the content against the digest it pulls by; this checks it
            # pulled (or holds) the manifest that was asked for, not whatever a tag says now.
            pinned = f"{image.repository}@{image.digest}"
            if pinned not in (found.attrs.get("RepoDigests") or []):
                raise DigestMismatch(
                    f"The engine's image for `{image.reference}` has digests "
                    + ", ".join(
                        f"`{short_digest(d.rpartition('@')[2])}`"
                        for d in found.attrs.get("RepoDigests") or []
                    )
                    + f", not `{short_digest(image.digest)}`.",
                    hint="Deploy again: the tag is resolved anew.",
                )
        user = (found.attrs.get("Config") or {}).get("User") or ""
        runs_as_root = user.split(":")[0] in ("", "0", "root")
        return LocatedImage(
            reference=image.reference,
            image_id=found.id,
            runs_as_root=runs_as_root,
            labels=dict((found.attrs.get("Config") or {}).get("Labels") or {}),
        )

    @reaches_engine
    def deployable_versions(self, pipeline_name: str, pipeline: Pipeline) -> list[str]:
        """The engine's tags of the pipeline's image, newest image first (one engine call)."""
        try:
            found = self.client.images.list(name=pipeline.image)
        except docker.errors.APIError as exc:
            raise ImageNotFound(
                f"Could not list the images of `{pipeline.image}`: {exc.explanation}"
            ) from exc
        dated: list[tuple[str, str]] = []
        for image in found:
            created = str(image.attrs.get("Created") or "")
            for tag in image.tags:
                repository, _, version = tag.rpartition(":")
                if repository == pipeline.image and "/" not in version:
                    dated.append((created, version))
        # Newest image first; tags of one image by name, highest first (`1.10` above `1.9`).
        dated.sort(key=lambda item: (item[0], _natural(item[1])), reverse=True)
        versions = [version for _, version in dated]
        if pipeline.pull != "never":
            # What CI pushed and the engine has not pulled yet: the registry's tags, highest
            # first, after the engine's (the registry's list carries no dates).
            image = ImageRef(pipeline.image, None, None)
            pushed = self.registry.tags(image, registry_of(image)) or []
            versions += sorted(pushed, key=_natural, reverse=True)
        return list(dict.fromkeys(versions))

    def _pull(self, image: ImageRef, pipeline: Pipeline, progress: Progress | None) -> Any:
        """Pull as its own rollout step (layers and bytes shown as they come), then the image."""

        def pulled() -> str:
            try:
                return pull(self.client, image, progress, pipeline.pull_timeout)
            except PullRefused as refused:
                raise self.registry.classify_words(refused.words, None, image) from refused

        if progress is None:
            tally = pulled()
        else:
            with progress.step("pull", detail=image.reference):
                tally = pulled()
        logger.info("pulled %s: %s", image.reference, tally)
        return self.client.images.get(image.reference)

    # The test gate -----------------------------------------------------------------------

    @reaches_engine
    def run_tests(self, pipeline: Pipeline, located: LocatedImage, rollout_id: str) -> TestResult:
        assert pipeline.tests is not None
        started = time.monotonic()
        container = self.client.containers.create(
            located.image_id,
            command=pipeline.tests.command,
            network_mode="none",
            labels={LABEL_ROLLOUT: rollout_id, LABEL_ROLE: "test"},
            # The test gate is always hardened: it runs an image nobody has trusted yet.
            **hardened_defaults(),
        )
        try:
            container.start()
            try:
                result = container.wait(timeout=pipeline.tests.timeout)
                exit_code: int | None = int(result.get("StatusCode", -1))
                timed_out = False
            except requests.exceptions.ConnectionError:
                # docker SDK surfaces the wait timeout as a read timeout on the socket.
                container.kill()
                exit_code, timed_out = None, True
            output = _logs_tail(container, 30)
        finally:
            container.remove(force=True)
        return TestResult(
            passed=exit_code == 0,
            exit_code=exit_code,
            output_tail=output,
            seconds=time.monotonic() - started,
            timed_out=timed_out,
        )

    # What runs ---------------------------------------------------------------------------

    def _containers(self, pipeline_name: str, container_name: str) -> list[Container]:
        labels = [
            f"{LABEL_PIPELINE}={pipeline_name}",
            f"{LABEL_CONTAINER}={container_name}",
            f"{LABEL_ROLE}=service",
        ]
        return list(self.client.containers.list(all=True, sparse=True, filters={"label": labels}))

    def _running(self, pipeline_name: str, container_name: str) -> list[Container]:
        return [
            c
            for c in self._containers(pipeline_name, container_name)
            if c.status in ("running", "restarting")
        ]

    @reaches_engine
    def live(self, pipeline_name: str, pipeline: Pipeline) -> LiveVersion | None:
        running = self._running(pipeline_name, pipeline.container["name"])
        if not running:
            return None
        container = running[0]
        return LiveVersion(
            version=_labels(container).get(LABEL_VERSION, ""),
            rollout_id=_labels(container).get(LABEL_ROLLOUT, ""),
        )

    # The swap ----------------------------------------------------------------------------

    @reaches_engine
    def roll_out(self, request: RolloutRequest, progress: Progress) -> SwapResult:
        pipeline, name = request.pipeline, request.pipeline.container["name"]
        notes: list[str] = []
        if request.located.runs_as_root and pipeline.hardened and "user" not in pipeline.container:
            notes.append("image runs as root (it sets no non-root USER); set container.user")
        old = self._running(request.pipeline_name, name)
        self._check_name_free(name, request.pipeline_name)
        progress.check_cancelled()
        new: Container | None = None
        stopped_at = time.monotonic()
        try:
            with progress.step("start", detail=f"stop {_name(old[0])}" if old else "first deploy"):
                for container in old:
                    container.stop(timeout=STOP_TIMEOUT_SECONDS)
                    self._keep(container, name)
                new = self._start_version(request, name)
            with progress.step("health check", detail=pipeline.health.url):
                self._wait_healthy(new, pipeline)
        except RolloutFailed as failure:
            if new is not None:
                self._discard(new)
            restored = self._restore(old, name, pipeline)
            raise RolloutFailed(
                failure.reason, logs_tail=failure.logs_tail, restored=restored
            ) from failure
        gap = time.monotonic() - stopped_at if old else None
        self._prune(request.pipeline_name, pipeline, request.last_good_version)
        return SwapResult(gap_seconds=gap, notes=notes)

    def _check_name_free(self, name: str, pipeline_name: str) -> None:
        try:
            squatter = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        if _labels(squatter).get(LABEL_PIPELINE) != pipeline_name:
            raise RolloutFailed(
                f"a container named `{name}` exists that immune did not create; "
                "remove or rename it, then deploy again",
                restored=True,
            )

    def _keep(self, container: Container, name: str) -> None:
        """Rename a stopped version out of the way: `web--1.4.1`."""
        version = _labels(container).get(LABEL_VERSION, container.short_id)
        kept_name = f"{name}--{version}"
        if _name(container) == kept_name:
            return
        try:
            previous = self.client.containers.get(kept_name)
        except docker.errors.NotFound:
            pass
        else:
            previous.remove(force=True)
        container.rename(kept_name)

    def _start_version(self, request: RolloutRequest, name: str) -> Container:
        """Start a kept container of this image if there is one (fast), else create one."""
        version = request.image.version
        for candidate in self._containers(request.pipeline_name, name):
            if (
                _labels(candidate).get(LABEL_VERSION) == version
                and _image_id(candidate) == request.located.image_id
                and candidate.status not in ("running", "restarting")
            ):
                if _name(candidate) != name:
                    self._free_name(name)
                    candidate.rename(name)
                candidate.start()
                return candidate
        self._free_name(name)
        return self._create_and_start(request, container_options(request.pipeline), name, name)

    def _create_and_start(
        self,
        request: RolloutRequest,
        options: dict[str, Any],
        name: str,
        base: str,
        extra_labels: dict[str, str] | None = None,
    ) -> Container:
        """Create the version's container named `name` (labelled as `base`'s) and start it;
        RolloutFailed, with nothing left behind, if the engine refuses either."""
        labels = dict(options.pop("labels", None) or {})
        labels.update(
            {
                LABEL_PIPELINE: request.pipeline_name,
                LABEL_VERSION: request.image.version,
                LABEL_ROLLOUT: request.rollout_id,
                LABEL_REFERENCE: request.image.reference,
                LABEL_ROLE: "service",
                LABEL_CONTAINER: base,
                **(extra_labels or {}),
            }
        )
        options["name"] = name
        # A pinned version runs as `repo@sha256:…` (what `docker ps` and inspect show); an
        # engine-only one by its image id, which is as exact.
        image = request.image.reference if request.image.digest else request.located.image_id
        try:
            container = self.client.containers.create(image, labels=labels, detach=True, **options)
        except (docker.errors.APIError, TypeError) as exc:
            raise RolloutFailed(f"the engine refused to create the container: {exc}") from exc
        try:
            container.start()
        except docker.errors.APIError as exc:
            logs = _logs_tail(container)
            self._discard(container)
            raise RolloutFailed(
                f"the container did not start: {exc.explanation}", logs_tail=logs
            ) from exc
        return container

    def _free_name(self, name: str) -> None:
        """A stopped container of ours still holding the live name is kept under its version."""
        try:
            holder = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        if holder.status in ("running", "restarting"):
            raise RolloutFailed(f"`{name}` is still running; refusing to start a second copy")
        self._keep(holder, name)

    def _wait_healthy(
        self, container: Container, pipeline: Pipeline, url: str | None = None
    ) -> None:
        url = url or pipeline.health.url
        deadline = time.monotonic() + pipeline.health.timeout
        last = "no answer yet"
        while True:
            container.reload()
            if container.status in ("exited", "dead"):
                code = container.attrs.get("State", {}).get("ExitCode")
                raise RolloutFailed(
                    f"the container exited with code {code} before it was healthy",
                    logs_tail=_logs_tail(container),
                )
            answer = probe(self.http, url, timeout=min(2.0, pipeline.health.timeout))
            if answer.healthy:
                return
            last = answer.detail
            if time.monotonic() >= deadline:
                raise RolloutFailed(
                    f"health check {url} failed for {pipeline.health.timeout:g}s (last: {last})",
                    logs_tail=_logs_tail(container),
                )
            self.sleep(pipeline.health.interval)

    def _discard(self, container: Container) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)

    def _restore(self, old: list[Container], name: str, pipeline: Pipeline) -> bool:
        if not old:
            return True  # nothing served before; nothing to restore
        container = old[0]
        self._free_name(name)
        container.rename(name)
        container.start()
        try:
            self._wait_healthy(container, pipeline)
        except RolloutFailed:
            logger.error("restored container %s is not healthy", name)
            return False
        return True

    def _prune(self, pipeline_name: str, pipeline: Pipeline, last_good: str | None) -> None:
        """Keep the newest `keep_versions` stopped versions, and the last good one whatever its
        age (a rollback to it is a start); remove older ones and, with `prune_images`, their
        images when nothing else uses them."""
        stopped = [
            c
            for c in self._containers(pipeline_name, pipeline.container["name"])
            if c.status not in ("running",)
            and (last_good is None or _labels(c).get(LABEL_VERSION) != last_good)
        ]
        stopped.sort(key=lambda c: c.attrs.get("Created", 0), reverse=True)
        images: dict[str, str] = {}
        for container in stopped[pipeline.keep_versions :]:
            images[_image_id(container)] = _labels(container).get(LABEL_VERSION, "")
            self._discard(container)
        if pipeline.prune_images:
            for image_id, version in images.items():
                self._remove_image_if_unused(image_id, pipeline, version)

    def _remove_image_if_unused(self, image_id: str, pipeline: Pipeline, version: str) -> None:
        """Remove a pruned version's image unless a container (any, stopped ones too) still
        uses it or another repository names it; a refusal is logged, never raised: pruning
        must not fail a rollout that went live."""
        if not image_id:
            return
        try:
            if self.client.containers.list(all=True, sparse=True, filters={"ancestor": image_id}):
                return
            image = self.client.images.get(image_id)
            names = [*image.tags, *(image.attrs.get("RepoDigests") or [])]
            if any(not _of_repository(n, pipeline.image) for n in names):
                logger.info("kept image %s of %s: other repositories name it", image_id, version)
                return
            # One name at a time: the last one removed takes the image and its layers.
            for name in names:
                self.client.images.remove(name)
            if not names:
                self.client.images.remove(image_id)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            logger.warning("could not remove image %s (%s): %s", image_id, version, exc.explanation)
            return
        logger.info("removed image %s of %s %s (prune_images)", image_id, pipeline.image, version)

    # Side by side, behind a proxy (pipelines with `traffic:`) ---------------------------

    @reaches_engine
    def versions(self, pipeline_name: str, pipeline: Pipeline) -> list[RunningVersion]:
        running = []
        for container in self._running(pipeline_name, pipeline.container["name"]):
            labels = _labels(container)
            if not labels.get(LABEL_PORT, "").isdigit():
                continue  # started before the pipeline was put behind a proxy
            running.append(
                RunningVersion(
                    version=labels.get(LABEL_VERSION, ""),
                    rollout_id=labels.get(LABEL_ROLLOUT, ""),
                    port=int(labels[LABEL_PORT]),
                    image_id=_image_id(container),
                    started_at=str(container.attrs.get("Created", "")),
                    reference=labels.get(LABEL_REFERENCE, ""),
                )
            )
        running.sort(key=lambda v: v.started_at)
        return running

    @reaches_engine
    def start_beside(self, request: RolloutRequest, progress: Progress) -> RunningVersion:
        pipeline, base = request.pipeline, request.pipeline.container["name"]
        assert pipeline.traffic is not None
        version = request.image.version
        containers = self._containers(request.pipeline_name, base)
        port, kept = self._free_port(request, containers)
        url = pipeline.health.url.replace("{port}", str(port))
        with progress.step("start", detail=f"{version} on port {port}, beside what serves"):
            if kept is not None:
                kept.start()
                container = kept
            else:
                container = self._create_beside(request, port)
        with progress.step("health check", detail=url):
            try:
                self._wait_healthy(container, pipeline, url)
            except RolloutFailed:
                self._discard(container)
                raise
        return RunningVersion(
            version=version,
            rollout_id=request.rollout_id,
            port=port,
            image_id=request.located.image_id,
            reference=_labels(container).get(LABEL_REFERENCE, request.image.reference),
        )

    def _free_port(
        self, request: RolloutRequest, containers: list[Container]
    ) -> tuple[int, Container | None]:
        """A port for the new version, and a kept container of it that may start there.

        Ports no container of ours holds come first, taken in turn after the newest one's,
        so a proxy slot (and its counters) is reused as late as possible.
        """
        traffic = request.pipeline.traffic
        assert traffic is not None
        held: dict[int, Container] = {}
        for container in containers:
            label = _labels(container).get(LABEL_PORT, "")
            if label.isdigit():
                held[int(label)] = container
        running = {p for p, c in held.items() if c.status in ("running", "restarting")}
        for port, container in held.items():
            labels = _labels(container)
            if (
                port not in running
                and labels.get(LABEL_VERSION) == request.image.version
                and _image_id(container) == request.located.image_id
                and port in traffic.ports
                and not port_taken(port)
            ):
                return port, container
        newest = max(
            held,
            key=lambda p: str(held[p].attrs.get("Created", "")),
            default=traffic.ports.first - 1,
        )
        ports = list(traffic.ports.numbers())
        start = ports.index(newest) + 1 if newest in ports else 0
        in_turn = ports[start:] + ports[:start]
        taken_by_others = []

        def preference(port: int) -> tuple[bool, str, int]:
            created = str(held[port].attrs.get("Created", "")) if port in held else ""
            return port in held, created, in_turn.index(port)

        for port in sorted(in_turn, key=preference):
            if port in running:
                continue
            if port_taken(port):
                taken_by_others.append(port)
                continue
            if port in held:
                self._discard(held[port])  # a kept version on the port we need: oldest first
            return port, None
        raise RolloutFailed(
            f"no free port in traffic.ports {traffic.ports}: {len(running)} held by running "
            f"versions, {len(taken_by_others)} taken by other processes"
            + (f" ({', '.join(map(str, taken_by_others[:5]))})" if taken_by_others else "")
            + "; free a port there or widen traffic.ports, then try again",
        )

    def _create_beside(self, request: RolloutRequest, port: int) -> Container:
        base = request.pipeline.container["name"]
        version = request.image.version
        name = f"{base}--{version}"
        with contextlib.suppress(docker.errors.NotFound):
            previous = self.client.containers.get(name)
            if _labels(previous).get(LABEL_PIPELINE) != request.pipeline_name:
                raise RolloutFailed(
                    f"a container named `{name}` exists that immune did not create; "
                    "remove or rename it, then deploy again"
                )
            if previous.status in ("running", "restarting"):
                raise RolloutFailed(f"`{name}` is already running on another port")
            previous.remove(force=True)
        options = with_port(container_options(request.pipeline), port)
        options.setdefault("network_mode", "host")
        options["environment"] = _with_port_variable(options.get("environment"), port)
        return self._create_and_start(request, options, name, base, {LABEL_PORT: str(port)})

    @reaches_engine
    def stop_version(
        self, pipeline_name: str, pipeline: Pipeline, port: int, *, keep: bool = True
    ) -> None:
        for container in self._containers(pipeline_name, pipeline.container["name"]):
            if _labels(container).get(LABEL_PORT) != str(port):
                continue
            if not keep:
                self._discard(container)
            elif container.status in ("running", "restarting"):
                container.stop(timeout=STOP_TIMEOUT_SECONDS)
        # Behind a proxy the last good version is the one still serving: running, never pruned.
        self._prune(pipeline_name, pipeline, None)

    @reaches_engine
    def check_health(self, pipeline_name: str, pipeline: Pipeline, port: int) -> None:
        for container in self._running(pipeline_name, pipeline.container["name"]):
            if _labels(container).get(LABEL_PORT) == str(port):
                url = pipeline.health.url.replace("{port}", str(port))
                self._wait_healthy(container, pipeline, url)
                return
        raise RolloutFailed(f"no version of `{pipeline_name}` runs on port {port}")

    def listens(self, port: int) -> bool:
        return port_taken(port)

    # After the engine came back ----------------------------------------------------------

    @reaches_engine
    def reconcile(self, pipeline_name: str, pipeline: Pipeline, live_version: str) -> list[str]:
        """Make the engine run only `live_version` of the pipeline, as Redis records it.

        An engine that restarts starts containers again by their `restart` policy: a kept old
        version among them (stopped by the bot, but `always` brings it back) would fight the
        live one for its port. Each other running version is stopped and kept; the live one is
        started again if the engine's shutdown stopped it. Returns what was done, in words.
        """
        if pipeline.traffic is not None or not live_version:
            # Behind a proxy versions run side by side by design; with nothing recorded live,
            # nothing here is the bot's to correct.
            return []
        name = pipeline.container["name"]
        done: list[str] = []
        containers = self._containers(pipeline_name, name)
        live = [c for c in containers if _labels(c).get(LABEL_VERSION) == live_version]
        for container in containers:
            if container in live or container.status not in ("running", "restarting"):
                continue
            version = _labels(container).get(LABEL_VERSION, container.short_id)
            container.stop(timeout=STOP_TIMEOUT_SECONDS)
            self._keep(container, name)
            done.append(f"stopped `{version}`, which the engine had started again")
        running = [c for c in live if c.status in ("running", "restarting")]
        if running:
            try:
                if _name(running[0]) != name:
                    self._free_name(name)
                    running[0].rename(name)
                # Restarted while another version held its port, it may be in back-off.
                self._wait_healthy(running[0], pipeline)
            except RolloutFailed as failure:
                done.append(f"`{live_version}` runs but is not healthy: {failure.reason}")
            return done
        if not live:
            done.append(f"no container of `{live_version}` is left to start: deploy it again")
            return done
        if not self._restore(live[:1], name, pipeline):
            done.append(f"started `{live_version}` again, but it is not healthy")
        else:
            done.append(f"started `{live_version}` again (the engine had stopped it)")
        return done

    # Recovery after a crash --------------------------------------------------------------

    @reaches_engine
    def recover(self, request: RolloutRequest, progress: Progress) -> bool:
        name = request.pipeline.container["name"]
        new = [
            c
            for c in self._containers(request.pipeline_name, name)
            if _labels(c).get(LABEL_ROLLOUT) == request.rollout_id
        ]
        running_new = [c for c in new if c.status == "running"]
        if running_new:
            with progress.step("health check", detail="after bot restart"):
                try:
                    self._wait_healthy(running_new[0], request.pipeline)
                    return True
                except RolloutFailed:
                    pass
        for container in new:
            self._discard(container)
        if request.from_version:
            with progress.step("restore", detail=f"start {request.from_version} again"):
                old = [
                    c
                    for c in self._containers(request.pipeline_name, name)
                    if _labels(c).get(LABEL_VERSION) == request.from_version
                ]
                running = [
                    c
                    for c in self._containers(request.pipeline_name, name)
                    if c.status == "running"
                ]
                if not running and old and not self._restore(old[:1], name, request.pipeline):
                    raise RolloutFailed(f"could not restore {request.from_version}", restored=False)
        return False
