"""Provenance from OCI labels: where the source lives, and links to a commit or a range."""

from __future__ import annotations

import pytest

from bot.domain.images import registry_host, source_repo
from bot.domain.models import Provenance, commit_range
from bot.slack.render import link

SHA_A, SHA_B = "a" * 40, "b" * 40


@pytest.mark.parametrize(
    ("source", "url", "commit"),
    [
        ("https://github.com/team/web", "https://github.com/team/web", f"/commit/{SHA_A}"),
        ("https://github.com/team/web.git/", "https://github.com/team/web", f"/commit/{SHA_A}"),
        ("git@github.com:team/web.git", "https://github.com/team/web", f"/commit/{SHA_A}"),
        (
            "https://gitlab.example.com/group/sub/web",
            "https://gitlab.example.com/group/sub/web",
            f"/-/commit/{SHA_A}",
        ),
        (
            "ssh://git@gitlab.com/group/web.git",
            "https://gitlab.com/group/web",
            f"/-/commit/{SHA_A}",
        ),
        ("https://git.example.com/web", "https://git.example.com/web", None),  # no known scheme
    ],
)
def test_source_urls_and_commit_links(source: str, url: str, commit: str | None) -> None:
    repo = source_repo(source)
    assert repo is not None and repo.url == url
    assert repo.commit_url(SHA_A) == (url + commit if commit else None)


@pytest.mark.parametrize("source", ["", "not a url", "file:///src/web"])
def test_a_source_that_is_no_repository_url_gives_no_link(source: str) -> None:
    assert source_repo(source) is None


def test_a_commit_range_needs_both_revisions_and_one_source() -> None:
    good = Provenance(revision=SHA_A, source="https://github.com/team/web")
    bad = Provenance(revision=SHA_B, source="git@github.com:team/web.git")
    commits = commit_range(good, bad)
    assert commits is not None
    assert commits.compare_url == f"https://github.com/team/web/compare/{SHA_A}...{SHA_B}"
    gitlab = commit_range(
        Provenance(revision=SHA_A, source="https://gitlab.com/g/web"),
        Provenance(revision=SHA_B, source="https://gitlab.com/g/web"),
    )
    assert gitlab is not None and gitlab.compare_url == (
        f"https://gitlab.com/g/web/-/compare/{SHA_A}...{SHA_B}"
    )
    assert (
        commit_range(good, Provenance(revision=SHA_B, source="https://github.com/t/other")) is None
    )
    assert commit_range(good, Provenance(source="https://github.com/team/web")) is None
    assert commit_range(None, bad) is None


def test_labels_without_revision_source_or_date_are_no_provenance() -> None:
    assert Provenance.from_labels({"org.opencontainers.image.version": "1.4.2"}) is None
    found = Provenance.from_labels({"org.opencontainers.image.revision": " abc1234 "})
    assert found is not None and found.revision == "abc1234" and found.commit_url() is None


def test_a_label_url_with_mrkdwn_in_it_is_shown_not_linked() -> None:
    assert link("https://x.example/<!channel>", "x") == "x"
    assert link("javascript:alert(1)", "x") == "x"
    assert (
        link("https://github.com/t/w/commit/abc", "abc")
        == "<https://github.com/t/w/commit/abc|abc>"
    )


@pytest.mark.parametrize(
    ("repository", "host"),
    [
        ("demo/web", None),
        ("web", None),
        ("127.0.0.1:15000/demo/web", "127.0.0.1:15000"),
        ("registry.example.com/web", "registry.example.com"),
        ("localhost/web", "localhost"),
    ],
)
def test_registry_host(repository: str, host: str | None) -> None:
    assert registry_host(repository) == host
