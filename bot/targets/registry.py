"""Tag -> digest: one manifest request to the image's registry, through the engine.

The engine asks the registry (`GET /distribution/<ref>/json`, the docker SDK's
`images.get_registry_data`) with the credentials the docker SDK reads from `DOCKER_CONFIG`'s
`config.json` (or `~/.docker/config.json`), so the bot never handles them itself and they are
never logged. The engine words its failures as text; `classify` turns them into the domain's
errors, which name the registry, the repository and the tag.
"""

from __future__ import annotations

import logging
import threading

import docker
import docker.auth
import docker.errors
import requests

from bot.domain.errors import (
    ImageNotFound,
    RegistryAuthRefused,
    RegistryUnreachable,
    UnknownRepository,
    UnknownTag,
    WrongPlatform,
)
from bot.domain.images import ImageRef, registry_host
from bot.ports import LookupTimedOut

logger = logging.getLogger(__name__)

DOCKER_HUB = "docker.io"
# The engine's words (distribution's error codes and Go's net errors) for each failure.
_AUTH_WORDS = ("no basic auth credentials", "unauthorized", "authentication required", "denied")
_UNREACHABLE_WORDS = (
    "connection refused",
    "no such host",
    "dial tcp",
    "i/o timeout",
    "client.timeout",
    "tls handshake timeout",
    "network is unreachable",
    "connection reset",
    "server gave http response to https client",
)
_NOT_FOUND_WORDS = ("manifest unknown", "not found", "name unknown", "does not exist")
TAGS_SHOWN = 5


