"""gunicorn with the spool on: a worker killed with ``kill -9`` mid-run loses only what it accepted in the last
moments before the kill, and the local server ends up with exactly one event per answered request otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dodo_ingest import Batcher
from dodo_ingest.localserver import LocalDodoServer
from tests.conftest import TEST_KEY
from tests.helpers import free_port, wait_for_http, wait_until
from tests.spool.load import Load

pytest.importorskip("gunicorn")

ROOT = Path(__file__).resolve().parents[2]
LOSS_WINDOW = 0.1


def gunicorn(server: LocalDodoServer, workers: int, port: int, log: Path, **settings: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DODO_PAYMENTS_API_KEY": TEST_KEY,
        "DODO_PAYMENTS_BASE_URL": server.url,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **{f"DODO_INGEST_{k.upper()}": v for k, v in settings.items()},
    }
    command = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--worker-class", "sync"]
    command += ["--bind", f"127.0.0.1:{port}", "--graceful-timeout", "20", "--log-level", "warning"]
    command += ["--chdir", str(ROOT), "tests.spool.load_app:application"]
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    """SIGTERM, and a clean exit (status 0) within ``timeout`` seconds; else the end of its log."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    assert process.returncode == 0, log.read_text(errors="replace")[-3000:]


@pytest.mark.slow
def test_a_gunicorn_worker_killed_mid_run_loses_only_its_last_moments(
    dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher], tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    port, log = free_port(), tmp_path / "gunicorn.log"
    process = gunicorn(dodo_server, 2, port, log, spool_dir=str(spool_dir), flush_interval="1")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", process, 30, lambda: log.read_text(errors="replace"))
        load = Load(url + "/work", threads=4)
        assert wait_until(lambda: load.count() >= 1500, timeout=60)
        lock = next(spool_dir.iterdir()) / "sender.lock"
        assert wait_until(lambda: lock.read_text().strip().isdigit(), timeout=10)
        leader = int(lock.read_text())
        assert leader != process.pid, "a worker sends, not the arbiter"
        killed_at = time.time()
        os.kill(leader, signal.SIGKILL)
        at_kill = load.count()
        assert wait_until(lambda: load.count() >= at_kill + 1500, timeout=60), "gunicorn did not recover"
        answered = load.stop()
    finally:
        stop(process, log)
    assert make_batch(spool_dir=spool_dir).flush(timeout=60)  # whatever the last exit left in the spool

    events = dodo_server.events()
    stored = [e["metadata"]["request_id"] for e in events]
    assert len(stored) == len(set(stored)), "one event per request"
    lost = [killed_at - at for rid, at in answered.items() if rid not in set(stored)]
    extra = set(stored) - set(answered)
    print(
        f"\n{len(answered)} answered, {len(stored)} events; lost {len(lost)} "
        f"(accepted at most {max(lost, default=0) * 1000:.1f} ms before the kill), "
        f"{len(extra)} events of requests whose answer the kill cut off"
    )
    assert all(gap < LOSS_WINDOW for gap in lost), f"lost an event answered {max(lost):.3f} s before the kill"
    assert len(extra) <= 4, "only requests in flight in the killed worker (one per caller) have no answer"


@pytest.mark.slow
def test_rollups_from_two_gunicorn_workers_through_the_spool_bill_every_request_once(
    dodo_server: LocalDodoServer, tmp_path: Path
) -> None:
    """Two workers fold their requests into rollups of 1 s windows, each with ids of its own process; the host's
    sender delivers them from the spool. The Sum over ``calls`` is the number of requests answered."""
    port, log = free_port(), tmp_path / "gunicorn.log"
    process = gunicorn(dodo_server, 2, port, log, spool_dir=str(tmp_path / "spool"), rollup_interval="1")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/health", process, 30, lambda: log.read_text(errors="replace"))
        load = Load(url + "/work", threads=4)
        assert wait_until(lambda: load.count() >= 2000, timeout=60)
        answered = load.stop()
        assert load.failed == 0
        assert wait_until(lambda: sum(e["metadata"]["calls"] for e in dodo_server.events()) >= len(answered), 30)
    finally:
        stop(process, log)  # the graceful stop sends the windows still open
    events = dodo_server.events()
    assert sum(e["metadata"]["calls"] for e in events) == len(answered)
    assert len({e["event_id"] for e in events}) == len(events) < len(answered) / 10
    assert {e["metadata"]["endpoint"] for e in events} == {"/work"}
