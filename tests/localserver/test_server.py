"""The local Dodo server over real loopback HTTP: auth, ingest rules, reads, faults, controls, lifecycle, CLI."""

from __future__ import annotations

import json
import random
import re
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from dodo_ingest.localserver import Fault, LocalDodoServer, main
from dodo_ingest.localserver.server import RequestRecord
from tests.localserver.conftest import AUTH, KEY, run_cli

T0 = datetime(2030, 5, 17, 12, 0, 0, tzinfo=timezone.utc)  # the fixed clock of the `clocked` server


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def now_iso(offset: float = 0.0) -> str:
    return iso(datetime.now(timezone.utc) + timedelta(seconds=offset))


def ev(i: int, **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": f"evt_{i}",
        "customer_id": "cus_a",
        "event_name": "api_call",
        "metadata": {"endpoint": "/v1/things", "method": "GET", "status_code": 200, "response_time_ms": 12.5},
    }
    event.update(fields)
    return event


@pytest.fixture
def clocked() -> Iterator[LocalDodoServer]:
    """A server whose clock stands still at T0, so window edges are exact."""
    with LocalDodoServer(api_key=KEY, clock=T0.timestamp) as srv:
        yield srv


def post(http: requests.Session, server: LocalDodoServer, events: list[dict[str, Any]]) -> requests.Response:
    return http.post(f"{server.url}/events/ingest", json={"events": events}, timeout=10)


def post_raw(
    http: requests.Session, server: LocalDodoServer, data: bytes | Iterator[bytes], **kw: Any
) -> requests.Response:
    return http.post(f"{server.url}/events/ingest", data=data, timeout=10, **kw)


def ids(events: list[dict[str, Any]]) -> list[str]:
    return [e["event_id"] for e in events]


