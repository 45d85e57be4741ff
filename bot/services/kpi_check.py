"""`python -m bot check`: run every KPI query once and say which ones are wrong.

A query Prometheus rejects, or one that returns several series or a string, is wrong whatever
the data: the watch would judge it no data at every poll. An empty result is not wrong (no
version runs yet); a source that does not answer is "not checked".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from bot.domain.config import PipelinesConfig
from bot.domain.kpis import kpi_query
from bot.domain.models import TrafficSplit
from bot.ports import KpiSource

CHECK_TIMEOUT_SECONDS = 10.0


class QueryState(StrEnum):
    ok = "ok"  # a number
    no_data = "no data"  # parses, nothing to read now (fine before a deploy)
    wrong = "wrong"  # the query itself: rejected, several series, a string
    not_checked = "not checked"  # the source did not answer (down, 5xx, timeout)


@dataclass(frozen=True)
class QueryCheck:
    pipeline: str
    kpi: str
    query: str
    state: QueryState
    detail: str


def check_queries(config: PipelinesConfig, sources: Mapping[str, KpiSource]) -> list[QueryCheck]:
    """Every KPI of every pipeline, queried once (both versions' forms for `judge: compare`)."""
    checks: list[QueryCheck] = []
    for name, pipeline in config.pipelines.items():
        split = None
        if pipeline.traffic is not None:
            # Any two slots of the pipeline's range: the queries' shape does not depend on them.
            first = pipeline.traffic.ports.first
            split = TrafficSplit(port=first + 1, baseline_port=first, percent=50)
        for kpi in pipeline.kpis:
            queries = [kpi_query(kpi, pipeline.traffic, split)]
            if kpi.judge == "compare":
                queries.append(kpi_query(kpi, pipeline.traffic, split, baseline=True))
            for query in dict.fromkeys(q for q in queries if q is not None):
                reading = sources[kpi.source].read(query, CHECK_TIMEOUT_SECONDS)
                if reading.value is not None:
                    state, detail = QueryState.ok, f"{reading.value:.6g}"
                elif reading.config_error:
                    state, detail = QueryState.wrong, reading.detail
                elif reading.unanswered:
                    state, detail = QueryState.not_checked, reading.detail
                else:
                    state, detail = QueryState.no_data, reading.detail
                checks.append(QueryCheck(name, kpi.name, query, state, detail))
    return checks
