"""Per-view rate limits and costs: ``@dodo_ingest_django.limit("10/minute", cost=5)``.

The check itself runs in the metering middleware's ``process_view`` (after every middleware, before the view)
or, for Django REST framework views, in :class:`dodo_ingest_django.throttling.DodoRateThrottle`; this module only
says what a view asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from dodo_ingest.request import ViewLimit

if TYPE_CHECKING:
    from django.http import HttpRequest

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute ``limit`` sets on a view function or view class.
LIMIT_ATTRIBUTE = "_dodo_ingest_limit"

#: Whether any view was decorated: with no ``rate_limits`` and no decorated view, a request pays nothing more.
decorated = False


def limit(limits: Any = None, *, cost: int = 1, scope: str | None = None) -> Callable[[F], F]:
    """Decorator: this view's own rate limit, and the units one call consumes (and is billed: ``cost``).

    ``@limit("10/minute", cost=5)``: a call consumes 5 units of the view's ``10/minute`` (counted per customer
    and per ``scope``, by default the view's name as Django resolves it, ``request.resolver_match.view_name``)
    and 5 of the customer's ``DODO_INGEST_RATE_LIMITS``; its event says ``"cost": 5``. ``limits`` may be a
    list or a callable ``(customer_id) -> limits | None``; ``@limit(cost=5)`` only sets the cost. On a
    function view, a class-based view or a Django REST framework view (function or class).
    """
    parsed = ViewLimit.parse(limits, cost=cost, scope=scope, where="dodo_ingest_django.limit")

    def decorate(view: F) -> F:
        global decorated
        setattr(view, LIMIT_ATTRIBUTE, parsed)
        decorated = True
        return view

    return decorate


def view_limit_of(view: Any) -> ViewLimit | None:
    """What ``limit`` said about a view: on the function, or on the class behind ``as_view()`` (``view_class``,
    or DRF's ``cls``)."""
    found = getattr(view, LIMIT_ATTRIBUTE, None)
    if found is None:
        view_class = getattr(view, "view_class", None) or getattr(view, "cls", None)
        found = getattr(view_class, LIMIT_ATTRIBUTE, None)
    return found if isinstance(found, ViewLimit) else None


def scope_of(request: HttpRequest, view: Any, view_limit: ViewLimit) -> str:
    """The bucket of a view's own limit: ``scope=``, else Django's name of the view (``"app:render"``, or its
    dotted path when the URL pattern has no name)."""
    if view_limit.scope:
        return view_limit.scope
    match = getattr(request, "resolver_match", None)
    if match is not None and match.view_name:
        return str(match.view_name)
    target = getattr(view, "view_class", None) or getattr(view, "cls", None) or view
    return f"{target.__module__}.{target.__qualname__}"
