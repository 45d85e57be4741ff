"""The bench's Markdown table, made from the results (every figure comes from the JSON)."""

from __future__ import annotations

import math
from typing import Any

JsonDict = dict[str, Any]


def _num(value: Any, scale: float = 1.0, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value * scale:.{digits}f}"


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{_num(value, digits=2)}x"


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def _le(value: Any, limit: float) -> bool | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return bool(value <= limit)


def machine_line(section: JsonDict, cpus: int | None) -> list[str]:
    """How busy the whole machine was while the section ran (the bench included)."""
    if "machine_busy_cores" not in section:
        return []
    return [
        f"_Machine during this section: {_num(section['machine_busy_cores'], digits=2)} of "
        f"{cpus} cores busy on average, bench included; load average before "
        f"{section.get('loadavg_before', '-')}._",
        "",
    ]


def _failed(name: str, section: JsonDict) -> list[str]:
    return [f"## {name}", "", f"Failed: `{section['error']}`", ""]


def ack_table(ack: JsonDict) -> list[str]:
    if "error" in ack:
        return _failed("Ack latency", ack)
    limit = ack["target"]["ratio_p99_max"]
    lines = [
        "## Ack latency (ms)",
        "",
        ack["method"] + ".",
        f"Floor: a bare slack-bolt app with one trivial command; ratio = bot p99 / p99 of the "
        f"faster bare mode at the same concurrency. Target ≤ {limit:g}x. Same work: the bare "
        "app (process before response) sending first the very Redis commands the bot's ack of "
        "that request sends (recorded from one ack); its ratio is what is left beyond that Redis "
        "work. CPU: the server process's CPU time over the run per request sent (the servers "
        "live in the bench process, the load in another; the bot's background jobs, a few ms a "
        "second, fall on every row).",
        "",
        "| request | clients | n | p50 | p99 | max | req/s | CPU ms per ack | floor p99 | ratio "
        "p99 | ≤ target | engine calls per ack | Redis round trips per ack | same work p99 | "
        "ratio to same work | same work CPU ms per ack |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|:-:|--:|--:|--:|--:|--:|",
    ]
    for mode, by_c in ack["bare"].items():
        for c, figures in by_c.items():
            lines.append(
                f"| bare bolt, {mode.replace('_', ' ')} | {c} | {figures['n']} | "
                f"{_num(figures['p50'], 1000, 2)} | {_num(figures['p99'], 1000, 2)} | "
                f"{_num(figures['max'], 1000, 2)} | {_num(figures['throughput'], digits=0)} | "
                f"{_num(figures.get('cpu_per_request'), 1000, 2)} | | | | | | | | |"
            )
    for request, by_c in ack.get("same_work", {}).items():
        for c, figures in by_c.items():
            lines.append(
                f"| bare bolt + the Redis commands of {request} | {c} | {figures['n']} | "
                f"{_num(figures['p50'], 1000, 2)} | {_num(figures['p99'], 1000, 2)} | "
                f"{_num(figures['max'], 1000, 2)} | {_num(figures['throughput'], digits=0)} | "
                f"{_num(figures.get('cpu_per_request'), 1000, 2)} | | | | | | | | |"
            )
    for row in ack["rows"]:
        errors = f" ({row['errors']} unexpected answers)" if row.get("errors") else ""
        lines.append(
            f"| {row['endpoint']}{errors} | {row['concurrency']} | {row['n']} | "
            f"{_num(row['p50'], 1000, 2)} | {_num(row['p99'], 1000, 2)} | "
            f"{_num(row['max'], 1000, 2)} | {_num(row['throughput'], digits=0)} | "
            f"{_num(row.get('cpu_per_request'), 1000, 2)} | "
            f"{_num(row['floor_p99'], 1000, 2)} ({row['floor_mode'].replace('_', ' ')}) | "
            f"{_ratio(row['ratio_p99'])} | {_verdict(_le(row['ratio_p99'], limit))} | "
            f"{_num(row.get('engine_calls_per_request'), digits=1)} | "
            f"{_num(row.get('redis_round_trips_per_request'), digits=1)} | "
            f"{_num(row.get('same_work_p99'), 1000, 2)} | {_ratio(row.get('ratio_p99_same_work'))} "
            f"| {_num(row.get('same_work_cpu_per_request'), 1000, 2)} |"
        )
    lines.append("")
    return lines


