"""The dashboard's data (build_dashboard, UsageIndex, GET /_local/dashboard) and its static files."""

from __future__ import annotations

import configparser
import fnmatch
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from dodo_ingest.localserver import LocalDodoServer
from dodo_ingest.localserver.dashboard import UsageIndex, build_dashboard
from dodo_ingest.localserver.rules import NormalizedEvent, format_timestamp
from dodo_ingest.localserver.store import EventStore
from tests.localserver.conftest import AUTH

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "dodo_ingest" / "localserver" / "static"
NOW_US = 1_900_000_000 * 1_000_000  # a fixed "now" for the pure function


def event(
    seq: int,
    customer: str,
    seconds_ago: float,
    *,
    endpoint: str | None = "/api/v1/users/<int:user_id>",
    status: int | None = 200,
    ms: float | None = 10.0,
    name: str = "api_call",
    **extra: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"method": "GET", **extra}
    if endpoint is not None:
        metadata["endpoint"] = endpoint
    if status is not None:
        metadata["status_code"] = status
    if ms is not None:
        metadata["response_time_ms"] = ms
    ts = NOW_US - int(seconds_ago * 1_000_000)
    return {
        "seq": seq,
        "ts_us": ts,
        "event_id": f"evt_{seq}",
        "customer_id": customer,
        "event_name": name,
        "timestamp": format_timestamp(ts),
        "metadata": metadata,
    }


EVENTS = [
    event(1, "cus_a", 110, ms=5.0),
    event(2, "cus_a", 100, ms=15.0, status=404),
    event(3, "cus_b", 90, endpoint="/api/v1/search", ms=40.0),
    event(4, "cus_a", 60, endpoint="/api/v1/search", ms=20.0, status=500),
    event(5, "cus_c", 30, endpoint=None, status=None, ms=None, name="upload", bytes=2048),
    event(6, "cus_a", 10, ms=25.0, quantity=3),
    event(7, "cus_b", 1000, ms=7.0),  # outside the last 5 minutes
]


def test_totals_customers_and_endpoints() -> None:
    data = build_dashboard(EVENTS, [], now_us=NOW_US)
    assert data["totals"]["events"] == 7 and data["totals"]["customers"] == 3 and data["totals"]["endpoints"] == 2
    assert (data["totals"]["errors"], data["totals"]["error_rate"]) == (2, pytest.approx(2 / 7))
    customers = {c["customer_id"]: c for c in data["customers"]}
    assert [c["customer_id"] for c in data["customers"]] == ["cus_a", "cus_b", "cus_c"]  # most events first
    assert (customers["cus_a"]["events"], customers["cus_a"]["client_errors"], customers["cus_a"]["server_errors"]) == (
        4,
        1,
        1,
    )
    assert customers["cus_a"]["share"] == pytest.approx(4 / 7)
    assert (customers["cus_a"]["p50_ms"], customers["cus_a"]["p95_ms"]) == (15.0, 25.0)  # nearest rank of 5,15,20,25
    assert customers["cus_c"]["p50_ms"] is None and customers["cus_c"]["error_rate"] == 0.0
    endpoints = {(e["method"], e["endpoint"]): e for e in data["endpoints"]}
    users = endpoints[("GET", "/api/v1/users/<int:user_id>")]
    assert (users["events"], users["client_errors"], users["server_errors"], users["customers"]) == (4, 1, 0, 2)
    search = endpoints[("GET", "/api/v1/search")]
    assert (search["events"], search["error_rate"], search["p99_ms"]) == (2, 0.5, 40.0)


def test_the_series_counts_every_event_in_round_buckets() -> None:
    series = build_dashboard(EVENTS, [], now_us=NOW_US)["series"]
    assert series["bucket_seconds"] == 30  # 1000 s of events in at most 60 buckets
    assert sum(b["calls"] for b in series["buckets"]) == 7 and sum(b["errors"] for b in series["buckets"]) == 2
    assert all(b["t"] % 30_000 == 0 for b in series["buckets"])
    recent = build_dashboard(EVENTS, [], now_us=NOW_US, range_name="5m")
    assert recent["series"]["bucket_seconds"] == 5 and recent["totals"]["events"] == 6
    assert recent["range"]["start"] == format_timestamp(NOW_US - 300_000_000)
    assert build_dashboard([], [], now_us=NOW_US)["series"] == {"bucket_seconds": 1.0, "buckets": []}
    burst = [event(i, "cus_a", 2.0 - i / 10) for i in range(20)]  # two seconds of traffic: tenths of a second
    fine = build_dashboard(burst, [], now_us=NOW_US)["series"]
    assert fine["bucket_seconds"] == 0.1 and [b["calls"] for b in fine["buckets"]] == [1] * 20


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, [7, 6, 5, 4, 3, 2, 1]),  # ingestion order, newest first (evt_7 came last, with an old timestamp)
        ({"customer_id": "cus_a"}, [6, 4, 2, 1]),
        ({"event_name": "upload"}, [5]),
        ({"endpoint": "/api/v1/search"}, [4, 3]),
        ({"status": "error"}, [4, 2]),
        ({"status": "5xx"}, [4]),
        ({"status": "404"}, [2]),
        ({"status": "2xx", "customer_id": "cus_b"}, [7, 3]),
    ],
)
def test_latest_events_are_newest_first_and_filtered(filters: dict[str, str], expected: list[int]) -> None:
    data = build_dashboard(EVENTS, [], now_us=NOW_US, filters=filters)
    assert [int(e["event_id"].split("_")[1]) for e in data["latest"]] == expected
    assert data["filters"] == filters


