"""Exact counters of what became of every event, and a rate-limited logger for the flush thread.

Every accepted event ends up in exactly one of: ``sent``, ``dropped[reason]``, or still ``queued`` /
``in_flight`` (with a spool: ``spooled``, and from there the host's sender counts what it sends and drops; with a
Redis buffer: ``buffered``, and from there the forwarders count).
Requests that a middleware decided not to meter are counted under ``skipped[reason]``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

#: Why an event was dropped (the keys of ``Stats.dropped``).
DROP_REASONS: dict[str, str] = {
    "queue_full": "the in-memory queue held max_queue_size events (raise it, or look at why delivery is slow)",
    "invalid": "the event broke Dodo's rules (bad customer_id, event_name or metadata) and was not repairable",
    "expired": "the event would have reached Dodo more than an hour after it was created",
    "rejected": "Dodo answered 400/422 (or another 4xx) for this event alone",
    "too_large": "the event alone is larger than max_request_bytes, or Dodo answered 413 for it alone",
    "unauthorized": "Dodo answered 401/403: wrong key, revoked key, or a key for the other environment",
    "retries_exhausted": "network errors, 408/409/429 or 5xx lasted longer than max_retry_time",
    "shutdown": "the process exited (or shutdown() returned) before the event could be delivered",
    "duplicate_id": "a user-supplied event_id repeated within one request (Dodo would ignore the repeat anyway)",
    "internal_error": "a bug in dodo-ingest while delivering; see the log (please report it)",
    "spool_full": "the spool held spool_max_bytes on disk (a long outage: raise it, or look at why delivery fails)",
    "spool_corrupt": "a damaged line of a spool file (a write cut short by a crash or power loss) was skipped",
}

#: Why a request was not turned into an event (the keys of ``Stats.skipped``).
SKIP_REASONS: dict[str, str] = {
    "no_customer": "no customer id was found and no fallback_customer_id is configured",
    "filtered": "excluded by exclude_paths / include_paths / exclude_methods / should_meter / exempt",
    "adapter_error": "dodo-ingest itself failed on this request (a bug); see the log",
    "invalid_customer": "the customer resolver returned something that is not a non-empty str (bytes, an int...)",
    "rate_limited": "rejected by the rate limiter (429) before the view: not billed (see rate_limit_rejected_event)",
}


@dataclass(frozen=True)
class Stats:
    """A consistent snapshot of a batcher's counters."""

    accepted: int = 0
    sent: int = 0
    retried: int = 0
    requests: int = 0
    repaired: int = 0
    #: User hooks (customer resolver, should_meter, metadata hook, route resolver) that raised; the request was
    #: still metered with what was known.
    hook_errors: int = 0
    queued: int = 0
    in_flight: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_error_at: float | None = None
    #: Accepted events written to the durable spool (``spool_dir``); the host's sender delivers them from there.
    spooled: int = 0
    #: Accepted events written to the shared Redis buffer (``buffer_url``); a forwarder delivers them from there.
    buffered: int = 0
    #: Events whose write to the Redis buffer failed (per attempt): kept in memory (or spooled) and tried again.
    buffer_unavailable: int = 0
    #: ``rollup_interval``: requests folded into rollups (the rollups themselves are counted as events, in
    #: ``accepted``, ``sent``...).
    rolled_up: int = 0
    #: ``rollup_interval``: requests in windows not yet closed (queued as rollups when their window ends).
    rolling: int = 0

    @property
    def dropped_total(self) -> int:
        """All dropped events, whatever the reason."""
        return sum(self.dropped.values())

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as plain data (for logs, health endpoints, JSON)."""
        return {
            "accepted": self.accepted,
            "sent": self.sent,
            "retried": self.retried,
            "requests": self.requests,
            "repaired": self.repaired,
            "hook_errors": self.hook_errors,
            "queued": self.queued,
            "in_flight": self.in_flight,
            "dropped": dict(self.dropped),
            "skipped": dict(self.skipped),
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "spooled": self.spooled,
            "buffered": self.buffered,
            "buffer_unavailable": self.buffer_unavailable,
            "rolled_up": self.rolled_up,
            "rolling": self.rolling,
        }


class Counters:
    """Mutable counters behind one lock (the batcher guards its queue with the same lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted = 0
        self.sent = 0
        self.retried = 0
        self.requests = 0
        self.repaired = 0
        self.hook_errors = 0
        self.in_flight = 0
        self.dropped: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.spooled = 0
        self.buffered = 0
        self.buffer_unavailable = 0

    def add(self, name: str, n: int = 1) -> None:
        """Increment a scalar counter (``sent``, ``retried``, ``requests``, ``repaired``, ``hook_errors``...)."""
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    def drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` events dropped for ``reason`` (one of :data:`DROP_REASONS`)."""
        with self.lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def skip(self, reason: str) -> None:
        """Count one request not metered for ``reason`` (one of :data:`SKIP_REASONS`)."""
        with self.lock:
            self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def error(self, message: str) -> None:
        """Remember the last delivery error."""
        with self.lock:
            self.last_error, self.last_error_at = message, time.time()

    def snapshot(self, queued: int) -> Stats:
        """Freeze the counters (``queued`` is read by the caller under the same lock)."""
        return Stats(
            self.accepted,
            self.sent,
            self.retried,
            self.requests,
            self.repaired,
            self.hook_errors,
            queued,
            self.in_flight,
            dict(self.dropped),
            dict(self.skipped),
            self.last_error,
            self.last_error_at,
            self.spooled,
            self.buffered,
            self.buffer_unavailable,
        )


class RateLimitedLog:
    """Log a message of one kind at most once per ``interval`` seconds, saying how many were suppressed.

    A flush thread failing at 100 requests/s must not flood the host app's logs.
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def log(self, level: int, kind: str, message: str, *args: object, exc_info: bool = False) -> None:
        """Log ``message % args`` unless a message of ``kind`` was logged less than ``interval`` ago
        (``exc_info``: with the traceback of the exception being handled)."""
        now = time.monotonic()
        with self._lock:
            last, suppressed = self._last.get(kind, (float("-inf"), 0))
            if now - last < self.interval:
                self._last[kind] = (last, suppressed + 1)
                return
            self._last[kind] = (now, 0)
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self.logger.log(level, message, *args, exc_info=exc_info)
