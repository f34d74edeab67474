"""Dodo's per-key request budget, emulated: ``dodo-ingest serve --rate-limit 100/minute``.

Dodo documents about 100 requests per minute per API key, with bursts of up to 10 per second, shared by
every process that uses the key. With a budget set, the local server answers a request over it with
``429 TOO_MANY_REQUESTS`` and ``Retry-After`` (whole seconds until a slot frees up), so a developer can
watch how their workers behave under it. Only admitted requests use the budget; it applies to Dodo's
routes (``/events*``, ``/meters*``) after authentication, never to ``/_local/*`` or the dashboard.

A budget is one or more limits, ``"100/minute"`` or ``"100/minute,10/second"``; every limit must have
room. Each is a sliding window (a log of the admitted requests' times per key), so "100 per minute"
means at most 100 in any 60 seconds, not 100 per clock minute.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["RateLimit", "RateLimiter", "parse_rate_limits"]

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}
_LIMIT = re.compile(r"\s*(\d+)\s*(?:/|per)\s*(\d*(?:\.\d+)?)\s*([a-z]+)\s*", re.ASCII | re.IGNORECASE)


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` requests per API key in any ``period`` seconds."""

    limit: int
    period: float

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ValueError(f"a rate limit needs at least 1 request, got {self.limit!r}")
        if not isinstance(self.period, (int, float)) or not 0 < self.period <= 86400:
            raise ValueError(f"a rate limit's period must be in (0, 86400] seconds, got {self.period!r}")

    def __str__(self) -> str:
        for name, seconds in (("second", 1.0), ("minute", 60.0), ("hour", 3600.0)):
            if self.period == seconds:
                return f"{self.limit}/{name}"
        return f"{self.limit}/{self.period:g}s"


def parse_rate_limits(text: str) -> tuple[RateLimit, ...]:
    """Parse ``"100/minute"``, ``"100/minute,10/second"``, ``"5/10s"`` or ``"1000 per hour"``.

    Raises ValueError with the accepted forms when ``text`` is not one of them.
    """
    limits = []
    for part in text.split(","):
        match = _LIMIT.fullmatch(part)
        unit = match.group(3).lower() if match else ""
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"invalid rate limit {part.strip()!r}: expected N/second, N/minute or N/hour "
                "(or N/10s; several joined by commas, e.g. 100/minute,10/second)"
            )
        count = float(match.group(2)) if match.group(2) else 1.0
        limits.append(RateLimit(int(match.group(1)), count * _UNITS[unit]))
    return tuple(limits)


class RateLimiter:
    """Sliding-window limits per API key; thread-safe. Keys are kept only as hashes."""

    def __init__(self, limits: Sequence[RateLimit], clock: Callable[[], float] = time.monotonic) -> None:
        if not limits:
            raise ValueError("a RateLimiter needs at least one RateLimit")
        self.limits = tuple(limits)
        self._clock = clock
        self._lock = threading.Lock()
        self._admitted: dict[bytes, list[deque[float]]] = {}
        self.refused = 0

    def __str__(self) -> str:
        return ",".join(str(limit) for limit in self.limits)

    def acquire(self, api_key: str) -> float | None:
        """Admit one request for ``api_key`` (None) or refuse it: the seconds until one would be admitted."""
        key = hashlib.sha256(api_key.encode("utf-8", "replace")).digest()
        now = self._clock()
        with self._lock:
            logs = self._admitted.get(key)
            if logs is None:
                logs = self._admitted[key] = [deque() for _ in self.limits]
            wait = 0.0
            for limit, log in zip(self.limits, logs, strict=True):
                while log and log[0] <= now - limit.period:
                    log.popleft()
                if len(log) >= limit.limit:
                    wait = max(wait, log[0] + limit.period - now)
            if wait > 0:
                self.refused += 1
                return wait
            for log in logs:
                log.append(now)
            return None

    @staticmethod
    def retry_after(wait: float) -> str:
        """The ``Retry-After`` value for a refusal: whole seconds, rounded up, at least 1."""
        return str(max(1, math.ceil(wait)))
