"""The object storage blueprint: bill for bytes uploaded to S3, GCS, Azure Blob or any store.

Sends the JavaScript package's ``trackObjectStorage`` event: metadata ``{"bytes": n, **metadata}`` (``bytes``
only when given; a ``bytes`` key in ``metadata`` wins, as in JavaScript). Unlike JavaScript (one request per
event), the event is queued on the Ingestion's batcher and sent in batches, retried with the same id.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any

from dodo_ingest.blueprints._values import check_amount, send_safely
from dodo_ingest.blueprints.counting import CountingReader
from dodo_ingest.ingestion import Ingestion


def byte_metadata(byte_count: int | None, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """``{"bytes": byte_count, **metadata}``, the metadata of the object storage and stream events."""
    event: dict[str, Any] = {} if byte_count is None else {"bytes": check_amount("bytes", byte_count, integer=True)}
    if metadata:
        event.update(metadata)
    return event


def track_object_storage(
    ingestion: Ingestion,
    customer_id: str,
    *,
    bytes: int | None = None,  # the JavaScript option's name and the metadata key
    metadata: Mapping[str, Any] | None = None,
    event_name: str | None = None,
    event_id: str | None = None,
) -> bool:
    """Queue an upload event: ``track_object_storage(ingestion, "cus_1", bytes=1048576, metadata={"bucket": "b"})``.

    ``bytes`` is a whole number >= 0. Raises :class:`~dodo_ingest.errors.ValidationError` naming the field for
    bad input; returns whether the event was queued (``ingestion.flush()`` waits until it is sent).
    """
    return ingestion.track(customer_id, byte_metadata(bytes, metadata), event_name=event_name, event_id=event_id)


class MeteredUpload(CountingReader):
    """A :class:`CountingReader` that sends the object storage event when its ``with`` block exits normally.

    An exception in the block means the upload failed: nothing is sent. Outside a ``with`` block,
    :meth:`close` sends it. Either way at most once.
    """

    def __init__(
        self,
        ingestion: Ingestion,
        fileobj: Any,
        customer_id: str,
        metadata: Mapping[str, Any] | None,
        event_name: str | None,
    ) -> None:
        ingestion.event(customer_id, metadata, event_name=event_name)  # bad input fails here, not at the end
        self._send = True
        super().__init__(fileobj, self._record)
        self._ingestion = ingestion
        self._customer_id = customer_id
        self._metadata = dict(metadata) if metadata else None
        self._event_name = event_name

    def _record(self, byte_count: int) -> None:
        if self._send:
            send_safely(
                "object storage",
                lambda: track_object_storage(
                    self._ingestion,
                    self._customer_id,
                    bytes=byte_count,
                    metadata=self._metadata,
                    event_name=self._event_name,
                ),
            )

    def __enter__(self) -> MeteredUpload:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._send = exc_type is None
        self.close()


def meter_upload(
    ingestion: Ingestion,
    fileobj: Any,
    customer_id: str,
    *,
    metadata: Mapping[str, Any] | None = None,
    event_name: str | None = None,
) -> MeteredUpload:
    """Count an upload's bytes as the storage client reads them, and bill them once it succeeded::

        with meter_upload(ingestion, request.files["file"], "cus_1", metadata={"bucket": "b"}) as body:
            s3.upload_fileobj(body, "b", key)

    The event (``bytes`` = bytes read, a re-read after a seek not counted twice) is queued when the block exits
    without an exception. Closing the wrapper closes ``fileobj``.
    """
    return MeteredUpload(ingestion, fileobj, customer_id, metadata, event_name)
