"""Docker Swarm services as a deploy target: a rollout is a service update the engine runs.

The service is named `container.name` and created on the first deploy. Every later deploy
replaces its whole spec (image, the pipeline's container options translated for a service,
replicas, `update_config`, `rollback_config`, labels); Swarm then replaces the tasks
`parallelism` at a time and, with `failure_action: rollback`, puts the previous spec back by
itself when new tasks crash or never get healthy. immune follows the update task by task, then
probes the pipeline's health URL (`{slot}` in it names each task slot's own URL); a version that
fails either ends with the service on its previous spec and a RolloutFailed.

Swarm keeps one previous spec; immune keeps the history. A rollback whose target is that
previous spec uses the engine's own rollback; any other version is a new update.

With host networking on one node, two tasks cannot hold one port: replicas listen on a port
derived from their slot (an `environment` value such as `PORT: "808{{.Task.Slot}}"`, which
Swarm expands per task), and updates run stop-first.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import docker
import docker.errors
import requests
from docker.models.containers import Container
from docker.models.services import Service
from docker.types import (
    ContainerSpec,
    EndpointSpec,
    Healthcheck,
    NetworkAttachmentConfig,
    RollbackConfig,
    ServiceMode,
    TaskTemplate,
    UpdateConfig,
)
from pydantic import Field, ValidationError

from bot.domain.config import ConfigProblem, Delay, Duration, Pipeline, Strict, problems_of
from bot.domain.images import ImageRef
from bot.ports import (
    LiveVersion,
    LocatedImage,
    Progress,
    RolloutFailed,
    RolloutRequest,
    SwapResult,
    TestResult,
)
from bot.targets.docker_host import (
    LABEL_PIPELINE,
    LABEL_REFERENCE,
    LABEL_ROLE,
    LABEL_ROLLOUT,
    LABEL_VERSION,
    DockerHostTarget,
    _logs_tail,
    check_container_options,
    unknown_container_options,
)
from bot.targets.hardening import container_options
from bot.targets.health import probe

logger = logging.getLogger(__name__)

ROLE_TASK = "swarm-task"
POLL_SECONDS = 0.25
MAX_REMEMBERED_SPECS = 64  # specs whose failed tasks are remembered for the message
NANOSECONDS = 1_000_000_000

# UpdateStatus.State, as the engine reports it.
UPDATING = "updating"
PAUSED = "paused"
COMPLETED = "completed"
ROLLBACK_STARTED = "rollback_started"
ROLLBACK_PAUSED = "rollback_paused"
ROLLBACK_COMPLETED = "rollback_completed"
IN_PROGRESS = frozenset({UPDATING, ROLLBACK_STARTED})
# A service task never ends by itself: one that completed (exit 0) terminated early too, which is
# what a task stopped by its failing health check looks like when the process exits cleanly.
TASK_FAILED = frozenset({"failed", "rejected", "orphaned", "complete"})

NO_NEW_PRIVILEGES_NOTE = (
    "no-new-privileges is not set: this engine's Swarm API has no such option for services"
)


# The `swarm:` section ----------------------------------------------------------------------


class _SwarmPolicy(Strict):
    """How Swarm replaces tasks; every field is sent to the engine.

    The docker SDK's own defaults (parallelism 0 = all at once, failure_action `continue`)
    differ from the engine's (1, `pause`), so immune never leaves one unset.
    """

    parallelism: int = Field(default=1, ge=0)
    delay: Delay = 1.0
    monitor: Duration = 5.0
    # Unset: start-first (the new task is up before the old one stops) wherever the ports
    # allow it; with host networking the new task cannot bind the port the old task holds on
    # its node, so there it is stop-first.
    order: Literal["start-first", "stop-first"] | None = None
    max_failure_ratio: float = Field(default=0.0, ge=0.0, le=1.0)

    def order_for(self, pipeline: Pipeline) -> Literal["start-first", "stop-first"]:
        if self.order is not None:
            return self.order
        return "stop-first" if pipeline.container.get("network_mode") == "host" else "start-first"


class SwarmUpdate(_SwarmPolicy):
    """`update_config`: replacing tasks with a new spec."""

    failure_action: Literal["rollback", "pause", "continue"] = "rollback"


class SwarmRollback(_SwarmPolicy):
    """`rollback_config`: putting the previous spec back (it cannot roll back itself)."""

    failure_action: Literal["pause", "continue"] = "pause"


class SwarmSpec(Strict):
    replicas: int = Field(default=1, ge=1)
    update: SwarmUpdate = SwarmUpdate()
    rollback: SwarmRollback = SwarmRollback()
    # An update (or the engine's rollback) still running after this is treated as failed.
    timeout: Duration = 300.0


# Container options (docker SDK `containers.run()` names) a Swarm service can carry; the
# others (ports, volumes, devices, restart policies, ...) mean something else, or nothing,
# for a service, and are refused by name rather than silently dropped.
SWARM_CONTAINER_OPTIONS = frozenset(
    {
        "name",
        "environment",
        "user",
        "labels",
        "command",
        "entrypoint",
        "working_dir",
        "healthcheck",
        "init",
        "cap_add",
        "cap_drop",
        "network_mode",
        "hostname",
        "read_only",
        "stop_signal",
        "tty",
        "stdin_open",
        "extra_hosts",
        "sysctls",
        "group_add",
    }
)
SLOT_PLACEHOLDER = "{slot}"
SECTION = "swarm"


def swarm_spec(pipeline: Pipeline) -> SwarmSpec:
    """The pipeline's `swarm:` section (checked when the file was loaded)."""
    return SwarmSpec.model_validate(pipeline.section(SECTION))


