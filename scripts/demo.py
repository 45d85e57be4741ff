"""The whole loop on this machine, with no Slack account: `scripts/demo.sh` (or `make demo`).

The real bot (`python -m bot`) runs against a local emulator of Slack's Web API; the commands
below reach it exactly as Slack sends them (signed HTTP requests to POST /slack/events), and
it deploys the demo service on the real Docker engine, watched by the real Prometheus.

    scripts/demo.sh              the scripted story: deploy, upgrade, a bad version caught and
                                 rolled back, halt, five whys, resume
    scripts/demo.sh --console    type the slash commands yourself

The pipelines file is written to var/demo/pipelines.yml, where scripts/services.sh also reads
it (`demo.py --write-pipelines`) to start the demo's HAProxy when a pipeline has `traffic:`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import redis
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.bot_harness import (  # noqa: E402
    BotProcess,
    bot_settings,
    docker_pipeline,
    wait_until,
    write_pipelines,
)
from tests.support.slack_emulator import SlackEmulator  # noqa: E402

CHANNEL = "C0DEPLOY"
USER = "U0DEV1"
PREFIX = "immune-demo"
DEMO_PORT = 18080
BOT_PORT = 3000


def demo_config(image: str) -> dict[str, Any]:
    web = docker_pipeline(image=image, container_name="immune-demo-web", port=DEMO_PORT)
    web["watch"] = {"interval": "2s", "duration": "12s", "warmup": 2}
    web["kpis"] = [
        {
            "name": "error_rate",
            "query": 'sum(rate(http_requests_total{job="web",code=~"5.."}[5s]))'
            ' / sum(rate(http_requests_total{job="web"}[5s]))',
            "max": 0.05,
            "for": 2,
        }
    ]
    return {"timezone": "Europe/London", "admins": ["U0ADMIN"], "pipelines": {"web": web}}


def show_blocks(blocks: list[dict[str, Any]] | None, indent: str = "    ") -> None:
    for block in blocks or []:
        text = (
            (block.get("text") or {}).get("text") if isinstance(block.get("text"), dict) else None
        )
        if text:
            print("\n".join(indent + line for line in text.splitlines()))
        for element in block.get("elements") or []:
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


def rollout_status(r: redis.Redis, version: str) -> str | None:
    for rollout_id in r.zrevrange(f"{PREFIX}:pipeline:web:rollouts", 0, 4):
        rollout = json.loads(r.get(f"{PREFIX}:rollout:{rollout_id}") or "{}")
        if rollout.get("version") == version:
            return str(rollout["status"])
    return None


def wait_for_status(
    r: redis.Redis, transcript: Transcript, version: str, statuses: set[str], timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        transcript.flush()
        status = rollout_status(r, version)
        if status in statuses:
            transcript.flush()
            return status
        time.sleep(0.5)
    raise SystemExit(f"demo: version {version} did not reach {statuses} in {timeout:g}s")


def story(bot: BotProcess, r: redis.Redis, transcript: Transcript) -> None:
    print(
        "\n=== 1. Deploy version 1; its KPIs are watched for 12 s, then it is the last good version"
    )
    command(bot, transcript, "/deploy web 1")
    wait_for_status(r, transcript, "1", {"good", "failed", "rolled_back"}, 60)

    print("\n=== 2. Upgrade to version 2")
    command(bot, transcript, "/deploy web 2")
    wait_for_status(r, transcript, "2", {"good", "failed", "rolled_back"}, 60)

    print("\n=== 3. Version 3 fails half its requests: the bot rolls back by itself and halts")
    started = time.monotonic()
    command(bot, transcript, "/deploy web 3")
    wait_for_status(r, transcript, "3", {"rolled_back", "failed", "good"}, 60)
    wait_until(
        lambda: r.hget(f"{PREFIX}:pipeline:web", "live_version") == "2", 30, what="version 2 back"
    )
    print(
        f"\n  (version 3 was live and then replaced by 2 within {time.monotonic() - started:.1f}s)"
    )
    time.sleep(1)
    transcript.flush()

    print("\n=== 4. Nobody ships on top of a fire")
    command(bot, transcript, "/deploy web 2")
    command(bot, transcript, "/resume web")

    incident_id = r.hget(f"{PREFIX}:pipeline:web", "halted_incident") or ""
    incident = json.loads(r.get(f"{PREFIX}:incident:{incident_id}") or "{}")
    thread_ts = incident.get("thread_ts") or incident.get("alert_ts")
    if not thread_ts:
        raise SystemExit("demo: the breach alert was not posted")
    print("\n=== 5. Five whys, in the alert's thread")
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

    print("\n=== 6. The analysis is written and the failing test linked: resume")
    command(bot, transcript, "/resume web")
    time.sleep(1)
    transcript.flush()
    command(bot, transcript, "/pipeline web")
    command(bot, transcript, "/pipeline history web")
    print(
        f"\n=== Done. Version 2 serves at http://127.0.0.1:{DEMO_PORT}/ ; the bot is at http://127.0.0.1:{BOT_PORT}/healthz"
    )


CONSOLE_HELP = """Type slash commands as in Slack, e.g.:
  /deploy web 2        /rollback web        /halt web reason…     /resume web
  /pipeline            /pipeline history web
  as U0ADMIN /resume web --force reason      (any command as another user)
  press <action_id> <value> <message_ts>     (a button, e.g. press five_whys_open inc-… 1700…)
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
            if len(words) != 4:
                print("usage: press <action_id> <value> <message_ts>")
                continue
            bot.slack.block_action(
                words[1], words[2], message_ts=words[3], user_id=user, channel_id=CHANNEL
            )
        elif line.startswith("reply "):
            _, thread_ts, text = line.split(" ", 2)
            say_in_thread(bot, thread_ts, text, user=user)
        elif line == "show":
            transcript.seen.clear()
        else:
            print(CONSOLE_HELP)
        time.sleep(1.0)
        transcript.flush()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--console", action="store_true", help="type the commands yourself")
    parser.add_argument("--image", default="demo/web", help="the demo image repository")
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
