"""The one request lifecycle every adapter uses: filters, claims, customer order, hooks, metadata, bodies."""

from __future__ import annotations

import contextvars
import logging
from typing import Any

import pytest

from dodo_ingest import Ingestion, annotate
from dodo_ingest.config import UNMATCHED_ENDPOINT
from dodo_ingest.request import ADAPTER_KEY, CUSTOMER_KEY, DECLINED, Meter, MeteredRequest, counted
from dodo_ingest.testing import CapturedEvents, capture_events
from tests.conftest import TEST_KEY


def meter(**settings: Any) -> Meter:
    return Meter(Ingestion(api_key=TEST_KEY, base_url="http://127.0.0.1:9", **settings))


def begin(m: Meter, method: str = "GET", path: str = "/api/items/7", **kwargs: Any) -> MeteredRequest:
    metered = m.begin({}, method, path, started=10.0, **kwargs)
    assert metered is not None
    metered.route = "/api/items/<int:id>"
    metered.status_code = 200
    return metered


@pytest.fixture
def captured() -> Any:
    with capture_events() as events:
        yield events


def test_metadata_has_the_blueprint_fields_with_numbers_as_numbers(captured: CapturedEvents) -> None:
    m = meter(fallback_customer_id="cus_fallback")
    metered = begin(m)
    metered.request_bytes = 12
    metered.count(b"x" * 300)
    metered.count(bytearray(40))
    metered.count(memoryview(b"12345"))
    metered.fail(KeyError("k"))
    assert metered.finish()
    metadata = captured[0].metadata
    assert metadata["response_time_ms"] > 0
    del metadata["response_time_ms"]
    assert metadata == {
        "endpoint": "/api/items/<int:id>",
        "method": "GET",
        "status_code": 500,
        "request_bytes": 12,
        "response_bytes": 345,
        "error": "KeyError",
    }
    assert captured[0].event_name == "api_call"


def test_counting_never_raises_whatever_a_body_yields(captured: CapturedEvents) -> None:
    """Item 3: bytearray and memoryview chunks are counted; something without a size makes the count unknown."""
    m = meter(fallback_customer_id="cus_1")
    metered = begin(m)
    body = [b"ab", bytearray(b"cd"), memoryview(b"efgh").cast("H"), "é"]
    assert (
        b"".join(bytes(c) if not isinstance(c, str) else c.encode() for c in counted(body, metered))
        == b"abcdefgh\xc3\xa9"
    )
    assert metered.response_bytes == 2 + 2 + 4 + 2
    metered.count(object())
    assert metered.response_bytes is None
    assert metered.finish()
    assert "response_bytes" not in captured[0].metadata


def test_head_requests_count_no_body_bytes(captured: CapturedEvents) -> None:
    metered = begin(meter(fallback_customer_id="cus_1"), method="HEAD")
    metered.count(b"xyz")
    metered.finish()
    assert captured[0].metadata["response_bytes"] == 0


def test_unmatched_requests_get_one_constant_endpoint_never_the_raw_path(captured: CapturedEvents) -> None:
    metered = begin(meter(fallback_customer_id="cus_1"), path="/wp-admin/123")
    metered.route = None
    metered.finish()
    assert captured[0].metadata["endpoint"] == UNMATCHED_ENDPOINT


def test_customer_resolution_order() -> None:
    m = meter(customer_resolver=lambda request, response: "cus_callable", fallback_customer_id="cus_fallback")
    with capture_events() as captured:
        first = begin(m)
        annotate(customer_id="cus_annotated")
        first.carrier[CUSTOMER_KEY] = "cus_set"
        first.finish(("req", "resp"))
        second = begin(m)
        second.carrier[CUSTOMER_KEY] = "cus_set"
        second.finish(("req", "resp"))
        begin(m).finish(("req", "resp"))
    assert [e.customer_id for e in captured] == ["cus_annotated", "cus_set", "cus_callable"]
    m2 = meter(customer_resolver=lambda *args: None, fallback_customer_id="cus_fallback")
    with capture_events() as captured:
        begin(m2).finish((1, 2), lambda: "cus_default")
        begin(m2).finish((1, 2), lambda: None)
    assert [e.customer_id for e in captured] == ["cus_default", "cus_fallback"]


