"""The fault-injection script of the local Dodo server.

Tests (and ``dodo-ingest serve --fault``) queue :class:`Fault` objects; each request to one of Dodo's
routes takes the first queued fault whose ``route`` matches it (first in, first out) before any other
processing, so a test can script "503 with Retry-After, then a dropped connection, then success".
By default a fault applies to ``POST /events/ingest`` only; ``route="*"`` makes it apply to every Dodo
route (``/events*``, ``/meters*``). Faults never apply to ``/_local/*`` or the dashboard, so the server
can always be put right again.
"""

from __future__ import annotations

import fnmatch
import random
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["INGEST_ROUTE", "Fault", "FaultQueue"]

INGEST_ROUTE = "POST /events/ingest"
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, used for the next ``repeat`` ingest requests.

    - ``status``: answer with this status instead of processing the request
      (body ``{"code", "message"}`` unless ``body`` is given; a 2xx status answers
      ``{"ingested_count": N}`` without storing anything). None = process normally.
    - ``retry_after``: value of a ``Retry-After`` header sent with the answer
      (seconds or an HTTP date).
    - ``delay``: seconds to wait before answering (latency, client timeouts).
    - ``drop_connection``: close the socket without any response.
    - ``body``: JSON object to answer with instead of the default body.
    - ``retry_after_ms``: value of a ``retry-after-ms`` header (milliseconds), which
      Dodo's official SDKs read before ``Retry-After``.
    - ``should_retry``: send ``x-should-retry: true`` / ``false``, the header with which
      a server tells Dodo's official SDKs to retry (or not) whatever the status.
    - ``repeat``: how many matching requests this fault applies to; None = every one
      until the faults are cleared.
    - ``process``: handle the request first (store the events, create the meter...),
      then misbehave as above (an acknowledgement lost after Dodo accepted it).
    - ``route``: which requests the fault applies to: a shell-style pattern matched
      against ``"METHOD /path"`` (``"POST /events/ingest"``, the default; ``"GET /events*"``),
      or against the path alone when it starts with ``/`` (``"/meters*"``); ``"*"`` is every
      Dodo route.
    - ``probability``: the chance (0-1) that a matching request gets the fault; a request
      that is spared does not use up a repeat. With ``repeat=None`` this is a failure rate.

    A fault with only ``delay`` set (or only headers) waits, then processes the request
    normally, adding the headers to its answer.
    """

    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    drop_connection: bool = False
    body: dict[str, Any] | None = None
    repeat: int | None = 1
    process: bool = False
    retry_after_ms: str | None = None
    should_retry: bool | None = None
    route: str = INGEST_ROUTE
    probability: float = 1.0

    def __post_init__(self) -> None:
        if self.status is not None and (
            isinstance(self.status, bool) or not isinstance(self.status, int) or not 200 <= self.status <= 599
        ):
            raise ValueError(f"Fault.status must be an HTTP status 200-599 or None, got {self.status!r}")
        if self.retry_after is not None and not isinstance(self.retry_after, str):
            raise ValueError(f"Fault.retry_after must be a string or None, got {self.retry_after!r}")
        delay_ok = isinstance(self.delay, (int, float)) and not isinstance(self.delay, bool)
        if not delay_ok or not 0 <= self.delay < 3600:
            raise ValueError(f"Fault.delay must be a number of seconds in [0, 3600), got {self.delay!r}")
        if not isinstance(self.drop_connection, bool) or not isinstance(self.process, bool):
            raise ValueError("Fault.drop_connection and Fault.process must be booleans")
        if self.body is not None and not isinstance(self.body, dict):
            raise ValueError(f"Fault.body must be a JSON object or None, got {type(self.body).__name__}")
        if self.repeat is not None and (
            isinstance(self.repeat, bool) or not isinstance(self.repeat, int) or self.repeat < 1
        ):
            raise ValueError(f"Fault.repeat must be an integer >= 1 or None (until cleared), got {self.repeat!r}")
        if self.retry_after_ms is not None and not isinstance(self.retry_after_ms, str):
            raise ValueError(f"Fault.retry_after_ms must be a string or None, got {self.retry_after_ms!r}")
        if self.should_retry is not None and not isinstance(self.should_retry, bool):
            raise ValueError(f"Fault.should_retry must be a boolean or None, got {self.should_retry!r}")
        if not isinstance(self.route, str) or not self.route.strip():
            raise ValueError(f"Fault.route must be a pattern such as 'POST /events/ingest', got {self.route!r}")
        probability_ok = isinstance(self.probability, (int, float)) and not isinstance(self.probability, bool)
        if not probability_ok or not 0 <= self.probability <= 1:
            raise ValueError(f"Fault.probability must be a number in [0, 1], got {self.probability!r}")
        for name in ("retry_after", "retry_after_ms"):
            value = getattr(self, name)
            if value is not None and any(ch in value for ch in "\r\n"):
                raise ValueError(f"Fault.{name} must be a single header line")

    @property
    def misbehaves(self) -> bool:
        """Whether the fault replaces the answer (a status or a dropped connection), not only delays it."""
        return self.status is not None or self.drop_connection

    def headers(self) -> list[tuple[str, str]]:
        """The response headers this fault adds (``Retry-After``, ``retry-after-ms``, ``x-should-retry``)."""
        out: list[tuple[str, str]] = []
        if self.retry_after is not None:
            out.append(("Retry-After", self.retry_after))
        if self.retry_after_ms is not None:
            out.append(("retry-after-ms", self.retry_after_ms))
        if self.should_retry is not None:
            out.append(("x-should-retry", "true" if self.should_retry else "false"))
        return out

    def applies_to(self, method: str, path: str) -> bool:
        """Whether a request ``method path`` (``"GET"``, ``"/events"``) matches :attr:`route`."""
        pattern = self.route.strip()
        if pattern.startswith("/"):
            return fnmatch.fnmatchcase(path, pattern)
        if pattern == "*":
            return True
        head, _, rest = pattern.partition(" ")
        if head.upper() in _METHODS and rest:
            return method == head.upper() and fnmatch.fnmatchcase(path, rest.strip())
        return fnmatch.fnmatchcase(f"{method} {path}", pattern)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        """Build a Fault from a JSON object with the same field names (ValueError if unknown or bad)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a fault must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form accepted by ``POST /_local/faults``."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class FaultQueue:
    """Thread-safe FIFO of faults; :meth:`take` hands out one application of the first matching fault."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._lock = threading.Lock()
        self._emptied = threading.Condition(self._lock)
        self._queue: deque[list[Any]] = deque()  # [fault, applications left (None: until cleared)]
        self._rng = rng or random.Random()

    def add(self, *faults: Fault) -> None:
        """Append faults to the script, in order."""
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"expected Fault, got {type(fault).__name__}")
        with self._lock:
            self._queue.extend([fault, fault.repeat] for fault in faults)

    def take(self, method: str = "POST", path: str = "/events/ingest") -> Fault | None:
        """The fault for this request (consuming one of its repeats), or None.

        The first queued fault whose route matches decides: when its ``probability`` spares the
        request, the request gets no fault at all.
        """
        with self._lock:
            for index, entry in enumerate(self._queue):
                fault: Fault = entry[0]
                if not fault.applies_to(method, path):
                    continue
                if fault.probability < 1 and self._rng.random() >= fault.probability:
                    return None
                if entry[1] is not None:
                    entry[1] -= 1
                    if entry[1] <= 0:
                        del self._queue[index]
                        if not self._queue:
                            self._emptied.notify_all()
                return fault
            return None

    def pending(self) -> int:
        """How many requests the queued faults will still affect (-1 when one applies until cleared)."""
        with self._lock:
            if any(entry[1] is None for entry in self._queue):
                return -1
            return sum(entry[1] for entry in self._queue)

    def snapshot(self) -> list[dict[str, Any]]:
        """The queued faults as JSON objects, each with ``remaining`` (None: until cleared)."""
        with self._lock:
            return [{**entry[0].to_dict(), "remaining": entry[1]} for entry in self._queue]

    def wait_until_empty(self, timeout: float) -> bool:
        """Block until every queued fault has been used up (True) or ``timeout`` passes (False)."""
        with self._emptied:
            return self._emptied.wait_for(lambda: not self._queue, timeout)

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._queue.clear()
            self._emptied.notify_all()
