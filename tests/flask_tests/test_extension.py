"""The Flask extension: exactly one event per request, through Flask's signals, with Flask's test client."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Blueprint, Flask, Response, abort, g, request, send_file, stream_with_context
from flask.views import MethodView

from dodo_ingest import Ingestion, annotate
from dodo_ingest.config import UNMATCHED_ENDPOINT
from dodo_ingest.errors import ConfigurationError
from dodo_ingest.localserver import LocalDodoServer
from dodo_ingest.testing import CapturedEvents, capture_events
from dodo_ingest.wsgi import DodoIngestMiddleware
from dodo_ingest_flask import DodoIngest, exempt, meter, set_customer
from tests.conftest import TEST_KEY


class Boom(Exception):
    pass


def make_app(name: str = "shop", **settings: Any) -> tuple[Flask, DodoIngest]:
    """A small API: a customer header read in before_request, a blueprint, errors, streams."""
    app = Flask(name)
    app.config["DODO_INGEST_API_KEY"] = "sk_test_flask_unit"
    settings.setdefault("shutdown_timeout", 1.0)
    dodo = DodoIngest(app, **settings)
    api = Blueprint("api", __name__, url_prefix="/api/v1")

    @app.before_request
    def authenticate() -> None:
        customer = request.headers.get("X-Customer")
        if customer:
            g.dodo_customer_id = customer
        if request.headers.get("X-Deny"):
            abort(401)

    @api.get("/items/<int:item_id>")
    def get_item(item_id: int) -> dict[str, Any]:
        return {"id": item_id}

    @api.post("/items")
    def create_item() -> tuple[dict[str, Any], int]:
        return {"created": True}, 201

    @api.get("/boom")
    def boom() -> str:
        raise Boom("view failed")

    @api.get("/stream")
    def stream() -> Response:
        def body() -> Iterator[bytes]:
            yield b"a" * 10
            yield b"b" * 20

        return Response(body(), mimetype="text/plain")

    @api.get("/stream-ctx")
    def stream_ctx() -> Response:
        def body() -> Iterator[str]:
            yield "first,"
            set_customer(request.headers.get("X-Late-Customer", "cus_late"))
            yield "second"

        return Response(stream_with_context(body()), mimetype="text/plain")

    @api.get("/stream-broken")
    def stream_broken() -> Response:
        def body() -> Iterator[bytes]:
            yield b"partial"
            raise Boom("mid-stream")

        return Response(body(), mimetype="text/plain")

    @api.get("/file")
    def file() -> Response:
        return send_file(io.BytesIO(b"z" * 1234), mimetype="application/octet-stream")

    @app.get("/health")
    @exempt
    def health() -> str:
        return "ok"

    @exempt
    @app.get("/ready")
    def ready() -> str:
        return "ok"

    @api.get("/premium")
    @meter(event_name="premium_call", metadata={"tier": "gold"})
    def premium() -> str:
        annotate(metadata={"units": 3})
        return "ok"

    app.register_blueprint(api)
    return app, dodo


@pytest.fixture
def captured() -> Iterator[CapturedEvents]:
    with capture_events() as events:
        yield events


C = {"X-Customer": "cus_1"}


# --- one event per request ------------------------------------------------------------------------------------


def test_one_event_with_the_route_template_including_the_blueprint_prefix(captured: CapturedEvents) -> None:
    app, _ = make_app()
    response = app.test_client().get("/api/v1/items/42", headers=C)
    assert response.json == {"id": 42}
    assert len(captured) == 1
    event = captured[0]
    assert event.customer_id == "cus_1"
    assert event.metadata["endpoint"] == "/api/v1/items/<int:item_id>"
    assert event.metadata["method"] == "GET"
    assert event.metadata["status_code"] == 200
    assert event.metadata["response_bytes"] == len(response.data)
    assert event.metadata["request_bytes"] == 0


def test_request_bytes_from_content_length(captured: CapturedEvents) -> None:
    app, _ = make_app()
    app.test_client().post("/api/v1/items", data=b"x" * 321, headers=C)
    assert captured[0].metadata["request_bytes"] == 321
    assert captured[0].metadata["status_code"] == 201


def test_abort_in_before_request_is_metered_once(captured: CapturedEvents) -> None:
    app, _ = make_app()
    response = app.test_client().get("/api/v1/items/1", headers={**C, "X-Deny": "1"})
    assert response.status_code == 401
    assert [(e.metadata["status_code"], e.metadata["endpoint"]) for e in captured] == [
        (401, "/api/v1/items/<int:item_id>")
    ]


def test_404_is_metered_once_with_the_constant_endpoint(captured: CapturedEvents) -> None:
    app, _ = make_app()
    assert app.test_client().get("/wp-login.php?id=123", headers=C).status_code == 404
    assert [(e.metadata["status_code"], e.metadata["endpoint"]) for e in captured] == [(404, UNMATCHED_ENDPOINT)]


def test_405_is_metered_as_unmatched(captured: CapturedEvents) -> None:
    app, _ = make_app()
    assert app.test_client().delete("/api/v1/items/1", headers=C).status_code == 405
    assert [(e.metadata["status_code"], e.metadata["endpoint"]) for e in captured] == [(405, UNMATCHED_ENDPOINT)]


def test_unhandled_exception_is_metered_once_as_500(captured: CapturedEvents) -> None:
    app, _ = make_app()
    app.logger.disabled = True
    response = app.test_client().get("/api/v1/boom", headers=C)
    assert response.status_code == 500
    assert [(e.metadata["status_code"], e.metadata["error"]) for e in captured] == [(500, "Boom")]


def test_propagated_exception_is_metered_once_by_the_teardown_fallback(captured: CapturedEvents) -> None:
    app, _ = make_app()
    app.testing = True  # PROPAGATE_EXCEPTIONS: request_finished never fires
    with pytest.raises(Boom):
        app.test_client().get("/api/v1/boom", headers=C)
    assert [(e.metadata["status_code"], e.metadata["error"], e.metadata["endpoint"]) for e in captured] == [
        (500, "Boom", "/api/v1/boom")
    ]


# --- streamed responses -----------------------------------------------------------------------------------------


def test_streamed_response_is_recorded_when_closed_with_its_bytes(captured: CapturedEvents) -> None:
    app, _ = make_app()
    response = app.test_client().get("/api/v1/stream", headers=C)
    assert response.get_data() == b"a" * 10 + b"b" * 20
    assert len(captured) == 0  # not finished until the server closes the response
    response.close()
    assert len(captured) == 1
    assert captured[0].metadata["response_bytes"] == 30
    assert captured[0].metadata["status_code"] == 200


def test_stream_with_context_is_metered_once_and_sees_a_late_customer(captured: CapturedEvents) -> None:
    app, _ = make_app()
    response = app.test_client().get("/api/v1/stream-ctx", headers={**C, "X-Late-Customer": "cus_streamer"})
    assert response.get_data() == b"first,second"
    response.close()
    assert [(e.customer_id, e.metadata["response_bytes"]) for e in captured] == [("cus_streamer", 12)]
    # A second teardown for the same request (older Flask fires one per context push) adds nothing.
    with app.request_context(response.request.environ):
        app.do_teardown_request(None)
    assert len(captured) == 1


def test_error_while_streaming_is_recorded_as_500(captured: CapturedEvents) -> None:
    app, _ = make_app()
    response = app.test_client().get("/api/v1/stream-broken", headers=C)
    with pytest.raises(Boom):
        response.get_data()
    response.close()
    assert [(e.metadata["status_code"], e.metadata["error"], e.metadata["response_bytes"]) for e in captured] == [
        (500, "Boom", 7)
    ]


def test_buffered_client_closes_streams(captured: CapturedEvents) -> None:
    app, _ = make_app()
    app.test_client().get("/api/v1/stream", headers=C, buffered=True)
    assert [e.metadata["response_bytes"] for e in captured] == [30]


def test_send_file_is_metered_once_with_its_length(captured: CapturedEvents) -> None:
    app, _ = make_app()
    response = app.test_client().get("/api/v1/file", headers=C)
    assert len(response.get_data()) == 1234
    response.close()
    assert [e.metadata["response_bytes"] for e in captured] == [1234]


def test_head_request_is_metered_once(captured: CapturedEvents) -> None:
    app, _ = make_app()
    with app.test_client().head("/api/v1/stream", headers=C) as response:
        assert response.status_code == 200
    assert [(e.metadata["method"], e.metadata["response_bytes"]) for e in captured] == [("HEAD", 0)]


# --- per-view options, filters -----------------------------------------------------------------------------------


def test_exempt_views_are_skipped_whichever_the_decorator_order(captured: CapturedEvents) -> None:
    app, dodo = make_app()
    client = app.test_client()
    assert client.get("/health", headers=C).status_code == 200
    assert client.get("/ready", headers=C).status_code == 200
    assert len(captured) == 0
    assert dodo.stats().skipped == {"filtered": 2}


def test_exempt_method_view_class(captured: CapturedEvents) -> None:
    app, _ = make_app()

    @exempt
    class Ping(MethodView):
        def get(self) -> str:
            return "pong"

    app.add_url_rule("/ping", view_func=Ping.as_view("ping"))
    assert app.test_client().get("/ping", headers=C).data == b"pong"
    assert len(captured) == 0


def test_meter_decorator_sets_event_name_and_metadata(captured: CapturedEvents) -> None:
    app, _ = make_app()
    app.test_client().get("/api/v1/premium", headers=C)
    assert captured[0].event_name == "premium_call"
    assert captured[0].metadata["tier"] == "gold"
    assert captured[0].metadata["units"] == 3


def test_meter_rejects_an_empty_event_name() -> None:
    with pytest.raises(ConfigurationError):
        meter(event_name=" ")


def test_filters_from_settings(captured: CapturedEvents) -> None:
    app, dodo = make_app(exclude_paths=[r"/api/v1/items/\d+"])
    client = app.test_client()
    client.get("/api/v1/items/1", headers=C)
    client.options(
        "/api/v1/items", headers={**C, "Origin": "https://a.example", "Access-Control-Request-Method": "POST"}
    )
    client.post("/api/v1/items", headers=C)
    client.options("/api/v1/items", headers=C)  # item 18: Flask answers OPTIONS itself, in full: billed
    assert [(e.metadata["endpoint"], e.metadata["method"]) for e in captured] == [
        ("/api/v1/items", "POST"),
        ("/api/v1/items", "OPTIONS"),
    ]
    assert dodo.stats().skipped == {"filtered": 2}


def test_should_meter_and_extra_metadata_get_request_and_response(captured: CapturedEvents) -> None:
    seen: list[tuple[str, int]] = []

    def should(req: Any, resp: Any) -> bool:
        seen.append((req.path, resp.status_code))
        return bool(req.path != "/api/v1/items/2")

    app, _ = make_app(should_meter=should, extra_metadata=lambda req, resp: {"region": "eu"})
    client = app.test_client()
    client.get("/api/v1/items/1", headers=C)
    client.get("/api/v1/items/2", headers=C)
    assert seen == [("/api/v1/items/1", 200), ("/api/v1/items/2", 200)]
    assert [e.metadata["region"] for e in captured] == ["eu"]


# --- customers ---------------------------------------------------------------------------------------------------


def test_customer_priority(captured: CapturedEvents) -> None:
    calls: list[Any] = []

    def customer(req: Any, resp: Any) -> str | None:
        calls.append(resp.status_code if resp is not None else None)
        return req.headers.get("X-Account")  # type: ignore[no-any-return]

    app, _ = make_app(customer_id=customer, fallback_customer_id="cus_house")

    @app.get("/explicit")
    def explicit() -> str:
        set_customer("cus_explicit")
        return "ok"

    client = app.test_client()
    client.get("/explicit", headers={"X-Account": "cus_account", "X-Customer": "cus_g"})
    client.get("/api/v1/items/1", headers={"X-Account": "cus_account", "X-Customer": "cus_g"})
    client.get("/api/v1/items/1", headers={"X-Customer": "cus_g"})
    client.get("/api/v1/items/1")
    assert [e.customer_id for e in captured] == ["cus_explicit", "cus_account", "cus_g", "cus_house"]
    assert calls == [200, 200, 200]


def test_no_customer_is_skipped(captured: CapturedEvents) -> None:
    app, dodo = make_app()
    app.test_client().get("/api/v1/items/1")
    assert len(captured) == 0
    assert dodo.stats().skipped == {"no_customer": 1}


def test_annotate_customer_wins_over_everything(captured: CapturedEvents) -> None:
    app, _ = make_app(customer_id=lambda req, resp: "cus_callable")

    @app.get("/annotated")
    def annotated() -> str:
        set_customer("cus_explicit")
        annotate(customer_id="cus_annotated")
        return "ok"

    app.test_client().get("/annotated", headers=C)
    assert [e.customer_id for e in captured] == ["cus_annotated"]


# --- configuration, several apps -----------------------------------------------------------------------------------


def test_kwargs_win_over_app_config_and_instance_is_registered() -> None:
    app = Flask("configured")
    app.config.update(
        DODO_INGEST_API_KEY="sk_test_cfg", DODO_INGEST_EVENT_NAME="from_config", DODO_INGEST_FLUSH_INTERVAL=2.0
    )
    dodo = DodoIngest(app, event_name="from_kwargs")
    assert app.extensions["dodo_ingest"] is dodo
    config = dodo.config(app)
    assert config.event_name == "from_kwargs"
    assert dodo.ingestion(app).config.flush_interval == 2.0
    assert dodo.ingestion(app).config.api_key == "sk_test_cfg"


def test_invalid_app_config_raises_at_init_app_naming_the_key() -> None:
    app = Flask("broken")
    app.config.update(DODO_INGEST_API_KEY="sk_test_cfg", DODO_INGEST_FLUSH_INTERVAL="soon")
    dodo = DodoIngest()
    with pytest.raises(ConfigurationError, match=r"app\.config: DODO_INGEST_FLUSH_INTERVAL"):
        dodo.init_app(app)
    assert "dodo_ingest" not in app.extensions


def test_unknown_keyword_raises_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="flush_intervall"):
        DodoIngest(flush_intervall=1)


def test_missing_api_key_raises_at_init_app() -> None:
    with pytest.raises(ConfigurationError, match="DODO_INGEST_API_KEY"):
        DodoIngest(Flask("nokey"))


def test_init_app_is_idempotent_per_app_but_a_second_extension_raises(captured: CapturedEvents) -> None:
    app, dodo = make_app()
    dodo.init_app(app)
    dodo.init_app(app)
    app.test_client().get("/api/v1/items/1", headers=C)
    assert len(captured) == 1  # still one event per request: the receivers were not connected twice
    with pytest.raises(RuntimeError, match="already"):
        DodoIngest().init_app(app)


def test_several_apps_in_one_process_are_metered_independently(captured: CapturedEvents) -> None:
    shared = DodoIngest(event_name="shared_call")
    first, second = Flask("first"), Flask("second")
    for app in (first, second):
        app.config.update(DODO_INGEST_API_KEY="sk_test_multi", DODO_INGEST_FALLBACK_CUSTOMER_ID=f"cus_{app.name}")
        app.add_url_rule("/where", app.name, lambda: "here")
        shared.init_app(app)
    third, _ = make_app("third", event_name="third_call")
    first.test_client().get("/where")
    second.test_client().get("/where")
    second.test_client().get("/where")
    third.test_client().get("/api/v1/items/9", headers=C)
    assert [(e.customer_id, e.event_name) for e in captured] == [
        ("cus_first", "shared_call"),
        ("cus_second", "shared_call"),
        ("cus_second", "shared_call"),
        ("cus_1", "third_call"),
    ]
    # Apps with the same delivery settings share one ingestion (one queue, one thread); a different event name
    # or key gets its own.
    assert shared.ingestion(first) is shared.ingestion(second)
    assert shared.stats(first).accepted == 3
    assert shared.ingestion(first) is not DodoIngest.ingestion(third.extensions["dodo_ingest"], third)
    with pytest.raises(RuntimeError, match="several apps"):
        shared.ingestion()
    with first.app_context():
        assert shared.ingestion() is shared.ingestion(first)


def test_shared_ingestion(captured: CapturedEvents) -> None:
    ingestion = Ingestion(api_key="sk_test_shared")
    app = Flask("sharing")
    app.config["DODO_INGEST_EVENT_NAME"] = "from_app_config"
    dodo = DodoIngest(app, ingestion=ingestion, fallback_customer_id="cus_x")
    app.add_url_rule("/", "index", lambda: "ok")
    app.test_client().get("/")
    assert dodo.ingestion() is ingestion
    assert [e.event_name for e in captured] == ["from_app_config"]


def test_with_the_wsgi_middleware_too_a_request_is_counted_once(captured: CapturedEvents) -> None:
    app, _ = make_app()
    app.wsgi_app = DodoIngestMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, api_key="sk_test_outer", fallback_customer_id="cus_outer"
    )
    client = app.test_client()
    client.get("/api/v1/items/5", headers=C)
    client.get("/health", headers=C)  # exempt in Flask: the outer middleware must not meter it either
    assert [(e.customer_id, e.metadata["endpoint"]) for e in captured] == [("cus_1", "/api/v1/items/<int:item_id>")]


# --- metering never breaks the app ---------------------------------------------------------------------------------


def test_failing_customer_hook_never_breaks_the_response(captured: CapturedEvents) -> None:
    def broken(req: Any, resp: Any) -> str:
        raise KeyError("account")

    app, dodo = make_app(customer_id=broken)
    response = app.test_client().get("/api/v1/items/3", headers=C)
    assert response.json == {"id": 3}
    assert [e.customer_id for e in captured] == ["cus_1"]  # item 21: the g default still bills it
    assert dodo.stats().hook_errors == 1


@pytest.mark.parametrize("target", ["dodo_ingest.request.request_bytes", "dodo_ingest.request.request_path"])
def test_internal_failure_never_breaks_the_response(
    captured: CapturedEvents, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("sdk bug")

    monkeypatch.setattr(target, broken)
    app, dodo = make_app()
    response = app.test_client().get("/api/v1/items/3", headers=C)
    assert response.json == {"id": 3}
    assert dodo.stats().skipped == {"adapter_error": 1}


def test_disabled_extension_meters_nothing(captured: CapturedEvents) -> None:
    app = Flask("off")
    app.config["DODO_INGEST_ENABLED"] = False
    DodoIngest(app)
    app.add_url_rule("/", "index", lambda: "ok")
    assert app.test_client().get("/").data == b"ok"
    assert len(captured) == 0


# --- real delivery --------------------------------------------------------------------------------------------------


def test_events_reach_the_local_server_exactly_once(dodo_server: LocalDodoServer) -> None:
    app, dodo = make_app(api_key=TEST_KEY, base_url=dodo_server.url, shutdown_timeout=5.0)
    client = app.test_client()
    expected = 0
    try:
        for index in range(40):
            headers = {"X-Customer": f"cus_{index % 4}"}
            if index % 10 == 9:
                client.get("/missing", headers=headers)
            elif index % 10 == 8:
                client.get("/api/v1/stream", headers=headers, buffered=True)
            else:
                client.get(f"/api/v1/items/{index}", headers=headers)
            expected += 1
        client.get("/health", headers=C)  # exempt
        client.get("/api/v1/items/1")  # no customer
        assert dodo.flush(timeout=10)
    finally:
        dodo.shutdown(timeout=5)
    assert dodo_server.wait_for_events(expected, timeout=10)
    events = dodo_server.events()
    assert len(events) == expected
    assert len({e["event_id"] for e in events}) == expected
    assert len(dodo_server.events(customer_id="cus_2")) == 10
    endpoints = {e["metadata"]["endpoint"] for e in events}
    assert endpoints == {"/api/v1/items/<int:item_id>", "/api/v1/stream", UNMATCHED_ENDPOINT}


# --- issue 7 regressions -------------------------------------------------------------------------------------------


def test_a_streamed_response_resolves_the_customer_while_g_still_exists(captured: CapturedEvents) -> None:
    """Item 2: the resolver of the extension's own docstring example reads ``g``; on a streamed response it ran
    after the request and app contexts were gone, failed, and the request was not billed."""
    app, dodo = make_app(
        customer_resolver=lambda req, resp: g.account,
        metadata_hook=lambda req, resp: {"plan": g.plan, "path": req.path},
        should_meter=lambda req, resp: g.plan != "free",
    )

    @app.before_request
    def load_account() -> None:
        g.account, g.plan = "cus_from_g", "pro"

    response = app.test_client().get("/api/v1/stream", headers=C)
    assert response.get_data() == b"a" * 10 + b"b" * 20
    response.close()
    assert [(e.customer_id, e.metadata["plan"], e.metadata["response_bytes"]) for e in captured] == [
        ("cus_from_g", "pro", 30)
    ]
    assert dodo.stats().hook_errors == 0


@pytest.mark.parametrize("kind", [bytearray, memoryview, bytes])
def test_bytearray_and_memoryview_chunks_are_counted_without_raising(kind: type, captured: CapturedEvents) -> None:
    """Item 3: the byte counter raised on chunks that plain Flask serves."""
    app, _ = make_app()

    @app.get("/chunks")
    def chunks() -> Response:
        return Response((kind(b"x" * n) for n in (3, 4, 5)), mimetype="application/octet-stream")

    response = app.test_client().get("/chunks", headers=C)
    assert response.get_data() == b"x" * 12
    response.close()
    assert [e.metadata["response_bytes"] for e in captured] == [12]


def test_an_app_factory_test_suite_does_not_leak_threads(dodo_server: LocalDodoServer) -> None:
    """Item 11: one Ingestion and two threads per app, never released: 50 apps made 100 threads."""
    import threading

    def flush_threads() -> int:
        return sum(1 for t in threading.enumerate() if t.name.startswith("dodo-ingest"))

    before = flush_threads()
    apps = []
    for i in range(50):
        app, dodo = make_app(f"factory_{i}", api_key=TEST_KEY, base_url=dodo_server.url, flush_interval=600)
        app.test_client().get("/api/v1/items/1", headers=C)
        apps.append((app, dodo))
    assert flush_threads() - before == 1  # the 50 apps share one ingestion: one queue, one flush thread
    assert apps[0][1].flush(timeout=10)
    assert dodo_server.event_count() == 50


def test_exempt_works_on_a_blueprint_and_belongs_to_the_instance(captured: CapturedEvents) -> None:
    app = Flask("blueprints")
    app.config["DODO_INGEST_API_KEY"] = "sk_test_flask_unit"
    dodo = DodoIngest(app, fallback_customer_id="cus_1")
    admin = Blueprint("admin", __name__, url_prefix="/admin")
    admin.add_url_rule("/stats", "stats", lambda: "stats")
    dodo.exempt(admin)
    app.register_blueprint(admin)
    app.add_url_rule("/api", "api", lambda: "api")
    client = app.test_client()
    client.get("/admin/stats")
    client.get("/api")
    assert [e.metadata["endpoint"] for e in captured] == ["/api"]
    assert dodo.stats().skipped == {"filtered": 1}


def test_rollups_bill_the_calls_by_route_template(dodo_server: LocalDodoServer) -> None:
    app, dodo = make_app(api_key=TEST_KEY, base_url=dodo_server.url, shutdown_timeout=5.0, rollup_interval=300)
    client = app.test_client()
    for item in range(30):
        client.get(f"/api/v1/items/{item}", headers={"X-Customer": f"cus_{item % 3}"})
    client.post("/api/v1/items", headers=C)
    assert dodo.flush(timeout=10)
    calls = {
        (e["customer_id"], e["metadata"]["endpoint"], e["metadata"]["method"]): e["metadata"]["calls"]
        for e in dodo_server.events()
    }
    assert calls == {
        ("cus_0", "/api/v1/items/<int:item_id>", "GET"): 10,
        ("cus_1", "/api/v1/items/<int:item_id>", "GET"): 10,
        ("cus_2", "/api/v1/items/<int:item_id>", "GET"): 10,
        ("cus_1", "/api/v1/items", "POST"): 1,
    }
    assert dodo.stats().rolled_up == 31
