"""The domain: models, the config schema, rules (approvals, windows, KPI verdicts), errors and
the Text people read. Pure: no Slack, Redis, Docker, HTTP or mrkdwn; it imports only itself."""