# --- auth -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [("POST", "/events/ingest"), ("GET", "/events"), ("GET", "/events/evt_1")])
@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {KEY}", "Bearer ", KEY])
def test_a_missing_or_wrong_key_is_401_on_every_events_route(
    server: LocalDodoServer, method: str, path: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    body = {"events": [ev(1)]} if method == "POST" else None
    response = requests.request(method, server.url + path, json=body, headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.json()["code"] == "UNAUTHORIZED"
    assert KEY not in response.text
    assert server.event_count() == 0


def test_a_rejected_key_is_recorded_with_what_was_sent(server: LocalDodoServer) -> None:
    response = requests.post(
        f"{server.url}/events/ingest",
        json={"events": [ev(1), ev(2)]},
        headers={"Authorization": "Bearer x"},
        timeout=10,
    )
    assert response.status_code == 401
    (record,) = server.requests
    assert record.status == 401 and record.authorization_ok is False
    assert record.event_ids == ["evt_1", "evt_2"] and record.event_count == 2


def test_without_a_configured_key_any_non_empty_bearer_key_is_accepted() -> None:
    with LocalDodoServer() as srv:
        ok = requests.post(
            f"{srv.url}/events/ingest", json={"events": [ev(1)]}, headers={"Authorization": "Bearer a"}, timeout=10
        )
        empty = requests.post(
            f"{srv.url}/events/ingest", json={"events": [ev(2)]}, headers={"Authorization": "Bearer"}, timeout=10
        )
        none = requests.get(f"{srv.url}/events", timeout=10)
        assert (ok.status_code, empty.status_code, none.status_code) == (200, 401, 401)
        assert srv.event_count() == 1 and srv.requests[0].authorization_ok


def test_an_empty_api_key_means_none_configured() -> None:
    with LocalDodoServer(api_key="") as srv:
        response = requests.get(f"{srv.url}/events", headers={"Authorization": "Bearer anything"}, timeout=10)
        assert response.status_code == 200


# --- ingest -----------------------------------------------------------------------------------------------


def test_one_event_is_ingested_and_read_back(server: LocalDodoServer, http: requests.Session) -> None:
    ts = now_iso(-5)
    response = post(http, server, [ev(1, timestamp=ts)])
    assert response.status_code == 200 and response.json() == {"ingested_count": 1}
    assert response.headers["Content-Type"] == "application/json"
    assert server.events() == [
        {
            "business_id": "bus_local",
            "customer_id": "cus_a",
            "event_id": "evt_1",
            "event_name": "api_call",
            "timestamp": ts,
            "metadata": {"endpoint": "/v1/things", "method": "GET", "status_code": 200, "response_time_ms": 12.5},
        }
    ]
    assert server.requests == [RequestRecord(200, 1, ["evt_1"], len(response.request.body or b""), True)]


def test_1000_events_in_one_request_are_ingested(server: LocalDodoServer, http: requests.Session) -> None:
    response = post(http, server, [ev(i) for i in range(1000)])
    assert response.json() == {"ingested_count": 1000}
    assert server.event_count() == 1000
    assert ids(server.events()) == [f"evt_{i}" for i in range(1000)]


@pytest.mark.parametrize("count", [0, 1001])
def test_0_or_1001_events_are_rejected_and_nothing_is_stored(
    server: LocalDodoServer, http: requests.Session, count: int
) -> None:
    response = post(http, server, [ev(i) for i in range(count)])
    assert response.status_code == 422
    assert response.json()["code"] == "INVALID_REQUEST_BODY" and f"{count} events" in response.json()["message"]
    assert server.event_count() == 0
    assert server.requests[0].event_count == count


METADATA_CASES = [
    ({f"k{i}": i for i in range(50)}, 200),
    ({f"k{i}": i for i in range(51)}, 400),
    ({"k" * 100: "v"}, 200),
    ({"k" * 101: "v"}, 400),
    ({"v": "x" * 500}, 200),
    ({"v": "x" * 501}, 400),
    ({"b": True, "f": False, "i": -7, "big": 2**63 - 1, "x": 0.25, "s": ""}, 200),
    ({"v": None}, 422),
    ({"v": [1, 2]}, 422),
    ({"v": {"nested": 1}}, 422),
    ({}, 200),
]


@pytest.mark.parametrize(("metadata", "status"), METADATA_CASES)
def test_metadata_rules_at_their_boundaries(
    server: LocalDodoServer, http: requests.Session, metadata: dict[str, Any], status: int
) -> None:
    response = post(http, server, [ev(0), ev(1, metadata=metadata)])
    assert response.status_code == status, response.text
    if status == 200:
        assert server.events()[1]["metadata"] == metadata
    else:
        assert response.json()["message"].startswith("events[1].metadata")
        expected_code = "MAXIMUM_KEYS_REACHED" if len(metadata) > 50 else "INVALID_REQUEST_BODY"
        assert response.json()["code"] == expected_code
        assert server.event_count() == 0


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_non_finite_numbers_in_metadata_are_422(server: LocalDodoServer, http: requests.Session, token: bytes) -> None:
    body = b'{"events": [{"event_id": "e", "customer_id": "c", "event_name": "n", "metadata": {"x": %s}}]}' % token
    response = post_raw(http, server, body)
    assert response.status_code == 422
    assert server.event_count() == 0


def test_missing_metadata_reads_back_as_an_empty_object(server: LocalDodoServer, http: requests.Session) -> None:
    plain = {"event_id": "e1", "customer_id": "c", "event_name": "n"}
    assert post(http, server, [plain, {**plain, "event_id": "e2", "metadata": None}]).status_code == 200
    assert [e["metadata"] for e in server.events()] == [{}, {}]


@pytest.mark.parametrize(
    ("offset", "status"),
    [(-3600, 200), (-3600.001, 400), (300, 200), (300.001, 400), (-86400, 400), (86400, 400), (0, 200)],
)
def test_the_timestamp_window(clocked: LocalDodoServer, http: requests.Session, offset: float, status: int) -> None:
    response = post(http, clocked, [ev(1, timestamp=iso(T0 + timedelta(seconds=offset)))])
    assert response.status_code == status, response.text
    assert clocked.event_count() == (1 if status == 200 else 0)
    if status == 400:
        assert response.json()["message"].startswith("events[0].timestamp:")


@pytest.mark.parametrize(
    "timestamp", ["yesterday", "2030-05-17", "2030-05-17T12:00:00", "2030-05-17 12:00:00Z", "2030-02-30T00:00:00Z"]
)
def test_a_malformed_timestamp_is_400(clocked: LocalDodoServer, http: requests.Session, timestamp: str) -> None:
    response = post(http, clocked, [ev(1, timestamp=timestamp)])
    assert response.status_code == 400 and "events[0].timestamp" in response.json()["message"]


def test_z_and_offsets_name_the_same_instant(clocked: LocalDodoServer, http: requests.Session) -> None:
    forms = ["2030-05-17T11:59:00Z", "2030-05-17T11:59:00+00:00", "2030-05-17T17:29:00.000+05:30",
             "2030-05-17T06:59:00-05:00"]  # fmt: skip
    assert post(http, clocked, [ev(i, timestamp=t) for i, t in enumerate(forms)]).status_code == 200
    assert {e["timestamp"] for e in clocked.events()} == {"2030-05-17T11:59:00Z"}


def test_fractional_seconds_are_kept(clocked: LocalDodoServer, http: requests.Session) -> None:
    stamps = ["2030-05-17T11:59:00.5Z", "2030-05-17T11:59:00.123456Z", "2030-05-17T11:59:00.120+00:00"]
    assert post(http, clocked, [ev(i, timestamp=t) for i, t in enumerate(stamps)]).status_code == 200
    assert [e["timestamp"] for e in clocked.events()] == [
        "2030-05-17T11:59:00.500Z",
        "2030-05-17T11:59:00.123456Z",
        "2030-05-17T11:59:00.120Z",
    ]


def test_a_missing_timestamp_is_the_server_time(clocked: LocalDodoServer, http: requests.Session) -> None:
    assert post(http, clocked, [ev(1)]).status_code == 200
    assert clocked.events()[0]["timestamp"] == "2030-05-17T12:00:00Z"


def test_a_duplicate_id_in_one_request_fails_it_all(server: LocalDodoServer, http: requests.Session) -> None:
    response = post(http, server, [ev(1), ev(2), ev(3), ev(2)])
    assert response.status_code == 400
    assert response.json()["message"] == "events[3].event_id: 'evt_2' duplicates events[1].event_id"
    assert server.event_count() == 0


def test_one_bad_event_fails_the_whole_request(server: LocalDodoServer, http: requests.Session) -> None:
    response = post(http, server, [*(ev(i) for i in range(10)), ev(10, customer_id="")])
    assert response.status_code == 400 and response.json()["message"] == "events[10].customer_id: must not be empty"
    assert server.event_count() == 0


def test_ids_already_stored_are_ignored_but_counted(server: LocalDodoServer, http: requests.Session) -> None:
    assert post(http, server, [ev(1), ev(2)]).json() == {"ingested_count": 2}
    again = post(http, server, [ev(1, customer_id="cus_other"), ev(2), ev(3)])
    assert again.status_code == 200 and again.json() == {"ingested_count": 3}
    assert ids(server.events()) == ["evt_1", "evt_2", "evt_3"]
    assert server.events()[0]["customer_id"] == "cus_a"  # the first write wins
    assert post(http, server, [ev(1), ev(2)]).json() == {"ingested_count": 2}
    assert server.event_count() == 3


def test_unknown_event_fields_are_ignored(server: LocalDodoServer, http: requests.Session) -> None:
    assert post(http, server, [ev(1, colour="blue")]).status_code == 200
    assert "colour" not in server.events()[0]


def test_bodies_above_the_byte_cap_are_413_before_reading() -> None:
    with LocalDodoServer(api_key=KEY, max_body_bytes=2000) as srv, requests.Session() as session:
        session.headers.update(AUTH)
        body = json.dumps({"events": [ev(1)]}).encode()
        exact = body + b" " * (2000 - len(body))
        assert post_raw(session, srv, exact).status_code == 200
        response = post_raw(session, srv, exact + b" ")
        assert response.status_code == 413 and response.json()["code"] == "PAYLOAD_TOO_LARGE"
        chunked = post_raw(session, srv, iter([exact, b" "]))  # a generator is sent chunked
        assert chunked.status_code == 413
        assert post(session, srv, [ev(2)]).status_code == 200  # the session recovers
        assert srv.event_count() == 2
        assert [r.status for r in srv.requests] == [200, 413, 413, 200]
        assert srv.requests[1].body_bytes == 2001


def test_a_chunked_body_within_the_cap_is_accepted(server: LocalDodoServer, http: requests.Session) -> None:
    body = json.dumps({"events": [ev(1), ev(2)]}).encode()
    response = post_raw(http, server, iter([body[:10], body[10:]]))
    assert response.status_code == 200 and server.event_count() == 2


@pytest.mark.parametrize(
    "raw",
    [b"", b"null", b"[]", b'"events"', b"{", b'{"events": "x"}', b'{"events": [1]}', b"\xff\xfe", b"{}"],
)
def test_malformed_or_misshapen_bodies_are_422(server: LocalDodoServer, http: requests.Session, raw: bytes) -> None:
    response = post_raw(http, server, raw)
    assert response.status_code == 422 and set(response.json()) == {"code", "message"}


def test_garbage_never_crashes_the_server(server: LocalDodoServer, http: requests.Session) -> None:
    rng = random.Random(20240517)
    templates: list[Callable[[], bytes]] = [
        lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))),
        lambda: json.dumps({"events": [rng.choice([None, 1, "x", [], {}, {"event_id": []}])]}).encode(),
        lambda: b'{"events": [' + b"{" * rng.randrange(1, 50_000) + b"]}",
        lambda: b'{"events": [{"event_id": "a\\ud800", "customer_id": "c", "event_name": "n"}]}',
        lambda: json.dumps({"events": [ev(1, metadata={"k": {"deep": [1, {"x": None}]}})]}).encode(),
        lambda: json.dumps({"events": [ev(1, timestamp=rng.choice([[], {}, True, -1, "\x00"]))]}).encode(),
        lambda: b'{"events": [{"event_id": "' + b"\x00\x01" * 10 + b'"}]}',
    ]
    statuses = set()
    for _ in range(120):
        response = post_raw(http, server, rng.choice(templates)())
        statuses.add(response.status_code)
        assert response.status_code in (400, 422), response.text
        assert set(response.json()) == {"code", "message"}
    assert statuses == {400, 422}
    assert post(http, server, [ev(1)]).status_code == 200
    assert server.event_count() == 1