class RegistryLookup:
    """Resolves tags through the engine; `quick` lookups use a client with a short timeout."""

    def __init__(self, client: docker.DockerClient, quick: docker.DockerClient | None) -> None:
        self.client = client
        self.quick = quick or client
        self._platform: str | None = None
        self._platform_lock = threading.Lock()
        self.http = requests.Session()
        self.http.trust_env = False

    def close(self) -> None:
        self.http.close()

    def engine_platform(self) -> str:
        """`linux/amd64`: what the engine runs (asked once; it does not change)."""
        with self._platform_lock:
            if self._platform is None:
                version = self.client.version()
                self._platform = f"{version.get('Os', 'linux')}/{version.get('Arch', 'amd64')}"
            return self._platform

    def digest(self, image: ImageRef, *, quick: bool) -> str:
        """The manifest digest `image.tag` points at now; for a pinned image, its own digest
        after checking the registry has it. Raises the ImageNotFound family or LookupTimedOut."""
        client = self.quick if quick else self.client
        try:
            data = client.images.get_registry_data(image.tagged if image.tag else image.reference)
        except requests.exceptions.Timeout as exc:
            raise LookupTimedOut(f"{registry_of(image)} did not answer in time") from exc
        except requests.exceptions.ConnectionError as exc:
            # A read cut short by the client's timeout surfaces as a ConnectionError too.
            if "timed out" in str(exc).lower():
                raise LookupTimedOut(f"{registry_of(image)} did not answer in time") from exc
            raise
        except docker.errors.APIError as exc:
            raise self.classify(exc, image) from exc
        platform = self.engine_platform()
        if not data.has_platform(platform):
            offered = ", ".join(
                f"{p.get('os')}/{p.get('architecture')}" for p in data.attrs.get("Platforms") or []
            )
            raise WrongPlatform(
                f"`{image.tagged}` has no image for this engine's platform `{platform}` "
                f"(it offers {offered or 'none'}).",
                hint="Build and push it for that platform (docker buildx --platform), "
                "or deploy a tag that has one.",
            )
        return str(data.id)

    def classify(self, exc: docker.errors.APIError, image: ImageRef) -> ImageNotFound:
        """The domain error for the engine's answer about `image` (lookups and pulls alike)."""
        return self.classify_words(str(exc.explanation or exc), exc.status_code, image)

    def classify_words(self, said: str, status: int | None, image: ImageRef) -> ImageNotFound:
        """The same, from the engine's words alone (an error line in a pull's stream)."""
        words = said.lower()
        registry = registry_of(image)
        if any(w in words for w in _AUTH_WORDS):
            return RegistryAuthRefused(
                f"The registry `{registry}` refused access to `{image.repository}` "
                "(authentication required or refused).",
                hint="Give the bot's engine user credentials for it: `docker login "
                f"{registry}` writes them to the config.json that DOCKER_CONFIG names.",
            )
        if any(w in words for w in _UNREACHABLE_WORDS):
            return RegistryUnreachable(
                f"The registry `{registry}` cannot be reached: {short(said)}.",
                hint="Check that it runs and that the engine can reach it; nothing was changed.",
            )
        if status == 404 or any(w in words for w in _NOT_FOUND_WORDS):
            return self._not_found(image, registry)
        return ImageNotFound(f"Could not get `{image.reference}`: {short(said)}")

    def _not_found(self, image: ImageRef, registry: str) -> ImageNotFound:
        """Unknown tag or unknown repository: the registry's tag list tells them apart."""
        tags = self.tags(image, registry)
        if tags is None:
            return UnknownTag(
                f"`{image.tagged}` is not in the registry `{registry}` "
                "(no such tag, or no such repository).",
                hint="Check the version, and that CI pushed it.",
            )
        if not tags:
            return UnknownRepository(
                f"The registry `{registry}` has no repository `{repository_path(image)}`.",
                hint="Check the pipeline's `image`, and that CI pushed to it.",
            )
        shown = ", ".join(f"`{t}`" for t in sorted(tags, reverse=True)[:TAGS_SHOWN])
        what = f"no tag `{image.tag}`" if image.tag else f"no manifest `{image.digest}`"
        return UnknownTag(
            f"`{image.repository}` has {what} in the registry `{registry}`.",
            hint=f"Tags there: {shown}" + (" …" if len(tags) > TAGS_SHOWN else "") + ".",
        )

    def tags(self, image: ImageRef, registry: str) -> list[str] | None:
        """The repository's tags (`/v2/<name>/tags/list`); [] when the registry does not know
        the repository; None when it could not be asked (then unknown tag and unknown
        repository are told together). Only on the error path: never in a good lookup."""
        if registry == DOCKER_HUB:
            return None  # Docker Hub's token dance is not worth an error message
        scheme = "http" if _loopback(registry) else "https"
        url = f"{scheme}://{registry}/v2/{repository_path(image)}/tags/list"
        auth = docker.auth.load_config().resolve_authconfig(registry) or {}
        basic = (auth["username"], auth["password"]) if auth.get("password") else None
        try:
            response = self.http.get(url, auth=basic, timeout=1.0)
            if response.status_code == 401:
                token = self._bearer_token(response, basic)
                if token is None:
                    return None
                response = self.http.get(
                    url, headers={"Authorization": f"Bearer {token}"}, timeout=1.0
                )
        except requests.RequestException:
            return None
        if response.status_code == 404:
            return []
        if response.status_code != 200:
            return None
        try:
            return [str(tag) for tag in response.json().get("tags") or []] or []
        except ValueError:
            return None

    def _bearer_token(
        self, challenge: requests.Response, basic: tuple[str, str] | None
    ) -> str | None:
        """A token registry's answer to its own `WWW-Authenticate: Bearer realm=…` challenge."""
        header = challenge.headers.get("WWW-Authenticate", "")
        if not header.lower().startswith("bearer "):
            return None
        params = dict(
            part.strip().split("=", 1)
            for part in header[len("bearer ") :].split(",")
            if "=" in part
        )
        params = {key: value.strip('"') for key, value in params.items()}
        realm = params.pop("realm", "")
        if not realm:
            return None
        try:
            answer = self.http.get(realm, params=params, auth=basic, timeout=1.0)
            token = answer.json().get("token") or answer.json().get("access_token")
        except (requests.RequestException, ValueError):
            return None
        return str(token) if token else None


def registry_of(image: ImageRef) -> str:
    return registry_host(image.repository) or DOCKER_HUB


def repository_path(image: ImageRef) -> str:
    """The repository's path inside its registry (`team/web` of `host:5000/team/web`)."""
    host = registry_host(image.repository)
    path = image.repository[len(host) + 1 :] if host else image.repository
    return path if "/" in path or host else f"library/{path}"


def _loopback(registry: str) -> bool:
    host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    return host in ("localhost", "[::1]") or host.startswith("127.")


def short(text: object, limit: int = 200) -> str:
    words = str(text or "no details").strip()
    return words if len(words) <= limit else words[: limit - 1] + "…"
