"""The whole loop on this machine, with no Slack account: `scripts/demo.sh` (or `make demo`).

The real bot (`python -m bot`) runs against a local emulator of Slack's Web API; the commands
below reach it exactly as Slack sends them (signed HTTP requests to POST /slack/events), and
it deploys the demo service on the real Docker engine behind the real HAProxy (driven through
its runtime API), watched by the real Prometheus from HAProxy's own per-version metrics. The
versions come from the local registry (127.0.0.1:15000), where scripts/demo.sh pushed them
with their OCI labels: each tag is pinned to its digest and pulled, and the rollout message
shows the tag, the digest and the commit.

    scripts/demo.sh              the scripted story: deploy, an upgrade by canary, a bad version
                                 caught at its first canary step and rolled back, halt, five
                                 whys (the Home tab shows the incident), resume; a steady load through HAProxy all along, and
                                 what it saw, phase by phase
    scripts/demo.sh --console    type the slash commands yourself

The pipelines file is written to var/demo/pipelines.yml, where scripts/services.sh also reads
it (`demo.py --write-pipelines`) to start the demo's HAProxy when a pipeline has `traffic:`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import redis
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot.domain.models import Rollout, RolloutKind, TrafficSplit  # noqa: E402
from tests.support.bot_harness import (  # noqa: E402
    BotProcess,
    bot_settings,
    write_pipelines,
)
from tests.support.load import Response, SteadyLoad  # noqa: E402
from tests.support.slack_emulator import SlackEmulator  # noqa: E402

CHANNEL = "C0DEPLOY"
USER = "U0DEV1"
PREFIX = "immune-demo"
CONTAINER = "immune-demo-web"
BOT_PORT = 3000
# HAProxy's frontend, where clients (and the demo's load) reach web; each version gets its
# own port from VERSION_PORTS. The runtime socket lives with the other services' files in
# var/run (scripts/services.sh starts HAProxy from `python -m bot proxy-config`).
LISTEN_PORT = 18090
VERSION_PORTS = "18091-18096"
RUNTIME_API = REPO / "var" / "run" / "haproxy.sock"
CANARY_STEPS = [10, 50, 100]
STEP_SECONDS = 6
WATCH_SECONDS = 6
DRAIN_SECONDS = 1
LOAD_RATE = 80.0  # requests/s, loopback only
LOAD_MAX_SECONDS = 120.0  # the load stops by itself after this, whatever happens
SHARE_TOLERANCE = 10  # percentage points a canary step's measured share may be off
BAD_VERSION = "3"


def demo_config(image: str) -> dict[str, Any]:
    web = {
        "channel": CHANNEL,
        "target": "docker",
        "image": image,
        "container": {"name": CONTAINER, "network_mode": "host"},
        "health": {
            "url": "http://127.0.0.1:{port}/healthz",
            "timeout": "10s",
            "interval": "100ms",
        },
        "traffic": {
            "listen": f"127.0.0.1:{LISTEN_PORT}",
            "runtime_api": str(RUNTIME_API),
            "backend": "web",
            "ports": VERSION_PORTS,
            "strategy": "canary",
            "steps": CANARY_STEPS,
            "step_duration": f"{STEP_SECONDS}s",
            "drain": f"{DRAIN_SECONDS}s",
        },
        "watch": {"interval": "1s", "duration": f"{WATCH_SECONDS}s", "warmup": 1},
        "kpis": [
            {
                "name": "error_rate",
                "builtin": "error_rate",  # 5xx / all, of the version under test, from HAProxy
                "window": "3s",
                "max": 0.05,
                "for": 2,
                "no_data": "ignore",  # a version that has served nothing yet is not judged
            }
        ],
    }
    return {"timezone": "Europe/London", "admins": ["U0ADMIN"], "pipelines": {"web": web}}


def show_blocks(blocks: list[dict[str, Any]] | None, indent: str = "    ") -> None:
    for block in blocks or []:
        text = (
            (block.get("text") or {}).get("text") if isinstance(block.get("text"), dict) else None
        )
        if text:
            print("\n".join(indent + line for line in text.splitlines()))
        if block.get("type") == "input":
            print(f"{indent}{block['label']['text']}: [{block['element'].get('type')}]")
        accessory = block.get("accessory") or {}
        for element in [*(block.get("elements") or []), *([accessory] if accessory else [])]:
            if element.get("type") == "button":
                print(
                    f"{indent}[{element['text']['text']}]  action_id={element['action_id']} value={element.get('value')}"
                )
            elif isinstance(element.get("text"), str):
                print(indent + element["text"])
        for field in block.get("fields") or []:
            print(indent + field.get("text", ""))


class Transcript:
    """Prints what appeared or changed in the channel since the last look."""

    def __init__(self, emulator: SlackEmulator) -> None:
        self.emulator = emulator
        self.seen: dict[str, str] = {}

    def flush(self) -> None:
        for message in self.emulator.messages(CHANNEL):
            self._show(message, thread=False)
            for reply in self.emulator.replies(CHANNEL, message["ts"]):
                if reply["ts"] != message["ts"]:
                    self._show(reply, thread=True)
        for file_id, upload in self.emulator.uploaded_files().items():
            key = f"file:{file_id}"
            if key not in self.seen:
                self.seen[key] = "1"
                path = REPO / "var" / "demo" / (upload.get("filename") or f"{file_id}.png")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(upload["bytes"])
                print(f"  📈 chart uploaded to the alert's thread: saved as {path}")

    def _show(self, message: dict[str, Any], thread: bool) -> None:
        state = json.dumps([message.get("text"), message.get("blocks")], sort_keys=True)
        if self.seen.get(message["ts"]) == state:
            return
        verb = "updated" if message["ts"] in self.seen else "posted"
        self.seen[message["ts"]] = state
        where = "   ↳ in thread" if thread else f"#{CHANNEL}"
        print(f"\n  [{where}, {verb}] {message.get('text', '')[:200]}")
        show_blocks(message.get("blocks"))


def command(bot: BotProcess, transcript: Transcript, line: str, user: str = USER) -> str:
    name, _, text = line.partition(" ")
    print(f"\n$ {line}   (as <@{user}>)")
    response = bot.slack.command(name, text, user_id=user)
    answer = (
        response.json().get("text", "") if response.status == 200 else f"HTTP {response.status}"
    )
    print("\n".join("  (only you) " + row for row in answer.splitlines()))
    return str(answer)


def say_in_thread(bot: BotProcess, thread_ts: str, text: str, user: str = USER) -> None:
    print(f"\n$ (reply in the alert's thread) {text}")
    bot.slack.send_message(CHANNEL, user, text, thread_ts=thread_ts)


def home_views(emulator: SlackEmulator, user: str) -> list[dict[str, Any]]:
    return [
        call.body["view"]
        for call in emulator.calls("views.publish")
        if call.ok and call.body.get("user_id") == user
    ]


def open_home(bot: BotProcess, user: str = USER) -> dict[str, Any]:
    """Open `user`'s Home tab as Slack does (an `app_home_opened` event) and show what the bot
    published there (`views.publish`)."""
    print(f"\n$ (open the app's Home tab)   (as <@{user}>)")
    before = len(home_views(bot.emulator, user))
    bot.slack.event(
        {
            "type": "app_home_opened",
            "user": user,
            "channel": "D0DEMOHOME",
            "tab": "home",
            "event_ts": f"{time.time():.6f}",
        }
    )
    deadline = time.monotonic() + 10
    while len(home_views(bot.emulator, user)) <= before:
        if time.monotonic() > deadline:
            raise SystemExit("demo: the bot published no Home tab within 10 s")
        time.sleep(0.1)
    view = home_views(bot.emulator, user)[-1]
    print(f"\n  [Home tab of <@{user}>, published]")
    show_blocks(view.get("blocks"))
    return view


def press_in_home(bot: BotProcess, action_id: str, user: str = USER) -> None:
    """Press a button of `user`'s Home tab as it now stands, and show a modal it opened."""
    views = home_views(bot.emulator, user)
    if not views:
        print("  (no Home tab yet: type `home` first)")
        return
    opened = len(bot.emulator.calls("views.open"))
    print(f"\n$ (press [{action_id}] in the Home tab)   (as <@{user}>)")
    home = views[-1]
    pressable = [
        element.get("action_id")
        for block in home.get("blocks") or []
        for element in [block.get("accessory") or {}, *(block.get("elements") or [])]
        if element.get("type") == "button"
    ]
    if action_id not in pressable:
        buttons = ", ".join(pressable) or "none"
        print(f"  (the Home tab has no button {action_id}; its buttons: {buttons})")
        return
    bot.slack.view_block_action(home, action_id, user_id=user)
    deadline = time.monotonic() + 5
    while len(bot.emulator.calls("views.open")) <= opened and time.monotonic() < deadline:
        time.sleep(0.1)
    calls = bot.emulator.calls("views.open")[opened:]
    for call in calls:
        modal = call.body["view"]
        print(f"\n  [modal opened: {modal['title']['text']}]")
        show_blocks(modal.get("blocks"))


