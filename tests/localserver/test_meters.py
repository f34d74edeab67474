"""Meters as pure functions: Dodo's CreateMeterRequest rules, filter matching, aggregation per customer."""

from __future__ import annotations

from typing import Any

import pytest

from dodo_ingest.localserver.meters import (
    event_matches,
    filter_matches,
    parse_meter_create,
    parse_meter_update,
    usage_by_customer,
)
from dodo_ingest.localserver.rules import RuleViolation


def body(**fields: Any) -> dict[str, Any]:
    meter: dict[str, Any] = {
        "name": "API calls",
        "event_name": "api_call",
        "measurement_unit": "calls",
        "aggregation": {"type": "count"},
    }
    meter.update(fields)
    return meter


def cond(key: str, operator: str, value: Any) -> dict[str, Any]:
    return {"key": key, "operator": operator, "value": value}


def both(*clauses: Any) -> dict[str, Any]:
    return {"conjunction": "and", "clauses": list(clauses)}


def either(*clauses: Any) -> dict[str, Any]:
    return {"conjunction": "or", "clauses": list(clauses)}


def rejected(candidate: Any) -> RuleViolation:
    with pytest.raises(RuleViolation) as info:
        parse_meter_create(candidate)
    assert (info.value.status, info.value.code) == (422, "INVALID_REQUEST_BODY")
    return info.value


# --- validation -------------------------------------------------------------------------------------------


def test_a_minimal_meter_is_normalized() -> None:
    assert parse_meter_create(body(extra="ignored")) == {
        "name": "API calls",
        "event_name": "api_call",
        "measurement_unit": "calls",
        "description": None,
        "aggregation": {"type": "count", "key": None},
        "filter": None,
    }


@pytest.mark.parametrize(
    ("candidate", "fragment"),
    [
        ([], "body: must be a JSON object"),
        ({k: v for k, v in body().items() if k != "name"}, "name: missing required field"),
        (body(event_name=3), "event_name: must be a string, got number"),
        ({k: v for k, v in body().items() if k != "aggregation"}, "aggregation: missing required field"),
        (body(aggregation="count"), "aggregation: must be an object"),
        (body(aggregation={"type": "avg"}), "aggregation.type: must be one of count, sum, max, last"),
        (body(aggregation={"type": "sum"}), "aggregation.key: required for a 'sum' aggregation"),
        (body(aggregation={"type": "max", "key": ""}), "aggregation.key: required"),
        (body(aggregation={"type": "last", "key": 5}), "aggregation.key: must be a string or null"),
        (body(description=["x"]), "description: must be a string or null"),
        (body(filter=[]), "filter: must be an object"),
        (body(filter={"clauses": [cond("a", "equals", 1)]}), "filter.conjunction: missing"),
        (body(filter={"conjunction": "xor", "clauses": [cond("a", "equals", 1)]}), "filter.conjunction"),
        (body(filter=both()), "filter.clauses: must be an array of 1 to 10"),
        (body(filter=both(*[cond("a", "equals", i) for i in range(11)])), "1 to 10"),
        (body(filter=both(cond("a", "like", 1))), "filter.clauses[0].operator: must be one of"),
        (body(filter=both({"key": "a", "operator": "equals"})), "filter.clauses[0].value: missing"),
        (body(filter=both(cond("", "equals", 1))), "filter.clauses[0].key: must be a string of 1 to 100"),
        (body(filter=both(cond("k" * 101, "equals", 1))), "1 to 100"),
        (body(filter=both(cond("a", "equals", None))), "value: must be a string, number or boolean, got null"),
        (body(filter=both(cond("a", "equals", [1]))), "got array"),
        (body(filter=both(cond("a", "equals", 1), both(cond("b", "equals", 2)))), "not both"),
        (body(filter=both("a")), "filter.clauses[0]: must be an object, got string"),
    ],
)
def test_meters_the_schema_rejects_are_422(candidate: Any, fragment: str) -> None:
    assert fragment in rejected(candidate).message


