"""Rate limits in Django: the metering middleware checks in ``process_view`` (after every middleware, so it sees
``request.user``), async views with ``acheck``, per-view limits and costs, DRF's token auth with
``DodoRateThrottle``, the W003 system check; the quota equals what the local Dodo server holds."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient, Client
from pytest_django import Settings
from rest_framework.authtoken.models import Token

import dodo_ingest_django
from dodo_ingest.ingestion import Ingestion
from dodo_ingest.localserver import LocalDodoServer
from dodo_ingest.testing import CapturedEvents
from dodo_ingest_django import get_ingestion, get_limiter
from dodo_ingest_django.checks import check_rate_limit_storage, check_settings
from tests.django_tests.testapp.models import User

pytest.importorskip("limits")


pytestmark = pytest.mark.urls("tests.django_tests.ratelimit_views")
C1 = {"X-Customer": "cus_1"}


@pytest.fixture
def limited(settings: Settings) -> Settings:
    """Customers named by the ``X-Customer`` header before the view, 3 calls a minute, 100 a month."""
    settings.DODO_INGEST_RATE_LIMITS = "3/minute;100/month"
    settings.DODO_INGEST_RATE_LIMIT_KEY = "tests.django_tests.ratelimit_views.key_from_header"
    return settings


def used(customer: str) -> dict[str, int]:
    return {state.policy: state.used for state in dodo_ingest_django.usage(customer)}


def test_checked_before_the_view_429_json_and_not_billed(
    limited: Settings, client: Client, events: CapturedEvents
) -> None:
    responses = [client.get("/hello/", headers=C1) for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    body = json.loads(responses[3].content)
    assert (body["error"], body["policy"], body["limit"]) == ("rate_limited", "3/minute", 3)
    assert responses[3]["Content-Type"] == "application/json"
    assert int(responses[3]["Retry-After"]) == body["retry_after"] >= 1
    assert responses[0]["RateLimit-Policy"].startswith('"3/minute";q=3;w=60, "100/month";q=100;w=')
    assert responses[0]["RateLimit"].startswith('"3/minute";r=2;')
    assert not responses[0].has_header("Retry-After")
    assert [e.customer_id for e in events] == ["cus_1"] * 3
    assert [e.metadata["cost"] for e in events] == [1, 1, 1]
    assert get_ingestion().stats().skipped["rate_limited"] == 1
    assert used("cus_1") == {"3/minute": 3, "100/month": 3}


@pytest.mark.django_db
def test_the_user_of_authentication_middleware_is_known_in_process_view(
    settings: Settings, client: Client, events: CapturedEvents
) -> None:
    settings.DODO_INGEST_CUSTOMER_ID = None  # the default customer: request.user.dodo_customer_id
    settings.DODO_INGEST_RATE_LIMITS = "2/minute"
    client.force_login(User.objects.create_user("alice", dodo_customer_id="cus_alice"))
    assert [client.get("/hello/").status_code for _ in range(3)] == [200, 200, 429]
    assert [e.customer_id for e in events] == ["cus_alice", "cus_alice"]


def test_per_view_limits_and_costs(limited: Settings, client: Client, events: CapturedEvents) -> None:
    limited.DODO_INGEST_RATE_LIMITS = "100/minute;1000/month"
    render = [client.post("/render/", headers=C1) for _ in range(3)]
    assert [r.status_code for r in render] == [200, 200, 429]
    assert '"render:10/minute";r=5;' in render[0]["RateLimit"]  # scope: the URL pattern's name
    assert client.get("/report/", headers=C1).status_code == 200
    export = [client.get("/export/", headers=C1).status_code for _ in range(2)]  # a class-based view
    assert export == [200, 429]
    assert [(e.metadata["endpoint"], e.metadata["cost"]) for e in events] == [
        ("/render/", 5),
        ("/render/", 5),
        ("/report/", 3),
        ("/export/", 1),
    ]
    assert used("cus_1")["1000/month"] == 5 + 5 + 3 + 1


def test_per_view_limit_without_customer_limits(settings: Settings, client: Client) -> None:
    settings.DODO_INGEST_RATE_LIMIT_KEY = "tests.django_tests.ratelimit_views.key_from_header"
    assert get_limiter() is None
    assert [client.get("/hello/", headers=C1).status_code for _ in range(4)] == [200] * 4
    assert [client.get("/export/", headers=C1).status_code for _ in range(2)] == [200, 429]


def test_a_custom_response_view(limited: Settings, client: Client) -> None:
    limited.DODO_INGEST_RATE_LIMITS = "1/minute"
    limited.DODO_INGEST_RATE_LIMIT_RESPONSE = "tests.django_tests.ratelimit_views.slow_down"
    client.get("/hello/", headers=C1)
    response = client.get("/hello/", headers=C1)
    assert (response.status_code, response.content) == (429, b"slow down: 1/minute")
    assert response.has_header("Retry-After") and response.has_header("RateLimit-Policy")


def test_legacy_headers(limited: Settings, client: Client) -> None:
    limited.DODO_INGEST_RATE_LIMIT_LEGACY_HEADERS = True
    response = client.get("/hello/", headers=C1)
    assert (response["X-RateLimit-Limit"], response["X-RateLimit-Remaining"]) == ("3", "2")


def test_unbilled_after_the_check_gives_the_units_back(
    limited: Settings, client: Client, events: CapturedEvents
) -> None:
    limited.DODO_INGEST_SHOULD_METER = lambda request, response: response is None or response.status_code != 418
    assert client.get("/teapot/", headers=C1).status_code == 418
    assert client.get("/nowhere/", headers=C1).status_code == 404  # billed without a check
    assert [e.metadata["status_code"] for e in events] == [404]
    assert used("cus_1")["100/month"] == 1


def test_off_no_headers_no_cost(settings: Settings, client: Client, events: CapturedEvents) -> None:
    response = client.get("/hello/", headers=C1)
    assert not response.has_header("RateLimit") and "cost" not in events[0].metadata
    assert get_limiter() is None and dodo_ingest_django.usage("cus_1") == ()


# --- async views -----------------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_async_view_is_checked_with_acheck_on_the_loop(
    settings: Settings,
    async_client: AsyncClient,
    events: CapturedEvents,
    redis_url: str,
) -> None:
    settings.DODO_INGEST_CUSTOMER_ID = None
    settings.DODO_INGEST_RATE_LIMITS = "2/minute;100/month"
    settings.DODO_INGEST_RATE_LIMIT_STORAGE = redis_url
    limiter = await sync_to_async(get_limiter)()
    assert limiter is not None and not limiter.in_memory
    calls: list[str] = []
    acheck = limiter.acheck

    def blocking(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a blocking check on the event loop")

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return await acheck(*args, **kwargs)

    limiter.check = blocking  # type: ignore[method-assign]
    limiter.acheck = counted  # type: ignore[method-assign]
    user = await User.objects.acreate(username="bea", dodo_customer_id="cus_bea")
    if hasattr(async_client, "aforce_login"):  # Django >= 5.0
        await async_client.aforce_login(user)
    else:
        await sync_to_async(async_client.force_login)(user)
    responses = [await async_client.get("/async/") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert calls == ["cus_bea"] * 3  # the user came from request.auser(), the check from limits.aio
    assert responses[0].has_header("RateLimit") and responses[2].has_header("Retry-After")
    assert [e.customer_id for e in events] == ["cus_bea", "cus_bea"]
    usage = await limiter.ausage("cus_bea")
    assert {s.policy: s.used for s in usage}["100/month"] == 2


async def test_async_settle_does_not_block_the_loop(
    limited: Settings,
    async_client: AsyncClient,
    events: CapturedEvents,
    redis_url: str,
) -> None:
    limited.DODO_INGEST_RATE_LIMIT_STORAGE = redis_url
    limited.DODO_INGEST_SHOULD_METER = lambda request, response: False  # checked, then not billed
    limiter = await sync_to_async(get_limiter)()
    assert limiter is not None
    limiter.adjust = lambda *args, **kwargs: pytest.fail("a blocking call on the loop")  # type: ignore[method-assign]
    assert (await async_client.get("/async/", headers=C1)).status_code == 200
    meter = await sync_to_async(lambda: dodo_ingest_django.conf.conf.meter)()  # type: ignore[attr-defined]
    for task in list(meter._tasks):
        await task
    assert {s.policy: s.used for s in await limiter.ausage("cus_1")}["100/month"] == 0
    assert events == []


# --- Django REST framework -------------------------------------------------------------------------------------


@pytest.fixture
def token(settings: Settings) -> str:
    settings.DODO_INGEST_CUSTOMER_ID = None
    user = User.objects.create_user("tom", password="x", dodo_customer_id="cus_tom")
    return str(Token.objects.create(user=user).key)


@pytest.mark.django_db
def test_drf_token_auth_is_limited_by_the_throttle(
    settings: Settings, client: Client, token: str, events: CapturedEvents
) -> None:
    settings.DODO_INGEST_RATE_LIMITS = "2/minute;100/month"
    auth = {"Authorization": f"Token {token}"}
    responses = [client.get("/drf/me/", headers=auth) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert "throttled" in json.loads(responses[2].content)["detail"].lower()  # DRF's own 429
    assert int(responses[2]["Retry-After"]) >= 1
    assert responses[2]["RateLimit"].startswith('"2/minute";r=0;')
    assert [e.customer_id for e in events] == ["cus_tom", "cus_tom"]
    assert used("cus_tom") == {"2/minute": 2, "100/month": 2}  # checked once per request (not also before)
    assert client.get("/drf/me/").status_code == 401  # unauthenticated: no customer, not limited


@pytest.mark.django_db
def test_drf_per_view_limit_and_cost(settings: Settings, client: Client, token: str, events: CapturedEvents) -> None:
    settings.DODO_INGEST_RATE_LIMITS = "100/month"
    auth = {"Authorization": f"Token {token}"}
    assert [client.get("/drf/search/", headers=auth).status_code for _ in range(2)] == [200, 429]
    assert [e.metadata["cost"] for e in events] == [2]
    assert used("cus_tom") == {"100/month": 2}


# --- the quota is the bill --------------------------------------------------------------------------------------


def test_quota_equals_the_events_the_local_server_holds(
    limited: Settings, live: Ingestion, dodo_server: LocalDodoServer, client: Client
) -> None:
    limited.DODO_INGEST_RATE_LIMITS = "tests.ratelimit.plans.limits_for"  # cus_free: 2/minute;100/month
    statuses = [client.get("/hello/", headers={"X-Customer": "cus_free"}).status_code for _ in range(4)]
    statuses += [client.get("/hello/", headers={"X-Customer": "cus_other"}).status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429] + [200] * 4  # per plan: cus_other is unlimited
    assert get_ingestion().flush(timeout=10)
    assert dodo_server.wait_for_events(6, timeout=10)
    stored = dodo_server.events(customer_id="cus_free")
    assert used("cus_free")["100/month"] == len(stored) == 2


# --- system checks ----------------------------------------------------------------------------------------------


def test_w003_memory_storage_with_several_workers(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_rate_limit_storage() == []  # rate limits off
    settings.DODO_INGEST_RATE_LIMITS = "100/minute"
    assert check_rate_limit_storage() == []  # one worker
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    messages = check_rate_limit_storage()
    assert [m.id for m in messages] == ["dodo_ingest.W003"]
    assert "multiplied by 4" in messages[0].msg and "redis://" in (messages[0].hint or "")
    settings.DODO_INGEST_RATE_LIMIT_STORAGE = "redis://127.0.0.1:6379/0"
    assert check_rate_limit_storage() == []


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("RATE_LIMITS", "lots/minute", "dodo_ingest.E006"),
        ("RATE_LIMITS", 100, "dodo_ingest.E002"),
        ("RATE_LIMITS", "myapp.billing.limits_for", "dodo_ingest.E003"),
        ("RATE_LIMIT_STORAGE", "mongo://x", "dodo_ingest.E006"),
        ("RATE_LIMIT_STRATEGY", "token-bucket", "dodo_ingest.E006"),
        ("RATE_LIMIT_KEY", "nowhere.at_all", "dodo_ingest.E003"),
        ("RATE_LIMIT_RESPONSE", 42, "dodo_ingest.E004"),
        ("RATE_LIMIT_TIMEOUT", 100, "dodo_ingest.E006"),
    ],
)
def test_rate_limit_settings_are_checked(settings: Settings, name: str, value: Any, expected: str) -> None:
    setattr(settings, "DODO_INGEST_" + name, value)
    assert [m.id for m in check_settings()] == [expected]


def test_valid_rate_limit_settings_pass(settings: Settings) -> None:
    settings.DODO_INGEST_RATE_LIMITS = "tests.ratelimit.plans.limits_for"
    assert check_settings() == []
    settings.DODO_INGEST_RATE_LIMITS = ["100/minute", "20000/month"]
    settings.DODO_INGEST_RATE_LIMIT_KEY = "tests.django_tests.ratelimit_views.key_from_header"
    settings.DODO_INGEST_RATE_LIMIT_RESPONSE = "tests.django_tests.ratelimit_views.slow_down"
    assert check_settings() == []
