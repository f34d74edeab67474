"""The README's plain-WSGI example, served by a real wsgiref server on loopback, delivering to the local server."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from types import ModuleType
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
import requests

from dodo_ingest.localserver import LocalDodoServer
from tests.conftest import TEST_KEY


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def example(dodo_server: LocalDodoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv("DODO_PAYMENTS_API_KEY", TEST_KEY)
    monkeypatch.setenv("DODO_PAYMENTS_BASE_URL", dodo_server.url)
    module = importlib.reload(importlib.import_module("examples.wsgi_app"))
    yield module
    module.application.shutdown(timeout=5)


def test_the_wsgi_example_meters_items_with_templates_and_skips_health(
    example: ModuleType, dodo_server: LocalDodoServer
) -> None:
    with make_server("127.0.0.1", 0, example.application, handler_class=_QuietHandler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.server_port}"
        try:
            assert requests.get(base + "/api/v1/items/42", headers={"X-Customer-Id": "cus_1"}, timeout=5).json() == {
                "id": 42
            }
            requests.get(base + "/api/v1/items/7", headers={"X-Customer-Id": "cus_2"}, timeout=5)
            requests.get(base + "/nope", headers={"X-Customer-Id": "cus_1"}, timeout=5)
            requests.get(base + "/health", headers={"X-Customer-Id": "cus_1"}, timeout=5)  # excluded
            requests.get(base + "/api/v1/items/9", timeout=5)  # no customer: not billed
        finally:
            server.shutdown()
            thread.join(5)
    assert example.application.flush(timeout=10)
    events = sorted(dodo_server.events(), key=lambda e: (e["customer_id"], e["metadata"]["endpoint"]))
    assert [(e["customer_id"], e["metadata"]["endpoint"], e["metadata"]["status_code"]) for e in events] == [
        ("cus_1", "/api/v1/items/{id}", 200),
        ("cus_1", "<unmatched>", 404),
        ("cus_2", "/api/v1/items/{id}", 200),
    ]
    assert example.application.ingestion.stats().skipped == {"filtered": 1, "no_customer": 1}
