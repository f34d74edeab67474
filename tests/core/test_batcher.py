"""The batcher against the real local server over loopback: triggers, retries, splits, bounds, modes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from dodo_ingest import Batcher, Ingestion
from dodo_ingest.localserver import Fault, LocalDodoServer
from tests.conftest import TEST_KEY
from tests.helpers import wait_until


def add_many(batch: Batcher, n: int, customer: str = "cus_1", **metadata: Any) -> None:
    for i in range(n):
        assert batch.add(customer, {"endpoint": "/api/items", "i": i, **metadata})


def assert_exactly_once(server: LocalDodoServer, n: int) -> None:
    events = server.events()
    assert len(events) == n
    assert len({e["event_id"] for e in events}) == n


# --- flush triggers ---------------------------------------------------------------------------------------


def test_a_full_batch_is_sent_without_waiting_for_the_interval(
    dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher]
) -> None:
    batch = make_batch(max_size=25, flush_interval=600)
    add_many(batch, 25)
    assert dodo_server.wait_for_events(25, timeout=10)
    assert dodo_server.requests[0].event_count == 25


def test_the_oldest_event_is_sent_after_the_interval(
    dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher]
) -> None:
    batch = make_batch(max_size=1000, flush_interval=0.2)
    add_many(batch, 3)
    assert dodo_server.wait_for_events(3, timeout=10)
    assert [r.event_count for r in dodo_server.requests] == [3]


def test_steady_adds_do_not_postpone_the_interval_flush(
    dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher]
) -> None:
    """The JavaScript blueprint's bug: a timer reset on every add never fires under steady traffic."""
    batch = make_batch(max_size=1000, flush_interval=0.3)
    deadline = time.monotonic() + 20
    added = 0
    while dodo_server.event_count() == 0 and time.monotonic() < deadline:
        batch.add("cus_1", {"i": added})
        added += 1
        threading.Event().wait(0.02)  # a steady trickle, faster than the interval
    assert dodo_server.event_count() > 0  # it fired while adds were still coming (the loop only stops then)


def test_flush_sends_now_and_reports_completion(
    dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher]
) -> None:
    batch = make_batch(max_size=1000, flush_interval=600)
    add_many(batch, 7)
    assert batch.flush(timeout=10) is True
    assert dodo_server.event_count() == 7
    assert batch.flush(timeout=10) is True  # nothing pending: immediately true
    stats = batch.stats()
    assert (stats.accepted, stats.sent, stats.queued, stats.in_flight) == (7, 7, 0, 0)


def test_a_backlog_goes_out_in_full_requests(dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher]) -> None:
    dodo_server.add_faults(Fault(delay=0.5))  # the first request is slow, so a backlog builds up behind it
    batch = make_batch(max_size=10, flush_interval=600)
    add_many(batch, 10)
    assert wait_until(lambda: batch.stats().in_flight == 10)
    add_many(batch, 2500)
    assert batch.flush(timeout=30)
    assert_exactly_once(dodo_server, 2510)
    assert [r.event_count for r in dodo_server.requests] == [10, 1000, 1000, 500]


def test_requests_stay_under_the_byte_cap(dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher]) -> None:
    batch = make_batch(max_size=1000, flush_interval=600, max_request_bytes=20_000)
    add_many(batch, 300, note="x" * 100)
    assert batch.flush(timeout=20)
    assert_exactly_once(dodo_server, 300)
    assert all(r.body_bytes <= 20_000 for r in dodo_server.requests)
    assert len(dodo_server.requests) > 1


# --- retries end with every event delivered exactly once --------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        [Fault(status=500)],
        [Fault(status=503), Fault(status=502)],
        [Fault(status=429, retry_after="1")],
        [Fault(drop_connection=True)],
        [Fault(delay=3.0)],  # longer than request_timeout: the client times out, then retries
        [Fault(status=500), Fault(drop_connection=True), Fault(status=429, retry_after="0")],
    ],
    ids=["500", "503-502", "429-retry-after", "reset", "timeout", "mixed"],
)
def test_failures_are_retried_until_every_event_is_delivered_exactly_once(
    dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher], faults: list[Fault]
) -> None:
    dodo_server.add_faults(*faults)
    batch = make_batch(max_size=50, flush_interval=600, request_timeout=1.0)
    add_many(batch, 50)
    assert dodo_server.wait_for_events(50, timeout=30)
    assert batch.flush(timeout=10)
    assert_exactly_once(dodo_server, 50)
    attempts = dodo_server.requests
    assert all(r.event_ids == attempts[-1].event_ids for r in attempts if r.event_ids)  # same ids each time
    stats = batch.stats()
    assert stats.sent == 50 and stats.retried >= 1 and stats.dropped == {}


