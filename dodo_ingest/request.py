"""The one request lifecycle every adapter (WSGI, Flask, Django) uses: from a request to its one event.

An adapter only translates its framework; everything else happens here, once:

1. :meth:`Meter.begin` applies the filters (methods, paths, CORS preflights), claims the request for this
   adapter (the **innermost** adapter that sees a request meters it: each one writes itself under
   :data:`ADAPTER_KEY` in the WSGI environ, or the request's own dict, when it begins; only the one found
   there at the end records), opens the annotations that :func:`annotate` writes to, and starts the clock.
2. Before the view, when rate limits are configured (:attr:`Meter.limiter`, or a view's own
   :class:`ViewLimit`): :meth:`MeteredRequest.limit` / :meth:`~MeteredRequest.alimit` consume the request's
   ``cost`` from its customer's limits, **once per request** (the :class:`LimitCheck` is kept under
   :data:`LIMIT_KEY`, so an inner adapter reuses an outer one's). The adapter answers a rejection itself
   (:meth:`~MeteredRequest.rejection`, 429) and adds :meth:`~MeteredRequest.rate_limit_headers` to responses.
   With rate limiting off this step costs one attribute check.
3. While the request runs: :meth:`MeteredRequest.fail` notes an exception (the first one wins; the request
   is then a 500), :meth:`MeteredRequest.count` adds response bytes and never raises, whatever a body yields.
4. :meth:`MeteredRequest.resolve` runs the user's hooks (``should_meter``, the customer resolver, the metadata
   hook) **while the framework's request context still exists** — for a streamed body that is before the body
   starts. A hook that raises is logged (rate-limited) and counted in ``stats().hook_errors``; the request is
   still billed with what is known.
5. :meth:`MeteredRequest.finish` (once) takes the end time and the byte count and queues the event. The
   metadata dict, its validation, the event id and the JSON are built later on the flush thread
   (:class:`RequestEvent`): the request thread only hands over the facts. With rate limiting on, it also
   makes the **quota count what is billed**: a rejected request is not billed (``skipped["rate_limited"]``,
   or sent as ``rate_limit_rejected_event``); the event carries ``cost`` (the units the check consumed);
   a request checked but not billed (``should_meter``, exempt, no customer) gives its units back, one billed
   without a check (a 404, a 401 from authentication: it never reached the view) or billed to another
   customer is added to that customer's billing periods (:meth:`Meter.settle`, ``Limiter.adjust``).

The customer is, in this order: ``annotate(customer_id=...)``, ``set_customer()`` (:data:`CUSTOMER_KEY`), the
``customer_resolver`` hook, the framework's default (Flask ``g.dodo_customer_id``, Django
``request.user.dodo_customer_id``), ``fallback_customer_id``. It must be a non-empty ``str``: anything else
(``b"cus_1"``, ``42``) is not billed as its ``str()`` but skipped and counted as ``invalid_customer``.
The customer of the rate-limit check, before the view, is: ``annotate`` / ``set_customer()``, the
``rate_limit_key`` hook (it sees only the request), the framework's default, ``fallback_customer_id``; when
no other source names one after the view, the request is billed to the customer it was checked for.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import logging
import threading
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dodo_ingest.batcher import LazyMetadata
from dodo_ingest.config import UNMATCHED_ENDPOINT, RequestConfig
from dodo_ingest.stats import RateLimitedLog

if TYPE_CHECKING:
    import asyncio

    from dodo_ingest.ingestion import Ingestion
    from dodo_ingest.ratelimit import Decision, Limiter

logger = logging.getLogger("dodo_ingest.request")

#: Key (in the WSGI environ, or the request's dict) naming the adapter that meters the request.
ADAPTER_KEY = "dodo_ingest.adapter"
#: Key holding a customer id set with ``set_customer`` (or by an upstream auth middleware).
CUSTOMER_KEY = "dodo_ingest.customer_id"
#: What an adapter that declined a request (filters) leaves under :data:`ADAPTER_KEY`.
DECLINED = "declined"
#: Key holding the request's :class:`LimitCheck`: a request is checked once, whichever adapters see it.
LIMIT_KEY = "dodo_ingest.rate_limit"

#: The clock of request timings.
now = time.perf_counter

_build_lock = threading.Lock()


class Annotations:
    """What the application said about the current request from inside the view."""

    __slots__ = ("customer_id", "event_name", "exempt", "metadata")

    def __init__(self) -> None:
        self.customer_id: Any = None
        self.event_name: str | None = None
        self.metadata: dict[str, Any] = {}
        self.exempt = False

    def __repr__(self) -> str:
        return (
            f"Annotations(customer_id={self.customer_id!r}, event_name={self.event_name!r}, "
            f"metadata={self.metadata!r}, exempt={self.exempt!r})"
        )


_current: contextvars.ContextVar[Annotations | None] = contextvars.ContextVar("dodo_ingest_request", default=None)


def annotate(
    *,
    customer_id: str | None = None,
    event_name: str | None = None,
    exempt: bool | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> bool:
    """Tell the metering adapter about the current request, from inside a view.

    ``customer_id`` wins over every other way of finding the customer; ``event_name`` replaces the
    configured one for this request; ``metadata`` is added to the event; ``exempt=True`` means the request
    is not metered. Returns False (and does nothing) when no metered request is in progress.
    """
    current = _current.get()
    if current is None:
        return False
    if customer_id is not None:
        current.customer_id = customer_id
    if event_name is not None:
        current.event_name = event_name
    if exempt is not None:
        current.exempt = exempt
    if metadata:
        current.metadata.update(metadata)
    return True


def request_bytes(content_length: Any, chunked: bool) -> int | None:
    """The request body size from ``Content-Length``; 0 without a body; None when unknown (a chunked upload)."""
    if content_length:
        try:
            return max(int(content_length), 0)
        except (TypeError, ValueError):
            return None
    return None if chunked else 0


def request_path(environ: Mapping[str, Any]) -> str:
    """The request path within the app (``PATH_INFO`` of a WSGI environ), decoded as UTF-8 like frameworks do."""
    path: str = environ.get("PATH_INFO") or "/"
    if not path.isascii():  # PEP 3333 hands the path over as latin-1-decoded bytes
        path = path.encode("latin-1", "replace").decode("utf-8", "replace")
    return path


def chunk_size(chunk: Any) -> int | None:
    """Bytes in one chunk of a body (bytes, bytearray, memoryview, str); None if it has no size we can tell."""
    if type(chunk) is bytes:
        return len(chunk)
    try:
        if isinstance(chunk, memoryview):
            return chunk.nbytes
        if isinstance(chunk, str):
            return len(chunk.encode("utf-8", "replace"))
        return len(chunk)
    except Exception:
        return None


class RequestEvent(LazyMetadata):
    """The facts of one finished request; the flush thread turns them into the event's metadata (or, with
    ``rollup_interval``, the batcher folds them into a rollup)."""

    rollable = True

    __slots__ = (
        "annotated",
        "client_ip",
        "cost",
        "duration",
        "endpoint",
        "error",
        "extra",
        "method",
        "request_bytes",
        "response_bytes",
        "status_code",
        "user_agent",
    )

    def __init__(self, request: MeteredRequest, duration: float) -> None:
        self.endpoint = request.route or UNMATCHED_ENDPOINT
        self.method = request.method
        self.status_code = 500 if request.error is not None else request.status_code
        self.duration = duration
        self.request_bytes = request.request_bytes
        self.response_bytes = 0 if request.method == "HEAD" else request.response_bytes
        self.error = request.error
        self.client_ip = request.client_ip
        self.user_agent = request.user_agent
        self.annotated = request.annotations.metadata
        self.extra = request.extra
        self.cost: int | None = None

    def build(self) -> dict[str, Any]:
        """Dodo's API-gateway metadata; the user's keys never overwrite the built-in ones."""
        metadata: dict[str, Any] = {
            "endpoint": self.endpoint,
            "method": self.method,
            "status_code": self.status_code,
            "response_time_ms": round(self.duration * 1000.0, 3),
        }
        if self.request_bytes is not None:
            metadata["request_bytes"] = self.request_bytes
        if self.response_bytes is not None:
            metadata["response_bytes"] = self.response_bytes
        if self.error:
            metadata["error"] = self.error
        if self.client_ip:
            metadata["client_ip"] = self.client_ip
        if self.user_agent:
            metadata["user_agent"] = self.user_agent
        if self.cost is not None:
            metadata["cost"] = self.cost
        for extra in (self.annotated, self.extra):
            if extra:
                for key, value in extra.items():
                    metadata.setdefault(key, value)
        return metadata


class LimitCheck:
    """One request's rate-limit check: whose units, which limits, how many, what was decided."""

    __slots__ = ("at", "cost", "customer", "decision", "limiter", "limits", "scope")

    def __init__(
        self, limiter: Limiter, customer: str, scope: str, cost: int, limits: Any, at: float, decision: Decision
    ) -> None:
        self.limiter = limiter
        self.customer = customer
        self.scope = scope
        self.cost = cost
        self.limits = limits
        self.at = at
        self.decision = decision

    def __repr__(self) -> str:
        return f"<LimitCheck {self.customer!r} scope={self.scope!r} cost={self.cost} {self.decision.reason}>"


