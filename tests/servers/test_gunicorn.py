"""gunicorn, as production runs it: sync workers with and without ``--preload``, gthread, gevent, workers
recycled by ``--max-requests``, and a ``SIGHUP`` reload in the middle of the load.

Events are flushed by time only every 30 s, so what a worker holds when it exits (recycled, reloaded or
stopped) must be delivered by its exit drain. Each run ends with a graceful stop (SIGTERM to the master);
then the local Dodo server must hold exactly one event per served request.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import requests

from dodo_ingest.localserver import LocalDodoServer
from tests.servers.harness import APPS, BackgroundLoad, Served, ServerProcess, app_env, check_store, gunicorn

# Real server processes: slow (the `servers` tox environment); a generous per-test limit for a busy 2-core box.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def assert_not_billed(url: str) -> None:
    """Requests the apps must not bill: no token, an unknown token, the excluded health check."""
    assert requests.get(url + "/api/work", timeout=30).status_code == 401
    assert requests.get(url + "/api/work", headers={"Authorization": "Bearer nope"}, timeout=30).status_code == 401
    assert requests.get(url + "/health", headers={"Authorization": "Bearer tok_alice"}, timeout=30).ok


def exited(server: ServerProcess, pid: int) -> bool:
    """Whether gunicorn logged the exit of worker ``pid``."""
    return f"Worker exiting (pid: {pid})" in server.output()


def recycled(server: ServerProcess) -> int:
    """How many workers gunicorn restarted after their ``--max-requests``."""
    return server.output().count("Autorestarting worker after current request")


def load_both_workers(server: ServerProcess, requests: int, threads: int = 4) -> dict[int, Served]:
    """At least ``requests`` requests, and until both workers have served some (the second may boot later)."""
    with BackgroundLoad(server.url, threads=threads) as load:
        load.wait_for(lambda: load.count() >= requests and len(load.pids()) >= 2, 120, "both workers to serve")
    return load.stop()


def stop_gracefully(server: ServerProcess) -> None:
    """SIGTERM to the master: gunicorn stops its workers gracefully and exits 0."""
    returncode = server.stop(signal.SIGTERM)
    assert returncode == 0, server.output()


def check(dodo_server: LocalDodoServer, served: dict[int, Served], server: ServerProcess) -> None:
    """One stored event per served request; and no traceback in the server's output."""
    check_store(dodo_server, served, server.output())
    assert "Traceback" not in server.output(), server.output()


@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-import", "preload"])
@pytest.mark.parametrize("app", ["wsgi", "flask", "django"])
def test_sync_workers(dodo_server: LocalDodoServer, tmp_path: Path, app: str, preload: bool) -> None:
    options = ["--worker-class", "sync", *(["--preload"] if preload else [])]
    with ServerProcess(gunicorn(APPS[app], *options), app_env(dodo_server), tmp_path) as server:
        served = load_both_workers(server, 120)
        assert_not_billed(server.url)
        stop_gracefully(server)
    check(dodo_server, served, server)


@pytest.mark.parametrize("app", ["flask", "django"])
def test_gthread_workers(dodo_server: LocalDodoServer, tmp_path: Path, app: str) -> None:
    options = ["--worker-class", "gthread", "--threads", "8"]
    with ServerProcess(gunicorn(APPS[app], *options), app_env(dodo_server), tmp_path) as server:
        served = load_both_workers(server, 400, threads=16)
        assert_not_billed(server.url)
        stop_gracefully(server)
    check(dodo_server, served, server)


@pytest.mark.parametrize("app", ["wsgi", "flask"])
def test_gevent_workers(dodo_server: LocalDodoServer, tmp_path: Path, app: str) -> None:
    options = ["--worker-class", "gevent", "--worker-connections", "100"]
    env = app_env(dodo_server, max_batch_size="1000")  # nothing is sent before the exit drain
    with ServerProcess(gunicorn(APPS[app], *options), env, tmp_path) as server:
        served = load_both_workers(server, 300, threads=16)
        assert_not_billed(server.url)
        stop_gracefully(server)
    check(dodo_server, served, server)


def test_max_requests_recycles_workers_mid_run(dodo_server: LocalDodoServer, tmp_path: Path) -> None:
    """Each worker exits after 50-60 requests; its queue is delivered by its exit drain, while it exits."""
    options = ["--worker-class", "sync", "--max-requests", "50", "--max-requests-jitter", "10"]
    with ServerProcess(gunicorn(APPS["flask"], *options), app_env(dodo_server), tmp_path) as server:
        with BackgroundLoad(server.url) as load:
            load.wait_for(lambda: len(load.pids()) >= 2, 60, "both workers to serve")
            first = set(load.pids())
            # gunicorn logs each exit; wait for both first workers and then a replacement to be recycled
            load.wait_for(
                lambda: all(exited(server, pid) for pid in first) and recycled(server) >= 3,
                120,
                "both first workers and a replacement to be recycled",
            )
            after = load.count()
            load.wait_for(lambda: load.count() >= after + 50, 60, "load on the replacements")
        served = load.stop()
        stop_gracefully(server)
    assert len({s.pid for s in served.values()}) >= 4
    check(dodo_server, served, server)


@pytest.mark.parametrize("preload", [False, True], ids=["fork-then-import", "preload"])
def test_sighup_reload_mid_load(dodo_server: LocalDodoServer, tmp_path: Path, preload: bool) -> None:
    """SIGHUP starts new workers and stops the old ones gracefully while requests keep coming."""
    options = ["--worker-class", "sync", *(["--preload"] if preload else [])]
    with ServerProcess(gunicorn(APPS["django"], *options), app_env(dodo_server), tmp_path) as server:
        with BackgroundLoad(server.url) as load:
            load.wait_for(lambda: len(load.pids()) >= 2 and load.count() >= 100, 60, "load on both workers")
            before = set(load.pids())
            server.send(signal.SIGHUP)
            load.wait_for(lambda: len(set(load.pids()) - before) >= 2, 120, "two new workers to serve")
            after = load.count()
            load.wait_for(lambda: load.count() >= after + 100, 60, "load on the new workers")
        served = load.stop()
        stop_gracefully(server)
    check(dodo_server, served, server)