def test_a_timed_out_request_that_did_land_is_not_billed_twice(
    dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher]
) -> None:
    """The server stores the batch but answers too late; the retry carries the same ids and is ignored."""
    dodo_server.add_faults(Fault(delay=2.0))  # delay, then processes normally
    batch = make_batch(max_size=20, flush_interval=600, request_timeout=0.5)
    add_many(batch, 20)
    assert batch.flush(timeout=30)
    assert_exactly_once(dodo_server, 20)


def test_split_on_413_delivers_everything(make_ingestion: Callable[..., Ingestion]) -> None:
    with LocalDodoServer(api_key=TEST_KEY, max_body_bytes=30_000) as small:
        batch = make_ingestion(base_url=small.url).create_batch(max_size=1000, flush_interval=600)
        add_many(batch, 400)
        assert batch.flush(timeout=30)
        assert_exactly_once(small, 400)
        assert 413 in [r.status for r in small.requests]


def test_split_on_400_isolates_the_event_dodo_rejects(make_ingestion: Callable[..., Ingestion]) -> None:
    with LocalDodoServer(api_key=TEST_KEY, max_event_age=60) as strict:
        ingestion = make_ingestion(base_url=strict.url)
        good = [ingestion.event("cus_1", {"i": i}) for i in range(9)]
        stale = ingestion.event("cus_1", {"i": 99}, timestamp=time.time() - 600)
        with pytest.raises(Exception, match=r"1 of 10 events not delivered \(rejected\)"):
            ingestion.send([*good[:4], stale, *good[4:]])
        assert sorted(e["event_id"] for e in strict.events()) == sorted(e.event_id for e in good)


def test_wrong_key_is_not_retried_and_events_are_counted_as_unauthorized(
    dodo_server: LocalDodoServer, make_ingestion: Callable[..., Ingestion], caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk_live_WRONG_key_for_this_env"
    dropped: list[tuple[int, str]] = []
    batch = make_ingestion(
        api_key=wrong,
        on_drop=lambda events, reason: dropped.append((len(events), reason)),
    ).create_batch(max_size=5, flush_interval=600)
    with caplog.at_level(logging.DEBUG, logger="dodo_ingest"):
        add_many(batch, 5)
        assert batch.flush(timeout=10)
    assert dodo_server.event_count() == 0
    assert [r.status for r in dodo_server.requests] == [401]
    assert batch.stats().dropped == {"unauthorized": 5}
    assert dropped == [(5, "unauthorized")]
    assert any("rejected the API key" in r.getMessage() for r in caplog.records)
    assert all(wrong not in r.getMessage() for r in caplog.records)


# --- bounds, modes, accounting ----------------------------------------------------------------------------


def test_the_queue_is_bounded_and_overflow_is_counted_and_reported(make_batch: Callable[..., Batcher]) -> None:
    dropped: list[str] = []
    batch = make_batch(
        max_size=1000,
        flush_interval=600,
        max_queue_size=10,
        on_drop=lambda events, reason: dropped.extend(reason for _ in events),
    )
    results = [batch.add("cus_1", {"i": i}) for i in range(15)]
    assert results == [True] * 10 + [False] * 5
    stats = batch.stats()
    assert (stats.accepted, stats.queued, stats.dropped) == (10, 10, {"queue_full": 5})
    assert dropped == ["queue_full"] * 5


def test_invalid_events_are_dropped_on_the_flush_thread_and_the_rest_delivered(
    dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher]
) -> None:
    batch = make_batch(max_size=1000, flush_interval=600)
    assert batch.add("cus_1", {"ok": 1})
    assert batch.add("", {"ok": 2})  # accepted into the queue, dropped as invalid later
    assert batch.add("cus_1", {"nested": {"no": 1}})
    assert batch.add("cus_1", {"ua": "x" * 800, "none": None})  # repaired
    assert batch.add(123, {"ok": 3})  # type: ignore[arg-type]
    assert batch.flush(timeout=10)
    stats = batch.stats()
    assert stats.sent == 2 and stats.dropped == {"invalid": 3} and stats.repaired == 2
    stored = {len(str(e["metadata"].get("ua", ""))) for e in dodo_server.events()}
    assert 500 in stored


def test_stats_account_for_every_event(dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher]) -> None:
    batch = make_batch(max_size=1000, flush_interval=600, max_queue_size=50)
    for i in range(60):
        batch.add("cus_1" if i % 7 else "", {"i": i})
    batch.flush(timeout=10)
    stats = batch.stats()
    assert stats.accepted + stats.dropped.get("queue_full", 0) == 60
    assert stats.accepted == stats.sent + stats.dropped_total - stats.dropped.get("queue_full", 0) + stats.queued
    assert stats.sent == dodo_server.event_count()


