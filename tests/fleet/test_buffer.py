"""The flush thread writes to the Redis Stream (``buffer_url``); Redis unreachable, nothing is lost or blocked."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from dodo_ingest import Batcher
from dodo_ingest.config import Config
from dodo_ingest.errors import ConfigurationError
from dodo_ingest.fleet.stream import BufferUnavailable, StreamWriter
from dodo_ingest.localserver import LocalDodoServer
from tests.conftest import TEST_KEY
from tests.helpers import wait_until
from tests.ratelimit.redis_server import RedisServer
from tests.spool.helpers import spooled_events

STREAM = "dodo-ingest:events"


def stream_events(url: str) -> list[dict[str, object]]:
    client = redis.Redis.from_url(url)
    try:
        return [json.loads(fields[b"e"]) for _, fields in client.xrange(STREAM)]
    finally:
        client.close()


def test_events_go_to_the_stream_encoded_with_fixed_ids_not_to_dodo(
    make_batch: Callable[..., Batcher], dodo_server: LocalDodoServer, redis_url: str
) -> None:
    batch = make_batch(buffer_url=redis_url)
    for n in range(250):
        assert batch.add("cus_1", {"n": n})
    batch.add("cus_1", {"given": True}, event_id="evt_given_1")
    assert batch.flush(timeout=10)
    events = stream_events(redis_url)
    assert [e["metadata"] for e in events[:250]] == [{"n": n} for n in range(250)]
    assert len({e["event_id"] for e in events}) == 251 and events[-1]["event_id"] == "evt_given_1"
    stats = batch.stats()
    assert (stats.buffered, stats.sent, stats.requests, stats.queued) == (251, 0, 0, 0)
    assert dodo_server.event_count() == 0, "an app process with a buffer sends nothing itself"


def test_redis_down_keeps_events_in_memory_with_their_ids_then_moves_them(
    make_batch: Callable[..., Batcher], dodo_server: LocalDodoServer, own_redis: RedisServer
) -> None:
    batch = make_batch(buffer_url=own_redis.url, max_queue_size=300)
    assert batch.add("cus_1", {"n": -1}) and batch.flush(timeout=10)  # connected once
    own_redis.stop()
    kept = [n for n in range(1000) if batch.add("cus_1", {"n": n})]
    assert not batch.flush(timeout=1.5), "Redis is down: nothing can be buffered"
    stats = batch.stats()
    assert stats.buffer_unavailable >= 1 and stats.buffered == 1
    assert stats.queued + stats.in_flight == len(kept) and 300 <= len(kept) <= 600, "bounded by max_queue_size"
    assert stats.dropped == {"queue_full": 1000 - len(kept)}, "beyond it, counted"
    own_redis.start()
    assert batch.flush(timeout=15)
    events = stream_events(own_redis.url)
    assert sorted(e["metadata"]["n"] for e in events) == kept, "Redis lost the first (no persistence)"
    assert len({e["event_id"] for e in events}) == len(kept)
    assert batch.stats().buffered == len(kept) + 1 and dodo_server.event_count() == 0


def test_with_redis_down_no_request_thread_ever_waits_for_redis(
    make_batch: Callable[..., Batcher],
    dodo_server: LocalDodoServer,
    own_redis: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The request thread's cost does not change with a buffer, up or down: only the flush thread talks to Redis
    (a request that did would wait up to the socket timeout while Redis is down)."""
    callers: list[str] = []
    append = StreamWriter.append

    def recording(self: StreamWriter, events: Any) -> None:
        callers.append(threading.current_thread().name)
        append(self, events)

    monkeypatch.setattr(StreamWriter, "append", recording)
    batch = make_batch(buffer_url=own_redis.url, flush_interval=0.05)
    own_redis.stop()
    for n in range(300):
        assert batch.add("cus_1", {"n": n})
    assert wait_until(lambda: batch.stats().buffer_unavailable > 0, timeout=10)
    own_redis.start()
    assert batch.flush(timeout=15)
    assert sorted(e["metadata"]["n"] for e in stream_events(own_redis.url)) == list(range(300))
    assert callers and set(callers) == {"dodo-ingest-flush"}


