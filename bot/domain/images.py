"""Image references: what `/deploy web 1.4.2` means on the engine.

A reference is split and checked by the grammar of distribution/reference, which the engine
enforces: `name[:tag][@digest]`, where a tag is whatever follows the last `:` after the last
`/` (so `127.0.0.1:5000/web` is a repository with a registry port, not a tag).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.domain.errors import BadVersion

# From github.com/distribution/reference (regexp.go): the engine rejects anything else.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
REPOSITORY = re.compile(rf"^(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*$")
TAG = re.compile(r"^[\w][\w.-]{0,127}$")
DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


@dataclass(frozen=True)
class ImageRef:
    """One version of a pipeline's image: a tag, a digest, or both."""

    repository: str
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """What the engine is asked for: the digest pins it when present."""
        if self.digest:
            return f"{self.repository}@{self.digest}"
        return f"{self.repository}:{self.tag}"

    @property
    def version(self) -> str:
        """The short name people use in Slack and in container names."""
        if self.tag:
            return self.tag
        assert self.digest is not None
        return self.digest.removeprefix("sha256:")[:12]

    @property
    def tagged(self) -> str:
        """`name:tag` (what a registry's tag points at), or the reference without a tag."""
        return f"{self.repository}:{self.tag}" if self.tag else self.reference

    def pinned(self, digest: str) -> ImageRef:
        """The same version, pinned to the manifest digest its tag pointed at."""
        return ImageRef(self.repository, self.tag, digest)


def short_digest(digest: str) -> str:
    """`sha256:` and the first 12 hex digits: enough to tell versions apart in a message."""
    return digest[: len("sha256:") + 12]


def registry_host(repository: str) -> str | None:
    """The registry a repository names (`127.0.0.1:5000/web` -> `127.0.0.1:5000`), or None.

    distribution/reference's rule: the first path component is a host when it has a `.` or a
    `:`, or is `localhost`; otherwise the name is Docker Hub's.
    """
    first, slash, _ = repository.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def split_reference(reference: str) -> tuple[str, str | None]:
    """`name@digest` or `name:tag` into (name, digest or tag); (name, None) without either."""
    name, at, digest = reference.rpartition("@")
    if at:
        return name, digest
    name, colon, tag = reference.rpartition(":")
    if colon and "/" not in tag:
        return name, tag
    return reference, None


def parse_repository(image: str) -> str:
    """Validate a pipeline's `image` (a repository, without tag)."""
    repository: str
    repository, tag = split_reference(image)
    if tag is not None:
        raise ValueError(f"image {image!r} must not carry a tag or digest: /deploy supplies it")
    if not REPOSITORY.match(repository):
        raise ValueError(f"image {image!r} is not a valid repository name")
    return repository


def resolve_version(repository: str, version: str) -> ImageRef:
    """Turn what someone typed after `/deploy <pipeline>` into an image reference.

    Accepted: a tag (`1.4.2`), a digest (`sha256:…`), or a full reference of the pipeline's own
    repository (`demo/web:1.4.2`, `demo/web@sha256:…`, `demo/web:1.4.2@sha256:…`).
    """
    text = version.strip()
    if not text:
        raise BadVersion("no version given")
    if DIGEST.match(text):
        return ImageRef(repository, None, text)
    if TAG.match(text):
        return ImageRef(repository, text, None)
    if "/" not in text and ":" not in text and "@" not in text:
        raise BadVersion(
            f"`{text}` is not a valid image tag (letters, digits, `_`, `.`, `-`; "
            "at most 128 characters; not starting with `.` or `-`)"
        )
    name, digest_or_tag = split_reference(text)
    tag: str | None = None
    digest: str | None = None
    if digest_or_tag is not None and digest_or_tag.startswith("sha256:"):
        digest = digest_or_tag
        name, tag = split_reference(name)
    else:
        tag = digest_or_tag
    if not REPOSITORY.match(name):
        raise BadVersion(
            f"`{text}` is neither a valid image tag nor a valid image reference",
            hint="Give a tag like `1.4.2`, or a reference like `repo/name:1.4.2` or `repo/name@sha256:…`.",
        )
    if name != repository:
        raise BadVersion(
            f"`{text}` is an image of `{name}`, but this pipeline deploys `{repository}`"
        )
    if digest is not None and not DIGEST.match(digest):
        raise BadVersion(f"`{digest}` is not a valid digest (sha256: and 64 hex digits)")
    if tag is not None and not TAG.match(tag):
        raise BadVersion(f"`{tag}` is not a valid image tag")
    if tag is None and digest is None:
        raise BadVersion(f"`{text}` names no tag or digest")
    return ImageRef(repository, tag, digest)


# Provenance: the OCI labels CI stamps on an image ----------------------------------------

LABEL_REVISION = "org.opencontainers.image.revision"
LABEL_SOURCE = "org.opencontainers.image.source"
LABEL_CREATED = "org.opencontainers.image.created"
LABEL_VERSION = "org.opencontainers.image.version"


@dataclass(frozen=True)
class SourceRepo:
    """Where an image's source lives, as a browsable URL, and how its host links commits."""

    url: str  # https://github.com/team/web (no trailing slash, no .git)
    style: str  # "github" | "gitlab" | "" (no known link scheme)

    def commit_url(self, revision: str) -> str | None:
        if self.style == "github":
            return f"{self.url}/commit/{revision}"
        if self.style == "gitlab":
            return f"{self.url}/-/commit/{revision}"
        return None

    def compare_url(self, good: str, bad: str) -> str | None:
        """The commits from the good version to the bad one."""
        if self.style == "github":
            return f"{self.url}/compare/{good}...{bad}"
        if self.style == "gitlab":
            return f"{self.url}/-/compare/{good}...{bad}"
        return None


_SCP_LIKE = re.compile(r"^(?:[\w.-]+@)?(?P<host>[\w.-]+):(?P<path>(?!\d+/)[\w./-]+)$")


def source_repo(source: str) -> SourceRepo | None:
    """`org.opencontainers.image.source` as a SourceRepo: https and `git@host:path` forms,
    `.git` dropped; GitHub by its host, GitLab by a host with `gitlab` in its name."""
    text = source.strip()
    if not text:
        return None
    scp = _SCP_LIKE.match(text)
    if scp and "://" not in text:
        text = f"https://{scp['host']}/{scp['path']}"
    match = re.match(
        r"^(?:https?|ssh|git)://(?:[^@/]+@)?(?P<host>[^/:]+)(?::\d+)?/(?P<path>.+)$", text
    )
    if match is None:
        return None
    path = match["path"].rstrip("/").removesuffix(".git")
    host = match["host"].lower()
    if not path:
        return None
    style = "github" if host in ("github.com", "www.github.com") else ""
    if "gitlab" in host:
        style = "gitlab"
    return SourceRepo(url=f"https://{host}/{path}", style=style)


def short_revision(revision: str) -> str:
    """A commit as people read it: 7 characters of a hex sha, anything else as it is."""
    return revision[:7] if re.fullmatch(r"[0-9a-f]{8,64}", revision) else revision[:40]
