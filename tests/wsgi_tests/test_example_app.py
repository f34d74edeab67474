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
            alice, bob = {"X-Api-Key": "key_alice"}, {"X-Api-Key": "key_bob"}
            assert requests.get(base + "/api/v1/items/42", headers=alice, timeout=5).json() == {"id": 42}
            requests.get(base + "/api/v1/items/7", headers=bob, timeout=5)
            requests.get(base + "/nope", headers=alice, timeout=5)
            requests.get(base + "/health", headers=alice, timeout=5)  # excluded
            unauthenticated = requests.get(base + "/api/v1/items/9", timeout=5)  # no customer: not billed
            forged = requests.get(base + "/api/v1/items/9", headers={"X-Customer-Id": "cus_bob"}, timeout=5)
            assert unauthenticated.status_code == forged.status_code == 401
        finally:
            server.shutdown()
            thread.join(5)
    assert example.application.flush(timeout=10)
    events = sorted(dodo_server.events(), key=lambda e: (e["customer_id"], e["metadata"]["endpoint"]))
    assert [(e["customer_id"], e["metadata"]["endpoint"], e["metadata"]["status_code"]) for e in events] == [
        ("cus_alice", "/api/v1/items/{id}", 200),
        ("cus_alice", "<unmatched>", 404),
        ("cus_bob", "/api/v1/items/{id}", 200),
    ]
    assert example.application.ingestion.stats().skipped == {"filtered": 1, "no_customer": 2}
