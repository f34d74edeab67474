"""Redis down for 30 s under load (gunicorn, 2 workers, one forwarder): no request slows down, no event is lost,
and the backlog reaches Dodo after Redis is back.

``DODO_BUFFER_OUTAGE_SECONDS`` sets the outage (default 30 s, the issue's).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

import pytest

from dodo_ingest.localserver import LocalDodoServer
from tests.conftest import TEST_KEY
from tests.fleet.processes import forwarder, stop_forwarder
from tests.helpers import free_port, wait_for_http, wait_until
from tests.ratelimit.redis_server import RedisServer
from tests.spool.load import Load
from tests.spool.test_gunicorn import gunicorn, stop

pytest.importorskip("gunicorn")

OUTAGE = float(os.environ.get("DODO_BUFFER_OUTAGE_SECONDS", "30"))
RATE = 200.0


def percentiles(values: list[float]) -> str:
    cuts = statistics.quantiles(values, n=100)
    return f"p50 {cuts[49] * 1000:.1f} ms, p99 {cuts[98] * 1000:.1f} ms, max {max(values) * 1000:.1f} ms"


@pytest.mark.slow
@pytest.mark.timeout(OUTAGE * 3 + 180)
def test_redis_down_under_load_slows_no_request_and_loses_no_event(tmp_path: Path) -> None:
    with RedisServer(aof=True) as buffer, LocalDodoServer(api_key=TEST_KEY) as server:
        port, log, fwd_log = free_port(), tmp_path / "gunicorn.log", tmp_path / "forwarder.log"
        process = gunicorn(server, 2, port, log, buffer_url=buffer.url, shutdown_timeout="10")
        fwd = forwarder(server, buffer.url, "fwd", fwd_log, flush_interval="1")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(url + "/health", process, 60, lambda: log.read_text(errors="replace"))
            load = Load(url + "/work", threads=4, rate=RATE)
            assert wait_until(lambda: load.count() >= RATE * 5, timeout=60)
            buffer.stop()
            down_at = time.time()
            threading.Event().wait(OUTAGE)  # the outage itself (not a wait for a result)
            up_at = time.time()
            buffer.start()
            at_up = load.count()
            assert wait_until(lambda: load.count() >= at_up + RATE * 3, timeout=60)
            answered = load.stop()
            assert wait_until(lambda: server.event_count() >= len(answered), timeout=120), (
                f"{server.event_count()} of {len(answered)} billed: " + fwd_log.read_text(errors="replace")[-2000:]
            )
            delivered_at = time.time()
        finally:
            stop(process, log)
            stop_forwarder(fwd, fwd_log)
        stored = [e["metadata"]["request_id"] for e in server.events()]
    before = [load.latency[r] for r, at in answered.items() if at < down_at]
    during = [load.latency[r] for r, at in answered.items() if down_at <= at < up_at]
    print(
        f"\nRedis down {OUTAGE:.0f} s at {RATE:.0f} requests/s: {len(during)} requests answered meanwhile; latency "
        f"before {percentiles(before)}; during {percentiles(during)}; all {len(answered)} billed "
        f"{delivered_at - up_at:.1f} s after Redis came back"
    )
    assert load.failed == 0, "no request failed"
    assert len(during) >= RATE * OUTAGE / 2, "the app kept serving"
    assert set(answered) <= set(stored), f"{len(set(answered) - set(stored))} answered requests were not billed"
    assert set(stored) == set(answered) and len(stored) == len(set(stored)), "exactly one event per request"
    # That no request waits for Redis is proved without a clock in test_buffer.py (only the flush thread calls
    # it); the latencies above are the figures for the README.
    assert "cannot write to Redis" in log.read_text(errors="replace"), "the workers said Redis was unavailable"
