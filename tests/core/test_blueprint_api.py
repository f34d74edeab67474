"""The blueprint API (Ingestion, track_api_call, create_batch) over loopback, and secrets staying secret."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_schema_validator import OAS31Validator

from dodo_ingest import (
    AuthenticationError,
    DeliveryError,
    Ingestion,
    ValidationError,
    create_batch,
    track_api_call,
)
from dodo_ingest.events import encode_batch
from dodo_ingest.localserver import Fault, LocalDodoServer
from dodo_ingest.testing import capture_events
from tests.conftest import TEST_KEY

SPEC = Path(__file__).resolve().parents[1] / "data" / "dodo-openapi-events.yml"


def test_track_api_call_sends_synchronously(
    dodo_server: LocalDodoServer, make_ingestion: Callable[..., Ingestion]
) -> None:
    ingestion = make_ingestion(event_name="api_call")
    event = track_api_call(
        ingestion,
        customer_id="cus_123",
        metadata={"endpoint": "/api/v1/users", "method": "GET", "status_code": 200, "response_time_ms": 45},
    )
    stored = dodo_server.events()
    assert len(stored) == 1
    assert stored[0]["event_id"] == event.event_id
    assert stored[0]["metadata"] == {
        "endpoint": "/api/v1/users",
        "method": "GET",
        "status_code": 200,
        "response_time_ms": 45,
    }


def test_track_api_call_with_the_same_event_id_bills_once(
    dodo_server: LocalDodoServer, make_ingestion: Callable[..., Ingestion]
) -> None:
    ingestion = make_ingestion()
    for _ in range(3):  # the caller retries its own call
        track_api_call(ingestion, "cus_1", {"endpoint": "/x"}, event_id="req_7f3a")
    assert [e["event_id"] for e in dodo_server.events()] == ["req_7f3a"]


def test_track_api_call_raises_named_errors(
    dodo_server: LocalDodoServer, make_ingestion: Callable[..., Ingestion]
) -> None:
    ingestion = make_ingestion()
    with pytest.raises(ValidationError, match=r"^metadata\.tags: list is not allowed"):
        track_api_call(ingestion, "cus_1", {"tags": ["a"]})
    with pytest.raises(AuthenticationError, match="test_mode") as info:
        track_api_call(make_ingestion(api_key="sk_wrong_key_1234"), "cus_1", {})
    assert "sk_wrong_key_1234" not in str(info.value)
    dodo_server.add_faults(Fault(status=500, repeat=10))
    with pytest.raises(DeliveryError, match="retries_exhausted"):
        track_api_call(make_ingestion(max_retry_time=0.0), "cus_1", {})
    assert dodo_server.event_count() == 0


def test_create_batch_mirrors_the_javascript_blueprint(
    dodo_server: LocalDodoServer, make_ingestion: Callable[..., Ingestion]
) -> None:
    batch = create_batch(make_ingestion(), max_size=100, flush_interval=5.0)
    assert batch.config.max_batch_size == 100 and batch.config.flush_interval == 5.0
    for i in range(10):
        assert batch.add(customer_id="cus_123", metadata={"i": i})
    assert batch.flush(timeout=10)
    batch.cleanup()
    assert dodo_server.event_count() == 10


def test_create_batch_rejects_milliseconds_with_a_clear_message(make_ingestion: Callable[..., Ingestion]) -> None:
    with pytest.raises(Exception, match="seconds, not milliseconds"):
        create_batch(make_ingestion(), flush_interval=5000)


def test_outgoing_bodies_validate_against_dodos_openapi_schema(make_ingestion: Callable[..., Ingestion]) -> None:
    text = json.dumps(yaml.safe_load(SPEC.read_text())).replace('"oneOf"', '"anyOf"')  # the EventMetadata quirk
    spec = json.loads(text)
    operation = spec["paths"]["/events/ingest"]["post"]
    schema = _inline_refs(operation["requestBody"]["content"]["application/json"]["schema"], spec)
    ingestion = make_ingestion()
    events = [
        ingestion.event(f"cus_{i}", {"endpoint": "/a/<int:id>", "status_code": 200, "ms": 1.5, "ok": True})
        for i in range(3)
    ]
    body = json.loads(encode_batch([e.to_json() for e in events]))
    OAS31Validator(schema).validate(body)
    assert schema["properties"]["events"]["maxItems"] == 1000  # the schema is the one we think it is


def _inline_refs(node: Any, spec: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = spec
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return _inline_refs(target, spec)
        return {k: _inline_refs(v, spec) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(v, spec) for v in node]
    return node


def test_the_key_never_appears_in_reprs_logs_or_errors(
    dodo_server: LocalDodoServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk_test_VERY_SECRET_abcdef0123"
    ingestion = Ingestion(api_key=secret, base_url=dodo_server.url)  # wrong key: the server expects TEST_KEY
    batch = ingestion.create_batch(max_size=2, flush_interval=0.05)
    with caplog.at_level(logging.DEBUG):
        batch.add("cus_1", {"i": 1})
        batch.add("cus_1", {"i": 2})
        assert batch.flush(timeout=10)
        with pytest.raises(AuthenticationError) as info:
            track_api_call(ingestion, "cus_1", {})
    texts = [
        repr(ingestion),
        repr(batch),
        repr(ingestion.config),
        str(ingestion.config.describe()),
        str(info.value),
        repr(info.value),
        json.dumps(batch.stats().as_dict()),
        caplog.text,
    ]
    assert all(secret not in text for text in texts)
    assert batch.stats().dropped == {"unauthorized": 2}
    batch.shutdown()
    ingestion.shutdown()


def test_capture_events_sees_what_would_be_sent_without_any_network() -> None:
    ingestion = Ingestion(api_key=TEST_KEY, base_url="http://127.0.0.1:9")  # nothing listens there
    batch = ingestion.create_batch()
    with capture_events() as captured:
        batch.add("cus_1", {"endpoint": "/a", "ua": "x" * 600})
        batch.add("", {"endpoint": "/b"})
        track_api_call(ingestion, "cus_2", {"endpoint": "/c"})
    assert [e.customer_id for e in captured] == ["cus_1", "cus_2"]
    assert len(captured[0].metadata["ua"]) == 500  # the same repair as the real path
    assert captured.invalid == ["customer_id: must not be empty"]
    assert captured.for_customer("cus_2")[0].metadata == {"endpoint": "/c"}
    assert batch.stats().queued == 0
    batch.shutdown()


def test_a_synchronous_call_has_a_short_budget_and_holds_no_lock_across_io(
    dodo_server: LocalDodoServer, make_ingestion: Callable[..., Ingestion]
) -> None:
    """Item 9: ``track_api_call`` held one process-wide lock across network I/O and up to max_retry_time (600 s):
    one slow call blocked every other call of the worker, for minutes."""
    import threading

    ingestion = make_ingestion(sync_timeout=1.0)
    dodo_server.add_faults(Fault(delay=5.0))  # the first request hangs far beyond the budget
    outcome: list[BaseException] = []

    def slow_call() -> None:
        try:
            track_api_call(ingestion, "cus_slow", {"i": 0})
        except BaseException as exc:
            outcome.append(exc)

    slow = threading.Thread(target=slow_call, daemon=True)
    slow.start()
    assert dodo_server.faults.wait_until_empty(10)  # the slow call is on the wire
    track_api_call(ingestion, "cus_fast", {"i": 1})  # not queued behind the slow call
    assert slow.is_alive()
    slow.join(15)
    assert not slow.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], DeliveryError)
    assert outcome[0].reason == "retries_exhausted"
    assert [e["customer_id"] for e in dodo_server.events()] == ["cus_fast"]
