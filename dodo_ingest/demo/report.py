"""Turn the events read back from the (local) Dodo server into the tables a billing person reads."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (``fraction`` in 0..1); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> str:
    """A plain-text table; ``align`` has one ``<`` or ``>`` per column (default: first left, rest right)."""
    text_rows = [[str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    align = align or "<" + ">" * (len(headers) - 1)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(cells, align, widths, strict=True)).rstrip()

    out = [line(list(headers)), line(["-" * w for w in widths])]
    out.extend(line(row) for row in text_rows)
    return "\n".join(out)


def _rate(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def usage_by_customer(events: Sequence[Mapping[str, Any]], names: Mapping[str, str]) -> str:
    """Calls, errors and latency per customer."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for event in events:
        groups[event["customer_id"]].append(event["metadata"])
    rows: list[list[Any]] = []
    total_errors = 0
    for customer, items in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        errors = sum(1 for m in items if int(m.get("status_code", 0)) >= 400)
        latency = [float(m.get("response_time_ms", 0.0)) for m in items]
        label = f"{customer} ({names[customer]})" if customer in names else customer
        total_errors += errors
        rows.append(
            [
                label,
                len(items),
                errors,
                _rate(errors, len(items)),
                f"{percentile(latency, 0.5):.1f}",
                f"{percentile(latency, 0.95):.1f}",
            ]
        )
    rows.append(["total", len(events), total_errors, _rate(total_errors, len(events)), "", ""])
    return table(["customer", "calls", "errors", "error rate", "p50 ms", "p95 ms"], rows)


def usage_by_endpoint(events: Sequence[Mapping[str, Any]]) -> str:
    """Calls, 4xx/5xx and latency percentiles per method and endpoint."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for event in events:
        metadata = event["metadata"]
        groups[(str(metadata.get("method", "?")), str(metadata.get("endpoint", "?")))].append(metadata)
    rows = []
    for (method, endpoint), items in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        client = sum(1 for m in items if 400 <= int(m.get("status_code", 0)) < 500)
        server = sum(1 for m in items if int(m.get("status_code", 0)) >= 500)
        latency = [float(m.get("response_time_ms", 0.0)) for m in items]
        rows.append(
            [
                f"{method} {endpoint}",
                len(items),
                client,
                server,
                _rate(client + server, len(items)),
                f"{percentile(latency, 0.5):.1f}",
                f"{percentile(latency, 0.95):.1f}",
                f"{percentile(latency, 0.99):.1f}",
            ]
        )
    return table(["endpoint", "calls", "4xx", "5xx", "error rate", "p50 ms", "p95 ms", "p99 ms"], rows)


def errors_seen(events: Sequence[Mapping[str, Any]]) -> str:
    """Unhandled exceptions by class name (the ``error`` metadata)."""
    counts: dict[str, int] = defaultdict(int)
    for event in events:
        error = event["metadata"].get("error")
        if error:
            counts[str(error)] += 1
    if not counts:
        return "none"
    return ", ".join(f"{name} x{count}" for name, count in sorted(counts.items()))


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def meter_table(usage: Sequence[Mapping[str, Any]], names: Mapping[str, str]) -> str:
    """Each meter's value per customer (``GET /_local/usage`` items): one column per meter."""
    if not usage:
        return "no meters"
    customers: list[str] = []  # in the first meter's order (largest value first), then any others
    for item in usage:
        customers += [c["customer_id"] for c in item["customers"] if c["customer_id"] not in customers]
    headers = ["customer"] + [f"{item['meter']['name']} ({item['meter']['measurement_unit']})" for item in usage]
    values = [{c["customer_id"]: c["value"] for c in item["customers"]} for item in usage]
    rows: list[list[Any]] = []
    for customer in customers:
        label = f"{customer} ({names[customer]})" if customer in names else customer
        rows.append([label] + [_value(by_customer.get(customer)) for by_customer in values])
    rows.append(["total"] + [_value(item["total"]) for item in usage])
    return table(headers, rows)
