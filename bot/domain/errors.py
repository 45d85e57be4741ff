"""Typed domain errors: each has a stable `code` and a message for the person who asked."""

from __future__ import annotations

from bot.domain.text import Text, as_text


class ImmuneError(Exception):
    """A refusal or failure that is explained to the user, not a bug.

    Its words are a Text: the chat layer shows the people and times in it its own way; `str()`
    and `message` are the plain rendering, for logs and records.
    """

    code = "error"
    # (pipeline, version) when the refused deploy may wait in the pipeline's queue instead
    # (the pipeline was busy or outside its window): the answer offers a "Queue it" button.
    queue_offer: tuple[str, str] | None = None
    # A pipeline whose version the person should pick from a form instead (`/rollback web`
    # when the live version is already the last good one).
    pick_version_of: str | None = None

    def __init__(self, message: Text | str, *, hint: Text | str | None = None) -> None:
        self.words = as_text(message)
        self.hint = as_text(hint) if hint else None
        super().__init__(self.words.plain())

    @property
    def message(self) -> str:
        return self.words.plain()

    def text(self) -> Text:
        """What the person who asked is told: the message, then what to do instead."""
        return self.words + "\n" + self.hint if self.hint else self.words


class ConfigError(ImmuneError):
    code = "config_invalid"


class SettingsError(ImmuneError):
    code = "settings_invalid"


class UsageError(ImmuneError):
    """The command could not be parsed."""

    code = "usage"


class UnknownPipeline(ImmuneError):
    code = "unknown_pipeline"


class BadVersion(ImmuneError):
    code = "bad_version"


class ImageNotFound(ImmuneError):
    code = "image_not_found"


class AlreadyLive(ImmuneError):
    code = "already_live"


class RolloutInFlight(ImmuneError):
    code = "rollout_in_flight"


class PipelineHalted(ImmuneError):
    code = "pipeline_halted"


class NotAllowed(ImmuneError):
    code = "not_allowed"


class OutsideWindow(ImmuneError):
    code = "outside_window"


class NothingToRollBackTo(ImmuneError):
    code = "nothing_to_roll_back_to"


class ResumeRefused(ImmuneError):
    code = "resume_refused"


class NotFound(ImmuneError):
    code = "not_found"


class Duplicate(ImmuneError):
    """The same request was already handled (a Slack retry or a double click)."""

    code = "duplicate"


class EngineUnreachable(ImmuneError):
    """The engine a pipeline deploys to does not answer (stopped, restarting, its socket gone).

    Targets raise it for connection failures, so the use cases can wait for the engine, pause
    what depends on it and refuse deploys, instead of treating it as a bug.
    """

    code = "engine_unreachable"


# What a registry answers for an image (bot/targets/registry.py classifies the engine's words).
# Each is an ImageNotFound: the image could not be had, so a rollout that meets one fails with
# the old version serving, and the requester is told why.


class UnknownTag(ImageNotFound):
    code = "unknown_tag"


class UnknownRepository(ImageNotFound):
    code = "unknown_repository"


class RegistryUnreachable(ImageNotFound):
    code = "registry_unreachable"


class RegistryAuthRefused(ImageNotFound):
    code = "registry_auth_refused"


class WrongPlatform(ImageNotFound):
    code = "wrong_platform"


class DigestMismatch(ImageNotFound):
    code = "digest_mismatch"
