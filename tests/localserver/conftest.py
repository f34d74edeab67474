"""Fixtures of the local server's own tests: one server per test, and an authorized HTTP session."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE, Popen

import pytest
import requests

from dodo_ingest.localserver import LocalDodoServer

KEY = "sk_test_localserver_suite"
AUTH = {"Authorization": f"Bearer {KEY}"}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server() -> Iterator[LocalDodoServer]:
    """A local Dodo server in this process, on a free loopback port, accepting :data:`KEY`."""
    with LocalDodoServer(api_key=KEY) as srv:
        yield srv


@pytest.fixture
def http() -> Iterator[requests.Session]:
    """A session that sends :data:`AUTH` with every request."""
    with requests.Session() as session:
        session.headers.update(AUTH)
        yield session


def run_cli(cwd: Path, *argv: str, key: str | None = KEY, module: str = "dodo_ingest.localserver") -> Popen[str]:
    """``python -m dodo_ingest.localserver ARGV`` (or another ``module``) from this checkout, in ``cwd``, with
    ``DODO_LOCAL_API_KEY`` set to ``key`` (None: unset) and text stdout and stderr piped."""
    env = {k: v for k, v in os.environ.items() if k != "DODO_LOCAL_API_KEY"}
    env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    if key is not None:
        env["DODO_LOCAL_API_KEY"] = key
    return Popen([sys.executable, "-m", module, *argv], stdout=PIPE, stderr=PIPE, text=True, env=env, cwd=cwd)
