"""immune: a Slack ChatOps bot for continuous deployment with Docker.

The folders are the layers (docs/ARCHITECTURE.md): `domain` (pure rules) < `ports` (what the
use cases need from the world) < the adapters `store`, `targets`, `kpi_sources`, `reports` <
`services` (use cases) < `slack` (the only Slack speaker) < `handlers` (bolt listeners) <
the composition root: `settings`, `plugins`, `app`, `server`, `__main__`.
"""
