"""DodoIngestMiddleware on the async (ASGI) path, through Django's AsyncClient."""

from __future__ import annotations

import threading

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from pytest_django import Settings

from dodo_ingest.config import UNMATCHED_ENDPOINT
from dodo_ingest.testing import CapturedEvents
from tests.django_tests import views
from tests.django_tests.testapp.models import User

CUSTOMER = {"X-Customer": "cus_async"}


async def test_async_view_one_event(async_client: AsyncClient, events: CapturedEvents) -> None:
    response = await async_client.get("/async/hello/", headers=CUSTOMER)
    assert response.status_code == 200
    assert len(events) == 1
    meta = events[0].metadata
    assert (events[0].customer_id, meta["endpoint"], meta["status_code"]) == (
        "cus_async",
        "/async/hello/",
        200,
    )
    assert meta["response_bytes"] == len(response.content)


async def test_middleware_runs_on_the_event_loop(async_client: AsyncClient, events: CapturedEvents) -> None:
    # The customer hook is called from inside the middleware: on an async stack it must run on the loop
    # itself (no sync_to_async hop around the middleware), in this very thread.
    await async_client.get("/async/hello/", headers=CUSTOMER)
    assert len(views.hook_calls) == 1
    assert views.hook_calls[0]["on_loop"] is True
    assert views.hook_calls[0]["thread"] == threading.get_ident()
    assert len(events) == 1


async def test_sync_view_under_asgi(async_client: AsyncClient, events: CapturedEvents) -> None:
    await async_client.get("/api/items/5/", headers=CUSTOMER)
    assert [e.metadata["endpoint"] for e in events] == ["/api/items/<int:item_id>/"]


async def test_async_exception(async_client: AsyncClient, events: CapturedEvents) -> None:
    with pytest.raises(views.Boom):
        await async_client.get("/async/boom/", headers=CUSTOMER)
    assert [(e.metadata["status_code"], e.metadata.get("error")) for e in events] == [(500, "Boom")]


async def test_async_404_and_short_circuit(async_client: AsyncClient, events: CapturedEvents) -> None:
    assert (await async_client.get("/missing", headers=CUSTOMER)).status_code == 404
    assert (await async_client.get("/async/hello/", headers={**CUSTOMER, "X-Block": "1"})).status_code == 403
    assert [(e.metadata["endpoint"], e.metadata["status_code"]) for e in events] == [
        (UNMATCHED_ENDPOINT, 404),
        ("/async/hello/", 403),
    ]


@pytest.mark.django_db  # response.close() sends request_finished: close_old_connections
async def test_async_streaming_recorded_at_the_end(async_client: AsyncClient, events: CapturedEvents) -> None:
    response = await async_client.get("/astream/", headers=CUSTOMER)
    assert response.streaming
    assert events == []
    body = b"".join([chunk async for chunk in response.streaming_content])  # type: ignore[union-attr]
    assert body == b"".join(views.CHUNKS)
    assert len(events) == 1
    assert events[0].metadata["response_bytes"] == 60
    await sync_to_async(response.close)()
    assert len(events) == 1


async def test_set_customer_in_async_view(async_client: AsyncClient, events: CapturedEvents) -> None:
    await async_client.get("/async/helper/")
    assert [e.customer_id for e in events] == ["cus_async_helper"]


async def test_cors_preflight_filtered_on_async_path(async_client: AsyncClient, events: CapturedEvents) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    await async_client.options("/async/hello/", headers={**CUSTOMER, **preflight})
    assert events == []


@pytest.mark.django_db(transaction=True)
async def test_default_customer_via_auser(
    settings: Settings, async_client: AsyncClient, events: CapturedEvents, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 4: on Django 4.2 (no ``request.auser()``) the lazy user was evaluated on the event loop:
    SynchronousOnlyOperation, an ERROR per request, not billed. Now it is loaded in a worker thread."""
    settings.DODO_INGEST_CUSTOMER_ID = None
    user = await User.objects.acreate(username="alice", dodo_customer_id="cus_alice")
    if hasattr(async_client, "aforce_login"):  # Django >= 5.0
        await async_client.aforce_login(user)
    else:
        await sync_to_async(async_client.force_login)(user)
    await async_client.get("/async/hello/")
    await async_client.get("/async/hello/")
    assert [e.customer_id for e in events] == ["cus_alice", "cus_alice"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


@pytest.mark.django_db(transaction=True)
async def test_anonymous_user_is_no_customer(
    settings: Settings, async_client: AsyncClient, events: CapturedEvents
) -> None:
    settings.DODO_INGEST_CUSTOMER_ID = None
    await async_client.get("/async/hello/")
    assert events == []
