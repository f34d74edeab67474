"""A real server run: gunicorn (2 sync workers, with and without --preload) serving the example project.

After a graceful stop (SIGTERM: each worker's exit drain delivers what it still holds) the local Dodo
server must hold exactly one event per metered request: none lost, none duplicated.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import requests

from dodo_ingest.localserver import LocalDodoServer
from tests.conftest import TEST_KEY
from tests.helpers import free_port, wait_for_http

pytest.importorskip("gunicorn")

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "examples" / "django_project"
KEYS = {"key_alice": "cus_alice", "key_bob": "cus_bob", "key_carol": "cus_carol"}


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-load", "preload"])
def test_exactly_one_event_per_request_under_gunicorn(
    dodo_server: LocalDodoServer, tmp_path: Path, preload: bool
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "example.settings",  # pytest-django exported the test suite's
        "DODO_PAYMENTS_API_KEY": TEST_KEY,
        "DODO_PAYMENTS_BASE_URL": dodo_server.url,
        "DODO_INGEST_FLUSH_INTERVAL": "30",  # nothing is flushed by time: the exit drain must deliver
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable, "-m", "gunicorn",
        "--chdir", str(PROJECT),
        "--workers", "2",
        "--worker-class", "sync",
        "--bind", f"127.0.0.1:{port}",
        "--graceful-timeout", "20",
        "--log-level", "warning",
        *(["--preload"] if preload else []),
        "example.wsgi:application",
    ]  # fmt: skip
    log = (tmp_path / "gunicorn.log").open("wb")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + "/healthz", proc, 30, lambda: (tmp_path / "gunicorn.log").read_text(errors="replace"))
        expected: Counter[str] = Counter()
        with requests.Session() as session:
            for i in range(60):
                key = list(KEYS)[i % 3]
                if i % 4 == 0:
                    response = session.get(f"{base}/api/v1/items/{i}/", headers={"X-Api-Key": key}, timeout=5)
                    assert response.json()["id"] == i
                elif i % 4 == 1:
                    response = session.get(f"{base}/api/v1/export/", headers={"X-Api-Key": key}, timeout=5)
                    assert response.text.startswith("id,name\n")
                elif i % 4 == 2:
                    response = session.get(f"{base}/api/v1/nope/{i}", headers={"X-Api-Key": key}, timeout=5)
                    assert response.status_code == 404
                else:
                    response = session.get(f"{base}/api/v1/hello/", headers={"X-Api-Key": key}, timeout=5)
                expected[KEYS[key]] += 1
            # not metered: excluded path, and requests without a customer
            assert session.get(f"{base}/healthz", headers={"X-Api-Key": "key_alice"}, timeout=5).ok
            assert session.get(f"{base}/api/v1/hello/", timeout=5).ok
        # One request per fresh connection too, so both workers get traffic.
        for i in range(20):
            response = requests.get(f"{base}/api/v1/items/{i}/", headers={"X-Api-Key": "key_bob"}, timeout=5)
            assert response.status_code == 200
            expected["cus_bob"] += 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            returncode = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    output = (tmp_path / "gunicorn.log").read_text(errors="replace")
    assert returncode == 0, output

    total = sum(expected.values())
    assert dodo_server.wait_for_events(total, timeout=10), (dodo_server.event_count(), total, output)
    stored = dodo_server.events()
    assert len(stored) == total, output  # none lost, none duplicated
    assert len({e["event_id"] for e in stored}) == total
    assert Counter(e["customer_id"] for e in stored) == expected
    endpoints = Counter(e["metadata"]["endpoint"] for e in stored)
    assert endpoints["/api/v1/items/<int:item_id>/"] == 15 + 20
    assert endpoints["/api/v1/export/"] == 15
    assert endpoints["<unmatched>"] == 15
    exports = [e for e in stored if e["metadata"]["endpoint"] == "/api/v1/export/"]
    assert {e["metadata"]["response_bytes"] for e in exports} == {
        len("id,name\n") + sum(len(f"{i},item-{i}\n") for i in range(100))
    }
    assert "Traceback" not in output
