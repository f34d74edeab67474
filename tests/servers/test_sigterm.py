"""Servers whose ordinary stop is SIGTERM without a drain of their own (issue 7, item 14).

waitress installs no SIGTERM handler (the default one ends the process: ``atexit`` never runs); uvicorn
handles SIGTERM, shuts down gracefully and then re-raises it with the default handler (again no
``atexit``). Events still queued in memory must be delivered on these stops, and the server's own signal
handling must go on working: the process still exits on SIGTERM (with its usual status).

Nothing is flushed by time during the run (``flush_interval`` 30 s): the stop must deliver everything.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dodo_ingest.localserver import LocalDodoServer
from tests.servers.harness import APPS, DJANGO_ASGI, Served, ServerProcess, app_env, check_store, drive

# Real server processes: slow (the `servers` tox environment); a generous per-test limit for a busy 2-core box.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: A stop by SIGTERM: a clean exit, or the default action of the signal re-raised (chained, not replaced).
STOPPED_BY_SIGTERM = (0, -signal.SIGTERM)


def waitress(app: str) -> Callable[[int], list[str]]:
    """A waitress command line for ``app`` (``python -m waitress``, 4 threads)."""
    return lambda port: [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", "--threads=4", app]


def uvicorn(app: str, *options: str) -> Callable[[int], list[str]]:
    """A uvicorn command line for the ASGI ``app``."""
    return lambda port: [
        sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", "--lifespan", "off", *options, app,
    ]  # fmt: skip


def sync_and_async(seq: int) -> str:
    """Django on ASGI: async views, sync views and (async) streamed responses, interleaved."""
    return ("/api/async", "/api/work", "/api/astream")[seq % 3]


def stop_and_check(dodo_server: LocalDodoServer, server: ServerProcess, served: dict[int, Served]) -> None:
    returncode = server.stop(signal.SIGTERM)
    assert returncode in STOPPED_BY_SIGTERM, (returncode, server.output())
    check_store(dodo_server, served, server.output())
    assert "Traceback" not in server.output(), server.output()


@pytest.mark.parametrize("app", ["wsgi", "flask", "django"])
def test_waitress_stopped_by_sigterm_delivers_every_event(
    dodo_server: LocalDodoServer, tmp_path: Path, app: str
) -> None:
    with ServerProcess(waitress(APPS[app]), app_env(dodo_server), tmp_path, name="waitress") as server:
        served = drive(server.url, range(96))
        stop_and_check(dodo_server, server, served)


@pytest.mark.parametrize("workers", [1, 2])
def test_uvicorn_stopped_by_sigterm_delivers_every_event(
    dodo_server: LocalDodoServer, tmp_path: Path, workers: int
) -> None:
    command = uvicorn(DJANGO_ASGI, *(["--workers", str(workers)] if workers > 1 else []))
    with ServerProcess(command, app_env(dodo_server), tmp_path, name="uvicorn") as server:
        served = drive(server.url, range(96 * workers), paths=sync_and_async, threads=4 * workers)
        stop_and_check(dodo_server, server, served)
