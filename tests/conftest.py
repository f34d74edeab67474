"""Shared fixtures: a real local Dodo-compatible server on loopback, and hermetic settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dodo_ingest import Batcher, Ingestion
from dodo_ingest.localserver import LocalDodoServer
from tests.ratelimit.redis_server import RedisServer

TEST_KEY = "sk_test_local_0123456789abcdef"


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's real key or host."""
    monkeypatch.delenv("DODO_PAYMENTS_API_KEY", raising=False)
    monkeypatch.delenv("DODO_PAYMENTS_BASE_URL", raising=False)


@pytest.fixture(autouse=True)
def _fresh_shared_ingestions() -> Iterator[None]:
    """Adapters with equal settings share one Ingestion per process; each test starts with none."""
    yield
    from dodo_ingest import ingestion

    for shared in list(ingestion._shared.values()):
        shared.shutdown(timeout=5.0)
    ingestion._shared.clear()


@pytest.fixture
def dodo_server() -> Iterator[LocalDodoServer]:
    """The project's local Dodo-compatible server, in-process on an ephemeral loopback port."""
    with LocalDodoServer(api_key=TEST_KEY) as server:
        yield server


@pytest.fixture
def make_ingestion(dodo_server: LocalDodoServer) -> Iterator[Callable[..., Ingestion]]:
    """Build Ingestions pointed at ``dodo_server``; their batchers are shut down after the test."""
    made: list[Ingestion] = []

    def make(**settings: Any) -> Ingestion:
        settings.setdefault("api_key", TEST_KEY)
        settings.setdefault("base_url", dodo_server.url)
        settings.setdefault("shutdown_timeout", 10.0)
        ingestion = Ingestion(**settings)
        made.append(ingestion)
        return ingestion

    yield make
    for ingestion in made:
        ingestion.shutdown(timeout=5.0)


@pytest.fixture
def make_batch(make_ingestion: Callable[..., Ingestion]) -> Iterator[Callable[..., Batcher]]:
    """Build batchers pointed at ``dodo_server``; each is shut down after the test."""
    made: list[Batcher] = []

    def make(**settings: Any) -> Batcher:
        batch = make_ingestion().create_batch(**settings)
        made.append(batch)
        return batch

    yield make
    for batch in made:
        batch.shutdown(timeout=5.0)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session's tests that only need a working Redis (rate limits, the fleet)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared Redis, emptied for this test."""
    redis = pytest.importorskip("redis", reason="the ratelimit / fleet extra is not installed")
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url