def test_filters_nest_three_levels_below_the_top_one() -> None:
    deepest = both(both(both(both(cond("a", "equals", 1)))))  # top + levels 1-3, as the schema spells out
    assert parse_meter_create(body(filter=deepest))["filter"] == deepest
    too_deep = both(deepest)
    assert "nest at most 3 levels" in rejected(body(filter=too_deep)).message


def test_every_aggregation_and_operator_is_accepted() -> None:
    for kind in ("sum", "max", "last"):
        assert parse_meter_create(body(aggregation={"type": kind, "key": "bytes"}))["aggregation"]["key"] == "bytes"
    operators = [
        "equals",
        "not_equals",
        "greater_than",
        "greater_than_or_equals",
        "less_than",
        "less_than_or_equals",
        "contains",
        "does_not_contain",
    ]
    clauses = [cond("k", op, value) for op, value in zip(operators, [1, "x", 2.5, True, -1, 0, "a", "b"], strict=True)]
    parsed = parse_meter_create(body(filter=either(both(*clauses[:5]), both(*clauses[5:]))))
    assert parsed["filter"]["clauses"][1]["clauses"][2] == cond("k", "does_not_contain", "b")


def test_update_changes_only_the_given_fields() -> None:
    assert parse_meter_update({}) == {}
    assert parse_meter_update({"name": "Calls", "measurement_unit": None}) == {"name": "Calls"}
    assert parse_meter_update({"description": None}) == {"description": None}
    with pytest.raises(RuleViolation):
        parse_meter_update({"name": 1})
    with pytest.raises(RuleViolation):
        parse_meter_update([])


# --- matching ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "metadata", "expected"),
    [
        (cond("status_code", "equals", 200), {"status_code": 200}, True),
        (cond("status_code", "equals", 200), {"status_code": 200.0}, True),
        (cond("status_code", "equals", 200), {"status_code": "200"}, False),  # JSON types are kept
        (cond("flag", "equals", True), {"flag": True}, True),
        (cond("flag", "equals", 1), {"flag": True}, False),  # a boolean is not a number
        (cond("plan", "equals", "pro"), {"plan": "Pro"}, False),  # case-sensitive
        (cond("plan", "not_equals", "pro"), {"plan": "free"}, True),
        (cond("plan", "not_equals", "pro"), {"plan": 3}, True),
        (cond("plan", "not_equals", "pro"), {}, False),  # an event without the key never matches
        (cond("ms", "greater_than", 100), {"ms": 100.5}, True),
        (cond("ms", "greater_than", 100), {"ms": 100}, False),
        (cond("ms", "greater_than_or_equals", 100), {"ms": 100}, True),
        (cond("ms", "less_than", 100), {"ms": 99}, True),
        (cond("ms", "less_than_or_equals", 100), {"ms": 101}, False),
        (cond("ms", "less_than", 100), {"ms": "5"}, False),  # ordering compares numbers only
        (cond("ms", "less_than", 100), {"ms": False}, False),
        (cond("endpoint", "contains", "/search"), {"endpoint": "/api/v1/search"}, True),
        (cond("endpoint", "contains", "/search"), {"endpoint": 5}, False),
        (cond("endpoint", "does_not_contain", "/admin"), {"endpoint": "/api/v1/search"}, True),
        (cond("endpoint", "does_not_contain", "/api"), {"endpoint": "/api/v1/search"}, False),
        (cond("endpoint", "does_not_contain", "/admin"), {}, False),
    ],
)
def test_conditions(condition: dict[str, Any], metadata: dict[str, Any], expected: bool) -> None:
    assert filter_matches(both(condition), metadata) is expected


def test_conjunctions_and_nesting() -> None:
    premium = either(cond("plan", "equals", "premium"), cond("plan", "equals", "enterprise"))
    active_premium = both(premium, both(cond("active", "equals", True)))
    assert filter_matches(active_premium, {"plan": "enterprise", "active": True})
    assert not filter_matches(active_premium, {"plan": "enterprise", "active": False})
    assert not filter_matches(active_premium, {"plan": "free", "active": True})
    assert filter_matches(None, None) and filter_matches(None, {"x": 1})
    assert not filter_matches(premium, None)


