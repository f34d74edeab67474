"""The Flask extension: one usage event per request of a Flask app, through Flask's own signals.

Per app, :meth:`DodoIngest.init_app` connects three blinker signals with ``sender=app`` (so several apps in
one process are metered independently) and one ``teardown_request`` function:

``request_started``
    start time, route template (``request.url_rule.rule``, blueprint prefix included), the view's
    ``exempt`` / ``meter`` options, and the filters on method and path.
``got_request_exception``
    remembers the class name of an unhandled exception (the request is then a 500).
``request_finished``
    the final status. A streamed body (a generator or iterator returned by the view) is wrapped to
    count its bytes and to see an error raised while it streams, and the event waits for
    ``response.call_on_close``: it is timed to the end of the body. Any other body is complete
    already (a list, a file sent with ``send_file``, an HTTP error such as ``abort(401)`` rendered by
    Werkzeug), and its event is recorded at teardown.
``app.teardown_request`` (a plain hook: about 2 µs cheaper per request than the ``request_tearing_down`` signal)
    records non-streamed responses; and is the fallback for the paths where ``request_finished`` never
    fires (an exception propagated with ``PROPAGATE_EXCEPTIONS``/``TESTING``). It is de-duplicated:
    teardown can fire twice with ``stream_with_context``.

So a request aborted in ``before_request`` (``abort(401)``), a 404 (endpoint ``<unmatched>``) and an
unhandled exception are each metered exactly once.

The customer of a request is, in this order: ``set_customer()`` / ``dodo_ingest.annotate(customer_id=...)``
from inside the request, the ``customer_id`` callable ``(request, response)`` (``response`` is None when
the request failed before one existed), the **Flask default** ``g.dodo_customer_id`` (set it in your
authentication code), then ``fallback_customer_id``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Flask, Request, Response, g, has_app_context, request
from flask.ctx import AppContext, RequestContext
from flask.signals import got_request_exception, request_finished, request_started
from werkzeug.wsgi import ClosingIterator

from dodo_ingest.config import SETTINGS, Config
from dodo_ingest.errors import ConfigurationError
from dodo_ingest.ingestion import Ingestion
from dodo_ingest.metering import Annotations, Meter, RequestFacts, now
from dodo_ingest.stats import Stats
from dodo_ingest.wsgi import ADAPTER_KEY, CUSTOMER_KEY, adapter_config, request_bytes, request_path

__all__ = ["EXTENSION_KEY", "DodoIngest", "ViewOptions", "exempt", "meter", "set_customer"]

logger = logging.getLogger("dodo_ingest.flask")

#: Key of the extension in ``app.extensions``.
EXTENSION_KEY = "dodo_ingest"
#: The attribute the ``exempt`` / ``meter`` decorators set on a view function (or view class).
VIEW_ATTRIBUTE = "_dodo_ingest_view"
#: The Flask default customer: ``g.dodo_customer_id``.
G_CUSTOMER = "dodo_customer_id"

_STATE_KEY = "dodo_ingest.flask"
_SETTING_NAMES = frozenset(s.name for s in SETTINGS)

F = TypeVar("F", bound=Callable[..., Any])


# --- per-view options ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewOptions:
    """What ``exempt`` / ``meter`` said about a view."""

    exempt: bool = False
    event_name: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


def exempt(view: F) -> F:
    """Decorator: requests to this view are not metered (counted as skipped ``filtered``).

    Works above or below ``@app.route``, and on a ``flask.views.View`` class.
    """
    current: ViewOptions = getattr(view, VIEW_ATTRIBUTE, None) or ViewOptions()
    setattr(view, VIEW_ATTRIBUTE, ViewOptions(True, current.event_name, current.metadata))
    return view


def meter(*, event_name: str | None = None, metadata: Mapping[str, Any] | None = None) -> Callable[[F], F]:
    """Decorator: meter this view with its own ``event_name`` and/or extra static ``metadata``.

    ``dodo_ingest.annotate(...)`` from inside the view still wins over these values.
    """
    if event_name is not None and (not isinstance(event_name, str) or not event_name.strip()):
        raise ConfigurationError(f"meter(event_name=...): expected a non-empty string, got {event_name!r}")
    extra = dict(metadata or {})

    def decorate(view: F) -> F:
        current: ViewOptions = getattr(view, VIEW_ATTRIBUTE, None) or ViewOptions()
        merged = {**current.metadata, **extra}
        setattr(view, VIEW_ATTRIBUTE, ViewOptions(current.exempt, event_name or current.event_name, merged))
        return view

    return decorate


def set_customer(customer_id: str) -> None:
    """Set the Dodo customer of the current request (e.g. in your authentication code or a view).

    It wins over the ``customer_id`` callable and over ``g.dodo_customer_id``. Works inside a
    ``stream_with_context`` generator too. Outside a request it raises ``RuntimeError`` like ``request``.
    """
    request.environ[CUSTOMER_KEY] = customer_id


# --- the extension ------------------------------------------------------------------------------------------


class DodoIngest:
    """Meters every request of a Flask app as one Dodo usage event.

    >>> dodo = DodoIngest()                       # settings from app.config["DODO_INGEST_*"]
    >>> dodo.init_app(app)
    >>> DodoIngest(app, customer_id=lambda request, response: g.account.dodo_id)  # or in one line

    Keyword arguments are the settings of :data:`dodo_ingest.config.SETTINGS` and win over
    ``app.config["DODO_INGEST_<NAME>"]``, which wins over the ``DODO_PAYMENTS_*`` environment variables.
    Pass ``ingestion=`` to share an existing :class:`~dodo_ingest.Ingestion` (then only request-path
    settings may be given). Invalid settings raise :class:`~dodo_ingest.errors.ConfigurationError` at
    ``init_app``. One instance can be initialised on several apps; each gets its own configuration.
    """

    exempt = staticmethod(exempt)
    meter = staticmethod(meter)

    def __init__(self, app: Flask | None = None, *, ingestion: Ingestion | None = None, **settings: Any) -> None:
        unknown = sorted(set(settings) - _SETTING_NAMES)
        if unknown:
            raise ConfigurationError(
                f"unknown setting {unknown[0]!r}; valid settings are: {', '.join(sorted(_SETTING_NAMES))}"
            )
        self._settings = settings
        self._ingestion = ingestion
        self._apps: weakref.WeakKeyDictionary[Flask, _AppMeter] = weakref.WeakKeyDictionary()
        if app is not None:
            self.init_app(app)

    def __repr__(self) -> str:
        return f"<DodoIngest apps={[app.name for app in list(self._apps)]}>"

    def init_app(self, app: Flask) -> None:
        """Validate the configuration for ``app`` and start metering its requests."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(f"dodo-ingest is already initialised on app {app.name!r}")
        ingestion, config = adapter_config(self._ingestion, self._settings, app.config, source="app.config: ")
        app_meter = _AppMeter(ingestion, config)
        self._apps[app] = app_meter
        app.extensions[EXTENSION_KEY] = self
        request_started.connect(app_meter.on_started, app)
        got_request_exception.connect(app_meter.on_exception, app)
        request_finished.connect(app_meter.on_finished, app)
        app.teardown_request(app_meter.on_teardown_request)

    # --- access to the ingestion of an app ----------------------------------------------------------------

    def _app_meter(self, app: Flask | None) -> _AppMeter:
        if app is None:
            if has_app_context():
                from flask import current_app

                app = current_app._get_current_object()  # type: ignore[attr-defined]
            elif len(self._apps) == 1:
                return next(iter(self._apps.values()))
            else:
                raise RuntimeError("dodo-ingest is initialised on several apps (or none): pass app=")
        try:
            return self._apps[app]
        except KeyError:
            raise RuntimeError(f"dodo-ingest is not initialised on app {app.name!r}") from None

    def ingestion(self, app: Flask | None = None) -> Ingestion:
        """The :class:`~dodo_ingest.Ingestion` metering ``app`` (default: the current or only app)."""
        return self._app_meter(app).meter.ingestion

    def config(self, app: Flask | None = None) -> Config:
        """The validated request-path configuration for ``app``."""
        return self._app_meter(app).meter.config

    def stats(self, app: Flask | None = None) -> Stats:
        """Counters: accepted, sent, dropped and skipped events (see :class:`~dodo_ingest.Stats`)."""
        return self.ingestion(app).stats()

    def flush(self, timeout: float = 10.0, app: Flask | None = None) -> bool:
        """Send every queued event now; wait at most ``timeout`` seconds."""
        return self.ingestion(app).flush(timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Drain and stop the ingestion of every app (also done at interpreter exit)."""
        done = True
        for app_meter in list(self._apps.values()):
            done = app_meter.meter.ingestion.shutdown(timeout) and done
        return done


# --- one app's receivers and one request's state --------------------------------------------------------------


def _context_vars() -> tuple[ContextVar[AppContext] | None, ContextVar[RequestContext] | None]:
    """The context variables behind ``g`` and ``request`` (Flask 2.3-3.x): no LocalProxy on the hot path.
    A future Flask without them falls back to the public proxies."""
    try:
        from flask.globals import _cv_app, _cv_request
    except ImportError:  # pragma: no cover
        return None, None
    return _cv_app, _cv_request


_APP_CTX, _REQUEST_CTX = _context_vars()


def _current_request() -> Request:
    if _REQUEST_CTX is not None:
        return _REQUEST_CTX.get().request
    return request._get_current_object()  # type: ignore[attr-defined,no-any-return]  # pragma: no cover


def _g_customer() -> str | None:
    """``g.dodo_customer_id`` of the current app context, or None."""
    if _APP_CTX is not None:
        ctx = _APP_CTX.get(None)
        if ctx is None:
            return None
        value = ctx.g.__dict__.get(G_CUSTOMER)
    else:  # pragma: no cover
        if not has_app_context():
            return None
        value = g.get(G_CUSTOMER)
    return value if isinstance(value, str) and value else None


class _AppMeter:
    """The extension's receivers for one app. Holds no reference to the app (signals hold it weakly)."""

    def __init__(self, ingestion: Ingestion, config: Config) -> None:
        self.meter = Meter(ingestion, config)  # this app's request-path settings; the batcher may be shared

    def on_started(self, sender: Flask, **_: Any) -> None:
        try:
            self._begin(sender, _current_request())
        except Exception:
            logger.exception("dodo-ingest could not start metering a request; it is not metered")
            self.meter.skip("hook_error")

    def _begin(self, app: Flask, req: Request) -> _RequestState | None:
        environ = req.environ
        environ[ADAPTER_KEY] = self  # the innermost adapter decides, even when it decides not to meter
        meter = self.meter
        method = req.method
        path = request_path(environ)
        if not meter.wants(method, path):
            if meter.config.enabled:
                meter.skip("filtered")
            return None
        rule = req.url_rule
        options: ViewOptions | None = None
        if rule is not None:
            view = app.view_functions.get(rule.endpoint)
            if view is not None:
                options = getattr(view, VIEW_ATTRIBUTE, None)
                if options is None:
                    options = getattr(getattr(view, "view_class", None), VIEW_ATTRIBUTE, None)
            if options is not None and options.exempt:
                meter.skip("filtered")
                return None
        state = _RequestState(self, req, method, path, rule.rule if rule is not None else None, options)
        environ[_STATE_KEY] = environ[ADAPTER_KEY] = state
        return state

    def _state(self, sender: Flask | None, *, create: bool) -> _RequestState | None:
        req = _current_request()
        state = req.environ.get(_STATE_KEY)
        if state is not None and state.owner is self:
            return state  # type: ignore[no-any-return]
        if create and sender is not None and req.environ.get(ADAPTER_KEY) is not self:
            # request_started never fired (e.g. opening the session failed): meter it from here on.
            return self._begin(sender, req)
        return None

    def on_exception(self, sender: Flask, exception: BaseException | None = None, **_: Any) -> None:
        try:
            state = self._state(sender, create=True)
            if state is not None and exception is not None:
                state.fail(exception)
        except Exception:
            logger.exception("dodo-ingest could not note an exception; ignored")

    def on_finished(self, sender: Flask, response: Response | None = None, **_: Any) -> None:
        try:
            state = self._state(sender, create=True)
            if state is not None and response is not None:
                state.finish_response(response)
        except Exception:
            logger.exception("dodo-ingest could not meter a response; it is not metered")
            self.meter.skip("hook_error")

    def on_teardown_request(self, exc: BaseException | None = None) -> None:
        """The app's ``teardown_request`` function (runs even when ``request_finished`` never fired)."""
        try:
            state = self._state(None, create=False)
            if state is not None:
                state.teardown(exc)
        except Exception:
            logger.exception("dodo-ingest could not meter a request at teardown; it is not metered")
            self.meter.skip("hook_error")


class _RequestState:
    """What the extension knows about one request in progress."""

    __slots__ = (
        "annotations",
        "deferred",
        "done",
        "error",
        "g_customer",
        "method",
        "owner",
        "path",
        "request",
        "response",
        "response_bytes",
        "route",
        "started",
        "status_code",
        "token",
    )

    def __init__(
        self, owner: _AppMeter, req: Request, method: str, path: str, route: str | None, options: ViewOptions | None
    ) -> None:
        self.owner = owner
        self.request = req
        self.method = method
        self.path = path
        self.route = route
        self.response: Response | None = None
        self.status_code = 500
        self.response_bytes: int | None = None
        self.error: str | None = None
        self.deferred = False
        self.done = False
        self.g_customer: str | None = None
        self.annotations: Annotations
        self.annotations, token = owner.meter.begin()
        self.token: Any = token
        if options is not None:
            if options.event_name:
                self.annotations.event_name = options.event_name
            if options.metadata:
                self.annotations.metadata.update(options.metadata)
        self.started = now()

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = type(exc).__name__

    def finish_response(self, response: Response) -> None:
        """``request_finished``: the final response exists (its body may still have to stream)."""
        self.response = response
        self.status_code = response.status_code
        if self.method == "HEAD":
            self.response_bytes = 0
        elif (
            response.is_streamed
            and not response.direct_passthrough
            and not isinstance(response.response, ClosingIterator)
        ):
            self.response_bytes = 0
            response.response = _StreamedBody(response.response, self)
            response.call_on_close(self.on_close)
            self.deferred = True
        else:
            body = response.response
            if type(body) is list:  # the common case: a materialized body (cheaper than parsing headers)
                self.response_bytes = sum(map(len, body))
            else:
                self.response_bytes = response.content_length

    def teardown(self, exc: BaseException | None) -> None:
        """Teardown (may run twice): record unless the body is still streaming."""
        if self.token is not None:
            Meter.end(self.token)
            self.token = None
        if self.done:
            return
        if self.deferred:
            self.g_customer = _g_customer()  # the app context is gone when the stream ends
            return
        if self.response is None:  # request_finished never fired: the request failed
            self.status_code = 500
            if exc is not None:
                self.fail(exc)
        self.record()

    def on_close(self) -> None:
        """``response.call_on_close``: the streamed body is finished (or the client went away)."""
        if not self.done:
            self.record()

    def default_customer(self) -> str | None:
        return self.g_customer if self.deferred else _g_customer()

    def record(self) -> None:
        self.done = True
        meter = self.owner.meter
        try:
            req = self.request
            environ = req.environ
            if environ.get(ADAPTER_KEY) is not self:
                return  # another dodo-ingest adapter inside this app metered it
            config = meter.config
            facts = RequestFacts(
                method=self.method,
                path=self.path,
                route=self.route,
                status_code=500 if self.error is not None else self.status_code,
                started=self.started,
                finished=now(),
                request_bytes=request_bytes(environ),
                response_bytes=self.response_bytes,
                error=self.error,
                client_ip=req.remote_addr if config.capture_client_ip else None,
                user_agent=environ.get("HTTP_USER_AGENT") if config.capture_user_agent else None,
                customer_id=environ.get(CUSTOMER_KEY),
            )
            meter.record(
                facts,
                annotations=self.annotations,
                hook_args=(req, self.response),
                default_customer=self.default_customer,
            )
        except Exception:
            logger.exception("dodo-ingest could not meter a request; it was not counted")
            meter.skip("hook_error")


class _StreamedBody:
    """A streamed response body: counts the bytes as they go out and notes an error raised mid-stream."""

    __slots__ = ("inner", "state")

    def __init__(self, inner: Iterable[Any], state: _RequestState) -> None:
        self.inner = inner
        self.state = state

    def __iter__(self) -> Iterator[Any]:
        state = self.state
        try:
            for chunk in self.inner:
                if state.response_bytes is not None:
                    state.response_bytes += len(chunk) if isinstance(chunk, bytes) else len(chunk.encode())
                yield chunk
        except Exception as exc:
            state.fail(exc)
            raise

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is None:
            return
        try:
            close()
        except BaseException as exc:
            # Response.close() stops here, before its call_on_close callbacks: record now.
            self.state.fail(exc)
            self.state.on_close()
            raise