def recent_rollouts(r: redis.Redis, count: int = 5) -> list[Rollout]:
    """The pipeline's newest rollouts as the bot stored them, newest first."""
    rollouts = []
    for rollout_id in r.zrevrange(f"{PREFIX}:pipeline:web:rollouts", 0, count - 1):
        raw = r.get(f"{PREFIX}:rollout:{rollout_id}")
        if raw:
            rollouts.append(Rollout.model_validate_json(raw))
    return rollouts


def newest_rollout(r: redis.Redis, version: str, kind: RolloutKind | None = None) -> Rollout | None:
    for rollout in recent_rollouts(r):
        if rollout.version == version and kind in (None, rollout.kind):
            return rollout
    return None


def show_pinned(rollout: Rollout) -> None:
    """What the rollout pinned and where the image came from; the demo stops if it did not."""
    provenance = rollout.provenance
    if not rollout.image_digest or provenance is None or not provenance.revision:
        raise SystemExit(
            f"demo: version {rollout.version} was not pinned to a digest with its commit "
            f"(digest {rollout.image_digest}, provenance {provenance})"
        )
    pulled = rollout.step("pull")
    print(
        f"\n  (pinned: tag `{rollout.image_tag}` -> {rollout.image_digest[:19]}…, "
        f"commit {provenance.short_revision} of {provenance.source}; "
        + (f"pulled from the registry: {pulled.detail})" if pulled else "already on the engine)")
    )