def test_options_and_meters() -> None:
    meters = [
        {
            "id": "mtr_q",
            "name": "Items",
            "event_name": "api_call",
            "measurement_unit": "items",
            "aggregation": {"type": "sum", "key": "quantity"},
            "filter": None,
            "archived": False,
        }
    ]
    data = build_dashboard(EVENTS, meters, now_us=NOW_US, latest_limit=2)
    assert data["options"] == {
        "customers": ["cus_a", "cus_b", "cus_c"],
        "event_names": ["api_call", "upload"],
        "endpoints": ["/api/v1/search", "/api/v1/users/<int:user_id>"],
        "statuses": [200, 404, 500],
    }
    (meter,) = data["meters"]
    assert "archived" not in meter and meter["total"] == 3
    assert meter["customers"][0] == {"customer_id": "cus_a", "value": 3, "events": 4}
    assert len(data["latest"]) == 2


def stored(i: int, customer: str = "cus_a") -> NormalizedEvent:
    return NormalizedEvent(f"evt_{i}", customer, "api_call", NOW_US + i, {"n": i})


def test_the_index_reads_only_new_events_and_follows_clear() -> None:
    store = EventStore()
    index = UsageIndex(capacity=3)
    store.insert([stored(1), stored(2)])
    assert [e["event_id"] for e in index.refresh(store)] == ["evt_1", "evt_2"]
    store.insert([stored(3), stored(4)])
    held = index.refresh(store)
    assert [e["event_id"] for e in held] == ["evt_2", "evt_3", "evt_4"] and index.truncated
    assert held[-1]["metadata"] == {"n": 4} and held[-1]["ts_us"] == NOW_US + 4
    store.clear()
    store.insert([stored(9)])
    assert [e["event_id"] for e in index.refresh(store)] == ["evt_9"] and not index.truncated
    store.close()


# --- over HTTP --------------------------------------------------------------------------------------------


def iso(seconds_ago: float) -> str:
    moment = datetime.now(timezone.utc) - timedelta(seconds=seconds_ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_the_dashboard_data_follows_traffic(server: LocalDodoServer) -> None:
    def send(ids: range, customer: str, status: int) -> None:
        events = [
            {
                "event_id": f"evt_{i}",
                "customer_id": customer,
                "event_name": "api_call",
                "timestamp": iso(5),
                "metadata": {"endpoint": "/v1/x", "method": "GET", "status_code": status, "response_time_ms": 3},
            }
            for i in ids
        ]
        assert requests.post(f"{server.url}/events/ingest", json={"events": events}, headers=AUTH, timeout=10).ok

    send(range(3), "cus_a", 200)
    first = requests.get(f"{server.url}/_local/dashboard", timeout=10).json()
    assert first["totals"]["events"] == 3 and first["server"]["event_count"] == 3
    assert first["server"]["responses"] == {"POST /events/ingest": {"200": 1}}
    assert first["server"]["rate_limit"] is None and first["server"]["faults"] == []
    again = requests.get(f"{server.url}/_local/dashboard", timeout=10).json()
    assert again["totals"] == first["totals"] and again["meters"] == []
    meter = {"name": "Calls", "event_name": "api_call", "measurement_unit": "calls", "aggregation": {"type": "count"}}
    assert requests.post(f"{server.url}/meters", json=meter, headers=AUTH, timeout=10).status_code == 201
    with_meter = requests.get(f"{server.url}/_local/dashboard", timeout=10).json()
    assert [(m["name"], m["total"]) for m in with_meter["meters"]] == [("Calls", 3)]  # a new meter shows at once
    send(range(3, 8), "cus_b", 503)
    params = {"customer_id": "cus_b", "range": "15m"}
    second = requests.get(f"{server.url}/_local/dashboard", params=params, timeout=10).json()
    assert [c["customer_id"] for c in second["customers"]] == ["cus_b", "cus_a"]
    assert second["totals"]["server_errors"] == 5 and len(second["latest"]) == 5
    assert {e["customer_id"] for e in second["latest"]} == {"cus_b"}
    assert second["range"]["name"] == "15m"
    bad = requests.get(f"{server.url}/_local/dashboard", params={"range": "1y"}, timeout=10)
    assert bad.status_code == 422 and bad.json()["code"] == "INVALID_QUERY_PARAMS"
    server.clear()
    assert requests.get(f"{server.url}/_local/dashboard", timeout=10).json()["totals"]["events"] == 0


def test_the_page_and_its_files_are_served(server: LocalDodoServer) -> None:
    page = requests.get(f"{server.url}/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert 'src="/_local/static/dashboard.js"' in page.text and 'href="/_local/static/dashboard.css"' in page.text
    script = requests.get(f"{server.url}/_local/static/dashboard.js", timeout=10)
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8" and "/_local/dashboard" in script.text
    style = requests.get(f"{server.url}/_local/static/dashboard.css", timeout=10)
    assert style.headers["Content-Type"] == "text/css; charset=utf-8"
    assert requests.head(f"{server.url}/", timeout=10).headers["Content-Length"] == str(len(page.content))
    for name in ["../server.py", "..%2Fserver.py", "nope.js", ".hidden.css", "server.py", "static"]:
        assert requests.get(f"{server.url}/_local/static/{name}", timeout=10).status_code == 404, name


def test_the_page_needs_nothing_from_the_network() -> None:
    for path in STATIC.iterdir():
        urls = set(re.findall(r"\b(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`)]*", path.read_text(encoding="utf-8")))
        assert urls <= {"http://www.w3.org/2000/svg"}, (path.name, urls)  # the SVG namespace is a name, not a fetch


def test_every_static_file_ships_in_the_package() -> None:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    patterns = [p.strip() for p in config["options.package_data"]["dodo_ingest"].split(",")]
    for path in STATIC.iterdir():
        relative = path.relative_to(REPO / "dodo_ingest").as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative
