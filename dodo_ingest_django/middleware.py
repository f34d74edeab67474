"""``DodoIngestMiddleware``: one usage event per request, on WSGI and ASGI alike.

Put it first in ``MIDDLEWARE`` so it sees every response, including those other middleware return early.
It only translates Django's request and response for the core's request lifecycle
(:mod:`dodo_ingest.request`): filters, customer resolution, metadata and queueing happen there.

When the event is recorded:

* a plain response: when it passes back through the middleware (after every inner middleware and the view);
* a streamed response (``StreamingHttpResponse``, ``FileResponse``): at the end of the body, i.e. when the
  iterator is exhausted or when the server calls ``response.close()``, whichever comes first — so the
  timing and ``response_bytes`` cover the whole stream. The customer and the user's hooks are resolved
  before the body starts, while the request is still whole;
* an exception that escapes Django's own handling (``DEBUG_PROPAGATE_EXCEPTIONS``): recorded as a 500 and
  re-raised untouched. An exception Django turns into a 500 page is recorded with its class name in
  ``metadata["error"]``.

The customer is resolved after the view ran (see :class:`_DefaultCustomer` for the last resort). On ASGI the
default customer is read without blocking the event loop (``request.auser()``, or a thread on Django 4.2).
When a WSGI middleware of dodo-ingest wraps the Django app too, only this (innermost) one meters the request.
Nothing here raises into the request because of metering.

Rate limits (``DODO_INGEST_RATE_LIMITS``, ``@dodo_ingest_django.limit``) are checked in ``process_view``, which
Django runs after every middleware and before the view: ``request.user`` of ``AuthenticationMiddleware`` is
known there, wherever this middleware sits. On an async stack ``process_view`` is a coroutine function (the
user from ``request.auser()``, the check with ``limits.aio``). A rejected request gets its 429 from there and
the view does not run. Django REST framework views throttled by ``DodoRateThrottle`` are left to it (DRF
authenticates inside the view).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import got_request_exception
from django.http import HttpRequest, HttpResponse
from django.utils.functional import LazyObject, empty

from dodo_ingest.errors import ConfigurationError
from dodo_ingest.request import CUSTOMER_KEY, MeteredRequest, acounted, counted
from dodo_ingest_django import ratelimit
from dodo_ingest_django.conf import conf
from dodo_ingest_django.routes import resolve_route, route_of

if TYPE_CHECKING:
    from dodo_ingest.ratelimit import Decision

logger = logging.getLogger("dodo_ingest.django")

#: The request attribute holding the request's :class:`~dodo_ingest.request.MeteredRequest`.
STATE_ATTR = "_dodo_ingest"


class DodoIngestMiddleware:
    """Meters every request: exactly one event per request that passes the filters and has a customer.

    Both sync- and async-capable: on an ASGI stack with async middleware below it, it runs on the event
    loop without any thread hop (queueing an event is a non-blocking append).
    """

    sync_capable = True
    async_capable = True
    #: ``process_view(request, view_func, view_args, view_kwargs)``: the rate-limit check, after every
    #: middleware and before the view. A coroutine function on an async stack (Django then awaits it on the
    #: loop: the check uses ``limits.aio``), a plain function on a sync one.
    process_view: Callable[[HttpRequest, Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        self.process_view = _aprocess_view if self.async_mode else _process_view
        try:
            conf.meter  # noqa: B018 - validate the settings at start-up: fail loudly, naming the setting
        except ConfigurationError as exc:
            raise ImproperlyConfigured(f"dodo-ingest: {exc}") from None

    def __repr__(self) -> str:
        return f"<DodoIngestMiddleware get_response={self.get_response!r}>"

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        metered = _begin(request)
        if metered is None:
            return self.get_response(request)
        try:
            response = self.get_response(request)
        except BaseException as exc:
            _escaped(metered, request, exc)
            raise
        _respond(metered, request, response, _DefaultCustomer(request, response))
        return response

    async def __acall__(self, request: HttpRequest) -> Any:
        """The async path: the same steps, with the default customer awaited without blocking the loop."""
        metered = _begin(request)
        if metered is None:
            return await self.get_response(request)
        try:
            response = await self.get_response(request)
        except BaseException as exc:
            _escaped(metered, request, exc)
            raise
        default = None
        try:
            if metered.annotations.customer_id is None and CUSTOMER_KEY not in request.META:
                user = await _auser(request, response)
                default = _KnownUser(user)
        except Exception:
            metered.meter.hook_failed(_auser)
        _respond(metered, request, response, default)
        return response


# --- the steps ---------------------------------------------------------------------------------------------


def _begin(request: HttpRequest) -> MeteredRequest | None:
    """Open the request's lifecycle, or None to pass it through (filtered, disabled, misconfigured)."""
    try:
        meter = conf._meter or conf.meter
    except ConfigurationError:
        # The settings changed to something invalid after start-up (e.g. override_settings in a test):
        # say so loudly in the log, but never break the request.
        logger.exception("dodo-ingest is misconfigured; this request is not metered")
        return None
    except Exception:
        logger.exception("dodo-ingest could not start metering a request; it is not metered")
        return None
    metered = meter.begin_cgi(request.META, request.method or "GET", request.path_info)
    if metered is not None:
        request.__dict__[STATE_ATTR] = metered
    return metered


