"""Rate limits in the WSGI middleware and the shared request lifecycle: checked before the app, once per
request, settled with the bill; a real Redis stopped mid-run (fail open, breaker) and started again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from flask import Flask, g, request
from werkzeug.test import Client

from dodo_ingest.config import RequestConfig
from dodo_ingest.ingestion import Ingestion
from dodo_ingest.ratelimit import Decision
from dodo_ingest.request import LIMIT_KEY, Meter, build_limiter
from dodo_ingest.testing import CapturedEvents, capture_events
from dodo_ingest.wsgi import DodoIngestMiddleware, set_customer
from dodo_ingest_flask import DodoIngest
from tests.conftest import TEST_KEY
from tests.helpers import free_port, wait_until
from tests.ratelimit.redis_server import RedisServer

SETTINGS: dict[str, Any] = {"api_key": TEST_KEY, "base_url": "http://127.0.0.1:9", "shutdown_timeout": 1.0}


class App:
    """A WSGI app that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.calls += 1
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]


def auth(app: Any) -> Any:
    """An outer authentication middleware that names the customer with ``set_customer``."""

    def middleware(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ.get("HTTP_AUTHORIZATION") == "Bearer tok_1":
            set_customer(environ, "cus_1")
        return app(environ, start_response)  # type: ignore[no-any-return]

    return middleware


def get(client: Client, path: str = "/x", **headers: str) -> Any:
    response = client.get(path, headers=headers)
    response.close()  # the server's close(): the event is recorded
    return response


@pytest.fixture(autouse=True)
def captured() -> Iterator[CapturedEvents]:
    with capture_events() as events:
        yield events


def test_rate_limit_key_sees_the_environ_and_the_app_is_not_called_when_rejected(captured: CapturedEvents) -> None:
    app = App()
    middleware = DodoIngestMiddleware(
        app, **SETTINGS, rate_limits="2/minute", rate_limit_key=lambda environ: environ.get("HTTP_X_CUSTOMER")
    )
    client = Client(middleware)
    responses = [get(client, **{"X-Customer": "cus_1"}) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert app.calls == 2
    assert json.loads(responses[2].data)["error"] == "rate_limited"
    assert responses[2].headers["Retry-After"] and responses[2].headers["RateLimit"].startswith('"2/minute";r=0')
    assert responses[0].headers["RateLimit"].startswith('"2/minute";r=1;')
    assert [e.metadata["cost"] for e in captured] == [1, 1]
    assert middleware.ingestion.stats().skipped == {"rate_limited": 1}


def test_the_customer_from_an_outer_auth_middleware(captured: CapturedEvents) -> None:
    middleware = DodoIngestMiddleware(App(), **SETTINGS, rate_limits="1/minute")
    client = Client(auth(middleware))
    assert [get(client, Authorization="Bearer tok_1").status_code for _ in range(2)] == [200, 429]
    assert get(client).status_code == 200  # no customer: neither limited nor billed
    assert [e.customer_id for e in captured] == ["cus_1"]
    assert middleware.usage("cus_1")[0].used == 1


def test_a_custom_response_gets_the_fields_added() -> None:
    def answer(environ: dict[str, Any], decision: Decision) -> tuple[int, list[tuple[str, str]], str]:
        return 429, [("Content-Type", "text/plain")], f"retry in {decision.retry_after}s"

    middleware = DodoIngestMiddleware(
        App(), **SETTINGS, rate_limits="1/minute", fallback_customer_id="cus_anon", rate_limit_response=answer
    )
    client = Client(middleware)
    get(client)
    response = get(client)
    assert response.status == "429 TOO MANY REQUESTS" or response.status_code == 429
    assert response.data.decode().startswith("retry in ")
    assert response.headers["Content-Type"] == "text/plain" and "Retry-After" in response.headers


def test_a_failing_custom_response_falls_back_to_the_default() -> None:
    def answer(environ: dict[str, Any], decision: Decision) -> Any:
        raise RuntimeError("bug in the app's hook")

    middleware = DodoIngestMiddleware(
        App(), **SETTINGS, rate_limits="1/minute", fallback_customer_id="cus_anon", rate_limit_response=answer
    )
    client = Client(middleware)
    get(client)
    response = get(client)
    assert response.status_code == 429 and json.loads(response.data)["error"] == "rate_limited"
    assert middleware.ingestion.stats().hook_errors == 1


def test_an_app_header_of_the_same_name_wins() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("RateLimit", "app's own")])
        return [b""]

    client = Client(DodoIngestMiddleware(app, **SETTINGS, rate_limits="5/minute", fallback_customer_id="cus_a"))
    response = get(client)
    assert response.headers.getlist("RateLimit") == ["app's own"] and "RateLimit-Policy" in response.headers


