"""Images from a real registry (Debian's docker-registry), pinned by digest.

The session's registry runs on a free loopback port; each test pushes the demo images it needs
under a repository of its own (`immune-test-<run>/<test name>`) and deploys them through the
signed endpoint, as a pipeline whose `image` names the registry (so `pull` defaults to
`missing`).
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from bot.domain.images import short_digest
from bot.domain.models import RolloutStatus
from tests.scenarios.test_deploy_loop import containers_of, deploy, finished, serving_version
from tests.support.bot_harness import CHANNEL, InProcessBot, docker_pipeline, free_port
from tests.support.services import (
    BUILD_DEMO_IMAGE,
    IMAGE_PREFIX,
    DemoImages,
    PytestRun,
    RegistryServer,
    remove_test_objects,
)

pytestmark = pytest.mark.docker


def untag(client: docker.DockerClient, name: str) -> None:
    """Drop the engine's local tag `name` (the demo image keeps its own), so a deploy of it
    must come from the registry."""
    with contextlib.suppress(docker.errors.NotFound):
        client.api.remove_image(name)


def local_digests(client: docker.DockerClient, repository: str) -> list[str]:
    """The `repo@sha256:…` names the engine holds for `repository`."""
    found = []
    for each in client.images.list():
        found += [d for d in each.attrs.get("RepoDigests") or [] if d.startswith(repository + "@")]
    return found


class Pushed:
    """This test's repository in a registry: `push(demo_tag, as_tag)` returns the digest."""

    def __init__(
        self,
        registry: RegistryServer,
        client: docker.DockerClient,
        demo: DemoImages,
        repository: str,
        host: str | None = None,
    ) -> None:
        self.registry, self.client, self.demo = registry, client, demo
        self.repository = repository
        self.host = host or registry.host
        self.image = f"{self.host}/{repository}"
        self.tags: set[str] = set()

    def push(self, demo_tag: str, as_tag: str | None = None, *, keep_local: bool = False) -> str:
        tag = as_tag or demo_tag
        digest = self.registry.push(
            self.client, self.demo.ref(demo_tag), self.repository, tag, host=self.host
        )
        self.tags.add(tag)
        if not keep_local:
            untag(self.client, f"{self.image}:{tag}")
        return digest

    def cleanup(self) -> None:
        """Drop the engine's names of this repository (the demo images keep theirs)."""
        for image in self.client.images.list(name=self.image):
            names = [*image.tags, *(image.attrs.get("RepoDigests") or [])]
            for name in names:
                if name.startswith((self.image + ":", self.image + "@")):
                    with contextlib.suppress(docker.errors.APIError):
                        self.client.api.remove_image(name)


@pytest.fixture
def pushed(
    registry_server: RegistryServer,
    docker_client: docker.DockerClient,
    demo_images: DemoImages,
    rig_run: PytestRun,
    unique_name: str,
) -> Iterator[Callable[..., Pushed]]:
    made: list[Pushed] = []

    def make(registry: RegistryServer = registry_server) -> Pushed:
        repository = f"{IMAGE_PREFIX}{rig_run.id}/{unique_name}-{len(made)}"
        made.append(Pushed(registry, docker_client, demo_images, repository))
        return made[-1]

    yield make
    remove_test_objects(docker_client, unique_name)  # its containers hold the images
    for each in made:
        each.cleanup()


def registry_pipeline(image: str, name: str, **extra: Any) -> dict[str, Any]:
    return docker_pipeline(image=image, container_name=name, port=free_port(), **extra)


