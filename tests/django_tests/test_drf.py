"""Django REST framework: the customer is resolved after the view, so token-authenticated users count."""

from __future__ import annotations

import pytest
from django.test import Client
from pytest_django import Settings
from rest_framework.authtoken.models import Token

from dodo_ingest.ingestion import Ingestion
from dodo_ingest.localserver import LocalDodoServer
from dodo_ingest.testing import CapturedEvents
from dodo_ingest_django import get_ingestion
from tests.django_tests.testapp.models import User

pytestmark = pytest.mark.django_db


@pytest.fixture
def token(settings: Settings) -> str:
    settings.DODO_INGEST_CUSTOMER_ID = None  # the default: request.user.dodo_customer_id
    user = User.objects.create_user("bob", password="x", dodo_customer_id="cus_bob")
    return Token.objects.create(user=user).key


def test_token_authenticated_user_is_the_customer(client: Client, token: str, events: CapturedEvents) -> None:
    response = client.get("/drf/me/", HTTP_AUTHORIZATION=f"Token {token}")
    assert response.status_code == 200
    assert response.json() == {"username": "bob"}
    assert len(events) == 1
    assert events[0].customer_id == "cus_bob"
    assert events[0].metadata["endpoint"] == "/drf/me/"


def test_without_session_middleware_too(settings: Settings, client: Client, token: str, events: CapturedEvents) -> None:
    settings.MIDDLEWARE = ["dodo_ingest_django.middleware.DodoIngestMiddleware"]
    assert client.get("/drf/me/", HTTP_AUTHORIZATION=f"Token {token}").status_code == 200
    assert [e.customer_id for e in events] == ["cus_bob"]


def test_rejected_token_is_no_customer(client: Client, token: str, events: CapturedEvents) -> None:
    before = get_ingestion().stats().skipped.get("no_customer", 0)
    assert client.get("/drf/me/", HTTP_AUTHORIZATION="Token wrong").status_code == 401
    assert client.get("/drf/me/").status_code == 401
    assert events == []
    assert get_ingestion().stats().skipped.get("no_customer", 0) == before + 2


def test_user_without_customer_id(client: Client, settings: Settings, events: CapturedEvents) -> None:
    settings.DODO_INGEST_CUSTOMER_ID = None
    user = User.objects.create_user("carol")
    key = Token.objects.create(user=user).key
    assert client.get("/drf/me/", HTTP_AUTHORIZATION=f"Token {key}").status_code == 200
    assert events == []


def test_configured_callable_wins_over_the_default(
    settings: Settings, client: Client, token: str, events: CapturedEvents
) -> None:
    settings.DODO_INGEST_CUSTOMER_ID = "tests.django_tests.views.customer_from_header"
    client.get("/drf/me/", HTTP_AUTHORIZATION=f"Token {token}", HTTP_X_CUSTOMER="cus_header")
    client.get("/drf/me/", HTTP_AUTHORIZATION=f"Token {token}")  # the callable finds none: the default
    assert [e.customer_id for e in events] == ["cus_header", "cus_bob"]


def test_set_customer_with_a_drf_request(client: Client, events: CapturedEvents) -> None:
    response = client.post("/drf/helper/", data={"a": 1}, content_type="application/json")
    assert response.status_code == 201
    assert [(e.customer_id, e.metadata["status_code"], e.metadata["method"]) for e in events] == [
        ("cus_drf_helper", 201, "POST")
    ]


@pytest.mark.django_db(transaction=True)
def test_drf_events_delivered(live: Ingestion, dodo_server: LocalDodoServer, client: Client, token: str) -> None:
    for _ in range(3):
        assert client.get("/drf/me/", HTTP_AUTHORIZATION=f"Token {token}").status_code == 200
    assert live.flush(timeout=5.0)
    assert dodo_server.wait_for_events(3, timeout=5.0)
    stored = dodo_server.events(customer_id="cus_bob")
    assert len(stored) == 3
    assert len({e["event_id"] for e in stored}) == 3