def test_add_is_thread_safe_and_nothing_is_lost(
    dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher]
) -> None:
    batch = make_batch(max_size=100, flush_interval=0.1)

    def worker(n: int) -> None:
        for i in range(500):
            batch.add(f"cus_{n}", {"i": i})

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert batch.flush(timeout=30)
    assert_exactly_once(dodo_server, 4000)


def test_sync_mode_delivers_before_add_returns(
    dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher]
) -> None:
    batch = make_batch(sync_mode=True)
    assert batch.add("cus_1", {"i": 1}) is True
    assert dodo_server.event_count() == 1
    assert batch.add("cus_1", {"bad": [1]}) is False
    assert batch.stats().dropped == {"invalid": 1}


def test_disabled_mode_sends_nothing_and_needs_no_key(dodo_server: LocalDodoServer) -> None:
    ingestion = Ingestion(enabled=False, base_url=dodo_server.url)
    batch = ingestion.create_batch()
    assert batch.add("cus_1", {"i": 1}) is False
    assert batch.flush(timeout=1) and batch.shutdown(timeout=1)
    assert dodo_server.requests == []


def test_shutdown_is_idempotent_a_context_manager_and_later_adds_are_refused(
    dodo_server: LocalDodoServer, make_ingestion: Callable[..., Ingestion]
) -> None:
    with make_ingestion().create_batch(max_size=1000, flush_interval=600) as batch:
        add_many(batch, 5)
    assert dodo_server.event_count() == 5
    assert batch.shutdown() is True and batch.cleanup() is True
    assert batch.add("cus_1", {}) is False
    assert batch.stats().dropped == {"shutdown": 1}


def test_shutdown_gives_up_within_its_deadline_when_dodo_keeps_failing(
    dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher]
) -> None:
    dodo_server.add_faults(Fault(status=503, retry_after="30", repeat=100))
    batch = make_batch(max_size=10, flush_interval=600)
    add_many(batch, 10)
    assert wait_until(lambda: len(dodo_server.requests) >= 1)
    assert batch.shutdown(timeout=1.0) is False  # it would have to wait 30 s for the Retry-After
    assert batch.stats().dropped == {"shutdown": 10}
    assert dodo_server.event_count() == 0


# --- billing-grade regressions (issue 7) ---------------------------------------------------------------------


def test_flush_cuts_our_own_backoff_short_but_not_a_server_mandated_wait(make_batch: Callable[..., Batcher]) -> None:
    """Item 8: a flush() during a backoff used to lose its wake-up, and a pending flush ignored Retry-After."""
    batch = make_batch(flush_interval=600)
    batch.add("cus_1", {})  # something for flush() to wait for
    results: list[bool] = []

    def wait(mandated: bool) -> threading.Thread:
        thread = threading.Thread(target=lambda: results.append(batch.wait(30.0, mandated)), daemon=True)
        thread.start()
        return thread

    ours = wait(mandated=False)
    assert wait_until(lambda: ours.is_alive())
    batch.flush(timeout=0.05)
    ours.join(10)
    assert not ours.is_alive() and results == [True]  # cut short: retry now
    server_said = wait(mandated=True)
    batch.flush(timeout=0.05)
    server_said.join(0.3)
    assert server_said.is_alive()  # a Retry-After is honoured, flush or not
    batch.begin_shutdown(time.monotonic() + 0.5)
    server_said.join(10)
    assert not server_said.is_alive() and results == [True, False]  # the deadline: one last attempt now


def test_the_last_attempt_before_the_shutdown_deadline_delivers_when_dodo_is_back(
    dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher]
) -> None:
    """Item 15: a shutdown during a 30 s Retry-After no longer drops the chunk without one more try."""
    dodo_server.add_faults(Fault(status=503, retry_after="30"))
    batch = make_batch(max_size=10, flush_interval=600)
    add_many(batch, 10)
    assert wait_until(lambda: len(dodo_server.requests) >= 1)
    assert batch.shutdown(timeout=2.0) is True
    assert_exactly_once(dodo_server, 10)
    assert [r.status for r in dodo_server.requests] == [503, 200]


