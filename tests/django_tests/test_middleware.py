"""DodoIngestMiddleware on the sync (WSGI) path: exactly one event per metered request."""

from __future__ import annotations

import io
import logging
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client, RequestFactory
from pytest_django import Settings

from dodo_ingest.config import UNMATCHED_ENDPOINT
from dodo_ingest.ingestion import Ingestion
from dodo_ingest.localserver import LocalDodoServer
from dodo_ingest.testing import CapturedEvents
from dodo_ingest_django import get_ingestion, middleware
from dodo_ingest_django.middleware import DodoIngestMiddleware
from tests.django_tests import views

CUSTOMER = {"HTTP_X_CUSTOMER": "cus_alpha"}


def skipped(reason: str) -> int:
    return get_ingestion().stats().skipped.get(reason, 0)


def test_one_event_with_the_blueprint_metadata(client: Client, events: CapturedEvents) -> None:
    response = client.get("/api/hello/", **CUSTOMER)
    assert response.status_code == 200
    assert len(events) == 1
    event = events[0]
    assert event.customer_id == "cus_alpha"
    assert event.event_name == "api_call"
    meta = event.metadata
    assert meta["endpoint"] == "/api/hello/"
    assert meta["method"] == "GET"
    assert meta["status_code"] == 200
    assert meta["response_bytes"] == len(response.content)
    assert meta["request_bytes"] == 0
    assert isinstance(meta["response_time_ms"], float)
    assert meta["response_time_ms"] >= 0
    assert "client_ip" not in meta
    assert "user_agent" not in meta
    assert "error" not in meta


def test_route_template_not_the_raw_path(client: Client, events: CapturedEvents) -> None:
    client.get("/api/items/123/", **CUSTOMER)
    client.get("/api/items/456/", **CUSTOMER)
    assert [e.metadata["endpoint"] for e in events] == ["/api/items/<int:item_id>/"] * 2
    # Item 25: this once checked "123" not in the whole event, which its random id or timing could contain.
    assert all("/123/" not in str(value) and "/456/" not in str(value) for e in events for value in e.metadata.values())


def test_request_without_customer_is_not_sent(client: Client, events: CapturedEvents) -> None:
    before = skipped("no_customer")
    assert client.get("/api/hello/").status_code == 200
    assert events == []
    assert skipped("no_customer") == before + 1


def test_customer_hook_called_after_the_view_with_request_and_response(client: Client, events: CapturedEvents) -> None:
    response = client.get("/api/hello/", **CUSTOMER)
    assert len(views.hook_calls) == 1
    assert views.hook_calls[0]["response"] is response
    assert views.hook_calls[0]["on_loop"] is False


def test_unmatched_url_gets_the_constant_endpoint(client: Client, events: CapturedEvents) -> None:
    response = client.get("/no/such/page/42", **CUSTOMER)
    assert response.status_code == 404
    assert len(events) == 1
    assert events[0].metadata["endpoint"] == UNMATCHED_ENDPOINT
    assert events[0].metadata["status_code"] == 404


def test_http404_raised_by_a_view_keeps_its_route(client: Client, events: CapturedEvents) -> None:
    assert client.get("/api/missing/7/", **CUSTOMER).status_code == 404
    assert [(e.metadata["endpoint"], e.metadata["status_code"]) for e in events] == [
        ("/api/missing/<int:item_id>/", 404)
    ]
    assert "error" not in events[0].metadata


def test_view_exception_is_a_500_with_its_class_name_and_still_propagates(
    client: Client, events: CapturedEvents
) -> None:
    with pytest.raises(views.Boom):
        client.get("/boom/", **CUSTOMER)
    assert len(events) == 1
    meta = events[0].metadata
    assert (meta["status_code"], meta["error"], meta["endpoint"]) == (500, "Boom", "/boom/")


def test_view_exception_handled_by_django_gives_the_500_page(events: CapturedEvents) -> None:
    client = Client(raise_request_exception=False)
    response = client.get("/boom/", **CUSTOMER)
    assert response.status_code == 500
    assert [(e.metadata["status_code"], e.metadata["error"]) for e in events] == [(500, "Boom")]


def test_exception_escaping_django_is_recorded_and_reraised(settings: Settings, events: CapturedEvents) -> None:
    settings.DEBUG_PROPAGATE_EXCEPTIONS = True
    client = Client(raise_request_exception=False)
    with pytest.raises(views.Boom):
        client.get("/boom/", **CUSTOMER)
    assert len(events) == 1
    assert (events[0].metadata["status_code"], events[0].metadata["error"]) == (500, "Boom")
    assert "response_bytes" not in events[0].metadata