def wait_for_status(
    r: redis.Redis,
    transcript: Transcript,
    version: str,
    statuses: set[str],
    timeout: float,
    kind: RolloutKind | None = None,
) -> Rollout:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        transcript.flush()
        rollout = newest_rollout(r, version, kind)
        if rollout is not None and rollout.status.value in statuses:
            transcript.flush()
            return rollout
        time.sleep(0.25)
    raise SystemExit(f"demo: version {version} did not reach {statuses} in {timeout:g}s")


# What the load saw -------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitSeen:
    """A rollout's traffic split as the bot recorded it in Redis, and when the demo saw it."""

    at: float  # time.monotonic(), the load's clock
    rollout_id: str
    version: str
    split: TrafficSplit


class SplitLog:
    """Every change of the rollouts' `traffic` in Redis, polled every 0.1 s on a thread.

    The bot records each split before it tells HAProxy, so what is seen here leads the proxy
    by a few milliseconds, and trails the record by up to one poll.
    """

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.seen: list[SplitSeen] = []
        self._last: dict[str, TrafficSplit | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="split-log", daemon=True)

    def start(self) -> SplitLog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            for rollout in recent_rollouts(self.r):
                if rollout.traffic is not None and self._last.get(rollout.id) != rollout.traffic:
                    self._last[rollout.id] = rollout.traffic
                    self.seen.append(SplitSeen(now, rollout.id, rollout.version, rollout.traffic))

    def of(self, rollout_id: str) -> list[SplitSeen]:
        return [s for s in self.seen if s.rollout_id == rollout_id]


@dataclass(frozen=True)
class Phase:
    name: str
    start: float  # time.monotonic()
    end: float
    rollout_id: str = ""  # the rollout whose canary steps happened in it


def steps_in(phase: Phase, splits: SplitLog) -> list[tuple[SplitSeen, float]]:
    """The splits the phase's rollout went through, each with when the next one came."""
    seen = splits.of(phase.rollout_id) if phase.rollout_id else []
    ends = [later.at for later in seen[1:]] + [phase.end]
    return list(zip(seen, ends, strict=False))  # no splits seen: no steps


