"""Eight gunicorn workers sharing a spool against Dodo's request budget (``--rate-limit 100/minute``): one of them
sends for all, within the budget, and every answered request is billed once.

``DODO_FLEET_SECONDS`` sets the length of the run (default 15 s in the suite; the README's figures are for 180 s).
"""

from __future__ import annotations

import os
import threading
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

SECONDS = float(os.environ.get("DODO_FLEET_SECONDS", "15"))
RATE = 100.0


@pytest.mark.slow
@pytest.mark.timeout(SECONDS * 2 + 240)
def test_eight_workers_share_one_sender_within_the_request_budget(
    make_batch: Callable[..., Batcher], tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    with LocalDodoServer(api_key=TEST_KEY, rate_limit="100/minute") as server:
        port, log = free_port(), tmp_path / "gunicorn.log"
        process = gunicorn(server, 8, port, log, spool_dir=str(spool_dir), shutdown_timeout="10")
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(url + "/health", process, 60, lambda: log.read_text(errors="replace"))
            load = Load(url + "/work", threads=8, rate=RATE)
            threading.Event().wait(SECONDS)  # the run itself (not a wait for a result)
            answered = load.stop()
            assert wait_until(lambda: server.event_count() >= len(answered), timeout=120)
        finally:
            stop(process, log)
        assert make_batch(spool_dir=spool_dir, max_requests_per_minute=None).flush(timeout=60)
        stored = {e["metadata"]["request_id"] for e in server.events()}
        responses = server.response_counts()["POST /events/ingest"]
        print(f"\n{len(answered)} answered in {SECONDS:.0f} s, {len(stored)} billed, Dodo answered {responses}")
        assert set(answered) <= stored, f"{len(set(answered) - stored)} answered requests were not billed"
        assert len(stored) == server.event_count()
        accepted, refused = responses.get("200", 0), responses.get("429", 0)
        assert accepted <= 100 * (SECONDS / 60 + 1), "one sender for eight workers: within the budget"
        assert refused <= max(2, accepted // 20), "429s are rare"
