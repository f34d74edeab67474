"""The shared request-to-event path every adapter uses: filters, customer order, metadata, hooks."""

from __future__ import annotations

from typing import Any

import pytest

from dodo_ingest import Ingestion, Meter, RequestFacts, annotate
from dodo_ingest.config import UNMATCHED_ENDPOINT
from dodo_ingest.testing import CapturedEvents, capture_events
from tests.conftest import TEST_KEY


def meter(**settings: Any) -> Meter:
    return Meter(Ingestion(api_key=TEST_KEY, base_url="http://127.0.0.1:9", **settings))


def facts(**overrides: Any) -> RequestFacts:
    values: dict[str, Any] = {
        "method": "GET",
        "path": "/api/items/7",
        "route": "/api/items/<int:id>",
        "status_code": 200,
        "started": 10.0,
        "finished": 10.0123,
    }
    values.update(overrides)
    return RequestFacts(**values)


@pytest.fixture
def captured() -> Any:
    with capture_events() as events:
        yield events


def test_metadata_has_the_blueprint_fields_with_numbers_as_numbers(captured: CapturedEvents) -> None:
    m = meter(fallback_customer_id="cus_fallback")
    assert m.record(facts(request_bytes=12, response_bytes=345, error="KeyError", status_code=500))
    assert captured[0].metadata == {
        "endpoint": "/api/items/<int:id>",
        "method": "GET",
        "status_code": 500,
        "response_time_ms": 12.3,
        "request_bytes": 12,
        "response_bytes": 345,
        "error": "KeyError",
    }
    assert captured[0].event_name == "api_call"


def test_unmatched_requests_get_one_constant_endpoint_never_the_raw_path(captured: CapturedEvents) -> None:
    meter(fallback_customer_id="cus_1").record(facts(route=None, path="/wp-admin/123", status_code=404))
    assert captured[0].metadata["endpoint"] == UNMATCHED_ENDPOINT


def test_customer_resolution_order() -> None:
    m = meter(customer_id=lambda request, response: "cus_callable", fallback_customer_id="cus_fallback")
    with capture_events() as captured:
        annotations, token = m.begin()
        annotate(customer_id="cus_annotated")
        m.end(token)
        m.record(facts(customer_id="cus_facts"), annotations=annotations, hook_args=("req", "resp"))
        m.record(facts(customer_id="cus_facts"), hook_args=("req", "resp"))
        m.record(facts(), hook_args=("req", "resp"))
    assert [e.customer_id for e in captured] == ["cus_annotated", "cus_facts", "cus_callable"]
    m2 = meter(customer_id=lambda *args: None, fallback_customer_id="cus_fallback")
    with capture_events() as captured:
        m2.record(facts(), hook_args=(1, 2), default_customer=lambda: "cus_default")
        m2.record(facts(), hook_args=(1, 2), default_customer=lambda: None)
    assert [e.customer_id for e in captured] == ["cus_default", "cus_fallback"]


def test_requests_without_a_customer_are_skipped_and_counted(captured: CapturedEvents) -> None:
    m = meter()
    assert m.record(facts()) is False
    assert captured == []
    assert m.batcher.stats().skipped == {"no_customer": 1}


def test_filters_on_method_and_path() -> None:
    m = meter(exclude_paths=[r"/admin/.*", "/healthz"], include_paths=["/api", "/healthz"])
    assert m.wants("GET", "/api/items")
    assert not m.wants("OPTIONS", "/api/items")  # excluded by default
    assert not m.wants("GET", "/healthz/live")
    assert not m.wants("GET", "/admin/users")
    assert not m.wants("GET", "/static/app.js")  # not included
    assert not meter(enabled=False).wants("GET", "/api")


def test_should_meter_exempt_and_hook_errors_skip_without_raising(captured: CapturedEvents) -> None:
    def broken(*args: Any) -> str:
        raise RuntimeError("bug in the app's hook")

    m = meter(fallback_customer_id="cus_1", should_meter=lambda req, resp: req != "skip")
    assert m.record(facts(), hook_args=("skip", None)) is False
    annotations, token = m.begin()
    annotate(exempt=True)
    m.end(token)
    assert m.record(facts(), annotations=annotations) is False
    assert meter(customer_id=broken).record(facts(), hook_args=(1, 2)) is False
    assert meter(fallback_customer_id="c", extra_metadata=broken).record(facts(), hook_args=(1, 2)) is False
    assert captured == []
    assert m.batcher.stats().skipped == {"filtered": 2}


def test_extra_and_per_request_metadata_never_override_the_billing_fields(captured: CapturedEvents) -> None:
    m = meter(fallback_customer_id="cus_1", extra_metadata=lambda *a: {"plan": "pro", "tier": "x", "status_code": 999})
    annotations, token = m.begin()
    assert annotate(event_name="api_call_premium", metadata={"tier": "gold", "endpoint": "/forged"})
    m.end(token)
    assert annotate(metadata={"late": 1}) is False  # outside a request: nothing to annotate
    m.record(facts(), annotations=annotations, hook_args=(1, 2))
    event = captured[0]
    assert event.event_name == "api_call_premium"
    assert event.metadata["plan"] == "pro" and event.metadata["tier"] == "gold"
    assert event.metadata["status_code"] == 200 and event.metadata["endpoint"] == "/api/items/<int:id>"


def test_personal_data_is_opt_in(captured: CapturedEvents) -> None:
    personal = {"client_ip": "203.0.113.9", "user_agent": "curl/8"}
    meter(fallback_customer_id="cus_1").record(facts(**personal))
    meter(fallback_customer_id="cus_1", capture_client_ip=True, capture_user_agent=True).record(facts(**personal))
    assert "client_ip" not in captured[0].metadata and "user_agent" not in captured[0].metadata
    assert captured[1].metadata["client_ip"] == "203.0.113.9" and captured[1].metadata["user_agent"] == "curl/8"