def failure_kind(response: Response) -> str | None:
    """Why a request failed, as a client sees it: no answer, the proxy's 502-504, or the
    app's own 5xx; None when it did not fail."""
    if response.status == 0:
        return "no answer"
    if response.status in (502, 503, 504):
        return "502-504"
    if response.status >= 500:
        return "app 5xx"
    return None


def shares(responses: list[Response]) -> str:
    counts = Counter(r.version or "?" for r in responses)
    total = len(responses) or 1
    return " · ".join(f"{v}: {100 * n / total:.1f}%" for v, n in sorted(counts.items()))


def share_of(version: str, responses: list[Response]) -> float:
    if not responses:
        return 0.0
    return 100 * sum(1 for r in responses if r.version == version) / len(responses)


def between(responses: list[Response], start: float, end: float) -> list[Response]:
    return [r for r in responses if start <= r.sent_at < end]


ROW = "  {:<44} {:>8} {:>9} {:>8} {:>8}   {}"


def report_row(name: str, responses: list[Response], with_failures: bool = True) -> None:
    kinds = Counter(failure_kind(r) for r in responses)
    cells = (
        (kinds["no answer"], kinds["502-504"], kinds["app 5xx"]) if with_failures else ("", "", "")
    )
    print(ROW.format(name, len(responses), *cells, shares(responses)))


def step_name(seen: SplitSeen, plan: list[int]) -> str:
    split = seen.split
    if split.baseline_port is None or split.baseline_retired:
        return f"100% to {seen.version}" + (
            f", {split.baseline_version} drained" if split.baseline_retired else ""
        )
    if split.percent == 0:
        return f"sent back: 100% to {split.baseline_version}"
    return f"step {split.step + 1}/{len(plan)}: {split.percent}% to {seen.version}"


def print_load_report(responses: list[Response], phases: list[Phase], splits: SplitLog) -> None:
    """What the load saw, phase by phase and, within a canary, split by split."""
    print(
        f"\n=== What the load saw: {len(responses)} requests at {LOAD_RATE:g}/s through HAProxy "
        f"on 127.0.0.1:{LISTEN_PORT}"
    )
    header = ("requests", "no answer", "502-504", "app 5xx", "share per version")
    print(ROW.format("phase (and the splits the bot recorded)", *header))
    for phase in phases:
        report_row(
            f"{phase.name} ({phase.end - phase.start:.1f} s)",
            between(responses, phase.start, phase.end),
        )
        for change, until in steps_in(phase, splits):
            report_row(
                f"  +{change.at - phase.start:.1f}s {step_name(change, CANARY_STEPS)} "
                f"({until - change.at:.1f} s)",
                between(responses, change.at, until),
                with_failures=False,
            )
    back = [s for s in splits.seen if s.version == BAD_VERSION and s.split.percent == 0]
    live = [s for s in splits.seen if s.version == BAD_VERSION and s.split.percent > 0]
    if back and live:
        failed = [r for r in responses if r.version == BAD_VERSION and failure_kind(r)]
        print(
            f"\n  {BAD_VERSION} had {live[0].split.percent}% of requests for "
            f"{back[0].at - live[0].at:.1f} s, until the bot sent them all back to "
            f"{back[0].split.baseline_version}: {len(failed)} requests failed, "
            f"{sum(failure_kind(r) == 'app 5xx' for r in failed)} of them its own 5xx"
        )


