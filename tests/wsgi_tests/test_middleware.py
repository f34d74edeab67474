"""DodoIngestMiddleware: PEP 3333 to the letter (checked with wsgiref.validate), exactly one event per request."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.util import FileWrapper, setup_testing_defaults
from wsgiref.validate import validator

import pytest
import requests

from dodo_ingest import Ingestion, annotate
from dodo_ingest.config import UNMATCHED_ENDPOINT
from dodo_ingest.errors import ConfigurationError
from dodo_ingest.localserver import LocalDodoServer
from dodo_ingest.testing import CapturedEvents, capture_events
from dodo_ingest.wsgi import ADAPTER_KEY, DodoIngestMiddleware, set_customer

App = Callable[[dict[str, Any], Any], Iterable[bytes]]


def middleware(app: App, **settings: Any) -> DodoIngestMiddleware:
    settings.setdefault("api_key", "sk_test_unit")
    settings.setdefault("fallback_customer_id", "cus_fallback")
    return DodoIngestMiddleware(app, **settings)


def make_environ(path: str = "/", method: str = "GET", **extra: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = path
    environ["REQUEST_METHOD"] = method
    environ.setdefault("QUERY_STRING", "")
    environ.update(extra)
    return environ


@dataclass
class Served:
    status: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    result: Any = None


def serve(
    app: App, environ: dict[str, Any] | None = None, *, iterate: bool = True, max_chunks: int | None = None
) -> Served:
    """A minimal PEP 3333 server loop: call, iterate (or not, or only partly), always close."""
    served = Served()
    environ = environ if environ is not None else make_environ()

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        served.status, served.headers = status, headers

        def write(data: bytes) -> None:
            served.body += data

        return write

    result = app(environ, start_response)
    served.result = result
    try:
        if iterate:
            for index, chunk in enumerate(result):
                if max_chunks is not None and index >= max_chunks:
                    break
                served.body += chunk
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return served


def hello_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    body = b'{"hello": "world"}'
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class ClosingBody:
    """A response body that records whether it was closed."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def captured() -> Iterator[CapturedEvents]:
    with capture_events() as events:
        yield events


# --- the event ---------------------------------------------------------------------------------------------


def test_one_event_with_the_facts_of_the_request(captured: CapturedEvents) -> None:
    seen: list[tuple[Any, ...]] = []

    def customer(environ: dict[str, Any], status: str, headers: list[tuple[str, str]]) -> str:
        seen.append((environ["PATH_INFO"], status, headers))
        return "cus_42"

    app = validator(middleware(validator(hello_app), customer_id=customer))
    environ = make_environ("/api/v1/items/123", "POST", CONTENT_LENGTH="11")
    environ["wsgi.input"] = io.BytesIO(b"hello world")
    served = serve(app, environ)

    assert served.status == "200 OK" and served.body == b'{"hello": "world"}'
    assert len(captured) == 1
    event = captured[0]
    assert event.customer_id == "cus_42"
    assert event.event_name == "api_call"
    assert event.metadata["endpoint"] == "/api/v1/items/{id}"
    assert event.metadata["method"] == "POST"
    assert event.metadata["status_code"] == 200
    assert event.metadata["request_bytes"] == 11
    assert event.metadata["response_bytes"] == len(b'{"hello": "world"}')
    assert isinstance(event.metadata["response_time_ms"], float)
    assert "error" not in event.metadata
    assert seen and seen[0][0] == "/api/v1/items/123" and seen[0][1] == "200 OK"
    assert ("Content-Type", "application/json") in seen[0][2]


def test_get_without_body_has_zero_request_bytes(captured: CapturedEvents) -> None:
    serve(validator(middleware(validator(hello_app))), make_environ("/x"))
    assert captured[0].metadata["request_bytes"] == 0