@dataclass(frozen=True)
class ViewLimit:
    """A view's own rate limit and cost (``@dodo.limit(...)`` in Flask, ``@dodo_ingest_django.limit(...)``).

    ``limits`` (parsed ``"10/minute"``, a list, or a callable ``(customer_id) -> limits | None``; None: only the
    customer's limits) are counted per ``scope`` (default: the view); ``cost`` units of every limit that
    applies, the customer's included, are consumed by one call, and billed (the event's ``cost``).
    """

    limits: Any = None
    cost: int = 1
    scope: str | None = None

    @classmethod
    def parse(cls, limits: Any = None, *, cost: int = 1, scope: str | None = None, where: str = "limit") -> ViewLimit:
        """Validate a decorator's arguments now (an import-time error, naming ``where``)."""
        from dodo_ingest.errors import ConfigurationError

        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise ConfigurationError(f"{where}(cost=...): expected a whole number of units >= 1, got {cost!r}")
        if scope is not None and (not isinstance(scope, str) or not scope.strip()):
            raise ConfigurationError(f"{where}(scope=...): expected a non-empty string, got {scope!r}")
        if limits is not None:
            from dodo_ingest.config import _Invalid
            from dodo_ingest.ratelimit.settings import parse_rate_limits

            try:
                limits = parse_rate_limits(limits)
            except _Invalid as exc:
                raise ConfigurationError(f"{where}({limits!r}): {exc}") from None
        return cls(limits, cost, scope)


