"""``forwarder="embedded"`` under gunicorn: the workers elect one of themselves to forward; every answered
request is billed once, with no forwarder process."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from dodo_ingest.localserver import LocalDodoServer
from tests.helpers import free_port, wait_for_http, wait_until
from tests.spool.load import Load
from tests.spool.test_gunicorn import gunicorn, stop

pytest.importorskip("gunicorn")


@pytest.mark.slow
def test_gunicorn_workers_elect_one_embedded_forwarder(
    dodo_server: LocalDodoServer, redis_url: str, tmp_path: Path
) -> None:
    port, log = free_port(), tmp_path / "gunicorn.log"
    settings = {"buffer_url": redis_url, "forwarder": "embedded", "flush_interval": "0.5", "shutdown_timeout": "10"}
    process = gunicorn(dodo_server, 2, port, log, **settings)
    url = f"http://127.0.0.1:{port}"
    client = redis.Redis.from_url(redis_url)
    try:
        wait_for_http(url + "/health", process, 60, lambda: log.read_text(errors="replace"))
        load = Load(url + "/work", threads=4, rate=200)
        assert wait_until(lambda: dodo_server.event_count() >= 1000, timeout=60), log.read_text(errors="replace")
        forwarders = list(client.scan_iter(match="dodo-ingest:forwarder:*"))
        answered = load.stop()
        assert wait_until(lambda: dodo_server.event_count() >= len(answered), timeout=60)
    finally:
        stop(process, log)
        client.close()
    stored = [e["metadata"]["request_id"] for e in dodo_server.events()]
    assert set(answered) <= set(stored) and len(stored) == len(set(stored))
    assert len(forwarders) == 1, f"one elected forwarder, not {forwarders}"