def _respond(metered: MeteredRequest, request: HttpRequest, response: Any, default: Callable[[], Any] | None) -> None:
    """The response exists: resolve the customer and hooks now, record now or at the end of the body."""
    try:
        metered.status_code = response.status_code
        if metered.limit_check is not None:
            for name, value in metered.rate_limit_headers():
                if not response.has_header(name):  # the app's own value (DRF's Retry-After) wins
                    response[name] = value
        route = route_of(request)
        if route is None and response.status_code != 404:
            route = resolve_route(request)  # returned early by a middleware, before URL resolution
        metered.route = route
        metered.resolve((request, response), default)
        if response.streaming:
            _StreamEnd(metered, response).attach()
            metered.close_context()  # the body streams after the middleware returned, maybe elsewhere
            return
        metered.response_bytes = len(response.content)
    except Exception:
        metered.broke()
    metered.finish()


def _escaped(metered: MeteredRequest, request: HttpRequest, exc: BaseException) -> None:
    """An exception escaped every layer of Django's handling: a 500 with its class name (or, for a
    ``KeyboardInterrupt`` / ``SystemExit`` / cancellation, no event at all)."""
    if not isinstance(exc, Exception):
        metered.abandon()
        return
    try:
        metered.fail(exc)
        metered.route = route_of(request)
        metered.response_bytes = None
        metered.resolve((request, None), _DefaultCustomer(request, None))
    except Exception:
        metered.broke()
    metered.finish()


class _StreamEnd:
    """Wraps a streamed body to count it; records the event at exhaustion or at ``close()``, once."""

    __slots__ = ("metered", "response", "use_content_length")

    def __init__(self, metered: MeteredRequest, response: Any) -> None:
        self.metered = metered
        self.response: Any = response
        self.use_content_length = False

    def attach(self) -> None:
        response = self.response
        if (
            getattr(response, "file_to_stream", None) is not None
            and response.has_header("Content-Length")
            and not response.is_async
        ):
            # A FileResponse of a real file: WSGI servers may send it with ``wsgi.file_wrapper`` (sendfile)
            # without iterating the body, so it is not wrapped (that would disable sendfile); its size is
            # Content-Length and it is timed to ``close()``, which the server calls once it is sent.
            self.use_content_length = True
        elif response.is_async:
            response.streaming_content = acounted(response.streaming_content, self.metered, self.finish)
        else:
            response.streaming_content = counted(response.streaming_content, self.metered, self.finish)
        closers = getattr(response, "_resource_closers", None)
        if isinstance(closers, list):
            closers.append(self.finish)
        else:  # pragma: no cover - every supported Django has _resource_closers; keep close() honest anyway
            close = response.close

            def close_and_finish() -> None:
                try:
                    close()
                finally:
                    self.finish()

            response.close = close_and_finish

    def finish(self) -> None:
        metered, response = self.metered, self.response
        if metered.done or response is None:
            return
        self.response = None  # break the response <-> closer cycle
        if self.use_content_length:
            try:
                metered.response_bytes = int(response["Content-Length"])
            except (KeyError, ValueError):
                metered.response_bytes = None
        metered.finish()


# --- the rate-limit check, before the view ------------------------------------------------------------------


def _process_view(
    request: HttpRequest, view_func: Callable[..., Any], view_args: tuple[Any, ...], view_kwargs: dict[str, Any]
) -> HttpResponse | None:
    """Check the request's rate limits; a rejected request gets its 429 here and the view does not run."""
    metered = request.__dict__.get(STATE_ATTR)
    if metered is None or (metered.meter.limiter is None and not ratelimit.decorated):
        return None  # not metered, or rate limiting off: nothing more than these two checks
    try:
        found = _view_check(request, metered, view_func)
        if found is None:
            return None
        scope, cost, own = found
        decision = metered.limit((request,), _DefaultCustomer(request, None), scope=scope, cost=cost, limits=own)
        if decision is None or decision.allowed:
            return None
        return _rejection(request, metered, decision)
    except Exception:
        metered.meter.internal_error()
        return None


async def _aprocess_view(
    request: HttpRequest, view_func: Callable[..., Any], view_args: tuple[Any, ...], view_kwargs: dict[str, Any]
) -> HttpResponse | None:
    """:func:`_process_view` on the event loop: ``limits.aio``, and the user awaited (``request.auser()``)."""
    metered = request.__dict__.get(STATE_ATTR)
    if metered is None or (metered.meter.limiter is None and not ratelimit.decorated):
        return None
    try:
        found = _view_check(request, metered, view_func)
        if found is None:
            return None
        scope, cost, own = found

        async def default() -> Any:
            return customer_of_user(await _auser(request, None))

        decision = await metered.alimit((request,), default, scope=scope, cost=cost, limits=own)
        if decision is None or decision.allowed:
            return None
        return _rejection(request, metered, decision)
    except Exception:
        metered.meter.internal_error()
        return None