def rollback_table(rollback: JsonDict) -> list[str]:
    if "error" in rollback:
        return _failed("Rollback", rollback)
    limit = rollback["target"]["ratio_max"]
    floor = rollback["floor"]
    lines = [
        "## Rollback (s)",
        "",
        rollback["method"] + f". Target ≤ {limit:g}x the floor.",
        "",
        "| path | n | p50 | max | floor p50 | ratio p50 | ratio max | ≤ target (max) "
        "| ratio p50 vs stop+start |",
        "|---|--:|--:|--:|--:|--:|--:|:-:|--:|",
    ]
    for row in rollback["rows"]:
        lines.append(
            f"| {row['path']} | {row['n']} | {_num(row['p50'], digits=3)} | "
            f"{_num(row['max'], digits=3)} | {_num(row['floor_p50'], digits=3)} | "
            f"{_ratio(row['ratio_p50'])} | {_ratio(row['ratio_max'])} | "
            f"{_verdict(_le(row['ratio_max'], limit))} | {_ratio(row['ratio_p50_vs_stop_start'])} |"
        )
    for label, key in (
        ("floor: bare `docker start` + same wait", "docker_start"),
        ("reference: `docker stop` old + `docker start` kept", "docker_stop_start"),
    ):
        figures = floor[key]
        lines.append(
            f"| {label} | {figures['n']} | {_num(figures['p50'], digits=3)} | "
            f"{_num(figures['max'], digits=3)} | | | | | |"
        )
    slow = rollback["slow_slack"]
    lines.append(
        f"| /rollback, every Slack call taking {slow['latency_per_call_seconds'] * 1000:g} ms | "
        f"{slow['n']} | {_num(slow['p50'], digits=3)} | {_num(slow['max'], digits=3)} | "
        f"{_num(rollback['rows'][0]['floor_p50'], digits=3)} | "
        f"{_ratio(slow['p50'] / rollback['rows'][0]['floor_p50'] if slow['n'] else None)} | | | |"
    )
    command = rollback["rows"][0]
    lines += [
        "",
        "Where a `/rollback` spends its time (medians, seconds after the command was sent): "
        + ", ".join(f"{name} {_num(at, digits=3)}" for name, at in command["steps_median"].items())
        + f"; {_num(command.get('engine_calls_median'), digits=0)} Docker Engine API calls and "
        f"{_num(command.get('slack_calls_median'), digits=0)} Slack API calls per rollback.",
        "",
    ]
    return lines


def detection_table(detection: JsonDict) -> list[str]:
    if "error" in detection:
        return _failed("Detection", detection)
    config = detection["config"]
    limit = detection["target"]["max_seconds"]
    return [
        "## Detection (s)",
        "",
        detection["method"] + ". "
        f"Config: interval {config['interval_seconds']:g} s, for {config['for']}, warm-up "
        f"{config['warmup']}, scrape every {config['scrape_interval_seconds']:g} s, "
        f"max {config['kpi_max']:g}, demo tag {config['demo_tag']}. "
        f"Target ≤ {limit:g} s (one interval over interval x for).",
        "",
        "| n | p50 | max | floor (interval x for) | ratio p50 | ratio max | max ≤ target |",
        "|--:|--:|--:|--:|--:|--:|:-:|",
        f"| {detection['n']} | {_num(detection['p50'], digits=3)} | "
        f"{_num(detection['max'], digits=3)} | {_num(detection['floor_seconds'], digits=1)} | "
        f"{_ratio(detection['ratio_p50'])} | {_ratio(detection['ratio_max'])} | "
        f"{_verdict(_le(detection['max'], limit))} |",
        "",
        f"First breaching scrape came {_num(detection['first_breaching_scrape_after_live_p50'], digits=2)} s "
        f"after the bad version went live (p50); breach to rollback start "
        f"{_num(detection['breach_to_rollback_start_p50'], 1000, 1)} ms (p50).",
        "",
    ]