def test_fail_closed_answers_503_when_the_store_is_unreachable(captured: CapturedEvents) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    middleware = DodoIngestMiddleware(
        App(), **SETTINGS, rate_limits="5/minute", rate_limit_storage=dead, rate_limit_fail_open=False,
        fallback_customer_id="cus_a",
    )  # fmt: skip
    response = get(Client(middleware))
    assert response.status_code == 503
    assert json.loads(response.data)["error"] == "rate_limit_unavailable" and response.headers["Retry-After"]
    assert captured == []


def test_nested_adapters_check_once_and_the_inner_one_bills(captured: CapturedEvents) -> None:
    flask_app = Flask("inner")
    dodo = DodoIngest(flask_app, **SETTINGS, rate_limits="3/minute;100/month")

    @flask_app.before_request
    def authenticate() -> None:
        if request.headers.get("Authorization") == "Bearer tok_1":
            g.dodo_customer_id = "cus_1"

    @flask_app.get("/x")
    def x() -> str:
        return "x"

    outer = DodoIngestMiddleware(flask_app, **SETTINGS, rate_limits="3/minute;100/month")
    client = Client(auth(outer))  # the outer middleware knows the customer before the app: it checks
    responses = [get(client, Authorization="Bearer tok_1") for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert len(responses[0].headers.getlist("RateLimit-Policy")) == 1  # added once, by the inner adapter
    assert {s.policy: s.used for s in outer.usage("cus_1")} == {"3/minute": 3, "100/month": 3}
    # The inner adapter's own limiter (another memory store) was never asked: the request was checked once.
    assert {s.policy: s.used for s in dodo.usage("cus_1")} == {"3/minute": 0, "100/month": 0}
    assert [e.customer_id for e in captured] == ["cus_1"] * 3


def test_the_check_is_recorded_in_the_carrier() -> None:
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.append(environ.get(LIMIT_KEY))
        start_response("204 No Content", [])
        return []

    get(Client(DodoIngestMiddleware(app, **SETTINGS, rate_limits="5/minute", fallback_customer_id="cus_a")))
    assert seen[0].customer == "cus_a" and seen[0].decision.allowed and seen[0].cost == 1


def test_off_means_no_limiter_and_nothing_in_the_environ() -> None:
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        seen.append(dict(environ))
        start_response("200 OK", [])
        return [b""]

    middleware = DodoIngestMiddleware(app, **SETTINGS, fallback_customer_id="cus_a")
    response = get(Client(middleware))
    assert middleware.limiter is None and LIMIT_KEY not in seen[0] and "RateLimit" not in response.headers


# --- a real Redis, stopped mid-run ---------------------------------------------------------------------------


@pytest.mark.slow  # starts and stops its own redis-server
def test_redis_stopped_mid_run_fails_open_then_limits_resume(captured: CapturedEvents) -> None:
    server = RedisServer().start()
    try:
        middleware = DodoIngestMiddleware(
            App(), **SETTINGS, rate_limits="5/minute", rate_limit_storage=server.url, fallback_customer_id="cus_1"
        )
        limiter = middleware.limiter
        assert limiter is not None
        client = Client(middleware)
        assert [get(client).status_code for _ in range(3)] == [200] * 3
        assert limiter.usage("cus_1")[0].used == 3

        server.stop()
        outage = [get(client) for _ in range(20)]
        assert [r.status_code for r in outage] == [200] * 20  # fail open: every request passes...
        assert all("RateLimit" not in r.headers for r in outage)  # ...without numbers it cannot know
        stats = limiter.stats()
        assert stats["failed_open"] == 20 and stats["breaker_opened"] == 1
        assert limiter.breaker.state == "open"
        assert stats["storage_errors"] == 3  # after 3 failures in a row: no more connection attempts
        assert len(captured) == 23  # ...and each is still billed

        server.start()  # the same port, empty
        limiter.breaker.cooldown = 0.05  # let the next check probe the store again soon
        assert wait_until(lambda: "RateLimit" in get(client).headers, timeout=10)
        assert limiter.breaker.state == "closed"
        statuses = [get(client).status_code for _ in range(6)]
        assert statuses.count(200) == 4 and statuses[-1] == 429  # the limit applies again (1 + 4 of 5)
    finally:
        server.stop()


def test_settling_on_a_running_loop_is_a_task_not_a_blocking_call(redis_url: str) -> None:
    config = RequestConfig(rate_limits=RequestConfig.load({"rate_limits": "100/month"}).rate_limits)
    config = RequestConfig.load({"rate_limit_storage": redis_url}, base=config)
    meter = Meter(Ingestion(**SETTINGS), config)
    limiter = meter.limiter
    assert limiter is not None and not limiter.in_memory

    async def main() -> int:
        meter.settle(limiter, "cus_loop", 2, None)
        assert len(meter._tasks) == 1  # scheduled, not run in this call
        await asyncio.gather(*meter._tasks)
        return (await limiter.ausage("cus_loop"))[0].used

    assert asyncio.run(main()) == 2
    meter.settle(limiter, "cus_loop", -1, None)  # no loop: done now
    assert limiter.usage("cus_loop")[0].used == 1
    assert build_limiter(config, customer_limits=False).enabled is False