def canary_problems(responses: list[Response], phases: list[Phase], splits: SplitLog) -> list[str]:
    """How the canaries and the rollback broke their promises (none: all is well)."""
    problems: list[str] = []
    lost = [r for r in responses if failure_kind(r) in ("no answer", "502-504")]
    if lost:
        problems.append(
            f"{len(lost)} requests got no answer or a 502-504 from the proxy "
            f"(first: {lost[0].error or lost[0].status})"
        )
    others = [r for r in responses if failure_kind(r) == "app 5xx" and r.version != BAD_VERSION]
    if others:
        problems.append(f"{len(others)} 5xx from versions other than {BAD_VERSION}")
    for phase in phases:
        for change, until in steps_in(phase, splits):
            split, version = change.split, change.version
            if split.baseline_port is None or split.baseline_retired or split.percent == 0:
                continue
            if version == BAD_VERSION:
                # The whole step: the bot records a split a moment before HAProxy gets it, so
                # edges only lower the share measured here.
                share = share_of(version, between(responses, change.at, until))
                if split.step != 0:
                    problems.append(f"{version} reached canary step {split.step + 1}")
                if not 0 < share <= split.percent + SHARE_TOLERANCE / 2:
                    problems.append(
                        f"{version} had {share:.1f}% of requests at its {split.percent}% step"
                    )
                continue
            # Away from the edges, where the split is changing.
            window = between(responses, change.at + 0.5, until - 0.5)
            share = share_of(version, window)
            if len(window) >= 50 and abs(share - split.percent) > SHARE_TOLERANCE:
                problems.append(
                    f"{version} had {share:.1f}% of requests at its {split.percent}% step"
                )
    back = [s for s in splits.seen if s.version == BAD_VERSION and s.split.percent == 0]
    if not back:
        problems.append(f"the bot never recorded {BAD_VERSION}'s traffic sent back")
    else:
        late = [r for r in responses if r.version == BAD_VERSION and r.sent_at > back[0].at + 0.5]
        if late:
            problems.append(f"{len(late)} requests reached {BAD_VERSION} after it was sent back")
    return problems


def story(bot: BotProcess, r: redis.Redis, transcript: Transcript) -> None:
    print(
        f"\n=== 1. Deploy version 1: nothing serves yet, so it takes all of HAProxy's traffic at "
        f"once; its KPI (HAProxy's own count of its 5xx) is watched for {WATCH_SECONDS} s"
    )
    command(bot, transcript, "/deploy web 1")
    first = wait_for_status(r, transcript, "1", {"live", "good", "failed", "rolled_back"}, 60)
    show_pinned(first)
    splits = SplitLog(r).start()
    load = SteadyLoad("127.0.0.1", LISTEN_PORT, rate=LOAD_RATE, max_seconds=LOAD_MAX_SECONDS)
    load.start()
    loaded = time.monotonic()
    print(
        f"\n  (a steady load starts: {LOAD_RATE:g} requests/s to http://127.0.0.1:{LISTEN_PORT}/, "
        "each answer's version and status recorded)"
    )
    phases: list[Phase] = []
    try:
        wait_for_status(r, transcript, "1", {"good", "failed", "rolled_back"}, 60)
        time.sleep(1)
        phases.append(Phase("1 alone", loaded, time.monotonic()))

        print(
            f"\n=== 2. Upgrade to version 2 by canary: {', '.join(f'{p}%' for p in CANARY_STEPS)} "
            f"of requests, {STEP_SECONDS} s a step, then watched {WATCH_SECONDS} s at 100%; "
            f"version 1 runs beside it until then, and is drained ({DRAIN_SECONDS} s) and stopped"
        )
        started = time.monotonic()
        command(bot, transcript, "/deploy web 2")
        good = wait_for_status(r, transcript, "2", {"good", "failed", "rolled_back"}, 90)
        if good.status.value != "good":
            raise SystemExit(f"demo: version 2's canary ended {good.status.value}: {good.error}")
        time.sleep(DRAIN_SECONDS + 1)
        transcript.flush()
        phases.append(Phase("canary 1 -> 2", started, time.monotonic(), good.id))

        print(
            f"\n=== 3. Version 3 fails half its requests: caught at its first canary step "
            f"({CANARY_STEPS[0]}%), all traffic goes back to 2 at once, the pipeline halts"
        )
        started = time.monotonic()
        command(bot, transcript, "/deploy web 3")
        bad = wait_for_status(r, transcript, "3", {"rolled_back", "failed", "good"}, 60)
        back = wait_for_status(
            r, transcript, "2", {"good", "failed"}, 30, kind=RolloutKind.auto_rollback
        )
        time.sleep(1)
        transcript.flush()
        phases.append(Phase("canary 2 -> 3, rolled back", started, time.monotonic(), bad.id))
        if bad.status.value != "rolled_back" or back.status.value != "good":
            raise SystemExit(
                f"demo: version 3 ended {bad.status.value} and the rollback {back.status.value}"
            )
        time.sleep(2)
        phases.append(Phase("2 alone again", phases[-1].end, time.monotonic()))
    finally:
        record = load.stop()
        splits.stop()
    print_load_report(record.responses, phases, splits)
    problems = canary_problems(record.responses, phases, splits)
    if problems:
        raise SystemExit(
            "demo: the canary or the rollback did not behave:\n"
            + "\n".join(f"  - {problem}" for problem in problems)
        )
    print(
        "  checked: no request went unanswered or got a 502-504, only the bad version's own 5xx, "
        f"each canary step's share within {SHARE_TOLERANCE} points"
    )

    print("\n=== 4. Nobody ships on top of a fire")
    command(bot, transcript, "/deploy web 2")
    command(bot, transcript, "/resume web")

    print("\n=== 5. The Home tab: every pipeline's state, the open incident and its button")
    open_home(bot)
    press_in_home(bot, "five_whys_open")

    incident_id = r.hget(f"{PREFIX}:pipeline:web", "halted_incident") or ""
    incident = json.loads(r.get(f"{PREFIX}:incident:{incident_id}") or "{}")
    thread_ts = incident.get("thread_ts") or incident.get("alert_ts")
    if not thread_ts:
        raise SystemExit("demo: the breach alert was not posted")
    print("\n=== 6. Five whys, in the alert's thread")
    answers = [
        "why 1: version 3 answered half of its requests with HTTP 500",
        "why 2: the checkout handler raised on an empty basket",
        "why 3: the new basket code assumed at least one item",
        "why 4: no test covered an empty basket",
        "why 5: the review checklist has no edge-case item",
        "root cause: an untested empty-basket path in checkout",
        "test: <https://git.example.com/shop/web/pull/42|test_checkout_empty_basket fails on 3>",
    ]
    for answer in answers:
        say_in_thread(bot, thread_ts, answer)
        time.sleep(0.3)
    time.sleep(1)
    transcript.flush()

    print("\n=== 7. The analysis is written and the failing test linked: resume")
    command(bot, transcript, "/resume web")
    time.sleep(1)
    transcript.flush()
    command(bot, transcript, "/pipeline web")
    command(bot, transcript, "/pipeline history web")
    open_home(bot)
    print(
        f"\n=== Done. Version 2 serves through HAProxy at http://127.0.0.1:{LISTEN_PORT}/ ; "
        f"the bot is at http://127.0.0.1:{BOT_PORT}/healthz"
    )


