"""The LLM blueprint: bill for the tokens of OpenAI, Anthropic, Gemini, Vercel AI SDK and compatible responses.

Sends the JavaScript package's event: metadata ``{"inputTokens", "outputTokens", "totalTokens", "model",
**metadata}`` (numbers and a string; ``model`` is ``"unknown"`` when the response does not say), and nothing at
all for a response without usage. The usage shapes read, as in JavaScript 0.6.1:

* Gemini ``usageMetadata`` (or the Python SDK's ``usage_metadata``): input = prompt tokens, output = candidates
  + thoughts tokens, total = the reported total or input + output; model = ``modelVersion``.
* ``usage.prompt_tokens`` (OpenAI chat and embeddings, Groq, OpenRouter and other OpenAI-compatible APIs):
  total = ``total_tokens`` or input + output.
* ``usage.input_tokens`` (Anthropic, OpenAI Responses): total = input + output.
* ``usage.inputTokens`` (Vercel AI SDK): output = outputTokens + reasoningTokens, total = totalTokens or the sum.
* otherwise ``usage.inputTokens|input``, ``outputTokens|output``, ``totalTokens|total``.

Differences from JavaScript: events go through the Ingestion's batcher (one request per batch, ids fixed once
and reused on retries) instead of one request per response; the wrapper (:meth:`LLMTracker.wrap`) also meters
streamed responses, once, when the stream ends, and never lets a metering problem break the LLM call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from dodo_ingest.blueprints._values import js_number
from dodo_ingest.errors import ConfigurationError
from dodo_ingest.ingestion import Ingestion
from dodo_ingest.transport import HealthCheck, check_health

T = TypeVar("T")


@dataclass(frozen=True)
class TokenUsage:
    """Token counts of one LLM response, normalized across providers."""

    input_tokens: int | float
    output_tokens: int | float
    total_tokens: int | float
    model: str

    def as_metadata(self) -> dict[str, Any]:
        """The event metadata, with the JavaScript package's key names and order."""
        return {
            "inputTokens": self.input_tokens,
            "outputTokens": self.output_tokens,
            "totalTokens": self.total_tokens,
            "model": self.model,
        }