def test_malformed_http_is_answered_not_fatal(server: LocalDodoServer, http: requests.Session) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    for request in [b"GARBAGE\r\n\r\n", b"POST /events/ingest HTTP/1.1\r\nContent-Length: abc\r\n\r\n"]:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(request)
            reply = sock.makefile("rb").read()
        assert reply.startswith(b"HTTP/1.") and b" 400 " in reply.split(b"\r\n")[0]
    assert post(http, server, [ev(1)]).status_code == 200


def test_keep_alive_serves_several_requests_on_one_connection(server: LocalDodoServer) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    body = json.dumps({"events": [ev(1)]}).encode()
    request = (
        b"POST /events/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    get = b"GET /events/evt_1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        reader = sock.makefile("rb")
        for payload, expected in [(request, {"ingested_count": 1}), (request, {"ingested_count": 1}), (get, None)]:
            sock.sendall(payload)
            status = reader.readline()
            headers = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            data = json.loads(reader.read(int(headers["content-length"])))
            assert status.startswith(b"HTTP/1.1 200") and "connection" not in headers
            assert data == expected if expected is not None else data["event_id"] == "evt_1"
    assert server.event_count() == 1


# --- reading events ---------------------------------------------------------------------------------------


@pytest.fixture
def loaded(clocked: LocalDodoServer, http: requests.Session) -> LocalDodoServer:
    """12 events: customers a/b alternate, names api_call/upload by thirds, one minute apart (oldest first)."""
    base = T0 - timedelta(minutes=30)
    events = [
        ev(i, customer_id="cus_a" if i % 2 == 0 else "cus_b", event_name="api_call" if i % 3 else "upload",
           timestamp=iso(base + timedelta(minutes=i)))
        for i in range(12)
    ]  # fmt: skip
    events.reverse()  # ingestion order differs from time order
    assert post(http, clocked, events).status_code == 200
    return clocked


def get_events(server: LocalDodoServer, http: requests.Session, **params: Any) -> requests.Response:
    return http.get(f"{server.url}/events", params=params, timeout=10)


def test_get_events_pages_by_10_in_time_order(loaded: LocalDodoServer, http: requests.Session) -> None:
    first = get_events(loaded, http)
    assert first.status_code == 200 and set(first.json()) == {"items"}
    assert ids(first.json()["items"]) == [f"evt_{i}" for i in range(10)]
    assert ids(get_events(loaded, http, page_number=1).json()["items"]) == ["evt_10", "evt_11"]
    assert get_events(loaded, http, page_number=2).json() == {"items": []}
    assert ids(get_events(loaded, http, page_size=5, page_number=1).json()["items"]) == [
        f"evt_{i}" for i in range(5, 10)
    ]
    assert get_events(loaded, http, page_size=0).json() == {"items": []}
    item = get_events(loaded, http, page_size=1).json()["items"][0]
    assert item == {
        "business_id": "bus_local",
        "customer_id": "cus_a",
        "event_id": "evt_0",
        "event_name": "upload",
        "timestamp": "2030-05-17T11:30:00Z",
        "metadata": ev(0)["metadata"],
    }


def test_ties_in_time_keep_ingestion_order(clocked: LocalDodoServer, http: requests.Session) -> None:
    stamp = iso(T0)
    assert post(http, clocked, [ev(i, timestamp=stamp) for i in (3, 1, 2)]).status_code == 200
    assert ids(get_events(clocked, http).json()["items"]) == ["evt_3", "evt_1", "evt_2"]


def test_get_events_filters(loaded: LocalDodoServer, http: requests.Session) -> None:
    page = {"page_size": 100}
    by_customer = get_events(loaded, http, customer_id="cus_b", **page).json()["items"]
    assert ids(by_customer) == [f"evt_{i}" for i in range(1, 12, 2)]
    by_name = get_events(loaded, http, event_name="upload", **page).json()["items"]
    assert ids(by_name) == ["evt_0", "evt_3", "evt_6", "evt_9"]
    both = get_events(loaded, http, event_name="upload", customer_id="cus_a", **page).json()["items"]
    assert ids(both) == ["evt_0", "evt_6"]
    assert get_events(loaded, http, customer_id="cus_nobody").json() == {"items": []}


def test_start_is_inclusive_and_end_exclusive(loaded: LocalDodoServer, http: requests.Session) -> None:
    start, end = "2030-05-17T11:33:00Z", "2030-05-17T11:36:00Z"  # evt_3 .. evt_6
    window = get_events(loaded, http, start=start, end=end).json()["items"]
    assert ids(window) == ["evt_3", "evt_4", "evt_5"]
    offset = get_events(loaded, http, start="2030-05-17T13:33:00+02:00", end="2030-05-17T11:35:00.000001Z")
    assert ids(offset.json()["items"]) == ["evt_3", "evt_4", "evt_5"]
    unescaped_plus = http.get(f"{loaded.url}/events?start=2030-05-17T13:40:00+02:00", timeout=10)
    assert ids(unescaped_plus.json()["items"]) == ["evt_10", "evt_11"]


@pytest.mark.parametrize(
    ("params", "status", "fragment"),
    [
        ({"page_size": -1}, 422, "page_size"),
        ({"page_size": "ten"}, 422, "page_size"),
        ({"page_size": 2**31}, 422, "page_size"),
        ({"page_size": ""}, 422, "page_size"),
        ({"page_number": -1}, 422, "page_number"),
        ({"page_number": "1.5"}, 422, "page_number"),
        ({"meter_id": "mtr_unknown"}, 404, "mtr_unknown"),
        ({"start": "yesterday"}, 400, "start"),
        ({"end": "2030-05-17"}, 400, "end"),
    ],
)
def test_bad_query_parameters(
    loaded: LocalDodoServer, http: requests.Session, params: dict[str, Any], status: int, fragment: str
) -> None:
    response = get_events(loaded, http, **params)
    assert response.status_code == status
    assert fragment in response.json()["message"]
    assert response.json()["code"] == ("NOT_FOUND" if status == 404 else "INVALID_QUERY_PARAMS")


def test_the_largest_page_size_is_int32_max(loaded: LocalDodoServer, http: requests.Session) -> None:
    assert len(get_events(loaded, http, page_size=2**31 - 1).json()["items"]) == 12


def test_get_event_by_id(loaded: LocalDodoServer, http: requests.Session) -> None:
    response = http.get(f"{loaded.url}/events/evt_7", timeout=10)
    assert response.status_code == 200 and response.json()["event_id"] == "evt_7"
    assert response.json()["timestamp"] == "2030-05-17T11:37:00Z"
    missing = http.get(f"{loaded.url}/events/evt_99", timeout=10)
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
    assert http.get(f"{loaded.url}/events/EVT_7", timeout=10).status_code == 404  # case-sensitive


def test_get_event_by_id_decodes_the_path(server: LocalDodoServer, http: requests.Session) -> None:
    odd = "ord/42 é?x#"
    assert post(http, server, [ev(0, event_id=odd)]).status_code == 200
    response = http.get(f"{server.url}/events/{quote(odd, safe='')}", timeout=10)
    assert response.status_code == 200 and response.json()["event_id"] == odd


def test_unknown_routes_are_404_and_wrong_methods_405(server: LocalDodoServer, http: requests.Session) -> None:
    for path in ["/nope", "/events/a/b", "/events/", "/_local/nope", "/meters/", "/meters/m/x", "/_local/static/x"]:
        response = http.get(server.url + path, timeout=10)
        assert response.status_code == 404 and response.json()["code"] == "NOT_FOUND", path
    for method, path, allow in [
        ("GET", "/events/ingest", "POST"),
        ("PUT", "/events/ingest", "POST"),
        ("POST", "/events", "GET"),
        ("DELETE", "/events/evt_1", "GET"),
        ("PUT", "/_local/faults", "GET, POST, DELETE"),
        ("GET", "/meters/mtr_1/unarchive", "POST"),
        ("PUT", "/meters/mtr_1", "GET, PATCH, DELETE"),
        ("POST", "/", "GET"),
    ]:
        response = http.request(method, server.url + path, json={"x": 1}, timeout=10)
        assert response.status_code == 405 and response.headers["Allow"] == allow, (method, path)
        assert response.json()["code"] == "METHOD_NOT_ALLOWED"
    assert post(http, server, [ev(1)]).status_code == 200  # bodies of refused requests were drained


# --- faults -----------------------------------------------------------------------------------------------


def test_a_status_fault_answers_instead_of_processing(server: LocalDodoServer, http: requests.Session) -> None:
    server.add_faults(Fault(status=503, retry_after="7"))
    response = post(http, server, [ev(1)])
    assert response.status_code == 503 and response.headers["Retry-After"] == "7"
    assert response.json() == {"code": "SERVICE_UNAVAILABLE", "message": "injected fault: HTTP 503"}
    assert server.event_count() == 0
    assert post(http, server, [ev(1)]).status_code == 200
    assert [(r.status, r.event_ids) for r in server.requests] == [(503, ["evt_1"]), (200, ["evt_1"])]


def test_retry_after_can_be_an_http_date_and_the_body_custom(server: LocalDodoServer, http: requests.Session) -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    server.add_faults(Fault(status=429, retry_after=date, body={"code": "RATE_LIMITED", "message": "slow down"}))
    response = post(http, server, [ev(1)])
    assert response.status_code == 429 and response.headers["Retry-After"] == date
    assert response.json() == {"code": "RATE_LIMITED", "message": "slow down"}


def test_a_fault_applies_before_auth_and_validation(server: LocalDodoServer) -> None:
    server.add_faults(Fault(status=502))
    response = requests.post(f"{server.url}/events/ingest", data=b"not json", timeout=10)
    assert response.status_code == 502
    assert server.requests == [RequestRecord(502, 0, [], 8, False)]


def test_a_delay_fault_makes_a_short_read_timeout_expire(server: LocalDodoServer, http: requests.Session) -> None:
    server.add_faults(Fault(delay=30.0))
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.post(f"{server.url}/events/ingest", json={"events": [ev(1)]}, timeout=(5, 0.2))
    # a delay-only fault then processes normally; stopping the server cuts the wait short


def test_a_delay_only_fault_then_processes_the_request(server: LocalDodoServer, http: requests.Session) -> None:
    server.add_faults(Fault(delay=0.2))
    response = post(http, server, [ev(1)])
    assert response.status_code == 200 and server.event_count() == 1


def test_a_dropped_connection_is_a_connection_error(server: LocalDodoServer, http: requests.Session) -> None:
    server.add_faults(Fault(drop_connection=True))
    with pytest.raises(requests.ConnectionError):
        post(http, server, [ev(1)])
    assert server.event_count() == 0
    assert server.requests == [RequestRecord(0, 1, ["evt_1"], server.requests[0].body_bytes, True)]
    assert post(http, server, [ev(1)]).status_code == 200


def test_process_then_drop_simulates_a_lost_acknowledgement(server: LocalDodoServer, http: requests.Session) -> None:
    server.add_faults(Fault(drop_connection=True, process=True))
    with pytest.raises(requests.ConnectionError):
        post(http, server, [ev(1), ev(2)])
    assert server.event_count() == 2
    assert post(http, server, [ev(1), ev(2)]).json() == {"ingested_count": 2}
    assert server.event_count() == 2


def test_a_2xx_fault_acknowledges_without_storing(server: LocalDodoServer, http: requests.Session) -> None:
    server.add_faults(Fault(status=200), Fault(status=204))
    assert post(http, server, [ev(1), ev(2)]).json() == {"ingested_count": 2}
    no_content = post(http, server, [ev(1)])
    assert no_content.status_code == 204 and no_content.content == b""
    assert server.event_count() == 0
    assert post(http, server, [ev(3)]).json() == {"ingested_count": 1}  # the connection is still in step


def test_repeat_and_fifo_order(server: LocalDodoServer, http: requests.Session) -> None:
    server.add_faults(Fault(status=500, repeat=3), Fault(status=429))
    server.add_faults(Fault(status=503))
    statuses = [post(http, server, [ev(1)]).status_code for _ in range(6)]
    assert statuses == [500, 500, 500, 429, 503, 200]
    assert [r.status for r in server.requests] == statuses


def test_faults_only_affect_ingest(server: LocalDodoServer, http: requests.Session) -> None:
    server.add_faults(Fault(status=500))
    assert get_events(server, http).status_code == 200
    assert post(http, server, [ev(1)]).status_code == 500


def test_clear_faults(server: LocalDodoServer, http: requests.Session) -> None:
    server.add_faults(Fault(status=500, repeat=5))
    server.clear_faults()
    assert post(http, server, [ev(1)]).status_code == 200


@pytest.mark.parametrize(
    "kwargs",
    [{"status": 100}, {"status": 600}, {"status": True}, {"delay": -1}, {"repeat": 0}, {"retry_after": 5}],
)
def test_invalid_faults_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="Fault"):
        Fault(**kwargs)


