"""``forwarder="embedded"`` under gunicorn: the workers elect one of themselves to forward; every answered
request is billed once, with no forwarder process."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis

from dodo_ingest.localserver import LocalDodoServer
from tests.helpers import free_port, wait_for_http, wait_until
from tests.spool.load import Load
from tests.spool.test_gunicorn import gunicorn, stop

pytest.importorskip("gunicorn")


@pytest.mark.slow
def test_when_the_elected_worker_is_killed_another_takes_over_and_bills_what_it_held(
    dodo_server: LocalDodoServer, redis_url: str, tmp_path: Path
) -> None:
    """``kill -9`` of the worker that forwards: its lease runs out, another worker is elected, claims what the dead
    one had read but not acknowledged, and sends it with the same ids. Lost: only what the killed worker had
    accepted in its last moments and not yet written to Redis (its flush thread writes within 50 ms)."""
    port, log = free_port(), tmp_path / "gunicorn.log"
    settings = {"buffer_url": redis_url, "forwarder": "embedded", "flush_interval": "0.5", "shutdown_timeout": "10"}
    process = gunicorn(dodo_server, 2, port, log, **settings)
    url = f"http://127.0.0.1:{port}"
    client = redis.Redis.from_url(redis_url)
    try:
        wait_for_http(url + "/health", process, 60, lambda: log.read_text(errors="replace"))
        load = Load(url + "/work", threads=4, rate=200)
        assert wait_until(lambda: dodo_server.event_count() >= 500, timeout=60), log.read_text(errors="replace")
        (key,) = client.scan_iter(match="dodo-ingest:forwarder:*")  # one elected forwarder among the workers
        leader = int(key.decode().split("-embedded-")[0].rsplit("-", 1)[1])
        assert leader != process.pid, "a worker forwards, not the arbiter"
        killed_at = time.time()
        os.kill(leader, signal.SIGKILL)
        at_kill = load.count()
        assert wait_until(lambda: load.count() >= at_kill + 1000, timeout=60), "gunicorn did not recover"
        answered = load.stop()
        assert wait_until(lambda: dodo_server.event_count() >= len(answered) - 50, timeout=90), (
            f"{dodo_server.event_count()} of {len(answered)} billed: " + log.read_text(errors="replace")[-3000:]
        )
        settled = dodo_server.event_count()
        assert wait_until(lambda: dodo_server.event_count() == settled, timeout=5)

        def successors() -> list[bytes]:
            return [k for k in client.scan_iter(match="dodo-ingest:forwarder:*") if k != key]

        assert wait_until(successors, timeout=20), "another worker was elected and publishes its counters"
    finally:
        stop(process, log)
        client.close()
    stored = [e["metadata"]["request_id"] for e in dodo_server.events()]
    assert len(stored) == len(set(stored)), "one event per request: the claimed entries were not billed twice"
    lost = [killed_at - at for rid, at in answered.items() if rid not in set(stored)]
    print(
        f"\n{len(answered)} answered, {len(stored)} billed; lost {len(lost)}, answered at most "
        f"{max(lost, default=0) * 1000:.0f} ms before the kill"
    )
    assert all(gap < 0.1 for gap in lost), f"lost an event answered {max(lost):.3f} s before the kill"