def build_limiter(config: RequestConfig, *, customer_limits: bool = True) -> Limiter:
    """The :class:`~dodo_ingest.ratelimit.Limiter` of these request settings (``customer_limits=False``: only
    per-view limits). Raises :class:`~dodo_ingest.errors.ConfigurationError` without the ``ratelimit`` extra."""
    from dodo_ingest.errors import ConfigurationError

    try:
        from dodo_ingest.ratelimit import Limiter
    except ImportError as exc:
        raise ConfigurationError(
            f"rate limiting needs the `limits` package ({exc}); install it with: pip install 'dodo-ingest[ratelimit]'"
        ) from None
    names = (
        "rate_limit_storage",
        "rate_limit_strategy",
        "rate_limit_fail_open",
        "rate_limit_timeout",
        "rate_limit_billing_anchor",
    )
    settings = {name: getattr(config, name) for name in names}
    settings["rate_limits"] = config.rate_limits if customer_limits else None
    return Limiter.from_config(settings)


class Meter:
    """One adapter's request path: its request settings on an :class:`Ingestion`'s shared batcher.

    :attr:`limiter` is the customers' rate limiter when ``rate_limits`` is set, else None (then a request pays
    nothing for rate limiting but this one attribute check).
    """

    def __init__(self, ingestion: Ingestion, config: RequestConfig | None = None) -> None:
        self.ingestion = ingestion
        self.config: RequestConfig = config or ingestion.config.request
        self.batcher = ingestion.batcher
        self.log = RateLimitedLog(logger)
        self.limiter: Limiter | None = None
        if self.config.enabled and self.config.rate_limits is not None:
            self.limiter = build_limiter(self.config)
        self._view_limiter: Limiter | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def view_limiter(self) -> Limiter:
        """The limiter of per-view limits: :attr:`limiter`, or (customer limits off) one built on first use."""
        limiter = self.limiter or self._view_limiter
        if limiter is None:
            with _build_lock:
                limiter = self._view_limiter
                if limiter is None:
                    limiter = self._view_limiter = build_limiter(self.config, customer_limits=False)
        return limiter

    def usage(self, customer_id: str, *, scope: str = "", limits: Any = None) -> tuple[Any, ...]:
        """The customer's limits as they stand (:meth:`Limiter.usage`: used, remaining, reset), consuming
        nothing; empty when rate limiting is off. Raises the store's error (this is for the app's own UI)."""
        if self.limiter is None and limits is None:
            return ()
        return self.view_limiter.usage(customer_id, scope=scope, limits=limits)

    def settle(self, limiter: Limiter, customer: str, units: int, check: LimitCheck | None) -> None:
        """Add ``units`` (negative: give them back) to a customer's billing periods, so that the quota counts
        what is billed. In memory or off an event loop now; on a running loop as a task (no blocking there)."""
        scope, limits, at = ("", None, None) if check is None else (check.scope, check.limits, check.at)
        if not limiter.in_memory:
            try:
                import asyncio

                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
            else:
                task = loop.create_task(limiter.aadjust(customer, units, scope=scope, limits=limits, now=at))
                self._tasks.add(task)  # the loop keeps only a weak reference to a task
                task.add_done_callback(self._tasks.discard)
                return
        limiter.adjust(customer, units, scope=scope, limits=limits, now=at)

    def __repr__(self) -> str:
        return f"<Meter event_name={self.config.event_name!r} via {self.ingestion!r}>"

    def begin(
        self,
        carrier: MutableMapping[str, Any],
        method: str,
        path: str,
        *,
        preflight: bool = False,
        started: float | None = None,
    ) -> MeteredRequest | None:
        """Start metering a request, or decline it (None) when a filter excludes it. Never raises.

        ``carrier`` is where adapters meet (the WSGI environ, or the request's dict); ``preflight``: the request
        is an ``OPTIONS`` with ``Access-Control-Request-Method``.
        """
        try:
            config = self.config
            if not config.enabled:
                carrier[ADAPTER_KEY] = DECLINED
                return None
            if (
                method in config.exclude_methods
                or (preflight and config.skip_cors_preflight)
                or (config.include_paths is not None and not any(p.matches(path) for p in config.include_paths))
                or (config.exclude_paths and any(p.matches(path) for p in config.exclude_paths))
            ):
                carrier[ADAPTER_KEY] = DECLINED
                self.batcher.counters.skip("filtered")
                return None
            metered = MeteredRequest(self, carrier, method, path, now() if started is None else started)
            carrier[ADAPTER_KEY] = metered
            return metered
        except Exception:
            self.internal_error()
            return None

    def begin_cgi(self, meta: MutableMapping[str, Any], method: str, path: str) -> MeteredRequest | None:
        """:meth:`begin` for a request described by CGI variables (a WSGI environ, Django's ``request.META``):
        they also give the request's size, whether it is a CORS preflight, and the client's address and agent
        (kept only if the personal-data settings say so). Never raises."""
        try:
            metered = self.begin(
                meta, method, path, preflight=method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in meta
            )
            if metered is not None:
                metered.request_bytes = request_bytes(meta.get("CONTENT_LENGTH"), "HTTP_TRANSFER_ENCODING" in meta)
                metered.client_ip = meta.get("REMOTE_ADDR")
                metered.user_agent = meta.get("HTTP_USER_AGENT")
            return metered
        except Exception:
            self.internal_error()
            return None

    def begin_environ(self, environ: MutableMapping[str, Any]) -> MeteredRequest | None:
        """:meth:`begin_cgi` for a WSGI environ (the WSGI middleware's and the Flask extension's way in)."""
        try:
            path = request_path(environ)
        except Exception:
            self.internal_error()
            return None
        return self.begin_cgi(environ, environ.get("REQUEST_METHOD") or "GET", path)

    def hook_failed(self, hook: Any) -> None:
        """A user hook raised: log it (rate-limited, with the traceback) and count it; the request goes on."""
        self.batcher.counters.add("hook_errors")
        self.log.log(
            logging.ERROR,
            f"hook-{getattr(hook, '__qualname__', type(hook).__name__)}",
            "dodo-ingest: hook %r raised; the request is metered without what it would have given",
            hook,
            exc_info=True,
        )

    def internal_error(self) -> None:
        """dodo-ingest itself failed on a request: log it (rate-limited) and count the request as skipped."""
        self.log.log(logging.ERROR, "adapter", "dodo-ingest could not meter a request; skipped", exc_info=True)
        with contextlib.suppress(Exception):
            self.batcher.counters.skip("adapter_error")


