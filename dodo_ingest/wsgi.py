"""WSGI middleware: meter every request of any WSGI app (Bottle, Pyramid, Falcon, a hand-written one).

>>> from dodo_ingest.wsgi import DodoIngestMiddleware
>>> application = DodoIngestMiddleware(application,
...     customer_id=lambda environ, status, headers: environ.get("myapp.account_id"))

How a request becomes one event (PEP 3333 to the letter):

* ``start_response`` is wrapped to see the status and headers (a second call with ``exc_info`` wins);
  the ``write()`` callable it returns is wrapped to count legacy writes.
* The app's iterable is returned wrapped in an object whose ``close()`` always closes the app's iterable
  and then records the event, exactly once, even when the server never iterated (HEAD, client gone).
  Bytes are counted as they stream and the time is taken at ``close()``: a streamed body is timed to
  its end. A ``wsgi.file_wrapper`` response is handed back to the server unchanged (so ``sendfile``
  still works): only its ``close`` is hooked, and its size is the ``Content-Length`` header.
* An exception raised by the app, or while iterating its body, is recorded as status 500 with the
  exception's class name in ``error`` and re-raised untouched.
* The customer is, in this order: ``dodo_ingest.annotate(customer_id=...)`` from inside the app,
  :func:`set_customer` (``environ["dodo_ingest.customer_id"]``, which an auth middleware may also set),
  the ``customer_id`` callable ``(environ, status, headers)``, ``fallback_customer_id``. Plain WSGI has
  no notion of a user, so there is no framework default (``REMOTE_USER`` is a login, not a Dodo customer).
* The endpoint comes from ``route_resolver(environ, status_code)``, called after the response; the default
  normalizes id-like segments (see :mod:`dodo_ingest.routes`).
* When another dodo-ingest adapter inside this one (the Flask extension, or a second middleware) also
  sees the request, the innermost one meters it and this one does not: a request is counted once.
  They coordinate through ``environ["dodo_ingest.adapter"]``.

Metering never breaks the app: a failure inside the SDK is logged (logger ``dodo_ingest.wsgi``) and
counted under ``stats().skipped["hook_error"]``, and the response goes on untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import fields, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from dodo_ingest.config import Config
from dodo_ingest.errors import ConfigurationError
from dodo_ingest.ingestion import Ingestion
from dodo_ingest.metering import Meter, RequestFacts, now
from dodo_ingest.routes import RouteResolver, default_route_resolver

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = [
    "ADAPTER_KEY",
    "CUSTOMER_KEY",
    "REQUEST_SETTINGS",
    "DodoIngestMiddleware",
    "adapter_config",
    "request_bytes",
    "request_path",
    "set_customer",
]

logger = logging.getLogger("dodo_ingest.wsgi")

#: environ key holding the customer id set by :func:`set_customer` (or by an upstream auth middleware).
CUSTOMER_KEY = "dodo_ingest.customer_id"
#: environ key naming the adapter that meters the request; the innermost adapter wins.
ADAPTER_KEY = "dodo_ingest.adapter"

#: Settings that shape the request-to-event path; only these may be given along with an ``ingestion``
#: (delivery settings such as ``api_key`` belong to the :class:`Ingestion`).
REQUEST_SETTINGS = frozenset(
    {
        "event_name",
        "enabled",
        "customer_id",
        "fallback_customer_id",
        "include_paths",
        "exclude_paths",
        "exclude_methods",
        "should_meter",
        "extra_metadata",
        "capture_client_ip",
        "capture_user_agent",
    }
)

# The status recorded when the app never called start_response and the server never iterated
# (the client went away first): nginx's "client closed request".
_NO_RESPONSE_STATUS = "499 Client Closed Request"
_FAILED_STATUS = "500 Internal Server Error"


def set_customer(environ: WSGIEnvironment | dict[str, Any], customer_id: str) -> None:
    """Set the Dodo customer of the current request (call it from your app or an auth middleware).

    It wins over the configured ``customer_id`` callable; only ``dodo_ingest.annotate(customer_id=...)``
    wins over it.
    """
    environ[CUSTOMER_KEY] = customer_id


def request_bytes(environ: Mapping[str, Any]) -> int | None:
    """The request body size: ``CONTENT_LENGTH`` when present, 0 without a body, None when unknown
    (a chunked upload)."""
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            return max(int(length), 0)
        except ValueError:
            return None
    return None if environ.get("HTTP_TRANSFER_ENCODING") else 0


def request_path(environ: Mapping[str, Any]) -> str:
    """The request path within the app (``PATH_INFO``), decoded as UTF-8 like frameworks do."""
    path: str = environ.get("PATH_INFO") or "/"
    if not path.isascii():  # PEP 3333 hands the path over as latin-1-decoded bytes
        path = path.encode("latin-1", "replace").decode("utf-8", "replace")
    return path


def adapter_config(
    ingestion: Ingestion | None,
    kwargs: Mapping[str, Any],
    mapping: Mapping[str, Any] | None = None,
    *,
    source: str = "",
) -> tuple[Ingestion, Config]:
    """Validate an adapter's settings; return the :class:`Ingestion` to use and the request-path config.

    Without ``ingestion`` a new one is built from ``kwargs`` (which win over ``mapping``'s
    ``DODO_INGEST_*`` keys, then the environment). With one, only :data:`REQUEST_SETTINGS` may be given;
    they apply to this adapter and the ingestion's batcher is shared.
    """
    if ingestion is None:
        config = Config.load(kwargs, mapping, source=source)
        return Ingestion(config=config), config
    foreign = sorted(set(kwargs) - REQUEST_SETTINGS)
    if foreign:
        raise ConfigurationError(
            f"{foreign[0]!r} cannot be set on an adapter that is given an ingestion; configure it on the "
            f"Ingestion instead (an adapter accepts only {', '.join(sorted(REQUEST_SETTINGS))})"
        )
    given = dict(kwargs)
    given.setdefault("api_key", ingestion.config.api_key or "unused")
    given.setdefault("enabled", ingestion.config.enabled)
    loaded = Config.load(given, mapping, source=source, environ={})
    changes: dict[str, Any] = {}
    for item in fields(Config):
        name = item.name
        if name in REQUEST_SETTINGS and (
            name in kwargs or (mapping is not None and ("DODO_INGEST_" + name.upper()) in mapping)
        ):
            changes[name] = getattr(loaded, name)
    return ingestion, replace(ingestion.config, **changes) if changes else ingestion.config


class DodoIngestMiddleware:
    """Meters every request of a WSGI application as one usage event.

    ``DodoIngestMiddleware(app, ingestion=None, *, route_resolver=None, **settings)``: ``settings`` are the
    keyword names of :data:`dodo_ingest.config.SETTINGS` (``customer_id``, ``exclude_paths``, ...). Without
    ``ingestion`` a new :class:`~dodo_ingest.Ingestion` is built from them (the API key falls back to
    ``DODO_PAYMENTS_API_KEY``); with one, its batcher is shared and only request-path settings may be
    given. Invalid settings raise :class:`~dodo_ingest.errors.ConfigurationError` here.
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
        self.ingestion, config = adapter_config(ingestion, settings)
        self.meter = Meter(self.ingestion, config)
        self.route_resolver: RouteResolver = route_resolver or default_route_resolver

    def __repr__(self) -> str:
        return f"<DodoIngestMiddleware {self.app!r} via {self.ingestion!r}>"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        try:
            meter = self.meter
            method = environ.get("REQUEST_METHOD") or "GET"
            path = request_path(environ)
            if not meter.wants(method, path):
                if meter.config.enabled:
                    meter.skip("filtered")
                return self.app(environ, start_response)
            response = _MeteredResponse(self, environ, start_response, method, path)
            environ[ADAPTER_KEY] = response
        except Exception:
            logger.exception("dodo-ingest could not start metering a request; it is not metered")
            self.meter.skip("hook_error")
            return self.app(environ, start_response)
        try:
            result = self.app(environ, response.start_response)
        except BaseException as exc:
            response.fail(exc)
            response.finish()
            raise
        return response.wrap(result)

    # --- control, for scripts and tests -------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Send every queued event now (see :meth:`Ingestion.flush`)."""
        return self.ingestion.flush(timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Drain and stop the ingestion's batcher (also done at interpreter exit)."""
        return self.ingestion.shutdown(timeout)


class _MeteredResponse:
    """One metered request: the wrapped ``start_response`` and the response iterable the server gets."""

    __slots__ = (
        "_iterator",
        "_token",
        "annotations",
        "bytes_sent",
        "environ",
        "error",
        "finished",
        "headers",
        "inner",
        "inner_close",
        "iterated",
        "method",
        "middleware",
        "path",
        "started",
        "status",
        "upstream_start_response",
        "upstream_write",
    )

    def __init__(
        self,
        middleware: DodoIngestMiddleware,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        method: str,
        path: str,
    ) -> None:
        self.middleware = middleware
        self.environ = environ
        self.upstream_start_response = start_response
        self.method = method
        self.path = path
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.error: str | None = None
        self.bytes_sent: int | None = 0
        self.iterated = False
        self.finished = False
        self.inner: Iterable[bytes] = ()
        self.inner_close: Any = None
        self._iterator: Iterator[bytes] | None = None
        self.upstream_write: Any = None
        self.annotations, self._token = middleware.meter.begin()
        self.started = now()

    # --- the server-facing side ----------------------------------------------------------------------------

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None] | None = None,
    ) -> Any:
        """PEP 3333 ``start_response``: remember status and headers, pass everything through."""
        self.status = status
        self.headers = headers
        if exc_info is None:
            write = self.upstream_start_response(status, headers)
        else:
            write = self.upstream_start_response(status, headers, exc_info)
        self.upstream_write = write
        return self.write

    def write(self, data: bytes) -> Any:
        """The legacy ``write()`` callable, counting the bytes written through it."""
        if self.bytes_sent is not None:
            self.bytes_sent += len(data)
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
                self.bytes_sent = None  # the server sends it (maybe with sendfile): use Content-Length
                return result
        return self

    def __iter__(self) -> Iterator[bytes]:
        self.iterated = True
        try:
            self._iterator = iter(self.inner)
        except BaseException as exc:
            self.fail(exc)
            raise
        return self

    def __next__(self) -> bytes:
        iterator = self._iterator
        if iterator is None:  # a server that calls next() without iter(): be lenient
            iter(self)
            iterator = self._iterator
            assert iterator is not None
        try:
            chunk = next(iterator)
        except StopIteration:
            raise
        except BaseException as exc:
            self.fail(exc)
            raise
        if self.bytes_sent is not None:
            self.bytes_sent += len(chunk)
        return chunk

    def close(self) -> None:
        """Close the app's iterable, then record the event (once); an error from closing is re-raised."""
        try:
            if self.inner_close is not None:
                self.inner_close()
        except BaseException as exc:
            self.fail(exc)
            raise
        finally:
            self.finish()

    # --- recording -----------------------------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """The app raised (or its body did): the request is a 500 with the exception's class name."""
        if self.error is None:
            self.error = type(exc).__name__

    def finish(self) -> None:
        """Record the event; runs once, never raises."""
        if self.finished:
            return
        self.finished = True
        middleware = self.middleware
        meter = middleware.meter
        try:
            Meter.end(self._token)
            environ = self.environ
            if environ.get(ADAPTER_KEY) is not self:
                return  # an adapter inside this one (e.g. the Flask extension) metered the request
            if self.error is not None:
                status = _FAILED_STATUS
            elif self.status is not None:
                status = self.status
            else:
                status = _FAILED_STATUS if self.iterated else _NO_RESPONSE_STATUS
            status_code = int(status[:3])
            headers = self.headers
            try:
                route = middleware.route_resolver(environ, status_code)
            except Exception:
                logger.exception(
                    "dodo-ingest route_resolver %r raised; the request is not metered", middleware.route_resolver
                )
                meter.skip("hook_error")
                return
            response_bytes = self.bytes_sent
            if response_bytes is None:
                response_bytes = _content_length(headers)
            config = meter.config
            facts = RequestFacts(
                method=self.method,
                path=self.path,
                route=route,
                status_code=status_code,
                started=self.started,
                finished=now(),
                request_bytes=request_bytes(environ),
                response_bytes=response_bytes,
                error=self.error,
                client_ip=environ.get("REMOTE_ADDR") if config.capture_client_ip else None,
                user_agent=environ.get("HTTP_USER_AGENT") if config.capture_user_agent else None,
                customer_id=environ.get(CUSTOMER_KEY),
            )
            meter.record(facts, annotations=self.annotations, hook_args=(environ, status, headers))
        except Exception:
            logger.exception("dodo-ingest could not meter a request; it was not counted")
            meter.skip("hook_error")


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    for name, value in headers:
        if name.lower() == "content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
