"""The delivery policy, driven by a scripted fake transport (integration tests cover the same over HTTP)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import pytest

from dodo_ingest.config import Config
from dodo_ingest.delivery import Deliverer, DeliveryFailure, Pending, backoff
from dodo_ingest.events import MAX_EVENT_AGE, Event
from dodo_ingest.stats import Counters
from dodo_ingest.transport import Answer, parse_retry_after


class FakeTransport:
    """Answers from a script, or with ``rule(event_ids)``; records every body."""

    def __init__(self, script: list[Answer] | None = None, rule: Callable[[list[str]], Answer] | None = None) -> None:
        self.script = list(script or [])
        self.rule = rule
        self.bodies: list[list[str]] = []

    def post(self, body: bytes, timeout: float | None = None) -> Answer:
        ids = [e["event_id"] for e in json.loads(body)["events"]]
        self.bodies.append(ids)
        if self.script:
            return self.script.pop(0)
        return self.rule(ids) if self.rule else Answer(200)

    def close(self) -> None:
        pass


def pending(n: int, created: float | None = None) -> list[Pending]:
    events = [Event.create("cus_1", "api_call", {"i": i}, event_id=f"e{i}") for i in range(n)]
    return [Pending(i + 1, e.to_json(), created if created is not None else e.created) for i, e in enumerate(events)]


class RecordingWaiter:
    """Records every wait instead of waiting; ``allow`` False plays a shutdown deadline that has come."""

    def __init__(self, sleeps: list[float], allow: bool, mandated: list[bool]) -> None:
        self.sleeps, self.allow, self.mandated = sleeps, allow, mandated

    def wait(self, seconds: float, mandated: bool) -> bool:
        self.sleeps.append(seconds)
        self.mandated.append(mandated)
        return self.allow

    def time_left(self) -> float | None:
        return None


def deliverer(
    transport: FakeTransport,
    sleeps: list[float] | None = None,
    allow_sleep: bool = True,
    mandated: list[bool] | None = None,
    **settings: object,
) -> tuple[Deliverer, Counters]:
    counters = Counters()
    waiter = RecordingWaiter(
        sleeps if sleeps is not None else [], allow_sleep, mandated if mandated is not None else []
    )
    config = Config.load({"api_key": "k", **settings})
    return Deliverer(config, transport, counters, waiter), counters


@pytest.mark.parametrize("status", [None, 408, 409, 429, 500, 502, 503, 504])
def test_retryable_answers_are_retried_with_the_same_ids(status: int | None) -> None:
    transport = FakeTransport([Answer(status, "boom"), Answer(status, "boom")])
    d, counters = deliverer(transport)
    assert d.deliver(pending(3)) == []
    assert transport.bodies == [["e0", "e1", "e2"]] * 3
    assert (counters.sent, counters.retried, counters.requests) == (3, 2, 3)


def test_retry_after_is_honoured_with_a_little_jitter_and_backoff_has_a_floor() -> None:
    sleeps: list[float] = []
    mandated: list[bool] = []
    transport = FakeTransport([Answer(429, "slow down", retry_after=7.0), Answer(503), Answer(503)])
    d, _ = deliverer(transport, sleeps, mandated=mandated)
    d.deliver(pending(1))
    assert 7.0 <= sleeps[0] <= 7.7
    assert 0.5 <= sleeps[1] <= 0.5 * 2  # attempt 1: between half and all of 1 s
    assert 1.0 <= sleeps[2] <= 0.5 * 4  # attempt 2
    assert mandated == [True, False, False]  # only the server's wait is one flush() must not cut short
    assert all(min(15.0, 0.25 * 2**n) <= backoff(n) <= 30.0 for n in range(40))


@pytest.mark.parametrize("retry_after", [0.0, 0.001])
def test_retry_after_zero_never_makes_a_tight_loop(retry_after: float) -> None:
    """Item 6: ``Retry-After: 0`` (or a date in the past, which parses as 0) waits at least our backoff,
    growing with every attempt: 20 attempts cost minutes, not milliseconds."""
    sleeps: list[float] = []
    transport = FakeTransport(rule=lambda ids: Answer(429, "slow down", retry_after=retry_after))
    d, _ = deliverer(transport, sleeps, max_retry_time=3000.0)
    transport.script = []
    calls = 0

    def rule(ids: list[str]) -> Answer:
        nonlocal calls
        calls += 1
        return Answer(429, "slow down", retry_after=retry_after) if calls <= 20 else Answer(200)

    transport.rule = rule
    assert d.deliver(pending(1)) == []
    assert len(sleeps) == 20
    assert all(wait >= 0.25 for wait in sleeps)
    assert sum(sleeps) >= 60.0  # the floor doubles: ~0.25+0.5+1+... capped at 15-30 s per wait
    assert parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # a date in the past


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999"])
def test_retry_after_that_is_not_a_finite_number_is_ignored(value: str) -> None:
    """Item 17: ``Retry-After: nan`` once wedged the send stage at 100 % CPU; now the backoff decides."""
    assert parse_retry_after({"Retry-After": value}) is None
    assert parse_retry_after({"retry-after-ms": value}) is None
    assert parse_retry_after({"retry-after-ms": value, "Retry-After": "2"}) == 2.0


def test_x_should_retry_from_the_server_wins_over_the_status() -> None:
    assert Answer(400, should_retry=True).retryable
    assert not Answer(503, should_retry=False).retryable
    assert not Answer(401, should_retry=True).retryable  # a bad key is never retried


def test_retry_after_parsing_seconds_http_date_ms_and_cap() -> None:
    now = 1_800_000_000.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 12))
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"Retry-After": date}, now=now) == pytest.approx(12.0)
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"Retry-After": "3600"}) == 60.0
    assert parse_retry_after({"Retry-After": "soon"}) is None


def test_retries_stop_after_max_retry_time() -> None:
    transport = FakeTransport(rule=lambda ids: Answer(500, "down"))
    d, counters = deliverer(transport, max_retry_time=0.0)
    drops = d.deliver(pending(2))
    assert [(x.reason, len(x.events)) for x in drops] == [("retries_exhausted", 2)]
    assert counters.dropped == {"retries_exhausted": 2}
    assert counters.sent == 0


def test_400_splits_to_deliver_the_good_events_and_isolate_the_bad_one() -> None:
    transport = FakeTransport(rule=lambda ids: Answer(400, "bad event") if "e5" in ids else Answer(200))
    d, counters = deliverer(transport)
    drops = d.deliver(pending(8))
    assert [json.loads(p.json)["event_id"] for x in drops for p in x.events] == ["e5"]
    assert drops[0].reason == "rejected" and "bad event" in drops[0].message
    assert counters.sent == 7
    delivered = [i for body in transport.bodies[1:] for i in body]
    assert sorted(set(delivered) - {"e5"}) == [f"e{i}" for i in range(8) if i != 5]


def test_a_request_that_is_bad_as_a_whole_costs_three_posts_not_2n_minus_1() -> None:
    """Item 7: when both halves fail the same way as the whole, the request itself is bad: stop bisecting."""
    transport = FakeTransport(rule=lambda ids: Answer(400, "HTTP 400: request body is not valid"))
    d, counters = deliverer(transport)
    drops = d.deliver(pending(1000))
    assert len(transport.bodies) == 3
    assert [(x.reason, len(x.events)) for x in drops] == [("rejected", 1000)]
    assert "the request itself was rejected" in drops[0].message
    assert counters.dropped == {"rejected": 1000}


def test_one_bad_event_among_1000_costs_about_2_log2_n_posts() -> None:
    transport = FakeTransport(
        rule=lambda ids: (
            Answer(400, f"HTTP 400: events[{ids.index('e617')}] is invalid") if "e617" in ids else Answer(200)
        )
    )
    d, counters = deliverer(transport)
    drops = d.deliver(pending(1000))
    assert [json.loads(p.json)["event_id"] for x in drops for p in x.events] == ["e617"]
    assert counters.sent == 999
    assert len(transport.bodies) <= 1 + 2 * 10


def test_413_splits_until_requests_fit() -> None:
    transport = FakeTransport(rule=lambda ids: Answer(413, "too big") if len(ids) > 2 else Answer(200))
    d, counters = deliverer(transport)
    assert d.deliver(pending(8)) == []
    assert counters.sent == 8
    accepted = [i for body in transport.bodies if len(body) <= 2 for i in body]
    assert sorted(accepted) == [f"e{i}" for i in range(8)]  # each delivered exactly once, in requests that fit


def test_a_single_event_answered_413_is_dropped_as_too_large() -> None:
    d, counters = deliverer(FakeTransport(rule=lambda ids: Answer(413)))
    assert [x.reason for x in d.deliver(pending(1))] == ["too_large"]
    assert counters.dropped == {"too_large": 1}


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_not_retried_and_logged_loudly_once(status: int, caplog: pytest.LogCaptureFixture) -> None:
    errors: list[DeliveryFailure] = []
    transport = FakeTransport(rule=lambda ids: Answer(status, f"HTTP {status}"))
    d, counters = deliverer(transport, on_error=errors.append)
    with caplog.at_level(logging.ERROR, logger="dodo_ingest"):
        d.deliver(pending(3))
        d.deliver(pending(3))
    assert len(transport.bodies) == 2
    assert counters.dropped == {"unauthorized": 6}
    auth_logs = [r for r in caplog.records if "rejected the API key" in r.getMessage()]
    assert len(auth_logs) == 1 and "test_mode" in auth_logs[0].getMessage()
    assert [e.will_retry for e in errors] == [False, False]


def test_expired_events_are_dropped_before_sending() -> None:
    transport = FakeTransport()
    d, counters = deliverer(transport)
    old = pending(2, created=time.time() - MAX_EVENT_AGE - 5)
    fresh = pending(3)[2:]
    drops = d.deliver(old + fresh)
    assert [(x.reason, len(x.events)) for x in drops] == [("expired", 2)]
    assert transport.bodies == [["e2"]]
    assert counters.sent == 1


def test_a_refused_wait_makes_one_last_attempt_then_drops_as_shutdown() -> None:
    transport = FakeTransport(rule=lambda ids: Answer(503))
    d, counters = deliverer(transport, allow_sleep=False)
    drops = d.deliver(pending(4))
    assert [(x.reason, len(x.events)) for x in drops] == [("shutdown", 4)]
    assert counters.dropped == {"shutdown": 4}
    assert len(transport.bodies) == 2  # the first attempt, and the last one the deadline left room for


def test_the_last_attempt_before_a_deadline_delivers_when_dodo_is_back() -> None:
    """Item 15: a shutdown during a retry wait no longer drops the chunk without one more try."""
    transport = FakeTransport([Answer(503), Answer(200)])
    d, counters = deliverer(transport, allow_sleep=False)
    assert d.deliver(pending(4)) == []
    assert counters.sent == 4 and counters.dropped == {}


def test_a_tls_certificate_failure_is_logged_as_a_configuration_problem(caplog: pytest.LogCaptureFixture) -> None:
    """Item 24: certificate errors are still retried, but loudly, after the first failure."""
    transport = FakeTransport([Answer(None, "TLS error: certificate verify failed", tls_error=True), Answer(200)])
    d, counters = deliverer(transport)
    with caplog.at_level(logging.ERROR, logger="dodo_ingest"):
        assert d.deliver(pending(1)) == []
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "configuration problem" in errors[0] and "REQUESTS_CA_BUNDLE" in errors[0]
    assert counters.sent == 1 and counters.retried == 1


def test_callbacks_that_raise_do_not_break_delivery() -> None:
    def bad(*args: object) -> None:
        raise RuntimeError("user bug")

    transport = FakeTransport(rule=lambda ids: Answer(400) if "e0" in ids else Answer(200))
    d, counters = deliverer(transport, on_error=bad, on_drop=bad)
    drops = d.deliver(pending(2))
    assert [x.reason for x in drops] == ["rejected"]
    assert counters.sent == 1


def test_on_drop_receives_the_events_as_sent_and_the_reason() -> None:
    seen: list[tuple[list[dict[str, object]], str]] = []
    d, _ = deliverer(
        FakeTransport(rule=lambda ids: Answer(422, "schema")),
        on_drop=lambda events, reason: seen.append((events, reason)),
    )
    d.deliver(pending(1))
    assert seen[0][1] == "rejected"
    assert seen[0][0][0]["event_id"] == "e0" and seen[0][0][0]["metadata"] == {"i": 0}
