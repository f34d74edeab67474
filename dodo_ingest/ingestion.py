"""The blueprint API: ``Ingestion``, ``track_api_call`` and ``create_batch``.

The names mirror Dodo's JavaScript API Gateway blueprint (``new Ingestion``, ``trackAPICall``,
``createBatch``) in Python spelling. ``track_api_call`` sends synchronously and raises on failure;
a batch never raises into its caller.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from dodo_ingest import lifecycle
from dodo_ingest.batcher import Batcher, TransportFactory, _capture_sinks
from dodo_ingest.config import Config, RequestConfig
from dodo_ingest.delivery import Pending
from dodo_ingest.errors import AuthenticationError, DeliveryError
from dodo_ingest.events import Event
from dodo_ingest.stats import Counters, RateLimitedLog, Stats
from dodo_ingest.sync import SyncSender
from dodo_ingest.transport import IngestClient

_logger = logging.getLogger("dodo_ingest.ingestion")


class Ingestion:
    """A configured connection to Dodo's event ingestion.

    >>> ingestion = Ingestion(api_key="...", environment="test_mode", event_name="api_call")

    Any setting of :data:`dodo_ingest.config.SETTINGS` can be passed by keyword; the API key falls back to
    ``DODO_PAYMENTS_API_KEY`` and the host to ``DODO_PAYMENTS_BASE_URL``. Invalid settings raise
    :class:`~dodo_ingest.errors.ConfigurationError` here, at start-up.
    """

    def __init__(
        self,
        api_key: str | None = None,
        environment: str | None = None,
        event_name: str | None = None,
        *,
        config: Config | None = None,
        transport_factory: TransportFactory = IngestClient,
        **settings: Any,
    ) -> None:
        given = {
            k: v
            for k, v in (("api_key", api_key), ("environment", environment), ("event_name", event_name))
            if v is not None
        }
        if config is None:
            config = Config.load({**settings, **given})
        elif given or settings:
            config = config.with_changes(**settings, **given)
        self.config = config
        self._transport_factory = transport_factory
        self._batcher: Batcher | None = None
        self._lock = threading.Lock()
        # Shared by every synchronous call, so failures are rate-limited; no lock is held across I/O.
        self._sync = SyncSender(config, transport_factory, Counters(), RateLimitedLog(_logger))

    def __repr__(self) -> str:
        return (
            f"<Ingestion {self.config.host} environment={self.config.environment} "
            f"event_name={self.config.event_name!r}>"
        )

    # --- building and sending events synchronously ----------------------------------------------------------

    def event(
        self,
        customer_id: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        event_name: str | None = None,
        event_id: str | None = None,
        timestamp: datetime | str | float | None = None,
    ) -> Event:
        """Build and validate one event; raises :class:`ValidationError` naming the bad field."""
        return Event.create(
            customer_id, event_name or self.config.event_name, metadata, event_id=event_id, timestamp=timestamp
        )

    def send(self, events: Iterable[Event]) -> int:
        """Send events now, in this thread, with the retry policy of the batcher; return how many.

        The whole call, retries included, takes at most ``sync_timeout`` seconds per 1000 events. Raises
        :class:`AuthenticationError` on 401/403 and :class:`DeliveryError` when Dodo rejects an event or the
        budget runs out. Batches larger than 1000 events are split.
        """
        events = list(events)
        if not self.config.enabled or not events:
            return 0
        if _capture_sinks:
            for event in events:
                for sink in list(_capture_sinks):
                    sink(event, None)
            return len(events)
        drops = []
        for start in range(0, len(events), 1000):
            chunk = [Pending(0, e.to_json(), e.created or time.time()) for e in events[start : start + 1000]]
            drops.extend(self._sync.send(chunk))
        if drops:
            first = drops[0]
            count = sum(len(d.events) for d in drops)
            message = f"{count} of {len(events)} events not delivered ({first.reason}): {first.message}"
            if first.reason == "unauthorized":
                raise AuthenticationError(
                    f"{message}. Check that the API key belongs to {self.config.environment} ({self.config.host}).",
                    reason=first.reason,
                )
            raise DeliveryError(message, reason=first.reason)
        return len(events)

    # --- batching --------------------------------------------------------------------------------------------

    def create_batch(
        self, max_size: int | None = None, flush_interval: float | None = None, **settings: Any
    ) -> Batcher:
        """A new :class:`Batcher` with this configuration (``max_size`` = ``max_batch_size``)."""
        changes = dict(settings)
        if max_size is not None:
            changes["max_batch_size"] = max_size
        if flush_interval is not None:
            changes["flush_interval"] = flush_interval
        config = self.config.with_changes(**changes) if changes else self.config
        return Batcher(config, transport_factory=self._transport_factory)

    @property
    def batcher(self) -> Batcher:
        """The shared batcher the middlewares use, created on first use."""
        if self._batcher is None:
            with self._lock:
                if self._batcher is None:
                    self._batcher = Batcher(self.config, transport_factory=self._transport_factory)
        return self._batcher

    @property
    def closed(self) -> bool:
        """Whether :meth:`shutdown` has been called (in this process)."""
        return self._batcher is not None and self._batcher.closed

    def stats(self) -> Stats:
        """Counters of the shared batcher."""
        return self.batcher.stats()

    def flush(self, timeout: float = 10.0) -> bool:
        """Flush the shared batcher (see :meth:`Batcher.flush`)."""
        return self._batcher.flush(timeout) if self._batcher is not None else True

    def shutdown(self, timeout: float | None = None) -> bool:
        """Drain and stop the shared batcher; close the synchronous connection."""
        done = self._batcher.shutdown(timeout) if self._batcher is not None else True
        self._sync.close()
        return done

    def track(
        self,
        customer_id: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        event_name: str | None = None,
        event_id: str | None = None,
    ) -> bool:
        """Queue one event on the shared batcher: the JavaScript ``ingestion.track({customerId, metadata})``.

        Checked here (raises :class:`ValidationError` naming the field), then sent in the background, batched
        with every other event of this Ingestion and retried with the same id, where the JavaScript version
        sends one request per event. Returns whether it was queued (see :meth:`stats`); :meth:`flush` waits.
        """
        event = self.event(customer_id, metadata, event_name=event_name, event_id=event_id)
        return self.batcher.add(event.customer_id, event.metadata, event_name=event.event_name, event_id=event_id)


def track_api_call(
    ingestion: Ingestion,
    customer_id: str,
    metadata: Mapping[str, Any] | None = None,
    *,
    event_name: str | None = None,
    event_id: str | None = None,
    timestamp: datetime | str | float | None = None,
) -> Event:
    """Send one API-call event now and return it.

    Raises :class:`ValidationError` (naming the field) for bad input, :class:`AuthenticationError` for a
    rejected key and :class:`DeliveryError` when Dodo does not accept it (within ``sync_timeout``).

    ``event_id`` makes your own retries of this call safe (Dodo ignores an id it has already ingested), so it
    must be an id *your server* made for one billable unit of work, e.g. the primary key of the job row.
    Never pass an id a client sent you (an ``X-Request-Id`` header): a client could then repeat one id on many
    calls and be billed for one.
    """
    event = ingestion.event(customer_id, metadata, event_name=event_name, event_id=event_id, timestamp=timestamp)
    ingestion.send([event])
    return event


def create_batch(ingestion: Ingestion, max_size: int = 100, flush_interval: float = 5.0, **settings: Any) -> Batcher:
    """A background batch: ``add()`` is O(1) and never raises; call ``cleanup()`` (also run at exit).

    ``flush_interval`` is in seconds (the JavaScript blueprint's ``flushInterval`` is in milliseconds).
    """
    return ingestion.create_batch(max_size=max_size, flush_interval=flush_interval, **settings)


# --- what adapters build on ------------------------------------------------------------------------------------

_shared: dict[Config, Ingestion] = {}


def shared_ingestion(config: Config) -> Ingestion:
    """The process's :class:`Ingestion` for these delivery settings: adapters with the same settings (say, the
    apps of a test suite's app factory) share one batcher and one flush thread instead of one each."""
    key = replace(config, request=RequestConfig(event_name=config.request.event_name, enabled=config.enabled))
    with lifecycle.fork_guard():
        ingestion = _shared.get(key)
        if ingestion is None or ingestion.closed:
            ingestion = _shared[key] = Ingestion(config=key)
        return ingestion


def adapter_ingestion(
    ingestion: Ingestion | None,
    kwargs: Mapping[str, Any],
    mapping: Mapping[str, Any] | None = None,
    *,
    source: str = "",
) -> tuple[Ingestion, RequestConfig]:
    """Validate an adapter's settings; return the :class:`Ingestion` to use and the adapter's request settings.

    Without ``ingestion``, the settings are ``kwargs`` (which win over ``mapping``'s ``DODO_INGEST_*`` keys,
    then the environment) and the ingestion is the shared one for their delivery part. With one, only
    request-path settings may be given; they apply to this adapter on top of the ingestion's.
    """
    if ingestion is None:
        config = Config.load(kwargs, mapping, source=source)
        return shared_ingestion(config), config.request
    return ingestion, RequestConfig.load(kwargs, mapping, base=ingestion.config.request, source=source)