def test_deploy_by_tag_records_and_runs_the_digest(
    start_bot: Callable[..., InProcessBot],
    pushed: Callable[..., Pushed],
    docker_client: docker.DockerClient,
    emulator: Any,
    unique_name: str,
) -> None:
    repo = pushed()
    digest = repo.push("1")
    assert not local_digests(docker_client, repo.image), "the engine must pull it"
    web = registry_pipeline(repo.image, unique_name)
    bot = start_bot({"pipelines": {"web": web}})
    pipeline = bot.ctx.config.pipelines["web"]
    assert pipeline.pull == "missing", "a registry image defaults to missing"
    # The deploy form offers what CI pushed, though the engine holds none of it yet.
    assert bot.ctx.target(pipeline).deployable_versions("web", pipeline) == ["1"]

    started = time.monotonic()
    answer = deploy(bot, "web 1")
    ack_seconds = time.monotonic() - started
    assert f"`{repo.image}:1` (digest `{short_digest(digest)}`)" in answer, answer
    rollout = finished(bot, "web", "1")
    assert rollout.status is RolloutStatus.good, rollout.error
    assert rollout.image_tag == "1" and rollout.image_digest == digest
    assert rollout.reference == f"{repo.image}@{digest}"
    assert serving_version(web) == "1"

    (container,) = [c for c in containers_of(docker_client, web) if c.status == "running"]
    assert container.attrs["Config"]["Image"] == f"{repo.image}@{digest}"
    assert container.labels["immune.reference"] == f"{repo.image}@{digest}"
    assert f"{repo.image}@{digest}" in local_digests(docker_client, repo.image), "pulled"
    pulled = rollout.step("pull")
    assert pulled is not None and pulled.status.value == "done", rollout.steps
    assert re.fullmatch(r"\d+/\d+ layers, [\d.]+ MB( of [\d.]+ MB)?", pulled.detail), pulled.detail
    assert [s.name for s in rollout.steps][:2] == ["locate image", "pull"]

    message = str(emulator.messages(CHANNEL)[-1]["blocks"])
    assert f"`{repo.image}:1` · digest `{short_digest(digest)}`" in message
    print(f"\n/deploy ack with the tag lookup: {ack_seconds * 1000:.0f} ms")


def test_rollback_returns_to_the_digest_that_ran_after_the_tag_moved(
    start_bot: Callable[..., InProcessBot],
    pushed: Callable[..., Pushed],
    docker_client: docker.DockerClient,
    emulator: Any,
    unique_name: str,
) -> None:
    repo = pushed()
    first = repo.push("1")
    repo.push("2")
    web = registry_pipeline(repo.image, unique_name)
    bot = start_bot({"pipelines": {"web": web}})
    deploy(bot, "web 1")
    assert finished(bot, "web", "1").status is RolloutStatus.good
    deploy(bot, "web 2")
    assert finished(bot, "web", "2").status is RolloutStatus.good

    # CI pushes another build under the same tag.
    moved = repo.push("6", as_tag="1")
    assert moved != first

    response = bot.slack.command("/rollback", "web 1")
    answer = str(response.json()["text"])
    assert f"`{short_digest(first)}`" in answer, answer
    assert f"tag `1` now points at `{short_digest(moved)}`" in answer, answer
    back = finished(bot, "web", "1")
    assert back.status is RolloutStatus.good, back.error
    assert back.image_digest == first
    assert serving_version(web) == "1", "the build that ran before, not the one the tag names now"
    running = [c for c in containers_of(docker_client, web) if c.status == "running"]
    assert [c.attrs["Config"]["Image"] for c in running] == [f"{repo.image}@{first}"]
    assert any("now points at" in note for note in back.notes)
    assert "now points at" in str(emulator.messages(CHANNEL)[-1]["blocks"])

    # A new /deploy of the moved tag is the new build (not "already live").
    answer = deploy(bot, "web 1")
    assert f"`{short_digest(moved)}`" in answer, answer
    newest = finished(bot, "web", "1")
    assert newest.image_digest == moved and newest.id != back.id
    assert serving_version(web) == "6"


def test_unknown_tag_and_unknown_repository_are_refused_at_the_ack(
    start_bot: Callable[..., InProcessBot],
    pushed: Callable[..., Pushed],
    registry_server: RegistryServer,
    unique_name: str,
) -> None:
    repo = pushed()
    repo.push("1")
    web = registry_pipeline(repo.image, unique_name)
    ghost = registry_pipeline(
        f"{registry_server.host}/{repo.repository}-never-pushed", unique_name + "-g"
    )
    bot = start_bot({"pipelines": {"web": web, "ghost": ghost}})

    answer = deploy(bot, "web 9")
    assert f"`{repo.image}` has no tag `9` in the registry `{registry_server.host}`" in answer
    assert "Tags there: `1`" in answer
    answer = deploy(bot, "ghost 1")
    assert f"has no repository `{repo.repository}-never-pushed`" in answer, answer
    assert bot.ctx.store.recent_rollouts("web", 5) == []
    assert bot.ctx.store.recent_rollouts("ghost", 5) == []
    refusals = [e.detail for e in bot.ctx.store.audit_entries() if e.outcome == "refused"]
    assert "unknown_tag" in refusals and "unknown_repository" in refusals