@pytest.mark.parametrize("kwargs", [{"body": [1]}, {"drop_connection": "yes"}, {"process": 1}])
def test_invalid_fault_shapes_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="Fault"):
        Fault(**kwargs)


# --- /_local controls -------------------------------------------------------------------------------------


def test_local_routes_need_no_auth_and_control_the_server(server: LocalDodoServer) -> None:
    base = f"{server.url}/_local"
    faults = [{"status": 503, "retry_after": "1"}, {"drop_connection": True}, {"delay": 0.1}]
    assert requests.post(f"{base}/faults", json=faults, timeout=10).json() == {"queued": 3}
    with requests.Session() as session:
        session.headers.update(AUTH)
        first = post(session, server, [ev(1)])
        assert first.status_code == 503 and first.headers["Retry-After"] == "1"
        with pytest.raises(requests.ConnectionError):
            post(session, server, [ev(1)])
        assert post(session, server, [ev(1), ev(2)]).status_code == 200
    assert requests.get(f"{base}/stats", timeout=10).json() == {"event_count": 2, "requests": 3}
    listed = requests.get(f"{base}/events", params={"customer_id": "cus_a"}, timeout=10).json()["items"]
    assert ids(listed) == ["evt_1", "evt_2"]
    log = requests.get(f"{base}/requests", timeout=10).json()["items"]
    assert [r["status"] for r in log] == [503, 0, 200] and log[2]["event_ids"] == ["evt_1", "evt_2"]
    assert requests.delete(f"{base}/events", timeout=10).json() == {"event_count": 0, "requests": 0}
    assert server.event_count() == 0 and server.requests == []
    assert requests.post(f"{base}/faults", json={"status": 500}, timeout=10).json() == {"queued": 1}
    assert requests.delete(f"{base}/faults", timeout=10).status_code == 200
    assert server.faults.pending() == 0