class MeteredRequest:
    """One metered request from :meth:`Meter.begin` to its one event (see the module docstring)."""

    __slots__ = (
        "annotations",
        "carrier",
        "client_ip",
        "customer",
        "done",
        "error",
        "event_name",
        "extra",
        "limit_check",
        "meter",
        "method",
        "path",
        "request_bytes",
        "resolved",
        "response_bytes",
        "route",
        "skip_reason",
        "started",
        "status_code",
        "token",
        "user_agent",
    )

    def __init__(self, meter: Meter, carrier: MutableMapping[str, Any], method: str, path: str, started: float) -> None:
        self.meter = meter
        self.carrier = carrier
        self.method = method
        self.path = path
        self.started = started
        self.route: str | None = None
        self.status_code = 500
        self.error: str | None = None
        self.request_bytes: int | None = None
        self.response_bytes: int | None = 0
        self.client_ip: str | None = None
        self.user_agent: str | None = None
        self.customer: Any = None
        self.extra: Mapping[str, Any] | None = None
        self.event_name: str | None = None
        self.skip_reason: str | None = None
        self.resolved = False
        self.done = False
        self.limit_check: LimitCheck | None = None
        self.annotations = Annotations()
        self.token: contextvars.Token[Annotations | None] | None = _current.set(self.annotations)

    def __repr__(self) -> str:
        return f"<MeteredRequest {self.method} {self.path} route={self.route!r} status={self.status_code}>"

    # --- while the request runs ---------------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """The app raised (or its body did): the request is a 500 with the exception's class name."""
        if self.error is None:
            self.error = type(exc).__name__

    def count(self, chunk: Any) -> None:
        """Add one body chunk to ``response_bytes``; never raises (an unsizable chunk makes the count unknown)."""
        if self.response_bytes is not None:
            size = chunk_size(chunk)
            self.response_bytes = None if size is None else self.response_bytes + size

    def close_context(self) -> None:
        """Close the annotations context opened by :meth:`Meter.begin` (in the same context; else a no-op)."""
        token, self.token = self.token, None
        if token is not None:
            # Not contextlib.suppress: this runs once per request, and a bare try costs nothing.
            try:  # noqa: SIM105
                _current.reset(token)
            except ValueError:  # a different context: nothing to undo there
                pass

    def broke(self) -> None:
        """The adapter itself failed on this request: log it, count it as skipped (``adapter_error``) and end
        the request without an event (a half-known event is worse than a counted gap)."""
        if not self.done:
            self.meter.internal_error()
            self.abandon()

    def abandon(self) -> None:
        """End the request without an event (the process is stopping, or the request was cancelled)."""
        self.done = True
        self.close_context()

    @property
    def claimed(self) -> bool:
        """Whether this adapter is still the innermost one to have claimed the request."""
        return self.carrier.get(ADAPTER_KEY) is self

    # --- the rate-limit check, before the view ---------------------------------------------------------------

    def limit(
        self,
        key_args: tuple[Any, ...] = (),
        default_customer: Callable[[], Any] | None = None,
        *,
        scope: str = "",
        cost: int = 1,
        limits: Any = None,
    ) -> Decision | None:
        """Check the request's rate limits before the view runs: consume ``cost`` units of the customer's
        limits, and of ``limits`` (a view's own, counted per ``scope``). Once per request: a request already
        checked (by an outer adapter too) gets that decision again. None when nothing was checked (rate
        limiting off, or no customer known yet). Never raises.

        The customer is, in this order: ``annotate(customer_id=...)`` / ``set_customer()``, the
        ``rate_limit_key`` hook (called with ``key_args``), the framework's default (``default_customer``),
        ``fallback_customer_id``."""
        existing = self.carrier.get(LIMIT_KEY)
        if existing is not None:
            self.limit_check = existing
            return existing.decision  # type: ignore[no-any-return]
        try:
            meter = self.meter
            limiter = meter.limiter if limits is None else meter.view_limiter
            if limiter is None:
                return None
            customer = self.annotations.customer_id or self.carrier.get(CUSTOMER_KEY)
            if customer is None and meter.config.rate_limit_key is not None:
                customer = self._key(key_args)
            if customer is None and default_customer is not None:
                try:
                    customer = default_customer()
                except Exception:
                    meter.hook_failed(default_customer)
            customer = self._limit_customer(customer)
            if customer is None:
                return None
            at = limiter.clock()
            decision = limiter.check(customer, scope=scope, cost=cost, limits=limits)
            return self._checked(limiter, customer, scope, cost, limits, at, decision)
        except Exception:
            self.meter.internal_error()
            return None

    async def alimit(
        self,
        key_args: tuple[Any, ...] = (),
        default_customer: Callable[[], Awaitable[Any]] | None = None,
        *,
        scope: str = "",
        cost: int = 1,
        limits: Any = None,
    ) -> Decision | None:
        """:meth:`limit` for async code: the check never blocks the event loop (``limits.aio``); the default
        customer is awaited, and so is the ``rate_limit_key`` hook when it is async."""
        existing = self.carrier.get(LIMIT_KEY)
        if existing is not None:
            self.limit_check = existing
            return existing.decision  # type: ignore[no-any-return]
        try:
            meter = self.meter
            limiter = meter.limiter if limits is None else meter.view_limiter
            if limiter is None:
                return None
            customer = self.annotations.customer_id or self.carrier.get(CUSTOMER_KEY)
            if customer is None and meter.config.rate_limit_key is not None:
                customer = self._key(key_args)
                if inspect.isawaitable(customer):
                    try:
                        customer = await customer
                    except Exception:
                        meter.hook_failed(meter.config.rate_limit_key)
                        customer = None
            if customer is None and default_customer is not None:
                try:
                    customer = await default_customer()
                except Exception:
                    meter.hook_failed(default_customer)
            customer = self._limit_customer(customer)
            if customer is None:
                return None
            at = limiter.clock()
            decision = await limiter.acheck(customer, scope=scope, cost=cost, limits=limits)
            return self._checked(limiter, customer, scope, cost, limits, at, decision)
        except Exception:
            self.meter.internal_error()
            return None

    def _key(self, key_args: tuple[Any, ...]) -> Any:
        hook = self.meter.config.rate_limit_key
        assert hook is not None
        try:
            return hook(*key_args)
        except Exception:
            self.meter.hook_failed(hook)
            return None

    def _limit_customer(self, customer: Any) -> str | None:
        if customer is None:
            customer = self.meter.config.fallback_customer_id
        # Not a usable id: not limited here, and finish() skips the request as invalid_customer.
        return customer if isinstance(customer, str) and customer.strip() else None

    def _checked(
        self, limiter: Limiter, customer: str, scope: str, cost: int, limits: Any, at: float, decision: Decision
    ) -> Decision:
        check = LimitCheck(limiter, customer, scope, cost, limits, at, decision)
        self.limit_check = self.carrier[LIMIT_KEY] = check
        return decision

    def rate_limit_headers(self) -> list[tuple[str, str]]:
        """The ``RateLimit-Policy`` / ``RateLimit`` fields (``X-RateLimit-*`` with ``rate_limit_legacy_headers``,
        ``Retry-After`` on a rejection) for the response of a checked request; empty if it was not checked."""
        check = self.limit_check
        if check is None:
            return []
        return check.decision.headers(legacy=self.meter.config.rate_limit_legacy_headers)

    def rejection(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """The default answer to a rejected request: ``(429, headers, JSON body)`` (503 if the store was down
        and ``rate_limit_fail_open`` is False)."""
        from dodo_ingest.ratelimit import rejection_response

        check = self.limit_check
        assert check is not None
        return rejection_response(check.decision, legacy_headers=self.meter.config.rate_limit_legacy_headers)

    # --- the user's hooks, while the framework's context exists -------------------------------------------

    def resolve(self, hook_args: tuple[Any, ...], default_customer: Callable[[], Any] | None = None) -> None:
        """Run ``should_meter``, find the customer and run the metadata hook (once; never raises)."""
        if self.resolved:
            return
        self.resolved = True
        meter = self.meter
        config = meter.config
        try:
            if self.annotations.exempt:
                self.skip_reason = "filtered"
                return
            if config.should_meter is not None:
                try:
                    verdict = config.should_meter(*hook_args)
                except Exception:
                    meter.hook_failed(config.should_meter)
                else:
                    if not verdict:
                        self.skip_reason = "filtered"
                        return
            customer = self.annotations.customer_id or self.carrier.get(CUSTOMER_KEY)
            if customer is None and config.customer_resolver is not None:
                try:
                    customer = config.customer_resolver(*hook_args)
                except Exception:
                    meter.hook_failed(config.customer_resolver)
            if customer is None and default_customer is not None:
                try:
                    customer = default_customer()
                except Exception:
                    meter.hook_failed(default_customer)
            self.customer = customer
            if config.metadata_hook is not None:
                try:
                    self.extra = config.metadata_hook(*hook_args)
                except Exception:
                    meter.hook_failed(config.metadata_hook)
        except Exception:
            meter.internal_error()
            self.skip_reason = "adapter_error"

    # --- the end ------------------------------------------------------------------------------------------

    def finish(self, hook_args: tuple[Any, ...] = (), default_customer: Callable[[], Any] | None = None) -> bool:
        """Queue the request's event (once; never raises). Returns whether an event was queued.

        Runs :meth:`resolve` first if the adapter has not (``hook_args`` are then used). Does nothing when an
        adapter inside this one claimed the request.
        """
        if self.done:
            return False
        self.done = True
        finished = now()
        meter = self.meter
        try:
            self.close_context()
            if not self.claimed:
                return False
            if not self.resolved:
                self.resolve(hook_args, default_customer)
            check = self.limit_check
            if check is not None and not check.decision.allowed:
                return self._rejected(check, finished)
            if self.skip_reason is not None or self.annotations.exempt:
                meter.batcher.counters.skip(self.skip_reason or "filtered")
                if check is not None:
                    self._settle(check, None)
                return False
            config = meter.config
            # What the app set explicitly wins, even when it set it late (inside a streamed body).
            customer = (
                self.annotations.customer_id
                or self.carrier.get(CUSTOMER_KEY)
                or self.customer
                or (check.customer if check is not None else None)
                or config.fallback_customer_id
            )
            if check is not None and (not isinstance(customer, str) or not customer.strip()):
                self._settle(check, None)  # not billed: the checked units go back
            if customer is None:
                meter.batcher.counters.skip("no_customer")
                return False
            if not isinstance(customer, str) or not customer.strip():
                meter.batcher.counters.skip("invalid_customer")
                meter.log.log(
                    logging.WARNING,
                    "invalid-customer",
                    "dodo-ingest: the customer of %s %s is %s, not a non-empty str; the request is not billed",
                    self.method,
                    self.path,
                    type(customer).__name__,
                )
                return False
            if not config.capture_client_ip:
                self.client_ip = None
            if not config.capture_user_agent:
                self.user_agent = None
            event_name = self.annotations.event_name or self.event_name or config.event_name
            event = RequestEvent(self, finished - self.started)
            if check is not None or meter.limiter is not None:
                event.cost = self._settle(check, customer)
            return meter.batcher.enqueue(customer, event_name, event)
        except Exception:
            meter.internal_error()
            return False

    def _rejected(self, check: LimitCheck, finished: float) -> bool:
        """A request the limiter rejected: not billed (``skipped["rate_limited"]``), unless
        ``rate_limit_rejected_event`` names the event to send it as. Its units were never counted."""
        meter = self.meter
        event_name = meter.config.rate_limit_rejected_event
        if event_name is None:
            meter.batcher.counters.skip("rate_limited")
            return False
        event = RequestEvent(self, finished - self.started)
        event.cost = check.cost
        return meter.batcher.enqueue(check.customer, event_name, event)

    def _settle(self, check: LimitCheck | None, billed: str | None) -> int:
        """Make the quota count what is billed; return the units the event bills (its ``cost``).

        A checked request billed to the customer it was checked for is already counted. Otherwise its units
        go back to the checked customer and to the billed one; a request billed without a check (it never
        reached the view: a 404, a 401 from authentication) is added to its customer's quota."""
        meter = self.meter
        if check is None:
            if billed is not None and meter.limiter is not None:
                meter.settle(meter.limiter, billed, 1, None)
            return 1
        if billed != check.customer:
            reason = check.decision.reason
            if reason == "allowed":
                meter.settle(check.limiter, check.customer, -check.cost, check)
            if billed is not None and reason != "fail_open":
                meter.settle(check.limiter, billed, check.cost, check)
        return check.cost


# --- bodies: one counting wrapper for sync and async iterables -----------------------------------------------


def counted(body: Iterable[Any], metered: MeteredRequest, on_end: Callable[[], None] | None = None) -> Iterator[Any]:
    """Yield ``body``'s chunks, counting them and noting an exception raised while it streams; ``on_end`` runs
    when the body is exhausted or fails (a server that closes without iterating leaves it to ``close()``)."""
    try:
        for chunk in body:
            metered.count(chunk)
            yield chunk
    except BaseException as exc:
        if not isinstance(exc, GeneratorExit):
            metered.fail(exc)
        raise
    finally:
        if on_end is not None:
            on_end()


async def acounted(
    body: AsyncIterable[Any], metered: MeteredRequest, on_end: Callable[[], None] | None = None
) -> AsyncIterator[Any]:
    """:func:`counted` for an async body."""
    try:
        async for chunk in body:
            metered.count(chunk)
            yield chunk
    except BaseException as exc:
        if not isinstance(exc, GeneratorExit):
            metered.fail(exc)
        raise
    finally:
        if on_end is not None:
            on_end()
