"""The plugin registry: deploy targets and KPI sources, found by name."""