@pytest.mark.parametrize("payload", [b"{", b'[{"status": 1000}]', b'[{"colour": "red"}]', b"[1]", b'[{"delay": "x"}]'])
def test_local_faults_rejects_bad_input(server: LocalDodoServer, payload: bytes) -> None:
    response = requests.post(f"{server.url}/_local/faults", data=payload, timeout=10)
    assert response.status_code == 422 and response.json()["message"].startswith("invalid faults")
    assert server.faults.pending() == 0


def test_clear_forgets_events_and_requests(server: LocalDodoServer, http: requests.Session) -> None:
    post(http, server, [ev(1)])
    server.clear()
    assert (server.event_count(), server.events(), server.requests) == (0, [], [])
    assert post(http, server, [ev(1)]).status_code == 200 and server.event_count() == 1


# --- Python API and lifecycle -----------------------------------------------------------------------------


def test_events_filters_and_url_shape(server: LocalDodoServer, http: requests.Session) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
    post(http, server, [ev(1), ev(2, customer_id="cus_b"), ev(3, event_name="upload")])
    assert ids(server.events(customer_id="cus_b")) == ["evt_2"]
    assert ids(server.events(event_name="upload")) == ["evt_3"]
    assert ids(server.events(customer_id="cus_a", event_name="api_call")) == ["evt_1"]
    assert server.get_event("evt_3") is not None and server.get_event("nope") is None


