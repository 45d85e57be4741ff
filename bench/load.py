"""Load generation: signed slash commands from keep-alive clients in a separate process.

The clients run in their own process (`python -m bench.load`, driven over stdin/stdout with
one JSON line per job) so that they never compete with the server under test for its GIL.
Each client thread owns one keep-alive connection (`bench.keepalive`), so after the warm-up
every request rides an open connection: connection set-up is not what is measured. A request
is stamped right before its bytes are written (`requests`, used until 2026-12-06, spent about
0.56 ms of the client's CPU after the stamp, time the figures counted as the server's). Requests are signed
exactly as Slack signs them (v0 HMAC of timestamp and body); the form carries every field
Slack sends, with a fresh `trigger_id` per request.

Jobs:
    {"op": "run", ...}  closed-loop load: `concurrency` clients for `warmup` + `duration`
                        seconds (or until `total` requests), cycling through `requests`.
    {"op": "one", ...}  one request; answers its latency, status and body.
    {"op": "quit"}
"""

from __future__ import annotations

import itertools
import secrets
import threading
import time
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier

from bench.jobs import JobProcess, JsonDict, serve_jobs
from bench.keepalive import ERRORS, Client
from bench.stats import summarize

_HEADERS = {
    "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
    "Accept": "application/json,*/*",
    "Content-Type": "application/x-www-form-urlencoded",
}
ERROR_SAMPLES = 3


class SignedForms:
    """Slash-command forms as Slack sends them, signed, each with a fresh trigger_id."""

    def __init__(self, spec: JsonDict) -> None:
        self.secret = spec["secret"]
        self.verifier = SignatureVerifier(self.secret)
        self.channel = spec.get("channel", "C0DEPLOY")
        self.user = spec.get("user", "U0DEV1")
        self.response_base = spec.get("response_base", "http://127.0.0.1:9/response")
        self._ids = itertools.count(1)

    def build(self, command: str, text: str) -> tuple[bytes, dict[str, str]]:
        n = next(self._ids)
        form = {
            "token": "legacy-verification-token",
            "team_id": "T0TEAM",
            "team_domain": "immune-test",
            "channel_id": self.channel,
            "channel_name": "deploys",
            "user_id": self.user,
            "user_name": self.user.lower(),
            "command": command,
            "text": text,
            "api_app_id": "A0IMMUNE",
            "is_enterprise_install": "false",
            "response_url": f"{self.response_base}/bench-{n}-{secrets.token_hex(4)}",
            "trigger_id": f"{n}{secrets.randbelow(10**9):09d}.{secrets.randbelow(10**12):012d}."
            f"{secrets.token_hex(16)}",
        }
        body = urlencode(form)
        stamp = str(int(time.time()))
        headers = {
            **_HEADERS,
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": self.verifier.generate_signature(timestamp=stamp, body=body) or "",
        }
        return body.encode(), headers


def run_load(spec: JsonDict) -> JsonDict:
    """Closed-loop load: each client sends, waits for the answer, sends the next."""
    url = spec["url"]
    concurrency = int(spec["concurrency"])
    warmup = float(spec.get("warmup", 0.0))
    duration = spec.get("duration")
    total = spec.get("total")
    cases = spec["requests"]
    forms = SignedForms(spec)
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[JsonDict] = []
    error_count = 0
    sent = 0
    ready = threading.Barrier(concurrency + 1)
    clock: dict[str, float] = {}

    def client(index: int) -> None:
        nonlocal error_count, sent
        connection = Client(url)
        mine: list[float] = []
        bad = 0
        ready.wait()
        measure_from, end = clock["measure_from"], clock.get("end")
        for n in itertools.count():
            if total is not None:
                if next(counter) >= int(total):
                    break
            elif time.perf_counter() >= (end or 0.0):
                break
            case = cases[(index + n) % len(cases)]
            body, headers = forms.build(case["command"], case["text"])
            began = time.perf_counter()
            try:
                status, text = connection.request("POST", body, headers)
                took = time.perf_counter() - began
                ok = status == 200 and case.get("expect", "") in text
                detail = f"HTTP {status}: {text[:300]}"
            except ERRORS as exc:
                took = time.perf_counter() - began
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            if began < measure_from:
                continue
            mine.append(took)
            if not ok:
                bad += 1
                with lock:
                    if len(errors) < ERROR_SAMPLES:
                        errors.append(
                            {"command": case["command"], "text": case["text"], "detail": detail}
                        )
        connection.close()
        with lock:
            latencies.extend(mine)
            error_count += bad
            sent += n

    threads = [
        threading.Thread(target=client, args=(i,), name=f"client-{i}", daemon=True)
        for i in range(concurrency)
    ]
    for thread in threads:
        thread.start()
    start = time.perf_counter()
    clock["start"] = start
    clock["measure_from"] = start + warmup if total is None else start
    if duration is not None:
        clock["end"] = start + warmup + float(duration)
    ready.wait()
    for thread in threads:
        thread.join()
    finished = time.perf_counter()
    window = float(duration) if duration is not None and total is None else finished - start
    summary = summarize(latencies)
    return {
        **summary,
        "latencies": latencies if spec.get("raw") else [],
        "errors": error_count,
        "error_samples": errors,
        "sent": sent,
        "throughput": len(latencies) / window if window > 0 else 0.0,
        "window_seconds": window,
        "concurrency": concurrency,
    }


_one_clients: dict[str, Client] = {}


def run_one(spec: JsonDict) -> JsonDict:
    """One request on a kept-alive connection (opened, and warmed with `help`, on first use)."""
    forms = SignedForms(spec)
    url = spec["url"]
    client = _one_clients.get(url)
    if client is None:
        client = _one_clients[url] = Client(url)
        body, headers = forms.build(spec["command"], "help")
        client.request("POST", body, headers)
    body, headers = forms.build(spec["command"], spec["text"])
    began_wall = time.time()
    began = time.perf_counter()
    status, text = client.request("POST", body, headers)
    took = time.perf_counter() - began
    return {
        "latency": took,
        "status": status,
        "text": text,
        "sent_at": began_wall,
    }


def main() -> None:
    serve_jobs(lambda job: run_load(job) if job["op"] == "run" else run_one(job))


class LoadDriver:
    """The bench's side of a load process: send a job, read its result."""

    def __init__(self, secret: str, *, response_base: str, channel: str = "C0DEPLOY") -> None:
        self.base = {"secret": secret, "response_base": response_base, "channel": channel}
        self.jobs = JobProcess("bench.load", "load")

    def _ask(self, job: JsonDict, timeout: float) -> JsonDict:
        self.jobs.send({**self.base, **job})
        return self.jobs.answer(timeout)

    def run(
        self,
        url: str,
        requests_: list[JsonDict],
        *,
        concurrency: int,
        duration: float | None = None,
        warmup: float = 0.0,
        total: int | None = None,
        raw: bool = False,
    ) -> JsonDict:
        job = {
            "op": "run",
            "raw": raw,
            "url": url,
            "requests": requests_,
            "concurrency": concurrency,
            "duration": duration,
            "warmup": warmup,
            "total": total,
        }
        budget = 60.0 + warmup + (duration or 0.0) + (total or 0) * 0.05
        return self._ask(job, budget)

    def one(self, url: str, command: str, text: str) -> JsonDict:
        return self._ask({"op": "one", "url": url, "command": command, "text": text}, 30.0)

    def close(self) -> None:
        self.jobs.close()


if __name__ == "__main__":
    main()
