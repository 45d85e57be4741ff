"""The deploy and rollback forms: what they offer a person, and their submission.

A form opens inside the command's 3 s, so `deploy_form` reads only the config and Redis; the
engine's versions are asked for after the modal is open (`with_versions`). A submission is
checked against the config and the engine as they are now (the pipeline may have left the
config, the version the engine, since the form opened), then takes the slash command's own
path: `deploys.deploy` / `deploys.rollback`, with every rule and the once-only claim.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from bot.domain.config import Pipeline
from bot.domain.errors import ImmuneError, NotAllowed
from bot.domain.parsing import wants_help
from bot.domain.text import say
from bot.services import deploys
from bot.services.context import Context
from bot.services.policy import check_may_run
from bot.services.requests import CommandRequest, Reply

# Slack's static select holds at most 100 options.
MAX_VERSIONS = 100


@dataclass(frozen=True)
class VersionChoice:
    version: str
    live: bool


@dataclass(frozen=True)
class DeployForm:
    """A form for one person in one channel: the pipelines they may deploy there."""

    kind: str  # "deploy" | "rollback"
    channel: str
    pipelines: list[str]
    chosen: str | None = None
    versions: list[VersionChoice] = field(default_factory=list)
    versions_known: bool = False  # False until the engine was asked (or for a rollback)
    problem: str = ""  # why no versions could be listed


def wants_form(command: str, text: str) -> bool:
    """`/deploy` with no version (nothing, or only a pipeline) asks for the form."""
    words = text.split()
    return (
        command == "/deploy"
        and not wants_help(text)
        and len(words) <= 1
        and not any(w.startswith("-") for w in words)
    )


def _may_deploy(ctx: Context, name: str, pipeline: Pipeline, request: CommandRequest) -> bool:
    user = request.user_id
    return pipeline.may_command_from(request.channel_id) and (
        ctx.config.is_admin(user) or pipeline.deployers is None or user in pipeline.deployers
    )


def deploy_form(ctx: Context, request: CommandRequest) -> DeployForm:
    """What the deploy form offers; refused like the command when it names a pipeline the
    person may not deploy from here. Fast: the config and nothing else."""
    words = request.text.split()
    if words:
        name = words[0].lower()
        check_may_run(ctx, name, request)
        return DeployForm("deploy", request.channel_id, [name], chosen=name)
    allowed = [
        name
        for name, pipeline in sorted(ctx.config.pipelines.items())
        if _may_deploy(ctx, name, pipeline, request)
    ]
    if not allowed:
        raise NotAllowed(
            "You may deploy none of the pipelines from this channel.",
            hint="Each pipeline takes commands in its own channel (`command_channels`) from its "
            "`deployers`; `/pipeline` lists them.",
        )
    return DeployForm(
        "deploy", request.channel_id, allowed, chosen=allowed[0] if len(allowed) == 1 else None
    )


def choose_pipeline(ctx: Context, form: DeployForm, name: str) -> DeployForm:
    chosen = name if name in form.pipelines and name in ctx.config.pipelines else None
    return replace(form, chosen=chosen, versions=[], versions_known=False, problem="")


def with_versions(ctx: Context, form: DeployForm) -> DeployForm:
    """The chosen pipeline's deployable versions from the engine, newest first, live marked."""
    if form.chosen is None or form.chosen not in ctx.config.pipelines:
        return form
    pipeline = ctx.config.pipelines[form.chosen]
    live = ctx.store.pipeline(form.chosen).live_version
    try:
        versions = ctx.target(pipeline).deployable_versions(form.chosen, pipeline)
    except ImmuneError as error:
        return replace(form, versions=[], versions_known=True, problem=error.message)
    choices = [VersionChoice(v, v == live) for v in versions[:MAX_VERSIONS]]
    problem = "" if choices else f"No version of `{pipeline.image}` is on the Docker engine."
    return replace(form, versions=choices, versions_known=True, problem=problem)


def rollback_form(ctx: Context, request: CommandRequest, name: str) -> DeployForm:
    """`/rollback web` when the live version is the last good one: pick an earlier good one."""
    state = ctx.store.pipeline(name)
    versions = deploys.recent_versions(ctx, name, exclude=state.live_version, limit=MAX_VERSIONS)
    return DeployForm(
        "rollback",
        request.channel_id,
        [name],
        chosen=name,
        versions=[VersionChoice(v, False) for v in versions],
        versions_known=True,
        problem="" if versions else f"`{name}` has no earlier good version to go back to.",
    )


@dataclass(frozen=True)
class Submitted:
    kind: str
    user: str
    channel: str
    pipeline: str
    version: str
    reason: str
    request_id: str  # the same on Slack's retries of one submission


def check_submission(ctx: Context, submitted: Submitted) -> dict[str, str]:
    """Field errors (`pipeline`, `version`) of a submission as things stand now; {} if none."""
    if not submitted.pipeline:
        return {"pipeline": "Pick a pipeline."}
    pipeline = ctx.config.pipelines.get(submitted.pipeline)
    if pipeline is None:
        return {
            "pipeline": f"`{submitted.pipeline}` is no longer in the pipelines file: pick "
            "another, or close this form."
        }
    if not submitted.version:
        return {"version": "Pick a version."}
    if submitted.kind == "deploy":
        try:
            available = ctx.target(pipeline).deployable_versions(submitted.pipeline, pipeline)
        except ImmuneError as error:
            return {"version": error.message}
        if submitted.version not in available:
            return {
                "version": f"`{submitted.version}` is no longer on the Docker engine: pick "
                "another version."
            }
    return {}


def submit(ctx: Context, submitted: Submitted) -> Reply:
    """The slash command's own path, as if `/deploy <pipeline> <version>` had been typed."""
    request = CommandRequest(
        command=f"/{submitted.kind}",
        text=f"{submitted.pipeline} {submitted.version}",
        user_id=submitted.user,
        channel_id=submitted.channel,
        request_id=submitted.request_id,
    )
    operation = deploys.deploy if submitted.kind == "deploy" else deploys.rollback
    reply = operation(ctx, request)
    if submitted.reason:
        ctx.audit(
            actor=submitted.user,
            action=submitted.kind,
            pipeline=submitted.pipeline,
            outcome="reason",
            detail=submitted.reason,
            command=request.typed,
        )
        reply = Reply(reply.text + say(" Reason noted: {}", submitted.reason))
    return reply