def test_response_short_circuited_by_another_middleware(client: Client, events: CapturedEvents) -> None:
    response = client.get("/api/items/9/", HTTP_X_BLOCK="1", **CUSTOMER)
    assert response.status_code == 403
    assert len(events) == 1
    assert events[0].metadata["status_code"] == 403
    assert events[0].metadata["endpoint"] == "/api/items/<int:item_id>/"  # resolved although no view ran


def test_short_circuited_unknown_path_is_unmatched(client: Client, events: CapturedEvents) -> None:
    assert client.get("/nowhere/9/", HTTP_X_BLOCK="1", **CUSTOMER).status_code == 403
    assert [e.metadata["endpoint"] for e in events] == [UNMATCHED_ENDPOINT]


def test_request_bytes_from_content_length(client: Client, events: CapturedEvents) -> None:
    body = b"z" * 321
    response = client.post("/echo/", data=body, content_type="application/octet-stream", **CUSTOMER)
    assert response.content == body
    assert events[0].metadata["request_bytes"] == 321
    assert events[0].metadata["response_bytes"] == 321
    assert events[0].metadata["method"] == "POST"


def test_head_is_metered_with_no_body(client: Client, events: CapturedEvents) -> None:
    response = client.head("/api/hello/", **CUSTOMER)
    assert response.status_code == 200
    assert [(e.metadata["method"], e.metadata["response_bytes"]) for e in events] == [("HEAD", 0)]


