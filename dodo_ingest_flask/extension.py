"""The Flask extension: one usage event per request of a Flask app, through three of Flask's own hooks.

Per app, :meth:`DodoIngest.init_app` registers three functions, each a thin translation for the core's request
lifecycle (:mod:`dodo_ingest.request`). They are plain hooks rather than blinker signals: a signal with a
receiver costs about 5 µs per send, a hook about 0.4 µs, and the hooks see the same moments:

``url_value_preprocessor``
    runs first in every request, before any ``before_request`` function (so a request that your
    authentication aborts with ``abort(401)`` is metered too, whatever the registration order): filters,
    start time, route template (``request.url_rule.rule``, blueprint prefix included), the view's
    ``exempt`` / ``meter`` options (or its blueprint's).
``after_request``
    the response exists and the request and app contexts still do: the user's hooks run now
    (``should_meter``, the customer resolver, the metadata hook, ``g.dodo_customer_id``). A streamed body (a
    generator returned by the view) is counted as it goes out and its event waits for
    ``response.call_on_close``: it is timed to the end of the body, and at that point only the bytes and the
    duration are added (the contexts may be gone by then).
``teardown_request``
    runs after every ``after_request`` function, so the status and size are those of the final response;
    it gets the exception that ended the request (recorded as a 500 with its class name) and also covers
    the paths where no response was made (an exception propagated with ``PROPAGATE_EXCEPTIONS``/``TESTING``).

So a request aborted in ``before_request`` (``abort(401)``), a 404 (endpoint ``<unmatched>``) and an
unhandled exception are each metered exactly once. The request's state lives on the request object.

**Rate limits** (``rate_limits=``, or a view's ``@dodo.limit(...)``) are checked after every ``before_request``
function, the app's and the blueprints', whichever was registered first, and just before the view: Flask
looks the view up in ``app.view_functions`` only then, so on an endpoint's first request the
``url_value_preprocessor`` replaces its entry there (public API: a plain dict of Flask's) with the view
wrapped by the check; no Flask signal or hook sits at that moment, and a ``before_request`` appended last
would still run before the blueprints' own. With rate limiting off nothing is wrapped. A rejection raises
:class:`RateLimitExceeded` (a ``TooManyRequests``), whose response is the JSON 429, so
``@app.errorhandler(429)`` can answer instead; ``after_request`` adds the ``RateLimit`` fields.

The customer of a request is, in this order: ``set_customer()`` / ``dodo_ingest.annotate(customer_id=...)``
from inside the request, the ``customer_resolver`` callable ``(request, response)`` (``response`` is None
when the request failed before one existed), the **Flask default** ``g.dodo_customer_id`` (set it in your
authentication code), then ``fallback_customer_id``.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Blueprint, Flask, Request, Response, current_app, g, request
from werkzeug.exceptions import HTTPException, ServiceUnavailable, TooManyRequests
from werkzeug.wsgi import ClosingIterator

from dodo_ingest.config import RequestConfig, check_names
from dodo_ingest.errors import ConfigurationError
from dodo_ingest.ingestion import Ingestion, adapter_ingestion
from dodo_ingest.request import ADAPTER_KEY, CUSTOMER_KEY, DECLINED, Meter, MeteredRequest, ViewLimit, counted
from dodo_ingest.stats import Stats

if TYPE_CHECKING:
    from dodo_ingest.ratelimit import Decision, Limiter, LimitState

__all__ = [
    "EXTENSION_KEY",
    "DodoIngest",
    "RateLimitExceeded",
    "RateLimitUnavailable",
    "ViewOptions",
    "exempt",
    "limit",
    "meter",
    "set_customer",
]

#: Key of the extension in ``app.extensions``.
EXTENSION_KEY = "dodo_ingest"
#: The attribute the ``exempt`` / ``meter`` decorators set on a view function (or view class).
VIEW_ATTRIBUTE = "_dodo_ingest_view"
#: The Flask default customer: ``g.dodo_customer_id``.
G_CUSTOMER = "dodo_customer_id"
#: The attribute of the request object holding its :class:`~dodo_ingest.request.MeteredRequest`.
REQUEST_ATTRIBUTE = "_dodo_ingest"
#: The attribute of the request object holding its (complete, not streamed) response until teardown.
RESPONSE_ATTRIBUTE = "_dodo_ingest_response"
#: The attribute marking a view wrapped to check rate limits first (its value: the app's receivers).
GUARD_ATTRIBUTE = "_dodo_ingest_guard"

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


# --- per-view options ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewOptions:
    """What ``exempt`` / ``meter`` / ``limit`` said about a view."""

    exempt: bool = False
    event_name: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    limit: ViewLimit | None = None


def exempt(view: F) -> F:
    """Decorator: requests to this view are not metered (counted as skipped ``filtered``) nor rate limited.

    Works above or below ``@app.route``, and on a ``flask.views.View`` class. To exempt a whole blueprint,
    use :meth:`DodoIngest.exempt`.
    """
    current: ViewOptions = getattr(view, VIEW_ATTRIBUTE, None) or ViewOptions()
    setattr(view, VIEW_ATTRIBUTE, replace(current, exempt=True))
    return view


def limit(limits: Any = None, *, cost: int = 1, scope: str | None = None) -> Callable[[F], F]:
    """Decorator: this view's own rate limit, and the units one call consumes (and is billed: ``cost``).

    ``@dodo.limit("10/minute", cost=5)``: a call consumes 5 units of the view's ``10/minute`` (counted per
    customer and per ``scope``, by default the endpoint name) and 5 of the customer's ``rate_limits``; its
    event says ``"cost": 5``. ``limits`` may also be a list or a callable ``(customer_id) -> limits | None``;
    ``@dodo.limit(cost=5)`` only sets the cost. Works above or below ``@app.route``.
    """
    parsed = ViewLimit.parse(limits, cost=cost, scope=scope, where="limit")

    def decorate(view: F) -> F:
        current: ViewOptions = getattr(view, VIEW_ATTRIBUTE, None) or ViewOptions()
        setattr(view, VIEW_ATTRIBUTE, replace(current, limit=parsed))
        return view

    return decorate


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
        setattr(view, VIEW_ATTRIBUTE, replace(current, event_name=event_name or current.event_name, metadata=merged))
        return view

    return decorate


def set_customer(customer_id: str) -> None:
    """Set the Dodo customer of the current request (e.g. in your authentication code or a view).

    It wins over the ``customer_resolver`` callable and over ``g.dodo_customer_id``. Works inside a
    ``stream_with_context`` generator too. Outside a request it raises ``RuntimeError`` like ``request``.
    """
    request.environ[CUSTOMER_KEY] = customer_id


# --- the extension ------------------------------------------------------------------------------------------


class DodoIngest:
    """Meters every request of a Flask app as one Dodo usage event.

    >>> dodo = DodoIngest()                       # settings from app.config["DODO_INGEST_*"]
    >>> dodo.init_app(app)
    >>> DodoIngest(app, customer_resolver=lambda request, response: g.account.dodo_id)  # or in one line

    Keyword arguments are the settings of :data:`dodo_ingest.config.SETTINGS` and win over
    ``app.config["DODO_INGEST_<NAME>"]``, which wins over the ``DODO_PAYMENTS_*`` environment variables.
    Pass ``ingestion=`` to share an existing :class:`~dodo_ingest.Ingestion` (then only request-path
    settings may be given); otherwise apps with the same delivery settings share one. Invalid settings raise
    :class:`~dodo_ingest.errors.ConfigurationError` at ``init_app``. One instance can be initialised on
    several apps; each gets its own configuration.
    """

    meter = staticmethod(meter)
    limit = staticmethod(limit)

    def __init__(self, app: Flask | None = None, *, ingestion: Ingestion | None = None, **settings: Any) -> None:
        check_names(settings)  # fail fast on a misspelt name, before any app exists
        self._settings = settings
        self._ingestion = ingestion
        self._apps: weakref.WeakKeyDictionary[Flask, _AppMeter] = weakref.WeakKeyDictionary()
        self._exempt_blueprints: set[str] = set()
        if app is not None:
            self.init_app(app)

    def __repr__(self) -> str:
        return f"<DodoIngest apps={[app.name for app in list(self._apps)]}>"

    def init_app(self, app: Flask) -> None:
        """Validate the configuration for ``app`` and start metering its requests (again: a no-op)."""
        if app in self._apps:
            return
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(f"another dodo-ingest extension is already initialised on app {app.name!r}")
        ingestion, config = adapter_ingestion(self._ingestion, self._settings, app.config, source="app.config: ")
        app_meter = _AppMeter(Meter(ingestion, config), self._exempt_blueprints)
        self._apps[app] = app_meter
        app.extensions[EXTENSION_KEY] = self
        # Plain hooks, not blinker signals: a signal with a receiver costs about 5 µs per send.
        app.url_value_preprocessor(app_meter.on_url_values)
        app.after_request(app_meter.on_response)
        app.teardown_request(app_meter.on_teardown)

    def exempt(self, target: T) -> T:
        """Do not meter a view function, a view class, or every view of a :class:`~flask.Blueprint`.

        Usable as a decorator on views (above or below ``@app.route``) and called on blueprints:
        ``dodo.exempt(admin_blueprint)``.
        """
        if isinstance(target, Blueprint):
            self._exempt_blueprints.add(target.name)
            return target
        return exempt(target)  # type: ignore[type-var]

    # --- access to the ingestion of an app ----------------------------------------------------------------

    def _app_meter(self, app: Flask | None) -> _AppMeter:
        if app is None:
            from flask import current_app, has_app_context

            if has_app_context():
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

    def config(self, app: Flask | None = None) -> RequestConfig:
        """The validated request-path configuration for ``app``."""
        return self._app_meter(app).meter.config

    def limiter(self, app: Flask | None = None) -> Limiter | None:
        """The customers' rate limiter of ``app`` (None when ``rate_limits`` is unset): ``.stats()``..."""
        return self._app_meter(app).meter.limiter

    def usage(self, customer_id: str, app: Flask | None = None) -> tuple[LimitState, ...]:
        """A customer's limits as they stand (used, remaining, seconds to reset), to show in your own UI;
        consumes nothing. Empty when rate limiting is off; raises the store's error if it is down."""
        return self._app_meter(app).meter.usage(customer_id)

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