def test_redis_down_at_the_deadline_drops_as_shutdown_and_counts(
    make_batch: Callable[..., Batcher], dodo_server: LocalDodoServer, own_redis: RedisServer
) -> None:
    own_redis.stop()
    dodo_server.stop()
    batch = make_batch(buffer_url=own_redis.url, shutdown_timeout=1.0, request_timeout=0.2)
    for n in range(20):
        batch.add("cus_1", {"n": n})
    assert not batch.shutdown(timeout=1.0)
    stats = batch.stats()
    assert stats.dropped == {"shutdown": 20} and stats.in_flight == 0 and stats.queued == 0


def test_redis_down_with_a_spool_sends_through_the_spool(
    make_batch: Callable[..., Batcher], dodo_server: LocalDodoServer, own_redis: RedisServer, tmp_path: Path
) -> None:
    own_redis.stop()
    batch = make_batch(buffer_url=own_redis.url, spool_dir=tmp_path, flush_interval=0.05)
    for n in range(50):
        batch.add("cus_1", {"n": n})
    assert batch.flush(timeout=15)
    assert dodo_server.wait_for_events(50, timeout=15)
    stats = batch.stats()
    assert stats.buffer_unavailable == 50 and stats.spooled == 50 and stats.dropped == {}
    assert sorted(json.loads(r.json)["metadata"]["n"] for r in spooled_events(tmp_path, dodo_server.url)) == list(
        range(50)
    ), "they went through the spool"


def test_redis_down_at_exit_sends_straight_to_dodo_rather_than_lose_the_queue(
    make_batch: Callable[..., Batcher], dodo_server: LocalDodoServer, own_redis: RedisServer
) -> None:
    own_redis.stop()
    batch = make_batch(buffer_url=own_redis.url)
    for n in range(20):
        batch.add("cus_1", {"n": n})
    assert batch.shutdown(timeout=10)
    assert sorted(e["metadata"]["n"] for e in dodo_server.events()) == list(range(20))
    assert batch.stats().sent == 20


def test_the_redis_password_never_shows(own_redis: RedisServer) -> None:
    url = f"redis://user:s3cr3t-pw@127.0.0.1:{own_redis.port}/0"
    own_redis.stop()
    config = Config.load({"api_key": TEST_KEY, "buffer_url": url})
    assert "s3cr3t" not in repr(config) and "s3cr3t" not in str(config.describe())
    assert config.describe()["buffer_url"] == f"redis://***@127.0.0.1:{own_redis.port}/0"
    writer = StreamWriter(url, "dodo-ingest")
    with pytest.raises(BufferUnavailable) as failure:
        writer.append([('{"event_id":"x"}', 0.0)])
    assert "s3cr3t" not in str(failure.value) and "s3cr3t" not in repr(writer)
    with pytest.raises(ConfigurationError) as bad:
        Config.load({"api_key": TEST_KEY, "buffer_url": "http://user:s3cr3t-pw@redis:6379"})
    assert "s3cr3t" not in str(bad.value) and "buffer_url" in str(bad.value)


def test_embedded_forwarder_elects_one_process_and_delivers(
    make_batch: Callable[..., Batcher], dodo_server: LocalDodoServer, redis_url: str
) -> None:
    first = make_batch(buffer_url=redis_url, forwarder="embedded", flush_interval=0.2)
    second = make_batch(buffer_url=redis_url, forwarder="embedded", flush_interval=0.2)
    for n in range(100):
        (first if n % 2 else second).add("cus_1", {"n": n})
    assert first.flush(timeout=10) and second.flush(timeout=10)
    assert dodo_server.wait_for_events(100, timeout=30)
    assert sorted(e["metadata"]["n"] for e in dodo_server.events()) == list(range(100))
    candidates = [b._buffer.forwarder for b in (first, second) if b._buffer is not None]
    assert sum(c is not None and c.is_leader for c in candidates) == 1, "one forwarder for both"
