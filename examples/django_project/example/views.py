"""A small API: JSON views, a streamed export, a DRF view."""

import os
from collections.abc import Iterator

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from dodo_ingest_django import set_customer


def hello(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"hello": "world"})


def item(request: HttpRequest, item_id: int) -> JsonResponse:
    return JsonResponse({"id": item_id, "pid": os.getpid()})


def export(request: HttpRequest) -> StreamingHttpResponse:
    """A streamed CSV: metered at the end of the body, with its full size."""

    def rows() -> Iterator[str]:
        yield "id,name\n"
        for i in range(100):
            yield f"{i},item-{i}\n"

    return StreamingHttpResponse(rows(), content_type="text/csv")


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


class Quote(APIView):
    """A DRF view that names its customer itself (e.g. from its own authentication)."""

    def post(self, request: Request) -> Response:
        customer = request.data.get("customer") if isinstance(request.data, dict) else None
        if customer:
            set_customer(request, f"cus_{customer}")
        return Response({"quote": 42}, status=201)
