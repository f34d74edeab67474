"""Views of the test project: sync, async, streaming, failing, DRF."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from dodo_ingest import annotate
from dodo_ingest_django import set_customer

#: What the customer callable saw (thread, whether an event loop was running) — for the async tests.
hook_calls: list[dict[str, Any]] = []


def customer_from_header(request: HttpRequest, response: Any) -> str | None:
    """The test project's ``DODO_INGEST_CUSTOMER_ID``: the ``X-Customer`` header."""
    try:
        asyncio.get_running_loop()
        on_loop = True
    except RuntimeError:
        on_loop = False
    hook_calls.append({"thread": threading.get_ident(), "on_loop": on_loop, "response": response})
    return request.headers.get("X-Customer") or None


class Boom(Exception):
    """The application's own error."""


def hello(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"hello": "world"})


def item(request: HttpRequest, item_id: int) -> JsonResponse:
    return JsonResponse({"id": item_id})


def order(request: HttpRequest, ref: str) -> JsonResponse:
    return JsonResponse({"ref": ref})


def legacy(request: HttpRequest, **kwargs: str) -> JsonResponse:
    return JsonResponse(kwargs)


def legacy_unnamed(request: HttpRequest, *args: str) -> JsonResponse:
    return JsonResponse({"args": list(args)})


def boom(request: HttpRequest) -> HttpResponse:
    raise Boom("the app failed")


def missing(request: HttpRequest, item_id: int) -> HttpResponse:
    raise Http404("no such item")


def echo(request: HttpRequest) -> HttpResponse:
    return HttpResponse(request.body, content_type="application/octet-stream")


def annotated(request: HttpRequest) -> JsonResponse:
    annotate(customer_id="cus_annotated", metadata={"tokens": 42, "status_code": "ignored"})
    return JsonResponse({"ok": True})


def helper(request: HttpRequest) -> JsonResponse:
    set_customer(request, "cus_helper")
    return JsonResponse({"ok": True})


def exempt(request: HttpRequest) -> JsonResponse:
    annotate(exempt=True)
    return JsonResponse({"ok": True})


def health(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


CHUNKS = [b"a" * 10, b"b" * 20, b"c" * 30]


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def body() -> Iterator[bytes]:
        yield from CHUNKS

    return StreamingHttpResponse(body(), content_type="application/octet-stream")


def stream_fails(request: HttpRequest) -> StreamingHttpResponse:
    def body() -> Iterator[bytes]:
        yield b"x" * 5
        raise Boom("mid-stream")

    return StreamingHttpResponse(body())


async def astream(request: HttpRequest) -> StreamingHttpResponse:
    async def body() -> AsyncIterator[bytes]:
        for chunk in CHUNKS:
            await asyncio.sleep(0)
            yield chunk

    return StreamingHttpResponse(body(), content_type="application/octet-stream")


def download(request: HttpRequest) -> FileResponse:
    handle = tempfile.TemporaryFile()  # noqa: SIM115 - FileResponse closes it
    handle.write(b"f" * 1000)
    handle.seek(0)
    return FileResponse(handle, filename="data.bin")


async def ahello(request: HttpRequest) -> JsonResponse:
    await asyncio.sleep(0)
    return JsonResponse({"hello": "async"})


async def aboom(request: HttpRequest) -> HttpResponse:
    await asyncio.sleep(0)
    raise Boom("async failure")


async def ahelper(request: HttpRequest) -> JsonResponse:
    set_customer(request, "cus_async_helper")
    return JsonResponse({"ok": True})


class Me(APIView):
    """DRF view behind TokenAuthentication (the project default) and IsAuthenticated."""

    def get(self, request: Request) -> Response:
        return Response({"username": request.user.get_username()})


class DrfHelper(APIView):
    """DRF view that names the customer with the helper, given DRF's own Request."""

    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []

    def post(self, request: Request) -> Response:
        set_customer(request, "cus_drf_helper")
        return Response({"ok": True}, status=201)
