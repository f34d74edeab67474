"""How :meth:`LLMTracker.wrap` meters an LLM client without changing what the caller sees.

``wrap(client, ...)`` returns a stand-in that forwards every attribute to ``client``. Public resources of the
client's own package (``client.chat``, ``client.chat.completions``, ``client.messages``) come back wrapped too;
a public method comes back as a function that calls it and looks at the result:

* a response with usage (``ChatCompletion``, ``Message``, ``Response``, ``CreateEmbeddingResponse``, a dict):
  one event, and the response itself is returned unchanged;
* a coroutine (the async clients): awaited, then the same;
* a stream (``stream=True``: ``openai.Stream``/``AsyncStream``, ``anthropic.Stream``/``AsyncStream``, any
  iterator): returned as a stand-in that yields the same items, adds up the usage they carry (OpenAI's final
  usage chunk, Anthropic's ``message_start`` and cumulative ``message_delta``, the Responses API's
  ``response.completed``) and sends one event when the stream ends: exhausted, closed, left in a ``with``
  block, or failed;
* a stream manager (``client.messages.stream(...)``, ``client.chat.completions.stream(...)``,
  ``client.responses.stream(...)``): its ``with`` block yields the SDK's own stream object, whose underlying
  wire stream is observed, so iterating, ``text_stream``, ``until_done()`` and ``get_final_*()`` all count;
  one event when the block exits (or the stream ends, if earlier);
* ``with_options(...)`` and other copies of the client: wrapped again.

OpenAI chat streams carry usage only when asked (``stream_options={"include_usage": True}``). For the
``openai`` package's ``OpenAI``/``AsyncOpenAI`` clients the wrapper asks, when the caller did not pass
``stream_options``, and keeps the extra usage-only chunk (empty ``choices``) out of what the caller iterates,
so the caller sees the chunks it would have seen unwrapped (``include_stream_usage=False`` turns this off;
it is off by default for Azure clients, whose older API versions reject the option).

A metering problem (a full queue, an odd response) is logged and never raised into the LLM call; an error of
the LLM call itself reaches the caller unchanged, with nothing sent.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from dodo_ingest.blueprints.llm import TokenUsage, extract_usage, field
from dodo_ingest.errors import ProviderError

if TYPE_CHECKING:
    from dodo_ingest.blueprints.llm import LLMTracker

logger = logging.getLogger("dodo_ingest.blueprints.llm")
T = TypeVar("T")

_PLAIN = (str, bytes, bytearray, int, float, complex, bool, type(None), list, tuple, dict, set, frozenset)
#: Calls (by attribute path) whose streams carry usage only when ``stream_options.include_usage`` asks for it.
_USAGE_OPT_IN = ("completions.create", "completions.stream")


def _warn_once(tracker: LLMTracker, key: str, message: str) -> None:
    if key not in tracker.warned:
        tracker.warned.add(key)
        logger.warning(message)


class _Meter:
    """What one ``wrap()`` call meters: the tracker, the customer, extra metadata, and the client's package."""

    def __init__(
        self,
        tracker: LLMTracker,
        customer_id: str,
        metadata: Mapping[str, Any] | None,
        root: Any,
        include_stream_usage: bool | None,
    ) -> None:
        self.tracker = tracker
        self.customer_id = customer_id
        self.metadata = dict(metadata) if metadata else None
        self.root_type = type(root)
        self.package = (self.root_type.__module__ or "").partition(".")[0]
        if include_stream_usage is None:
            include_stream_usage = self.package == "openai" and "azure" not in self.root_type.__name__.lower()
        self.include_stream_usage = include_stream_usage

    def record(self, usage: TokenUsage | None) -> None:
        if usage is None:
            return
        try:
            self.tracker.track_usage(usage, self.customer_id, self.metadata)
        except Exception:
            logger.exception("dodo-ingest could not record an LLM usage event; the LLM call is unaffected")

    # --- attributes and calls ------------------------------------------------------------------------------

    def attribute(self, value: Any, name: str, path: str) -> Any:
        if name.startswith("_") or isinstance(value, (*_PLAIN, type)):
            return value
        if callable(value):
            return self.method(value, path)
        if type(value).__module__.partition(".")[0] == self.package and not hasattr(type(value), "model_fields"):
            return _Client(value, self, path)  # a resource of the client (client.chat, client.messages, ...)
        return value

    def method(self, function: Callable[..., Any], path: str) -> Callable[..., Any]:
        def metered(*args: Any, **kwargs: Any) -> Any:
            return self.call(function, path, args, kwargs)

        with contextlib.suppress(AttributeError, TypeError):  # a callable without a name or a doc
            functools.update_wrapper(metered, function)
        return metered

    def call(self, function: Callable[..., Any], path: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        hide = self._asks_for_usage(path, kwargs)
        if hide:
            kwargs = {**kwargs, "stream_options": {"include_usage": True}}
        result = function(*args, **kwargs)
        if inspect.isawaitable(result):
            return self._awaited(result, hide)
        return self.result(result, hide)

    def _asks_for_usage(self, path: str, kwargs: dict[str, Any]) -> bool:
        if not self.include_stream_usage or "stream_options" in kwargs or not path.endswith(_USAGE_OPT_IN):
            return False
        return path.endswith(".stream") or kwargs.get("stream") is True

    async def _awaited(self, awaitable: Any, hide: bool) -> Any:
        return self.result(await awaitable, hide)

    def result(self, result: Any, hide: bool) -> Any:
        kind = type(result)
        try:
            if hasattr(kind, "__next__"):
                return _Stream(result, _StreamUsage(self), hide)
            if hasattr(kind, "__anext__"):
                return _AsyncStream(result, _StreamUsage(self), hide)
            usage = extract_usage(result)
            if usage is not None:
                self.record(usage)
            elif isinstance(result, self.root_type) and self.package not in ("builtins", "types"):
                return _Client(result, self, "")  # with_options(...) / copy(): still metered
            elif hasattr(kind, "__enter__"):
                return _StreamManager(result, _StreamUsage(self), hide)
            elif hasattr(kind, "__aenter__"):
                return _AsyncStreamManager(result, _StreamUsage(self), hide)
        except Exception:
            logger.exception("dodo-ingest could not read the usage of an LLM response; it was not metered")
        return result


class _Client:
    """The stand-in for a client or one of its resources."""

    __slots__ = ("_dodo_meter", "_dodo_path", "_dodo_target")

    def __init__(self, target: Any, meter: _Meter, path: str) -> None:
        object.__setattr__(self, "_dodo_target", target)
        object.__setattr__(self, "_dodo_meter", meter)
        object.__setattr__(self, "_dodo_path", path)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._dodo_target, name)
        path = f"{self._dodo_path}.{name}" if self._dodo_path else name
        return self._dodo_meter.attribute(value, name, path)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._dodo_target, name, value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._dodo_meter.call(self._dodo_target, self._dodo_path, args, kwargs)

    def __dir__(self) -> list[str]:
        return dir(self._dodo_target)

    def __repr__(self) -> str:
        return f"<metered {self._dodo_target!r}>"

    def __enter__(self) -> Any:
        entered = self._dodo_target.__enter__()
        return self if entered is self._dodo_target else entered

    def __exit__(self, *exc_info: Any) -> Any:
        return self._dodo_target.__exit__(*exc_info)

    async def __aenter__(self) -> Any:
        entered = await self._dodo_target.__aenter__()
        return self if entered is self._dodo_target else entered

    async def __aexit__(self, *exc_info: Any) -> Any:
        return await self._dodo_target.__aexit__(*exc_info)