def _view_check(
    request: HttpRequest, metered: MeteredRequest, view_func: Callable[..., Any]
) -> tuple[str, int, Any] | None:
    """``(scope, cost, the view's own limits)`` of the check to run here, or None for no check here."""
    if uses_dodo_throttle(view_func):
        return None  # a DRF view authenticates inside the view: DodoRateThrottle checks there
    view_limit = ratelimit.view_limit_of(view_func)
    if view_limit is None:
        return ("", 1, None) if metered.meter.limiter is not None else None
    if view_limit.limits is None:  # only a cost: spent on the customer's limits, if there are any
        return ("", view_limit.cost, None) if metered.meter.limiter is not None else None
    return ratelimit.scope_of(request, view_func, view_limit), view_limit.cost, view_limit.limits


def uses_dodo_throttle(view_func: Any) -> bool:
    """Whether ``view_func`` is a Django REST framework view throttled by ``DodoRateThrottle``."""
    view_class = getattr(view_func, "cls", None)
    throttles = getattr(view_class, "throttle_classes", None)
    if not throttles:
        return False
    return any(getattr(throttle, "dodo_ingest_throttle", False) for throttle in throttles)


def _rejection(request: HttpRequest, metered: MeteredRequest, decision: Decision) -> HttpResponse:
    """The answer to a rejected request: ``DODO_INGEST_RATE_LIMIT_RESPONSE(request, decision)`` if set (a view
    taking the decision), else 429 (503 when failing closed) with a JSON body; the fields are added later."""
    hook = metered.meter.config.rate_limit_response
    if hook is not None:
        try:
            response: HttpResponse = hook(request, decision)
            return response
        except Exception:
            metered.meter.hook_failed(hook)
    status, headers, body = metered.rejection()
    response = HttpResponse(body, status=status, content_type="application/json")
    for name, value in headers[2:]:  # after Content-Type and Content-Length, which HttpResponse sets
        response[name] = value
    return response


# --- the default customer ----------------------------------------------------------------------------------


def customer_of_user(user: Any) -> str | None:
    """``user.dodo_customer_id`` if ``user`` is authenticated and has a non-empty one, else None."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    customer = getattr(user, "dodo_customer_id", None)
    return customer if customer else None


class _DefaultCustomer:
    """The documented default on the sync path: ``user.dodo_customer_id`` of the user Django REST framework
    authenticated inside the view (DRF sets it on the underlying ``HttpRequest``), else of ``request.user``."""

    __slots__ = ("request", "response")

    def __init__(self, request: HttpRequest, response: Any) -> None:
        self.request, self.response = request, response

    def __call__(self) -> Any:
        return customer_of_user(_user_of(self.request, self.response))


class _KnownUser:
    """The default customer on the async path, from a user already loaded."""

    __slots__ = ("user",)

    def __init__(self, user: Any) -> None:
        self.user = user

    def __call__(self) -> Any:
        return customer_of_user(self.user)


def _user_of(request: HttpRequest, response: Any) -> Any:
    """The request's user (a lazy ``request.user`` is evaluated here: call it where blocking is fine)."""
    user = request.__dict__.get("user")
    if user is None:
        drf_request = (getattr(response, "renderer_context", None) or {}).get("request")
        user = getattr(drf_request, "_user", None)
    if isinstance(user, LazyObject):
        getattr(user, "is_authenticated", None)  # evaluate it
        user = user._wrapped
    return user


async def _auser(request: HttpRequest, response: Any) -> Any:
    """The request's user on the async path, without blocking the event loop.

    A user already known (set by DRF, or a lazy ``request.user`` the view already evaluated) is used as is;
    otherwise ``await request.auser()`` (Django >= 5.0), or the lazy user evaluated in a worker thread
    (Django 4.2, where evaluating it on the loop raises ``SynchronousOnlyOperation``).
    """
    user = request.__dict__.get("user")
    if isinstance(user, LazyObject):
        wrapped = user._wrapped
        if wrapped is not empty:
            return wrapped
        auser: Callable[[], Any] | None = request.__dict__.get("auser")
        if auser is not None:
            return await auser()
        return await sync_to_async(_user_of, thread_sensitive=True)(request, response)
    if user is None:
        drf_request = (getattr(response, "renderer_context", None) or {}).get("request")
        return getattr(drf_request, "_user", None)
    return user


# --- exceptions Django turns into a 500 page ---------------------------------------------------------------


def _on_request_exception(sender: Any, request: Any = None, **kwargs: Any) -> None:
    """Remember the class name of the exception behind a 500 (``got_request_exception``)."""
    try:
        metered = getattr(request, "__dict__", {}).get(STATE_ATTR)
        if isinstance(metered, MeteredRequest):
            exc = sys.exc_info()[1]
            if exc is not None:
                metered.fail(exc)
    except Exception:  # pragma: no cover - never raise into Django's error handling
        logger.exception("dodo-ingest could not note a request's exception")


got_request_exception.connect(_on_request_exception, dispatch_uid="dodo_ingest_django.middleware")
