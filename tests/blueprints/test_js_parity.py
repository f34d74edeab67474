"""Our blueprints send the events Dodo's JavaScript package sends, key for key, type for type, in the same order.

``data/js_events.json`` holds what ``@dodopayments/ingestion-blueprints@0.6.1`` sent to the local Dodo server
for each case (recorded by ``js/record_js_events.py`` with node; see there). Here the same calls are made in
Python, against the local Dodo server, and the stored events are compared with the recording.

The shapes, as read from the package's ``dist/index.js`` and confirmed by the recording:

* ``ingestion.track({customerId, metadata})`` / ``trackAPICall``: ``metadata`` as given, ``{}`` by default.
* ``trackObjectStorage`` / ``trackStreamBytes``: ``{bytes, ...metadata}`` (``bytes`` only when given, 0 included;
  a ``bytes`` key in ``metadata`` wins but keeps the first position).
* ``trackTimeRange``: ``{durationMs, durationSeconds, durationMinutes, ...metadata}``, each only when given.
* the LLM tracker: ``{inputTokens, outputTokens, totalTokens, model, ...metadata}``, numbers and a string;
  no event for a response without usage.
* event ids: JavaScript ``<eventName>_<Date.now()>_<6 random chars>`` (a new one per call, so a caller's retry
  bills twice); ours are ``evt_<per-process random>_<counter>``, fixed once and reused on every retry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dodo_ingest import (
    Ingestion,
    create_llm_tracker,
    track_api_call,
    track_object_storage,
    track_stream_bytes,
    track_time_range,
)
from dodo_ingest.localserver import LocalDodoServer

DATA = Path(__file__).resolve().parent / "data"
RECORDED = json.loads((DATA / "js_events.json").read_text())
RESPONSES = {k: v for k, v in json.loads((DATA / "llm_responses.json").read_text()).items() if not k.startswith("_")}

#: The metadata keys and value types each JavaScript blueprint adds, written down from its source.
JS_SHAPES: dict[str, dict[str, type]] = {
    "object_storage": {"bytes": int},
    "stream_bytes": {"bytes": int},
    "time_range": {"durationMs": int, "durationSeconds": int, "durationMinutes": float},
    "llm": {"inputTokens": int, "outputTokens": int, "totalTokens": int, "model": str},
}


def python_cases(ingestion: Callable[[str], Ingestion]) -> dict[str, Callable[[str], object]]:
    """The Python call for every recorded JavaScript case (``customer`` is ``cus_js_<case>``)."""
    plain, api = ingestion("custom_event"), ingestion("api_call")
    storage, stream, time = (
        ingestion("object_storage_upload"),
        ingestion("stream_consumption"),
        ingestion("function_execution"),
    )
    tracker = create_llm_tracker(ingestion=ingestion("llm_usage"))
    cases: dict[str, Callable[[str], object]] = {
        "track_plain": lambda c: plain.track(c),
        "track_metadata": lambda c: plain.track(c, {"a": 1, "b": "x", "c": True, "d": 1.5}),
        "api_call": lambda c: track_api_call(
            api, c, {"endpoint": "/api/v1/users", "method": "GET", "status_code": 200, "response_time_ms": 45}
        ),
        "object_storage": lambda c: track_object_storage(
            storage, c, bytes=1048576, metadata={"bucket": "my-bucket", "key": "uploads/document.pdf"}
        ),
        "object_storage_no_bytes": lambda c: track_object_storage(storage, c, metadata={"bucket": "b"}),
        "object_storage_override": lambda c: track_object_storage(
            storage, c, bytes=10, metadata={"bytes": 5, "tier": "cold"}
        ),
        "stream_bytes": lambda c: track_stream_bytes(stream, c, bytes=10485760, metadata={"stream_type": "video"}),
        "stream_zero": lambda c: track_stream_bytes(stream, c, bytes=0),
        "time_range_ms": lambda c: track_time_range(
            time, c, duration_ms=1234, metadata={"function_name": "image-processor", "memory_mb": 512}
        ),
        "time_range_all": lambda c: track_time_range(
            time, c, duration_ms=90000, duration_seconds=90, duration_minutes=1.5
        ),
        "time_range_integral_float": lambda c: track_time_range(time, c, duration_seconds=2.0),
        "time_range_none": lambda c: track_time_range(time, c, metadata={"job": "nightly"}),
        "llm_with_metadata": lambda c: tracker.track(
            RESPONSES["openai_chat"], c, {"feature": "chat", "model": "override"}
        ),
        "llm_wrap": lambda c: tracker.wrap(
            _namespace_client(RESPONSES["anthropic_message"]), c, {"feature": "wrap"}
        ).chat.completions.create(model="x"),
    }
    for name, response in RESPONSES.items():
        cases[f"llm_{name}"] = lambda c, response=response: tracker.track(response, c)
    return cases


def _namespace_client(response: dict[str, Any]) -> Any:
    """The JavaScript test's ``{chat: {completions: {create}}}`` client, as nested namespaces."""
    from types import SimpleNamespace

    return SimpleNamespace(chat=SimpleNamespace(completions=SimpleNamespace(create=lambda **_: response)))


