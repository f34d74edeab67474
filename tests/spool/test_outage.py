"""Dodo down for a minute under 500 requests/s (gunicorn, ``max_queue_size=1000``, the spool on): nothing is lost,
memory stays flat while the backlog waits on disk, and after recovery the backlog goes out in full requests.

``DODO_OUTAGE_SECONDS`` sets the outage (default 10 s in the suite; the README's figures are for 60 s).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dodo_ingest import Batcher
from dodo_ingest.localserver import LocalDodoServer
from tests.conftest import TEST_KEY
from tests.helpers import free_port, wait_for_http, wait_until
from tests.spool.load import Load
from tests.spool.test_gunicorn import gunicorn, stop

pytest.importorskip("gunicorn")

OUTAGE = float(os.environ.get("DODO_OUTAGE_SECONDS", "10"))
RATE = 500.0


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def workers_of(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.slow
@pytest.mark.timeout(OUTAGE * 4 + 180)
def test_an_outage_under_load_loses_nothing_and_the_backlog_drains_in_full_requests(
    make_batch: Callable[..., Batcher], tmp_path: Path
) -> None:
    server_port, db = free_port(), str(tmp_path / "dodo.sqlite3")
    server = LocalDodoServer(api_key=TEST_KEY, port=server_port, db_path=db).start()
    spool_dir = tmp_path / "spool"
    port, log = free_port(), tmp_path / "gunicorn.log"
    process = gunicorn(server, 2, port, log, spool_dir=str(spool_dir), max_queue_size="1000", flush_interval="1")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", process, 30, lambda: log.read_text(errors="replace"))
        load = Load(url + "/work", threads=8, rate=RATE)
        assert wait_until(lambda: load.count() >= RATE * 3, timeout=30)
        server.stop()  # Dodo is down: connections are refused
        down_at, answered_before = time.monotonic(), load.count()
        threading.Event().wait(OUTAGE)  # the outage itself (not a wait for a result)
        backlog = load.count() - answered_before
        workers = workers_of(process.pid)
        rss_kib = max(peak_rss_kib(pid) for pid in workers)
        server = LocalDodoServer(api_key=TEST_KEY, port=server_port, db_path=db).start()  # back
        up_at = time.monotonic()
        assert wait_until(lambda: server.event_count() >= load.count() - RATE, timeout=OUTAGE + 120)
        drained_in = time.monotonic() - up_at
        answered = load.stop()
    finally:
        stop(process, log)
    try:
        assert make_batch(spool_dir=spool_dir, base_url=server.url).flush(timeout=60)
        stored = {e["metadata"]["request_id"] for e in server.events()}
        assert set(answered) <= stored, f"{len(set(answered) - stored)} answered requests were not billed"
        assert len(stored) == server.event_count()
        after = [r.event_count for r in server.requests if r.status == 200]
        full = math.floor(backlog / 1000) - 1
        print(
            f"\noutage {time.monotonic() - down_at - drained_in:.0f} s at {RATE:.0f} requests/s: {backlog} events "
            f"spooled, peak RSS of a worker {rss_kib / 1024:.1f} MiB; the backlog reached Dodo "
            f"{drained_in:.1f} s after it came back, in {len(after)} requests {after[:12]}..."
        )
        # the first is the request that was being retried when Dodo went down; the backlog follows, in full requests
        assert after[1 : full + 1] == [1000] * full, "the backlog goes out in full requests"
        assert rss_kib < 150 * 1024, "memory stays bounded while the backlog waits on disk"
    finally:
        server.stop()
