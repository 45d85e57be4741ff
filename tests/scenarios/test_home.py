"""The App Home tab: opened through the signed endpoint (`app_home_opened`), published to the
emulator (`views.publish`), and republished by the refresh job when what a person sees changes.

Pipelines are named after the test (`unique_name`); none of them is ever rolled out, so the
engine is only asked what runs.
"""

from __future__ import annotations

import time
from typing import Any

from tests.scenarios.test_incidents import ERROR_RATE, breach_now, command, web_without_engine
from tests.support.bot_harness import InProcessBot, wait_until
from tests.support.slack_emulator import Call, SlackEmulator

DEV, DEV2, ADMIN, OUTSIDER = "U0DEV1", "U0DEV2", "U0ADMIN", "U0OUTSIDER"
REFRESH = 0.3  # HOME_REFRESH_SECONDS of these bots
QUIET = 6 * REFRESH  # long enough for several refreshes


def open_home(bot: InProcessBot, user: str) -> None:
    response = bot.slack.event(
        {
            "type": "app_home_opened",
            "user": user,
            "channel": "D0HOME" + user[-4:],
            "tab": "home",
            "event_ts": f"{time.time():.6f}",
        }
    )
    assert response.status == 200, response.text


def publishes(emulator: SlackEmulator, user: str) -> list[Call]:
    return [c for c in emulator.calls("views.publish") if c.body.get("user_id") == user]


def view_of(call: Call) -> dict[str, Any]:
    view = call.body["view"]
    assert isinstance(view, dict)
    return view


def text_of(view: dict[str, Any]) -> str:
    parts = []
    for block in view["blocks"]:
        if isinstance(block.get("text"), dict):
            parts.append(block["text"]["text"])
        for element in block.get("elements", []):
            if isinstance(element.get("text"), str):
                parts.append(element["text"])
            elif isinstance(element.get("text"), dict):
                parts.append(element["text"]["text"])
    return "\n".join(parts)


def latest_home(emulator: SlackEmulator, user: str) -> str:
    calls = publishes(emulator, user)
    assert calls and calls[-1].ok, calls[-1].response if calls else "no views.publish"
    return text_of(view_of(calls[-1]))


def wait_for_home(
    emulator: SlackEmulator, user: str, *parts: str, after: int = 0
) -> dict[str, Any]:
    """The first view of `user`'s Home published after their `after`th that shows `parts`."""

    def shown() -> dict[str, Any] | None:
        for call in publishes(emulator, user)[after:]:
            if call.ok and all(part in text_of(view_of(call)) for part in parts):
                return view_of(call)
        return None

    found: dict[str, Any] = wait_until(shown, timeout=15, what=f"{user}'s Home showing {parts}")
    return found


def buttons(view: dict[str, Any]) -> dict[str, str]:
    """action_id -> value of every button in the view (section accessories and actions)."""
    found = {}
    for block in view["blocks"]:
        for element in [block.get("accessory") or {}, *block.get("elements", [])]:
            if element.get("type") == "button":
                found[element["action_id"]] = element.get("value", "")
    return found


