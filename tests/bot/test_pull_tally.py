"""The pull step's words from the engine's progress lines (their shapes as dockerd sends them)."""

from __future__ import annotations

from bot.targets.pull import PullTally

LINES: list[dict[str, object]] = [
    {"status": "Pulling from immune/web", "id": "1.4.2"},  # a tag's pull names the tag
    {"status": "Pulling from immune/web", "id": "sha256:4f9dc67a837b"},  # a digest's, the digest
    {"status": "Pulling fs layer", "progressDetail": {}, "id": "a1b2c3d4e5f6"},
    {"status": "Already exists", "progressDetail": {}, "id": "0f0f0f0f0f0f"},
    {
        "status": "Downloading",
        "progressDetail": {"current": 400_000, "total": 1_100_000},
        "progress": "[=====>    ]",
        "id": "a1b2c3d4e5f6",
    },
    {"status": "Verifying Checksum", "progressDetail": {}, "id": "a1b2c3d4e5f6"},
    {"status": "Download complete", "progressDetail": {}, "id": "a1b2c3d4e5f6"},
    {
        "status": "Extracting",
        "progressDetail": {"current": 32768, "total": 1_100_000},
        "id": "a1b2c3d4e5f6",
    },
    {"status": "Pull complete", "progressDetail": {}, "id": "a1b2c3d4e5f6"},
    {"status": "Digest: sha256:4f9dc67a837b"},
    {"status": "Status: Downloaded newer image for 127.0.0.1:15000/demo/web@sha256:4f9dc67a837b"},
]


def test_layers_and_bytes_as_the_pull_goes() -> None:
    tally = PullTally()
    for line in LINES[:5]:
        tally.add(line)
    assert tally.words() == "1/2 layers, 0.4 MB of 1.1 MB"
    for line in LINES[5:]:
        tally.add(line)
    assert tally.words() == "2/2 layers, 1.1 MB of 1.1 MB", "extraction bytes are not downloads"
