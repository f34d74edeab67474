"""``DodoIngestMiddleware``: one usage event per request, on WSGI and ASGI alike.

Put it first in ``MIDDLEWARE`` so it sees every response, including those other middleware return early.
It only translates Django's request and response into :class:`dodo_ingest.RequestFacts`; filters, customer
resolution, metadata and queueing are the shared :class:`dodo_ingest.Meter`'s job.

When the event is recorded:

* a plain response: when it passes back through the middleware (after every inner middleware and the view);
* a streamed response (``StreamingHttpResponse``, ``FileResponse``): at the end of the body, i.e. when the
  iterator is exhausted or when the server calls ``response.close()``, whichever comes first — so the
  timing and ``response_bytes`` cover the whole stream;
* an exception that escapes Django's own handling (``DEBUG_PROPAGATE_EXCEPTIONS``): recorded as a 500 and
  re-raised untouched. An exception Django turns into a 500 page is recorded with its class name in
  ``metadata["error"]``.

The customer is resolved after the view ran (see :func:`default_customer` for the last resort).
Nothing here raises into the request because of metering: SDK failures are logged and counted.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from time import perf_counter
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import got_request_exception
from django.http import HttpRequest, HttpResponseBase
from django.utils.functional import LazyObject, empty

from dodo_ingest.errors import ConfigurationError
from dodo_ingest.metering import Annotations, Meter, RequestFacts
from dodo_ingest_django.conf import conf
from dodo_ingest_django.routes import _cache as _route_cache
from dodo_ingest_django.routes import resolve_route, route_of, template_for

logger = logging.getLogger("dodo_ingest.django")

#: The request attribute holding the request's :class:`~dodo_ingest.metering.Annotations`.
STATE_ATTR = "_dodo_ingest"
#: The request attribute holding the class name of an exception Django turned into a 500.
ERROR_ATTR = "_dodo_ingest_error"

_Response = HttpResponseBase


class DodoIngestMiddleware:
    """Meters every request: exactly one event per request that passes the filters and has a customer.

    Both sync- and async-capable: on an ASGI stack with async middleware below it, it runs on the event
    loop without any thread hop (queueing an event is a non-blocking append).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        try:
            conf.meter  # noqa: B018 - validate the settings at start-up: fail loudly, naming the setting
        except ConfigurationError as exc:
            raise ImproperlyConfigured(f"dodo-ingest: {exc}") from None

    def __repr__(self) -> str:
        return f"<DodoIngestMiddleware get_response={self.get_response!r}>"

    # --- WSGI / sync ---------------------------------------------------------------------------------------

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        begun = _begin(request)
        if begun is None:
            return self.get_response(request)
        meter, annotations, token, started = begun
        try:
            response = self.get_response(request)
        except BaseException as exc:
            _record_escaped(meter, request, annotations, token, started, exc)
            raise
        try:
            _finish(meter, request, response, annotations, started, None)
        except Exception:
            _failed(meter)
        finally:
            meter.end(token)
        return response

    # --- ASGI / async --------------------------------------------------------------------------------------

    async def __acall__(self, request: HttpRequest) -> Any:
        """The async path: the same steps, with the default customer awaited via ``request.auser()``."""
        begun = _begin(request)
        if begun is None:
            return await self.get_response(request)
        meter, annotations, token, started = begun
        try:
            response = await self.get_response(request)
        except BaseException as exc:
            _record_escaped(meter, request, annotations, token, started, exc)
            raise
        try:
            user = None
            if annotations.customer_id is None:
                user = await _auser(request)
            _finish(meter, request, response, annotations, started, user)
        except Exception:
            _failed(meter)
        finally:
            meter.end(token)
        return response


# --- the shared steps ------------------------------------------------------------------------------------


def _begin(
    request: HttpRequest,
) -> tuple[Meter, Annotations, Any, float] | None:
    """Decide whether to meter the request and open its annotations; None means pass it through."""
    try:
        meter = conf._meter or conf.meter
        if not meter.config.enabled:
            return None
        if not meter.wants(request.method or "GET", request.path_info):
            meter.skip("filtered")
            return None
        annotations, token = meter.begin()
        request.__dict__[STATE_ATTR] = annotations
        return meter, annotations, token, perf_counter()
    except ConfigurationError:
        # The settings changed to something invalid after start-up (e.g. override_settings in a test):
        # say so loudly in the log, but never break the request.
        logger.exception("dodo-ingest is misconfigured; this request is not metered")
        return None
    except Exception:
        logger.exception("dodo-ingest could not start metering a request; it is not metered")
        return None


