"""The hardened defaults every container immune starts gets, unless the config says otherwise.

Decided here once for both targets: the Docker target passes them to the engine as they are;
the Swarm target passes what a service spec can carry (its API has no no-new-privileges).
"""

from __future__ import annotations

from typing import Any

from bot.domain.config import Pipeline

NO_NEW_PRIVILEGES = "no-new-privileges:true"


def hardened_defaults() -> dict[str, Any]:
    """An init process reaps zombies and forwards signals; no privilege gains; no capabilities."""
    return {"init": True, "security_opt": [NO_NEW_PRIVILEGES], "cap_drop": ["ALL"]}


def container_options(pipeline: Pipeline) -> dict[str, Any]:
    """Engine options for a service container: hardened defaults (`hardened: true`), then the
    config's own, which win."""
    options = hardened_defaults() if pipeline.hardened else {}
    options.update(pipeline.container)
    return options
