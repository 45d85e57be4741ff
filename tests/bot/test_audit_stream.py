"""The audit stream: append-only, stamped with the bot's clock, capped by age and by age only."""

from __future__ import annotations

import secrets

import redis

from bot.domain.clock import FrozenClock
from bot.domain.models import AuditEntry, Rollout, RolloutKind, RolloutStatus
from bot.reports.audit_export import MAX_CHARS, MAX_ENTRIES, cell, export_markdown
from bot.slack.messages import code_block
from bot.store.keys import Keys
from bot.store.store import Store

DAY = 86400.0
T0 = 1_750_000_000.0  # 2025-06-15 15:06:40 UTC


def store_on(client: redis.Redis, clock: FrozenClock, prefix: str, days: float = 90) -> Store:
    return Store(client, Keys(prefix), clock, audit_max_age_days=days)


def write(store: Store, action: str, detail: str = "") -> str:
    return store.audit(actor="U0DEV1", action=action, pipeline="web", outcome="ok", detail=detail)


def test_entries_older_than_the_cap_are_trimmed_and_no_others(redis_client: redis.Redis) -> None:
    clock = FrozenClock(T0)
    store = store_on(redis_client, clock, f"t-{secrets.token_hex(3)}")
    write(store, "day 0")
    clock.advance(30 * DAY)
    write(store, "day 30")
    clock.advance(30 * DAY)
    write(store, "day 60")

    clock.set(T0 + 90 * DAY - 1)  # the first entry is 1 s short of 90 days old: kept
    write(store, "day 90 - 1s")
    assert redis_client.xlen(store.keys.audit()) == 4

    clock.set(T0 + 90 * DAY + 1)
    write(store, "day 90 + 1s")
    actions = [e.action for e in store.audit_entries(limit=100)]
    assert actions == ["day 90 + 1s", "day 90 - 1s", "day 60", "day 30"]
    assert redis_client.xlen(store.keys.audit()) == 4  # exact trimming, not approximate

    clock.set(T0 + 200 * DAY)
    write(store, "day 200")
    assert [e.action for e in store.audit_entries(limit=100)] == ["day 200"]


def test_a_busy_stream_is_never_cut_by_count(redis_client: redis.Redis) -> None:
    clock = FrozenClock(T0)
    store = store_on(redis_client, clock, f"t-{secrets.token_hex(3)}")
    for number in range(1500):
        clock.advance(0.25)
        write(store, f"a{number}", detail="x" * 50)
    assert redis_client.xlen(store.keys.audit()) == 1500
    entries = store.audit_entries(limit=5000)
    assert [e.action for e in entries] == [f"a{n}" for n in reversed(range(1500))]


def test_ids_follow_the_clock_and_never_go_back(redis_client: redis.Redis) -> None:
    clock = FrozenClock(T0)
    prefix = f"t-{secrets.token_hex(3)}"
    store = store_on(redis_client, clock, prefix)
    first = write(store, "first")
    assert first.startswith(f"{int(T0 * 1000)}-")
    same_ms = write(store, "same instant")
    assert same_ms == f"{int(T0 * 1000)}-1"

    # Another replica whose clock is a minute behind appends after, never before.
    behind = store_on(redis_client, FrozenClock(T0 - 60), prefix)
    late = write(behind, "from a slow clock")
    ids = [e.id for e in store.audit_entries(limit=10)]
    assert ids == [late, same_ms, first]
    assert [e.at for e in store.audit_entries(limit=10)] == [T0 - 60, T0, T0]


def test_since_reads_by_the_clocks_time(redis_client: redis.Redis) -> None:
    clock = FrozenClock(T0)
    store = store_on(redis_client, clock, f"t-{secrets.token_hex(3)}")
    for action in ("old", "middle", "new"):
        write(store, action)
        clock.advance(DAY)
    assert [e.action for e in store.audit_entries(since=T0 + DAY)] == ["new", "middle"]


def test_every_field_is_kept_with_its_entry(redis_client: redis.Redis) -> None:
    clock = FrozenClock(T0)
    store = store_on(redis_client, clock, f"t-{secrets.token_hex(3)}")
    store.audit(
        actor="U0LEAD1",
        action="approve",
        pipeline="web",
        outcome="approved",
        detail="demo/web:2; 1 of 1",
        rollout="r-20250615-abcdef",
        command="approve button",
    )
    [entry] = store.audit_entries()
    assert entry.model_dump(exclude={"id"}) == {
        "at": T0,
        "actor": "U0LEAD1",
        "action": "approve",
        "pipeline": "web",
        "outcome": "approved",
        "detail": "demo/web:2; 1 of 1",
        "rollout": "r-20250615-abcdef",
        "command": "approve button",
    }


# The Markdown export ----------------------------------------------------------------------


def entry(at: float, **fields: str) -> AuditEntry:
    values = {"actor": "U0DEV1", "action": "deploy", "pipeline": "web", "outcome": "accepted"}
    return AuditEntry(at=at, **{**values, **fields})


def test_the_export_is_a_markdown_document_in_local_time() -> None:
    rollout = Rollout(
        id="r-20250615-abcdef",
        pipeline="web",
        kind=RolloutKind.deploy,
        version="2",
        reference="demo/web:2",
        requested_by="U0DEV1",
        created_at=T0,
        status=RolloutStatus.failed,
        error="tests failed (exit code 1)",
    )
    markdown = export_markdown(
        "web",
        [entry(T0, command="/deploy web 2", detail="demo/web:2", rollout=rollout.id)],
        [rollout],
        zone="Europe/London",
        now=T0 + 60,
        kept_days=90,
    )
    lines = markdown.splitlines()
    assert lines[0] == "# Audit trail of web"
    assert "Exported 2025-06-15 16:07:40 BST (Europe/London)" in markdown
    assert "keeps 90 days" in markdown
    assert (
        "| 2025-06-15 16:06:40 BST | deploy | 2 | U0DEV1 | failed: tests failed (exit code 1) | - "
        "| r-20250615-abcdef |" in lines
    )
    assert "| When | Who | Action | Outcome | Command | Detail | Rollout |" in lines
    assert (
        "| 2025-06-15 16:06:40 BST | U0DEV1 | deploy | accepted | /deploy web 2 | demo/web:2 "
        "| r-20250615-abcdef |" in lines
    )
    assert "Only the newest" not in markdown


def test_cells_cannot_break_the_table_or_the_code_block() -> None:
    assert cell("a | b\nc `d`") == "a \\| b c 'd'"
    assert cell("") == "-"
    reply = code_block("```inner```")
    assert reply.startswith("```\n") and reply.endswith("\n```")
    assert reply.count("```") == 2


def test_left_out_rows_are_said_to_be_left_out() -> None:
    entries = [entry(T0 - n, detail=f"entry {n}") for n in range(MAX_ENTRIES + 1)]
    markdown = export_markdown("web", entries, [], zone="UTC", now=T0, kept_days=30)
    assert f"Only the newest {MAX_ENTRIES} entries are shown" in markdown
    assert f"entry {MAX_ENTRIES - 1} " in markdown and f"entry {MAX_ENTRIES} " not in markdown
    assert "No rollouts yet." in markdown

    huge = [entry(T0 - n, detail="y" * 1500) for n in range(MAX_ENTRIES)]
    markdown = export_markdown("web", huge, [], zone="UTC", now=T0, kept_days=30)
    assert len(markdown) <= MAX_CHARS + 200
    assert "Only the newest" in markdown


def test_an_empty_trail_says_so() -> None:
    markdown = export_markdown("web", [], [], zone="UTC", now=T0, kept_days=90)
    assert markdown.endswith("No audit entries.")