def _finish(
    meter: Meter,
    request: HttpRequest,
    response: Any,
    annotations: Annotations,
    started: float,
    user: Any,
) -> None:
    """Record the event now, or at the end of the body for a streamed response."""
    match = request.resolver_match
    route = (_route_cache.get(match.route) or template_for(match.route)) if match is not None else None
    if route is None and response.status_code != 404:
        route = resolve_route(request)  # returned early by a middleware, before URL resolution
    if response.streaming:
        _StreamTracker(meter, request, response, annotations, started, route, user).attach()
        return
    finished = perf_counter()
    method = request.method or "GET"
    config = meter.config
    if config.capture_client_ip or config.capture_user_agent:
        client_ip, user_agent = _client(meter, request)
    else:
        client_ip = user_agent = None
    meter.record(
        RequestFacts(
            method,
            request.path_info,
            route,
            response.status_code,
            started,
            finished,
            _request_bytes(request),
            0 if method == "HEAD" else len(response.content),
            request.__dict__.get(ERROR_ATTR),
            client_ip,
            user_agent,
        ),
        annotations=annotations,
        hook_args=(request, response),
        default_customer=_DefaultCustomer(request, response, user),
    )


def _record_escaped(
    meter: Meter,
    request: HttpRequest,
    annotations: Annotations,
    token: Any,
    started: float,
    exc: BaseException,
) -> None:
    """An exception escaped every layer of Django's handling: record a 500 with its class name."""
    try:
        if isinstance(exc, Exception):
            facts = RequestFacts(
                request.method or "GET",
                request.path_info,
                route_of(request),
                500,
                started,
                perf_counter(),
                _request_bytes(request),
                None,
                type(exc).__name__,
                *_client(meter, request),
            )
            meter.record(
                facts,
                annotations=annotations,
                hook_args=(request, None),
                default_customer=_DefaultCustomer(request, None, None),
            )
    except Exception:
        _failed(meter)
    finally:
        meter.end(token)


def _failed(meter: Meter) -> None:
    logger.exception("dodo-ingest could not meter a request; it was not counted")
    with contextlib.suppress(Exception):  # counting cannot fail; never raise into the request anyway
        meter.skip("hook_error")


def _request_bytes(request: HttpRequest) -> int | None:
    """The request body's size from Content-Length; 0 without a body; None when unknown (chunked)."""
    length = request.META.get("CONTENT_LENGTH")
    if length:
        try:
            return int(length)
        except ValueError:
            return None
    return None if "HTTP_TRANSFER_ENCODING" in request.META else 0


def _client(meter: Meter, request: HttpRequest) -> tuple[str | None, str | None]:
    config = meter.config
    ip = request.META.get("REMOTE_ADDR") if config.capture_client_ip else None
    agent = request.META.get("HTTP_USER_AGENT") if config.capture_user_agent else None
    return ip, agent


# --- streamed bodies -------------------------------------------------------------------------------------


