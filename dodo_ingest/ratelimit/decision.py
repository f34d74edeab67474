"""What a check decided, and how to say it over HTTP.

Header fields follow draft-ietf-httpapi-ratelimit-headers (-08 and later): every limit that applied is one
policy, named by its own notation (``"100/minute"``, a per-view limit ``"render:10/minute"``)::

    RateLimit-Policy: "100/minute";q=100;w=60, "20000/month";q=20000;w=2678400
    RateLimit: "100/minute";r=99;t=60, "20000/month";r=19411;t=1036800

``q`` is the quota, ``w`` the window in seconds (a billing period's actual length), ``r`` the units remaining,
``t`` the seconds until that window frees units. ``Retry-After`` is sent only on a rejection (never on a 200).
The legacy ``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` (epoch seconds, as GitHub sends it) describe the
binding limit: the one that rejected, or the one closest to running out.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, NamedTuple

Reason = Literal["allowed", "unlimited", "limited", "fail_open", "unavailable"]


class LimitState(NamedTuple):
    """One limit as seen by one check (or by :meth:`Limiter.usage`); ``_asdict()`` gives it as a dict."""

    policy: str
    """The limit's name in the headers and the 429 body: its notation, prefixed by the scope if any."""
    limit: int
    """Units allowed per window."""
    used: int
    """Units counted in the window now (for a sliding window counter, the weighted estimate)."""
    remaining: int
    """Units left in the window now (never below 0)."""
    reset: int
    """Seconds until the window frees units: the end of a billing period, the next slide of a rolling window."""
    window: int
    """Seconds the window spans (a billing period's actual length)."""
    exceeded: bool = False
    """Whether this limit rejected the check."""


@dataclass(slots=True)
class Decision:
    """The outcome of :meth:`Limiter.check` (read-only by convention).

    ``limit``, ``remaining`` and ``reset`` describe the binding limit (the one that rejected with the latest
    reset, else the one closest to running out); ``states`` holds every limit that applied.
    """

    allowed: bool
    reason: Reason
    states: tuple[LimitState, ...] = ()
    retry_after: int | None = None
    """Seconds to wait before retrying; set only when the check was rejected."""

    @property
    def binding(self) -> LimitState | None:
        """The limit the headers' single values describe."""
        if not self.states:
            return None
        exceeded = [s for s in self.states if s.exceeded]
        if exceeded:
            return max(exceeded, key=lambda s: s.reset)
        return min(self.states, key=lambda s: (s.remaining, -s.reset))

    @property
    def limit(self) -> int | None:
        """Units per window of the binding limit (None when no limit applied)."""
        state = self.binding
        return None if state is None else state.limit

    @property
    def remaining(self) -> int | None:
        """Units left in the binding limit's window."""
        state = self.binding
        return None if state is None else state.remaining

    @property
    def reset(self) -> int | None:
        """Seconds until the binding limit's window frees units."""
        state = self.binding
        return None if state is None else state.reset

    def headers(self, *, legacy: bool = False) -> list[tuple[str, str]]:
        """Response header fields: ``RateLimit-Policy`` and ``RateLimit`` (plus ``X-RateLimit-*`` when
        ``legacy``), and ``Retry-After`` on a rejection. Empty when no limit applied or the store was down."""
        result: list[tuple[str, str]] = []
        if self.states:
            states = self.states
            result.append(("RateLimit-Policy", _policy_field(tuple([(s[0], s[1], s[5]) for s in states]))))
            result.append(("RateLimit", ", ".join([f"{_sf_string(s[0])};r={s[3]};t={s[4]}" for s in states])))
            if legacy:
                state = self.binding
                assert state is not None
                result.append(("X-RateLimit-Limit", str(state.limit)))
                result.append(("X-RateLimit-Remaining", str(state.remaining)))
                result.append(("X-RateLimit-Reset", str(math.ceil(time.time()) + state.reset)))
        if not self.allowed and self.retry_after is not None:
            result.append(("Retry-After", str(self.retry_after)))
        return result

    def body(self) -> dict[str, Any]:
        """The JSON body of a rejection: which limit, and when to retry."""
        if self.reason == "unavailable":
            return {
                "error": "rate_limit_unavailable",
                "detail": "The rate limit store is unavailable; retry later.",
                "retry_after": self.retry_after,
            }
        state = self.binding
        policy = state.policy if state is not None else None
        return {
            "error": "rate_limited",
            "detail": f"Rate limit {policy} exceeded; retry in {self.retry_after} s.",
            "policy": policy,
            "limit": None if state is None else state.limit,
            "remaining": None if state is None else state.remaining,
            "reset": None if state is None else state.reset,
            "retry_after": self.retry_after,
        }


def rejection_response(decision: Decision, *, legacy_headers: bool = False) -> tuple[int, list[tuple[str, str]], bytes]:
    """``(status, headers, body)`` for a rejected check: 429 with a JSON body naming the limit, ``Retry-After``
    and the rate-limit fields; 503 when the store was down and ``rate_limit_fail_open`` is False."""
    status = 503 if decision.reason == "unavailable" else 429
    body = json.dumps(decision.body(), separators=(",", ":")).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    headers.extend(decision.headers(legacy=legacy_headers))
    return status, headers, body


@lru_cache(maxsize=1024)
def _policy_field(policies: tuple[tuple[str, int, int], ...]) -> str:
    return ", ".join(f"{_sf_string(name)};q={quota};w={window}" for name, quota, window in policies)


@lru_cache(maxsize=1024)
def _sf_string(text: str) -> str:
    """A Structured Field String (RFC 8941): printable ASCII, with ``"`` and ``\\`` escaped."""
    printable = "".join(c if " " <= c <= "~" else "?" for c in text)
    return '"' + printable.replace("\\", "\\\\").replace('"', '\\"') + '"'
