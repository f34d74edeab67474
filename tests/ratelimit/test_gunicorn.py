"""A real gunicorn (4 sync workers) serving examples/flask_app.py with rate limits from the environment.

With Redis storage, concurrent clients of one customer limited to 50 a minute get exactly 50 answers and the rest
429 with the rate-limit fields, and after a graceful stop the local Dodo server holds exactly 50 billed events:
the quota Redis counted. With ``memory://`` every worker warns that the limit is multiplied by 4.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from dodo_ingest.localserver import LocalDodoServer
from dodo_ingest.ratelimit import Limiter
from tests.conftest import TEST_KEY
from tests.helpers import free_port, wait_for_http

pytest.importorskip("gunicorn")

ROOT = Path(__file__).resolve().parents[2]
WORKERS = 4
CALLS = 200
LIMITS = "50/minute;1000/month"


def serve(dodo_server: LocalDodoServer, log: Path, **settings: str) -> tuple[subprocess.Popen[bytes], str]:
    """gunicorn -w 4 serving the example app; ``settings`` become ``DODO_INGEST_*`` environment variables."""
    port = free_port()
    env = {
        **os.environ,
        "DODO_PAYMENTS_API_KEY": TEST_KEY,
        "DODO_PAYMENTS_BASE_URL": dodo_server.url,
        "DODO_INGEST_FLUSH_INTERVAL": "30",  # nothing is flushed by time: the exit drain delivers
        "DODO_INGEST_SHUTDOWN_TIMEOUT": "10",
        **{f"DODO_INGEST_{name.upper()}": value for name, value in settings.items()},
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable, "-m", "gunicorn",
        "--workers", str(WORKERS),
        "--worker-class", "sync",
        "--bind", f"127.0.0.1:{port}",
        "--graceful-timeout", "20",
        "--log-level", "warning",
        "--chdir", str(ROOT),
        "examples.flask_app:app",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_for_http(url + "/health", process, 30, lambda: log.read_text(errors="replace"))
    return process, url


def stop(process: subprocess.Popen[bytes], log: Path) -> str:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log.read_text(errors="replace")
    assert process.returncode == 0, output
    return output


def hammer(url: str) -> list[requests.Response]:
    """``CALLS`` requests of one customer from 16 threads, each on a new connection (every worker gets some)."""

    def call(index: int) -> requests.Response:
        with requests.Session() as session:
            response = session.get(f"{url}/api/v1/items/{index}", headers={"X-Api-Key": "key_alice"}, timeout=10)
            response.content  # noqa: B018 - read it all
            return response

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(call, range(CALLS)))


@pytest.mark.slow
def test_four_workers_on_redis_admit_exactly_50_and_bill_exactly_50(
    dodo_server: LocalDodoServer, redis_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "gunicorn.log"
    process, url = serve(dodo_server, log, rate_limits=LIMITS, rate_limit_storage=redis_url)
    try:
        responses = hammer(url)
    finally:
        output = stop(process, log)
    assert Counter(r.status_code for r in responses) == {200: 50, 429: CALLS - 50}, output
    for response in responses:
        assert response.headers["RateLimit-Policy"].startswith('"50/minute";q=50;w=60, "1000/month";q=1000;w=')
        assert response.headers["RateLimit"].startswith('"50/minute";r=')
        if response.status_code == 429:
            body: dict[str, Any] = response.json()
            assert (body["error"], body["policy"]) == ("rate_limited", "50/minute")
            assert int(response.headers["Retry-After"]) >= 1
        else:
            assert "Retry-After" not in response.headers
    assert "memory://" not in output and "Traceback" not in output

    assert dodo_server.wait_for_events(50, timeout=15)
    stored = dodo_server.events()
    assert len(stored) == 50, output  # exactly the admitted requests are billed
    assert {e["customer_id"] for e in stored} == {"cus_alice"} and len({e["event_id"] for e in stored}) == 50
    assert {e["metadata"]["cost"] for e in stored} == {1}
    quota = {s.policy: s.used for s in Limiter(LIMITS, storage=redis_url).usage("cus_alice")}
    assert quota["1000/month"] == 50  # what Redis counted for the month is what the server holds


@pytest.mark.slow
def test_memory_storage_with_four_workers_warns_and_multiplies(dodo_server: LocalDodoServer, tmp_path: Path) -> None:
    log = tmp_path / "gunicorn.log"
    process, url = serve(dodo_server, log, rate_limits=LIMITS)
    try:
        responses = hammer(url)
    finally:
        output = stop(process, log)
    assert f"rate_limit_storage is memory:// with {WORKERS} worker processes" in output
    assert f"multiplied by {WORKERS}" in output
    admitted = sum(1 for r in responses if r.status_code == 200)
    assert 50 < admitted <= 50 * WORKERS  # each worker counted on its own
