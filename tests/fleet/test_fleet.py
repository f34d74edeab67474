"""Two hosts (two gunicorns, 2 workers each) and two forwarders, against Dodo's budget (``--rate-limit
100/minute``): one forwarder killed with ``kill -9`` while it holds entries, Redis (AOF) restarted once. Every
answered request is billed exactly once, and the fleet stays within one request budget.

``DODO_FLEET_RATE`` sets the load in requests per second (default 200).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from dodo_ingest.localserver import LocalDodoServer
from tests.conftest import TEST_KEY
from tests.fleet.processes import forwarder, pending_of, stop_forwarder
from tests.helpers import free_port, wait_for_http, wait_until
from tests.ratelimit.redis_server import RedisServer
from tests.spool.load import Load
from tests.spool.test_gunicorn import gunicorn, stop

pytest.importorskip("gunicorn")

RATE = float(os.environ.get("DODO_FLEET_RATE", "200"))
BUDGET = 90  # max_requests_per_minute, the default: under the server's 100


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_hosts_two_forwarders_a_kill_and_a_redis_restart_bill_once_within_the_budget(tmp_path: Path) -> None:
    with RedisServer(aof=True) as buffer, LocalDodoServer(api_key=TEST_KEY, rate_limit="100/minute") as server:
        started = time.monotonic()
        hosts, urls, logs = [], [], []
        for n in range(2):
            port, log = free_port(), tmp_path / f"gunicorn-{n}.log"
            hosts.append(gunicorn(server, 2, port, log, buffer_url=buffer.url, shutdown_timeout="10"))
            urls.append(f"http://127.0.0.1:{port}")
            logs.append(log)
        fwd_logs = [tmp_path / "fwd-a.log", tmp_path / "fwd-b.log"]
        settings = {"flush_interval": "0.1"}  # each forwarder alone would make ~10 requests/s: the budget binds
        forwarders = [
            forwarder(server, buffer.url, name, log, "--lease", "3", **settings)
            for name, log in zip(("fwd-a", "fwd-b"), fwd_logs, strict=True)
        ]
        loads: list[Load] = []
        try:
            for url, process, log in zip(urls, hosts, logs, strict=True):
                wait_for_http(url + "/health", process, 60, lambda log=log: log.read_text(errors="replace"))
            loads = [Load(url + "/work", threads=4, rate=RATE / 2, prefix=f"host{n}") for n, url in enumerate(urls)]

            def answered() -> int:
                return sum(load.count() for load in loads)

            assert wait_until(lambda: answered() >= RATE * 3, timeout=60)
            assert wait_until(lambda: pending_of(buffer.url, "fwd-a") > 0, timeout=60), "fwd-a holds entries"
            os.kill(forwarders[0].pid, signal.SIGKILL)  # mid-run, with entries in hand
            forwarders[0].wait(timeout=10)
            at_kill = answered()
            assert wait_until(lambda: answered() >= at_kill + RATE * 3, timeout=60)
            buffer.stop()  # the one Redis restart (append-only file, fsync always)
            buffer.start()
            at_restart = answered()
            assert wait_until(lambda: answered() >= at_restart + RATE * 3, timeout=60)
            billed = {rid for load in loads for rid in load.stop()}
            failed = sum(load.failed for load in loads)
            loads = []
            assert wait_until(lambda: server.event_count() >= len(billed), timeout=120), (
                f"{server.event_count()} of {len(billed)} billed; " + fwd_logs[1].read_text(errors="replace")[-2000:]
            )
            elapsed = time.monotonic() - started
        finally:
            for load in loads:
                load.stop()
            for process, log in zip(hosts, logs, strict=True):
                stop(process, log)
        stop_forwarder(forwarders[1], fwd_logs[1])
        events = server.events()
        stored = [e["metadata"]["request_id"] for e in events]
        responses = server.response_counts()["POST /events/ingest"]
        print(
            f"\n{len(billed)} answered in {elapsed:.0f} s, {len(stored)} billed; Dodo answered {responses}; "
            f"{len(server.requests)} requests, events per request {[r.event_count for r in server.requests][:20]}..."
        )
        assert failed == 0
        assert billed <= set(stored), f"{len(billed - set(stored))} answered requests were not billed"
        assert set(stored) == billed and len(stored) == len(set(stored)), "exactly one event per served request"
        assert "claimed" in fwd_logs[1].read_text(), "fwd-b took over what fwd-a held"
        assert responses.get("429", 0) == 0, "the fleet stayed within Dodo's budget"
        total = sum(responses.values())
        assert total <= BUDGET * (elapsed // 60 + 1), f"{total} requests in {elapsed:.0f} s: over {BUDGET}/minute"
        # the budget spreads the minute over 10 s windows of BUDGET / 6: at most that many per 10 s started
        assert total <= BUDGET // 6 * (elapsed // 10 + 1), f"{total} requests in {elapsed:.0f} s"