def test_the_old_setting_names_still_work() -> None:
    m = meter(customer_id=lambda *a: "cus_old", extra_metadata=lambda *a: {"plan": "old"})
    with capture_events() as captured:
        begin(m).finish((1, 2))
    assert captured[0].customer_id == "cus_old" and captured[0].metadata["plan"] == "old"


def test_requests_without_a_customer_are_skipped_and_counted(captured: CapturedEvents) -> None:
    m = meter()
    assert begin(m).finish() is False
    assert captured == []
    assert m.batcher.stats().skipped == {"no_customer": 1}


@pytest.mark.parametrize("customer", [b"cus_1", 42, object(), "   ", ["cus_1"]])
def test_a_customer_that_is_not_a_str_is_a_counted_skip_never_its_str(customer: Any, captured: CapturedEvents) -> None:
    """Item 20: ``b"cus_1"``, ``42`` or an object were billed as their ``str()``."""
    m = meter(customer_resolver=lambda *a: customer, fallback_customer_id="cus_fallback")
    assert begin(m).finish((1, 2)) is False
    assert captured == []
    assert m.batcher.stats().skipped == {"invalid_customer": 1}


def test_an_empty_customer_means_none_found(captured: CapturedEvents) -> None:
    begin(meter(customer_resolver=lambda *a: "", fallback_customer_id="cus_fallback")).finish((1, 2))
    assert [e.customer_id for e in captured] == ["cus_fallback"]


def test_filters_on_method_path_and_cors_preflights() -> None:
    m = meter(exclude_paths=[r"/admin/.*", "/healthz"], include_paths=["/api", "/healthz"])

    def metered(m: Meter, method: str, path: str, preflight: bool = False) -> bool:
        request = m.begin({}, method, path, preflight=preflight)
        if request is not None:
            request.abandon()
        return request is not None

    assert metered(m, "GET", "/api/items")
    assert metered(m, "OPTIONS", "/api/items")  # item 18: an OPTIONS a view answers is billed
    assert not metered(m, "OPTIONS", "/api/items", preflight=True)  # a CORS preflight is not
    assert metered(meter(skip_cors_preflight=False), "OPTIONS", "/api", preflight=True)
    assert not metered(meter(exclude_methods=["options"]), "OPTIONS", "/api")
    assert not metered(m, "GET", "/healthz/live")
    assert not metered(m, "GET", "/admin/users")
    assert not metered(m, "GET", "/static/app.js")  # not included
    assert not metered(meter(enabled=False), "GET", "/api")
    assert m.batcher.stats().skipped == {"filtered": 4}


def test_the_innermost_adapter_meters_a_request_once(captured: CapturedEvents) -> None:
    """Item 5: every adapter takes part in the claim: an outer one that sees the request does not record it."""
    outer, inner = meter(fallback_customer_id="cus_1"), meter(fallback_customer_id="cus_1")
    environ: dict[str, Any] = {}
    outer_request = outer.begin(environ, "GET", "/api")
    inner_request = inner.begin(environ, "GET", "/api")
    assert outer_request is not None and inner_request is not None
    assert environ[ADAPTER_KEY] is inner_request
    assert inner_request.finish() is True
    assert outer_request.finish() is False
    assert len(captured) == 1
    # An inner adapter that declines (filters) decides for the outer one too.
    environ = {}
    outer_request = outer.begin(environ, "GET", "/api")
    assert meter(exclude_paths=["/api"]).begin(environ, "GET", "/api") is None
    assert environ[ADAPTER_KEY] == DECLINED
    assert outer_request is not None and outer_request.finish() is False
    assert len(captured) == 1