def polling_table(polling: JsonDict) -> list[str]:
    if "error" in polling:
        return _failed("Polling scale", polling)
    target = polling["target"]
    lines = [
        "## Polling scale",
        "",
        polling["method"] + ". "
        f"Target: {target['kpis']} KPIs per {target['per_seconds']:g} s on one core "
        f"(CPU share < {target['cpu_share_max']:g}), lateness p99 < "
        f"{target['lateness_p99_max_seconds']:g} s.",
        "",
        "| KPIs (watches) | polls (expected) | KPI polls/s | bot CPU, share of a core | "
        "CPU ms per KPI | Redis round trips per poll (per KPI) | round trips/s outside polls | "
        "Redis cmds/s | poll wall p50 (ms) | lateness p99 (ms) | Prometheus CPU share | "
        "other processes, cores |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for scale in polling["scales"]:
        lines.append(
            f"| {scale['kpis']} ({scale['watches']}) | {scale['polls']} ({scale['polls_expected']}) | "
            f"{_num(scale['kpi_polls_per_second'])} | "
            f"{_num(scale['process_cpu_share_of_one_core'], digits=3)} | "
            f"{_num(scale['process_cpu_per_kpi'], 1000, 2)} | "
            f"{_num(scale['redis_round_trips_per_poll'])} ({_num(scale['redis_round_trips_per_kpi'], digits=2)}) | "
            f"{_num(scale['redis_round_trips_per_second_outside_polls'])} | "
            f"{_num(scale['redis_commands_per_second'], digits=0)} | "
            f"{_num(scale['poll_wall']['p50'], 1000, 1)} | "
            f"{_num(scale['lateness_p99'], 1000, 1)} | "
            f"{_num(scale['prometheus_cpu_share'], digits=3)} | "
            f"{_num(scale.get('other_processes_cores'), digits=2)} |"
        )
    for step in polling["growth"]:
        lines.append("")
        lines.append(
            f"{step['from_kpis']} → {step['to_kpis']} KPIs (x{step['kpis_factor']:g}): CPU "
            f"x{_num(step['cpu_seconds_factor'], digits=2)}, CPU per poll "
            f"x{_num(step['cpu_per_poll_factor'], digits=2)}, round trips per poll "
            f"x{_num(step['round_trips_per_poll_factor'], digits=2)}, round trips/s "
            f"x{_num(step['round_trips_per_second_factor'], digits=2)}, lateness p99 "
            f"x{_num(step['lateness_p99_factor'], digits=2)}."
        )
    lines += ["", f"Target met: {_verdict(target['met'])}.", ""]
    return lines


def memory_table(memory: JsonDict) -> list[str]:
    if "error" in memory:
        return _failed("Memory", memory)
    target = memory["target"]
    return [
        "## Memory (MB, RSS of `python -m bot`)",
        "",
        memory["method"] + f". Target: under {target['rss_max_mb']:g} MB and flat "
        f"({target['flat_rule']}).",
        "",
        "| at rest | after half | after all | commands (unexpected answers) | growth, second half | "
        "Redis bytes per command | under 100 MB and flat |",
        "|--:|--:|--:|--:|--:|--:|:-:|",
        f"| {_num(memory['rss_rest_mb'])} | {_num(memory['rss_after_half_mb'])} | "
        f"{_num(memory['rss_after_all_mb'])} | {memory['commands']} ({memory['errors']}) | "
        f"{_num(memory['growth_second_half_mb'], digits=2)} | "
        f"{_num(memory['redis_used_memory_growth_bytes_per_command'], digits=0)} | "
        f"{_verdict(target['met'])} |",
        "",
    ]


def soak_table(soak: JsonDict) -> list[str]:
    if "error" in soak:
        return _failed("Soak", soak)
    rss, threads = soak["steady_rss_mb"], soak["steady_threads"]
    end, after = soak["redis_at_end"], soak["redis_after_ttls"]
    lasting = ", ".join(f"{k} {v}" for k, v in sorted(after["without_ttl_by_kind"].items()))
    return [
        "## Soak",
        "",
        soak["method"] + f". Target: {soak['target']['rule']}.",
        "",
        "| rollouts (kills) | lost | duplicated | commands (unexpected) | steady RSS start/half/end "
        "MB | threads start/half/end | Redis keys at end / after TTLs | containers left "
        "(keep_versions) | met |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|:-:|",
        f"| {soak['rollouts_acknowledged']} ({soak['replica_kills']}) | {soak['rollouts_lost']} | "
        f"{soak['rollouts_duplicated']} | {soak['commands']} ({soak['command_errors']}) | "
        f"{_num(rss['start'])}/{_num(rss['half'])}/{_num(rss['end'])} | "
        f"{threads['start']}/{threads['half']}/{threads['end']} | {end['keys']} / {after['keys']} | "
        f"{soak['containers_left']} ({soak['keep_versions']}) | {_verdict(soak['target']['met'])} |",
        "",
        f"Statuses: {soak['statuses']}. Keys kept without a TTL after the soak: {lasting or 'none'} "
        f"({_num(soak['redis_keys_per_rollout_kept'], digits=1)} keys per rollout).",
        *(
            f"- `{r['id']}` ended {r['status']}: {r['error'] or 'no reason recorded'}"
            + (f" ({'; '.join(r['notes'])})" if r["notes"] else "")
            for r in soak.get("not_good", [])
        ),
        "",
    ]


def traffic_table(traffic: JsonDict) -> list[str]:
    if "error" in traffic:
        return _failed("Traffic", traffic)
    config = traffic["config"]
    lost, timing, bad = traffic["lost"], traffic["rollback_time"], traffic["bad_version"]
    lines = [
        "## Traffic (behind HAProxy)",
        "",
        traffic["method"] + ". "
        f"Watch every {config['watch_interval_seconds']:g} s, warm-up {config['warmup']}, "
        f"error rate > {config['kpi_max']:g} for {config['for']} polls over "
        f"{config['kpi_window_seconds']:g} s (builtin error_rate behind the proxy, the demo's "
        f"/metrics on one port; trip's: the new version's 2xx answers per second > "
        f"{config['trip_max_per_second']:g}); drain {config['drain']}.",
        "",
        f"Requests failed at {config['rate']:g} req/s (goal: 0 behind the proxy):",
        "",
        "| pipeline | window | cycles | requests | failed | no answer or 502-504 | app 5xx "
        "| failed per cycle |",
        "|---|---|--:|--:|--:|--:|--:|---|",
    ]
    for row in lost["rows"]:
        lines.append(
            f"| {row['pipeline']} | {row['swap']} | {row['cycles']} | {row['requests']} | "
            f"{row['failed']} | {row['no_answer_or_502_504']} | {row['app_5xx']} | "
            f"{', '.join(str(n) for n in row['failed_per_cycle'])} |"
        )
    target = timing["target"]
    lines += [
        "",
        f"Nothing lost behind the proxy: {_verdict(lost['met'])}.",
        "",
        "Rollback time on the traffic path, until every new request reaches the old version "
        f"(ms; goal: p99 ≤ {target['ratio_max']:g}x the floor's p50 and < "
        f"{target['max_seconds'] * 1000:g} ms):",
        "",
        "| path | n | p50 | p99 | max | lower bound p50 | floor p50 | ratio p50 | ratio p99 "
        "| goal met |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|:-:|",
    ]
    for row in timing["rows"]:
        lines.append(
            f"| {row['path']} | {row['n']} | {_num(row['p50'], 1000, 1)} | "
            f"{_num(row['p99'], 1000, 1)} | {_num(row['max'], 1000, 1)} | "
            f"{_num(row.get('lower_p50'), 1000, 1)} | "
            f"{_num(row['floor_p50'], 1000, 2)} | {_ratio(row['ratio_p50'])} | "
            f"{_ratio(row['ratio_p99'])} | {_verdict(row['met'])} |"
        )
    same = timing.get("same_work")
    stack = timing.get("bolt_only")
    references = [
        ("floor: one bare runtime-API line (weight up; weight down) + probe", timing["floor"]),
        (
            "reference: HAProxyRouter.shift alone (1 round trip, state read back) + probe",
            timing["router"],
        ),
    ]
    if same:
        references.append(
            (
                f"same work: Slack's /rollback to bare bolt sending the {same['commands']} Redis "
                "commands the bot's ack sends before the move, then the floor's line + probe",
                same,
            )
        )
    if stack:
        references.append(
            (
                "bolt only: Slack's /rollback to the same bare bolt app sending no Redis command, "
                "then the floor's line + probe",
                stack,
            )
        )
    for label, figures in references:
        lines.append(
            f"| {label} | {figures['n']} | {_num(figures['p50'], 1000, 2)} | "
            f"{_num(figures['p99'], 1000, 2)} | {_num(figures['max'], 1000, 2)} | "
            f"{_num(figures.get('lower_p50'), 1000, 2)} | | | | |"
        )
    marks = timing["command_marks_median"]
    command = timing["rows"][0]
    if same and same["n"]:
        lines += [
            "",
            f"Slack's `/rollback` against the same work without the bot: p50 "
            f"{_num(command['p50'], 1000, 1)} against {_num(same['p50'], 1000, 1)} ms "
            f"({_ratio(same['command_ratio_p50'])}), p99 {_num(command['p99'], 1000, 1)} against "
            f"{_num(same['p99'], 1000, 1)} ms ({_ratio(same['command_ratio_p99'])}); the same "
            f"work alone is {_ratio(same['ratio_p50_to_floor'])} the floor's p50 at p50 and "
            f"{_ratio(same['ratio_p99_to_floor'])} at p99.",
        ]
    if stack and stack["n"]:
        lines += [
            "",
            "Slack's request through the HTTP server and bolt to the floor's line, writing "
            f"nothing: {_ratio(stack['ratio_p50_to_floor'])} the floor's p50 at p50 and "
            f"{_ratio(stack['ratio_p99_to_floor'])} at p99, before any app records anything.",
        ]
    lines += [
        "",
        "Where a `/rollback` spends its time (medians, ms after the command was sent): "
        + ", ".join(f"{name} {_num(at, 1000, 1)}" for name, at in marks.items())
        + ". A figure ends when the probe sent the first request of the final run of answers "
        "from the old version; its lower bound is when it sent the last request the other "
        "version answered: the switch lies between.",
        "",
        f"A bad version (every other GET / fails) at {config['rate']:g} req/s, until the watch "
        f"has rolled it back (goal: ≤ {bad['target']['ratio_max'] * 100:g}% of the one-port "
        "figure):",
        "",
        "| pipeline | runs | requests per run | failed per run | no answer or 502-504 | "
        "bad version's share (while live) | live to breach (s) |",
        "|---|--:|--:|---|--:|--:|--:|",
    ]
    for key in ("canary", "direct"):
        row = bad[key]
        lines.append(
            f"| {row['pipeline']} | {row['runs']} | {_num(row['requests_per_run'], digits=0)} | "
            f"{', '.join(str(n) for n in row['failed_per_run'])} | "
            f"{row['no_answer_or_502_504']} | {_num(row['share_of_3'], 100, 1)}% "
            f"({_num(row.get('share_of_3_while_live'), 100, 1)}%) | "
            f"{_num(row['live_to_breach'], digits=2)} |"
        )
    lines += [
        "",
        f"Failed behind the proxy / failed on one port (means per run): "
        f"{_num(bad['ratio'], 100, 1)}%; goal met: {_verdict(bad['met'])}.",
        "",
    ]
    return lines


_SCENARIO_WORDS = {
    "healthy": "healthy, independent noise",
    "shared_spike": "shared spike (both versions)",
    "one_scrape_spike": "one-scrape spike (new version)",
    "slow_burn": "slow burn (1x to 4x)",
}


def _scenario_words(row: JsonDict) -> str:
    if row["scenario"] in _SCENARIO_WORDS:
        return _SCENARIO_WORDS[row["scenario"]]
    return f"regression {row['factor']:g}x"


def _scenario_rank(row: JsonDict) -> tuple[int, float]:
    """Noise first, then regressions by factor, the slow burn last."""
    order = list(_SCENARIO_WORDS)
    if row["scenario"] in order[:3]:
        return order.index(row["scenario"]), 0.0
    return (4, 0.0) if row["scenario"] == "slow_burn" else (3, row["factor"])


def _decided(row: JsonDict, judge: str, goal_factor: float) -> str:
    """The poll that rolled back, or - (kept); bold when it is wrong for the goals; n/r: the
    trace lacks what this judge reads (not replayed)."""
    if judge not in row:
        return "n/r"
    at = row[judge]["rolled_back_at"]
    text = "-" if at is None else str(at)
    if row["label"] == "healthy":
        wrong = at is not None
    else:
        wrong = at is None and row["factor"] >= goal_factor
    shown = f"**{text}**" if wrong else text
    detectable = row.get("detectable")
    kept = at is None and row["label"] != "healthy"
    if wrong and kept and detectable and not detectable["within"] and judge == "compare":
        # Kept, and below what a step of its responses can detect: said, not hidden.
        shown += f" (detects ≥{_num(detectable['factor'], digits=1)}x)"
    return shown


def judge_table(judge: JsonDict) -> list[str]:
    if "error" in judge:
        return _failed("Judge replay", judge)
    config = judge["config"]
    levels = sorted(judge["levels"].items(), key=lambda item: item[1])
    columns = [(kind, level) for kind in ("error_rate", "latency") for level, _ in levels]
    names = {"error_rate": "error rate", "latency": "latency"}
    rows: dict[str, dict[tuple[str, str], JsonDict]] = {}
    for row in sorted(judge["traces"], key=_scenario_rank):
        rows.setdefault(_scenario_words(row), {})[(row["kind"], row["level"])] = row
    maxes = config["threshold_max"]
    lines = [
        "## Judge replay",
        "",
        judge["method"] + ". "
        f"Threshold: error rate max {maxes['error_rate']:g}, latency max "
        f"{maxes['latency']:g} s. Compare: tolerance {config['tolerance']:+.0%}, confidence "
        f"{config['confidence']:g}, min_samples {config['min_samples']}. Both: warm-up "
        f"{config['warmup']}, for {config['for']}.",
        "",
        "The poll of the step that rolled back, threshold / compare (- kept; **bold**: a false "
        f"rollback, or a regression of {config['goal_factor']:g}x or more kept):",
        "",
        "| trace | "
        + " | ".join(f"{names[kind]}, {judge['levels'][level]:g} req/s" for kind, level in columns)
        + " |",
        "|---|" + "|".join(":-:" for _ in columns) + "|",
    ]
    for words, cells in rows.items():
        shown = []
        for column in columns:
            row = cells.get(column)
            if row is None:
                shown.append("")
                continue
            goal = config["goal_factor"]
            shown.append(f"{_decided(row, 'threshold', goal)} / {_decided(row, 'compare', goal)}")
        lines.append(f"| {words} | " + " | ".join(shown) + " |")
    summary = judge["summary"]
    caught_keys = list(summary["compare"]["caught"])
    lines += [
        "",
        "| judge | false rollbacks: healthy + shared spike | one-scrape spike | "
        + " | ".join(f"caught {key.replace('_', ' ')}" for key in caught_keys)
        + " | median polls to rollback |",
        "|---|--:|--:|" + "--:|" * len(caught_keys) + "--:|",
    ]
    for name in ("threshold", "compare"):
        figures = summary[name]
        false = figures["false_rollbacks"]
        lines.append(
            f"| {name} | {_of(false['healthy_and_shared'])} | {_of(false['one_scrape_spike'])} | "
            + " | ".join(_of(figures["caught"][key]) for key in caught_keys)
            + f" | {_num(figures['median_polls_to_rollback'], digits=1)} |"
        )
    lines += _detectable_table(judge)
    wrong = [
        row
        for row in sorted(judge["traces"], key=_scenario_rank)
        if "**" in _decided(row, "compare", config["goal_factor"])
    ]
    if wrong:
        lines += ["", "Where compare was wrong, what the step held:", ""]
    for row in wrong:
        counts = row.get("failed_requests")
        seen = (
            f"requests failed: new {counts['new']}, baseline {counts['baseline']} (a one-sided "
            f"exact test on these counts: p={counts['exact_p']:.2g})"
            if counts
            else ""
        )
        ratio = row.get("median_ratio")
        shown = f"median new/baseline over the judged polls {ratio:.2f}" if ratio else ""
        lines.append(f"- {row['name']}: " + "; ".join(part for part in (shown, seen) if part) + ".")
    goals = judge["goals"]
    caught = goals["regressions_caught"]
    lines += [
        "",
        f"Goals (compare): no false rollback on the healthy and shared-spike traces: "
        f"{_verdict(goals['no_false_rollback']['met'])}"
        + _listed(goals["no_false_rollback"]["failed"])
        + f"; every regression of {caught['factor_at_least']:g}x or more caught within the "
        f"step: {_verdict(caught['met'])}" + _listed(caught["missed"], "missed") + ".",
    ]
    within = goals.get("detectable_regressions_caught")
    if within is not None:
        below = ", ".join(
            f"{b['trace']} (detects ≥{_num(b['detectable'], digits=2)}x)"
            for b in within["below_detectable"]
        )
        lines.append(
            f"Every regression of {caught['factor_at_least']:g}x or more that its step can "
            f"detect caught: {_verdict(within['met'])} ({within['of']} such traces"
            + (f"; missed: {', '.join(within['missed'])}" if within["missed"] else "")
            + ")"
            + (f"; below what their step can detect: {below}" if below else "")
            + "."
        )
    lines.append("")
    return lines


def _detectable_table(judge: JsonDict) -> list[str]:
    """Per error-rate trace: what its step could detect, and the step the goal would need."""
    rows = [
        row
        for row in sorted(judge["traces"], key=lambda r: (r["level"] != "low", _scenario_rank(r)))
        if row.get("detectable")
    ]
    if not rows:
        return []
    config = judge["config"]
    lines = [
        "",
        f"What each error-rate step could detect: the smallest worsening the count judge's "
        f"test catches with {config.get('power', 0.8):.0%} power at {config['confidence']:g} "
        "confidence, its last look held to half the level as every look is held to its place "
        "in the step (sized on the step's responses from its first judged poll, by the arcsine "
        "approximation the judge's explanation uses), at the baseline's real failure ratio "
        "(what the recorder injected) and at the step's own (what the judge's explanation "
        f"said at the step's end), and the judged step the goal's {config['goal_factor']:g}x "
        "would need at that traffic:",
        "",
        "| trace | responses new / baseline | baseline failing (real / in the step) | "
        "detectable at this step (real / in the step) | step for "
        f"{config['goal_factor']:g}x | compare |",
        "|---|--:|--:|--:|--:|:-:|",
    ]
    for row in rows:
        found = row["detectable"]
        lines.append(
            f"| {row['name']} | {found['new_served']} / {found['baseline_served']} | "
            f"{_num(found['baseline_ratio'], 100, 2)}% / "
            f"{_num(found['step_baseline_ratio'], 100, 2)}% | "
            f"≥{_num(found['factor'], digits=2)}x / ≥{_num(found['step_factor'], digits=2)}x | "
            f"{_seconds(found['goal_seconds'])} | "
            f"{_decided(row, 'compare', config['goal_factor'])} |"
        )
    return lines


def _seconds(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def _of(count: JsonDict) -> str:
    return f"{count['rolled_back']}/{count['of']}"


def _listed(names: list[str], what: str = "") -> str:
    if not names:
        return ""
    return f" ({what + ': ' if what else ''}{', '.join(names)})"


def _wake_line(penalty: JsonDict | None) -> list[str]:
    if not penalty:
        return []
    hot, cold = penalty["hot_us"], penalty["after_idle_us"]
    return [
        f"Wake-up penalty (`bench.machine.wake_penalty`: a fixed piece of an ack's work, hot, "
        f"then after {penalty['gap_ms']:g} ms asleep): {hot:.0f} µs, then {cold:.0f} µs "
        f"({cold / hot:.1f}x). "
        "A machine with a larger factor adds more to every request that waits on anything.",
        "",
    ]


def markdown(results: JsonDict) -> str:
    meta = results["meta"]
    lines = [
        f"# immune bench ({'quick' if meta['quick'] else 'full'}), {meta['started']}",
        "",
        f"{meta['host']}: {meta['cpus']} CPUs, Python {meta['python']}, commit {meta['commit']}; "
        f"load average at start {meta['loadavg_start']}; whole run {_num(meta.get('seconds'), digits=0)} s. "
        "Every ratio is against a floor measured in this run on this machine.",
        "",
        *_wake_line(meta.get("wake_penalty")),
    ]
    sections = (
        ("ack", ack_table),
        ("rollback", rollback_table),
        ("detection", detection_table),
        ("polling", polling_table),
        ("memory", memory_table),
        ("traffic", traffic_table),
        ("judge", judge_table),
        ("soak", soak_table),
    )
    for key, render in sections:
        if key in results:
            rendered = render(results[key])
            lines += rendered[:2] + machine_line(results[key], meta.get("cpus")) + rendered[2:]
    return "\n".join(lines)
