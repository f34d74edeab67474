"""``DodoRateThrottle``: the rate-limit check for Django REST framework views, after DRF's authentication.

DRF authenticates inside the view (token, JWT, basic), after every middleware, so the metering middleware
cannot know the customer of a token-authenticated request in ``process_view``. A DRF view whose throttles
include this class is checked here instead, once DRF knows ``request.user``::

    REST_FRAMEWORK = {"DEFAULT_THROTTLE_CLASSES": ["dodo_ingest_django.throttling.DodoRateThrottle"]}

The same lifecycle as every other check (:meth:`dodo_ingest.request.MeteredRequest.limit`): once per request,
the same customer order (``set_customer``, ``DODO_INGEST_RATE_LIMIT_KEY(request)`` with DRF's request,
``request.user.dodo_customer_id``, ``DODO_INGEST_FALLBACK_CUSTOMER_ID``), the same limits and per-view limits
(``@dodo_ingest_django.limit`` on the view class, or above ``@api_view``). A rejected request gets DRF's own 429
(``Throttled``, with ``Retry-After``); the metering middleware adds the ``RateLimit`` fields to the response
and does not bill it. Requests the middleware does not meter are not limited.
"""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from dodo_ingest.request import MeteredRequest
from dodo_ingest_django import ratelimit
from dodo_ingest_django.middleware import STATE_ATTR, customer_of_user

__all__ = ["DodoRateThrottle"]


class DodoRateThrottle(BaseThrottle):  # type: ignore[misc]
    """Checks the customer's dodo-ingest rate limits (and the view's own) after DRF's authentication."""

    #: Tells the metering middleware to leave the check of this view to the throttle.
    dodo_ingest_throttle = True

    def __init__(self) -> None:
        self.retry_after: int | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        """Consume the request's units; False (DRF answers 429) when a limit rejects it."""
        django_request = getattr(request, "_request", request)
        metered = getattr(django_request, "__dict__", {}).get(STATE_ATTR)
        if not isinstance(metered, MeteredRequest):
            return True  # not metered (filtered out, or the middleware is not installed)
        meter = metered.meter
        match = getattr(django_request, "resolver_match", None)
        view_limit = ratelimit.view_limit_of(getattr(match, "func", None)) or ratelimit.view_limit_of(type(view))
        if meter.limiter is None and (view_limit is None or view_limit.limits is None):
            return True
        scope, cost, own = "", 1, None
        if view_limit is not None:
            cost, own = view_limit.cost, view_limit.limits
            if own is not None:
                scope = ratelimit.scope_of(django_request, type(view), view_limit)
        decision = metered.limit(
            (request,), lambda: customer_of_user(getattr(request, "user", None)), scope=scope, cost=cost, limits=own
        )
        if decision is None or decision.allowed:
            return True
        self.retry_after = decision.retry_after
        return False

    def wait(self) -> float | None:
        """Seconds until the request would be allowed (DRF's ``Retry-After``)."""
        return None if self.retry_after is None else float(self.retry_after)
