"""A real gunicorn (2 sync workers, with and without --preload) serving examples/flask_app.py:
after a graceful stop the local server holds exactly one event per metered request."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from dodo_ingest.localserver import LocalDodoServer
from tests.conftest import TEST_KEY
from tests.helpers import free_port, wait_for_http

pytest.importorskip("gunicorn")

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 120
KEYS = {"key_alice": "cus_alice", "key_bob": "cus_bob", "key_carol": "cus_carol"}  # the example's API keys


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-import", "preload"])
def test_gunicorn_delivers_exactly_one_event_per_request(dodo_server: LocalDodoServer, preload: bool) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DODO_PAYMENTS_API_KEY": TEST_KEY,
        "DODO_PAYMENTS_BASE_URL": dodo_server.url,
        "DODO_INGEST_FLUSH_INTERVAL": "30",  # nothing is sent on the way: the exit drain must deliver
        "DODO_INGEST_SHUTDOWN_TIMEOUT": "10",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--workers",
        "2",
        "--worker-class",
        "sync",
        "--bind",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "20",
        "--log-level",
        "warning",
        "--chdir",
        str(ROOT),
    ]
    if preload:
        command.append("--preload")
    command.append("examples.flask_app:app")
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", process, 30, lambda: "gunicorn did not serve the example app")

        def call(index: int) -> int:
            key = list(KEYS)[index % len(KEYS)]
            path = f"/api/v1/items/{index}" if index % 7 else "/api/v1/items/5000"  # some 404s
            with requests.Session() as session:  # a new connection each time: both workers take requests
                return session.get(url + path, headers={"X-Api-Key": key}, timeout=10).status_code

        with ThreadPoolExecutor(max_workers=6) as pool:
            statuses = list(pool.map(call, range(REQUESTS)))
        assert Counter(statuses) == {200: REQUESTS - len(range(0, REQUESTS, 7)), 404: len(range(0, REQUESTS, 7))}
        # unauthenticated and exempt requests are not metered
        assert requests.get(url + "/api/v1/items/1", timeout=10).status_code == 401
        assert requests.get(url + "/health", headers={"X-Api-Key": "key_alice"}, timeout=10).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
    assert process.returncode == 0, output.decode(errors="replace")
    assert dodo_server.wait_for_events(REQUESTS, timeout=15)
    events = dodo_server.events()
    assert len(events) == REQUESTS, output.decode(errors="replace")
    assert len({e["event_id"] for e in events}) == REQUESTS
    per_customer = Counter(e["customer_id"] for e in events)
    assert per_customer == {c: REQUESTS // len(KEYS) for c in KEYS.values()}
    assert {e["metadata"]["endpoint"] for e in events} == {"/api/v1/items/<int:item_id>"}
    assert Counter(e["metadata"]["status_code"] for e in events)[404] == len(range(0, REQUESTS, 7))