def test_home_shows_what_each_person_may_see_and_follows_changes(
    start_bot: Any, emulator: SlackEmulator, unique_name: str
) -> None:
    shop, ledger = f"{unique_name}-shop", f"{unique_name}-ledger"
    bot = start_bot(
        {
            "admins": [ADMIN],
            "pipelines": {
                shop: web_without_engine(shop, kpis=[ERROR_RATE], viewers=[DEV]),
                ledger: web_without_engine(ledger, viewers=[DEV2]),
            },
        },
        home_refresh_seconds=REFRESH,
    )

    open_home(bot, DEV)
    open_home(bot, DEV2)
    open_home(bot, ADMIN)
    open_home(bot, OUTSIDER)
    wait_until(lambda: all(publishes(emulator, u) for u in (DEV, DEV2, ADMIN, OUTSIDER)))
    dev_home = latest_home(emulator, DEV)
    assert f"*{shop}*" in dev_home and ":large_green_circle: open" in dev_home
    assert ledger not in dev_home
    assert "live: `(none)` · last good: `(none)`" in dev_home
    assert ledger in latest_home(emulator, DEV2) and shop not in latest_home(emulator, DEV2)
    admin_home = latest_home(emulator, ADMIN)
    assert shop in admin_home and ledger in admin_home
    nothing = latest_home(emulator, OUTSIDER)
    assert shop not in nothing and ledger not in nothing
    assert "You may see none of the 2 pipeline(s) here" in nothing
    assert f"<@{ADMIN}>" in nothing

    # A halt is shown to those who see the pipeline, by the refresh job, once.
    dev2_before = len(publishes(emulator, DEV2))
    command(bot, "/halt", f"{shop} freeze for the launch")
    halted = wait_for_home(emulator, DEV, ":octagonal_sign: *halted* by <@U0DEV1> <!date^")
    assert "freeze for the launch" in text_of(halted)
    wait_for_home(emulator, ADMIN, "*halted* by <@U0DEV1>")
    time.sleep(QUIET)
    assert len(publishes(emulator, DEV2)) == dev2_before, "ledger's viewer saw nothing change"
    assert len([c for c in publishes(emulator, DEV) if "freeze" in text_of(view_of(c))]) == 1
    mark = len(publishes(emulator, DEV))
    command(bot, "/resume", shop)
    wait_for_home(emulator, DEV, f"*{shop}*", ":large_green_circle: open", after=mark)

    # A breach: the incident, what its analysis lacks, and the button to the five-whys modal.
    incident = breach_now(bot, shop)
    with_incident = wait_for_home(
        emulator, DEV, f"incident {incident.id}", "missing: why 1, why 2, why 3, why 4, why 5"
    )
    assert "`error_rate` breached on `3`" in text_of(with_incident)
    assert "*halted*" in text_of(with_incident)
    assert buttons(with_incident)["five_whys_open"] == incident.id

    pressed = bot.slack.block_action(
        "five_whys_open", message_ts="", message=with_incident, user_id=DEV
    )
    assert pressed.status == 200
    [opened] = emulator.wait_for("views.open")
    assert opened.ok, opened.response
    modal = emulator.latest_view("five_whys")
    assert modal is not None and modal["private_metadata"] == incident.id

    answers = {f"five_whys_why_{n}": {"answer": f"reason {n}"} for n in range(1, 6)}
    answers["five_whys_root_cause"] = {"answer": "no canary"}
    answers["five_whys_test"] = {"answer": "https://ci.example.com/job/7"}
    submitted = bot.slack.view_submission("five_whys", answers, user_id=DEV)
    assert submitted.status == 200 and submitted.text == ""
    wait_for_home(emulator, DEV, f"incident {incident.id}", "analysis complete")

    # Nothing changes: nothing is published again.
    time.sleep(QUIET)
    settled = len(publishes(emulator, DEV))
    time.sleep(QUIET)
    assert len(publishes(emulator, DEV)) == settled


def test_home_pages_long_lists_and_keeps_the_page(
    start_bot: Any, emulator: SlackEmulator, unique_name: str
) -> None:
    names = [f"{unique_name}-p{n:02d}" for n in range(35)]
    bot = start_bot(
        {"admins": [ADMIN], "pipelines": {name: web_without_engine(name) for name in names}},
        home_refresh_seconds=REFRESH,
    )

    open_home(bot, ADMIN)
    wait_until(lambda: publishes(emulator, ADMIN))
    first = view_of(publishes(emulator, ADMIN)[-1])
    assert len(first["blocks"]) <= 100
    shown = text_of(first)
    assert "page 1 of 2 (pipelines 1 to 30)" in shown
    assert f"*{names[29]}*" in shown and f"*{names[30]}*" not in shown
    assert buttons(first) == {"home_next": "1"}

    pressed = bot.slack.block_action("home_next", message_ts="", message=first, user_id=ADMIN)
    assert pressed.status == 200
    second = wait_for_home(emulator, ADMIN, "page 2 of 2 (pipelines 31 to 35)")
    assert f"*{names[30]}*" in text_of(second) and f"*{names[0]}*" not in text_of(second)
    assert buttons(second) == {"home_previous": "0"}

    # A change on page 2 is published on page 2: the page chosen is kept.
    command(bot, "/halt", f"{names[34]} maintenance")
    refreshed = wait_for_home(emulator, ADMIN, "maintenance")
    assert "page 2 of 2" in text_of(refreshed)


def test_two_replicas_publish_a_change_once(
    start_bot: Any, emulator: SlackEmulator, unique_name: str
) -> None:
    name = unique_name
    config = {"admins": [ADMIN], "pipelines": {name: web_without_engine(name)}}
    first = start_bot(config, home_refresh_seconds=REFRESH)
    second = start_bot(config, home_refresh_seconds=REFRESH)

    open_home(first, DEV)
    wait_until(lambda: publishes(emulator, DEV))
    command(second, "/halt", f"{name} two replicas")
    wait_for_home(emulator, DEV, "two replicas")
    time.sleep(QUIET)
    assert len([c for c in publishes(emulator, DEV) if "two replicas" in text_of(view_of(c))]) == 1


def test_a_failed_publish_is_tried_again(
    start_bot: Any, emulator: SlackEmulator, unique_name: str
) -> None:
    name = unique_name
    bot = start_bot(
        {"admins": [ADMIN], "pipelines": {name: web_without_engine(name)}},
        home_refresh_seconds=REFRESH,
    )
    open_home(bot, DEV)
    wait_until(lambda: publishes(emulator, DEV))
    emulator.fail_next("views.publish", "internal_error")
    command(bot, "/halt", f"{name} retried")
    wait_for_home(emulator, DEV, "retried")
    failed = [c for c in publishes(emulator, DEV) if not c.ok]
    assert [c.error for c in failed] == ["internal_error"]
