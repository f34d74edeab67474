"""Fixtures of the Django tests: captured events, and delivery to the local server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pytest_django import Settings

from dodo_ingest.ingestion import Ingestion
from dodo_ingest.localserver import LocalDodoServer
from dodo_ingest.testing import CapturedEvents, capture_events
from dodo_ingest_django import get_ingestion
from tests.conftest import TEST_KEY
from tests.django_tests import views


@pytest.fixture(autouse=True)
def _clean_hook_calls() -> Iterator[None]:
    views.hook_calls.clear()
    yield
    views.hook_calls.clear()


@pytest.fixture
def events() -> Iterator[CapturedEvents]:
    """Every event the middleware builds during the test, validated, in the calling thread."""
    with capture_events() as captured:
        yield captured


@pytest.fixture
def live(settings: Settings, dodo_server: LocalDodoServer) -> Iterator[Ingestion]:
    """Point the middleware at the local Dodo server (real HTTP delivery); yields the shared ingestion."""
    settings.DODO_INGEST_API_KEY = TEST_KEY
    settings.DODO_INGEST_BASE_URL = dodo_server.url
    settings.DODO_INGEST_FLUSH_INTERVAL = 0.05
    settings.DODO_INGEST_MAX_RETRY_TIME = 5.0
    ingestion = get_ingestion()
    yield ingestion
    ingestion.flush(timeout=5.0)