# --- rate-limit rejections ------------------------------------------------------------------------------------


class RateLimitExceeded(TooManyRequests):
    """The rate limiter rejected the request (429), raised just before the view.

    Its response is the JSON 429 (or ``rate_limit_response``'s); ``@app.errorhandler(429)`` or
    ``@app.errorhandler(RateLimitExceeded)`` replaces it, with ``error.decision`` at hand. The ``RateLimit``
    fields and ``Retry-After`` are added to whatever is answered, where it has none of its own.
    """

    def __init__(self, decision: Decision, response: Response | None = None) -> None:
        super().__init__(str(decision.body()["detail"]), response=response)
        self.decision = decision


class RateLimitUnavailable(ServiceUnavailable):
    """The rate-limit store is down and ``rate_limit_fail_open`` is False (503); see :class:`RateLimitExceeded`."""

    def __init__(self, decision: Decision, response: Response | None = None) -> None:
        super().__init__(str(decision.body()["detail"]), response=response)
        self.decision = decision


# --- one app's receivers ------------------------------------------------------------------------------------


def _add_fields(response: Response, fields: list[tuple[str, str]]) -> None:
    """Add the rate-limit fields the response does not have yet: the app's own (an errorhandler's
    ``Retry-After``) win. One pass over the names (``name in headers`` costs an exception per miss)."""
    if not fields:
        return
    headers = response.headers
    taken = {name.lower() for name, _ in headers if name[:1] in "RrXx"}
    for name, value in fields:
        if not taken or name.lower() not in taken:
            headers.add(name, value)


