"""Slack: the only code that imports slack_sdk/slack_bolt or writes mrkdwn, `<@…>`, `<#…>` or
`<!date^…>`. Message builders, the words of announcements, the Notifier, replies, and reading
what people type (five-whys answers, forms)."""
