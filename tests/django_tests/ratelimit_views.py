"""Views and URLconf of the rate-limit tests (``@pytest.mark.urls("tests.django_tests.ratelimit_views")``)."""

from __future__ import annotations

import asyncio
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views import View
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

import dodo_ingest_django
from dodo_ingest.ratelimit import Decision
from dodo_ingest_django.throttling import DodoRateThrottle


def hello(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"hello": "world"})


@dodo_ingest_django.limit("10/minute", cost=5)
def render(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"rendered": True})


@dodo_ingest_django.limit(cost=3)
def report(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"report": True})


@dodo_ingest_django.limit("1/minute", scope="export")
class Export(View):
    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse("id,name\n", content_type="text/csv")


async def ahello(request: HttpRequest) -> JsonResponse:
    await asyncio.sleep(0)
    return JsonResponse({"hello": "async"})


def teapot(request: HttpRequest) -> HttpResponse:
    return HttpResponse("no", status=418)


class Me(APIView):
    """Token authentication (the project default) and the dodo-ingest throttle."""

    throttle_classes = [DodoRateThrottle]

    def get(self, request: Request) -> Response:
        return Response({"username": request.user.get_username()})


@dodo_ingest_django.limit("2/minute", cost=2)
class Search(APIView):
    throttle_classes = [DodoRateThrottle]

    def get(self, request: Request) -> Response:
        return Response({"results": []})


def slow_down(request: HttpRequest, decision: Decision) -> HttpResponse:
    """A ``DODO_INGEST_RATE_LIMIT_RESPONSE`` view."""
    return HttpResponse(f"slow down: {decision.binding.policy if decision.binding else ''}", status=429)


def key_from_header(request: Any) -> str | None:
    """A ``DODO_INGEST_RATE_LIMIT_KEY``: the customer of an API key (here: the header itself)."""
    return request.headers.get("X-Customer") or None


urlpatterns = [
    path("hello/", hello, name="hello"),
    path("render/", render, name="render"),
    path("report/", report, name="report"),
    path("export/", Export.as_view(), name="export"),
    path("async/", ahello, name="ahello"),
    path("teapot/", teapot, name="teapot"),
    path("drf/me/", Me.as_view(), name="me"),
    path("drf/search/", Search.as_view(), name="search"),
]