def test_wait_for_events_times_out_false(server: LocalDodoServer) -> None:
    assert server.wait_for_events(0, timeout=0) is True
    assert server.wait_for_events(1, timeout=0.05) is False


def test_wait_for_events_wakes_when_another_thread_ingests(server: LocalDodoServer) -> None:
    results: list[int] = []

    def send() -> None:
        with requests.Session() as session:
            session.headers.update(AUTH)
            for batch in range(3):
                results.append(post(session, server, [ev(batch * 10 + i) for i in range(10)]).status_code)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        assert server.wait_for_events(30, timeout=30) is True
        assert server.event_count() == 30
    finally:
        sender.join(timeout=30)
    assert results == [200, 200, 200]


def test_events_persist_in_a_file_across_restarts(tmp_path: Path, http: requests.Session) -> None:
    db = str(tmp_path / "events.sqlite3")
    with LocalDodoServer(api_key=KEY, db_path=db) as first:
        assert post(http, first, [ev(1), ev(2, metadata={"n": 1})]).status_code == 200
    with LocalDodoServer(api_key=KEY, db_path=db) as second:
        assert second.event_count() == 2
        assert second.events()[1]["metadata"] == {"n": 1}
        assert post(http, second, [ev(2), ev(3)]).json() == {"ingested_count": 2}
        assert ids(second.events()) == ["evt_1", "evt_2", "evt_3"]
        assert second.wait_for_events(3, timeout=0)


