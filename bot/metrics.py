"""The bot's own Prometheus metrics, served at GET /metrics (names prefixed `immune_`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

COMMANDS = Counter("immune_commands_total", "Slash commands handled", ["command", "outcome"])
ROLLOUTS = Counter(
    "immune_rollouts_total", "Rollouts by kind and outcome", ["pipeline", "kind", "outcome"]
)
KPI_POLLS = Counter(
    "immune_kpi_polls_total", "KPI polls by verdict", ["pipeline", "kpi", "verdict"]
)
POLLS_PAUSED = Counter(
    "immune_polls_paused_total",
    "KPI polls skipped (not judged) because the pipeline's engine did not answer",
    ["pipeline"],
)
KPI_POLL_SECONDS = Histogram(
    "immune_kpi_poll_seconds",
    "Time to query and judge one KPI",
    ["pipeline"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
POLL_OVERRUNS = Counter(
    "immune_poll_overruns_total",
    "Watch polls that took longer than their interval (the slots they overran are skipped)",
    ["pipeline"],
)
POLL_LATENESS_SECONDS = Histogram(
    "immune_poll_lateness_seconds",
    "How late a scheduled poll started",
    ["pipeline"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BREACHES = Counter("immune_breaches_total", "KPI breaches acted on", ["pipeline", "kpi"])
ROLLBACKS = Counter("immune_rollbacks_total", "Rollbacks started", ["pipeline", "trigger"])
WATCHES_ACTIVE = Gauge("immune_watches_active", "Watches this replica has scheduled")
REDIS_UNREPLICATED = Counter(
    "immune_redis_unreplicated_total",
    "Answers to Slack sent before the wanted Redis replicas acknowledged (WAIT timed out)",
)
SLACK_UP = Gauge("immune_slack_up", "1 while Slack takes the bot's messages, 0 while it fails")
SLACK_QUEUED = Gauge("immune_slack_queued", "Messages waiting in this replica's Slack outbox")
SLACK_GIVEN_UP = Counter(
    "immune_slack_given_up_total", "Messages given up after SLACK_GIVE_UP_SECONDS in the outbox"
)
