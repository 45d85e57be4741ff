"""Reports: documents made from the domain's records (Markdown exports, the breach chart).
Plain text and pictures: no Slack markup, no I/O."""
