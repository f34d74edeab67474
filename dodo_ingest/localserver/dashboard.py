"""The local server's dashboard: what a billing or product person wants to see, without reading JSON.

``GET /`` serves a static page (``static/``, shipped in the package: no CDN, no build step) whose small
script polls ``GET /_local/dashboard`` about once a second and redraws: usage per customer and per
endpoint, calls over time, error rates and latency percentiles per endpoint (the blueprint's
"performance monitoring alongside billing"), each meter's value per customer, and the latest events
with filters.

:class:`UsageIndex` follows the event store by ingestion order, so each refresh reads only the events
that arrived since the last one; it keeps the latest ``capacity`` events in memory and says so when
older ones fell out (``GET /_local/usage`` always reads the whole store). It is built on the first
dashboard request, so a server nobody looks at pays nothing. :func:`build_dashboard` turns events into
the JSON the page draws; it is a pure function.

Reading the blueprint's metadata: ``status_code`` >= 400 is an error (4xx client, 5xx server),
``response_time_ms`` is the latency, ``method`` + ``endpoint`` name the endpoint. Events without them
still count as usage of their customer and meters.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

from .meters import usage_by_customer
from .rules import format_timestamp
from .store import EventStore

__all__ = ["RANGES", "STATIC_TYPES", "UsageIndex", "build_dashboard", "static_file"]

#: The time ranges the dashboard offers, in seconds (None = every event held).
RANGES: dict[str, int | None] = {"all": None, "5m": 300, "15m": 900, "1h": 3600, "24h": 86400}
#: Content types of the dashboard's static files, by suffix.
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
_BUCKET_WIDTHS_MS = tuple(
    int(seconds * 1000)
    for seconds in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400)
)
_MAX_BUCKETS = 60
_US = 1_000_000
_US_PER_MS = 1000


def static_file(name: str) -> tuple[bytes, str] | None:
    """A file shipped in ``localserver/static`` and its content type, or None (no such file, no path tricks)."""
    suffix = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in STATIC_TYPES:
        return None
    item = resources.files(__package__).joinpath("static").joinpath(name)
    if not item.is_file():
        return None
    return item.read_bytes(), STATIC_TYPES[suffix]


class UsageIndex:
    """The latest ``capacity`` events of an :class:`EventStore`, kept up to date incrementally."""

    def __init__(self, capacity: int = 200_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._events: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._last_seq = 0
        self._generation = -1
        self._seen = 0

    def refresh(self, store: EventStore) -> list[dict[str, Any]]:
        """Read the events stored since the last refresh; return every event held, in ingestion order."""
        with self._lock:
            if store.generation != self._generation:
                self._events.clear()
                self._last_seq, self._seen = 0, 0
                self._generation = store.generation
            for event in store.scan(after_seq=self._last_seq, order="ingestion", chunk=5000):
                self._events.append(event)
                self._last_seq = event["seq"]
                self._seen += 1
            return list(self._events)

    @property
    def position(self) -> tuple[int, int]:
        """(store generation, last ``seq`` read): equal positions mean the same events are held."""
        return self._generation, self._last_seq

    @property
    def truncated(self) -> bool:
        """Whether older events fell out of the index (the dashboard then shows the latest ``capacity``)."""
        return self._seen > len(self._events)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _status(metadata: Mapping[str, Any]) -> int | None:
    value = _number(metadata.get("status_code"))
    return None if value is None else int(value)


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile (``fraction`` in 0..1) of already sorted ``values``; None when empty."""
    if not values:
        return None
    return values[max(1, math.ceil(fraction * len(values))) - 1]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class _Group:
    """Counts of one customer or one endpoint."""

    __slots__ = ("client_errors", "customers", "events", "latencies", "server_errors")

    def __init__(self) -> None:
        self.events = 0
        self.client_errors = 0
        self.server_errors = 0
        self.latencies: list[float] = []
        self.customers: set[str] = set()

    def add(self, customer: str, status: int | None, latency: float | None) -> None:
        self.events += 1
        if status is not None and 400 <= status < 500:
            self.client_errors += 1
        elif status is not None and status >= 500:
            self.server_errors += 1
        if latency is not None:
            self.latencies.append(latency)
        self.customers.add(customer)

    def summary(self) -> dict[str, Any]:
        errors = self.client_errors + self.server_errors
        ordered = sorted(self.latencies)
        return {
            "events": self.events,
            "errors": errors,
            "client_errors": self.client_errors,
            "server_errors": self.server_errors,
            "error_rate": errors / self.events if self.events else None,
            "p50_ms": _rounded(percentile(ordered, 0.50)),
            "p95_ms": _rounded(percentile(ordered, 0.95)),
            "p99_ms": _rounded(percentile(ordered, 0.99)),
            "customers": len(self.customers),
        }


def _status_matches(status: int | None, wanted: str) -> bool:
    if wanted == "error":
        return status is not None and status >= 400
    if len(wanted) == 3 and wanted.endswith("xx") and wanted[0].isdigit():
        return status is not None and status // 100 == int(wanted[0])
    return str(status) == wanted