def test_event_matches_needs_the_exact_event_name() -> None:
    meter = {"event_name": "api_call", "filter": None}
    assert event_matches(meter, {"event_name": "api_call", "metadata": {}})
    assert not event_matches(meter, {"event_name": "API_CALL", "metadata": {}})


# --- aggregation ------------------------------------------------------------------------------------------


def events(*rows: tuple[str, dict[str, Any] | None, int]) -> list[dict[str, Any]]:
    return [
        {"customer_id": customer, "event_name": "api_call", "metadata": metadata, "ts_us": ts, "seq": seq}
        for seq, (customer, metadata, ts) in enumerate(rows, start=1)
    ]


SAMPLE = events(
    ("cus_a", {"bytes": 10, "status_code": 200}, 3),
    ("cus_a", {"bytes": 2.5, "status_code": 500}, 1),
    ("cus_b", {"bytes": 7, "status_code": 200}, 2),
    ("cus_a", {"status_code": 200}, 4),  # no value: counted as an event, adds nothing
    ("cus_b", {"bytes": "12", "status_code": 200}, 5),  # a string is not a number
    ("cus_b", None, 6),
)


def meter(kind: str, key: str | None = None, meter_filter: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "mtr_x", "event_name": "api_call", "aggregation": {"type": kind, "key": key}, "filter": meter_filter}


def values(usage: dict[str, Any]) -> dict[str, Any]:
    return {c["customer_id"]: (c["value"], c["events"]) for c in usage["customers"]}


def test_count_sum_max_per_customer() -> None:
    count = usage_by_customer(meter("count"), SAMPLE).to_dict()
    assert values(count) == {"cus_a": (3, 3), "cus_b": (3, 3)} and count["total"] == 6
    total = usage_by_customer(meter("sum", "bytes"), SAMPLE).to_dict()
    assert values(total) == {"cus_a": (12.5, 3), "cus_b": (7, 3)} and total["total"] == 19.5
    largest = usage_by_customer(meter("max", "bytes"), SAMPLE).to_dict()
    assert values(largest) == {"cus_a": (10, 3), "cus_b": (7, 3)} and largest["total"] == 10


def test_last_is_the_latest_value_by_timestamp_then_ingestion_order() -> None:
    latest = usage_by_customer(meter("last", "bytes"), SAMPLE).to_dict()
    assert values(latest) == {"cus_a": (10, 3), "cus_b": (7, 3)}  # cus_a's ts=3 beats ts=1; "12" is a string
    ties = events(("cus_a", {"v": 1}, 5), ("cus_a", {"v": 2}, 5), ("cus_a", {"v": 0}, 4))
    assert values(usage_by_customer(meter("last", "v"), ties).to_dict()) == {"cus_a": (2, 3)}
    assert usage_by_customer(meter("last", "v"), ties).to_dict()["total"] is None


def test_filters_and_event_names_select_events() -> None:
    ok_only = meter("sum", "bytes", both(cond("status_code", "less_than", 400)))
    assert values(usage_by_customer(ok_only, SAMPLE).to_dict()) == {"cus_a": (10, 2), "cus_b": (7, 2)}
    other = {**meter("count"), "event_name": "upload"}
    assert usage_by_customer(other, SAMPLE).to_dict() == {"meter_id": "mtr_x", "total": 0, "customers": []}


def test_a_customer_without_values_has_zero_sum_and_no_max() -> None:
    bare = events(("cus_z", {"x": 1}, 1))
    assert values(usage_by_customer(meter("sum", "bytes"), bare).to_dict()) == {"cus_z": (0, 1)}
    assert values(usage_by_customer(meter("max", "bytes"), bare).to_dict()) == {"cus_z": (None, 1)}
    assert usage_by_customer(meter("max", "bytes"), bare).to_dict()["total"] is None


def test_customers_are_listed_largest_value_first() -> None:
    rows = events(("cus_small", {}, 1), ("cus_big", {}, 2), ("cus_big", {}, 3), ("cus_mid", {}, 4), ("cus_mid", {}, 5))
    ordered = [c["customer_id"] for c in usage_by_customer(meter("count"), rows).to_dict()["customers"]]
    assert ordered == ["cus_big", "cus_mid", "cus_small"]
