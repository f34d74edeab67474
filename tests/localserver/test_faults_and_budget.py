"""Fault injection on every Dodo route (with the headers Dodo's official SDKs read) and Dodo's request budget."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import dodopayments
import pytest
import requests
from dodopayments import DodoPayments

from dodo_ingest.localserver import Fault, LocalDodoServer, main
from dodo_ingest.localserver.faults import FaultQueue
from dodo_ingest.localserver.ratelimit import RateLimit, RateLimiter, parse_rate_limits
from tests.helpers import free_port
from tests.localserver.conftest import AUTH, KEY, run_cli

METER = {"name": "Calls", "event_name": "api_call", "measurement_unit": "calls", "aggregation": {"type": "count"}}


def ingest(http: requests.Session, server: LocalDodoServer, i: int = 1) -> requests.Response:
    event = {"event_id": f"evt_{i}", "customer_id": "cus_a", "event_name": "api_call"}
    return http.post(f"{server.url}/events/ingest", json={"events": [event]}, timeout=10)


# --- faults on every route --------------------------------------------------------------------------------


def test_a_fault_for_every_route_hits_reads_and_meters_too(server: LocalDodoServer, http: requests.Session) -> None:
    server.add_faults(Fault(status=503, route="*", repeat=4, retry_after="3"))
    answers = [
        http.get(f"{server.url}/events", timeout=10),
        http.post(f"{server.url}/meters", json=METER, timeout=10),
        http.get(f"{server.url}/events/evt_1", timeout=10),
        ingest(http, server),
    ]
    assert [(a.status_code, a.headers.get("Retry-After")) for a in answers] == [(503, "3")] * 4
    assert answers[1].json() == {"code": "SERVICE_UNAVAILABLE", "message": "injected fault: HTTP 503"}
    assert server.meters() == [] and server.event_count() == 0  # nothing was processed
    assert http.get(f"{server.url}/events", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/_local/stats", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("route", "hit", "spared"),
    [
        ("GET /events*", ("GET", "/events/evt_9"), ("POST", "/events/ingest")),
        ("/meters*", ("POST", "/meters"), ("GET", "/events")),
        ("DELETE /meters/*", ("DELETE", "/meters/mtr_x"), ("GET", "/meters/mtr_x")),
        ("POST /events/ingest", ("POST", "/events/ingest"), ("GET", "/events")),
    ],
)
def test_routes_pick_the_requests_a_fault_applies_to(route: str, hit: tuple[str, str], spared: tuple[str, str]) -> None:
    fault = Fault(status=500, route=route)
    assert fault.applies_to(*hit) and not fault.applies_to(*spared)


def test_faults_for_other_routes_wait_their_turn(server: LocalDodoServer, http: requests.Session) -> None:
    server.add_faults(Fault(status=502, route="GET /events"), Fault(status=500))
    assert ingest(http, server).status_code == 500  # the first fault for this route, not the head of the queue
    assert http.get(f"{server.url}/events", timeout=10).status_code == 502
    assert server.faults.pending() == 0


def test_the_headers_dodos_sdks_read(server: LocalDodoServer, http: requests.Session) -> None:
    server.add_faults(Fault(status=429, retry_after="2", retry_after_ms="1500", should_retry=True))
    limited = ingest(http, server)
    assert limited.status_code == 429
    assert (limited.headers["Retry-After"], limited.headers["retry-after-ms"]) == ("2", "1500")
    assert limited.headers["x-should-retry"] == "true"
    server.add_faults(Fault(should_retry=False, route="GET /events"))  # headers only: the request is processed
    plain = http.get(f"{server.url}/events", timeout=10)
    assert plain.status_code == 200 and plain.json() == {"items": []} and plain.headers["x-should-retry"] == "false"
    assert "x-should-retry" not in http.get(f"{server.url}/events", timeout=10).headers


def test_the_official_sdk_obeys_x_should_retry(server: LocalDodoServer) -> None:
    with DodoPayments(bearer_token=KEY, base_url=server.url, max_retries=2, timeout=10) as client:
        server.add_faults(Fault(status=503, should_retry=False, route="GET /meters", repeat=3))
        with pytest.raises(dodopayments.InternalServerError):
            client.meters.list()
        assert server.response_counts()["GET /meters"] == {"503": 1}  # told not to retry: one attempt only
        server.clear_faults()
        server.add_faults(Fault(status=400, should_retry=True, retry_after_ms="10", route="POST /meters"))
        created = client.meters.create(**METER)  # a 400 is never retried, unless the server says so
        assert created.name == "Calls"
        assert server.response_counts()["POST /meters"] == {"201": 1, "400": 1}


def test_process_then_misbehave_on_any_route(server: LocalDodoServer, http: requests.Session) -> None:
    server.add_faults(Fault(drop_connection=True, process=True, route="POST /meters"))
    with pytest.raises(requests.ConnectionError):
        http.post(f"{server.url}/meters", json=METER, timeout=10)
    assert [m["name"] for m in server.meters()] == ["Calls"]  # created, but the answer was lost
    server.add_faults(Fault(status=500, process=True, route="DELETE /meters/*"))
    meter_id = server.meters()[0]["id"]
    assert http.delete(f"{server.url}/meters/{meter_id}", timeout=10).status_code == 500
    assert server.meters() == [] and len(server.meters(archived=True)) == 1
    server.add_faults(Fault(status=200, process=True, route="GET /meters/*"))
    assert http.get(f"{server.url}/meters/{meter_id}", timeout=10).json()["id"] == meter_id
    server.add_faults(Fault(drop_connection=True, route="GET /events"))
    with pytest.raises(requests.ConnectionError):
        http.get(f"{server.url}/events", timeout=10)
    assert server.response_counts()["GET /events"] == {"0": 1}


def test_a_delay_applies_to_reads_as_well(server: LocalDodoServer, http: requests.Session) -> None:
    server.add_faults(Fault(delay=30.0, route="GET /events"))
    with pytest.raises(requests.exceptions.ReadTimeout):
        http.get(f"{server.url}/events", timeout=(5, 0.2))


def test_repeat_none_lasts_until_cleared_and_probability_spares_requests(
    server: LocalDodoServer, http: requests.Session
) -> None:
    server.add_faults(Fault(status=503, repeat=None))
    assert [ingest(http, server, i).status_code for i in range(5)] == [503] * 5
    assert server.faults.pending() == -1
    assert requests.get(f"{server.url}/_local/faults", timeout=10).json()["items"][0]["remaining"] is None
    server.clear_faults()
    server.add_faults(Fault(status=503, probability=0.0, repeat=2))
    assert [ingest(http, server, i).status_code for i in range(5)] == [200] * 5
    assert server.faults.pending() == 2  # a spared request does not use up a repeat


def test_a_failure_rate_fails_about_that_fraction() -> None:
    queue = FaultQueue(rng=random.Random(7))
    queue.add(Fault(status=503, probability=0.25, repeat=None))
    failed = sum(queue.take("POST", "/events/ingest") is not None for _ in range(2000))
    assert 400 < failed < 600


@pytest.mark.parametrize(
    "kwargs",
    [
        {"retry_after_ms": 10},
        {"should_retry": "yes"},
        {"route": ""},
        {"probability": 1.5},
        {"probability": True},
        {"repeat": 0},
        {"retry_after": "1\r\nX-Evil: 1"},
    ],
)
def test_invalid_new_fault_fields_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="Fault"):
        Fault(**kwargs)


def test_local_faults_round_trip_with_the_new_fields(server: LocalDodoServer) -> None:
    fault = {"status": 503, "route": "*", "repeat": None, "retry_after_ms": "250", "probability": 0.5}
    assert requests.post(f"{server.url}/_local/faults", json=fault, timeout=10).json() == {"queued": 1}
    (listed,) = requests.get(f"{server.url}/_local/faults", timeout=10).json()["items"]
    assert {k: listed[k] for k in fault} == fault and listed["remaining"] is None


# --- the request budget -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "limits"),
    [
        ("100/minute", (RateLimit(100, 60.0),)),
        ("100/minute,10/second", (RateLimit(100, 60.0), RateLimit(10, 1.0))),
        ("5/10s", (RateLimit(5, 10.0),)),
        ("1000 per hour", (RateLimit(1000, 3600.0),)),
        (" 3 / Minutes ", (RateLimit(3, 60.0),)),
    ],
)
def test_rate_limits_parse(text: str, limits: tuple[RateLimit, ...]) -> None:
    assert parse_rate_limits(text) == limits
    assert parse_rate_limits(",".join(str(limit) for limit in limits)) == limits


@pytest.mark.parametrize("text", ["100", "100/fortnight", "0/minute", "x/minute", "", "10/0s"])
def test_bad_rate_limits_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        parse_rate_limits(text)


def test_the_window_slides_and_keys_have_their_own_budget() -> None:
    now = [1000.0]
    limiter = RateLimiter(parse_rate_limits("3/10s,2/second"), clock=lambda: now[0])
    assert [limiter.acquire("key-a") for _ in range(2)] == [None, None]
    assert limiter.acquire("key-a") == pytest.approx(1.0)  # the burst limit
    assert limiter.acquire("key-b") is None  # another key, another budget
    now[0] += 1.0
    assert limiter.acquire("key-a") is None
    assert limiter.acquire("key-a") == pytest.approx(9.0)  # 3 in any 10 s: the first slot frees at t=1010
    now[0] += 9.0
    assert limiter.acquire("key-a") is None
    assert limiter.refused == 2
    assert [RateLimiter.retry_after(wait) for wait in (0.2, 9.0, 9.01)] == ["1", "9", "10"]


def test_requests_over_the_budget_get_429_with_retry_after(http: requests.Session) -> None:
    with LocalDodoServer(rate_limit="3/minute") as server:  # any key accepted: two keys, two budgets
        assert [ingest(http, server, i).status_code for i in range(2)] == [200, 200]
        assert http.get(f"{server.url}/events", timeout=10).status_code == 200  # reads use the budget too
        refused = ingest(http, server, 3)
        assert refused.status_code == 429 and refused.json()["code"] == "TOO_MANY_REQUESTS"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60 and "3/minute" in refused.json()["message"]
        assert server.event_count() == 2 and server.requests[-1].status == 429
        assert http.get(f"{server.url}/meters", timeout=10).status_code == 429
        other = requests.get(f"{server.url}/events", headers={"Authorization": "Bearer sk_other"}, timeout=10)
        assert other.status_code == 200
        assert requests.get(f"{server.url}/_local/stats", timeout=10).status_code == 200  # controls: never limited
        assert requests.get(f"{server.url}/", timeout=10).status_code == 200
        assert requests.get(f"{server.url}/events", timeout=10).status_code == 401  # auth comes first
        assert server.response_counts()["POST /events/ingest"] == {"200": 2, "429": 1}


def test_the_official_sdk_sees_the_budget(server: LocalDodoServer) -> None:
    server.set_rate_limit("1/minute")
    with DodoPayments(bearer_token=KEY, base_url=server.url, max_retries=0) as client:
        client.meters.list()
        with pytest.raises(dodopayments.RateLimitError) as info:
            client.meters.list()
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_the_budget_is_set_from_local(server: LocalDodoServer, http: requests.Session) -> None:
    url = f"{server.url}/_local/rate-limit"
    assert requests.get(url, timeout=10).json() == {"rate_limit": None, "refused": 0}
    assert requests.put(url, json={"rate_limit": "1/hour"}, timeout=10).json() == {"rate_limit": "1/hour", "refused": 0}
    assert [ingest(http, server, i).status_code for i in range(2)] == [200, 429]
    assert requests.get(url, timeout=10).json() == {"rate_limit": "1/hour", "refused": 1}
    for bad in ({"rate_limit": "lots"}, {"rate_limit": 5}, {"limit": "1/hour"}, [1]):
        response = requests.put(url, json=bad, timeout=10)
        assert response.status_code == 422 and "invalid rate limit" in response.json()["message"], bad
    assert requests.delete(url, timeout=10).json()["rate_limit"] is None
    assert ingest(http, server, 3).status_code == 200
    with pytest.raises(ValueError, match="rate limit"):
        server.set_rate_limit("2/fortnight")


# --- the command line -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [["--fault", "{bad"], ["--fault", '{"colour": 1}'], ["--rate-limit", "5/fortnight"], ["--fault-rate", "2"]],
)
def test_serve_rejects_bad_fault_and_budget_options(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--port", "0", "--db", ":memory:"])
    assert info.value.code == 2
    assert argv[0] in capsys.readouterr().err


@pytest.mark.slow
def test_serve_takes_a_budget_and_faults_from_the_command_line(tmp_path: Path) -> None:
    port = free_port()
    fault = json.dumps({"status": 503, "route": "GET /events", "retry_after_ms": "100"})
    argv = ["--port", str(port), "--db", ":memory:", "--rate-limit", "3/minute", "--fault", fault]
    proc = run_cli(tmp_path, *argv)
    try:
        assert proc.stdout is not None
        url = f"http://127.0.0.1:{port}"
        first, second = proc.stdout.readline(), proc.stdout.readline()
        assert "request budget 3/minute per key" in first and "1 fault(s) queued" in first
        assert second.startswith(f"Dashboard: {url}/")
        assert "<title>" in requests.get(f"{url}/", timeout=10).text
        with requests.Session() as session:
            session.headers.update(AUTH)
            read = session.get(f"{url}/events", timeout=10)
            assert read.status_code == 503 and read.headers["retry-after-ms"] == "100"
            event = {"event_id": "evt_1", "customer_id": "cus_a", "event_name": "api_call"}
            statuses = [session.post(f"{url}/events/ingest", json={"events": [event]}, timeout=10) for _ in range(4)]
        assert [r.status_code for r in statuses] == [200, 200, 200, 429]  # the faulted read used no budget
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


@pytest.mark.slow
def test_serve_with_a_failure_rate(tmp_path: Path) -> None:
    port = free_port()
    argv = ["--port", str(port), "--db", ":memory:", "--fault-rate", "1", "--fault-status", "502"]
    proc = run_cli(tmp_path, *argv, key=None)
    try:
        assert proc.stdout is not None
        assert "1 fault(s) queued" in proc.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        answers = [requests.get(f"{url}/meters", headers=AUTH, timeout=10) for _ in range(3)]
        assert [(a.status_code, a.headers["Retry-After"]) for a in answers] == [(502, "1")] * 3
        (listed,) = requests.get(f"{url}/_local/faults", timeout=10).json()["items"]
        assert (listed["route"], listed["remaining"], listed["probability"]) == ("*", None, 1.0)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 0