def _g_customer() -> Any:
    """``g.dodo_customer_id`` of the current app context, or None."""
    return g.get(G_CUSTOMER)


class _AppMeter:
    """The extension's hooks for one app. Holds no reference to the app (the extension keys it weakly)."""

    def __init__(self, meter: Meter, exempt_blueprints: set[str]) -> None:
        self.meter = meter
        self.exempt_blueprints = exempt_blueprints
        #: The options of each endpoint's view, looked up once (views are registered before the first request).
        self._options: dict[str, ViewOptions | None] = {}

    def on_url_values(self, endpoint: str | None, values: dict[str, Any] | None) -> None:
        """A ``url_value_preprocessor``: the first hook of every request, before any ``before_request``."""
        try:
            self._begin(request._get_current_object())  # type: ignore[attr-defined]
        except Exception:
            self.meter.internal_error()

    def _view_options(self, endpoint: str) -> ViewOptions | None:
        try:
            return self._options[endpoint]
        except KeyError:
            app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
            view = app.view_functions.get(endpoint)
            options = getattr(view, VIEW_ATTRIBUTE, None) if view is not None else None
            if options is None and view is not None:
                options = getattr(getattr(view, "view_class", None), VIEW_ATTRIBUTE, None)
            limited = self.meter.limiter is not None or (options is not None and options.limit is not None)
            if view is not None and limited and not (options is not None and options.exempt):
                self._guard(app, endpoint, view, options)
            self._options[endpoint] = options
            return options

    def _begin(self, req: Request) -> MeteredRequest | None:
        setattr(req, REQUEST_ATTRIBUTE, False)  # tried: the fallbacks below never begin a request twice
        environ = req.environ
        rule = req.url_rule
        options = self._view_options(rule.endpoint) if rule is not None else None
        if (options is not None and options.exempt) or (
            self.exempt_blueprints and not self.exempt_blueprints.isdisjoint(req.blueprints)
        ):
            environ[ADAPTER_KEY] = DECLINED  # the innermost adapter decides, even when it decides not to meter
            self.meter.batcher.counters.skip("filtered")
            return None
        metered = self.meter.begin_environ(environ)
        if metered is None:
            return None
        metered.route = rule.rule if rule is not None else None
        if options is not None:
            metered.event_name = options.event_name
            if options.metadata:
                metered.annotations.metadata.update(options.metadata)
        setattr(req, REQUEST_ATTRIBUTE, metered)
        return metered

    # --- the rate-limit check: after every before_request function, just before the view ------------------

    def _guard(self, app: Flask, endpoint: str, view: Callable[..., Any], options: ViewOptions | None) -> None:
        """Make the endpoint's view check the rate limits first (once per endpoint, on its first request, when
        its options are looked up).

        Flask runs ``before_request`` functions (the app's, then the blueprints') and then looks the view up in
        ``app.view_functions``: a view wrapped there runs its check after every one of them, whichever was
        registered first, and no signal or hook of Flask sits at that moment."""
        if getattr(view, GUARD_ATTRIBUTE, None) is self:
            return
        view_limit = options.limit if options is not None else None
        app.view_functions[endpoint] = self._guarded(app, view, endpoint, view_limit)

    def _guarded(
        self, app: Flask, view: Callable[..., Any], endpoint: str, view_limit: ViewLimit | None
    ) -> Callable[..., Any]:
        if view_limit is None:
            scope, cost, limits = "", 1, None
        else:
            scope, cost, limits = view_limit.scope or endpoint, view_limit.cost, view_limit.limits
        check = self._check
        run = app.ensure_sync(view)  # an async view runs as Flask would run it (the view itself if it is sync)

        @functools.wraps(view)
        def guarded(**kwargs: Any) -> Any:
            check(scope, cost, limits)
            return run(**kwargs)

        setattr(guarded, GUARD_ATTRIBUTE, self)
        return guarded

    def _check(self, scope: str, cost: int, limits: Any) -> None:
        """Check the current request; raise :class:`RateLimitExceeded` (or :class:`RateLimitUnavailable`)."""
        try:
            req: Request = request._get_current_object()  # type: ignore[attr-defined]
            metered = getattr(req, REQUEST_ATTRIBUTE, None)
            if not isinstance(metered, MeteredRequest) or metered.meter is not self.meter:
                return  # not metered (filtered): not limited either
            decision = metered.limit((req,), _g_customer, scope=scope, cost=cost, limits=limits)
            if decision is None or decision.allowed:
                return
            error = self._rejection(req, metered, decision)
        except Exception:
            self.meter.internal_error()
            return
        raise error

    def _rejection(self, req: Request, metered: MeteredRequest, decision: Decision) -> HTTPException:
        status, headers, body = metered.rejection()
        response: Response = current_app.response_class(body, status=status, headers=headers)
        hook = self.meter.config.rate_limit_response
        if hook is not None:
            try:
                response = current_app.make_response(hook(req, decision))
            except Exception:
                self.meter.hook_failed(hook)
        error_class = RateLimitUnavailable if status == 503 else RateLimitExceeded
        return error_class(decision, response)

    def _metered(self, req: Request, create: bool) -> MeteredRequest | None:
        metered = getattr(req, REQUEST_ATTRIBUTE, None)
        if metered is None and create:
            # The url_value_preprocessor did not run (e.g. opening the session failed): meter it from here on.
            metered = self._begin(req)
        return metered if isinstance(metered, MeteredRequest) and metered.meter is self.meter else None

    def on_response(self, response: Response) -> Response:
        """An ``after_request`` function: the response exists and so do the request and app contexts, so the
        user's hooks run now. The event itself is recorded at teardown (or at the end of a streamed body)."""
        metered = None
        try:
            req: Request = request._get_current_object()  # type: ignore[attr-defined]
            metered = self._metered(req, create=True)
            if metered is None or metered.resolved:
                return response
            metered.status_code = response.status_code
            if metered.limit_check is not None:
                _add_fields(response, metered.rate_limit_headers())
            metered.resolve((req, response), _g_customer)
            streamed = (
                response.is_streamed
                and not response.direct_passthrough
                and not isinstance(response.response, ClosingIterator)
                and metered.method != "HEAD"
            )
            if streamed:
                response.response = counted(response.response, metered)
                response.call_on_close(metered.finish)
            setattr(req, RESPONSE_ATTRIBUTE, None if streamed else response)
        except Exception:
            if metered is not None:
                metered.broke()
            else:
                self.meter.internal_error()
        return response

    def on_teardown(self, exc: BaseException | None = None) -> None:
        """The app's ``teardown_request`` function: runs after every ``after_request`` function (so the response
        is final), with the exception that ended the request if any, and even when no response was made."""
        metered = None
        try:
            req: Request = request._get_current_object()  # type: ignore[attr-defined]
            metered = self._metered(req, create=False)
            if metered is None or metered.done:
                return
            if exc is not None:
                metered.fail(exc)
            if not metered.resolved:  # no response was made: the request failed
                metered.status_code = 500
                metered.response_bytes = None
                metered.resolve((req, None), _g_customer)
                metered.finish()
                return
            response: Response | None = getattr(req, RESPONSE_ATTRIBUTE, None)
            if response is None:  # a streamed body: recorded when it ends
                metered.close_context()
                return
            metered.status_code = response.status_code
            body = response.response
            if type(body) is list:  # the common case: a materialized body (cheaper than parsing headers)
                for chunk in body:
                    metered.count(chunk)
            else:
                metered.response_bytes = response.content_length
            metered.finish()
        except Exception:
            if metered is not None:
                metered.broke()
            else:
                self.meter.internal_error()
