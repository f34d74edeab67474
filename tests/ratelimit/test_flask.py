"""Rate limits in the Flask extension: checked after every before_request function, before the view."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Blueprint, Flask, abort, g, request

from dodo_ingest.localserver import LocalDodoServer
from dodo_ingest.ratelimit import Decision
from dodo_ingest.testing import CapturedEvents, capture_events
from dodo_ingest_flask import DodoIngest, RateLimitExceeded, exempt
from tests.conftest import TEST_KEY

KEYS = {"key_free": "cus_free", "key_pro": "cus_pro"}


def authenticate() -> None:
    """The app's authentication: an API key header mapped to the customer (``g.dodo_customer_id``)."""
    customer = KEYS.get(request.headers.get("X-Api-Key", ""))
    if customer is not None:
        g.dodo_customer_id = customer
    elif request.path.startswith("/private"):
        abort(401)


def make_app(*, auth_first: bool, **settings: Any) -> tuple[Flask, DodoIngest]:
    """An app whose authentication is registered before or after ``init_app``."""
    app = Flask("limited")
    settings.setdefault("api_key", TEST_KEY)
    settings.setdefault("base_url", "http://127.0.0.1:9")
    settings.setdefault("shutdown_timeout", 1.0)
    if auth_first:
        app.before_request(authenticate)
    dodo = DodoIngest(app, **settings)
    if not auth_first:
        app.before_request(authenticate)

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> dict[str, Any]:
        return {"id": item_id}

    @app.post("/render")
    @dodo.limit("10/minute", cost=5)
    def render() -> dict[str, Any]:
        return {"rendered": True}

    @dodo.limit(cost=3)
    @app.get("/report")
    def report() -> dict[str, Any]:
        return {"report": True}

    @app.get("/async")
    async def async_view() -> dict[str, Any]:
        return {"async": True}

    @app.get("/health")
    @exempt
    def health() -> str:
        return "ok"

    @app.get("/teapot")
    def teapot() -> tuple[str, int]:
        return "no", 418

    return app, dodo


@pytest.fixture(autouse=True)
def captured(request: pytest.FixtureRequest) -> Iterator[CapturedEvents]:
    """Every event, captured in the calling thread (nothing is queued for delivery), except in the tests
    that deliver to the local server."""
    if "dodo_server" in request.fixturenames:
        yield CapturedEvents()
        return
    with capture_events() as events:
        yield events


FREE = {"X-Api-Key": "key_free"}


