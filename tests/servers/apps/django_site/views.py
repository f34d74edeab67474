"""Sync and async views; each authenticates by token and bills the customer the token belongs to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from dodo_ingest import annotate
from tests.servers.apps.common import body, customer_for, metadata, seq_of


def _bill(request: HttpRequest) -> bytes | None:
    customer = customer_for(request.headers.get("Authorization"))
    if customer is None:
        return None
    seq = seq_of(request.headers.get("X-Test-Seq"))
    annotate(customer_id=customer, metadata=metadata(seq))
    return body(customer, seq)


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok", content_type="text/plain")


def work(request: HttpRequest) -> HttpResponse:
    payload = _bill(request)
    if payload is None:
        return HttpResponse("unauthorized", status=401)
    return HttpResponse(payload, content_type="application/json")


def stream(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    payload = _bill(request)
    if payload is None:
        return HttpResponse("unauthorized", status=401)

    def chunks() -> Iterator[bytes]:
        for _ in range(3):
            yield b"chunk\n"
        yield payload

    return StreamingHttpResponse(chunks(), content_type="application/json")


async def work_async(request: HttpRequest) -> HttpResponse:
    await asyncio.sleep(0)  # a real suspension point between the middleware and the response
    payload = _bill(request)
    if payload is None:
        return HttpResponse("unauthorized", status=401)
    return HttpResponse(payload, content_type="application/json")


async def stream_async(request: HttpRequest) -> HttpResponse | StreamingHttpResponse:
    payload = _bill(request)
    if payload is None:
        return HttpResponse("unauthorized", status=401)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            await asyncio.sleep(0)
            yield b"chunk\n"
        yield payload

    return StreamingHttpResponse(chunks(), content_type="application/json")