PREFLIGHT = {"HTTP_ORIGIN": "https://app.example", "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "POST"}


def test_only_cors_preflights_are_free_by_default(client: Client, events: CapturedEvents) -> None:
    """Item 18: an OPTIONS the view answers with its full response is billed; a CORS preflight is not."""
    before = skipped("filtered")
    client.options("/api/hello/", **CUSTOMER, **PREFLIGHT)
    assert events == []
    assert skipped("filtered") == before + 1
    client.options("/api/hello/", **CUSTOMER)
    assert [(e.metadata["method"], e.metadata["response_bytes"]) for e in events] == [("OPTIONS", 18)]


def test_options_metered_when_not_excluded(settings: Settings, client: Client, events: CapturedEvents) -> None:
    settings.DODO_INGEST_EXCLUDE_METHODS = ["HEAD"]
    client.options("/api/hello/", **CUSTOMER)
    client.head("/api/hello/", **CUSTOMER)
    assert [e.metadata["method"] for e in events] == ["OPTIONS"]


def test_excluded_paths(client: Client, events: CapturedEvents) -> None:
    client.get("/health/", **CUSTOMER)
    client.get("/admin/login/", **CUSTOMER)
    assert events == []


def test_include_paths(settings: Settings, client: Client, events: CapturedEvents) -> None:
    settings.DODO_INGEST_INCLUDE_PATHS = ["/api"]
    client.get("/boom/", HTTP_X_BLOCK="1", **CUSTOMER)
    client.get("/api/hello/", **CUSTOMER)
    assert [e.metadata["endpoint"] for e in events] == ["/api/hello/"]


def test_annotate_sets_customer_and_metadata(client: Client, events: CapturedEvents) -> None:
    client.get("/annotated/", **CUSTOMER)
    assert len(events) == 1
    assert events[0].customer_id == "cus_annotated"  # wins over the configured callable
    assert events[0].metadata["tokens"] == 42
    assert events[0].metadata["status_code"] == 200  # built-in keys are never overwritten


def test_set_customer_helper(client: Client, events: CapturedEvents) -> None:
    client.get("/helper/")
    assert [e.customer_id for e in events] == ["cus_helper"]


def test_set_customer_outside_a_metered_request() -> None:
    from dodo_ingest_django import set_customer

    assert set_customer(RequestFactory().get("/"), "cus_x") is False


def test_exempt_request(client: Client, events: CapturedEvents) -> None:
    client.get("/exempt/", **CUSTOMER)
    assert events == []


def test_personal_data_is_opt_in(settings: Settings, client: Client, events: CapturedEvents) -> None:
    settings.DODO_INGEST_CAPTURE_CLIENT_IP = True
    settings.DODO_INGEST_CAPTURE_USER_AGENT = True
    client.get("/api/hello/", HTTP_USER_AGENT="curl/8", REMOTE_ADDR="10.1.2.3", **CUSTOMER)
    assert events[0].metadata["client_ip"] == "10.1.2.3"
    assert events[0].metadata["user_agent"] == "curl/8"


def test_fallback_customer(settings: Settings, client: Client, events: CapturedEvents) -> None:
    settings.DODO_INGEST_FALLBACK_CUSTOMER_ID = "cus_house"
    client.get("/api/hello/")
    assert [e.customer_id for e in events] == ["cus_house"]


def test_disabled_meters_nothing_and_needs_no_key(settings: Settings, client: Client, events: CapturedEvents) -> None:
    settings.DODO_INGEST_ENABLED = False
    del settings.DODO_INGEST_API_KEY
    assert client.get("/api/hello/", **CUSTOMER).status_code == 200
    assert events == []


# --- streamed bodies --------------------------------------------------------------------------------------


@pytest.mark.django_db  # response.close() sends request_finished: close_old_connections
def test_streaming_response_recorded_at_the_end_of_the_stream(client: Client, events: CapturedEvents) -> None:
    response = client.get("/stream/", **CUSTOMER)
    assert response.streaming
    assert events == []  # the body has not been sent yet
    body = b"".join(response.streaming_content)  # type: ignore[arg-type]
    assert body == b"".join(views.CHUNKS)
    assert len(events) == 1
    assert events[0].metadata["response_bytes"] == 60
    assert events[0].metadata["endpoint"] == "/stream/"
    response.close()
    assert len(events) == 1  # close() after exhaustion does not record again


def test_streaming_timed_to_the_end_of_the_body(
    monkeypatch: pytest.MonkeyPatch, client: Client, events: CapturedEvents
) -> None:
    import dodo_ingest.request

    clock = iter([100.0, 104.5])  # start of the request, end of the body
    monkeypatch.setattr(dodo_ingest.request, "now", lambda: next(clock))
    response = client.get("/stream/", **CUSTOMER)
    list(response.streaming_content)  # type: ignore[arg-type]
    assert events[0].metadata["response_time_ms"] == 4500.0


@pytest.mark.django_db  # response.close() sends request_finished: close_old_connections
def test_streaming_closed_early_records_what_was_sent(client: Client, events: CapturedEvents) -> None:
    response = client.get("/stream/", **CUSTOMER)
    iterator = iter(response.streaming_content)  # type: ignore[arg-type]
    assert next(iterator) == views.CHUNKS[0]
    response.close()  # the client went away: the server closes the response
    assert len(events) == 1
    assert events[0].metadata["response_bytes"] == 10
    response.close()
    assert len(events) == 1


def test_streaming_failure_mid_body(client: Client, events: CapturedEvents) -> None:
    response = client.get("/stream-fails/", **CUSTOMER)
    with pytest.raises(views.Boom):
        list(response.streaming_content)  # type: ignore[arg-type]
    assert len(events) == 1
    assert events[0].metadata["error"] == "Boom"
    assert events[0].metadata["response_bytes"] == 5


@pytest.mark.django_db  # response.close() sends request_finished: close_old_connections
def test_file_response(client: Client, events: CapturedEvents) -> None:
    response = client.get("/download/", **CUSTOMER)
    assert events == []
    assert b"".join(response.streaming_content) == b"f" * 1000  # type: ignore[arg-type]
    response.close()
    assert len(events) == 1
    assert events[0].metadata["response_bytes"] == 1000


class _FileWrapper:
    """What a WSGI server's ``wsgi.file_wrapper`` does: sendfile, then close the file."""

    def __init__(self, filelike: Any, block_size: int = 8192) -> None:
        self.filelike = filelike
        self.sent = 0

    def send(self) -> bytes:
        data = self.filelike.read()
        self.sent = len(data)
        return bytes(data)

    def close(self) -> None:
        self.filelike.close()


@pytest.mark.django_db  # response.close() sends request_finished: close_old_connections
def test_file_response_sent_with_wsgi_file_wrapper(events: CapturedEvents) -> None:
    handler = WSGIHandler()
    environ = RequestFactory().get("/download/", **CUSTOMER).environ
    environ["wsgi.file_wrapper"] = _FileWrapper
    environ["wsgi.input"] = io.BytesIO()
    result = handler(environ, lambda status, headers, exc_info=None: None)
    assert isinstance(result, _FileWrapper)  # sendfile stays possible: the body was not wrapped
    assert events == []
    assert len(result.send()) == 1000
    result.close()  # Django patched the file's close() to response.close()
    assert len(events) == 1
    assert events[0].metadata["response_bytes"] == 1000


# --- invariant 1: metering never breaks the app ------------------------------------------------------------


def test_failing_customer_hook_does_not_break_the_request(
    settings: Settings, client: Client, events: CapturedEvents, caplog: pytest.LogCaptureFixture
) -> None:
    settings.DODO_INGEST_CUSTOMER_ID = lambda request, response: 1 / 0
    settings.DODO_INGEST_FALLBACK_CUSTOMER_ID = "cus_house"
    with caplog.at_level(logging.ERROR, logger="dodo_ingest"):
        assert client.get("/api/hello/").status_code == 200
    assert [e.customer_id for e in events] == ["cus_house"]  # item 21: still billed with what is known
    assert get_ingestion().stats().hook_errors == 1
    assert "ZeroDivisionError" in caplog.text


def test_internal_failure_is_logged_and_counted(
    monkeypatch: pytest.MonkeyPatch, client: Client, events: CapturedEvents, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("sdk bug")

    monkeypatch.setattr(middleware, "route_of", broken)
    before = skipped("adapter_error")
    with caplog.at_level(logging.ERROR, logger="dodo_ingest"):
        response = client.get("/api/hello/", **CUSTOMER)
    assert response.status_code == 200
    assert response.json() == {"hello": "world"}
    assert events == []
    assert skipped("adapter_error") == before + 1
    assert "sdk bug" in caplog.text


def test_broken_settings_lookup_passes_the_request_through(
    monkeypatch: pytest.MonkeyPatch, client: Client, events: CapturedEvents
) -> None:
    client.get("/api/hello/", **CUSTOMER)  # the middleware chain is built
    monkeypatch.setattr(middleware, "conf", None)  # any failure before the request starts
    assert client.get("/api/hello/", **CUSTOMER).status_code == 200
    assert len(events) == 1


def test_invalid_settings_fail_loudly_at_start_up(settings: Settings) -> None:
    settings.DODO_INGEST_FLUSH_INTERVAL = 5000
    with pytest.raises(ImproperlyConfigured, match="DODO_INGEST_FLUSH_INTERVAL"):
        DodoIngestMiddleware(lambda request: None)


def test_missing_key_fails_loudly_at_start_up(settings: Settings) -> None:
    del settings.DODO_INGEST_API_KEY
    with pytest.raises(ImproperlyConfigured, match="DODO_INGEST_API_KEY"):
        WSGIHandler()


def test_settings_broken_after_start_up_do_not_break_requests(
    settings: Settings, client: Client, events: CapturedEvents, caplog: pytest.LogCaptureFixture
) -> None:
    client.get("/api/hello/", **CUSTOMER)  # the middleware chain is built with valid settings
    settings.DODO_INGEST_EVENT_NAME = ""
    with caplog.at_level(logging.ERROR, logger="dodo_ingest"):
        assert client.get("/api/hello/", **CUSTOMER).status_code == 200
    assert len(events) == 1
    assert "DODO_INGEST_EVENT_NAME" in caplog.text


def test_repr_hides_nothing_secret() -> None:
    mw = DodoIngestMiddleware(lambda request: None)
    assert "sk_test" not in repr(mw)
    assert "sk_test" not in repr(get_ingestion())


# --- real delivery -----------------------------------------------------------------------------------------


def test_events_delivered_to_the_local_server(live: Ingestion, dodo_server: LocalDodoServer, client: Client) -> None:
    for i in range(6):
        client.get(f"/api/items/{i}/", HTTP_X_CUSTOMER=f"cus_{i % 2}")
    assert live.flush(timeout=5.0)
    assert dodo_server.wait_for_events(6, timeout=5.0)
    stored = dodo_server.events()
    assert len(stored) == 6
    assert len({e["event_id"] for e in stored}) == 6
    assert {e["customer_id"] for e in stored} == {"cus_0", "cus_1"}
    assert {e["metadata"]["endpoint"] for e in stored} == {"/api/items/<int:item_id>/"}
    assert all(e["event_name"] == "api_call" for e in stored)


@pytest.mark.django_db  # the WSGI handler sends request_finished: close_old_connections
def test_with_the_wsgi_middleware_around_django_a_request_is_billed_once(events: CapturedEvents) -> None:
    """Item 5: the Django middleware and the WSGI middleware billed one request twice; now every adapter takes
    part in the innermost-adapter rule."""
    from dodo_ingest.wsgi import DodoIngestMiddleware as WsgiMiddleware

    app = WsgiMiddleware(WSGIHandler(), api_key="sk_test_outer", fallback_customer_id="cus_outer")
    for path in ("/api/items/7/", "/health/"):  # /health/ is excluded in Django: the outer one must not bill it
        environ = RequestFactory().get(path, **CUSTOMER).environ
        environ["wsgi.input"] = io.BytesIO()
        result = app(environ, lambda status, headers, exc_info=None: None)
        b"".join(result)
        result.close()  # type: ignore[attr-defined]
    assert [(e.customer_id, e.metadata["endpoint"]) for e in events] == [("cus_alpha", "/api/items/<int:item_id>/")]
