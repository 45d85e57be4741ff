"""Typed domain errors: each has a stable `code` and a message for the person who asked."""

from __future__ import annotations


class ImmuneError(Exception):
    """A refusal or failure that is explained to the user, not a bug."""

    code = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def user_text(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message


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