def check_pipeline(pipeline: Pipeline) -> list[ConfigProblem]:
    """What a Swarm service cannot take: unknown container options, ports, bridge networks."""
    problems = check_container_options(pipeline)
    try:
        SwarmSpec.model_validate(pipeline.section(SECTION))
    except ValidationError as exc:
        problems += problems_of(exc, prefix=SECTION)
    refused = sorted(
        set(pipeline.container) - SWARM_CONTAINER_OPTIONS - set(unknown_container_options(pipeline))
    )
    if refused:
        problems.append(
            ConfigProblem(
                "container",
                f"container option(s) {', '.join(refused)} cannot be used with target: swarm "
                f"(a service takes {', '.join(sorted(SWARM_CONTAINER_OPTIONS))})",
            )
        )
    network = pipeline.container.get("network_mode")
    if network is not None and network != "host":
        problems.append(
            ConfigProblem(
                "container.network_mode",
                "with target: swarm only `host` is supported "
                "(services publish no ports; tasks listen on the node's loopback)",
            )
        )
    return problems


def _nanoseconds(seconds: float) -> int:
    return round(seconds * NANOSECONDS)


def update_config(policy: SwarmUpdate, pipeline: Pipeline) -> UpdateConfig:
    """Every field set: the SDK's defaults (parallelism 0, `continue`) are not the engine's."""
    return UpdateConfig(
        parallelism=policy.parallelism,
        delay=_nanoseconds(policy.delay),
        failure_action=policy.failure_action,
        monitor=_nanoseconds(policy.monitor),
        max_failure_ratio=policy.max_failure_ratio,
        order=policy.order_for(pipeline),
    )


def rollback_config(policy: SwarmRollback, pipeline: Pipeline) -> RollbackConfig:
    return RollbackConfig(
        parallelism=policy.parallelism,
        delay=_nanoseconds(policy.delay),
        failure_action=policy.failure_action,
        monitor=_nanoseconds(policy.monitor),
        max_failure_ratio=policy.max_failure_ratio,
        order=policy.order_for(pipeline),
    )


def health_urls(pipeline: Pipeline) -> list[str]:
    """The pipeline's health URL, once per task slot when it holds `{slot}`."""
    url = pipeline.health.url
    if SLOT_PLACEHOLDER not in url:
        return [url]
    return [
        url.replace(SLOT_PLACEHOLDER, str(slot))
        for slot in range(1, swarm_spec(pipeline).replicas + 1)
    ]


