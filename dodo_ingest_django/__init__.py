"""Django integration of dodo-ingest: one usage event per API request, configured in ``settings.py``.

::

    INSTALLED_APPS = [..., "dodo_ingest_django"]
    MIDDLEWARE = ["dodo_ingest_django.middleware.DodoIngestMiddleware", ...]
    DODO_INGEST_API_KEY = env("DODO_PAYMENTS_API_KEY")
    DODO_INGEST_CUSTOMER_RESOLVER = "myapp.billing.customer_for"   # (request, response) -> "cus_..." | None

Inside a view, :func:`set_customer` (or :func:`dodo_ingest.annotate`) names the request's customer.

Rate limits and quotas: ``DODO_INGEST_RATE_LIMITS = "100/minute;20000/month"`` (or a callable per plan); the
middleware checks them in ``process_view``; per view :func:`limit`; DRF views
``dodo_ingest_django.throttling.DodoRateThrottle``; a customer's standing :func:`usage`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dodo_ingest.ingestion import Ingestion
from dodo_ingest.request import MeteredRequest, annotate
from dodo_ingest_django.ratelimit import limit

if TYPE_CHECKING:
    from dodo_ingest.ratelimit import Limiter, LimitState

__all__ = ["annotate", "get_ingestion", "get_limiter", "limit", "set_customer", "usage"]

_STATE_ATTR = "_dodo_ingest"  # the same as dodo_ingest_django.middleware.STATE_ATTR


def set_customer(request: Any, customer_id: str) -> bool:
    """Name the Dodo customer (``"cus_..."``) to bill for this request; it wins over every other source.

    Works with a Django ``HttpRequest`` and with a Django REST framework ``Request``. Returns False (and
    does nothing) when the request is not being metered (filtered out, or the middleware is not installed).
    """
    django_request = getattr(request, "_request", request)  # DRF's Request wraps the HttpRequest
    metered = getattr(django_request, "__dict__", {}).get(_STATE_ATTR)
    if not isinstance(metered, MeteredRequest):
        return annotate(customer_id=customer_id)
    metered.annotations.customer_id = customer_id
    return True


def get_ingestion() -> Ingestion:
    """The shared :class:`~dodo_ingest.Ingestion` built from the ``DODO_INGEST_*`` settings.

    Use it for ``get_ingestion().stats()``, ``.flush()``, or to send your own events with the same settings.
    """
    from dodo_ingest_django.conf import conf  # imports django.conf; keep this package import light

    return conf.ingestion


def get_limiter() -> Limiter | None:
    """The customers' rate limiter built from the ``DODO_INGEST_RATE_LIMIT*`` settings (None when
    ``DODO_INGEST_RATE_LIMITS`` is unset): ``get_limiter().stats()`` counts rejections, fail-opens, errors."""
    from dodo_ingest_django.conf import conf

    return conf.meter.limiter


def usage(customer_id: str) -> tuple[LimitState, ...]:
    """A customer's limits as they stand (used, remaining, seconds to reset), to show in your own UI;
    consumes nothing. Empty when rate limiting is off; raises the store's error if it is down."""
    from dodo_ingest_django.conf import conf

    return conf.meter.usage(customer_id)