CONSOLE_HELP = """Type slash commands as in Slack, e.g.:
  /deploy web 2        /rollback web        /halt web reason…     /resume web
  /pipeline            /pipeline history web
  as U0ADMIN /resume web --force reason      (any command as another user)
  press <action_id> <value> <message_ts>     (a button, e.g. press five_whys_open inc-… 1700…)
  home                                       (open the app's Home tab and show it)
  press <action_id>                          (a button of the Home tab, e.g. press five_whys_open)
  reply <thread_ts> <text>                   (a message in a thread)
  show                                       (the channel again)   quit"""


def console(bot: BotProcess, transcript: Transcript) -> None:
    print(CONSOLE_HELP)
    while True:
        try:
            line = input("\nimmune> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not line:
            transcript.flush()
            continue
        if line in ("quit", "exit"):
            return
        user = USER
        if line.startswith("as "):
            _, user, line = line.split(" ", 2)
        if line.startswith("/"):
            command(bot, transcript, line, user=user)
        elif line.startswith("press "):
            words = shlex.split(line)
            if len(words) == 2:
                press_in_home(bot, words[1], user=user)
                continue
            if len(words) != 4:
                print("usage: press <action_id> <value> <message_ts>, or press <action_id>")
                continue
            bot.slack.block_action(
                words[1], words[2], message_ts=words[3], user_id=user, channel_id=CHANNEL
            )
        elif line.startswith("reply "):
            _, thread_ts, text = line.split(" ", 2)
            say_in_thread(bot, thread_ts, text, user=user)
        elif line == "home":
            open_home(bot, user=user)
            continue
        elif line == "show":
            transcript.seen.clear()
        else:
            print(CONSOLE_HELP)
        time.sleep(1.0)
        transcript.flush()


def check_haproxy() -> None:
    """HAProxy must run with the demo's config before the bot deploys behind it."""
    problem = ""
    if not RUNTIME_API.is_socket():
        problem = f"its runtime API {RUNTIME_API} is missing"
    else:
        try:
            socket.create_connection(("127.0.0.1", LISTEN_PORT), timeout=1).close()
        except OSError:
            problem = f"nothing listens on 127.0.0.1:{LISTEN_PORT}, the demo's frontend"
    if problem:
        raise SystemExit(
            f"demo: HAProxy is not ready: {problem}; run scripts/services.sh start "
            "(it starts HAProxy from the config `python -m bot proxy-config` prints)"
        )


def remove_earlier_containers() -> list[str]:
    """The demo's containers left by an earlier run (Redis is cleared too): version 1 is then
    a first deploy again, not a canary from whatever the last run left serving."""
    client = docker.from_env()
    removed = []
    for container in client.containers.list(all=True, filters={"name": CONTAINER}):
        if container.name == CONTAINER or container.name.startswith(f"{CONTAINER}--"):
            container.remove(force=True)
            removed.append(container.name)
    client.close()
    return sorted(removed)


def remove_earlier_images(repository: str) -> int:
    """The demo's images an earlier run pulled: scripts/demo.sh builds and pushes the three
    versions anew each run (a new build time, a new digest) and drops its own tags, so every
    copy of the repository the engine still holds is an earlier run's, unused once its
    containers are gone. An image another repository also names is left alone."""
    client = docker.from_env()
    removed = 0
    for image in client.images.list(name=repository):
        names = [*image.tags, *(image.attrs.get("RepoDigests") or [])]
        if not names or any(
            not name.startswith(f"{repository}@") and not name.startswith(f"{repository}:")
            for name in names
        ):
            continue
        try:
            client.images.remove(image.id)
        except docker.errors.APIError as exc:  # still used, e.g. by a container not ours
            print(f"Kept {image.short_id} of an earlier run: {exc.explanation}")
            continue
        removed += 1
    client.close()
    return removed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--console", action="store_true", help="type the commands yourself")
    parser.add_argument(
        "--image",
        default="127.0.0.1:15000/demo/web",
        help="the demo image repository (scripts/demo.sh pushes it to the local registry)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--prometheus-url", default="http://127.0.0.1:9090")
    parser.add_argument(
        "--write-pipelines",
        metavar="PATH",
        help="only write the demo's pipelines file to PATH (scripts/services.sh starts the "
        "demo's HAProxy from it) and exit",
    )
    args = parser.parse_args()
    if args.write_pipelines:
        path = Path(args.write_pipelines)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_pipelines(path, demo_config(args.image))
        return 0

    r = redis.Redis.from_url(args.redis_url, decode_responses=True)
    for key in r.scan_iter(f"{PREFIX}:*"):  # every run starts from a clean slate
        r.delete(key)
    workdir = REPO / "var" / "demo"
    workdir.mkdir(parents=True, exist_ok=True)
    pipelines = workdir / "pipelines.yml"
    write_pipelines(pipelines, demo_config(args.image))
    try:
        requests.get(f"http://127.0.0.1:{BOT_PORT}/healthz", timeout=1)
        raise SystemExit(f"demo: something already listens on 127.0.0.1:{BOT_PORT}; stop it first")
    except requests.ConnectionError:
        pass
    check_haproxy()
    removed = remove_earlier_containers()
    if removed:
        print(f"Removed the demo's containers of an earlier run: {', '.join(removed)}")
    images = remove_earlier_images(args.image)
    if images:
        print(f"Removed {images} image(s) of {args.image} an earlier run pulled")

    with SlackEmulator() as emulator:
        emulator.add_channel(CHANNEL, "deploys")
        env = bot_settings(
            redis_url=args.redis_url,
            emulator=emulator,
            pipelines_file=pipelines,
            prometheus_url=args.prometheus_url,
            prefix=PREFIX,
            port=BOT_PORT,
            lock_ttl_seconds=15,
        )
        bot = BotProcess(env, emulator, workdir / "bot.log")
        print(
            f"Starting the bot: python -m bot on 127.0.0.1:{BOT_PORT} (log: {workdir / 'bot.log'})"
        )
        print(f"Slack is emulated at {emulator.base_url}; Prometheus at {args.prometheus_url}")
        bot.start()
        transcript = Transcript(emulator)
        try:
            if args.console:
                console(bot, transcript)
            else:
                story(bot, r, transcript)
        finally:
            bot.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