def test_should_meter_and_exempt_skip(captured: CapturedEvents) -> None:
    m = meter(fallback_customer_id="cus_1", should_meter=lambda req, resp: req != "skip")
    assert begin(m).finish(("skip", None)) is False
    exempted = begin(m)
    annotate(exempt=True)
    assert exempted.finish((1, 2)) is False
    assert captured == []
    assert m.batcher.stats().skipped == {"filtered": 2}


@pytest.mark.parametrize("hook", ["should_meter", "customer_resolver", "metadata_hook"])
def test_a_failing_hook_never_drops_the_billable_event(
    hook: str, captured: CapturedEvents, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 21: the request is still billed with what is known, and the failure counted; item 12: the log
    of a hook failing on every request is rate-limited."""

    def broken(*args: Any) -> Any:
        raise RuntimeError("bug in the app's hook")

    m = meter(fallback_customer_id="cus_1", **{hook: broken})
    with caplog.at_level(logging.ERROR, logger="dodo_ingest"):
        for _ in range(50):
            assert begin(m).finish((1, 2)) is True
    assert len(captured) == 50 and all(e.customer_id == "cus_1" for e in captured)
    assert m.batcher.stats().hook_errors == 50
    assert len([r for r in caplog.records if "raised" in r.getMessage()]) == 1
    assert caplog.records[0].exc_info is not None  # the first one has the traceback


def test_user_metadata_never_overrides_the_billing_fields(captured: CapturedEvents) -> None:
    m = meter(fallback_customer_id="cus_1", metadata_hook=lambda *a: {"plan": "pro", "tier": "x", "status_code": 999})
    metered = begin(m)
    assert annotate(event_name="api_call_premium", metadata={"tier": "gold", "endpoint": "/forged"})
    metered.finish((1, 2))
    assert contextvars.Context().run(annotate, metadata={"late": 1}) is False  # outside a request: no-op
    event = captured[0]
    assert event.event_name == "api_call_premium"
    assert event.metadata["plan"] == "pro" and event.metadata["tier"] == "gold"
    assert event.metadata["status_code"] == 200 and event.metadata["endpoint"] == "/api/items/<int:id>"


def test_a_metadata_hook_returning_junk_drops_only_that_event(captured: CapturedEvents) -> None:
    m = meter(fallback_customer_id="cus_1", metadata_hook=lambda *a: {"nested": {"a": 1}})
    begin(m).finish((1, 2))  # the flush thread's validation (here: the capture's) drops it, counted
    assert captured == [] and len(captured.invalid) == 1 and "metadata.nested" in captured.invalid[0]


def test_hooks_run_when_resolved_and_the_end_only_adds_bytes_and_time(captured: CapturedEvents) -> None:
    """Item 2's core: ``resolve`` runs the hooks while the framework's context exists; ``finish`` later (the
    end of a streamed body) does not call them again, but a late ``annotate(customer_id=...)`` still wins."""
    calls: list[str] = []
    m = meter(customer_resolver=lambda *a: calls.append("customer") or "cus_early")
    metered = begin(m)
    metered.resolve(("req", "resp"))
    annotate(customer_id="cus_late")
    metered.count(b"12345")
    metered.finish(("other", "args"))
    assert calls == ["customer"]
    assert captured[0].customer_id == "cus_late" and captured[0].metadata["response_bytes"] == 5


def test_personal_data_is_opt_in(captured: CapturedEvents) -> None:
    for settings in ({}, {"capture_client_ip": True, "capture_user_agent": True}):
        metered = begin(meter(fallback_customer_id="cus_1", **settings))
        metered.client_ip, metered.user_agent = "203.0.113.9", "curl/8"
        metered.finish()
    assert "client_ip" not in captured[0].metadata and "user_agent" not in captured[0].metadata
    assert captured[1].metadata["client_ip"] == "203.0.113.9" and captured[1].metadata["user_agent"] == "curl/8"
