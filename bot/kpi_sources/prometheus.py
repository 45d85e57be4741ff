"""Prometheus as a KPI source: instant and range queries over its HTTP API."""

from __future__ import annotations

import math
from typing import Any

import requests

from bot.domain.kpis import Reading


class PrometheusSource:
    """Instant queries against Prometheus' HTTP API (`GET /api/v1/query`)."""

    def __init__(self, base_url: str, session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/api/v1/query"
        self.session = session or requests.Session()
        # Prometheus is addressed directly; a proxy from the environment must not intercept.
        self.session.trust_env = False

    def close(self) -> None:
        self.session.close()

    def read(self, query: str, timeout: float) -> Reading:
        """One instant query; every answer that is not one number is a Reading without a value.

        What each misbehaviour becomes (README "What happens when…"): a timeout, a 5xx, an
        answer that is not Prometheus JSON, NaN and ±Inf are no data (the KPI's `no_data`
        decides); a query Prometheus rejects (`bad_data`, HTTP 400), several series and a
        string or matrix result are config errors (no data too, logged as errors).
        """
        try:
            response = self.session.get(
                self.url,
                params={"query": query, "timeout": f"{max(1, int(timeout * 1000))}ms"},
                timeout=timeout,
            )
        except requests.Timeout:
            return Reading(None, f"Prometheus timed out after {timeout:.2g}s", unanswered=True)
        except requests.RequestException as exc:
            return Reading(None, f"Prometheus unreachable ({type(exc).__name__})", unanswered=True)
        try:
            body: object = response.json()
        except ValueError:
            return Reading(
                None,
                f"Prometheus answered HTTP {response.status_code} without JSON",
                unanswered=True,
            )
        if not isinstance(body, dict) or "status" not in body:
            return Reading(
                None,
                f"Prometheus answered HTTP {response.status_code} with unexpected JSON",
                unanswered=True,
            )
        if body.get("status") != "success":
            error = body.get("error") or "no reason given"
            error_type = body.get("errorType") or "error"
            # bad_data (HTTP 400) is the query itself: it will never parse.
            bad_query = error_type == "bad_data"
            return Reading(
                None,
                f"Prometheus rejected the query ({error_type}, HTTP {response.status_code}): "
                f"{error}"
                if bad_query
                else f"Prometheus error ({error_type}, HTTP {response.status_code}): {error}",
                config_error=bad_query,
                # Prometheus' own 5xx (unavailable, timeout): the query may be right.
                unanswered=response.status_code >= 500,
            )
        data = body.get("data")
        return reading_from_result(data if isinstance(data, dict) else {})

    def health(self) -> dict[str, object]:
        """Prometheus' own readiness endpoint (`/-/ready`)."""
        try:
            answer = self.session.get(self.base_url + "/-/ready", timeout=1)
        except requests.RequestException as exc:
            return {"ok": False, "error": type(exc).__name__}
        return {"ok": answer.status_code == 200, "status": answer.status_code}

    def read_range(
        self, query: str, start: float, end: float, step: float, timeout: float
    ) -> list[tuple[float, float]]:
        params = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        try:
            response = self.session.get(self.url + "_range", params=params, timeout=timeout)
            body: dict[str, Any] = response.json()
        except (requests.RequestException, ValueError):
            return []
        series = (body.get("data") or {}).get("result") or []
        if body.get("status") != "success" or len(series) != 1:
            return []
        points = []
        for at, raw in series[0].get("values", []):
            value = _number(raw).value
            if value is not None:
                points.append((float(at), value))
        return points


def reading_from_result(data: dict[str, Any]) -> Reading:
    """The query's scalar, or its single series' value; anything else is no data."""
    result_type = data.get("resultType")
    result = data.get("result")
    if result_type == "scalar" and isinstance(result, list) and len(result) == 2:
        return _number(result[1])
    if result_type == "vector" and isinstance(result, list):
        if not result:
            return Reading(
                None, "empty result (no series yet, or the label selector matches nothing)"
            )
        if len(result) > 1:
            return Reading(
                None,
                f"the query returns {len(result)} series; aggregate it to one (sum, max, avg …)",
                config_error=True,
            )
        sample = result[0].get("value") if isinstance(result[0], dict) else None
        if not isinstance(sample, list) or len(sample) != 2:
            return Reading(None, "a series without a [time, value] sample")
        return _number(sample[1])
    return Reading(
        None, f"unsupported result type {result_type!r}; use a scalar or one series", True
    )


def _number(raw: object) -> Reading:
    try:
        value = float(str(raw))
    except ValueError:
        return Reading(None, f"not a number: {raw!r}")
    if math.isnan(value):
        return Reading(None, "value is NaN (0/0: a ratio over no traffic?)")
    if math.isinf(value):
        # x/0 with x > 0 (a ratio whose denominator is 0): not a measurement, no data.
        return Reading(None, f"value is {'+' if value > 0 else '-'}Inf (a division by zero?)")
    return Reading(value)
