"""Fixtures of the blueprint tests: the fake LLM API server and a tracker pointed at the local Dodo server."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from dodo_ingest import Ingestion, LLMTracker, create_llm_tracker
from tests.blueprints.fake_llm import FakeLLMServer


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMServer]:
    """A local server that answers like the OpenAI and Anthropic APIs."""
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def tracker(make_ingestion: Callable[..., Ingestion]) -> LLMTracker:
    """An LLM tracker (event name ``llm_usage``) whose events go to ``dodo_server``."""
    return create_llm_tracker(ingestion=make_ingestion(event_name="llm_usage"))