def wrap_client(
    client: T,
    tracker: LLMTracker,
    customer_id: str,
    metadata: Mapping[str, Any] | None,
    include_stream_usage: bool | None,
) -> T:
    """See :meth:`LLMTracker.wrap`. Bad ``customer_id``/``metadata`` raise ValidationError now, not per call."""
    if isinstance(client, _PLAIN):
        raise ProviderError(f"cannot wrap {type(client).__name__}: expected an LLM client object or a function")
    tracker.ingestion.event(customer_id, metadata, event_name=tracker.event_name)  # validates
    if isinstance(client, _Client):
        client = object.__getattribute__(client, "_dodo_target")
    return _Client(client, _Meter(tracker, customer_id, metadata, client, include_stream_usage), "")  # type: ignore[return-value]


# --- streams -------------------------------------------------------------------------------------------------


def _usage_only_chunk(item: Any) -> bool:
    """OpenAI's extra final chunk that ``include_usage`` adds: usage, and ``choices`` always empty."""
    choices = field(item, "choices")
    return field(item, "usage") is not None and isinstance(choices, list) and not choices


class _StreamUsage:
    """Adds up the usage that the items of one stream carry and sends one event when the stream ends."""

    def __init__(self, meter: _Meter) -> None:
        self._meter = meter
        self._lock = threading.Lock()
        self._done = False
        self.observed = False
        self.model: str | None = None
        self.last: TokenUsage | None = None
        self.anthropic_input: Any = None
        self.anthropic_output: Any = None

    def observe(self, item: Any) -> None:
        try:
            self._observe(item)
        except Exception:  # an unexpected item must not break the caller's stream
            logger.debug("dodo-ingest could not read a stream item's usage", exc_info=True)

    def _observe(self, item: Any) -> None:
        self.observed = True
        kind = field(item, "type")
        if kind == "message_start":  # Anthropic: input tokens (and a first output count) up front
            message = field(item, "message")
            self._take_model(field(message, "model"))
            self._take_anthropic(field(message, "usage"))
            return
        if kind == "message_delta":  # Anthropic: cumulative counts
            self._take_anthropic(field(item, "usage"))
            return
        candidate = item
        for name in ("chunk", "response", "message"):  # an SDK helper's event around a chunk or a snapshot
            inner = field(item, name)
            if inner is not None and not isinstance(inner, _PLAIN):
                candidate = inner
                break
        self._take_model(field(candidate, "model"))
        usage = extract_usage(candidate)
        if usage is not None:
            self.last = usage

    def _take_model(self, model: Any) -> None:
        if isinstance(model, str) and model:
            self.model = model

    def _take_anthropic(self, usage: Any) -> None:
        if usage is None:
            return
        for attribute, value in (
            ("anthropic_input", field(usage, "input_tokens")),
            ("anthropic_output", field(usage, "output_tokens")),
        ):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(self, attribute, value)

    def usage(self) -> TokenUsage | None:
        """What the stream used, from what was seen so far."""
        if self.last is not None:
            if self.last.model == "unknown" and self.model:
                return TokenUsage(self.last.input_tokens, self.last.output_tokens, self.last.total_tokens, self.model)
            return self.last
        if self.anthropic_input is None and self.anthropic_output is None:
            return None
        given, made = self.anthropic_input or 0, self.anthropic_output or 0
        return TokenUsage(given, made, given + made, self.model or "unknown")

    def finish(self) -> None:
        """Send the event (once, whatever calls this first)."""
        with self._lock:
            if self._done:
                return
            self._done = True
        usage = self.usage()
        if usage is not None:
            self._meter.record(usage)
        elif self.observed:
            _warn_once(
                self._meter.tracker,
                "no-stream-usage",
                "dodo-ingest: a streamed LLM response ended without usage, so it was not metered. For OpenAI chat "
                "completions pass stream_options={'include_usage': True} (the wrapper does this itself for the "
                "openai package's clients unless include_stream_usage=False).",
            )


