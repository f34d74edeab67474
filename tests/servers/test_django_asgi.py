"""Django's async views under a real ASGI server (uvicorn): one event per request, sync and async views and
streamed responses alike, delivered while the server runs (the stop is tested in ``test_sigterm``)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from dodo_ingest.localserver import LocalDodoServer
from tests.servers.harness import DJANGO_ASGI, ServerProcess, app_env, check_store, drive
from tests.servers.test_sigterm import STOPPED_BY_SIGTERM, sync_and_async, uvicorn

# Real server processes: slow (the `servers` tox environment); a generous per-test limit for a busy 2-core box.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_django_async_views_under_uvicorn(dodo_server: LocalDodoServer, tmp_path: Path) -> None:
    env = app_env(dodo_server, flush_interval="0.2")
    with ServerProcess(uvicorn(DJANGO_ASGI), env, tmp_path, name="uvicorn") as server:
        served = drive(server.url, range(300), paths=sync_and_async, threads=8)
        # delivered by the running process: checked before the stop
        check_store(dodo_server, served, server.output(), settle=30)
        endpoints = {e["metadata"]["endpoint"] for e in dodo_server.events()}
        assert endpoints == {"/api/async", "/api/work", "/api/astream"}, endpoints
        assert server.stop(signal.SIGTERM) in STOPPED_BY_SIGTERM, server.output()
    check_store(dodo_server, served, server.output())
    output = server.output()
    assert "Traceback" not in output and "SynchronousOnlyOperation" not in output, output
