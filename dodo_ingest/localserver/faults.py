"""The fault-injection script of the local Dodo server.

Tests queue :class:`Fault` objects; each ``POST /events/ingest`` takes the next
one (first in, first out) before any other processing, so a test can script
"503 with Retry-After, then a dropped connection, then success".
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["Fault", "FaultQueue"]


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
    - ``repeat``: how many consecutive ingest requests this fault applies to.
    - ``process``: store the request's events first, then misbehave as above
      (an acknowledgement lost after Dodo accepted the batch). Local extension.

    A fault with only ``delay`` set waits, then processes the request normally.
    """

    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    drop_connection: bool = False
    body: dict[str, Any] | None = None
    repeat: int = 1
    process: bool = False

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
        if isinstance(self.repeat, bool) or not isinstance(self.repeat, int) or self.repeat < 1:
            raise ValueError(f"Fault.repeat must be an integer >= 1, got {self.repeat!r}")

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
    """Thread-safe FIFO of faults; :meth:`take` hands out one application of the head fault."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._emptied = threading.Condition(self._lock)
        self._queue: deque[list[Any]] = deque()  # [fault, applications left]

    def add(self, *faults: Fault) -> None:
        """Append faults to the script, in order."""
        for fault in faults:
            if not isinstance(fault, Fault):
                raise TypeError(f"expected Fault, got {type(fault).__name__}")
        with self._lock:
            self._queue.extend([fault, fault.repeat] for fault in faults)

    def take(self) -> Fault | None:
        """The fault for the next ingest request (consuming one of its repeats), or None."""
        with self._lock:
            if not self._queue:
                return None
            entry = self._queue[0]
            entry[1] -= 1
            if entry[1] <= 0:
                self._queue.popleft()
                if not self._queue:
                    self._emptied.notify_all()
            fault: Fault = entry[0]
            return fault

    def pending(self) -> int:
        """How many ingest requests the queued faults will still affect."""
        with self._lock:
            return sum(entry[1] for entry in self._queue)

    def wait_until_empty(self, timeout: float) -> bool:
        """Block until every queued fault has been taken by a request (True) or ``timeout`` passes (False)."""
        with self._emptied:
            return self._emptied.wait_for(lambda: not self._queue, timeout)

    def clear(self) -> None:
        """Drop every queued fault."""
        with self._lock:
            self._queue.clear()
            self._emptied.notify_all()
