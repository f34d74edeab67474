"""A Django URLconf for the stream blueprint's tests: sync and async streamed bodies and a streamed upload."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import path

from dodo_ingest import Ingestion, meter_stream, meter_upload

#: Set by the test before requests are made.
INGESTION: list[Ingestion] = []
CHUNKS = [b"x" * 100, "é" * 10, memoryview(b"y" * 50)]  # 100 + 20 (UTF-8) + 50 bytes
TOTAL = 170


def rows() -> Iterator[bytes | str | memoryview]:
    yield from CHUNKS


async def async_rows() -> AsyncIterator[bytes | str | memoryview]:
    for chunk in CHUNKS:
        await asyncio.sleep(0)
        yield chunk


def export(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(meter_stream(INGESTION[0], rows(), "cus_django", metadata={"view": "export"}))


def export_async(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(meter_stream(INGESTION[0], async_rows(), "cus_django", metadata={"view": "async"}))


def upload(request: HttpRequest) -> HttpResponse:
    with meter_upload(INGESTION[0], request, "cus_django", metadata={"view": "upload"}) as body:
        received = 0
        while chunk := body.read(64):
            received += len(chunk)
    return HttpResponse(str(received))


urlpatterns = [
    path("export", export),
    path("export-async", export_async),
    path("upload", upload),
]