@pytest.mark.parametrize("auth_first", [True, False], ids=["auth-before-init_app", "auth-after-init_app"])
def test_the_customer_from_before_request_is_limited_whatever_the_order(
    auth_first: bool, captured: CapturedEvents
) -> None:
    app, dodo = make_app(auth_first=auth_first, rate_limits="3/minute")
    client = app.test_client()
    statuses = [client.get(f"/items/{i}", headers=FREE).status_code for i in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    assert [e.customer_id for e in captured] == ["cus_free"] * 3  # the rejected ones are not billed
    assert dodo.stats().skipped["rate_limited"] == 2
    limiter = dodo.limiter()
    assert limiter is not None and limiter.stats()["rate_limited"] == 2


def test_a_blueprint_before_request_runs_before_the_check_too(captured: CapturedEvents) -> None:
    app = Flask("bp")
    dodo = DodoIngest(app, api_key=TEST_KEY, base_url="http://127.0.0.1:9", rate_limits="1/minute")
    api = Blueprint("api", __name__, url_prefix="/api")
    api.before_request(authenticate)  # blueprint functions run after the app's

    @api.get("/x")
    def x() -> str:
        return "x"

    app.register_blueprint(api)
    client = app.test_client()
    assert [client.get("/api/x", headers=FREE).status_code for _ in range(2)] == [200, 429]
    assert dodo.usage("cus_free")[0].used == 1


def test_the_429_is_json_with_retry_after_and_the_ietf_fields() -> None:
    app, _ = make_app(auth_first=True, rate_limits="1/minute;100/month")
    client = app.test_client()
    ok = client.get("/items/1", headers=FREE)
    assert (
        ok.headers["RateLimit-Policy"]
        == '"1/minute";q=1;w=60, "100/month";q=100;w=' + ok.headers["RateLimit-Policy"].rsplit("w=", 1)[1]
    )
    assert ok.headers["RateLimit"].startswith('"1/minute";r=0;t=')
    assert "Retry-After" not in ok.headers  # never on a 200
    limited = client.get("/items/1", headers=FREE)
    assert limited.status_code == 429
    assert limited.mimetype == "application/json"
    body = limited.get_json()
    assert body["error"] == "rate_limited" and body["policy"] == "1/minute" and body["limit"] == 1
    assert 1 <= int(limited.headers["Retry-After"]) <= 60 and body["retry_after"] == int(limited.headers["Retry-After"])
    assert '"100/month";r=99;' in limited.headers["RateLimit"]  # the rejected call was not counted
    assert "X-RateLimit-Limit" not in limited.headers


def test_legacy_headers_on_request() -> None:
    app, _ = make_app(auth_first=True, rate_limits="2/minute", rate_limit_legacy_headers=True)
    response = app.test_client().get("/items/1", headers=FREE)
    assert (response.headers["X-RateLimit-Limit"], response.headers["X-RateLimit-Remaining"]) == ("2", "1")
    assert int(response.headers["X-RateLimit-Reset"]) > 1_700_000_000


def test_per_view_limit_and_cost_are_consumed_and_billed(captured: CapturedEvents) -> None:
    app, dodo = make_app(auth_first=True, rate_limits="100/minute;1000/month")
    client = app.test_client()
    assert [client.post("/render", headers=FREE).status_code for _ in range(3)] == [200, 200, 429]
    assert client.get("/report", headers=FREE).status_code == 200
    assert client.get("/items/1", headers=FREE).status_code == 200
    assert [(e.metadata["endpoint"], e.metadata["cost"]) for e in captured] == [
        ("/render", 5),
        ("/render", 5),
        ("/report", 3),
        ("/items/<int:item_id>", 1),
    ]
    usage = {state.policy: state for state in dodo.usage("cus_free")}
    assert usage["1000/month"].used == 5 + 5 + 3 + 1  # the quota counts the billed units, rejections excluded
    render = dodo.limiter().usage("cus_free", scope="render", limits="10/minute")  # type: ignore[union-attr]
    assert {s.policy: s.used for s in render}["render:10/minute"] == 10


def test_per_view_limits_without_customer_limits() -> None:
    app, dodo = make_app(auth_first=True)  # rate_limits unset: only the decorated views are limited
    client = app.test_client()
    assert dodo.limiter() is None
    assert [client.get("/items/1", headers=FREE).status_code for _ in range(5)] == [200] * 5
    assert "RateLimit" not in client.get("/items/1", headers=FREE).headers
    first = client.post("/render", headers=FREE)
    assert first.status_code == 200 and first.headers["RateLimit"].startswith('"render:10/minute";r=5;')


def test_a_custom_errorhandler_answers_with_the_decision() -> None:
    app, _ = make_app(auth_first=True, rate_limits="1/minute")

    @app.errorhandler(RateLimitExceeded)
    def slow_down(error: RateLimitExceeded) -> tuple[dict[str, Any], int]:
        return {"message": "slow down", "limit": error.decision.limit}, 429

    client = app.test_client()
    client.get("/items/1", headers=FREE)
    response = client.get("/items/1", headers=FREE)
    assert response.status_code == 429
    assert response.get_json() == {"message": "slow down", "limit": 1}
    assert "Retry-After" in response.headers and "RateLimit-Policy" in response.headers


def test_errorhandler_by_code_and_its_own_retry_after_wins() -> None:
    app, _ = make_app(auth_first=True, rate_limits="1/minute")

    @app.errorhandler(429)
    def by_code(error: Exception) -> tuple[str, int, dict[str, str]]:
        return "later", 429, {"Retry-After": "999"}

    client = app.test_client()
    client.get("/items/1", headers=FREE)
    response = client.get("/items/1", headers=FREE)
    assert (response.status_code, response.data, response.headers["Retry-After"]) == (429, b"later", "999")


def test_the_rate_limit_response_setting() -> None:
    seen: list[tuple[str, Decision]] = []

    def answer(req: Any, decision: Decision) -> tuple[dict[str, Any], int]:
        seen.append((req.path, decision))
        return {"quota": "exceeded"}, 429

    app, _ = make_app(auth_first=True, rate_limits="1/minute", rate_limit_response=answer)
    client = app.test_client()
    client.get("/items/1", headers=FREE)
    response = client.get("/items/1", headers=FREE)
    assert response.get_json() == {"quota": "exceeded"} and "Retry-After" in response.headers
    assert seen[0][0] == "/items/1" and not seen[0][1].allowed


def test_async_view_is_checked_and_still_runs() -> None:
    pytest.importorskip("asgiref")
    app, _ = make_app(auth_first=True, rate_limits="2/minute")
    client = app.test_client()
    responses = [client.get("/async", headers=FREE) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert responses[0].get_json() == {"async": True}


def test_exempt_unmetered_and_unidentified_requests_consume_nothing(captured: CapturedEvents) -> None:
    app, dodo = make_app(auth_first=True, rate_limits="1/minute;10/month", exclude_paths=["/items/999"])
    client = app.test_client()
    for _ in range(3):
        assert client.get("/health", headers=FREE).status_code == 200  # exempt
        assert client.get("/items/999", headers=FREE).status_code == 200  # excluded by the filters
        assert client.get("/items/1").status_code == 200  # no customer: not limited, not billed
    assert captured == []
    assert {s.policy: s.used for s in dodo.usage("cus_free")} == {"1/minute": 0, "10/month": 0}
    assert client.get("/items/1", headers=FREE).status_code == 200


def test_fallback_customer_is_limited(captured: CapturedEvents) -> None:
    app, _ = make_app(auth_first=True, rate_limits="1/minute", fallback_customer_id="cus_anonymous")
    client = app.test_client()
    assert [client.get("/items/1").status_code for _ in range(2)] == [200, 429]
    assert [e.customer_id for e in captured] == ["cus_anonymous"]


def test_rate_limit_key_sees_only_the_request() -> None:
    keys: list[str] = []

    def key(req: Any) -> str | None:
        keys.append(req.path)
        return KEYS.get(req.headers.get("X-Key", ""))

    app, _ = make_app(auth_first=True, rate_limits="1/minute", rate_limit_key=key)
    client = app.test_client()
    assert [client.get("/items/1", headers={"X-Key": "key_pro"}).status_code for _ in range(2)] == [200, 429]
    assert keys == ["/items/1", "/items/1"]


def test_per_plan_limits_from_a_dotted_path(captured: CapturedEvents) -> None:
    app, _ = make_app(auth_first=True, rate_limits="tests.ratelimit.plans.limits_for")  # cus_free: 2/minute
    client = app.test_client()
    free = [client.get("/items/1", headers=FREE).status_code for _ in range(3)]
    pro = [client.get("/items/1", headers={"X-Api-Key": "key_pro"}).status_code for _ in range(3)]
    assert (free, pro) == ([200, 200, 429], [200, 200, 200])  # cus_pro's plan: unlimited
    assert "RateLimit" not in client.get("/items/1", headers={"X-Api-Key": "key_pro"}).headers


def test_billed_without_a_check_counts_in_the_quota_and_unbilled_after_a_check_does_not(
    captured: CapturedEvents,
) -> None:
    def should_meter(req: Any, response: Any) -> bool:
        return response is None or response.status_code != 418

    app, dodo = make_app(auth_first=True, rate_limits="100/minute;1000/month", should_meter=should_meter)
    client = app.test_client()
    assert client.get("/nowhere", headers=FREE).status_code == 404  # no view: billed, never checked
    assert client.get("/teapot", headers=FREE).status_code == 418  # checked, then not billed (should_meter)
    assert client.get("/items/1", headers=FREE).status_code == 200
    assert [e.metadata["status_code"] for e in captured] == [404, 200]
    assert [e.metadata["cost"] for e in captured] == [1, 1]
    usage = {state.policy: state.used for state in dodo.usage("cus_free")}
    assert usage["1000/month"] == len(captured) == 2


def test_a_customer_changed_inside_the_view_moves_the_units(captured: CapturedEvents) -> None:
    app, dodo = make_app(auth_first=True, rate_limits="1000/month")

    @app.get("/on-behalf")
    def on_behalf() -> str:
        from dodo_ingest_flask import set_customer

        set_customer("cus_pro")  # checked as cus_free, billed to cus_pro
        return "ok"

    app.test_client().get("/on-behalf", headers=FREE)
    assert [e.customer_id for e in captured] == ["cus_pro"]
    assert dodo.usage("cus_free")[0].used == 0 and dodo.usage("cus_pro")[0].used == 1


def test_rejected_requests_can_be_sent_under_another_event_name(captured: CapturedEvents) -> None:
    app, _ = make_app(auth_first=True, rate_limits="1/minute", rate_limit_rejected_event="api_call_rejected")
    client = app.test_client()
    client.get("/items/1", headers=FREE)
    client.get("/items/2", headers=FREE)
    assert [(e.event_name, e.metadata["status_code"]) for e in captured] == [
        ("api_call", 200),
        ("api_call_rejected", 429),
    ]


def test_rate_limiting_off_adds_nothing_to_requests_or_events(captured: CapturedEvents) -> None:
    app, dodo = make_app(auth_first=True)
    response = app.test_client().get("/items/1", headers=FREE)
    assert "RateLimit" not in response.headers and "cost" not in captured[0].metadata
    assert dodo.limiter() is None and dodo.usage("cus_free") == ()
    assert not hasattr(app.view_functions["item"], "_dodo_ingest_guard")  # the view is not wrapped


def test_the_view_is_wrapped_once_and_keeps_its_options() -> None:
    app, _ = make_app(auth_first=True, rate_limits="100/minute")
    client = app.test_client()
    client.get("/items/1", headers=FREE)
    wrapped = app.view_functions["item"]
    client.get("/items/2", headers=FREE)
    assert app.view_functions["item"] is wrapped and wrapped.__name__ == "item"
    assert wrapped.__wrapped__.__name__ == "item"  # type: ignore[attr-defined]


def test_quota_equals_the_billed_units_at_the_local_server(dodo_server: LocalDodoServer) -> None:
    units = dodo_server.create_meter(
        {
            "name": "units",
            "event_name": "api_call",
            "measurement_unit": "units",
            "aggregation": {"type": "sum", "key": "cost"},
        }
    )
    app, dodo = make_app(auth_first=True, base_url=dodo_server.url, rate_limits="50/minute;12/month")
    client = app.test_client()
    statuses = [client.post("/render", headers=FREE).status_code for _ in range(2)]  # 5 units each
    statuses += [client.get(f"/items/{i}", headers=FREE).status_code for i in range(3)]  # the third: quota full
    statuses.append(client.get("/nowhere", headers=FREE).status_code)  # billed (a 404), never checked
    assert statuses == [200, 200, 200, 200, 429, 404]
    assert dodo.flush(timeout=10)
    stored = dodo_server.events(customer_id="cus_free")
    billed = dodo_server.usage_between(units["id"], customer_id="cus_free")[0]["total"]
    quota = {s.policy: s.used for s in dodo.usage("cus_free")}["12/month"]
    assert quota == billed == sum(e["metadata"]["cost"] for e in stored) == 5 + 5 + 1 + 1 + 1
    assert len(stored) == 5 and dodo.stats().skipped["rate_limited"] == 1