def test_start_stop_restart_and_context_manager() -> None:
    srv = LocalDodoServer(api_key=KEY)
    with pytest.raises(RuntimeError):
        _ = srv.url
    srv.start()
    with pytest.raises(RuntimeError, match="already running"):
        srv.start()
    url = srv.url
    with requests.Session() as session:
        assert session.get(f"{url}/_local/stats", timeout=10).status_code == 200  # an idle keep-alive connection
        srv.stop()
        srv.stop()  # idempotent
        with pytest.raises(requests.ConnectionError):
            session.get(f"{url}/_local/stats", timeout=10)
    assert "stopped" in repr(srv)
    with pytest.raises(RuntimeError):
        srv.event_count()
    with srv:
        assert srv.running and srv.event_count() == 0
    assert not srv.running


def test_stop_interrupts_a_pending_delay() -> None:
    srv = LocalDodoServer(api_key=KEY).start()
    srv.add_faults(Fault(delay=300))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            requests.post(f"{srv.url}/events/ingest", json={"events": [ev(1)]}, headers=AUTH, timeout=60)
        except requests.RequestException as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert srv.faults.wait_until_empty(timeout=30)  # the handler took the fault and is waiting
    srv.stop()
    caller.join(timeout=30)
    assert not caller.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], requests.ConnectionError)


