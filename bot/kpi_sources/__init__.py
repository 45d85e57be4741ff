"""KPI sources: each module implements `ports.KpiSource` for one metrics system (Prometheus);
bot/plugins.py registers them, and each KPI names its `source`."""