class _StreamTracker:
    """Counts a streamed body and records the event once: at exhaustion or at ``close()``."""

    __slots__ = ("annotations", "bytes", "done", "error", "meter", "request", "response", "route", "started", "user")

    def __init__(
        self,
        meter: Meter,
        request: HttpRequest,
        response: Any,
        annotations: Annotations,
        started: float,
        route: str | None,
        user: Any,
    ) -> None:
        self.meter = meter
        self.request: Any = request
        self.response: Any = response
        self.annotations = annotations
        self.started = started
        self.route = route
        self.user = user
        self.bytes = 0
        self.done = False
        self.error: str | None = request.__dict__.get(ERROR_ATTR)

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
            self.bytes = -1
        elif response.is_async:
            response.streaming_content = self._count_async(response.streaming_content)
        else:
            response.streaming_content = self._count_sync(response.streaming_content)
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

    def _count_sync(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        try:
            for chunk in chunks:
                self.bytes += len(chunk)
                yield chunk
        except Exception as exc:
            self.error = type(exc).__name__
            self.finish()
            raise
        self.finish()

    async def _count_async(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        try:
            async for chunk in chunks:
                self.bytes += len(chunk)
                yield chunk
        except Exception as exc:
            self.error = type(exc).__name__
            self.finish()
            raise
        self.finish()

    def finish(self) -> None:
        """Record the event (once); never raises."""
        if self.done:
            return
        self.done = True
        try:
            request, response = self.request, self.response
            method = request.method or "GET"
            if self.bytes == -1:
                size: int | None = 0 if method == "HEAD" else int(response["Content-Length"])
            else:
                size = self.bytes
            facts = RequestFacts(
                method,
                request.path_info,
                self.route,
                response.status_code,
                self.started,
                perf_counter(),
                _request_bytes(request),
                size,
                self.error,
                *_client(self.meter, request),
            )
            self.meter.record(
                facts,
                annotations=self.annotations,
                hook_args=(request, response),
                default_customer=_DefaultCustomer(request, response, self.user),
            )
        except Exception:
            _failed(self.meter)
        finally:
            self.request = self.response = self.user = None  # break the response <-> closer cycle


# --- the default customer ----------------------------------------------------------------------------------


class _DefaultCustomer:
    """The documented default: ``user.dodo_customer_id`` of the authenticated user, if it has one.

    Called only when neither :func:`dodo_ingest_django.set_customer` / ``annotate(customer_id=…)`` nor the
    ``DODO_INGEST_CUSTOMER_ID`` callable found a customer. The user is the one Django REST framework
    authenticated inside the view (DRF sets it on the underlying ``HttpRequest``), else ``request.user``.
    """

    __slots__ = ("request", "response", "user")

    def __init__(self, request: HttpRequest, response: Any, user: Any) -> None:
        self.request, self.response, self.user = request, response, user

    def __call__(self) -> str | None:
        try:
            user = self.user if self.user is not None else _user_of(self.request, self.response)
            return customer_of_user(user)
        except Exception:
            logger.exception("dodo-ingest could not read the default customer from request.user")
            return None


def customer_of_user(user: Any) -> str | None:
    """``user.dodo_customer_id`` if ``user`` is authenticated and has a non-empty one, else None."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    customer = getattr(user, "dodo_customer_id", None)
    return str(customer) if customer else None


def _user_of(request: HttpRequest, response: Any) -> Any:
    """The request's user on the sync path (a lazy ``request.user`` is evaluated here, in the worker)."""
    user = request.__dict__.get("user")
    if user is None:
        drf_request = (getattr(response, "renderer_context", None) or {}).get("request")
        user = getattr(drf_request, "_user", None)
    return user


async def _auser(request: HttpRequest) -> Any:
    """The request's user on the async path, without blocking the event loop.

    A user already known (set by DRF, or a lazy ``request.user`` the view already evaluated) is used as
    is; otherwise ``await request.auser()`` (Django >= 5.0). On Django 4.2 an unevaluated lazy user is not
    loaded (that would need a database query on the loop).
    """
    user = request.__dict__.get("user")
    if isinstance(user, LazyObject):
        wrapped = user._wrapped
        if wrapped is not empty:
            return wrapped
        auser: Callable[[], Awaitable[Any]] | None = request.__dict__.get("auser")
        return await auser() if auser is not None else None
    return user


# --- exceptions Django turns into a 500 page ---------------------------------------------------------------


def _on_request_exception(sender: Any, request: Any = None, **kwargs: Any) -> None:
    """Remember the class name of the exception behind a 500 (``got_request_exception``)."""
    try:
        if request is not None and STATE_ATTR in request.__dict__:
            exc = sys.exc_info()[1]
            if exc is not None:
                request.__dict__[ERROR_ATTR] = type(exc).__name__
    except Exception:  # pragma: no cover - never raise into Django's error handling
        logger.exception("dodo-ingest could not note a request's exception")


got_request_exception.connect(_on_request_exception, dispatch_uid="dodo_ingest_django.middleware")
