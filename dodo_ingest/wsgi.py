"""WSGI middleware: meter every request of any WSGI app (Bottle, Pyramid, Falcon, a hand-written one).

>>> from dodo_ingest.wsgi import DodoIngestMiddleware
>>> application = DodoIngestMiddleware(application,
...     customer_id=lambda environ, status, headers: environ.get("myapp.account_id"))

How a request becomes one event (PEP 3333 to the letter):

* ``start_response`` is wrapped to see the status and headers (a second call with ``exc_info`` wins);
  the ``write()`` callable it returns is wrapped to count legacy writes.
* The app's iterable is returned wrapped in an object whose ``close()`` always closes the app's iterable
  and then records the event, exactly once, even when the server never iterated (HEAD, client gone).
  The app's iterable is iterated once, however often the server calls ``iter()`` on the wrapper.
  Bytes are counted as they stream and the time is taken at ``close()``: a streamed body is timed to
  its end. A ``wsgi.file_wrapper`` response is handed back to the server unchanged (so ``sendfile``
  still works): only its ``close`` is hooked, and its size is the ``Content-Length`` header.
* An exception raised by the app, or while iterating its body, is recorded as status 500 with the
  exception's class name in ``error`` and re-raised untouched.
* The customer is, in this order: ``dodo_ingest.annotate(customer_id=...)`` from inside the app,
  :func:`set_customer` (``environ["dodo_ingest.customer_id"]``, which an auth middleware may also set),
  the ``customer_resolver`` callable ``(environ, status, headers)``, ``fallback_customer_id``. Plain WSGI
  has no notion of a user, so there is no framework default (``REMOTE_USER`` is a login, not a Dodo customer).
* The endpoint comes from ``route_resolver(environ, status_code)``, called after the response; the default
  normalizes id-like segments (see :mod:`dodo_ingest.routes`). If it raises, the request is still billed,
  as ``<unmatched>``, and the failure counted.
* When another dodo-ingest adapter inside this one (the Flask extension, the Django middleware, a second
  middleware) also sees the request, the innermost one meters it and this one does not: a request is
  counted once (see :mod:`dodo_ingest.request`).

Metering never breaks the app: a failure inside the SDK is logged (logger ``dodo_ingest.request``) and
counted under ``stats().skipped["adapter_error"]``, and the response goes on untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from http import HTTPStatus
from types import TracebackType
from typing import TYPE_CHECKING, Any

from dodo_ingest.ingestion import Ingestion, adapter_ingestion
from dodo_ingest.request import ADAPTER_KEY, CUSTOMER_KEY, Meter, MeteredRequest, request_path
from dodo_ingest.routes import RouteResolver, default_route_resolver

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from dodo_ingest.ratelimit import Limiter, LimitState

__all__ = ["ADAPTER_KEY", "CUSTOMER_KEY", "DodoIngestMiddleware", "request_path", "set_customer"]

# The status recorded when the app never called start_response and the server never iterated
# (the client went away first): nginx's "client closed request".
_NO_RESPONSE_STATUS = 499


def set_customer(environ: WSGIEnvironment | dict[str, Any], customer_id: str) -> None:
    """Set the Dodo customer of the current request (call it from your app or an auth middleware).

    It wins over the configured ``customer_resolver``; only ``dodo_ingest.annotate(customer_id=...)`` wins
    over it. Take it from your authentication, never from a header the client chose.
    """
    environ[CUSTOMER_KEY] = customer_id


class DodoIngestMiddleware:
    """Meters every request of a WSGI application as one usage event.

    ``DodoIngestMiddleware(app, ingestion=None, *, route_resolver=None, **settings)``: ``settings`` are the
    keyword names of :data:`dodo_ingest.config.SETTINGS` (``customer_resolver``, ``exclude_paths``, ...).
    Without ``ingestion``, one is built from them (the API key falls back to ``DODO_PAYMENTS_API_KEY``) and
    shared with every other adapter of the same delivery settings in the process; with one, its batcher is
    shared and only request-path settings may be given. Invalid settings raise
    :class:`~dodo_ingest.errors.ConfigurationError` here.
    """

    def __init__(
        self,
        app: WSGIApplication,
        ingestion: Ingestion | None = None,
        *,
        route_resolver: RouteResolver | None = None,
        **settings: Any,
    ) -> None:
        self.app = app
        self.ingestion, config = adapter_ingestion(ingestion, settings)
        self.meter = Meter(self.ingestion, config)
        self.route_resolver: RouteResolver = route_resolver or default_route_resolver

    def __repr__(self) -> str:
        return f"<DodoIngestMiddleware {self.app!r} via {self.ingestion!r}>"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        metered = self.meter.begin_environ(environ)
        if metered is None:
            return self.app(environ, start_response)
        response = _MeteredResponse(self, metered, environ, start_response)
        if self.meter.limiter is not None:
            decision = metered.limit((environ,))
            if decision is not None and not decision.allowed:
                return response.reject()
        try:
            result = self.app(environ, response.start_response)
        except BaseException as exc:
            metered.fail(exc)
            response.finish()
            raise
        return response.wrap(result)

    # --- rate limits ----------------------------------------------------------------------------------------

    @property
    def limiter(self) -> Limiter | None:
        """The customers' rate limiter (None when ``rate_limits`` is unset)."""
        return self.meter.limiter

    def usage(self, customer_id: str) -> tuple[LimitState, ...]:
        """A customer's limits as they stand (used, remaining, seconds to reset), for your own UI; consumes
        nothing. Empty when rate limiting is off; raises the store's error if it is down."""
        return self.meter.usage(customer_id)

    # --- control, for scripts and tests -------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Send every queued event now (see :meth:`Ingestion.flush`)."""
        return self.ingestion.flush(timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Drain and stop the ingestion's batcher (also done at interpreter exit)."""
        return self.ingestion.shutdown(timeout)


class _MeteredResponse:
    """The wrapped ``start_response`` and the response iterable the server gets, for one metered request."""

    __slots__ = (
        "environ",
        "headers",
        "inner",
        "inner_close",
        "iterated",
        "iterator",
        "metered",
        "middleware",
        "status",
        "upstream_start_response",
        "upstream_write",
        "use_content_length",
    )

    def __init__(
        self,
        middleware: DodoIngestMiddleware,
        metered: MeteredRequest,
        environ: WSGIEnvironment,
        start_response: StartResponse,
    ) -> None:
        self.middleware = middleware
        self.metered = metered
        self.environ = environ
        self.upstream_start_response = start_response
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.iterated = False
        self.use_content_length = False
        self.inner: Iterable[bytes] = ()
        self.inner_close: Any = None
        self.iterator: Iterator[bytes] | None = None
        self.upstream_write: Any = None

    # --- the server-facing side ----------------------------------------------------------------------------

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None] | None = None,
    ) -> Any:
        """PEP 3333 ``start_response``: remember status and headers, pass everything through (adding the
        rate-limit fields of a checked request that this middleware meters)."""
        if self.metered.limit_check is not None and self.metered.claimed:
            headers = _with_headers(headers, self.metered.rate_limit_headers())
        self.status = status
        self.headers = headers
        if exc_info is None:
            write = self.upstream_start_response(status, headers)
        else:
            write = self.upstream_start_response(status, headers, exc_info)
        self.upstream_write = write
        return self.write

    def reject(self) -> Iterable[bytes]:
        """Answer a request the rate limiter rejected, without calling the app: the ``rate_limit_response``
        hook's ``(status, headers, body)`` if configured, else 429 (503 when failing closed) with JSON."""
        metered = self.metered
        code, headers, body = metered.rejection()
        status = _status_line(code)
        hook = metered.meter.config.rate_limit_response
        if hook is not None:
            check = metered.limit_check
            assert check is not None
            try:
                custom_status, custom_headers, custom_body = hook(self.environ, check.decision)
                status = custom_status if isinstance(custom_status, str) else _status_line(int(custom_status))
                headers = _with_headers(list(custom_headers), headers[2:])  # keep its type and length
                body = custom_body.encode() if isinstance(custom_body, str) else bytes(custom_body)
            except Exception:
                metered.meter.hook_failed(hook)  # the default answer, then
        self.start_response(status, headers)
        return self.wrap([body])

    def write(self, data: bytes) -> Any:
        """The legacy ``write()`` callable, counting the bytes written through it."""
        self.metered.count(data)
        return self.upstream_write(data)

    def wrap(self, result: Iterable[bytes]) -> Iterable[bytes]:
        """What the server gets: a ``wsgi.file_wrapper`` itself (close hooked), else this object."""
        self.inner = result
        self.inner_close = getattr(result, "close", None)
        file_wrapper = self.environ.get("wsgi.file_wrapper")
        if file_wrapper is not None and isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
            try:
                result.close = self.close  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass  # a wrapper with __slots__: fall back to wrapping it (sendfile is lost, bytes counted)
            else:
                self.use_content_length = True  # the server sends it (maybe with sendfile)
                return result
        return self

    def __iter__(self) -> Iterator[bytes]:
        if self.iterator is None:  # iterate the app's iterable once, however often the server asks
            self.iterated = True
            try:
                self.iterator = iter(self.inner)
            except BaseException as exc:
                self.metered.fail(exc)
                raise
        return self

    def __next__(self) -> bytes:
        iterator = self.iterator
        if iterator is None:  # a server that calls next() without iter(): be lenient
            iter(self)
            iterator = self.iterator
            assert iterator is not None
        try:
            chunk = next(iterator)
        except StopIteration:
            raise
        except BaseException as exc:
            self.metered.fail(exc)
            raise
        self.metered.count(chunk)
        return chunk

    def close(self) -> None:
        """Close the app's iterable, then record the event (once); an error from closing is re-raised."""
        try:
            if self.inner_close is not None:
                self.inner_close()
        except BaseException as exc:
            self.metered.fail(exc)
            raise
        finally:
            self.finish()

    # --- recording -----------------------------------------------------------------------------------------

    def finish(self) -> None:
        """Record the event; runs once, never raises."""
        metered = self.metered
        if metered.done:
            return
        meter = metered.meter
        try:
            if not metered.claimed:
                metered.finish()  # an adapter inside this one metered the request: only close our context
                return
            if self.status is not None:
                try:
                    metered.status_code = int(self.status[:3])
                except ValueError:
                    metered.status_code = 500
            elif not self.iterated and metered.error is None:
                metered.status_code = _NO_RESPONSE_STATUS
            resolver = self.middleware.route_resolver
            try:
                metered.route = resolver(self.environ, 500 if metered.error else metered.status_code)
            except Exception:
                meter.hook_failed(resolver)
            if self.use_content_length:
                metered.response_bytes = _content_length(self.headers)
        except Exception:
            metered.broke()
        metered.finish((self.environ, self.status or f"{metered.status_code} ", self.headers))


def _status_line(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} Unknown"


def _with_headers(headers: list[tuple[str, str]], extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` plus those of ``extra`` whose name it does not have yet (the app's own values win)."""
    if not extra:
        return headers
    present = {name.lower() for name, _ in headers}
    return [*headers, *[(name, value) for name, value in extra if name.lower() not in present]]


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    for name, value in headers:
        if name.lower() == "content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
