"""The local server against Dodo's published OpenAPI schemas (tests/data/dodo-openapi-events.yml).

A body the schema rejects must get 422 from the server, and a body the schema accepts must not (it gets
200, or 400 when it breaks a documented rule the schema cannot express). Every response body of
``POST /events/ingest``, ``GET /events`` and ``GET /events/{id}`` must validate against the spec.

The spec declares metadata values ``oneOf [string, integer, number, boolean]``; an integer matches both
``integer`` and ``number``, so read literally the schema rejects every integer value. Dodo's own SDKs
send integers, so the loaded schema is rewritten ``oneOf`` -> ``anyOf`` (see dodo-api.md).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from jsonschema import FormatChecker  # type: ignore[import-untyped]
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from dodo_ingest.localserver import LocalDodoServer

SPEC_PATH = Path(__file__).resolve().parents[1] / "data" / "dodo-openapi-events.yml"
SPEC_URI = "urn:dodo:openapi-events"


def any_of(node: Any) -> Any:
    """A copy of a loaded schema with every ``oneOf`` read as ``anyOf``."""
    if isinstance(node, dict):
        return {("anyOf" if key == "oneOf" else key): any_of(value) for key, value in node.items()}
    if isinstance(node, list):
        return [any_of(item) for item in node]
    return node


def load_spec() -> dict[str, Any]:
    with SPEC_PATH.open(encoding="utf-8") as handle:
        spec: dict[str, Any] = dict(yaml.safe_load(handle))
    return spec


def validator(spec: dict[str, Any], name: str, *, formats: bool = False) -> Any:
    """An OAS 3.1 validator for ``#/components/schemas/<name>``, $refs resolved through a registry."""
    registry: Registry[Any] = Registry().with_resource(
        SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT202012)
    )
    checker = FormatChecker() if formats else None
    return OAS31Validator({"$ref": f"{SPEC_URI}#/components/schemas/{name}"}, registry=registry, format_checker=checker)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    rewritten: dict[str, Any] = any_of(load_spec())
    return rewritten


def stamp(offset: float = 0.0) -> str:
    moment = datetime.now(timezone.utc) + timedelta(seconds=offset)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def ev(i: int = 0, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"event_id": f"evt_{i}", "customer_id": "cus_1", "event_name": "api_call"}
    event.update(fields)
    return event


def without(field: str) -> dict[str, Any]:
    event = ev()
    del event[field]
    return event


# (id, body factory, the status the server must answer). 422 <=> the schema rejects the body.
CASES: list[tuple[str, Callable[[], Any], int]] = [
    # accepted by the schema and by Dodo's rules
    ("minimal", lambda: {"events": [ev()]}, 200),
    ("all-fields", lambda: {"events": [ev(timestamp=stamp(-60), metadata={"endpoint": "/x", "ms": 12.5})]}, 200),
    ("integer-metadata", lambda: {"events": [ev(metadata={"status_code": 200, "bytes": 0})]}, 200),
    ("bool-metadata", lambda: {"events": [ev(metadata={"cached": False})]}, 200),
    ("empty-metadata", lambda: {"events": [ev(metadata={})]}, 200),
    ("null-metadata", lambda: {"events": [ev(metadata=None)]}, 200),
    ("null-timestamp", lambda: {"events": [ev(timestamp=None)]}, 200),
    ("offset-timestamp", lambda: {"events": [ev(timestamp=stamp(-60).replace("Z", "+00:00"))]}, 200),
    ("unknown-fields", lambda: {"events": [ev(source="web")], "dry_run": False}, 200),
    ("int64-max", lambda: {"events": [ev(metadata={"n": 2**63 - 1})]}, 200),
    ("beyond-int64", lambda: {"events": [ev(metadata={"n": 2**64})]}, 200),  # `format` is an annotation
    ("1000-events", lambda: {"events": [ev(i) for i in range(1000)]}, 200),
    # accepted by the schema, refused by a documented rule it cannot express
    ("duplicate-ids", lambda: {"events": [ev(1), ev(1)]}, 400),
    ("empty-event-id", lambda: {"events": [ev(event_id="")]}, 400),
    ("empty-customer-id", lambda: {"events": [ev(customer_id="")]}, 400),
    ("51-metadata-keys", lambda: {"events": [ev(metadata={f"k{i}": i for i in range(51)})]}, 400),
    ("101-char-key", lambda: {"events": [ev(metadata={"k" * 101: 1})]}, 400),
    ("501-char-value", lambda: {"events": [ev(metadata={"v": "x" * 501})]}, 400),
    ("old-timestamp", lambda: {"events": [ev(timestamp=stamp(-7200))]}, 400),
    ("future-timestamp", lambda: {"events": [ev(timestamp=stamp(3600))]}, 400),
    ("not-a-date", lambda: {"events": [ev(timestamp="soon")]}, 400),
    # refused by the schema
    ("body-array", lambda: [ev()], 422),
    ("body-string", lambda: "events", 422),
    ("no-events", dict, 422),
    ("events-object", lambda: {"events": {"0": ev()}}, 422),
    ("zero-events", lambda: {"events": []}, 422),
    ("1001-events", lambda: {"events": [ev(i) for i in range(1001)]}, 422),
    ("event-not-object", lambda: {"events": ["evt_1"]}, 422),
    ("missing-event-id", lambda: {"events": [without("event_id")]}, 422),
    ("missing-customer-id", lambda: {"events": [without("customer_id")]}, 422),
    ("missing-event-name", lambda: {"events": [without("event_name")]}, 422),
    ("numeric-event-id", lambda: {"events": [ev(event_id=17)]}, 422),
    ("null-customer-id", lambda: {"events": [ev(customer_id=None)]}, 422),
    ("list-event-name", lambda: {"events": [ev(event_name=["a"])]}, 422),
    ("numeric-timestamp", lambda: {"events": [ev(timestamp=1700000000)]}, 422),
    ("metadata-list", lambda: {"events": [ev(metadata=[["k", "v"]])]}, 422),
    ("metadata-string", lambda: {"events": [ev(metadata="k=v")]}, 422),
    ("metadata-null-value", lambda: {"events": [ev(metadata={"k": None})]}, 422),
    ("metadata-list-value", lambda: {"events": [ev(metadata={"k": [1]})]}, 422),
    ("metadata-object-value", lambda: {"events": [ev(metadata={"k": {"a": 1}})]}, 422),
    ("second-event-bad", lambda: {"events": [ev(1), ev(2, metadata={"k": None})]}, 422),
]


