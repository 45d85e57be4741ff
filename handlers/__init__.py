"""The bolt listeners: each turns a Slack request into a use case call and its answer into an
ack, through bot.slack; nothing else lives here."""