class _Stream:
    """A sync stream stand-in: yields the stream's items (less an injected usage-only chunk), meters at the end."""

    def __init__(self, inner: Any, usage: _StreamUsage, hide: bool) -> None:
        self._dodo_inner = inner
        self._dodo_usage = usage
        self._dodo_hide = hide

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> Any:
        while True:
            try:
                item = next(self._dodo_inner)
            except BaseException:
                self._dodo_usage.finish()
                raise
            self._dodo_usage.observe(item)
            if not (self._dodo_hide and _usage_only_chunk(item)):
                return item

    def close(self) -> None:
        """Close the stream and send its event."""
        try:
            close = getattr(self._dodo_inner, "close", None)
            if close is not None:
                close()
        finally:
            self._dodo_usage.finish()

    def __enter__(self) -> _Stream:
        enter = getattr(self._dodo_inner, "__enter__", None)
        if enter is not None:
            enter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_dodo_"):
            raise AttributeError(name)
        return getattr(self._dodo_inner, name)

    def __repr__(self) -> str:
        return f"<metered {self._dodo_inner!r}>"


class _AsyncStream:
    """The async counterpart of :class:`_Stream`."""

    def __init__(self, inner: Any, usage: _StreamUsage, hide: bool) -> None:
        self._dodo_inner = inner
        self._dodo_usage = usage
        self._dodo_hide = hide

    def __aiter__(self) -> _AsyncStream:
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                item = await self._dodo_inner.__anext__()
            except BaseException:
                self._dodo_usage.finish()
                raise
            self._dodo_usage.observe(item)
            if not (self._dodo_hide and _usage_only_chunk(item)):
                return item

    async def close(self) -> None:
        """Close the stream and send its event."""
        try:
            close = getattr(self._dodo_inner, "close", None) or getattr(self._dodo_inner, "aclose", None)
            if close is not None:
                closing = close()
                if inspect.isawaitable(closing):
                    await closing
        finally:
            self._dodo_usage.finish()

    aclose = close

    async def __aenter__(self) -> _AsyncStream:
        enter = getattr(self._dodo_inner, "__aenter__", None)
        if enter is not None:
            await enter()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_dodo_"):
            raise AttributeError(name)
        return getattr(self._dodo_inner, name)

    def __repr__(self) -> str:
        return f"<metered {self._dodo_inner!r}>"


