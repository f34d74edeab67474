"""Dodo's meters, as pure functions: what a meter is, which events it counts, and its value per customer.

A meter (``POST /meters``, schema ``CreateMeterRequest`` in Dodo's OpenAPI spec) names an ``event_name``,
an ``aggregation`` (``count``, ``sum``, ``max`` or ``last``, the last three over a metadata ``key``) and an
optional ``filter`` of clauses on metadata. This module validates meter bodies exactly as the published
schema does, decides whether an event matches a meter, and aggregates events into a value per customer:
what Dodo would bill for the events given.

Semantics where Dodo's documents leave room (the local server's choices, stated once):

* **Filters.** A filter is ``{"conjunction": "and" | "or", "clauses": [...]}`` with 1 to 10 clauses, which
  are either all conditions ``{"key", "operator", "value"}`` or all nested filters (the schema's
  ``oneOf``: mixing both in one list is rejected; wrap a lone condition in its own filter), at most
  three levels of filters below the top one, as the schema spells out. A condition's key (1-100
  characters) names a metadata key; an event that lacks the key does not match the condition, whatever
  the operator.
* **Comparisons** keep JSON types: ``equals``/``not_equals`` compare numbers numerically, strings and
  booleans exactly, and a value of another type is simply not equal (``200`` does not equal ``"200"``).
  The four ordering operators compare numbers only (a non-number never matches). ``contains`` and
  ``does_not_contain`` test substrings of string values only (a non-string never matches).
* **Aggregation.** ``count`` counts matching events. ``sum``, ``max`` and ``last`` read the numeric
  value (a JSON number, not a boolean or a string) of ``key``; a matching event without one adds nothing.
  ``last`` is the value of the latest such event by timestamp, then ingestion order. A customer whose
  matching events carry no value has ``value`` 0 for ``sum`` and None for ``max`` and ``last``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from .rules import INVALID_REQUEST_BODY, RuleViolation, json_type

__all__ = [
    "AGGREGATION_TYPES",
    "FILTER_OPERATORS",
    "CustomerUsage",
    "MeterUsage",
    "event_matches",
    "filter_matches",
    "parse_meter_create",
    "parse_meter_update",
    "usage_by_customer",
]

AGGREGATION_TYPES = ("count", "sum", "max", "last")
FILTER_OPERATORS = (
    "equals",
    "not_equals",
    "greater_than",
    "greater_than_or_equals",
    "less_than",
    "less_than_or_equals",
    "contains",
    "does_not_contain",
)
_CONJUNCTIONS = ("and", "or")
_MAX_NESTING = 3  # filters below the top-level one (the schema's "Level 1" to "Level 3")
_MAX_CLAUSES = 10
_MAX_KEY_LENGTH = 100


def _bad(message: str) -> RuleViolation:
    return RuleViolation(422, INVALID_REQUEST_BODY, message)


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _required_string(body: Mapping[str, Any], name: str) -> str:
    if name not in body:
        raise _bad(f"{name}: missing required field")
    value = body[name]
    if not isinstance(value, str):
        raise _bad(f"{name}: must be a string, got {json_type(value)}")
    return value


def _optional_string(body: Mapping[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise _bad(f"{name}: must be a string or null, got {json_type(value)}")
    return value


def _aggregation(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"aggregation: must be an object, got {json_type(value)}")
    kind = value.get("type")
    if kind not in AGGREGATION_TYPES:
        raise _bad(f"aggregation.type: must be one of {', '.join(AGGREGATION_TYPES)}, got {str(kind)[:40]!r}")
    key = value.get("key")
    if key is not None and not isinstance(key, str):
        raise _bad(f"aggregation.key: must be a string or null, got {json_type(key)}")
    if kind != "count" and not key:
        raise _bad(f"aggregation.key: required for a {kind!r} aggregation (the metadata key to read)")
    return {"type": kind, "key": key}


def _condition(value: Mapping[str, Any], where: str) -> dict[str, Any]:
    for name in ("key", "operator", "value"):
        if name not in value:
            raise _bad(f"{where}.{name}: missing required field")
    key, operator, operand = value["key"], value["operator"], value["value"]
    if not isinstance(key, str) or not 1 <= len(key) <= _MAX_KEY_LENGTH:
        raise _bad(f"{where}.key: must be a string of 1 to {_MAX_KEY_LENGTH} characters")
    if operator not in FILTER_OPERATORS:
        raise _bad(f"{where}.operator: must be one of {', '.join(FILTER_OPERATORS)}, got {str(operator)[:40]!r}")
    if not (isinstance(operand, (str, bool)) or _is_number(operand)):
        raise _bad(f"{where}.value: must be a string, number or boolean, got {json_type(operand)}")
    return {"key": key, "operator": operator, "value": operand}


def _filter(value: Any, where: str, depth: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{where}: must be an object, got {json_type(value)}")
    for name in ("conjunction", "clauses"):
        if name not in value:
            raise _bad(f"{where}.{name}: missing required field")
    conjunction, clauses = value["conjunction"], value["clauses"]
    if conjunction not in _CONJUNCTIONS:
        raise _bad(f"{where}.conjunction: must be 'and' or 'or', got {str(conjunction)[:40]!r}")
    if not isinstance(clauses, list) or not 1 <= len(clauses) <= _MAX_CLAUSES:
        raise _bad(f"{where}.clauses: must be an array of 1 to {_MAX_CLAUSES} clauses")
    nested = [isinstance(c, dict) and "conjunction" in c and "clauses" in c for c in clauses]
    if any(nested) and not all(nested):
        raise _bad(
            f"{where}.clauses: must be all conditions or all nested filters, not both "
            "(wrap a condition in its own {'conjunction': 'and', 'clauses': [condition]})"
        )
    out: list[dict[str, Any]] = []
    for index, clause in enumerate(clauses):
        here = f"{where}.clauses[{index}]"
        if nested[index]:
            if depth >= _MAX_NESTING:
                raise _bad(f"{here}: filters nest at most {_MAX_NESTING} levels below the top-level filter")
            out.append(_filter(clause, here, depth + 1))
        elif isinstance(clause, dict):
            out.append(_condition(clause, here))
        else:
            raise _bad(f"{here}: must be an object, got {json_type(clause)}")
    return {"conjunction": conjunction, "clauses": out}


def parse_meter_create(body: Any) -> dict[str, Any]:
    """Validate a ``POST /meters`` body; return its normalized fields or raise RuleViolation (422).

    The result has ``name``, ``event_name``, ``measurement_unit``, ``description`` (or None),
    ``aggregation`` (``{"type", "key"}``) and ``filter`` (or None). Unknown fields are ignored.
    """
    if not isinstance(body, dict):
        raise _bad(f"body: must be a JSON object, got {json_type(body)}")
    fields = {name: _required_string(body, name) for name in ("name", "event_name", "measurement_unit")}
    if "aggregation" not in body:
        raise _bad("aggregation: missing required field")
    raw_filter = body.get("filter")
    return {
        **fields,
        "description": _optional_string(body, "description"),
        "aggregation": _aggregation(body["aggregation"]),
        "filter": None if raw_filter is None else _filter(raw_filter, "filter", 0),
    }


def parse_meter_update(body: Any) -> dict[str, Any]:
    """Validate a ``PATCH /meters/{id}`` body (the official SDK's ``meters.update``): the fields to change.

    ``name`` and ``measurement_unit`` may be strings (null or absent: unchanged); ``description`` may be a
    string or null (null removes it; absent: unchanged). Raises RuleViolation (422).
    """
    if not isinstance(body, dict):
        raise _bad(f"body: must be a JSON object, got {json_type(body)}")
    changes: dict[str, Any] = {}
    for name in ("name", "measurement_unit"):
        value = _optional_string(body, name)
        if value is not None:
            changes[name] = value
    if "description" in body:
        changes["description"] = _optional_string(body, "description")
    return changes


# ---- matching -------------------------------------------------------------------------------------------


def _equal(actual: Any, expected: Any) -> bool:
    if isinstance(actual, bool) or isinstance(expected, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    if _is_number(actual) and _is_number(expected):
        return bool(actual == expected)
    return isinstance(actual, str) and isinstance(expected, str) and actual == expected


def _condition_matches(condition: Mapping[str, Any], metadata: Mapping[str, Any]) -> bool:
    key = condition["key"]
    if key not in metadata:
        return False
    actual, expected, operator = metadata[key], condition["value"], condition["operator"]
    if operator == "equals":
        return _equal(actual, expected)
    if operator == "not_equals":
        return not _equal(actual, expected)
    if operator in ("contains", "does_not_contain"):
        if not isinstance(actual, str) or not isinstance(expected, str):
            return False
        return bool((expected in actual) == (operator == "contains"))
    if not (_is_number(actual) and _is_number(expected)):
        return False
    if operator == "greater_than":
        return bool(actual > expected)
    if operator == "greater_than_or_equals":
        return bool(actual >= expected)
    if operator == "less_than":
        return bool(actual < expected)
    return bool(actual <= expected)  # less_than_or_equals


def filter_matches(meter_filter: Mapping[str, Any] | None, metadata: Mapping[str, Any] | None) -> bool:
    """Whether an event's metadata satisfies a (validated) meter filter; None matches everything."""
    if meter_filter is None:
        return True
    data = metadata or {}
    results = (
        filter_matches(clause, data) if "clauses" in clause else _condition_matches(clause, data)
        for clause in meter_filter["clauses"]
    )
    return all(results) if meter_filter["conjunction"] == "and" else any(results)


def event_matches(meter: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """Whether a stored event (``event_name``, ``metadata``) counts towards a meter (its name and filter)."""
    if event["event_name"] != meter["event_name"]:
        return False
    return filter_matches(meter.get("filter"), event["metadata"])


# ---- aggregation ----------------------------------------------------------------------------------------


@dataclass
class CustomerUsage:
    """One customer's usage of one meter: ``value`` as Dodo would aggregate it, from ``events`` events."""

    customer_id: str
    events: int = 0
    value: float | int | None = None
    _last_at: tuple[int, int] = field(default=(-1, -1), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"customer_id", "value", "events"}``."""
        return {"customer_id": self.customer_id, "value": self.value, "events": self.events}


@dataclass
class MeterUsage:
    """A meter's usage per customer, and its total over every customer (the same aggregation)."""

    meter_id: str
    aggregation: str
    customers: dict[str, CustomerUsage] = field(default_factory=dict)

    @property
    def total(self) -> float | int | None:
        """count/sum: the sum over customers; max: the largest; last: None (a per-customer notion)."""
        values = [u.value for u in self.customers.values() if u.value is not None]
        if self.aggregation in ("count", "sum"):
            return sum(values)
        if self.aggregation == "max":
            return max(values) if values else None
        return None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: ``{"meter_id", "total", "customers": [...]}`` (largest value first)."""
        ordered = sorted(self.customers.values(), key=lambda u: (-(u.value or 0), u.customer_id))
        return {
            "meter_id": self.meter_id,
            "total": self.total,
            "customers": [u.to_dict() for u in ordered],
        }


def usage_by_customer(meter: Mapping[str, Any], events: Iterable[Mapping[str, Any]]) -> MeterUsage:
    """Aggregate the events (dicts with ``customer_id``, ``event_name``, ``metadata``, ``ts_us``, ``seq``)
    that match ``meter`` into a value per customer. Events may come in any order."""
    kind: str = meter["aggregation"]["type"]
    key: str | None = meter["aggregation"].get("key")
    usage = MeterUsage(str(meter["id"]), kind)
    customers = usage.customers
    for event in events:
        if not event_matches(meter, event):
            continue
        customer = event["customer_id"]
        entry = customers.get(customer)
        if entry is None:
            entry = customers[customer] = CustomerUsage(customer, value=0 if kind in ("count", "sum") else None)
        entry.events += 1
        if kind == "count":
            entry.value = int(entry.value or 0) + 1
            continue
        metadata = event["metadata"] or {}
        raw = metadata.get(key) if key is not None else None
        if not _is_number(raw):
            continue
        number = raw
        if kind == "sum":
            entry.value = (entry.value or 0) + number
        elif kind == "max":
            entry.value = number if entry.value is None else max(entry.value, number)
        else:  # last
            at = (int(event.get("ts_us", 0)), int(event.get("seq", 0)))
            if at >= entry._last_at:
                entry._last_at, entry.value = at, number
    return usage
