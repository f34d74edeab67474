"""The stream blueprint: bill for bytes streamed (downloads, video, exports, request bodies read as a stream).

Sends the JavaScript package's ``trackStreamBytes`` event: metadata ``{"bytes": n, **metadata}``, queued on the
Ingestion's batcher (JavaScript sends one request per event). :func:`meter_stream` counts a body as it flows
through a WSGI, Flask or Django view and sends the event once, when the body is done.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dodo_ingest.blueprints._values import send_safely
from dodo_ingest.blueprints.counting import CountingAsyncIterator, CountingIterator, CountingReader, count_bytes
from dodo_ingest.blueprints.object_storage import byte_metadata
from dodo_ingest.ingestion import Ingestion


def track_stream_bytes(
    ingestion: Ingestion,
    customer_id: str,
    *,
    bytes: int | None = None,  # the JavaScript option's name and the metadata key
    metadata: Mapping[str, Any] | None = None,
    event_name: str | None = None,
    event_id: str | None = None,
) -> bool:
    """Queue a stream event: ``track_stream_bytes(ingestion, "cus_1", bytes=10485760, metadata={"kind": "video"})``.

    ``bytes`` is a whole number >= 0. Raises :class:`~dodo_ingest.errors.ValidationError` naming the field for
    bad input; returns whether the event was queued.
    """
    return ingestion.track(customer_id, byte_metadata(bytes, metadata), event_name=event_name, event_id=event_id)


def meter_stream(
    ingestion: Ingestion,
    body: Any,
    customer_id: str,
    *,
    metadata: Mapping[str, Any] | None = None,
    event_name: str | None = None,
) -> CountingReader | CountingIterator | CountingAsyncIterator:
    """Wrap a body so the bytes that flow through it are billed once, when it is done::

        return Response(meter_stream(ingestion, generate_csv(), "cus_1"))               # Flask
        return StreamingHttpResponse(meter_stream(ingestion, rows(), "cus_1"))          # Django, sync or async
        return meter_stream(ingestion, app_iter, "cus_1")                               # any WSGI app
        with meter_stream(ingestion, request.stream, "cus_1") as upload: ...            # a request body

    ``body`` is an iterable, an async iterable or a file-like object (see
    :func:`~dodo_ingest.blueprints.counting.count_bytes`). The event carries the bytes that actually went
    through: a client that disconnected halfway is billed for what it received. Bad ``customer_id`` or
    ``metadata`` raise :class:`~dodo_ingest.errors.ValidationError` here, before anything streams.
    """
    ingestion.event(customer_id, metadata, event_name=event_name)  # bad input fails now, not when the body ends
    kept = dict(metadata) if metadata else None

    def record(byte_count: int) -> None:
        send_safely(
            "stream",
            lambda: track_stream_bytes(ingestion, customer_id, bytes=byte_count, metadata=kept, event_name=event_name),
        )

    return count_bytes(body, record)
