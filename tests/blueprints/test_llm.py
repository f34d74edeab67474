"""The LLM blueprint with the real ``openai`` and ``anthropic`` clients, against a local server that answers like
their APIs (``fake_llm``), and the events checked at the local Dodo server.

Event shape (JavaScript 0.6.1): ``{"inputTokens": int, "outputTokens": int, "totalTokens": int, "model": str,
**metadata}``; no event for a response without usage. A stream is metered once, when it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import anthropic
import openai
import pytest

from dodo_ingest import ConfigurationError, Ingestion, LLMTracker, ProviderError, ValidationError, create_llm_tracker
from dodo_ingest.blueprints import TokenUsage, extract_usage, wrap_llm_client
from dodo_ingest.localserver import LocalDodoServer
from tests.blueprints.fake_llm import OUTPUT_TOKENS, REPLY, FakeLLMServer
from tests.conftest import TEST_KEY

MESSAGES = [{"role": "user", "content": "three little words"}]  # 3 input tokens at the fake server
IN = 3


@pytest.fixture
def tracker(make_ingestion: Callable[..., Ingestion]) -> LLMTracker:
    """Sync mode: an event reaches the Dodo server when it is recorded, so "not yet" is observable."""
    return create_llm_tracker(ingestion=make_ingestion(event_name="llm_usage", sync_mode=True))


def openai_client(server: FakeLLMServer, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-fake", base_url=server.url + "/v1", max_retries=0, **options)


def anthropic_client(server: FakeLLMServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-ant-fake", base_url=server.url, max_retries=0)


def usage(inp: int, out: int, model: str, **extra: Any) -> dict[str, Any]:
    return {"inputTokens": inp, "outputTokens": out, "totalTokens": inp + out, "model": model, **extra}


def metadata_of(server: LocalDodoServer) -> list[dict[str, Any]]:
    return [e["metadata"] for e in server.events()]


# --- usage shapes ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # SDK objects (attributes) as well as dicts
        (
            SimpleNamespace(model="gpt", usage=SimpleNamespace(prompt_tokens=2, completion_tokens=3, total_tokens=5)),
            TokenUsage(2, 3, 5, "gpt"),
        ),
        (
            SimpleNamespace(model="claude", usage=SimpleNamespace(input_tokens=4, output_tokens=1)),
            TokenUsage(4, 1, 5, "claude"),
        ),
        # the google-genai Python SDK spells Gemini's fields in snake_case
        (
            SimpleNamespace(
                model_version="gemini-2.5",
                usage_metadata=SimpleNamespace(
                    prompt_token_count=7, candidates_token_count=2, thoughts_token_count=None, total_token_count=None
                ),
            ),
            TokenUsage(7, 2, 9, "gemini-2.5"),
        ),
        # JavaScript truthiness: an empty usage object is usage (all zero); null counts are 0; odd values are 0
        ({"usage": {}}, TokenUsage(0, 0, 0, "unknown")),
        (
            {"model": 42, "usage": {"prompt_tokens": None, "completion_tokens": True, "total_tokens": "9"}},
            TokenUsage(0, 0, 0, "unknown"),
        ),
        ({"usage": {"input_tokens": 2.0, "output_tokens": 0.5}}, TokenUsage(2, 0.5, 2.5, "unknown")),
        ({"usage": None}, None),
        ({"usage": 0}, None),
        ("text", None),
        (None, None),
    ],
)
def test_extract_usage(response: Any, expected: TokenUsage | None) -> None:
    assert extract_usage(response) == expected
    if expected is not None:
        assert list(expected.as_metadata()) == ["inputTokens", "outputTokens", "totalTokens", "model"]


def test_create_llm_tracker_needs_an_event_name_and_builds_an_ingestion(dodo_server: LocalDodoServer) -> None:
    with pytest.raises(ConfigurationError, match="event_name"):
        create_llm_tracker(api_key=TEST_KEY)
    with pytest.raises(ConfigurationError, match="api_key"):
        create_llm_tracker(event_name="llm_usage")  # no key anywhere (the env var is unset in tests)
    tracker = create_llm_tracker(TEST_KEY, "test_mode", "llm_usage", base_url=dodo_server.url)
    try:
        assert tracker.event_name == "llm_usage" and tracker.ingestion.config.environment == "test_mode"
        assert TEST_KEY not in repr(tracker)
        assert tracker.track({"usage": {"input": 1, "output": 2}}, "cus_1") is True
        assert tracker.track({"model": "gpt"}, "cus_1") is False  # no usage: nothing sent
        assert tracker.flush()
        assert metadata_of(dodo_server) == [usage(1, 2, "unknown")]
    finally:
        tracker.ingestion.shutdown()
    with pytest.raises(ConfigurationError, match="either ingestion"):
        create_llm_tracker(api_key=TEST_KEY, ingestion=tracker.ingestion)


def test_track_validates_like_the_rest_of_the_sdk(tracker: LLMTracker) -> None:
    response = {"usage": {"prompt_tokens": 1}}
    with pytest.raises(ValidationError, match="customer_id"):
        tracker.track(response, "")
    with pytest.raises(ValidationError, match=r"metadata\.tags"):
        tracker.track(response, "cus_1", {"tags": ["a"]})


def test_health_check_tells_a_bad_key_apart(
    dodo_server: LocalDodoServer, make_ingestion: Callable[..., Ingestion]
) -> None:
    good = create_llm_tracker(ingestion=make_ingestion(event_name="llm_usage"))
    bad = create_llm_tracker(ingestion=make_ingestion(event_name="llm_usage", api_key="sk_revoked_key_999"))
    assert good.health_check() and good.health_check().reason == "ok"
    verdict = bad.health_check()
    assert not verdict and verdict.reason == "unauthorized" and verdict.status_code == 401
    assert "sk_revoked_key_999" not in verdict.message


# --- wrapping: OpenAI, sync ----------------------------------------------------------------------------------------


def test_openai_chat_completion_is_metered_and_returned_unchanged(
    dodo_server: LocalDodoServer, fake_llm: FakeLLMServer, tracker: LLMTracker
) -> None:
    raw = openai_client(fake_llm)
    client = tracker.wrap(raw, "cus_1", {"feature": "chat"})
    response = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert isinstance(response, openai.types.chat.ChatCompletion)
    assert response.choices[0].message.content == REPLY
    assert metadata_of(dodo_server) == [usage(IN, OUTPUT_TOKENS, "gpt-4o-mini", feature="chat")]
    (event,) = dodo_server.events()
    assert event["customer_id"] == "cus_1" and event["event_name"] == "llm_usage"
    # the stand-in forwards everything else
    assert client.api_key == raw.api_key and client.base_url == raw.base_url and client.max_retries == 0


def test_openai_stream_is_metered_once_when_it_ends_and_the_caller_sees_the_same_chunks(
    dodo_server: LocalDodoServer, fake_llm: FakeLLMServer, tracker: LLMTracker
) -> None:
    plain = [
        c.model_dump()
        for c in openai_client(fake_llm).chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    ]
    assert fake_llm.requests[-1][1].get("stream_options") is None
    client = tracker.wrap(openai_client(fake_llm), "cus_1")
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    first = next(stream)
    assert first.choices[0].delta.role == "assistant"
    assert dodo_server.event_count() == 0, "not before the stream ends"
    rest = list(stream)
    # The wrapper asked for usage, and kept the extra usage-only chunk out of what the caller iterates.
    assert fake_llm.requests[-1][1]["stream_options"] == {"include_usage": True}
    seen = [first.model_dump(), *(c.model_dump() for c in rest)]
    assert [c["choices"] for c in seen] == [c["choices"] for c in plain]
    assert all(c["choices"] for c in seen)  # chunk.choices[0] is safe, as unwrapped
    stream.close()  # closing (and the `with` exit) after the end sends nothing more
    assert metadata_of(dodo_server) == [usage(IN, OUTPUT_TOKENS, "gpt-4o")]


def test_openai_stream_in_a_with_block(
    dodo_server: LocalDodoServer, fake_llm: FakeLLMServer, tracker: LLMTracker
) -> None:
    client = tracker.wrap(openai_client(fake_llm), "cus_1")
    with client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True) as stream:
        text = "".join(c.choices[0].delta.content or "" for c in stream)
    assert text == REPLY
    assert metadata_of(dodo_server) == [usage(IN, OUTPUT_TOKENS, "gpt-4o")]


def test_openai_stream_options_of_the_caller_are_respected(
    dodo_server: LocalDodoServer, fake_llm: FakeLLMServer, tracker: LLMTracker, caplog: pytest.LogCaptureFixture
) -> None:
    client = tracker.wrap(openai_client(fake_llm), "cus_1")
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None  # asked for: not hidden
    assert dodo_server.event_count() == 1
    with caplog.at_level(logging.WARNING, logger="dodo_ingest"):
        for options in ({"include_usage": False}, {"include_usage": False}):
            list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True, stream_options=options))
    assert dodo_server.event_count() == 1, "no usage in the stream: nothing to meter"
    warnings = [r for r in caplog.records if "without usage" in r.getMessage()]
    assert len(warnings) == 1, "said once, not per stream"


def test_include_stream_usage_false_leaves_the_request_alone(
    dodo_server: LocalDodoServer, fake_llm: FakeLLMServer, tracker: LLMTracker
) -> None:
    client = tracker.wrap(openai_client(fake_llm), "cus_1", include_stream_usage=False)
    list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert "stream_options" not in fake_llm.requests[-1][1]
    assert dodo_server.event_count() == 0


def test_openai_stream_helper_is_metered_however_it_is_consumed(
    dodo_server: LocalDodoServer, fake_llm: FakeLLMServer, tracker: LLMTracker
) -> None:
    client = tracker.wrap(openai_client(fake_llm), "cus_1")
    with client.chat.completions.stream(model="gpt-4o", messages=MESSAGES) as stream:
        assert isinstance(stream, openai.lib.streaming.chat.ChatCompletionStream)  # the SDK's own object
        final = stream.get_final_completion()
        assert dodo_server.event_count() == 1
    assert final.choices[0].message.content == REPLY
    with client.chat.completions.stream(model="gpt-4o", messages=MESSAGES) as stream:
        kinds = [event.type for event in stream]
    assert "content.done" in kinds
    assert metadata_of(dodo_server) == [usage(IN, OUTPUT_TOKENS, "gpt-4o")] * 2


def test_openai_responses_api_plain_streamed_and_helper(
    dodo_server: LocalDodoServer, fake_llm: FakeLLMServer, tracker: LLMTracker
) -> None:
    client = tracker.wrap(openai_client(fake_llm), "cus_1")
    response = client.responses.create(model="gpt-4.1", input="one two")
    assert response.output_text == REPLY
    events = [e.type for e in client.responses.create(model="gpt-4.1", input="one two three", stream=True)]
    assert events[-1] == "response.completed"
    with client.responses.stream(model="gpt-4.1", input="one two three four") as stream:
        assert stream.get_final_response().usage.total_tokens == 4 + OUTPUT_TOKENS
    assert metadata_of(dodo_server) == [usage(n, OUTPUT_TOKENS, "gpt-4.1") for n in (2, 3, 4)]


def test_openai_embeddings_with_options_and_calls_without_usage(
    dodo_server: LocalDodoServer, fake_llm: FakeLLMServer, tracker: LLMTracker
) -> None:
    client = tracker.wrap(openai_client(fake_llm), "cus_1")
    client.embeddings.create(model="text-embedding-3-small", input="a b c d")
    assert [m.id for m in client.models.list()] == ["gpt-fake"]  # no usage: nothing sent
    client.with_options(timeout=5.0).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert metadata_of(dodo_server) == [usage(4, 0, "text-embedding-3-small"), usage(IN, OUTPUT_TOKENS, "gpt-4o")]


def test_a_failed_llm_call_raises_as_usual_and_is_not_metered(
    dodo_server: LocalDodoServer, fake_llm: FakeLLMServer, tracker: LLMTracker
) -> None:
    client = tracker.wrap(openai_client(fake_llm), "cus_1")
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="error-500", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="error-400", messages=MESSAGES, stream=True)
    stream = client.chat.completions.create(model="cut-off", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError):
        list(stream)  # the connection drops before the usage chunk
    assert dodo_server.event_count() == 0


def test_metering_problems_never_break_the_llm_call(
    dodo_server: LocalDodoServer,
    fake_llm: FakeLLMServer,
    tracker: LLMTracker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("metering is down")

    monkeypatch.setattr(tracker, "track_usage", broken)
    client = tracker.wrap(openai_client(fake_llm), "cus_1")
    with caplog.at_level(logging.ERROR, logger="dodo_ingest"):
        response = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
    assert response.choices[0].message.content == REPLY and chunks
    assert sum("could not record" in r.getMessage() for r in caplog.records) == 2


def test_wrap_checks_its_input_once_and_does_not_double_meter(
    dodo_server: LocalDodoServer, fake_llm: FakeLLMServer, tracker: LLMTracker
) -> None:
    raw = openai_client(fake_llm)
    with pytest.raises(ValidationError, match="customer_id"):
        tracker.wrap(raw, " ")
    with pytest.raises(ValidationError, match=r"metadata\.nested"):
        tracker.wrap(raw, "cus_1", {"nested": {"a": 1}})
    with pytest.raises(ProviderError):
        tracker.wrap("not a client", "cus_1")
    twice = wrap_llm_client(tracker.wrap(raw, "cus_1"), tracker, "cus_2")
    twice.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert [e["customer_id"] for e in dodo_server.events()] == ["cus_2"]


def test_plain_functions_and_namespaces_are_wrapped_like_the_javascript_example(
    dodo_server: LocalDodoServer, tracker: LLMTracker
) -> None:
    def generate_text(prompt: str) -> dict[str, Any]:
        return {"text": prompt, "usage": {"inputTokens": 2, "outputTokens": 3, "reasoningTokens": 1}}

    def stream_text(prompt: str) -> Any:
        yield {"text": "a"}
        yield {"text": "b", "usage": {"inputTokens": 2, "outputTokens": 4}}

    client = tracker.wrap(SimpleNamespace(generate_text=generate_text, stream_text=stream_text), "cus_1")
    assert client.generate_text("hi")["text"] == "hi"
    assert [part["text"] for part in client.stream_text("hi")] == ["a", "b"]
    assert tracker.wrap(generate_text, "cus_1")("x")["text"] == "x"
    assert metadata_of(dodo_server) == [usage(2, 4, "unknown"), usage(2, 4, "unknown"), usage(2, 4, "unknown")]


# --- wrapping: Anthropic, sync -------------------------------------------------------------------------------------


def test_anthropic_message_stream_and_stream_helper(
    dodo_server: LocalDodoServer, fake_llm: FakeLLMServer, tracker: LLMTracker
) -> None:
    client = tracker.wrap(anthropic_client(fake_llm), "cus_1", {"feature": "assistant"})
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=MESSAGES)
    assert isinstance(message, anthropic.types.Message)
    kinds = [
        e.type for e in client.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=MESSAGES, stream=True)
    ]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=50, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == REPLY  # consumed inside the SDK's helper: still observed
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=50, messages=MESSAGES) as stream:
        assert stream.get_final_message().usage.output_tokens == OUTPUT_TOKENS
    assert metadata_of(dodo_server) == [usage(IN, OUTPUT_TOKENS, "claude-sonnet-4-5", feature="assistant")] * 4


def test_anthropic_stream_cut_off_bills_what_it_reported(
    dodo_server: LocalDodoServer, fake_llm: FakeLLMServer, tracker: LLMTracker
) -> None:
    client = tracker.wrap(anthropic_client(fake_llm), "cus_1")
    failure: Exception | None = None
    try:
        list(client.messages.create(model="cut-off", max_tokens=50, messages=MESSAGES, stream=True))
    except Exception as exc:  # the SDK's APIConnectionError or its HTTP library's protocol error, by version
        failure = exc
    assert failure is not None
    # message_start reported the input tokens (and a first output count) before the connection dropped
    assert metadata_of(dodo_server) == [usage(IN, 1, "cut-off")]


def test_anthropic_stream_left_early_is_metered_when_closed(
    dodo_server: LocalDodoServer, fake_llm: FakeLLMServer, tracker: LLMTracker
) -> None:
    client = tracker.wrap(anthropic_client(fake_llm), "cus_1")
    stream = client.messages.create(model="claude", max_tokens=50, messages=MESSAGES, stream=True)
    assert next(stream).type == "message_start"
    assert dodo_server.event_count() == 0
    stream.close()
    stream.close()
    assert metadata_of(dodo_server) == [usage(IN, 1, "claude")]


# --- wrapping: async clients ---------------------------------------------------------------------------------------


async def test_async_openai_plain_streamed_and_helper(
    dodo_server: LocalDodoServer, fake_llm: FakeLLMServer, tracker: LLMTracker
) -> None:
    raw = openai.AsyncOpenAI(api_key="sk-fake", base_url=fake_llm.url + "/v1", max_retries=0)
    client = tracker.wrap(raw, "cus_1")
    response = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert response.choices[0].message.content == REPLY
    stream = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    parts = [c.choices[0].delta.content async for c in stream]
    assert "".join(p or "" for p in parts) == REPLY
    async with client.chat.completions.stream(model="gpt-4o", messages=MESSAGES) as helper:
        final = await helper.get_final_completion()
    assert final.choices[0].message.content == REPLY
    stream = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    async with stream:
        async for _ in stream:
            pass
    await raw.close()
    assert metadata_of(dodo_server) == [usage(IN, OUTPUT_TOKENS, "gpt-4o")] * 4


async def test_async_anthropic_plain_streamed_and_helper(
    dodo_server: LocalDodoServer, fake_llm: FakeLLMServer, tracker: LLMTracker
) -> None:
    raw = anthropic.AsyncAnthropic(api_key="sk-ant-fake", base_url=fake_llm.url, max_retries=0)
    client = tracker.wrap(raw, "cus_1")
    message = await client.messages.create(model="claude", max_tokens=50, messages=MESSAGES)
    assert message.content[0].text == REPLY
    stream = await client.messages.create(model="claude", max_tokens=50, messages=MESSAGES, stream=True)
    assert [e.type async for e in stream][-1] == "message_stop"
    async with client.messages.stream(model="claude", max_tokens=50, messages=MESSAGES) as helper:
        text = "".join([t async for t in helper.text_stream])
    assert text == REPLY
    with pytest.raises(anthropic.InternalServerError):
        await client.messages.create(model="error-500", max_tokens=50, messages=MESSAGES)
    await raw.close()
    assert metadata_of(dodo_server) == [usage(IN, OUTPUT_TOKENS, "claude")] * 3
