"""``DodoClient``, the health check, ``Ingestion.track`` and the JavaScript-compatible error classes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timezone

import pytest

from dodo_ingest import (
    APIError,
    AuthenticationError,
    ConfigurationError,
    DeliveryError,
    DodoClient,
    DodoIngestError,
    DodoIngestionError,
    Ingestion,
    ProviderError,
    ValidationError,
)
from dodo_ingest.blueprints import HealthCheck
from dodo_ingest.localserver import Fault, LocalDodoServer
from tests.blueprints.fake_llm import FakeLLMServer
from tests.conftest import TEST_KEY
from tests.helpers import free_port


@pytest.fixture
def make_client(dodo_server: LocalDodoServer) -> Iterator[Callable[..., DodoClient]]:
    made: list[DodoClient] = []

    def make(**settings: object) -> DodoClient:
        settings.setdefault("api_key", TEST_KEY)
        settings.setdefault("base_url", dodo_server.url)
        made.append(DodoClient(**settings))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_ingest_events_sends_them_as_they_are(
    dodo_server: LocalDodoServer, make_client: Callable[..., DodoClient]
) -> None:
    client = make_client()
    moment = datetime.now(timezone.utc).replace(microsecond=123000)  # .123 s is 0.12299999... as a float
    answer = client.ingest_events(
        [
            {"event_id": "evt_a", "customer_id": "cus_1", "event_name": "api_call", "metadata": {"n": 1}},
            {"event_id": "evt_b", "customer_id": "cus_2", "event_name": "llm_usage", "timestamp": moment},
        ]
    )
    assert answer == {"success": True, "events_processed": 2}
    assert client.ingest_event({"event_id": "evt_a", "customer_id": "cus_1", "event_name": "api_call"}) == {
        "success": True,
        "events_processed": 1,
    }
    events = {e["event_id"]: e for e in dodo_server.events()}
    assert set(events) == {"evt_a", "evt_b"}, "the caller's ids: a retry is not billed twice"
    assert events["evt_a"]["metadata"] == {"n": 1}
    assert events["evt_b"]["timestamp"] == moment.strftime("%Y-%m-%dT%H:%M:%S.123Z")


@pytest.mark.parametrize(
    ("events", "field"),
    [
        ([], "events"),
        ([{"customer_id": "cus_1", "event_name": "x"}], "events[0].event_id"),
        (
            [{"event_id": "e", "customer_id": "cus_1", "event_name": "x"}, {"event_id": "f", "event_name": "x"}],
            "events[1].customer_id",
        ),
        ([{"event_id": "e", "customer_id": "c", "event_name": "x", "timestamp": "yesterday"}], "events[0].timestamp"),
        ([{"event_id": "e", "customer_id": "c", "event_name": "x", "metadata": {"a": [1]}}], "events[0].metadata.a"),
        ([{"event_id": "e", "customer_id": "c", "event_name": "x", "customerId": "c"}], "events[0].customerId"),
        (["not an event"], "events[0]"),
    ],
)
def test_ingest_events_validates_before_sending(
    dodo_server: LocalDodoServer, make_client: Callable[..., DodoClient], events: list[object], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        make_client().ingest_events(events)  # type: ignore[arg-type]
    assert info.value.field == field
    assert info.value.code == "VALIDATION_ERROR" and info.value.status_code == 400
    assert dodo_server.requests == []


def test_ingest_events_raises_api_errors(dodo_server: LocalDodoServer, make_client: Callable[..., DodoClient]) -> None:
    event = {"event_id": "e1", "customer_id": "cus_1", "event_name": "api_call"}
    with pytest.raises(AuthenticationError) as auth:
        make_client(api_key="sk_other_env_key_1").ingest_event(event)
    assert isinstance(auth.value, APIError) and auth.value.code == "API_ERROR"
    assert "sk_other_env_key_1" not in str(auth.value)
    dodo_server.add_faults(Fault(status=503, repeat=5))
    with pytest.raises(DeliveryError) as failed:
        make_client(max_retry_time=0.0).ingest_event(event)
    assert isinstance(failed.value, APIError) and failed.value.reason == "retries_exhausted"
    assert dodo_server.event_count() == 0


def test_dodo_client_defaults_and_info(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="api_key"):
        DodoClient()
    monkeypatch.setenv("DODO_PAYMENTS_API_KEY", TEST_KEY)
    client = DodoClient()
    assert client.get_environment() == "live_mode"  # the JavaScript DodoClient's default
    info = client.get_client_info()
    assert info["host"] == "https://live.dodopayments.com" and info["environment"] == "live_mode"
    assert TEST_KEY not in repr(client) and TEST_KEY not in str(info)
    assert DodoClient(environment="test_mode").get_client_info()["host"] == "https://test.dodopayments.com"


def test_health_check_tells_healthy_from_a_bad_key_and_from_unreachable(
    dodo_server: LocalDodoServer, make_client: Callable[..., DodoClient], fake_llm: FakeLLMServer
) -> None:
    healthy = make_client().health_check()
    assert healthy and healthy == HealthCheck(True, "ok", healthy.message, 200)
    bad = make_client(api_key="sk_revoked_0000").health_check()
    # The JavaScript healthCheck() counts any 4xx as healthy: a revoked key passed it.
    assert not bad and bad.reason == "unauthorized" and bad.status_code == 401
    assert "sk_revoked_0000" not in bad.message
    down = make_client(base_url=f"http://127.0.0.1:{free_port()}").health_check(timeout=2.0)
    assert not down and down.reason == "unreachable" and down.status_code is None
    wrong = make_client(base_url=fake_llm.url).health_check()  # something that is not Dodo answers 404
    assert not wrong and wrong.reason == "error" and wrong.status_code == 404


def test_ingestion_track_queues_on_the_shared_batcher(
    dodo_server: LocalDodoServer, make_ingestion: Callable[..., Ingestion]
) -> None:
    ingestion = make_ingestion(event_name="custom_event", flush_interval=60.0)
    for i in range(25):
        assert ingestion.track(f"cus_{i % 3}", {"i": i}) is True
    assert ingestion.track("cus_x", event_name="other", event_id="mine-1") is True
    assert dodo_server.requests == [], "queued, not one request per event"
    assert ingestion.flush()
    assert len(dodo_server.requests) == 1 and dodo_server.event_count() == 26
    assert dodo_server.get_event("mine-1")["event_name"] == "other"  # type: ignore[index]
    assert ingestion.stats().sent == 26
    with pytest.raises(ValidationError, match="customer_id"):
        ingestion.track("")


def test_error_classes_carry_the_javascript_fields() -> None:
    assert DodoIngestionError is DodoIngestError
    api = APIError("HTTP 422: bad", 422, {"code": "INVALID_REQUEST_BODY"})
    assert (api.code, api.status_code, api.details) == ("API_ERROR", 422, {"code": "INVALID_REQUEST_BODY"})
    provider = ProviderError("cannot wrap", {"client": "x"})
    assert (provider.code, provider.status_code, provider.details) == ("PROVIDER_ERROR", 500, {"client": "x"})
    assert (ConfigurationError("x").code, ConfigurationError("x").status_code) == ("CONFIGURATION_ERROR", 500)
    delivery = DeliveryError("lost", status=503, reason="retries_exhausted")
    assert delivery.status_code == delivery.status == 503 and isinstance(delivery, APIError)
    assert all(issubclass(e, DodoIngestError) for e in (APIError, ProviderError, ValidationError, ConfigurationError))