def _observe_entered(entered: Any, usage: _StreamUsage, hide: bool) -> Any:
    """Instrument what a stream manager's ``with`` yields.

    The SDKs' helper streams (anthropic ``MessageStream``, openai ``ChatCompletionStream``/``ResponseStream``)
    read the wire events from ``_raw_stream``: observing that one sees every event however the caller consumes
    the helper, and the caller keeps the SDK's own object. Anything else that is a stream is wrapped.
    """
    raw = getattr(entered, "_raw_stream", None)
    if raw is not None:
        wrapper: _Stream | _AsyncStream | None = None
        if hasattr(type(raw), "__next__"):
            wrapper = _Stream(raw, usage, hide)
        elif hasattr(type(raw), "__anext__"):
            wrapper = _AsyncStream(raw, usage, hide)
        if wrapper is not None:
            try:
                entered._raw_stream = wrapper
            except (AttributeError, TypeError):
                pass
            else:
                return entered
    if hasattr(type(entered), "__next__"):
        return _Stream(entered, usage, False)
    if hasattr(type(entered), "__anext__"):
        return _AsyncStream(entered, usage, False)
    return entered


class _StreamManager:
    """Stand-in for a sync stream manager: its ``with`` block meters the stream once, at the latest on exit."""

    def __init__(self, inner: Any, usage: _StreamUsage, hide: bool) -> None:
        self._dodo_inner = inner
        self._dodo_usage = usage
        self._dodo_hide = hide

    def __enter__(self) -> Any:
        return _observe_entered(self._dodo_inner.__enter__(), self._dodo_usage, self._dodo_hide)

    def __exit__(self, *exc_info: Any) -> Any:
        try:
            return self._dodo_inner.__exit__(*exc_info)
        finally:
            self._dodo_usage.finish()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_dodo_"):
            raise AttributeError(name)
        return getattr(self._dodo_inner, name)


class _AsyncStreamManager:
    """The async counterpart of :class:`_StreamManager`."""

    def __init__(self, inner: Any, usage: _StreamUsage, hide: bool) -> None:
        self._dodo_inner = inner
        self._dodo_usage = usage
        self._dodo_hide = hide

    async def __aenter__(self) -> Any:
        return _observe_entered(await self._dodo_inner.__aenter__(), self._dodo_usage, self._dodo_hide)

    async def __aexit__(self, *exc_info: Any) -> Any:
        try:
            return await self._dodo_inner.__aexit__(*exc_info)
        finally:
            self._dodo_usage.finish()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_dodo_"):
            raise AttributeError(name)
        return getattr(self._dodo_inner, name)