def test_the_server_is_quiet_unless_verbose_and_never_logs_the_key(capfd: pytest.CaptureFixture[str]) -> None:
    with LocalDodoServer(api_key=KEY) as quiet:
        requests.post(f"{quiet.url}/events/ingest", json={"events": [ev(1)]}, headers=AUTH, timeout=10)
        requests.get(f"{quiet.url}/nope", timeout=10)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    with LocalDodoServer(api_key=KEY, verbose=True) as loud:
        requests.post(f"{loud.url}/events/ingest", json={"events": [ev(1)]}, headers=AUTH, timeout=10)
        requests.get(f"{loud.url}/events?customer_id=x", headers={"Authorization": "Bearer leaked"}, timeout=10)
    out, err = capfd.readouterr()
    assert "POST /events/ingest" in err and "GET /events?customer_id=x" in err
    assert KEY not in out + err and "leaked" not in out + err


# --- command line -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
def test_the_cli_serves_until_sigterm_and_exits_0(tmp_path: Path) -> None:
    port = free_port()
    proc = run_cli(tmp_path, "--port", str(port), "--db", str(tmp_path / "cli.db"))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        assert url in line and f"export DODO_PAYMENTS_BASE_URL={url}" in line
        assert "API key required" in line and KEY not in line
        ok = requests.post(f"{url}/events/ingest", json={"events": [ev(1)]}, headers=AUTH, timeout=10)
        assert ok.status_code == 200
        assert requests.get(f"{url}/events", timeout=10).status_code == 401
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert KEY not in err
    assert (tmp_path / "cli.db").exists()


@pytest.mark.slow
def test_the_cli_without_a_key_says_any_key_is_accepted(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "--port", "0", "--db", ":memory:", key=None)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "any non-empty bearer key is accepted" in line
        match = re.search(r"DODO_PAYMENTS_BASE_URL=(http://127\.0\.0\.1:\d+)", line)
        assert match is not None
        response = requests.get(f"{match.group(1)}/events", headers={"Authorization": "Bearer x"}, timeout=10)
        assert response.status_code == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert not any(tmp_path.iterdir())  # :memory: left no file behind


def test_main_returns_1_when_the_port_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port), "--db", ":memory:"]) == 1
    assert "cannot start" in capsys.readouterr().err


def test_main_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit) as info:
        main(["--port", "not-a-port"])
    assert info.value.code == 2
