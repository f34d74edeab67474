"""``DodoClient`` (the JavaScript package's low-level client) and a health check that tells a bad key apart.

The JavaScript ``healthCheck()`` lists events and counts any 4xx answer as healthy, so a revoked key or a key
for the other environment passes it. :func:`check_health` answers healthy only when Dodo accepted the key, and
says why not otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from dodo_ingest._version import __version__
from dodo_ingest.errors import ValidationError
from dodo_ingest.events import Event
from dodo_ingest.ingestion import Ingestion
from dodo_ingest.transport import HealthCheck, check_health

_EVENT_FIELDS = ("event_id", "customer_id", "event_name", "timestamp", "metadata")


def _event(index: int, item: Event | Mapping[str, Any]) -> Event:
    if isinstance(item, Event):
        return item
    if not isinstance(item, Mapping):
        raise ValidationError(f"events[{index}]", f"must be a dict or an Event, got {type(item).__name__}")
    unknown = sorted(set(item) - set(_EVENT_FIELDS))
    if unknown:
        fields = ", ".join(_EVENT_FIELDS)
        raise ValidationError(f"events[{index}].{unknown[0]}", f"unknown field; an event has {fields}")
    for name in ("event_id", "customer_id", "event_name"):
        if not item.get(name):
            raise ValidationError(f"events[{index}].{name}", "is required")
    try:
        return Event.create(
            item["customer_id"],
            item["event_name"],
            item.get("metadata"),
            event_id=item["event_id"],
            timestamp=item.get("timestamp"),
        )
    except ValidationError as exc:
        raise ValidationError(f"events[{index}].{exc.field}", exc.message) from None


class DodoClient:
    """The JavaScript package's ``DodoClient``: validate and send ready-made events, now, in this thread.

    ``environment`` defaults to ``live_mode`` as in JavaScript (and Dodo's official SDKs); any other setting
    (``base_url``, ``request_timeout``, ``max_retry_time``...) is accepted by keyword. Sends use the same retry
    policy as the batcher, with the caller's event ids (required, as in JavaScript), so a retry bills once.
    For metering from a running app, prefer :class:`~dodo_ingest.Ingestion` and its batcher.
    """

    def __init__(self, api_key: str | None = None, environment: str = "live_mode", **settings: Any) -> None:
        self._ingestion = Ingestion(api_key, environment, **settings)

    def __repr__(self) -> str:
        return f"<DodoClient {self._ingestion.config.host} environment={self.get_environment()}>"

    def ingest_events(self, events: Iterable[Event | Mapping[str, Any]]) -> dict[str, Any]:
        """Send events (dicts with ``event_id``, ``customer_id``, ``event_name``, optional ``timestamp`` and
        ``metadata``, or :class:`~dodo_ingest.Event`); returns ``{"success": True, "events_processed": n}``.

        Raises :class:`~dodo_ingest.errors.ValidationError` (naming ``events[i].field``) before sending anything,
        :class:`~dodo_ingest.errors.AuthenticationError` for a rejected key and
        :class:`~dodo_ingest.errors.DeliveryError` otherwise (both are :class:`~dodo_ingest.errors.APIError`).
        """
        built = [_event(i, item) for i, item in enumerate(events)]
        if not built:
            raise ValidationError("events", "at least one event is required")
        sent = self._ingestion.send(built)
        return {"success": True, "events_processed": sent}

    def ingest_event(self, event: Event | Mapping[str, Any]) -> dict[str, Any]:
        """Send one event (see :meth:`ingest_events`)."""
        return self.ingest_events([event])

    def health_check(self, timeout: float | None = None) -> HealthCheck:
        """Whether Dodo is reachable and accepts the key; truthy when healthy (see :class:`HealthCheck`)."""
        return check_health(self._ingestion.config, timeout)

    def get_environment(self) -> str:
        """``test_mode`` or ``live_mode``."""
        return self._ingestion.config.environment

    def get_client_info(self) -> dict[str, str]:
        """For debugging: environment, host and SDK version (never the key)."""
        config = self._ingestion.config
        return {"environment": config.environment, "host": config.host, "sdk_version": __version__}

    def close(self) -> None:
        """Close the connection."""
        self._ingestion.shutdown()

    def __enter__(self) -> DodoClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
