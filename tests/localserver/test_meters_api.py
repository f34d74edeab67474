"""Dodo's /meters API and GET /events?meter_id= on the local server, driven by Dodo's official Python SDK.

``dodopayments`` (the SDK users already have) is pointed at the server with ``base_url``: every call must
parse into the SDK's own models, and every raw response must validate against Dodo's published schemas
(tests/data/dodo-openapi-meters.yml). ``GET /_local/usage`` is the local read-out of what Dodo would bill.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dodopayments
import pytest
import requests
import yaml
from dodopayments import DodoPayments
from dodopayments.types import Event, Meter
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from dodo_ingest.localserver import LocalDodoServer
from tests.localserver.conftest import KEY

SPEC_PATH = Path(__file__).resolve().parents[1] / "data" / "dodo-openapi-meters.yml"
SPEC_URI = "urn:dodo:openapi-meters"

ORDERS = {
    "name": "Items ordered",
    "event_name": "api_call",
    "measurement_unit": "items",
    "description": "quantity of successful orders",
    "aggregation": {"type": "sum", "key": "quantity"},
    "filter": {
        "conjunction": "and",
        "clauses": [
            {"key": "endpoint", "operator": "equals", "value": "/api/v1/orders"},
            {"key": "status_code", "operator": "less_than", "value": 400},
        ],
    },
}


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    with SPEC_PATH.open(encoding="utf-8") as handle:
        spec: dict[str, Any] = yaml.safe_load(handle)
    registry: Registry[Any] = Registry().with_resource(
        SPEC_URI, Resource.from_contents(spec, default_specification=DRAFT202012)
    )
    names = ["MeterResponse", "ListMetersResponse", "CreateMeterRequest"]
    return {
        name: OAS31Validator({"$ref": f"{SPEC_URI}#/components/schemas/{name}"}, registry=registry) for name in names
    }


@pytest.fixture
def client(server: LocalDodoServer) -> Iterator[DodoPayments]:
    with DodoPayments(bearer_token=KEY, base_url=server.url, max_retries=0, timeout=10) as sdk:
        yield sdk


def stamp(seconds_ago: float = 0.0) -> str:
    moment = datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def call(i: int, customer: str, endpoint: str, status: int, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"evt_{i}",
        "customer_id": customer,
        "event_name": "api_call",
        "timestamp": stamp(60 - i),
        "metadata": {"endpoint": endpoint, "method": "POST", "status_code": status, **extra},
    }


TRAFFIC = [
    call(0, "cus_a", "/api/v1/orders", 201, quantity=3),
    call(1, "cus_a", "/api/v1/orders", 201, quantity=2),
    call(2, "cus_a", "/api/v1/orders", 422, quantity=9),  # a failed order is not billed
    call(3, "cus_b", "/api/v1/orders", 201, quantity=5),
    call(4, "cus_b", "/api/v1/search", 200, quantity=100),  # another endpoint
    call(5, "cus_c", "/api/v1/orders", 201),  # no quantity: counted as an event, adds nothing
]


# --- the official SDK -------------------------------------------------------------------------------------


def test_the_sdk_creates_retrieves_updates_archives_and_unarchives(client: DodoPayments) -> None:
    created = client.meters.create(**ORDERS)
    assert isinstance(created, Meter) and created.id.startswith("mtr_")
    assert (created.name, created.event_name, created.measurement_unit) == ("Items ordered", "api_call", "items")
    assert created.aggregation.type == "sum" and created.aggregation.key == "quantity"
    assert isinstance(created.created_at, datetime) and created.created_at.tzinfo is not None
    assert created.filter is not None and created.filter.conjunction == "and"
    assert created.business_id == "bus_local" and created.description == "quantity of successful orders"

    fetched = client.meters.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump()
    updated = client.meters.update(created.id, name="Items ordered (v2)", description=None)
    assert (updated.name, updated.description, updated.measurement_unit) == ("Items ordered (v2)", None, "items")
    assert updated.updated_at >= created.updated_at

    assert client.meters.archive(created.id) is None
    assert [m.id for m in client.meters.list().items] == []
    assert [m.id for m in client.meters.list(archived=True).items] == [created.id]
    assert client.meters.retrieve(created.id).id == created.id  # archived meters can still be read
    assert client.meters.unarchive(created.id) is None
    assert [m.id for m in client.meters.list().items] == [created.id]


def test_the_sdk_sees_dodos_errors(client: DodoPayments) -> None:
    with pytest.raises(dodopayments.NotFoundError):
        client.meters.retrieve("mtr_missing")
    with pytest.raises(dodopayments.NotFoundError):
        client.meters.archive("mtr_missing")
    with pytest.raises(dodopayments.NotFoundError):
        client.meters.unarchive("mtr_missing")
    with pytest.raises(dodopayments.UnprocessableEntityError) as bad:
        client.meters.create(name="x", event_name="api_call", measurement_unit="u", aggregation={"type": "sum"})
    assert isinstance(bad.value.body, dict) and bad.value.body["code"] == "INVALID_REQUEST_BODY"
    assert "aggregation.key" in bad.value.body["message"]
    with pytest.raises(dodopayments.UnprocessableEntityError) as page:
        client.meters.list(page_size=101)
    assert isinstance(page.value.body, dict) and page.value.body["code"] == "INVALID_QUERY_PARAMS"
    stranger = DodoPayments(bearer_token="sk_wrong", base_url=str(client.base_url), max_retries=0)
    with stranger, pytest.raises(dodopayments.AuthenticationError):
        stranger.meters.list()


def test_the_sdk_ingests_lists_and_retrieves_events(client: DodoPayments) -> None:
    moment = datetime.now(timezone.utc) - timedelta(seconds=5)
    answer = client.usage_events.ingest(
        events=[
            {
                "event_id": "evt_sdk",
                "customer_id": "cus_a",
                "event_name": "api_call",
                "timestamp": moment,
                "metadata": {"endpoint": "/v1/x", "status_code": 200, "ok": True, "ms": 1.5},
            }
        ]
    )
    assert answer.ingested_count == 1
    event = client.usage_events.retrieve("evt_sdk")
    assert isinstance(event, Event) and event.customer_id == "cus_a"
    assert abs((event.timestamp - moment).total_seconds()) < 0.001
    assert event.metadata == {"endpoint": "/v1/x", "status_code": 200, "ok": True, "ms": 1.5}
    listed = client.usage_events.list(customer_id="cus_a", start=moment - timedelta(seconds=1)).items
    assert [e.event_id for e in listed] == ["evt_sdk"]
    with pytest.raises(dodopayments.NotFoundError):
        client.usage_events.retrieve("evt_never")


def test_events_by_meter_apply_its_event_name_and_filter(client: DodoPayments) -> None:
    client.usage_events.ingest(events=[*TRAFFIC, {**call(9, "cus_a", "/api/v1/orders", 201), "event_name": "upload"}])
    orders = client.meters.create(**ORDERS)
    page = client.usage_events.list(meter_id=orders.id, page_size=100)
    assert [e.event_id for e in page.items] == ["evt_0", "evt_1", "evt_3", "evt_5"]
    by_customer = client.usage_events.list(meter_id=orders.id, customer_id="cus_a", page_size=1, page_number=1)
    assert [e.event_id for e in by_customer.items] == ["evt_1"]
    same_name = client.usage_events.list(meter_id=orders.id, event_name="api_call", page_size=100)
    assert len(same_name.items) == 4
    with pytest.raises(dodopayments.UnprocessableEntityError):
        client.usage_events.list(meter_id=orders.id, event_name="upload")
    with pytest.raises(dodopayments.NotFoundError):
        client.usage_events.list(meter_id="mtr_missing")


def test_the_sdks_list_iterator_skips_page_1_so_walk_page_number_yourself(client: DodoPayments) -> None:
    client.usage_events.ingest(events=[call(i, "cus_a", "/v1/x", 200) for i in range(15)])
    iterated = [e.event_id for e in client.usage_events.list(page_size=5)]
    assert iterated == [f"evt_{i}" for i in (*range(5), *range(10, 15))]  # next page = (page_number or 1) + 1
    walked: list[str] = []
    page_number = 0
    while items := client.usage_events.list(page_size=5, page_number=page_number).items:
        walked += [e.event_id for e in items]
        page_number += 1
    assert walked == [f"evt_{i}" for i in range(15)]


# --- the wire, against Dodo's schemas ---------------------------------------------------------------------


def test_meter_responses_validate_against_dodos_schemas(
    server: LocalDodoServer, http: requests.Session, schemas: dict[str, Any]
) -> None:
    plain = {"name": "Calls", "event_name": "api_call", "measurement_unit": "calls", "aggregation": {"type": "count"}}
    for body in (ORDERS, plain):
        schemas["CreateMeterRequest"].validate(body)
        created = http.post(f"{server.url}/meters", json=body, timeout=10)
        assert created.status_code == 201, created.text
        schemas["MeterResponse"].validate(created.json())
        one = http.get(f"{server.url}/meters/{created.json()['id']}", timeout=10)
        assert one.status_code == 200 and one.json() == created.json()
    listed = http.get(f"{server.url}/meters", timeout=10)
    schemas["ListMetersResponse"].validate(listed.json())
    assert [m["name"] for m in listed.json()["items"]] == ["Items ordered", "Calls"]
    meter_id = listed.json()["items"][0]["id"]
    archived = http.delete(f"{server.url}/meters/{meter_id}", timeout=10)
    assert archived.status_code == 204 and archived.content == b""
    unarchived = http.post(f"{server.url}/meters/{meter_id}/unarchive", timeout=10)
    assert unarchived.status_code == 200 and unarchived.content == b""


def test_meter_bodies_the_schema_rejects_are_422(
    server: LocalDodoServer, http: requests.Session, schemas: dict[str, Any]
) -> None:
    bad_bodies = [
        {"name": "x"},
        {**ORDERS, "aggregation": {"type": "median", "key": "x"}},
        {**ORDERS, "filter": {"conjunction": "and", "clauses": []}},
        {**ORDERS, "filter": {"conjunction": "and", "clauses": [{"key": "a", "operator": "eq", "value": 1}]}},
        {**ORDERS, "measurement_unit": None},
    ]
    for body in bad_bodies:
        assert not schemas["CreateMeterRequest"].is_valid(body), body
        response = http.post(f"{server.url}/meters", json=body, timeout=10)
        assert response.status_code == 422 and response.json()["code"] == "INVALID_REQUEST_BODY", body
    malformed = http.post(f"{server.url}/meters", data=b"{", timeout=10)
    assert malformed.status_code == 422 and malformed.json()["code"] == "INVALID_REQUEST_BODY"
    assert http.get(f"{server.url}/meters", timeout=10).json() == {"items": []}


def test_meters_page_in_creation_order(server: LocalDodoServer, http: requests.Session) -> None:
    for i in range(12):
        body = {"name": f"m{i}", "event_name": "e", "measurement_unit": "u", "aggregation": {"type": "count"}}
        assert http.post(f"{server.url}/meters", json=body, timeout=10).status_code == 201

    def names(**params: Any) -> list[str]:
        response = http.get(f"{server.url}/meters", params=params, timeout=10)
        assert response.status_code == 200, response.text
        return [m["name"] for m in response.json()["items"]]

    assert names() == [f"m{i}" for i in range(10)]  # default page size 10
    assert names(page_size=5, page_number=2) == ["m10", "m11"]
    assert names(page_size=100) == [f"m{i}" for i in range(12)]
    assert names(page_size=0) == []
    assert names(archived="true") == []
    for params in ({"page_size": 101}, {"page_size": -1}, {"page_number": "x"}, {"archived": "yes"}):
        response = http.get(f"{server.url}/meters", params=params, timeout=10)
        assert response.status_code == 422 and response.json()["code"] == "INVALID_QUERY_PARAMS", params
    assert requests.get(f"{server.url}/meters", timeout=10).status_code == 401


def test_meters_persist_across_restarts_and_survive_clear(tmp_path: Path, http: requests.Session) -> None:
    db = str(tmp_path / "meters.sqlite3")
    with LocalDodoServer(api_key=KEY, db_path=db) as first:
        meter_id = http.post(f"{first.url}/meters", json=ORDERS, timeout=10).json()["id"]
        first.clear()
        assert [m["id"] for m in first.meters()] == [meter_id]
    with LocalDodoServer(api_key=KEY, db_path=db) as second:
        assert http.get(f"{second.url}/meters/{meter_id}", timeout=10).json()["name"] == "Items ordered"


# --- what Dodo would bill ---------------------------------------------------------------------------------


def test_local_usage_is_each_meters_value_per_customer(client: DodoPayments, server: LocalDodoServer) -> None:
    client.usage_events.ingest(events=TRAFFIC)
    orders = client.meters.create(**ORDERS)
    calls = client.meters.create(
        name="Calls", event_name="api_call", measurement_unit="calls", aggregation={"type": "count"}
    )
    largest = client.meters.create(
        name="Largest order",
        event_name="api_call",
        measurement_unit="items",
        aggregation={"type": "max", "key": "quantity"},
    )
    usage = requests.get(f"{server.url}/_local/usage", timeout=10).json()
    assert (usage["start"], usage["end"]) == (None, None)
    by_meter = {item["meter"]["id"]: item for item in usage["items"]}
    assert list(by_meter) == [orders.id, calls.id, largest.id]
    assert by_meter[orders.id]["total"] == 10
    assert by_meter[orders.id]["customers"] == [
        {"customer_id": "cus_a", "value": 5, "events": 2},
        {"customer_id": "cus_b", "value": 5, "events": 1},
        {"customer_id": "cus_c", "value": 0, "events": 1},
    ]
    assert by_meter[calls.id]["total"] == 6
    assert {c["customer_id"]: c["value"] for c in by_meter[largest.id]["customers"]} == {
        "cus_a": 9,
        "cus_b": 100,
        "cus_c": None,
    }

    window = {"meter_id": orders.id, "start": TRAFFIC[1]["timestamp"], "end": TRAFFIC[3]["timestamp"]}
    windowed = requests.get(f"{server.url}/_local/usage", params=window, timeout=10).json()
    assert windowed["start"] == TRAFFIC[1]["timestamp"] and len(windowed["items"]) == 1
    assert windowed["items"][0]["customers"] == [{"customer_id": "cus_a", "value": 2, "events": 1}]
    one = requests.get(f"{server.url}/_local/usage", params={"customer_id": "cus_b"}, timeout=10).json()
    assert [item["total"] for item in one["items"]] == [5, 2, 100]

    client.meters.archive(calls.id)
    assert len(requests.get(f"{server.url}/_local/usage", timeout=10).json()["items"]) == 2
    missing = requests.get(f"{server.url}/_local/usage", params={"meter_id": "mtr_nope"}, timeout=10)
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
    bad = requests.get(f"{server.url}/_local/usage", params={"start": "yesterday"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["code"] == "INVALID_QUERY_PARAMS"
    assert server.usage_between(orders.id, customer_id="cus_b")[0]["total"] == 5
