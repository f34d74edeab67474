"""Helpers for your own tests: capture the events your app would send, without any network.

>>> from dodo_ingest.testing import capture_events
>>> with capture_events() as captured:
...     client.get("/api/v1/items/1")          # Django / Flask test client, or any code path
>>> captured[0].customer_id, captured[0].metadata["endpoint"]

While a capture is active, every batcher in the process (whatever framework created it) validates each
event exactly as it would before sending it and hands it to the capture instead of the network, in the
calling thread, so the events are there as soon as the request returns. ``track_api_call`` is captured too.
To switch metering off in tests instead, set ``enabled=False`` (``DODO_INGEST_ENABLED = False``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dodo_ingest.batcher import _capture_sinks
from dodo_ingest.events import Event


class CapturedEvents(list[Event]):
    """The captured events, in order; ``invalid`` holds the messages of events that were dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.invalid: list[str] = []
        self._lock = threading.Lock()

    def _sink(self, event: Event | None, problem: str | None) -> None:
        with self._lock:
            if event is not None:
                self.append(event)
            elif problem is not None:
                self.invalid.append(problem)

    def for_customer(self, customer_id: str) -> list[Event]:
        """The captured events of one customer."""
        return [e for e in self if e.customer_id == customer_id]

    def as_dicts(self) -> list[dict[str, Any]]:
        """The captured events as the JSON objects that would have been sent."""
        return [e.to_dict() for e in self]


@contextmanager
def capture_events() -> Iterator[CapturedEvents]:
    """Capture every event built in this process while the ``with`` block runs."""
    captured = CapturedEvents()
    _capture_sinks.append(captured._sink)
    try:
        yield captured
    finally:
        _capture_sinks.remove(captured._sink)
