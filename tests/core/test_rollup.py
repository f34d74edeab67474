"""Rollups (``rollup_interval``): one event per customer, endpoint, method, status class and window.

The proof that matters: the Sum meter over ``calls`` that the README tells users to create, evaluated by the local
Dodo server over what it stored, equals the number of requests served, per customer and endpoint; and a rollup
sent twice (an answer lost after Dodo stored it) is counted once.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import requests

from dodo_ingest import Ingestion
from dodo_ingest.errors import ConfigurationError
from dodo_ingest.localserver import Fault, LocalDodoServer
from dodo_ingest.rollup import Rollups, status_class
from dodo_ingest.wsgi import DodoIngestMiddleware, set_customer
from tests.conftest import TEST_KEY
from tests.helpers import wait_until
from tests.wsgi_tests.test_middleware import make_environ, serve

INTERVAL = 60.0


class _Facts:
    def __init__(
        self,
        endpoint: str = "/items",
        method: str = "GET",
        status: int = 200,
        duration: float = 0.010,
        request_bytes: int | None = 10,
        response_bytes: int | None = 100,
        cost: int | None = None,
    ) -> None:
        self.endpoint, self.method, self.status_code, self.duration = endpoint, method, status, duration
        self.request_bytes, self.response_bytes, self.cost = request_bytes, response_bytes, cost


def by_key(rollups: Iterable[Any]) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    return {
        (r.customer_id, r.metadata["endpoint"], r.metadata["method"], r.metadata["status_class"]): r for r in rollups
    }


# --- the accumulator ------------------------------------------------------------------------------------


def test_a_window_sums_and_maxima_per_customer_endpoint_method_and_status_class() -> None:
    rollups = Rollups(INTERVAL)
    t0 = 1_800_000_000.0  # a multiple of 60
    assert rollups.fold("cus_a", "api_call", _Facts(duration=0.010, request_bytes=5, response_bytes=50), t0 + 1)
    assert not rollups.fold("cus_a", "api_call", _Facts(duration=0.030, request_bytes=7, response_bytes=None), t0 + 2)
    rollups.fold("cus_a", "api_call", _Facts(status=404, duration=0.002), t0 + 3)
    rollups.fold("cus_a", "api_call", _Facts(status=503, cost=3), t0 + 4)
    rollups.fold("cus_a", "api_call", _Facts(status=502, cost=2), t0 + 5)
    rollups.fold("cus_b", "api_call", _Facts(method="POST"), t0 + 6)
    assert rollups.pending == 6
    assert rollups.due_in(t0 + 10) == pytest.approx(INTERVAL - 10)
    assert rollups.close(t0 + 59.9) == []  # not over yet

    closed = by_key(rollups.close(t0 + INTERVAL))
    assert rollups.pending == 0 and rollups.folded == 6 and rollups.due_in(t0 + INTERVAL) is None
    assert set(closed) == {
        ("cus_a", "/items", "GET", "2xx"),
        ("cus_a", "/items", "GET", "4xx"),
        ("cus_a", "/items", "GET", "5xx"),
        ("cus_b", "/items", "POST", "2xx"),
    }
    ok = closed["cus_a", "/items", "GET", "2xx"]
    assert ok.created == t0 and ok.event_name == "api_call"
    assert ok.metadata == {
        "endpoint": "/items",
        "method": "GET",
        "status_class": "2xx",
        "calls": 2,
        "errors": 0,
        "response_time_ms_sum": 40.0,
        "response_time_ms_max": 30.0,
        "request_bytes_sum": 12,
        "request_bytes_max": 7,
        "response_bytes_sum": 50,
        "response_bytes_max": 50,
        "window_seconds": INTERVAL,
    }
    failed = closed["cus_a", "/items", "GET", "5xx"].metadata
    assert (failed["calls"], failed["errors"], failed["cost"]) == (2, 2, 5)
    assert closed["cus_a", "/items", "GET", "4xx"].metadata["errors"] == 1
    assert len({r.event_id for r in closed.values()}) == 4


def test_status_classes() -> None:
    assert [status_class(s) for s in (101, 200, 204, 302, 404, 599)] == ["1xx", "2xx", "2xx", "3xx", "4xx", "5xx"]
    assert [status_class(s) for s in (0, 99, 600, None, "200")] == ["other"] * 5


def test_windows_are_aligned_and_a_late_request_joins_the_next_window_not_a_closed_one() -> None:
    rollups = Rollups(INTERVAL)
    t0 = 1_800_000_000.0
    rollups.fold("cus_a", "api_call", _Facts(), t0 + 59)
    rollups.fold("cus_a", "api_call", _Facts(), t0 + 61)  # the next window
    first = rollups.close(t0 + INTERVAL)
    assert [(r.created, r.metadata["calls"]) for r in first] == [(t0, 1)]
    rollups.fold("cus_a", "api_call", _Facts(), t0 + 58)  # its window has been sent: it joins the open one
    second = rollups.close(t0 + 2 * INTERVAL)
    assert [(r.created, r.metadata["calls"]) for r in second] == [(t0 + INTERVAL, 2)]
    assert first[0].event_id != second[0].event_id


def test_an_early_close_starts_a_new_part_with_its_own_id() -> None:
    """flush() closes the open window early; what follows in the same window must not reuse its ids, or Dodo
    would ignore the second part as a duplicate (lost calls)."""
    rollups = Rollups(INTERVAL)
    t0 = 1_800_000_000.0
    rollups.fold("cus_a", "api_call", _Facts(), t0 + 1)
    part0 = rollups.close()
    rollups.fold("cus_a", "api_call", _Facts(), t0 + 2)
    rollups.fold("cus_a", "api_call", _Facts(), t0 + 3)
    part1 = rollups.close()
    assert [r.metadata["calls"] for r in part0 + part1] == [1, 2]
    assert part0[0].created == part1[0].created == t0
    assert part0[0].event_id != part1[0].event_id


def test_ids_differ_between_processes_and_keys() -> None:
    t0 = 1_800_000_000.0
    ids = []
    for _ in range(2):  # two processes (each Rollups has its own random token)
        rollups = Rollups(INTERVAL)
        for customer in ("cus_a", "cus_b"):
            rollups.fold(customer, "api_call", _Facts(), t0)
        ids += [r.event_id for r in rollups.close(t0 + INTERVAL)]
    assert len(set(ids)) == 4 and all(i.startswith("rlp_") and len(i) == 44 for i in ids)


def test_folds_racing_closes_lose_nothing_and_never_reuse_an_id() -> None:
    """Request threads fold while the flush thread closes windows (on time, and early for flushes): every request
    is in exactly one rollup, and no two rollups share an id (Dodo would ignore the second: lost calls)."""
    rollups = Rollups(1.0)
    t0 = 1_800_000_000.0
    folds_per_thread, threads = 20_000, 4
    clock = [t0]
    done = threading.Event()
    closed: list[Any] = []

    def request_thread(n: int) -> None:
        for i in range(folds_per_thread):
            now = clock[0]
            rollups.fold(f"cus_{i % 7}", "api_call", _Facts(status=200 + 100 * (i % 4)), now)

    def flush_thread() -> None:
        step = 0
        while not done.is_set():
            step += 1
            clock[0] += 0.01
            closed.extend(rollups.close(None) if step % 5 == 0 else rollups.close(clock[0]))

    workers = [threading.Thread(target=request_thread, args=(n,)) for n in range(threads)]
    closer = threading.Thread(target=flush_thread)
    closer.start()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    done.set()
    closer.join()
    closed.extend(rollups.close(None))
    assert sum(r.metadata["calls"] for r in closed) == folds_per_thread * threads
    assert len({r.event_id for r in closed}) == len(closed)
    assert rollups.pending == 0


def test_after_a_stop_folds_are_refused() -> None:
    rollups = Rollups(INTERVAL)
    rollups.fold("cus_a", "api_call", _Facts(), 1_800_000_000.0)
    assert len(rollups.close(stop=True)) == 1
    assert rollups.fold("cus_a", "api_call", _Facts(), 1_800_000_001.0) is None
    assert rollups.pending == 0


def test_rollup_interval_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="rollup_interval"):
        Ingestion(api_key=TEST_KEY, rollup_interval=0.5)
    with pytest.raises(ConfigurationError, match="milliseconds"):
        Ingestion(api_key=TEST_KEY, rollup_interval=60_000)
    with pytest.raises(ConfigurationError, match="sync_mode"):
        Ingestion(api_key=TEST_KEY, rollup_interval=60, sync_mode=True)


# --- end to end, against the local Dodo server ----------------------------------------------------------

ROUTES = {"/items": 200, "/items/missing": 404, "/report": 500, "/upload": 201}


def rolled_up_app(ingestion: Ingestion) -> DodoIngestMiddleware:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        set_customer(environ, environ["HTTP_X_TEST_CUSTOMER"])
        status = ROUTES[environ["PATH_INFO"]]
        start_response(f"{status} X", [("Content-Type", "text/plain")])
        return [b"x" * status]

    return DodoIngestMiddleware(app, ingestion, route_resolver=lambda environ, status: environ["PATH_INFO"])


def create_sum_meter(server: LocalDodoServer, endpoint: str | None = None) -> str:
    body: dict[str, Any] = {
        "name": f"API calls {endpoint or ''}".strip(),
        "event_name": "api_call",
        "measurement_unit": "calls",
        "aggregation": {"type": "sum", "key": "calls"},
    }
    if endpoint is not None:
        body["filter"] = {
            "conjunction": "and",
            "clauses": [{"key": "endpoint", "operator": "equals", "value": endpoint}],
        }
    answer = requests.post(
        f"{server.url}/meters", json=body, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=10
    )
    assert answer.status_code == 201, answer.text
    meter_id: str = answer.json()["id"]
    return meter_id


def billed(server: LocalDodoServer, meter_id: str) -> dict[str, float]:
    usage = requests.get(f"{server.url}/_local/usage", params={"meter_id": meter_id}, timeout=10).json()
    return {c["customer_id"]: c["value"] for c in usage["items"][0]["customers"]}


def serve_traffic(app: DodoIngestMiddleware, n: int, seed: int = 7) -> Counter[tuple[str, str]]:
    rng = random.Random(seed)
    served: Counter[tuple[str, str]] = Counter()
    for _ in range(n):
        customer, path = rng.choice(["cus_a", "cus_b", "cus_c"]), rng.choice(list(ROUTES))
        serve(app, make_environ(path, HTTP_X_TEST_CUSTOMER=customer))
        served[customer, path] += 1
    return served


def test_the_sum_over_rollups_equals_the_requests_served_per_customer_and_endpoint(
    dodo_server: LocalDodoServer, make_ingestion: Callable[..., Ingestion]
) -> None:
    ingestion = make_ingestion(rollup_interval=INTERVAL)
    app = rolled_up_app(ingestion)
    meters = {path: create_sum_meter(dodo_server, path) for path in ROUTES}
    everything = create_sum_meter(dodo_server)

    served = serve_traffic(app, 900)
    assert ingestion.flush(timeout=10)
    stats = ingestion.batcher.stats()
    assert stats.rolled_up == 900 and stats.rolling == 0 and stats.dropped_total == 0

    stored = dodo_server.events()
    assert len(stored) == stats.sent <= 3 * len(ROUTES)  # one event per key, not one per request
    for path, meter_id in meters.items():
        assert billed(dodo_server, meter_id) == {c: n for (c, p), n in served.items() if p == path}
    totals: Counter[str] = Counter()
    for (customer, _), n in served.items():
        totals[customer] += n
    assert billed(dodo_server, everything) == dict(totals)
    errors = sum(e["metadata"]["errors"] for e in stored)
    assert errors == sum(n for (_, p), n in served.items() if ROUTES[p] >= 400)


def test_a_flush_between_two_bursts_sends_the_window_in_two_parts_that_both_count(
    dodo_server: LocalDodoServer, make_ingestion: Callable[..., Ingestion]
) -> None:
    ingestion = make_ingestion(rollup_interval=900)
    app = rolled_up_app(ingestion)
    meter = create_sum_meter(dodo_server)
    first = serve_traffic(app, 50)
    assert ingestion.flush(timeout=10)
    second = serve_traffic(app, 70, seed=9)
    assert ingestion.flush(timeout=10)
    totals: Counter[str] = Counter()
    for (customer, _), n in (first + second).items():
        totals[customer] += n
    assert billed(dodo_server, meter) == dict(totals)
    assert len({e["timestamp"] for e in dodo_server.events()}) == 1  # one window, two parts


def test_a_rollup_whose_answer_was_lost_is_resent_and_counted_once(
    dodo_server: LocalDodoServer, make_ingestion: Callable[..., Ingestion]
) -> None:
    ingestion = make_ingestion(rollup_interval=INTERVAL)
    app = rolled_up_app(ingestion)
    meter = create_sum_meter(dodo_server)
    # Dodo stores the request, then the answer is lost (a 503): the batcher sends the same rollups again.
    dodo_server.add_faults(
        Fault(status=503, process=True, repeat=1), Fault(drop_connection=True, process=True, repeat=1)
    )
    served = serve_traffic(app, 200)
    assert ingestion.flush(timeout=30)
    sent = dodo_server.requests  # every POST /events/ingest
    assert [r.status for r in sent] == [503, 0, 200]
    assert sent[0].event_ids == sent[1].event_ids == sent[2].event_ids  # the same rollups, the same ids
    totals: Counter[str] = Counter()
    for (customer, _), n in served.items():
        totals[customer] += n
    assert billed(dodo_server, meter) == dict(totals)


def test_a_window_is_sent_when_it_ends_without_a_flush(
    dodo_server: LocalDodoServer, make_ingestion: Callable[..., Ingestion]
) -> None:
    ingestion = make_ingestion(rollup_interval=1.0, flush_interval=0.2)
    app = rolled_up_app(ingestion)
    served = serve_traffic(app, 40)

    def calls() -> int:
        return sum(e["metadata"]["calls"] for e in dodo_server.events())

    assert wait_until(lambda: calls() == 40, timeout=10.0)
    assert ingestion.batcher.stats().rolling == 0 and sum(served.values()) == 40


def test_shutdown_sends_the_open_window_and_later_requests_are_counted_refusals(
    dodo_server: LocalDodoServer,
) -> None:
    ingestion = Ingestion(api_key=TEST_KEY, base_url=dodo_server.url, rollup_interval=900)
    app = rolled_up_app(ingestion)
    serve_traffic(app, 30)
    assert ingestion.shutdown(timeout=10)
    assert sum(e["metadata"]["calls"] for e in dodo_server.events()) == 30
    serve_traffic(app, 2)
    assert ingestion.batcher.stats().dropped == {"shutdown": 2}


def test_explicit_events_are_not_rolled_up(
    dodo_server: LocalDodoServer, make_ingestion: Callable[..., Ingestion]
) -> None:
    ingestion = make_ingestion(rollup_interval=INTERVAL)
    ingestion.batcher.add("cus_a", {"tokens": 5}, event_name="llm_call")
    serve(rolled_up_app(ingestion), make_environ("/items", HTTP_X_TEST_CUSTOMER="cus_a"))
    assert ingestion.flush(timeout=10)
    by_name = {e["event_name"]: e["metadata"] for e in dodo_server.events()}
    assert by_name["llm_call"] == {"tokens": 5}
    assert by_name["api_call"]["calls"] == 1


def test_rollups_go_through_the_spool(
    dodo_server: LocalDodoServer, make_ingestion: Callable[..., Ingestion], tmp_path: Any
) -> None:
    ingestion = make_ingestion(rollup_interval=INTERVAL, spool_dir=str(tmp_path / "spool"))
    served = serve_traffic(rolled_up_app(ingestion), 100)
    assert ingestion.flush(timeout=20)
    assert sum(e["metadata"]["calls"] for e in dodo_server.events()) == sum(served.values())
    assert ingestion.batcher.stats().spooled == len(dodo_server.events())