def test_registry_down_fails_clearly_with_the_old_version_serving(
    start_bot: Callable[..., InProcessBot],
    pushed: Callable[..., Pushed],
    registry_server: RegistryServer,
    docker_client: docker.DockerClient,
    emulator: Any,
    unique_name: str,
) -> None:
    repo = pushed()
    repo.push("1")
    second = repo.push("2")
    web = registry_pipeline(repo.image, unique_name)
    bot = start_bot({"pipelines": {"web": web}})
    deploy(bot, "web 1")
    assert finished(bot, "web", "1").status is RolloutStatus.good
    assert f"{repo.image}@{second}" not in local_digests(docker_client, repo.image)

    registry_server.stop()
    # Known at the ack: the tag cannot be resolved.
    answer = deploy(bot, "web 2")
    assert f"The registry `{registry_server.host}` cannot be reached" in answer, answer
    assert [r.version for r in bot.ctx.store.recent_rollouts("web", 5)] == ["1"]
    # Known only later: a pinned digest needs no lookup, and its pull fails.
    response = bot.slack.command("/deploy", f"web {second}")
    assert "Deploying" in response.json()["text"]
    failed = finished(bot, "web", second.removeprefix("sha256:")[:12])
    assert failed.status is RolloutStatus.failed
    assert f"The registry `{registry_server.host}` cannot be reached" in failed.error
    assert "1 serves again" in failed.notes
    assert serving_version(web) == "1"
    told = [r.text or "" for r in emulator.responses()]
    assert any("cannot be reached" in text for text in told), told


def test_registry_that_wants_credentials(
    start_bot: Callable[..., InProcessBot],
    pushed: Callable[..., Pushed],
    auth_registry: RegistryServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    unique_name: str,
) -> None:
    repo = pushed(auth_registry)
    digest = repo.push("1")
    web = registry_pipeline(repo.image, unique_name)

    # No credentials for it: 401, said at the ack.
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty-docker-config"))
    bot = start_bot({"pipelines": {"web": web}})
    answer = deploy(bot, "web 1")
    assert f"The registry `{auth_registry.host}` refused access to `{repo.image}`" in answer
    assert "DOCKER_CONFIG" in answer
    bot.stop()

    # With the config.json `docker login` would write: resolved, pulled and run.
    auth_registry.write_docker_config(tmp_path / "docker-config")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    bot = start_bot({"pipelines": {"web": web}})
    answer = deploy(bot, "web 1")
    assert f"`{short_digest(digest)}`" in answer, answer
    rollout = finished(bot, "web", "1")
    assert rollout.status is RolloutStatus.good, rollout.error
    assert rollout.image_digest == digest
    assert serving_version(web) == "1"
    assert auth_registry.password is not None
    assert auth_registry.password not in caplog.text, "credentials are never logged"


class SlowProxy:
    """A TCP forwarder to the registry on a loopback port of its own; while `delay` is set,
    each new connection waits that long before its bytes go through (a slow registry)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay = 0.0
        self._released = threading.Event()  # close() lets every held connection go
        self._serving: list[threading.Thread] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self._stop = threading.Event()
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        self.server.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            serving = threading.Thread(target=self._serve, args=(client, self.delay), daemon=True)
            serving.start()
            self._serving.append(serving)

    def _serve(self, client: socket.socket, delay: float) -> None:
        self._released.wait(delay)
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            client.close()
            return

        def pipe(source: socket.socket, sink: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := source.recv(65536):
                    sink.sendall(data)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
        back.start()
        pipe(client, upstream)
        back.join(10)
        client.close()
        upstream.close()

    def close(self) -> None:
        self._stop.set()
        self._released.set()
        self._accepting.join(5)
        self.server.close()
        for serving in self._serving:
            serving.join(10)


def test_slow_registry_the_ack_does_not_wait_and_the_rollout_resolves_first(
    start_bot: Callable[..., InProcessBot],
    registry_server: RegistryServer,
    docker_client: docker.DockerClient,
    demo_images: DemoImages,
    rig_run: PytestRun,
    unique_name: str,
) -> None:
    proxy = SlowProxy(registry_server.port)
    # The same registry under the proxy's address.
    repository = f"{IMAGE_PREFIX}{rig_run.id}/{unique_name}"
    repo = Pushed(
        registry_server, docker_client, demo_images, repository, host=f"127.0.0.1:{proxy.port}"
    )
    try:
        digest = repo.push("2")
        web = registry_pipeline(repo.image, unique_name)
        bot = start_bot({"pipelines": {"web": web}}, registry_lookup_seconds=1.0)
        proxy.delay = 2.0
        started = time.monotonic()
        answer = deploy(bot, "web 2")
        ack_seconds = time.monotonic() - started
        assert ack_seconds < 2.0, f"the ack waited {ack_seconds:.2f} s"
        assert "the rollout resolves the tag to its digest first" in answer, answer
        rollout = finished(bot, "web", "2", timeout=60)
        assert rollout.status is RolloutStatus.good, rollout.error
        assert rollout.image_digest == digest
        step = rollout.step("resolve tag")
        assert step is not None and step.detail == f"2 -> {short_digest(digest)}"
        assert [s.name for s in rollout.steps][:2] == ["resolve tag", "locate image"]
        assert serving_version(web) == "2"
        print(f"\nack with a registry 2 s slow: {ack_seconds * 1000:.0f} ms")
    finally:
        proxy.close()
        repo.cleanup()


def build_distinct(repo: Pushed, tags: list[str], unique: str, *options: str) -> dict[str, str]:
    """Build demo images of their own (a label no other build has, so no image id is shared
    with the session's demo images) as `repo:<tag>`, push them; tag -> local image id.
    `options`: more of build-demo-image.sh's (`--revision SHA`, `--source URL`)."""
    subprocess.run(
        [str(BUILD_DEMO_IMAGE), "--label", f"immune.test.build={unique}", *options, repo.image]
        + [f"{tag}:ok" for tag in tags],
        check=True,
        capture_output=True,
        timeout=120,
    )
    ids = {}
    for tag in tags:
        repo.registry.push(repo.client, f"{repo.image}:{tag}", repo.repository, tag)
        repo.tags.add(tag)
        ids[tag] = repo.client.images.get(f"{repo.image}:{tag}").id
    return ids


def image_exists(client: docker.DockerClient, image_id: str) -> bool:
    try:
        client.images.get(image_id)
    except docker.errors.ImageNotFound:
        return False
    return True


def test_prune_images_removes_old_versions_images_but_never_the_last_good_one(
    start_bot: Callable[..., InProcessBot],
    pushed: Callable[..., Pushed],
    docker_client: docker.DockerClient,
    rig_run: PytestRun,
    unique_name: str,
) -> None:
    repo = pushed()
    ids = build_distinct(repo, ["1", "2", "3", "4", "5"], unique_name)
    assert len(set(ids.values())) == 5
    # Something else names 2's image: it must outlive its container.
    other = f"{IMAGE_PREFIX}{rig_run.id}/other-{unique_name}"
    docker_client.api.tag(ids["2"], other, "kept")
    web = registry_pipeline(repo.image, unique_name, keep_versions=1, prune_images=True)
    first = start_bot({"pipelines": {"web": web}})
    deploy(first, "web 1")
    assert finished(first, "web", "1").status is RolloutStatus.good  # no KPIs: good at once
    first.stop()
    # Then a watch that never ends in this test (its KPI has no data, which it ignores): each
    # later deploy stays live until the next supersedes it, so 1 stays the last good version.
    web["watch"] = {"interval": "1s", "duration": "10m", "warmup": 0}
    web["kpis"] = [{"name": "errors", "query": "up", "max": 1, "no_data": "ignore"}]
    bot = start_bot({"pipelines": {"web": web}})
    try:
        for version in ["2", "3", "4", "5"]:
            deploy(bot, f"web {version}")
            rollout = finished(bot, "web", version)
            assert rollout.status is RolloutStatus.live, rollout.error
        assert bot.ctx.store.pipeline("web").last_good_version == "1"
        by_version = {
            c.labels["immune.version"]: c.status for c in containers_of(docker_client, web)
        }
        assert by_version == {"5": "running", "4": "exited", "1": "exited"}, by_version
        assert image_exists(docker_client, ids["1"]), "the last good version's image stays"
        assert image_exists(docker_client, ids["2"]), "another repository still names it"
        assert not image_exists(docker_client, ids["3"]), "past keep_versions and unused: removed"
        assert image_exists(docker_client, ids["4"]) and image_exists(docker_client, ids["5"])
    finally:
        with contextlib.suppress(docker.errors.APIError):
            docker_client.api.remove_image(f"{other}:kept")


def test_the_rollout_message_and_history_link_the_images_commit(
    start_bot: Callable[..., InProcessBot],
    pushed: Callable[..., Pushed],
    emulator: Any,
    unique_name: str,
) -> None:
    repo = pushed()
    revision = "4f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39"
    source = "https://github.com/example/immune-demo"
    build_distinct(repo, ["7"], unique_name, "--revision", revision, "--source", source + ".git")
    web = registry_pipeline(repo.image, unique_name)
    bot = start_bot({"pipelines": {"web": web}})
    deploy(bot, "web 7")
    rollout = finished(bot, "web", "7")
    assert rollout.status is RolloutStatus.good, rollout.error
    assert rollout.provenance is not None
    assert (rollout.provenance.revision, rollout.provenance.source) == (revision, source + ".git")
    assert rollout.provenance.created.endswith("Z")
    commit = f"commit <{source}/commit/{revision}|4f2a9c1>"
    message = str(emulator.messages(CHANNEL)[-1]["blocks"])
    assert commit in message, message
    assert "from <https://github.com/example/immune-demo|github.com/example/immune-demo>" in message
    response = bot.slack.command("/pipeline", "history web")
    assert commit in str(response.json()["text"]), response.json()


def test_a_stalled_pull_fails_the_rollout_with_the_old_version_serving(
    start_bot: Callable[..., InProcessBot],
    registry_server: RegistryServer,
    docker_client: docker.DockerClient,
    demo_images: DemoImages,
    rig_run: PytestRun,
    unique_name: str,
) -> None:
    proxy = SlowProxy(registry_server.port)
    repository = f"{IMAGE_PREFIX}{rig_run.id}/{unique_name}"
    repo = Pushed(
        registry_server, docker_client, demo_images, repository, host=f"127.0.0.1:{proxy.port}"
    )
    try:
        repo.push("1")
        second = repo.push("2")
        web = registry_pipeline(repo.image, unique_name, pull_timeout="1500ms")
        bot = start_bot({"pipelines": {"web": web}})
        deploy(bot, "web 1")
        assert finished(bot, "web", "1").status is RolloutStatus.good
        proxy.delay = 20.0  # the registry stops answering (connections held, no bytes)
        started = time.monotonic()
        deploy(bot, f"web {second}")  # pinned: no lookup at the ack, the pull meets the stall
        failed = finished(bot, "web", second.removeprefix("sha256:")[:12], timeout=30)
        took = time.monotonic() - started
        assert failed.status is RolloutStatus.failed
        assert "stalled: nothing for 1.5s (pull_timeout" in failed.error, failed.error
        pull_step = failed.step("pull")
        assert pull_step is not None and pull_step.status.value == "failed"
        assert "1 serves again" in failed.notes
        assert serving_version(web) == "1"
        assert took < 10, f"the stall took {took:.1f} s to fail"
        print(f"\nstalled pull failed after {took:.2f} s (pull_timeout 1.5 s)")
    finally:
        proxy.close()
        repo.cleanup()


def test_an_image_for_another_platform_is_refused_at_the_ack(
    start_bot: Callable[..., InProcessBot],
    pushed: Callable[..., Pushed],
    registry_server: RegistryServer,
    docker_client: docker.DockerClient,
    unique_name: str,
) -> None:
    repo = pushed()
    engine = docker_client.version()
    foreign = "arm64" if engine.get("Arch") != "arm64" else "amd64"
    registry_server.push_foreign_platform(repo.repository, "1", foreign)
    web = registry_pipeline(repo.image, unique_name)
    bot = start_bot({"pipelines": {"web": web}})
    answer = deploy(bot, "web 1")
    platform = f"{engine.get('Os')}/{engine.get('Arch')}"
    assert (
        f"`{repo.image}:1` has no image for this engine's platform `{platform}` "
        f"(it offers linux/{foreign})"
    ) in answer, answer
    assert bot.ctx.store.recent_rollouts("web", 5) == []


def test_pull_missing_uses_the_engines_copy_and_pull_always_pulls_again(
    start_bot: Callable[..., InProcessBot],
    pushed: Callable[..., Pushed],
    unique_name: str,
) -> None:
    repo = pushed()
    first = repo.push("1", keep_local=True)  # a push leaves the engine holding repo@digest
    second = repo.push("2", keep_local=True)
    missing = registry_pipeline(repo.image, unique_name)
    always = registry_pipeline(repo.image, unique_name + "-a", pull="always")
    bot = start_bot({"pipelines": {"web": missing, "api": always}})
    deploy(bot, "web 1")
    found = finished(bot, "web", "1")
    assert found.status is RolloutStatus.good and found.image_digest == first
    assert found.step("pull") is None, "missing: the engine had the digest, nothing pulled"
    deploy(bot, "api 2")
    pulled = finished(bot, "api", "2")
    assert pulled.status is RolloutStatus.good and pulled.image_digest == second
    step = pulled.step("pull")
    assert step is not None and step.status.value == "done", "always: pulled again"
