"""Which exact image a rollout runs: a tag pinned to its manifest digest.

A tag can move after `/deploy` (CI pushes again), so a registry image is resolved to its digest
when the command arrives and the rollout records and runs `repo@sha256:…`. A rollback goes to
the digest that ran, not to wherever the tag points now.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.domain.config import Pipeline
from bot.domain.errors import DigestMismatch, ImageNotFound
from bot.domain.images import DIGEST, ImageRef, resolve_version, short_digest, split_reference
from bot.ports import LookupTimedOut, Target
from bot.store.store import Store

logger = logging.getLogger(__name__)

# How far back a rollback looks for the digest a version ran with.
RAN_LOOKBACK = 50


@dataclass(frozen=True)
class Pinned:
    image: ImageRef
    # The registry did not answer the quick lookup: the rollout resolves the tag first.
    deferred: bool = False


def from_registry(pipeline: Pipeline) -> bool:
    """Whether the pipeline's versions come from a registry (so tags are resolved there)."""
    return pipeline.pull != "never"


def pin_in_ack(target: Target, pipeline: Pipeline, image: ImageRef) -> Pinned:
    """Resolve the tag with the quick lookup (one manifest request, nothing pulled).

    An engine-only pipeline (`pull: never`) and a digest without a tag are left as they are.
    Raises the ImageNotFound family (unknown tag, unreachable registry, …) for the ack to say,
    and DigestMismatch when the person typed `tag@digest` and the tag points elsewhere.
    """
    if not from_registry(pipeline) or image.tag is None:
        return Pinned(image)
    try:
        digest = target.resolve(pipeline, image, quick=True)
    except LookupTimedOut as slow:
        logger.info("tag lookup of %s deferred to the rollout: %s", image.tagged, slow)
        return Pinned(image, deferred=True)
    check_digest(image, digest)
    return Pinned(image.pinned(digest))


def check_digest(image: ImageRef, digest: str) -> None:
    if image.digest is not None and image.digest != digest:
        raise DigestMismatch(
            f"`{image.tagged}` points at `{short_digest(digest)}` in its registry, "
            f"not at the `{short_digest(image.digest)}` you gave.",
            hint="Deploy the tag alone (it is pinned to what it points at now), "
            "or the digest alone.",
        )


def image_that_ran(
    store: Store, name: str, pipeline: Pipeline, version: str, rollout_id: str = ""
) -> ImageRef:
    """`version` of the pipeline pinned to the digest it last ran with, when one is recorded:
    `rollout_id`'s (the last good rollout, or the one that started a baseline still running),
    else the newest rollout of that version that went live. Without a record, the version as
    typed (a deploy resolves it).

    `rollout_id`'s record of that version decides alone: without a digest it ran unpinned, and
    an older rollout's digest of the same tag is not what ran (nor is the scan, which parses up
    to RAN_LOOKBACK records inside Slack's ack, worth making then)."""
    image = resolve_version(pipeline.image, version)
    if image.digest is not None:
        return image
    if rollout_id:
        recorded = store.rollout(rollout_id)
        if recorded is not None and recorded.version == image.version:
            return image.pinned(recorded.image_digest) if recorded.image_digest else image
    ran = store.newest_rollout(
        name,
        lambda r: r.version == image.version and bool(r.image_digest) and r.live_at is not None,
        RAN_LOOKBACK,
    )
    return image.pinned(ran.image_digest) if ran is not None and ran.image_digest else image


def image_running(pipeline: Pipeline, version: str, reference: str) -> ImageRef:
    """`version` of the pipeline pinned as the container that runs it was started
    (`reference`, which a proxy's split keeps for its baseline): the digest it runs, known
    without reading a record inside Slack's ack. Unpinned when it was started unpinned."""
    image = resolve_version(pipeline.image, version)
    if image.digest is not None:
        return image
    _, pinned_to = split_reference(reference)
    return image.pinned(pinned_to) if pinned_to and DIGEST.match(pinned_to) else image


def tag_moved(target: Target, pipeline: Pipeline, image: ImageRef) -> str | None:
    """The digest `image.tag` points at now when it is not the pinned one (None when it is
    the same, or the registry cannot say quickly: a rollback never waits for it)."""
    if not from_registry(pipeline) or image.tag is None or image.digest is None:
        return None
    try:
        now = target.resolve(pipeline, image, quick=True)
    except (LookupTimedOut, ImageNotFound) as unknown:
        logger.info("could not tell whether %s moved: %s", image.tagged, unknown)
        return None
    return now if now != image.digest else None
