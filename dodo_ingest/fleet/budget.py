"""The fleet-wide request budget: every forwarder of one buffer takes a slot before each request to Dodo.

Dodo's budget is per API key (about 100 requests per minute), shared by every host, so it is kept in Redis, by
the ``limits`` library (the same storage the rate-limit feature uses): a **moving window** of
``max_requests_per_minute`` requests per 60 s; a sixth of that per 10 s, so that the minute's budget is spread
over it instead of being spent in its first seconds (a backlog then waits at most about 10 s, not a minute); and
:data:`~dodo_ingest.pacing.BURST` per second, the burst Dodo allows. Both are Lua-atomic in Redis, so forwarders never
over-spend together. When no slot is free, the window says when its oldest request leaves it: the forwarder
waits that long (never polling faster than :data:`MIN_WAIT`), while events pile up in the stream and the next
request grows toward 1000 events.
"""

from __future__ import annotations

import threading
import time

from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from dodo_ingest.config import redact_url
from dodo_ingest.fleet.stream import BufferUnavailable, describe_error
from dodo_ingest.pacing import BURST

#: The shortest wait between two tries for a slot.
MIN_WAIT = 0.02


def _limits_uri(url: str) -> str:
    """The ``limits`` storage URI of a redis-py URL (``unix://`` is ``redis+unix://`` there)."""
    return "redis+unix://" + url[len("unix://") :] if url.startswith("unix://") else url


class FleetBudget:
    """``per_minute`` requests per moving minute (and :data:`BURST` per second) for all forwarders of ``prefix``."""

    def __init__(self, url: str, prefix: str, per_minute: float) -> None:
        self.url = url
        self.prefix = prefix
        self.per_minute = max(1, int(per_minute))
        self._items = (
            RateLimitItemPerSecond(max(1, int(BURST)), 1, namespace="dodo-fleet"),
            RateLimitItemPerSecond(max(1, self.per_minute // 6), 10, namespace="dodo-fleet"),
            RateLimitItemPerMinute(self.per_minute, 1, namespace="dodo-fleet"),
        )
        storage = storage_from_string(
            _limits_uri(url), wrap_exceptions=True, socket_timeout=2.0, socket_connect_timeout=1.0
        )
        self._limiter = MovingWindowRateLimiter(storage)

    def __repr__(self) -> str:
        return f"<FleetBudget {self.per_minute}/minute {redact_url(self.url)} {self.prefix}>"

    def take(self) -> float:
        """Take a slot for one request: 0.0 if taken, else the seconds to wait before trying again.

        Raises :class:`~dodo_ingest.fleet.stream.BufferUnavailable` when Redis cannot be reached."""
        limiter, prefix = self._limiter, self.prefix
        try:
            waits = [
                limiter.get_window_stats(item, prefix).reset_time - time.time()
                for item in self._items
                if not limiter.test(item, prefix)
            ]
            if waits:  # the longest wait of the windows that are full
                return max(MIN_WAIT, *waits)
            for item in self._items:  # a slot in every window; another forwarder may take one first
                if not limiter.hit(item, prefix):
                    return MIN_WAIT
        except StorageError as exc:
            raise BufferUnavailable(describe_error(exc.storage_error, self.url)) from None
        return 0.0

    def wait_for_slot(self, stop: threading.Event) -> bool:
        """Block until a slot is taken (True) or ``stop`` is set (False)."""
        while not stop.is_set():
            wait = self.take()
            if wait <= 0:
                return True
            stop.wait(wait)
        return False

    def used(self) -> int:
        """Requests in the current moving minute (for ``--status``)."""
        try:
            stats = self._limiter.get_window_stats(self._items[-1], self.prefix)
        except StorageError as exc:
            raise BufferUnavailable(describe_error(exc.storage_error, self.url)) from None
        return self.per_minute - stats.remaining
