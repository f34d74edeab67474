"""Fixtures of the fleet tests: a real redis-server (shared, flushed per test), forwarders run in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("redis", reason="the fleet extra is not installed")
pytest.importorskip("limits", reason="the fleet extra is not installed")


from dodo_ingest.config import Config
from dodo_ingest.fleet.forwarder import Forwarder
from dodo_ingest.localserver import LocalDodoServer
from tests.conftest import TEST_KEY
from tests.ratelimit.redis_server import RedisServer


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop and start."""
    with RedisServer() as server:
        yield server


class Running:
    """A forwarder running in a thread of the test process."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self.thread = threading.Thread(target=forwarder.run, daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 20.0) -> None:
        self.forwarder.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the forwarder did not stop"


@pytest.fixture
def start_forwarder(dodo_server: LocalDodoServer) -> Iterator[Callable[..., Running]]:
    """Start forwarders (in threads) from a buffer to ``dodo_server``; stopped after the test."""
    started: list[Running] = []

    def start(url: str, *, settings: dict[str, Any] | None = None, **options: Any) -> Running:
        settings = {"api_key": TEST_KEY, "base_url": dodo_server.url, "flush_interval": 0.2, **(settings or {})}
        config = Config.load(settings)
        running = Running(Forwarder(config, url, **options))
        started.append(running)
        return running

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()