def test_streamed_body_counts_bytes_and_records_only_at_close(captured: CapturedEvents) -> None:
    def streaming(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield from (b"a" * 10, b"b" * 20, b"c" * 30)

    app = validator(middleware(validator(streaming)))
    result = app(make_environ("/stream"), lambda status, headers, exc_info=None: None)
    iterator = iter(result)
    assert next(iterator) == b"a" * 10
    assert next(iterator) == b"b" * 20
    assert len(captured) == 0  # still streaming: not recorded yet
    result.close()  # type: ignore[attr-defined]
    assert len(captured) == 1
    assert captured[0].metadata["response_bytes"] == 30  # what was actually sent
    assert captured[0].metadata["status_code"] == 200


def test_close_without_iterating_closes_the_app_iterable_and_records_once(captured: CapturedEvents) -> None:
    body = ClosingBody([b"never sent"])

    def app_(environ: dict[str, Any], start_response: Any) -> ClosingBody:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    served = serve(validator(middleware(validator(app_))), make_environ("/x", "HEAD"), iterate=False)
    assert served.body == b""
    assert body.closed == 1
    assert len(captured) == 1
    assert captured[0].metadata["method"] == "HEAD"
    assert captured[0].metadata["response_bytes"] == 0


def test_generator_app_never_started_is_recorded_as_client_closed(captured: CapturedEvents) -> None:
    def lazy(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"x"

    app = middleware(lazy)
    result = app(make_environ("/x"), lambda *a: None)
    result.close()  # type: ignore[attr-defined]
    assert [e.metadata["status_code"] for e in captured] == [499]


def test_close_twice_records_once(captured: CapturedEvents) -> None:
    body = ClosingBody([b"x"])
    app = middleware(lambda environ, start_response: (start_response("200 OK", []), body)[1])
    result = app(make_environ("/x"), lambda *a: None)
    list(result)
    result.close()  # type: ignore[attr-defined]
    result.close()  # type: ignore[attr-defined]
    assert len(captured) == 1
    assert body.closed == 2  # each close is passed on; recording happens once


def test_legacy_write_callable_is_counted(captured: CapturedEvents) -> None:
    def writer(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"12345")
        return [b"678"]

    served = serve(validator(middleware(validator(writer))), make_environ("/w"))
    assert served.body == b"12345678"
    assert captured[0].metadata["response_bytes"] == 8


# --- errors --------------------------------------------------------------------------------------------------


class Boom(Exception):
    pass


def test_exception_from_the_app_is_recorded_as_500_and_reraised(captured: CapturedEvents) -> None:
    error = Boom("app failed")

    def failing(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise error

    with pytest.raises(Boom) as raised:
        serve(middleware(failing), make_environ("/fail"))
    assert raised.value is error
    assert len(captured) == 1
    assert captured[0].metadata["status_code"] == 500
    assert captured[0].metadata["error"] == "Boom"


def test_exception_during_iteration_is_recorded_as_500_and_reraised(captured: CapturedEvents) -> None:
    def breaking(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first"
        raise Boom("mid-stream")

    app = validator(middleware(validator(breaking)))
    with pytest.raises(Boom):
        serve(app, make_environ("/stream"))
    assert len(captured) == 1
    assert captured[0].metadata["status_code"] == 500
    assert captured[0].metadata["error"] == "Boom"
    assert captured[0].metadata["response_bytes"] == len(b"first")


def test_exception_from_the_app_iterable_close_is_recorded_and_reraised(captured: CapturedEvents) -> None:
    class BadClose(ClosingBody):
        def close(self) -> None:
            raise Boom("close failed")

    app = middleware(lambda environ, start_response: (start_response("200 OK", []), BadClose([b"x"]))[1])
    with pytest.raises(Boom):
        serve(app, make_environ("/x"))
    assert [(e.metadata["status_code"], e.metadata["error"]) for e in captured] == [(500, "Boom")]


def test_second_start_response_with_exc_info_wins(captured: CapturedEvents) -> None:
    def recovering(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise Boom("before the body")
        except Boom:
            import sys

            start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"sorry"]

    served = serve(validator(middleware(validator(recovering))), make_environ("/x"))
    assert served.status == "503 Service Unavailable"
    assert captured[0].metadata["status_code"] == 503
    assert "error" not in captured[0].metadata  # the app handled its exception itself


# --- wsgi.file_wrapper ------------------------------------------------------------------------------------------


def test_file_wrapper_is_passed_through_and_recorded_on_close(captured: CapturedEvents) -> None:
    payload = io.BytesIO(b"x" * 5000)

    def sending_file(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", "5000")])
        return environ["wsgi.file_wrapper"](payload, 1024)  # type: ignore[no-any-return]

    environ = make_environ("/download/42", **{"wsgi.file_wrapper": FileWrapper})
    result = middleware(sending_file)(environ, lambda *a: None)
    assert isinstance(result, FileWrapper)  # identity kept: the server may still use sendfile
    assert len(captured) == 0
    result.close()  # type: ignore[attr-defined]
    assert payload.closed
    assert len(captured) == 1
    assert captured[0].metadata["response_bytes"] == 5000
    assert captured[0].metadata["endpoint"] == "/download/{id}"


def test_file_wrapper_without_settable_close_is_wrapped_instead(captured: CapturedEvents) -> None:
    class SlottedWrapper:
        __slots__ = ("filelike",)

        def __init__(self, filelike: io.BytesIO, blksize: int = 8192) -> None:
            self.filelike = filelike

        def __iter__(self) -> Iterator[bytes]:
            return iter([self.filelike.read()])

        def close(self) -> None:
            self.filelike.close()

    payload = io.BytesIO(b"abc")

    def sending_file(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return environ["wsgi.file_wrapper"](payload)  # type: ignore[no-any-return]

    served = serve(validator(middleware(sending_file)), make_environ("/f", **{"wsgi.file_wrapper": SlottedWrapper}))
    assert served.body == b"abc"
    assert payload.closed
    assert [e.metadata["response_bytes"] for e in captured] == [3]


# --- customer, endpoint, filters ------------------------------------------------------------------------------


def test_customer_priority_annotate_then_set_customer_then_callable(captured: CapturedEvents) -> None:
    def app_(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        mode = environ["PATH_INFO"]
        if mode in ("/annotate", "/set"):
            set_customer(environ, "cus_from_environ")
        if mode == "/annotate":
            assert annotate(customer_id="cus_from_annotate", metadata={"plan": "pro"}, event_name="api_call_v2")
        start_response("200 OK", [])
        return [b""]

    app = middleware(app_, customer_id=lambda environ, status, headers: "cus_from_callable")
    for path in ("/annotate", "/set", "/callable"):
        serve(app, make_environ(path))
    assert [e.customer_id for e in captured] == ["cus_from_annotate", "cus_from_environ", "cus_from_callable"]
    assert captured[0].metadata["plan"] == "pro" and captured[0].event_name == "api_call_v2"
    assert captured[1].event_name == "api_call"


def test_request_without_customer_is_skipped_unless_fallback(captured: CapturedEvents) -> None:
    without = middleware(hello_app, fallback_customer_id=None)
    serve(without, make_environ("/x"))
    assert len(captured) == 0
    assert without.ingestion.stats().skipped == {"no_customer": 1}
    serve(middleware(hello_app, fallback_customer_id="cus_house"), make_environ("/x"))
    assert [e.customer_id for e in captured] == ["cus_house"]


def test_404_gets_the_unmatched_endpoint(captured: CapturedEvents) -> None:
    def not_found(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("404 Not Found", [])
        return [b"no"]

    serve(middleware(not_found), make_environ("/wp-admin/setup-config.php"))
    assert captured[0].metadata["endpoint"] == UNMATCHED_ENDPOINT
    assert captured[0].metadata["status_code"] == 404


def test_custom_route_resolver_gets_environ_and_status_after_the_response(captured: CapturedEvents) -> None:
    calls: list[tuple[str, int]] = []

    def app_(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["myframework.route"] = "/things/{thing_id}"  # set by the framework's router
        start_response("201 Created", [])
        return [b""]

    def resolver(environ: Any, status_code: int) -> str | None:
        calls.append((environ["myframework.route"], status_code))
        return environ["myframework.route"]  # type: ignore[no-any-return]

    serve(middleware(app_, route_resolver=resolver), make_environ("/things/abc"))
    assert calls == [("/things/{thing_id}", 201)]
    assert captured[0].metadata["endpoint"] == "/things/{thing_id}"


def test_filters_skip_requests_and_count_them(captured: CapturedEvents) -> None:
    app = middleware(
        hello_app,
        exclude_paths=["/healthz", r"/admin/.*"],
        should_meter=lambda environ, status, headers: environ["PATH_INFO"] != "/internal",
    )
    preflight = {"HTTP_ORIGIN": "https://a.example", "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "POST"}
    for path, method, extra in [
        ("/healthz", "GET", {}),
        ("/admin/users", "GET", {}),
        ("/x", "OPTIONS", preflight),
        ("/internal", "GET", {}),
        ("/api", "GET", {}),
        ("/api", "OPTIONS", {}),  # item 18: an OPTIONS the app answers in full is billed
    ]:
        serve(app, make_environ(path, method, **extra))
    assert [(e.metadata["endpoint"], e.metadata["method"]) for e in captured] == [("/api", "GET"), ("/api", "OPTIONS")]
    assert app.ingestion.stats().skipped == {"filtered": 4}


def test_include_paths_limit_metering(captured: CapturedEvents) -> None:
    app = middleware(hello_app, include_paths=["/api"])
    serve(app, make_environ("/api/v1/x"))
    serve(app, make_environ("/static/app.js"))
    assert [e.metadata["endpoint"] for e in captured] == ["/api/v1/x"]


def test_client_ip_and_user_agent_only_when_opted_in(captured: CapturedEvents) -> None:
    extra = {"REMOTE_ADDR": "203.0.113.9", "HTTP_USER_AGENT": "curl/8"}
    serve(middleware(hello_app), make_environ("/x", **extra))
    serve(middleware(hello_app, capture_client_ip=True, capture_user_agent=True), make_environ("/x", **extra))
    assert "client_ip" not in captured[0].metadata and "user_agent" not in captured[0].metadata
    assert captured[1].metadata["client_ip"] == "203.0.113.9"
    assert captured[1].metadata["user_agent"] == "curl/8"


def test_disabled_middleware_passes_through(captured: CapturedEvents) -> None:
    app = DodoIngestMiddleware(hello_app, enabled=False)
    served = serve(app, make_environ("/x"))
    assert served.body == b'{"hello": "world"}'
    assert len(captured) == 0


def test_nested_middlewares_count_a_request_once(captured: CapturedEvents) -> None:
    inner = middleware(hello_app, fallback_customer_id="cus_inner")
    outer = middleware(inner, fallback_customer_id="cus_outer")
    serve(validator(outer), make_environ("/x"))
    assert [e.customer_id for e in captured] == ["cus_inner"]


def test_adapter_key_is_set_in_environ(captured: CapturedEvents) -> None:
    environ = make_environ("/x")
    serve(middleware(hello_app), environ)
    assert environ[ADAPTER_KEY] is not None


# --- metering never breaks the app ---------------------------------------------------------------------------


def test_failing_customer_hook_never_breaks_the_response(captured: CapturedEvents) -> None:
    def broken(environ: Any, status: str, headers: Any) -> str:
        raise KeyError("account")

    app = middleware(hello_app, customer_id=broken)
    served = serve(validator(app), make_environ("/x"))
    assert served.body == b'{"hello": "world"}'
    assert [e.customer_id for e in captured] == ["cus_fallback"]  # item 21: still billed, to what is known
    assert app.ingestion.stats().hook_errors == 1


def test_failing_route_resolver_never_breaks_the_response(captured: CapturedEvents) -> None:
    def broken(environ: Any, status_code: int) -> str:
        raise RuntimeError("resolver bug")

    app = middleware(hello_app, route_resolver=broken)
    for _ in range(1000):
        served = serve(validator(app), make_environ("/x"))
    assert served.status == "200 OK"
    assert len(captured) == 1000  # item 21: once 0 events for 1000 requests
    assert {e.metadata["endpoint"] for e in captured} == {UNMATCHED_ENDPOINT}
    assert app.ingestion.stats().hook_errors == 1000


def test_internal_failure_at_start_passes_the_request_through(
    captured: CapturedEvents, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = middleware(hello_app)

    def broken_begin(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("sdk bug")

    monkeypatch.setattr(app.meter, "begin", broken_begin)
    served = serve(validator(app), make_environ("/x"))
    assert served.body == b'{"hello": "world"}'
    assert app.ingestion.stats().skipped == {"adapter_error": 1}


def test_internal_failure_at_the_end_is_logged_not_raised(
    captured: CapturedEvents, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> bool:
        raise RuntimeError("sdk bug")

    app = middleware(hello_app)
    monkeypatch.setattr(app.meter.batcher, "enqueue", broken)
    served = serve(validator(app), make_environ("/x"))
    assert served.status == "200 OK"
    assert app.ingestion.stats().skipped == {"adapter_error": 1}
    assert any("could not meter" in r.getMessage() for r in caplog.records)


# --- configuration -------------------------------------------------------------------------------------------


def test_invalid_settings_fail_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="flush_interval"):
        DodoIngestMiddleware(hello_app, api_key="k", flush_interval=-1)
    with pytest.raises(ConfigurationError, match="API key"):
        DodoIngestMiddleware(hello_app)


def test_shared_ingestion_accepts_only_request_settings() -> None:
    ingestion = Ingestion(api_key="sk_test_unit")
    app = DodoIngestMiddleware(hello_app, ingestion, event_name="wsgi_call", exclude_paths=["/x"])
    assert app.ingestion is ingestion
    assert app.meter.config.event_name == "wsgi_call"
    assert ingestion.config.event_name == "api_call"
    with pytest.raises(ConfigurationError, match="api_key"):
        DodoIngestMiddleware(hello_app, ingestion, api_key="other")
    with pytest.raises(ConfigurationError, match="exclude_methods"):
        DodoIngestMiddleware(hello_app, ingestion, exclude_methods="GET")


# --- real delivery and a real server -----------------------------------------------------------------------------


def test_events_reach_the_local_server(dodo_server: LocalDodoServer, make_ingestion: Callable[..., Ingestion]) -> None:
    ingestion = make_ingestion()
    app = DodoIngestMiddleware(
        hello_app, ingestion, customer_id=lambda environ, status, headers: environ.get("HTTP_X_CUSTOMER")
    )
    for index in range(30):
        serve(app, make_environ(f"/api/v1/items/{index}", HTTP_X_CUSTOMER=f"cus_{index % 3}"))
    assert app.flush(timeout=10)
    assert dodo_server.wait_for_events(30, timeout=10)
    events = dodo_server.events()
    assert len(events) == 30
    assert len({e["event_id"] for e in events}) == 30
    assert {e["metadata"]["endpoint"] for e in events} == {"/api/v1/items/{id}"}
    assert len(dodo_server.events(customer_id="cus_1")) == 10


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_under_wsgiref_server_with_head_and_file_wrapper(captured: CapturedEvents) -> None:
    def app_(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/file":
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4096")])
            return environ["wsgi.file_wrapper"](io.BytesIO(b"f" * 4096), 512)  # type: ignore[no-any-return]
        return hello_app(environ, start_response)

    server = make_server("127.0.0.1", 0, validator(middleware(validator(app_))), handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        assert requests.get(base + "/users/7", timeout=5).json() == {"hello": "world"}
        assert requests.head(base + "/users/8", timeout=5).status_code == 200
        assert requests.get(base + "/file", timeout=5).content == b"f" * 4096
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    by_method = sorted((e.metadata["method"], e.metadata["endpoint"]) for e in captured)
    assert by_method == [("GET", "/file"), ("GET", "/users/{id}"), ("HEAD", "/users/{id}")]
    sizes = {e.metadata["method"] + e.metadata["endpoint"]: e.metadata["response_bytes"] for e in captured}
    assert sizes["GET/file"] == 4096 and sizes["GET/users/{id}"] == 18


def test_the_apps_iterable_is_iterated_once_however_often_the_server_asks(captured: CapturedEvents) -> None:
    """Item 23: ``iter()`` on the response restarted the app's body (werkzeug's test client got it twice under
    the same Content-Length)."""
    starts = 0

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            nonlocal starts
            starts += 1
            yield b"once"

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return Body()

    environ = make_environ("/x")
    response = middleware(app)(environ, lambda status, headers, exc_info=None: None)
    first = iter(response)
    assert next(first) == b"once"
    assert list(iter(response)) == []  # the same body, already sent: not a second copy
    response.close()  # type: ignore[attr-defined]
    assert starts == 1
    assert [e.metadata["response_bytes"] for e in captured] == [4]