def field(obj: Any, name: str) -> Any:
    """``obj[name]`` for a mapping, ``obj.name`` for an object (an SDK's model); None when absent."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _has(obj: Any, name: str) -> bool:
    """Whether the field exists at all (JavaScript's ``!== undefined``; a null value exists)."""
    if isinstance(obj, Mapping):
        return name in obj
    try:
        getattr(obj, name)
    except AttributeError:
        return False
    return True


def _count(value: Any) -> int | float:
    """A token count: a number (not a bool) is kept, anything else (None, a string) counts as 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return 0
    return js_number(value)


def _first(*values: Any) -> int | float:
    """JavaScript's ``a || b || ...`` over token counts: the first non-zero number, else 0."""
    for value in values:
        number = _count(value)
        if number:
            return number
    return 0


def _present(value: Any) -> bool:
    """JavaScript truthiness for a field: an object (even an empty one) is there; None, 0, "" and False are not."""
    if value is None:
        return False
    if isinstance(value, (bool, int, float, str)):
        return bool(value)
    return True


def _model(value: Any) -> str:
    return value if isinstance(value, str) and value else "unknown"


def extract_usage(response: Any) -> TokenUsage | None:
    """The token usage of an LLM response (a dict or an SDK object), or None when it has none."""
    gemini = field(response, "usageMetadata")
    if not _present(gemini):
        gemini = field(response, "usage_metadata")
    if _present(gemini):
        prompt = _first(field(gemini, "promptTokenCount"), field(gemini, "prompt_token_count"))
        output = _first(field(gemini, "candidatesTokenCount"), field(gemini, "candidates_token_count")) + _first(
            field(gemini, "thoughtsTokenCount"), field(gemini, "thoughts_token_count")
        )
        total = _first(field(gemini, "totalTokenCount"), field(gemini, "total_token_count")) or prompt + output
        version = field(response, "modelVersion") or field(response, "model_version")
        return TokenUsage(prompt, output, total, _model(version))
    usage = field(response, "usage")
    if not _present(usage):
        return None
    if _has(usage, "prompt_tokens"):  # OpenAI and OpenAI-compatible
        prompt, output = _count(field(usage, "prompt_tokens")), _count(field(usage, "completion_tokens"))
        total = _first(field(usage, "total_tokens")) or prompt + output
    elif _has(usage, "input_tokens"):  # Anthropic, OpenAI Responses
        prompt, output = _count(field(usage, "input_tokens")), _count(field(usage, "output_tokens"))
        total = prompt + output
    elif _has(usage, "inputTokens"):  # Vercel AI SDK
        prompt = _count(field(usage, "inputTokens"))
        output = _count(field(usage, "outputTokens")) + _count(field(usage, "reasoningTokens"))
        total = _first(field(usage, "totalTokens")) or prompt + output
    else:
        prompt = _first(field(usage, "inputTokens"), field(usage, "input"))
        output = _first(field(usage, "outputTokens"), field(usage, "output"))
        total = _first(field(usage, "totalTokens"), field(usage, "total")) or prompt + output
    return TokenUsage(prompt, output, total, _model(field(response, "model")))


class LLMTracker:
    """Sends token usage events for LLM responses through an :class:`~dodo_ingest.Ingestion`'s batcher.

    Create one per process (:func:`create_llm_tracker`) and reuse it for every customer: ``wrap()`` is cheap.
    """

    def __init__(self, ingestion: Ingestion, event_name: str | None = None) -> None:
        self.ingestion = ingestion
        self.event_name = event_name or ingestion.config.event_name
        self.warned: set[str] = set()  # warnings already logged by this tracker's wrappers (each one once)

    def __repr__(self) -> str:
        return f"<LLMTracker event_name={self.event_name!r} {self.ingestion!r}>"

    def track(self, response: Any, customer_id: str, metadata: Mapping[str, Any] | None = None) -> bool:
        """Queue the usage event of a response you already have; False (nothing sent) when it has no usage.

        Raises :class:`~dodo_ingest.errors.ValidationError` for a bad ``customer_id`` or ``metadata``.
        """
        usage = extract_usage(response)
        return False if usage is None else self.track_usage(usage, customer_id, metadata)

    def track_usage(self, usage: TokenUsage, customer_id: str, metadata: Mapping[str, Any] | None = None) -> bool:
        """Queue the event for usage already extracted (streams add theirs up first)."""
        event = usage.as_metadata()
        if metadata:
            event.update(metadata)
        return self.ingestion.track(customer_id, event, event_name=self.event_name)

    def wrap(
        self,
        client: T,
        customer_id: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        include_stream_usage: bool | None = None,
    ) -> T:
        """A stand-in for ``client`` that meters every call's usage for ``customer_id``; see :mod:`.llm_wrapper`."""
        from dodo_ingest.blueprints.llm_wrapper import wrap_client

        return wrap_client(client, self, customer_id, metadata, include_stream_usage)

    def health_check(self, timeout: float | None = None) -> HealthCheck:
        """Whether Dodo is reachable and accepts the key (truthy), and if not, why."""
        return check_health(self.ingestion.config, timeout)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the events queued so far are sent (see :meth:`Ingestion.flush`)."""
        return self.ingestion.flush(timeout)


def create_llm_tracker(
    api_key: str | None = None,
    environment: str | None = None,
    event_name: str | None = None,
    *,
    ingestion: Ingestion | None = None,
    **settings: Any,
) -> LLMTracker:
    """The JavaScript ``createLLMTracker({apiKey, environment, eventName})``: a tracker to create once and reuse.

    ``event_name`` (your meter's event name) is required. Pass ``ingestion=`` to share an existing Ingestion
    and its batcher (then ``event_name`` defaults to its own); otherwise one is created from ``api_key``
    (default: ``DODO_PAYMENTS_API_KEY``), ``environment`` (default ``test_mode``) and any other setting.
    """
    if ingestion is not None:
        if api_key is not None or environment is not None or settings:
            raise ConfigurationError(
                "create_llm_tracker: pass either ingestion= or the settings to build one (api_key, environment, ...)"
            )
        return LLMTracker(ingestion, event_name)
    if not isinstance(event_name, str) or not event_name.strip():
        raise ConfigurationError(
            "event_name: required, the event name of your LLM meter (e.g. 'llm_usage'); got " + repr(event_name)
        )
    return LLMTracker(Ingestion(api_key, environment, event_name, **settings), event_name)


def wrap_llm_client(client: T, tracker: LLMTracker, customer_id: str, metadata: Mapping[str, Any] | None = None) -> T:
    """The JavaScript ``wrapLLMClient(client, {tracker, customerId, metadata})``: ``tracker.wrap(...)``."""
    return tracker.wrap(client, customer_id, metadata)