def test_every_blueprint_sends_what_the_javascript_package_sends(
    dodo_server: LocalDodoServer, make_ingestion: Callable[..., Ingestion]
) -> None:
    made: list[Ingestion] = []

    def ingestion(event_name: str) -> Ingestion:
        made.append(make_ingestion(event_name=event_name))
        return made[-1]

    cases = python_cases(ingestion)
    assert RECORDED["package"] == "@dodopayments/ingestion-blueprints@0.6.1"
    assert set(cases) == set(RECORDED["cases"]) | set(RECORDED["not_sent"]), "every recorded case is replayed"
    for name, call in cases.items():
        call(f"cus_js_{name}")
    assert all(i.flush() for i in made)
    expected = RECORDED["cases"]
    stored = {e["customer_id"].removeprefix("cus_js_"): e for e in dodo_server.events()}
    assert set(stored) == set(expected), "the same cases send an event, and the same send none"
    for name, js in expected.items():
        ours = stored[name]
        assert ours["event_name"] == js["event_name"], name
        # The same keys, values and JSON types (1 is not 1.0, True is not 1), in the same order.
        assert list(ours["metadata"].items()) == list(js["metadata"].items()), name
        assert [type(v) for v in ours["metadata"].values()] == [type(v) for v in js["metadata"].values()], name
    assert sorted(RECORDED["not_sent"]) == ["llm_no_usage", "llm_null_usage"]


@pytest.mark.parametrize("blueprint", sorted(JS_SHAPES))
def test_the_written_down_shapes_match_the_recording(blueprint: str) -> None:
    shape = JS_SHAPES[blueprint]
    cases = {k: v for k, v in RECORDED["cases"].items() if k.startswith(blueprint)}
    assert cases
    seen: set[str] = set()
    for case in cases.values():
        for key, value in case["metadata"].items():
            if key in shape:
                seen.add(key)
                assert isinstance(value, shape[key]) and not isinstance(value, bool), (key, value)
    assert seen == set(shape)


def test_event_ids_differ_from_javascript_on_purpose(
    dodo_server: LocalDodoServer, make_ingestion: Callable[..., Ingestion]
) -> None:
    for case in RECORDED["cases"].values():
        prefix = "llm" if case["event_name"] == "llm_usage" else re.escape(case["event_name"])
        assert re.fullmatch(rf"{prefix}_\d{{13}}_[0-9a-z]{{1,6}}", case["event_id"]), case["event_id"]
    ingestion = make_ingestion(event_name="object_storage_upload")
    track_object_storage(ingestion, "cus_1", bytes=1)
    assert ingestion.flush()
    (event,) = dodo_server.events()
    assert re.fullmatch(r"evt_[0-9a-f]{20}_[0-9a-f]+", event["event_id"])
