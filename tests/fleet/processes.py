"""Forwarders as processes (``python -m dodo_ingest.cli forward``), for the fleet's real-process tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import redis

from dodo_ingest.fleet.stream import GROUP
from dodo_ingest.localserver import LocalDodoServer
from tests.conftest import TEST_KEY
from tests.spool.test_gunicorn import ROOT, stop

STREAM = "dodo-ingest:events"


def forwarder(
    server: LocalDodoServer, buffer_url: str, name: str, log: Path, *args: str, **settings: str
) -> subprocess.Popen[bytes]:
    """``dodo-ingest forward --buffer buffer_url --name name`` into ``server``, logging to ``log``."""
    env = {
        **os.environ,
        "DODO_PAYMENTS_API_KEY": TEST_KEY,
        "DODO_PAYMENTS_BASE_URL": server.url,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **{f"DODO_INGEST_{k.upper()}": v for k, v in settings.items()},
    }
    command = [sys.executable, "-m", "dodo_ingest.cli", "forward", "--buffer", buffer_url, "--name", name, *args]
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def stop_forwarder(process: subprocess.Popen[bytes], log: Path) -> None:
    """SIGTERM, and a clean exit within 30 s."""
    stop(process, log, timeout=30)


def pending_of(buffer_url: str, consumer: str) -> int:
    """Entries the consumer holds unacknowledged (0 when Redis does not answer)."""
    client = redis.Redis.from_url(buffer_url, socket_timeout=2)
    try:
        return len(client.xpending_range(STREAM, GROUP, "-", "+", 10, consumername=consumer))
    except (redis.RedisError, OSError):
        return 0
    finally:
        client.close()