def _argv(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return shlex.split(value)
    return [str(part) for part in value]


def _environment(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, dict):
        return [f"{key}={item}" for key, item in value.items()]
    return [str(item) for item in value]


def _image_matches(spec_image: str, reference: str) -> bool:
    # The engine may pin a tag to a digest (`repo:tag@sha256:…`) when it can resolve it.
    return spec_image == reference or spec_image.split("@", 1)[0] == reference


def _spec_is(spec: dict[str, Any] | None, image: ImageRef) -> bool:
    """Does this service spec run `image` (by its labels and its image reference)?"""
    if not spec:
        return False
    labels = spec.get("Labels") or {}
    container = (spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}
    return labels.get(LABEL_VERSION) == image.version and _image_matches(
        str(container.get("Image", "")), image.reference
    )


def _spec_version(spec: dict[str, Any] | None) -> str:
    return str(((spec or {}).get("Labels") or {}).get(LABEL_VERSION, "?"))


@dataclass(frozen=True)
class Tasks:
    """The service's tasks as they stand, counted against the spec that should run."""

    wanted: int
    current: int  # running tasks of the spec that should run
    failed: list[dict[str, Any]]  # failed tasks of that spec
    others: int  # tasks of other specs still meant to run

    @property
    def converged(self) -> bool:
        return self.current == self.wanted and self.others == 0


class _Detail:
    """Shows a step's detail only when it changes (each change re-renders the message)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.shown = ""

    def show(self, text: str) -> None:
        if text != self.shown:
            self.progress.detail(text)
            self.shown = text


class SwarmTarget:
    """Deploys to Swarm services through the docker SDK (the engine must be a manager)."""

    def __init__(
        self,
        client: docker.DockerClient,
        sleep: Callable[[float], None] = time.sleep,
        poll_seconds: float = POLL_SECONDS,
        lookup_client: docker.DockerClient | None = None,
    ) -> None:
        self.client = client
        self.sleep = sleep
        self.poll_seconds = poll_seconds
        # Images, tag lookups and the test gate are the manager engine's, as for one host.
        self.host = DockerHostTarget(client, sleep, lookup_client)
        self.http = requests.Session()
        self.http.trust_env = False
        # Failed tasks seen while following a rollout: spec's rollout label -> task id -> task.
        self._failures: dict[str, dict[str, dict[str, Any]]] = {}

    def health(self) -> dict[str, object]:
        return self.host.health()

    def close(self) -> None:
        self.http.close()
        self.host.close()

    # Images and the test gate ------------------------------------------------------------

    def locate(
        self,
        pipeline_name: str,
        pipeline: Pipeline,
        image: ImageRef,
        progress: Progress | None = None,
    ) -> LocatedImage:
        return self.host.locate(pipeline_name, pipeline, image, progress)

    def deployable_versions(self, pipeline_name: str, pipeline: Pipeline) -> list[str]:
        return self.host.deployable_versions(pipeline_name, pipeline)

    def resolve(self, pipeline: Pipeline, image: ImageRef, *, quick: bool) -> str:
        return self.host.resolve(pipeline, image, quick=quick)

    def run_tests(self, pipeline: Pipeline, located: LocatedImage, rollout_id: str) -> TestResult:
        return self.host.run_tests(pipeline, located, rollout_id)

    # What runs ---------------------------------------------------------------------------

    def _service(self, name: str) -> Service | None:
        try:
            return self.client.services.get(name)
        except docker.errors.NotFound:
            return None

    def live(self, pipeline_name: str, pipeline: Pipeline) -> LiveVersion | None:
        service = self._service(pipeline.container["name"])
        if service is None:
            return None
        labels = service.attrs["Spec"].get("Labels") or {}
        if labels.get(LABEL_PIPELINE) != pipeline_name:
            return None
        state = (service.attrs.get("UpdateStatus") or {}).get("State")
        healthy = None if state in IN_PROGRESS else state not in (PAUSED, ROLLBACK_PAUSED)
        return LiveVersion(
            version=labels.get(LABEL_VERSION, ""),
            rollout_id=labels.get(LABEL_ROLLOUT, ""),
            healthy=healthy,
        )

    def _tasks(self, service: Service, rollout_label: str) -> Tasks:
        """Tasks meant to run, split by whether they carry the spec with `rollout_label`."""
        current, others = 0, 0
        for task in self.client.api.tasks(filters={"service": service.id}):
            labels = task["Spec"]["ContainerSpec"].get("Labels") or {}
            ours = labels.get(LABEL_ROLLOUT) == rollout_label
            state = task["Status"]["State"]
            if ours and state in TASK_FAILED:
                # Swarm prunes old tasks (5 per slot by default): remember failures as seen.
                self._failures.setdefault(rollout_label, {})[task["ID"]] = task
                while len(self._failures) > MAX_REMEMBERED_SPECS:
                    del self._failures[next(iter(self._failures))]
            if task.get("DesiredState") != "running":
                continue
            if ours and state == "running":
                current += 1
            elif not ours:
                others += 1
        replicas = (service.attrs["Spec"].get("Mode") or {}).get("Replicated", {}).get("Replicas")
        failed = list(self._failures.get(rollout_label, {}).values())
        return Tasks(wanted=int(replicas or 0), current=current, failed=failed, others=others)

    # The rollout -------------------------------------------------------------------------

    def roll_out(self, request: RolloutRequest, progress: Progress) -> SwapResult:
        name = request.pipeline.container["name"]
        service = self._service(name)
        if service is not None:
            owner = (service.attrs["Spec"].get("Labels") or {}).get(LABEL_PIPELINE)
            if owner != request.pipeline_name:
                raise RolloutFailed(
                    f"a Swarm service named `{name}` exists that immune did not create; "
                    "remove or rename it, then deploy again",
                    restored=True,
                )
        notes = self._notes(request)
        progress.check_cancelled()
        if service is None:
            self._create(request, progress)
        elif request.rollback and _spec_is(service.attrs.get("PreviousSpec"), request.image):
            self._roll_back_to_previous(service, request, progress)
        else:
            self._update(service, request, progress)
        return SwapResult(gap_seconds=None, notes=notes)

    def _notes(self, request: RolloutRequest) -> list[str]:
        pipeline = request.pipeline
        notes: list[str] = []
        if pipeline.hardened:
            notes.append(NO_NEW_PRIVILEGES_NOTE)
            if request.located.runs_as_root and "user" not in pipeline.container:
                notes.append("image runs as root (it sets no non-root USER); set container.user")
        return notes

    def _create(self, request: RolloutRequest, progress: Progress) -> None:
        pipeline, name = request.pipeline, request.pipeline.container["name"]
        replicas = swarm_spec(pipeline).replicas
        deadline = time.monotonic() + swarm_spec(pipeline).timeout
        with progress.step("create service", detail=f"{name}: 0/{replicas} running"):
            try:
                self.client.api.create_service(**self._service_spec(request))
            except docker.errors.APIError as exc:
                raise RolloutFailed(
                    f"the engine refused to create service `{name}`: {exc.explanation}"
                ) from exc
            service = self._require(name)
            try:
                self._wait_tasks(
                    service, request.rollout_id, _Detail(progress), deadline, "running"
                )
            except RolloutFailed as failure:
                self._remove(service)
                raise RolloutFailed(failure.reason, logs_tail=failure.logs_tail) from failure
        try:
            self._health_check(service, request.rollout_id, pipeline, progress)
        except RolloutFailed as failure:
            # Nothing served before: take the broken first version away again.
            self._remove(service)
            raise RolloutFailed(failure.reason, logs_tail=failure.logs_tail) from failure

    def _update(self, service: Service, request: RolloutRequest, progress: Progress) -> None:
        pipeline = request.pipeline
        replicas = swarm_spec(pipeline).replicas
        deadline = time.monotonic() + swarm_spec(pipeline).timeout
        previous_version = _spec_version(service.attrs["Spec"])
        policy = swarm_spec(pipeline).update
        detail = (
            f"0/{replicas} updated ({policy.order_for(pipeline)}, {policy.parallelism} at a time)"
        )
        try:
            with progress.step("update service", detail=detail):
                # A refused update changed nothing: its RolloutFailed leaves as it is.
                self._send_update(service, request)
                try:
                    self._follow_update(service, request, _Detail(progress), deadline)
                except RolloutFailed as failure:
                    raise _UpdateFailed(failure) from failure
            try:
                self._health_check(service, request.rollout_id, pipeline, progress)
            except RolloutFailed as failure:
                raise _UpdateFailed(failure) from failure
        except _SwarmRolledBack as rolled_back:
            restored = self._restored(rolled_back.service, pipeline, progress)
            raise RolloutFailed(
                rolled_back.reason, logs_tail=rolled_back.logs_tail, restored=restored
            ) from None
        except _UpdateFailed as failed:
            # Paused, stuck, or never healthy by the health URL: the engine's rollback puts
            # the previous spec back.
            restored = self._roll_back_after_failure(
                service.id, previous_version, pipeline, progress
            )
            raise RolloutFailed(
                failed.failure.reason, logs_tail=failed.failure.logs_tail, restored=restored
            ) from failed.failure

    def _roll_back_to_previous(
        self, service: Service, request: RolloutRequest, progress: Progress
    ) -> None:
        """The target is Swarm's previous spec: the engine's own rollback (`rollback_config`)."""
        pipeline = request.pipeline
        deadline = time.monotonic() + swarm_spec(pipeline).timeout
        label = self._rollout_label(service.attrs["PreviousSpec"])
        with progress.step(
            "roll back service",
            detail=f"Swarm's rollback to its previous spec ({request.image.version})",
        ):
            self._request_rollback(service)
            service = self._require(service.name)
            shown = _Detail(progress)
            state = self._wait_settled(service, shown, deadline, label, "restored")
            if state != ROLLBACK_COMPLETED:
                raise RolloutFailed(
                    f"Swarm's rollback ended {state or 'without a status'}: "
                    f"{self._status_message(service)}",
                    restored=False,
                )
            self._wait_tasks(service, label, shown, deadline, "restored")
        try:
            self._health_check(service, label, pipeline, progress)
        except RolloutFailed as failure:
            # As on one host: the version rolled away from runs again (Swarm's rollback once
            # more swaps the spec with its previous one).
            restored = self._roll_back_after_failure(
                service.id, request.from_version or "?", pipeline, progress
            )
            raise RolloutFailed(
                failure.reason, logs_tail=failure.logs_tail, restored=restored
            ) from failure

    # Talking to the engine ---------------------------------------------------------------

    def _require(self, name: str) -> Service:
        service = self._service(name)
        if service is None:
            raise RolloutFailed(f"Swarm service `{name}` disappeared", restored=False)
        return service

    def _service_spec(self, request: RolloutRequest) -> dict[str, Any]:
        """create_service()/update_service() arguments: the whole spec, nothing inherited."""
        pipeline = request.pipeline
        # security_opt (no-new-privileges) has no place in a service spec: see _notes.
        options = container_options(pipeline)
        immune_labels = {
            LABEL_PIPELINE: request.pipeline_name,
            LABEL_VERSION: request.image.version,
            LABEL_ROLLOUT: request.rollout_id,
            LABEL_REFERENCE: request.image.reference,
        }
        container_labels = dict(options.get("labels") or {})
        container_labels.update(immune_labels)
        container_labels[LABEL_ROLE] = ROLE_TASK
        healthcheck = options.get("healthcheck")
        container = ContainerSpec(
            image=request.image.reference,
            command=_argv(options.get("entrypoint")),
            args=_argv(options.get("command")),
            env=_environment(options.get("environment")),
            user=options.get("user"),
            labels=container_labels,
            workdir=options.get("working_dir"),
            healthcheck=Healthcheck(**healthcheck) if isinstance(healthcheck, dict) else None,
            init=options.get("init"),
            cap_add=options.get("cap_add"),
            cap_drop=options.get("cap_drop"),
            hostname=options.get("hostname"),
            read_only=options.get("read_only"),
            stop_signal=options.get("stop_signal"),
            tty=options.get("tty"),
            open_stdin=options.get("stdin_open"),
            hosts=options.get("extra_hosts"),
            sysctls=options.get("sysctls"),
            groups=options.get("group_add"),
        )
        host_network = options.get("network_mode") == "host"
        template = TaskTemplate(
            container_spec=container,
            networks=[NetworkAttachmentConfig("host")] if host_network else None,
        )
        return {
            "task_template": template,
            "name": options["name"],
            "labels": immune_labels,
            "mode": ServiceMode("replicated", replicas=swarm_spec(pipeline).replicas),
            "update_config": update_config(swarm_spec(pipeline).update, pipeline),
            "rollback_config": rollback_config(swarm_spec(pipeline).rollback, pipeline),
            # Host networking has no virtual IP to balance; DNS round robin asks for none.
            "endpoint_spec": EndpointSpec(mode="dnsrr" if host_network else "vip"),
        }

    def _send_update(self, service: Service, request: RolloutRequest) -> None:
        for attempt in range(3):
            try:
                self.client.api.update_service(
                    service.id,
                    service.version,
                    fetch_current_spec=False,
                    **self._service_spec(request),
                )
                return
            except docker.errors.APIError as exc:
                # "update out of sequence": someone changed the service meanwhile; re-read it.
                if "out of sequence" in str(exc.explanation) and attempt < 2:
                    service.reload()
                    continue
                raise RolloutFailed(
                    f"the engine refused the service update: {exc.explanation}"
                ) from exc

    def _request_rollback(self, service: Service) -> None:
        """`docker service rollback`: the update API with `rollback=previous`.

        docker SDK 7 has no argument for it, so this is the same HTTP call its
        update_service() makes, plus that one query parameter.
        """
        api = self.client.api
        url = f"{api.base_url}/v{api.api_version}/services/{service.id}/update"
        response = api.post(
            url,
            params={"version": service.version, "rollback": "previous"},
            json=service.attrs["Spec"],
            timeout=api.timeout,
        )
        try:
            response.raise_for_status()
        except requests.HTTPError as exc:
            error = docker.errors.create_api_error_from_http_exception(exc)
            raise RolloutFailed(
                f"the engine refused to roll the service back: {error.explanation}",
                restored=False,
            ) from exc

    def _remove(self, service: Service) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            service.remove()

    # Following an update -----------------------------------------------------------------

    @staticmethod
    def _rollout_label(spec: dict[str, Any] | None) -> str:
        container = ((spec or {}).get("TaskTemplate") or {}).get("ContainerSpec") or {}
        return str((container.get("Labels") or {}).get(LABEL_ROLLOUT, ""))

    @staticmethod
    def _status(service: Service) -> str:
        return str((service.attrs.get("UpdateStatus") or {}).get("State") or "")

    @staticmethod
    def _status_message(service: Service) -> str:
        return str((service.attrs.get("UpdateStatus") or {}).get("Message") or "no message")

    def _follow_update(
        self, service: Service, request: RolloutRequest, detail: _Detail, deadline: float
    ) -> None:
        """Until the update completed and every task runs the new spec, or it failed."""
        label = request.rollout_id
        state = self._wait_settled(service, detail, deadline, label, "updated")
        if state == COMPLETED:
            self._wait_tasks(service, label, detail, deadline, "updated")
            return
        failure = self._failure_text(service, label)
        if state in (ROLLBACK_STARTED, ROLLBACK_COMPLETED, ROLLBACK_PAUSED):
            raise _SwarmRolledBack(
                f"Swarm rolled the update back: {self._status_message(service)}{failure}",
                self._failed_logs(service, label),
                service,
            )
        if state == PAUSED:
            raise RolloutFailed(
                f"Swarm paused the update: {self._status_message(service)}{failure}",
                logs_tail=self._failed_logs(service, label),
            )
        raise RolloutFailed(
            f"the update did not finish within {swarm_spec(request.pipeline).timeout:g}s "
            f"(Swarm says: {state or 'no status'}){failure}",
            logs_tail=self._failed_logs(service, label),
        )

    def _wait_settled(
        self, service: Service, detail: _Detail, deadline: float, label: str, verb: str
    ) -> str:
        """Reload until the update status leaves `updating` (returns it) or time runs out.

        Right after an update the status is empty until the orchestrator starts on it.
        """
        while True:
            service.reload()
            state = self._status(service)
            tasks = self._tasks(service, label)
            if state == ROLLBACK_STARTED and verb == "updated":
                text = f"update failed; Swarm rolls back: {self._status_message(service)}"
            else:
                text = f"{tasks.current}/{tasks.wanted} {verb}"
            detail.show(text)
            if state and state not in IN_PROGRESS:
                return state
            if state == ROLLBACK_STARTED and verb == "updated":
                # The engine is already restoring: the new spec has failed; let the caller
                # wait for the restored tasks.
                return state
            if not state and tasks.converged and tasks.current:
                # Nothing for Swarm to update (the spec's tasks already run): done.
                return COMPLETED
            if time.monotonic() >= deadline:
                return state
            self.sleep(self.poll_seconds)

    def _wait_tasks(
        self, service: Service, label: str, detail: _Detail, deadline: float, verb: str
    ) -> None:
        """Until the spec's tasks all run (Swarm may report done before the last one is up)."""
        while True:
            tasks = self._tasks(service, label)
            detail.show(f"{tasks.current}/{tasks.wanted} {verb}")
            if tasks.converged:
                return
            if tasks.failed and verb != "restored":
                raise RolloutFailed(
                    f"a task of the new version failed{self._failure_text(service, label)}",
                    logs_tail=self._failed_logs(service, label),
                )
            if time.monotonic() >= deadline:
                raise RolloutFailed(
                    f"only {tasks.current}/{tasks.wanted} tasks {verb} in time",
                    logs_tail=self._failed_logs(service, label),
                )
            self.sleep(self.poll_seconds)

    def _failure_text(self, service: Service, label: str) -> str:
        errors = []
        for task in self._tasks(service, label).failed[:3]:
            status = task["Status"]
            code = (status.get("ContainerStatus") or {}).get("ExitCode")
            error = status.get("Err") or status.get("Message") or status["State"]
            text = f"slot {task.get('Slot', '?')}: {error}" + (f" (exit {code})" if code else "")
            health = self._health_of(task)
            errors.append(text + (f" [{health}]" if health else ""))
        return ("; " + "; ".join(errors)) if errors else ""

    def _container_of(self, task: dict[str, Any]) -> Container | None:
        container_id = (task["Status"].get("ContainerStatus") or {}).get("ContainerID")
        if not container_id:
            return None
        try:
            return self.client.containers.get(container_id)
        except docker.errors.NotFound:
            return None

    def _health_of(self, task: dict[str, Any]) -> str:
        """`unhealthy: <last probe output>` when the task's health check condemned it."""
        container = self._container_of(task)
        health = (container.attrs.get("State") or {}).get("Health") if container else None
        if not health or health.get("Status") != "unhealthy":
            return ""
        probes = health.get("Log") or []
        last = str(probes[-1].get("Output", "")).strip() if probes else ""
        return f"unhealthy: {last[:200]}" if last else "unhealthy"

    def _failed_logs(self, service: Service, label: str) -> str:
        for task in self._tasks(service, label).failed:
            container = self._container_of(task)
            tail = _logs_tail(container) if container else ""
            if tail:
                return tail
        return ""

    def _health_check(
        self, service: Service, label: str, pipeline: Pipeline, progress: Progress
    ) -> None:
        urls = health_urls(pipeline)
        with progress.step("health check", detail=", ".join(urls)):
            deadline = time.monotonic() + pipeline.health.timeout
            pending = list(urls)
            last = "no answer yet"
            while True:
                for url in list(pending):
                    answer = probe(self.http, url, timeout=min(2.0, pipeline.health.timeout))
                    if answer.healthy:
                        pending.remove(url)
                    else:
                        last = f"{url}: {answer.detail}"
                if not pending:
                    return
                tasks = self._tasks(service, label)
                if tasks.failed:
                    raise RolloutFailed(
                        f"a task failed during the health check{self._failure_text(service, label)}",
                        logs_tail=self._failed_logs(service, label),
                    )
                if time.monotonic() >= deadline:
                    raise RolloutFailed(
                        f"health check failed for {pipeline.health.timeout:g}s (last: {last})"
                    )
                self.sleep(pipeline.health.interval)

    # Putting the previous spec back ------------------------------------------------------

    def _restored(self, service: Service, pipeline: Pipeline, progress: Progress) -> bool:
        """After Swarm's automatic rollback: does the previous spec serve again?"""
        deadline = time.monotonic() + swarm_spec(pipeline).timeout
        with progress.step("restore", detail="Swarm's automatic rollback"):
            if not self._wait_rolled_back(service, progress, deadline):
                return False
        return self._healthy_again(service, pipeline, progress)

    def _wait_rolled_back(self, service: Service, progress: Progress, deadline: float) -> bool:
        """Wait for Swarm's rollback to complete and its tasks to run the previous spec."""
        try:
            label = self._rollout_label(service.attrs["Spec"])
            shown = _Detail(progress)
            state = self._wait_settled(service, shown, deadline, label, "restored")
            if state != ROLLBACK_COMPLETED:
                raise RolloutFailed(f"Swarm's rollback ended {state or 'without a status'}")
            self._wait_tasks(service, label, shown, deadline, "restored")
        except RolloutFailed as failure:
            logger.error("service %s not restored: %s", service.name, failure.reason)
            return False
        return True

    def _roll_back_after_failure(
        self, service_id: str, previous_version: str, pipeline: Pipeline, progress: Progress
    ) -> bool:
        """The update failed without Swarm rolling back: ask for the engine's rollback."""
        try:
            service = self.client.services.get(service_id)
        except docker.errors.NotFound:
            return False
        if not service.attrs.get("PreviousSpec"):
            return False
        deadline = time.monotonic() + swarm_spec(pipeline).timeout
        with progress.step("restore", detail=f"Swarm's rollback to {previous_version}"):
            if self._status(service) not in (ROLLBACK_STARTED, ROLLBACK_COMPLETED):
                try:
                    self._request_rollback(service)
                except RolloutFailed as failure:
                    logger.error("service %s not restored: %s", service.name, failure.reason)
                    return False
                service.reload()
            if not self._wait_rolled_back(service, progress, deadline):
                return False
        return self._healthy_again(service, pipeline, progress)

    def _healthy_again(self, service: Service, pipeline: Pipeline, progress: Progress) -> bool:
        label = self._rollout_label(service.attrs["Spec"])
        try:
            self._health_check(service, label, pipeline, progress)
        except RolloutFailed:
            logger.error("restored service %s is not healthy", service.name)
            return False
        return True

    def reconcile(self, pipeline_name: str, pipeline: Pipeline, live_version: str) -> list[str]:
        """Nothing to correct: a service has one spec, and Swarm itself puts its tasks back
        after the engine restarts."""
        return []

    # Recovery after a crash --------------------------------------------------------------

    def recover(self, request: RolloutRequest, progress: Progress) -> bool:
        """The bot died mid-rollout: let the update settle, then keep it or roll it back."""
        pipeline = request.pipeline
        service = self._service(pipeline.container["name"])
        if service is None:
            if request.from_version:
                raise RolloutFailed(
                    f"service `{pipeline.container['name']}` is gone: "
                    f"{request.from_version} cannot be restored",
                    restored=False,
                )
            return False  # the first deploy never created it
        deadline = time.monotonic() + swarm_spec(pipeline).timeout
        label = self._rollout_label(service.attrs["Spec"])
        shown = _Detail(progress)
        with progress.step("settle", detail="after bot restart: waiting for Swarm"):
            state = self._wait_settled(service, shown, deadline, label, "running")
        label = self._rollout_label(service.attrs["Spec"])  # Swarm may have rolled back
        if _spec_is(service.attrs["Spec"], request.image) and state not in (PAUSED, *IN_PROGRESS):
            try:
                self._wait_tasks(service, label, shown, deadline, "running")
                self._health_check(service, label, pipeline, progress)
                return True
            except RolloutFailed:
                pass
        if _spec_is(service.attrs["Spec"], request.image):
            # The new spec is there but not healthy: put the previous one back.
            if (
                not self._roll_back_after_failure(
                    service.id, request.from_version or "?", pipeline, progress
                )
                and request.from_version
            ):
                raise RolloutFailed(f"could not restore {request.from_version}", restored=False)
            return False
        # The update never happened, or Swarm rolled it back: the old spec must serve.
        if request.from_version and not self._healthy_again(service, pipeline, progress):
            raise RolloutFailed(f"{request.from_version} is not healthy", restored=False)
        return False


class _SwarmRolledBack(Exception):
    """Swarm's failure_action rolled the update back by itself."""

    def __init__(self, reason: str, logs_tail: str, service: Service) -> None:
        super().__init__(reason)
        self.reason = reason
        self.logs_tail = logs_tail
        self.service = service


class _UpdateFailed(Exception):
    """The update went out but did not end healthy: the previous spec must come back."""

    def __init__(self, failure: RolloutFailed) -> None:
        super().__init__(failure.reason)
        self.failure = failure