@pytest.mark.parametrize(("body_factory", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_server_classifies_bodies_as_the_schema_does(
    spec: dict[str, Any],
    server: LocalDodoServer,
    http: requests.Session,
    body_factory: Callable[[], Any],
    status: int,
) -> None:
    body = body_factory()
    schema_valid = validator(spec, "IngestEventsRequest").is_valid(body)
    assert schema_valid == (status != 422), "the case table disagrees with the schema"
    response = http.post(f"{server.url}/events/ingest", json=body, timeout=10)
    assert response.status_code == status, response.text
    if status == 200:
        assert validator(spec, "IngestEventsResponse").is_valid(response.json())
        assert response.json() == {"ingested_count": len(body["events"])}
    else:
        assert server.event_count() == 0


def test_read_literally_the_spec_rejects_integer_metadata() -> None:
    """Why the suite rewrites oneOf: the unmodified schema refuses what Dodo's SDKs send."""
    literal, fixed = load_spec(), any_of(load_spec())
    body = {"events": [ev(metadata={"status_code": 200})]}
    assert not validator(literal, "IngestEventsRequest").is_valid(body)
    assert validator(fixed, "IngestEventsRequest").is_valid(body)
    assert validator(literal, "IngestEventsRequest").is_valid({"events": [ev(metadata={"ms": 1.5})]})


def test_every_read_response_matches_the_spec(
    spec: dict[str, Any], server: LocalDodoServer, http: requests.Session
) -> None:
    pytest.importorskip("rfc3339_validator")  # makes FormatChecker assert date-time
    assert not FormatChecker().conforms("2024-01-15 10:30", "date-time")
    events = [
        ev(0),
        ev(1, timestamp=stamp(-30), metadata={"endpoint": "/v1/x", "status_code": 201, "ms": 3.25, "ok": True}),
        ev(2, customer_id="cus_2", timestamp=stamp(-20.5), metadata=None),
        ev(3, event_name="upload", timestamp=stamp(-10), metadata={}),
        ev(4, timestamp=stamp(-5), metadata={"é": "ü" * 500}),
    ]
    assert http.post(f"{server.url}/events/ingest", json={"events": events}, timeout=10).status_code == 200

    list_schema = validator(spec, "GetEventsResponse", formats=True)
    queries: list[dict[str, Any]] = [
        {},
        {"page_size": 2},
        {"page_size": 2, "page_number": 2},
        {"customer_id": "cus_2"},
        {"event_name": "upload"},
        {"start": stamp(-25), "end": stamp(60)},
        {"customer_id": "cus_none"},
    ]
    seen: set[str] = set()
    for params in queries:
        response = http.get(f"{server.url}/events", params=params, timeout=10)
        assert response.status_code == 200
        errors = [e.message for e in list_schema.iter_errors(response.json())]
        assert errors == [], (params, errors)
        seen.update(item["event_id"] for item in response.json()["items"])
    assert seen == {e["event_id"] for e in events}

    event_schema = validator(spec, "Event", formats=True)
    for event in events:
        response = http.get(f"{server.url}/events/{event['event_id']}", timeout=10)
        assert response.status_code == 200
        assert [e.message for e in event_schema.iter_errors(response.json())] == []
    assert not event_schema.is_valid({**response.json(), "timestamp": "yesterday"})  # the check has teeth
