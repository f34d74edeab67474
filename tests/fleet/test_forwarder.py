"""The forwarder: full requests through the consumer group, acknowledged only after Dodo's 2xx, claims of a
dead forwarder's entries, ids reused through 429s, 5xx and lost answers, the fleet budget, ``--status``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

import pytest
import redis

from dodo_ingest import Batcher, Ingestion
from dodo_ingest.cli import main
from dodo_ingest.events import encode_event, format_timestamp
from dodo_ingest.fleet.budget import FleetBudget
from dodo_ingest.fleet.forwarder import status
from dodo_ingest.fleet.stream import GROUP, StreamWriter
from dodo_ingest.localserver import Fault, LocalDodoServer
from tests.core.test_rollup import rolled_up_app, serve_traffic
from tests.fleet.conftest import Running
from tests.helpers import wait_until
from tests.ratelimit.redis_server import RedisServer

STREAM = "dodo-ingest:events"


def write_events(url: str, count: int, prefix: str = "evt", ahead: float = 0.0) -> list[str]:
    """``count`` events in the stream as the flush thread writes them (on a host whose clock is ``ahead``)."""
    writer = StreamWriter(url, "dodo-ingest")
    now = time.time() + ahead
    ids = [f"{prefix}_{n:06d}" for n in range(count)]
    for start in range(0, count, 1000):
        part = ids[start : start + 1000]
        writer.append([(encode_event(i, "cus_1", "api_call", format_timestamp(now), {}), now) for i in part])
    writer.close()
    return ids


def backlog(url: str) -> tuple[int, int]:
    """(entries in the stream, entries pending in the group)."""
    client = redis.Redis.from_url(url)
    try:
        try:
            pending = client.xpending(STREAM, GROUP)["pending"]
        except redis.ResponseError:  # no group yet
            pending = 0
        return int(client.xlen(STREAM)), int(pending)
    finally:
        client.close()


def test_the_backlog_goes_out_in_full_requests_and_is_deleted_after_2xx(
    dodo_server: LocalDodoServer, redis_url: str, start_forwarder: Callable[..., Running]
) -> None:
    ids = write_events(redis_url, 2500)
    running = start_forwarder(redis_url)
    assert dodo_server.wait_for_events(2500, timeout=30)
    assert wait_until(lambda: backlog(redis_url) == (0, 0), timeout=10), "acknowledged and deleted"
    running.stop()
    assert sorted(e["event_id"] for e in dodo_server.events()) == ids
    assert [r.event_count for r in dodo_server.requests] == [1000, 1000, 500]
    assert running.forwarder.counters.snapshot(0).sent == 2500


def test_events_from_a_batcher_reach_dodo_through_the_forwarder(
    make_batch: Callable[..., Batcher],
    dodo_server: LocalDodoServer,
    redis_url: str,
    start_forwarder: Callable[..., Running],
) -> None:
    start_forwarder(redis_url)
    batch = make_batch(buffer_url=redis_url)
    for n in range(300):
        batch.add(f"cus_{n % 3}", {"n": n})
    assert batch.flush(timeout=10)
    assert dodo_server.wait_for_events(300, timeout=30)
    assert sorted(e["metadata"]["n"] for e in dodo_server.events()) == list(range(300))


def test_rollups_through_the_buffer_bill_every_request_once(
    make_ingestion: Callable[..., Ingestion],
    dodo_server: LocalDodoServer,
    redis_url: str,
    start_forwarder: Callable[..., Running],
) -> None:
    """The tiers combine: requests folded into rollups, the rollups through Redis and a forwarder to Dodo."""
    start_forwarder(redis_url)
    ingestion = make_ingestion(buffer_url=redis_url, rollup_interval=60)
    served = serve_traffic(rolled_up_app(ingestion), 500)
    assert ingestion.flush(timeout=10)
    expected = sum(served.values())
    assert wait_until(lambda: sum(e["metadata"]["calls"] for e in dodo_server.events()) >= expected, timeout=30)
    events = dodo_server.events()
    assert sum(e["metadata"]["calls"] for e in events) == expected == 500
    assert ingestion.batcher.stats().buffered == len(events) < 50


def test_an_acknowledgement_redis_could_not_take_is_given_when_it_is_back_not_resent(
    dodo_server: LocalDodoServer, start_forwarder: Callable[..., Running]
) -> None:
    """Redis goes down while Dodo is answering: the forwarder keeps the acknowledgement and gives it first when
    Redis is back. The events are not sent again (which Dodo would ignore, but ``sent`` would count twice)."""
    with RedisServer(aof=True) as buffer:
        ids = write_events(buffer.url, 100)
        dodo_server.add_faults(Fault(delay=2.0, repeat=1))  # the answer takes 2 s: time to stop Redis
        running = start_forwarder(buffer.url, lease=1.0)
        assert wait_until(lambda: dodo_server.faults.pending() == 0, timeout=10)  # the request has arrived
        buffer.stop()
        assert dodo_server.wait_for_events(100, timeout=10)  # Dodo has them; their acknowledgement fails
        buffer.start()
        assert wait_until(lambda: backlog(buffer.url) == (0, 0), timeout=20), "acknowledged once Redis was back"
        running.stop()
    assert [r.event_count for r in dodo_server.requests] == [100], "sent once, not claimed and sent again"
    assert sorted(e["event_id"] for e in dodo_server.events()) == ids
    assert running.forwarder.counters.snapshot(0).sent == 100


def test_429s_5xx_and_a_lost_answer_reuse_the_ids_and_lose_nothing(
    dodo_server: LocalDodoServer, redis_url: str, start_forwarder: Callable[..., Running]
) -> None:
    dodo_server.add_faults(
        Fault(status=429, retry_after="1", repeat=1),
        Fault(status=503, repeat=1),
        Fault(drop_connection=True, process=True, repeat=1),  # Dodo stored them; the answer never came
    )
    ids = write_events(redis_url, 800)
    running = start_forwarder(redis_url)
    assert wait_until(lambda: backlog(redis_url) == (0, 0), timeout=60)
    running.stop()
    statuses = [r.status for r in dodo_server.requests]
    assert statuses == [429, 503, 0, 200], statuses
    assert all(sorted(r.event_ids) == ids for r in dodo_server.requests), "every attempt carries the same ids"
    assert sorted(e["event_id"] for e in dodo_server.events()) == ids, "stored once"
    stats = running.forwarder.counters.snapshot(0)
    assert (stats.sent, stats.retried, stats.dropped) == (800, 3, {})


def test_a_host_clock_ahead_does_not_hold_the_request_back(
    dodo_server: LocalDodoServer, redis_url: str, start_forwarder: Callable[..., Running]
) -> None:
    ids = write_events(redis_url, 10, ahead=200.0)  # within Dodo's 5 minutes of skew
    start_forwarder(redis_url)
    assert dodo_server.wait_for_events(10, timeout=10), "sent within flush_interval, not 200 s later"
    assert sorted(e["event_id"] for e in dodo_server.events()) == ids


def test_a_rejected_key_keeps_the_entries(
    dodo_server: LocalDodoServer, redis_url: str, start_forwarder: Callable[..., Running]
) -> None:
    dodo_server.add_faults(Fault(status=401, repeat=None))
    write_events(redis_url, 10)
    running = start_forwarder(redis_url)
    assert wait_until(lambda: [r.status for r in dodo_server.requests] == [401], timeout=10)
    assert wait_until(lambda: running.forwarder._state == "key rejected", timeout=10)
    running.stop()
    assert backlog(redis_url) == (10, 10), "nothing dropped, nothing acknowledged"
    assert running.forwarder.counters.snapshot(0).dropped == {}


def test_entries_a_dead_forwarder_left_pending_are_claimed_after_the_lease(
    dodo_server: LocalDodoServer, redis_url: str, start_forwarder: Callable[..., Running]
) -> None:
    ids = write_events(redis_url, 120)
    client = redis.Redis.from_url(redis_url)
    client.xgroup_create(STREAM, GROUP, id="0")
    assert len(client.xreadgroup(GROUP, "dead-one", {STREAM: ">"}, count=100)[0][1]) == 100  # then it died
    client.close()
    running = start_forwarder(redis_url, lease=1.0)
    assert wait_until(lambda: backlog(redis_url) == (0, 0), timeout=30)
    running.stop()
    assert sorted(e["event_id"] for e in dodo_server.events()) == ids
    assert running.forwarder.claimed == 100


def test_forwarders_share_one_budget(redis_url: str) -> None:
    budgets = [FleetBudget(redis_url, "dodo-ingest", 120), FleetBudget(redis_url, "dodo-ingest", 120)]
    taken = sum(b.take() == 0 for _ in range(4) for b in budgets)
    assert taken == 5, "at most 5 requests in one second, fleet-wide"
    wait = budgets[0].take()
    assert 0 < wait <= 1.0, "the window says when the next slot frees"
    stop = threading.Event()
    for n in range(15):
        assert budgets[n % 2].wait_for_slot(stop)
    assert budgets[0].used() == 20
    assert budgets[1].take() > 5, "20 in 10 s (a sixth of the minute's 120): the next slot is 10 s after the first"


def test_status_shows_the_stream_and_each_forwarder(
    dodo_server: LocalDodoServer,
    redis_url: str,
    start_forwarder: Callable[..., Running],
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_events(redis_url, 30)
    running = start_forwarder(redis_url, name="fwd-a")
    assert dodo_server.wait_for_events(30, timeout=30)
    assert wait_until(lambda: any(f.get("sent") == "30" for f in status(redis_url, "dodo-ingest")["forwarders"]))
    running.stop()
    assert main(["forward", "--status", "--buffer", redis_url]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["stream"] == STREAM and printed["length"] == 0 and printed["pending"] == 0
    [forwarder] = printed["forwarders"]
    assert forwarder["name"] == "fwd-a" and forwarder["state"] == "stopped" and forwarder["requests"] == "1"


def test_forward_without_a_key_or_a_buffer_says_what_to_set(
    redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DODO_INGEST_BUFFER_URL", raising=False)
    assert main(["forward", "--buffer", redis_url]) == 2
    assert "DODO_PAYMENTS_API_KEY" in capsys.readouterr().err
    monkeypatch.setenv("DODO_PAYMENTS_API_KEY", "sk_test_x")
    with pytest.raises(SystemExit) as exited:
        main(["forward"])
    assert exited.value.code == 2 and "DODO_INGEST_BUFFER_URL" in capsys.readouterr().err