def test_a_shutdown_deadline_mid_send_accounts_for_every_event_once(
    dodo_server: LocalDodoServer, make_ingestion: Callable[..., Any]
) -> None:
    """Item 10: the flush thread gave its chunk back to a closed batcher; an invalid event was dropped twice."""
    drops: list[tuple[int, str]] = []
    batch = make_ingestion(on_drop=lambda events, reason: drops.append((len(events), reason))).create_batch(
        max_size=1000, flush_interval=600
    )
    dodo_server.add_faults(Fault(delay=1.5))
    add_many(batch, 5)
    batch.add("cus_1", {"nested": {"not": "flat"}})
    batch.flush(timeout=0.01)
    assert wait_until(lambda: len(dodo_server.requests) >= 1 or batch.stats().in_flight == 5)
    assert batch.shutdown(timeout=0.2) is False  # the request is still on the wire
    assert wait_until(lambda: batch.stats().in_flight == 0)
    stats = batch.stats()
    assert (stats.accepted, stats.sent, stats.queued, stats.in_flight) == (6, 5, 0, 0)
    assert stats.dropped == {"invalid": 1}
    assert drops == [(1, "invalid")]
    assert_exactly_once(dodo_server, 5)


class _OddFloat(float):
    """What numpy.float64 is to the batcher: a float subclass (np.mean([]) returns its NaN)."""


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr of a key raised")


class _ExplodingFloat(float):
    def __float__(self) -> float:
        raise ArithmeticError("no float for you")


@pytest.mark.parametrize(
    "poison",
    [
        {"ratio": _OddFloat("nan")},
        {"ratio": _OddFloat("inf")},
        {"big": 10**5000},
        {"big": 2**64},
        {_BadRepr(): 1},
        {"x": _ExplodingFloat(1.0)},
    ],
)
def test_no_value_an_event_holds_stops_delivery_of_the_rest(
    poison: dict[Any, Any], dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher]
) -> None:
    """Item 13: one such event killed the flush thread for the life of the process, its chunk vanished
    uncounted, and flush() still returned True. Now it alone is dropped and counted."""
    batch = make_batch(max_size=1000, flush_interval=600)
    batch.add("cus_1", poison)
    add_many(batch, 200)
    assert batch.flush(timeout=10) is True
    assert_exactly_once(dodo_server, 200)
    stats = batch.stats()
    assert stats.dropped == {"invalid": 1} and stats.sent == 200
    add_many(batch, 1)  # the thread is still there
    assert batch.flush(timeout=10) and dodo_server.event_count() == 201


def test_a_dead_flush_thread_is_restarted_by_the_next_add(
    dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = make_batch(max_size=1000, flush_interval=600)
    calls = 0
    original = Batcher._wait_for_work

    def dies_once(self: Batcher) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise SystemExit("the thread dies")
        return original(self)

    monkeypatch.setattr(Batcher, "_wait_for_work", dies_once)
    batch.add("cus_1", {})
    assert wait_until(lambda: batch._thread is None)
    add_many(batch, 3)
    assert batch.flush(timeout=10) is True
    assert dodo_server.event_count() == 4


def test_lone_surrogates_and_repeated_ids_are_caught_before_sending(
    dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher]
) -> None:
    """Item 22: these passed client-side checks and were then isolated by bisection (~15 requests each)."""
    batch = make_batch(max_size=1000, flush_interval=600)
    add_many(batch, 20)
    batch.add("cus_1", {"name": "caf\udce9"})  # repaired: the surrogate becomes "?"
    batch.add("cus_\udce9", {})  # invalid: a customer id must be valid text
    batch.add("cus_1", {"\ud800": 1})  # invalid: so must a key
    batch.add("cus_1", {"i": 1}, event_id="job_1")
    batch.add("cus_1", {"i": 2}, event_id="job_1")  # the same id twice in one request would fail it all
    assert batch.flush(timeout=10) is True
    assert len(dodo_server.requests) == 1
    stats = batch.stats()
    assert stats.dropped == {"invalid": 2, "duplicate_id": 1}
    assert stats.repaired == 1 and stats.sent == 22
    assert {e["metadata"].get("name") for e in dodo_server.events()} >= {"caf?"}


def test_a_certificate_error_is_called_a_configuration_problem_at_once(
    tmp_path: Any, make_ingestion: Callable[..., Ingestion], caplog: pytest.LogCaptureFixture
) -> None:
    """Item 24: a self-signed certificate was retried for 600 s like a network blip, silently."""
    import http.server
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        batch = make_ingestion(base_url=f"https://127.0.0.1:{server.server_address[1]}").create_batch(
            flush_interval=600
        )
        batch.add("cus_1", {})
        with caplog.at_level(logging.ERROR, logger="dodo_ingest"):
            assert batch.flush(timeout=0.5) is False  # still retried: the events are kept
            assert wait_until(lambda: "configuration problem" in caplog.text)
        assert "certificate verify failed" in caplog.text
        assert "TLS" in (batch.stats().last_error or "")
        assert batch.shutdown(timeout=0.1) is False
    finally:
        server.shutdown()
        server.server_close()
