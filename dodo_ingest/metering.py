"""The one request-to-event path shared by every adapter (WSGI, Flask, Django).

An adapter only translates its framework into :class:`RequestFacts` (method, route template, status,
timings, byte counts, exception class) and calls :meth:`Meter.record` once the response is really finished.
Everything after that is here: filters, customer resolution, metadata, the event name, the batcher.

Inside a view, :func:`annotate` sets the customer, the event name or extra metadata of the current request,
or exempts it; it works the same under every adapter (it uses a ``contextvars.ContextVar`` that the
adapter opens with :meth:`Meter.begin`).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dodo_ingest.config import UNMATCHED_ENDPOINT, Config
from dodo_ingest.ingestion import Ingestion

logger = logging.getLogger("dodo_ingest.metering")


class Annotations:
    """What the application said about the current request from inside the view."""

    __slots__ = ("customer_id", "event_name", "exempt", "metadata")

    def __init__(self) -> None:
        self.customer_id: str | None = None
        self.event_name: str | None = None
        self.metadata: dict[str, Any] = {}
        self.exempt = False

    def __repr__(self) -> str:
        return (
            f"Annotations(customer_id={self.customer_id!r}, event_name={self.event_name!r}, "
            f"metadata={self.metadata!r}, exempt={self.exempt!r})"
        )


_current: contextvars.ContextVar[Annotations | None] = contextvars.ContextVar("dodo_ingest_request", default=None)


def annotate(
    *,
    customer_id: str | None = None,
    event_name: str | None = None,
    exempt: bool | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> bool:
    """Tell the metering middleware about the current request, from inside a view.

    ``customer_id`` wins over every other way of finding the customer; ``event_name`` replaces the
    configured one for this request; ``metadata`` is added to the event; ``exempt=True`` means the request
    is not metered. Returns False (and does nothing) when no metered request is in progress.
    """
    current = _current.get()
    if current is None:
        return False
    if customer_id is not None:
        current.customer_id = customer_id
    if event_name is not None:
        current.event_name = event_name
    if exempt is not None:
        current.exempt = exempt
    if metadata:
        current.metadata.update(metadata)
    return True


def current_annotations() -> Annotations | None:
    """The annotations of the request in progress, or None."""
    return _current.get()


@dataclass(slots=True)
class RequestFacts:
    """The facts of one finished request, as an adapter hands them over."""

    method: str
    path: str
    #: Route template (``/api/v1/items/<int:item_id>``); None when no route matched.
    route: str | None
    status_code: int
    #: ``time.perf_counter()`` at the start and at the end of the response (end of the body when streamed).
    started: float
    finished: float
    request_bytes: int | None = None
    response_bytes: int | None = None
    #: Class name of an exception that escaped the view (the status is then 500).
    error: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None
    #: A customer id the adapter already resolved (e.g. Django's async path); None = resolve here.
    customer_id: str | None = None


class Meter:
    """Turns finished requests into events on an :class:`Ingestion`'s shared batcher."""

    def __init__(self, ingestion: Ingestion, config: Config | None = None) -> None:
        """``config``: this adapter's request-path settings (filters, customer, metadata hooks), when they
        differ from the ingestion's; the batcher is the ingestion's either way."""
        self.ingestion = ingestion
        self.config: Config = config or ingestion.config
        self.batcher = ingestion.batcher

    # --- at the start of a request --------------------------------------------------------------------------

    def wants(self, method: str, path: str) -> bool:
        """Whether the filters on method and path allow metering this request (cheap; call it first)."""
        config = self.config
        if not config.enabled:
            return False
        if method in config.exclude_methods:
            return False
        if config.include_paths is not None and not any(p.matches(path) for p in config.include_paths):
            return False
        return not any(p.matches(path) for p in config.exclude_paths)

    def begin(self) -> tuple[Annotations, contextvars.Token[Annotations | None]]:
        """Open the request's annotations (for :func:`annotate`); pass the token to :meth:`end`."""
        annotations = Annotations()
        return annotations, _current.set(annotations)

    @staticmethod
    def end(token: contextvars.Token[Annotations | None]) -> None:
        """Close what :meth:`begin` opened (call it in the same context, before the response is sent)."""
        # In a different context (e.g. a streamed body finishing elsewhere) there is nothing to undo.
        with contextlib.suppress(ValueError):
            _current.reset(token)

    def skip(self, reason: str = "filtered") -> None:
        """Count a request that is not metered (``filtered`` by default)."""
        self.batcher.counters.skip(reason)

    # --- once the response is finished --------------------------------------------------------------------

    def record(
        self,
        facts: RequestFacts,
        *,
        annotations: Annotations | None = None,
        hook_args: tuple[Any, ...] = (),
        default_customer: Callable[[], str | None] | None = None,
    ) -> bool:
        """Build and queue the event for a finished request; never raises. Returns whether it was queued.

        The customer is, in this order: ``annotate(customer_id=...)``, ``facts.customer_id``, the configured
        ``customer_id`` callable (called with ``hook_args``), ``default_customer()`` (the framework's
        default), ``fallback_customer_id``. Without one the request is counted as skipped (``no_customer``).
        """
        try:
            return self._record(facts, annotations or Annotations(), hook_args, default_customer)
        except Exception:
            logger.exception("dodo-ingest could not meter a request; it was not counted")
            self.batcher.counters.skip("hook_error")
            return False

    def _record(
        self,
        facts: RequestFacts,
        annotations: Annotations,
        hook_args: tuple[Any, ...],
        default_customer: Callable[[], str | None] | None,
    ) -> bool:
        config = self.config
        if annotations.exempt:
            self.skip("filtered")
            return False
        if config.should_meter is not None:
            verdict = self._call_hook(config.should_meter, hook_args)
            if verdict is _FAILED:
                return False
            if not verdict:
                self.skip("filtered")
                return False
        customer = annotations.customer_id or facts.customer_id
        if customer is None and config.customer_id is not None:
            found = self._call_hook(config.customer_id, hook_args)
            if found is _FAILED:
                return False
            customer = found
        if customer is None and default_customer is not None:
            customer = default_customer()
        customer = customer or config.fallback_customer_id
        if not customer:
            self.skip("no_customer")
            return False
        metadata: dict[str, Any] = {
            "endpoint": facts.route or UNMATCHED_ENDPOINT,
            "method": facts.method,
            "status_code": facts.status_code,
            "response_time_ms": round((facts.finished - facts.started) * 1000.0, 3),
        }
        if facts.request_bytes is not None:
            metadata["request_bytes"] = facts.request_bytes
        if facts.response_bytes is not None:
            metadata["response_bytes"] = facts.response_bytes
        if facts.error:
            metadata["error"] = facts.error
        if config.capture_client_ip and facts.client_ip:
            metadata["client_ip"] = facts.client_ip
        if config.capture_user_agent and facts.user_agent:
            metadata["user_agent"] = facts.user_agent
        if annotations.metadata:  # per-request values win over the extra_metadata hook's
            _merge(metadata, annotations.metadata)
        if config.extra_metadata is not None:
            extra = self._call_hook(config.extra_metadata, hook_args)
            if extra is _FAILED:
                return False
            if extra:
                _merge(metadata, extra)
        event_name = annotations.event_name or config.event_name
        return self.batcher._add(str(customer), event_name, metadata, None)

    def _call_hook(self, hook: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        try:
            return hook(*args)
        except Exception:
            logger.exception("dodo-ingest hook %r raised; the request is not metered", hook)
            self.skip("hook_error")
            return _FAILED


_FAILED = object()


def _merge(metadata: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Add user metadata; the built-in keys (endpoint, method, status_code, ...) are never overwritten."""
    for key, value in extra.items():
        metadata.setdefault(key, value)


#: The clock of :attr:`RequestFacts.started` / ``finished`` (``time.perf_counter`` itself: no extra call).
now = time.perf_counter
