"""Health checks of a service's URL."""

from __future__ import annotations

from dataclasses import dataclass

import requests


@dataclass(frozen=True)
class HealthAnswer:
    healthy: bool
    detail: str


def probe(session: requests.Session, url: str, timeout: float = 2.0) -> HealthAnswer:
    """One GET; healthy on any 2xx answer."""
    try:
        response = session.get(url, timeout=(min(timeout, 1.0), timeout), allow_redirects=True)
    except requests.RequestException as exc:
        return HealthAnswer(False, f"no answer ({type(exc).__name__})")
    if 200 <= response.status_code < 300:
        return HealthAnswer(True, f"HTTP {response.status_code}")
    return HealthAnswer(False, f"HTTP {response.status_code}")