def _series(events: Sequence[Mapping[str, Any]], start_us: int | None, end_us: int) -> dict[str, Any]:
    """Calls and errors per time bucket: buckets of a round width (0.1 s to a day), at most ``_MAX_BUCKETS``."""
    if not events:
        return {"bucket_seconds": 1.0, "buckets": []}
    first = start_us if start_us is not None else min(e["ts_us"] for e in events)
    last = max(e["ts_us"] for e in events)
    if start_us is not None:
        last = max(last, end_us)
    span_ms = max(1, math.ceil((last - first) / _US_PER_MS))
    width = next((w for w in _BUCKET_WIDTHS_MS if span_ms / w <= _MAX_BUCKETS), _BUCKET_WIDTHS_MS[-1])
    origin = (first // _US_PER_MS) // width * width
    count = int((last // _US_PER_MS) // width * width - origin) // width + 1
    calls, errors = [0] * count, [0] * count
    for event in events:
        index = int((event["ts_us"] // _US_PER_MS - origin) // width)
        if 0 <= index < count:
            calls[index] += 1
            status = _status(event["metadata"])
            if status is not None and status >= 400:
                errors[index] += 1
    buckets = [
        {
            "start": format_timestamp((origin + i * width) * _US_PER_MS),
            "t": origin + i * width,
            "calls": calls[i],
            "errors": errors[i],
        }
        for i in range(count)
    ]
    return {"bucket_seconds": width / 1000, "buckets": buckets}


def build_dashboard(
    events: Sequence[Mapping[str, Any]],
    meters: Iterable[Mapping[str, Any]],
    *,
    now_us: int,
    range_name: str = "all",
    filters: Mapping[str, str] | None = None,
    latest_limit: int = 50,
) -> dict[str, Any]:
    """The dashboard's JSON for ``events`` (store dicts with ``seq`` and ``ts_us``) and active ``meters``.

    ``range_name`` is a key of :data:`RANGES`; ``filters`` (``customer_id``, ``event_name``, ``endpoint``,
    ``status`` = ``"2xx"``/``"4xx"``/``"error"``/``"404"``) narrow the latest-events list only.
    """
    window = RANGES.get(range_name)
    start_us = None if window is None else now_us - window * _US
    in_range = [e for e in events if start_us is None or e["ts_us"] >= start_us]

    total = _Group()
    customers: dict[str, _Group] = {}
    endpoints: dict[tuple[str, str], _Group] = {}
    event_names: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    for event in in_range:
        metadata = event["metadata"] or {}
        customer = event["customer_id"]
        status = _status(metadata)
        latency = _number(metadata.get("response_time_ms"))
        total.add(customer, status, latency)
        customers.setdefault(customer, _Group()).add(customer, status, latency)
        event_names[event["event_name"]] += 1
        if status is not None:
            statuses[status] += 1
        endpoint = metadata.get("endpoint")
        if isinstance(endpoint, str):
            method = metadata.get("method")
            key = (method if isinstance(method, str) else "", endpoint)
            endpoints.setdefault(key, _Group()).add(customer, status, latency)

    customer_rows = [
        {"customer_id": customer, **group.summary(), "share": group.events / total.events}
        for customer, group in sorted(customers.items(), key=lambda kv: (-kv[1].events, kv[0]))
    ]
    endpoint_rows = [
        {"method": method, "endpoint": endpoint, **group.summary()}
        for (method, endpoint), group in sorted(endpoints.items(), key=lambda kv: (-kv[1].events, kv[0]))
    ]
    meter_rows = []
    for meter in meters:
        usage = usage_by_customer(meter, in_range).to_dict()
        public = {key: value for key, value in meter.items() if key != "archived"}
        meter_rows.append({**public, "total": usage["total"], "customers": usage["customers"]})

    chosen = dict(filters or {})
    latest: list[dict[str, Any]] = []
    for event in reversed(in_range):
        if len(latest) >= latest_limit:
            break
        metadata = event["metadata"] or {}
        if chosen.get("customer_id") and event["customer_id"] != chosen["customer_id"]:
            continue
        if chosen.get("event_name") and event["event_name"] != chosen["event_name"]:
            continue
        if chosen.get("endpoint") and metadata.get("endpoint") != chosen["endpoint"]:
            continue
        if chosen.get("status") and not _status_matches(_status(metadata), chosen["status"]):
            continue
        latest.append(
            {
                "event_id": event["event_id"],
                "timestamp": event["timestamp"],
                "customer_id": event["customer_id"],
                "event_name": event["event_name"],
                "method": metadata.get("method"),
                "endpoint": metadata.get("endpoint"),
                "status_code": metadata.get("status_code"),
                "response_time_ms": metadata.get("response_time_ms"),
                "metadata": metadata,
            }
        )

    summary = total.summary()
    return {
        "generated_at": format_timestamp(now_us),
        "range": {
            "name": range_name if range_name in RANGES else "all",
            "start": None if start_us is None else format_timestamp(start_us),
            "end": format_timestamp(now_us),
        },
        "totals": {**summary, "customers": len(customers), "endpoints": len(endpoints)},
        "customers": customer_rows,
        "endpoints": endpoint_rows,
        "series": _series(in_range, start_us, now_us),
        "meters": meter_rows,
        "latest": latest,
        "filters": chosen,
        "options": {
            "customers": sorted(customers),
            "event_names": sorted(event_names),
            "endpoints": sorted({endpoint for _, endpoint in endpoints}),
            "statuses": sorted(statuses),
        },
    }
