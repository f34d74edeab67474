"""The blueprint API: ``Ingestion``, ``track_api_call`` and ``create_batch``.

The names mirror Dodo's JavaScript API Gateway blueprint (``new Ingestion``, ``trackAPICall``,
``createBatch``) in Python spelling. ``track_api_call`` sends synchronously and raises on failure;
a batch never raises into its caller.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from dodo_ingest.batcher import Batcher, TransportFactory, _blocking_sleep, _capture_sinks
from dodo_ingest.config import Config
from dodo_ingest.delivery import Deliverer, Pending
from dodo_ingest.errors import AuthenticationError, DeliveryError
from dodo_ingest.events import Event
from dodo_ingest.stats import Counters, RateLimitedLog, Stats
from dodo_ingest.transport import IngestClient, Transport

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
        self._sync_lock = threading.Lock()
        self._sync_counters = Counters()
        self._sync_log = RateLimitedLog(_logger)  # shared by every call, so failures are rate-limited
        self._sync_transport: Transport | None = None
        self._sync_deliverer: Deliverer | None = None
        self._sync_pid = 0  # a forked child must not share the parent's keep-alive connection

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

        Raises :class:`AuthenticationError` on 401/403 and :class:`DeliveryError` when Dodo rejects an
        event or retries run out (``max_retry_time``). Batches larger than 1000 events are split.
        """
        events = list(events)
        if not self.config.enabled or not events:
            return 0
        if _capture_sinks:
            for event in events:
                for sink in list(_capture_sinks):
                    sink(event, None)
            return len(events)
        with self._sync_lock:
            if self._sync_transport is None or self._sync_pid != os.getpid():
                # In a forked child the inherited session's socket is the parent's: leave it, open our own.
                self._sync_transport = self._transport_factory(self.config)
                self._sync_pid = os.getpid()
                self._sync_deliverer = Deliverer(
                    self.config, self._sync_transport, self._sync_counters, _blocking_sleep, self._sync_log
                )
            deliverer = self._sync_deliverer
            assert deliverer is not None
            drops = []
            for start in range(0, len(events), 1000):
                chunk = [Pending(0, e.to_json(), e.created or time.time()) for e in events[start : start + 1000]]
                drops.extend(deliverer.deliver(chunk))
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

    def stats(self) -> Stats:
        """Counters of the shared batcher."""
        return self.batcher.stats()

    def flush(self, timeout: float = 10.0) -> bool:
        """Flush the shared batcher (see :meth:`Batcher.flush`)."""
        return self._batcher.flush(timeout) if self._batcher is not None else True

    def shutdown(self, timeout: float | None = None) -> bool:
        """Drain and stop the shared batcher; close the synchronous connection."""
        done = self._batcher.shutdown(timeout) if self._batcher is not None else True
        with self._sync_lock:
            if self._sync_transport is not None:
                self._sync_transport.close()
                self._sync_transport = self._sync_deliverer = None
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
    rejected key and :class:`DeliveryError` when Dodo does not accept it. Pass ``event_id`` (e.g. your own
    request id) to make your own retries of this call safe: Dodo ignores an id it has already ingested.
    """
    event = ingestion.event(customer_id, metadata, event_name=event_name, event_id=event_id, timestamp=timestamp)
    ingestion.send([event])
    return event


def create_batch(ingestion: Ingestion, max_size: int = 100, flush_interval: float = 5.0, **settings: Any) -> Batcher:
    """A background batch: ``add()`` is O(1) and never raises; call ``cleanup()`` (also run at exit).

    ``flush_interval`` is in seconds (the JavaScript blueprint's ``flushInterval`` is in milliseconds).
    """
    return ingestion.create_batch(max_size=max_size, flush_interval=flush_interval, **settings)
