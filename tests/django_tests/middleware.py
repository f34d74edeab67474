"""A middleware that answers by itself (before URL resolution), like an API-gateway auth layer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.utils.deprecation import MiddlewareMixin


class BlockMiddleware(MiddlewareMixin):
    """Answers 403 itself when the request carries ``X-Block: 1`` (sync and async capable)."""

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        super().__init__(get_response)

    def process_request(self, request: HttpRequest) -> JsonResponse | None:
        if request.headers.get("X-Block"):
            return JsonResponse({"detail": "blocked"}, status=403)
        return None
