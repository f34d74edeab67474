"""Rollups (``rollup_interval``): one event per customer, endpoint, method, status class and window.

At 1000 events per request and about 100 requests per minute, one Dodo key carries about 1,700 events per second.
Past that, per-request events cannot all reach Dodo. With ``rollup_interval`` set, the adapters' requests are
folded (on the request thread, in O(1), under a lock of their own) into sums per key and window, and the flush
thread queues one event per key when a window closes:

``calls``, ``errors`` (status 400 and above), ``response_time_ms_sum`` / ``_max``, ``request_bytes_sum`` /
``_max``, ``response_bytes_sum`` / ``_max``, ``cost`` (the sum of rate-limit costs, when there are any),
``endpoint``, ``method``, ``status_class`` (``"2xx"``...), ``window_seconds``. Its timestamp is the window's start.
Bill with a **Sum** meter over ``calls`` (not Count).

Windows are aligned to the clock (``floor(t / interval) * interval``), so a window never straddles a boundary
that is a multiple of the interval (hours, days: billing periods). A ``flush()`` or a shutdown closes the open
windows early; what follows in the same window becomes its next *part*. A request folded after its window closed
joins the next window. Each rollup's id is a digest of (this process's random token, window start, part, key):
fixed before the event is queued, so every retry, and every replay from the spool, carries the same id, and Dodo
counts a rollup once however often it is sent.

What a rollup costs in durability: the open window lives in memory. A graceful stop (SIGTERM, ``shutdown()``, the
exit drain) queues it; a ``kill -9`` loses up to one window of calls, spool or not.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from typing import Any, NamedTuple, Protocol

#: ``status_class`` of a request whose status is not a number from 100 to 599.
UNKNOWN_STATUS_CLASS = "other"


class Facts(Protocol):
    """What a rollup needs of a request (a :class:`dodo_ingest.request.RequestEvent` has it)."""

    endpoint: str
    method: str
    status_code: int
    duration: float
    request_bytes: int | None
    response_bytes: int | None
    cost: int | None


class Rollup(NamedTuple):
    """One rollup event, ready to queue."""

    customer_id: str
    event_name: str
    metadata: dict[str, Any]
    created: float  # the window's start
    event_id: str


class _Sums:
    __slots__ = ("calls", "cost", "errors", "req_max", "req_sum", "resp_max", "resp_sum", "rt_max", "rt_sum")

    def __init__(self) -> None:
        self.calls = self.errors = 0
        self.rt_sum = self.rt_max = 0.0
        self.req_sum = self.req_max = self.resp_sum = self.resp_max = 0
        self.cost: int | None = None


_Key = tuple[str, str, str, str, str]  # customer, event name, endpoint, method, status class
_Window = tuple[float, int]  # start, part


def status_class(status: Any) -> str:
    """``"2xx"`` for 200..299 and so on; :data:`UNKNOWN_STATUS_CLASS` for anything else."""
    if isinstance(status, int) and 100 <= status <= 599:
        return f"{status // 100}xx"
    return UNKNOWN_STATUS_CLASS


class Rollups:
    """The open windows of one batcher in one process. Thread-safe."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._windows: dict[_Window, dict[_Key, _Sums]] = {}
        self._parts: dict[float, int] = {}  # window start -> its current part (after early closes)
        self._open_from = -math.inf  # windows that start before this are closed: later folds join this one
        self._token = os.urandom(8).hex()
        self._stopped = False
        #: Requests folded into windows not yet closed.
        self.pending = 0
        #: Requests folded, in all.
        self.folded = 0

    def fold(self, customer_id: str, event_name: str, facts: Facts, created: float) -> bool | None:
        """Add one request. Returns True when it opened the only window (the flush thread should look at its
        clock again), False otherwise, None when the rollups are stopped (a shutdown has closed them)."""
        aligned = (created // self.interval) * self.interval
        status = status_class(facts.status_code)
        key = (customer_id, event_name, facts.endpoint, facts.method, status)
        code = facts.status_code
        error = isinstance(code, int) and code >= 400
        duration_ms = facts.duration * 1000.0
        request_bytes = facts.request_bytes or 0
        response_bytes = facts.response_bytes or 0
        cost = facts.cost
        with self._lock:
            if self._stopped:
                return None
            start = max(aligned, self._open_from)  # read under the lock: never a window already sent
            window = (start, self._parts.get(start, 0))
            sums_by_key = self._windows.get(window)
            opened = False
            if sums_by_key is None:
                opened = not self._windows
                sums_by_key = self._windows[window] = {}
            sums = sums_by_key.get(key)
            if sums is None:
                sums = sums_by_key[key] = _Sums()
            sums.calls += 1
            if error:
                sums.errors += 1
            sums.rt_sum += duration_ms
            if duration_ms > sums.rt_max:
                sums.rt_max = duration_ms
            sums.req_sum += request_bytes
            if request_bytes > sums.req_max:
                sums.req_max = request_bytes
            sums.resp_sum += response_bytes
            if response_bytes > sums.resp_max:
                sums.resp_max = response_bytes
            if cost is not None:
                sums.cost = cost if sums.cost is None else sums.cost + cost
            self.pending += 1
            self.folded += 1
            return opened

    def due_in(self, now: float) -> float | None:
        """Seconds until the earliest open window closes (0 or less: now), or None when none is open."""
        with self._lock:
            if not self._windows:
                return None
            return min(start for start, _ in self._windows) + self.interval - now

    def close(self, now: float | None = None, *, stop: bool = False) -> list[Rollup]:
        """Close the windows whose end has come by ``now`` (None: every open window, early), as rollup events.
        ``stop``: later folds are refused (a shutdown)."""
        with self._lock:
            self._stopped = self._stopped or stop
            closing = [w for w in self._windows if now is None or w[0] + self.interval <= now]
            taken = [(window, self._windows.pop(window)) for window in closing]
            for start, part in closing:
                if now is None:
                    self._parts[start] = part + 1  # the rest of this window, if any, is its next part
                else:
                    self._open_from = max(self._open_from, start + self.interval)
            if now is not None:
                for start in [s for s in self._parts if s < self._open_from]:
                    del self._parts[start]
            self.pending -= sum(s.calls for _, sums_by_key in taken for s in sums_by_key.values())
        return [self._event(window, key, sums) for window, sums_by_key in taken for key, sums in sums_by_key.items()]

    def _event(self, window: _Window, key: _Key, sums: _Sums) -> Rollup:
        start, part = window
        customer_id, event_name, endpoint, method, status = key
        digest = hashlib.sha256(
            "\x1f".join((self._token, repr(start), str(part), *key)).encode("utf-8", "surrogatepass")
        ).hexdigest()
        metadata: dict[str, Any] = {
            "endpoint": endpoint,
            "method": method,
            "status_class": status,
            "calls": sums.calls,
            "errors": sums.errors,
            "response_time_ms_sum": round(sums.rt_sum, 3),
            "response_time_ms_max": round(sums.rt_max, 3),
            "request_bytes_sum": sums.req_sum,
            "request_bytes_max": sums.req_max,
            "response_bytes_sum": sums.resp_sum,
            "response_bytes_max": sums.resp_max,
            "window_seconds": self.interval,
        }
        if sums.cost is not None:
            metadata["cost"] = sums.cost
        return Rollup(customer_id, event_name, metadata, start, "rlp_" + digest[:40])
