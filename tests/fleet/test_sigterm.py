"""``dodo-ingest forward`` as a process: SIGTERM while a request is in flight finishes it, acknowledges, exits 0."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from dodo_ingest.localserver import Fault, LocalDodoServer
from tests.fleet.processes import forwarder, stop_forwarder
from tests.fleet.test_forwarder import backlog, write_events
from tests.helpers import wait_until


@pytest.mark.slow
def test_sigterm_finishes_the_request_in_flight_and_acknowledges_it(
    dodo_server: LocalDodoServer, redis_url: str, tmp_path: Path
) -> None:
    dodo_server.add_faults(Fault(delay=3.0, repeat=1))  # a slow answer: the request is in flight for 3 s
    ids = write_events(redis_url, 500)
    log = tmp_path / "forwarder.log"
    process = forwarder(dodo_server, redis_url, "fwd", log, flush_interval="0.1")
    try:
        assert wait_until(lambda: dodo_server.faults.pending() == 0, timeout=30), "the request reached the server"
        process.send_signal(signal.SIGTERM)
    finally:
        stop_forwarder(process, log)
    assert sorted(e["event_id"] for e in dodo_server.events()) == ids
    assert [r.status for r in dodo_server.requests] == [200]
    assert backlog(redis_url) == (0, 0), "acknowledged before it exited"
    assert "500 events sent in 1 requests" in log.read_text()
