"""Per-customer rate limits and billing-period quotas, on the ``limits`` library.

One :class:`Limiter` per application. ``check(customer_id, scope=..., cost=..., limits=...)`` consumes ``cost``
units from every limit that applies and returns a :class:`~dodo_ingest.ratelimit.Decision`; ``await acheck(...)``
does the same without blocking an event loop; ``usage(customer_id)`` reads the numbers for the app's own UI.

What the windows mean
---------------------
- **Rolling windows** (``N/second``, ``N/minute``, ``N/hour``, ``N/day``, ``N/30 days``...) are counted by a
  ``limits`` strategy (``rate_limit_strategy``): ``sliding-window-counter`` (default) weighs the previous window's
  count by how much of it still overlaps the last N seconds; ``fixed-window`` counts from the first hit for N
  seconds; ``moving-window`` counts every unit of the last N seconds exactly. They run on the store's clock
  (Redis' TTLs), never on a client's.
- **Billing periods** (``N/month``, ``N/year``, ``N/3 months``) are the customer's billing cycle, not a sliding
  30 days: by default the calendar month (year) in UTC, or, with ``rate_limit_billing_anchor``, the months that
  start at the customer's anchor (see :mod:`dodo_ingest.ratelimit.periods`). The period is found with the
  Limiter's clock (``clock=``, injectable for tests), so every worker with a sane clock agrees on it.

Why billing periods have their own keys
---------------------------------------
``limits`` has no calendar windows: its ``month`` is 30 days from the first hit (fixed window) or a sliding 30
days, so ``20000/month`` would drift away from the invoice. A period is therefore counted with the storage's
atomic ``incr`` with expiry (the Lua ``incr_expire`` script on Redis, the locked counter in memory) on a key that
names the period's start (``dodo_ingest/<customer>/<scope>/period/<months>m/<start epoch>``; rolling windows
use ``limits``' own key, ``dodo_ingest/<strategy>/<customer>/<scope>/<amount>/<multiples>/<unit>``): the key changes
exactly at the boundary, so the count restarts there whatever the store's clock says, an old period's key simply
expires, and changing a customer's anchor starts a fresh count instead of mixing two cycles. The key holds no
amount, so a plan change in mid-period keeps the units already used.

The quota counts what is billed
-------------------------------
A check consumes ``cost`` units from every limit that applies: the customer's (``rate_limits``) and the view's
own (``limits=``, keyed by ``scope``). When any of them rejects, the billing periods that this check
incremented are decremented again (one more round trip, only on rejection), so a billing-period counter equals
the units of admitted requests, which is what the meter bills. Rolling rate limits keep their usual ``limits``
semantics (a window that admitted keeps the units even if another rejected the request; ``fixed-window``
counts rejected hits too). Concurrent checks never admit more than the limit: the increment comes first and is
undone if it does not fit; near the limit a check may in rare cases see another check's not-yet-undone units
and be rejected although it would have fitted (never the reverse).

Round trips and failures
------------------------
On Redis a check is one pipelined round trip whatever the number of limits (see :mod:`.backends`); a rejection
that must refund a period adds one. The store is reached with a short socket timeout (``rate_limit_timeout``,
0.1 s) and no retries; after 3 failures in a row a circuit breaker stops calling it for 2 s, then lets one check
probe it. While it is down checks pass when ``rate_limit_fail_open`` (default), counted as ``failed_open`` and
logged at most every 30 s, or get a 503 decision otherwise. A check that timed out has an unknown outcome: a
hung Redis that resumes may still run the commands it had received, so the units of a request that passed may
or may not be counted (at most one check's worth per timed-out check).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import shlex
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal, TypeAlias, cast
from urllib.parse import urlsplit

import limits as limits_lib
from limits.limits import RateLimitItem
from limits.storage import MemoryStorage, RedisStorage, Storage, storage_from_string

from dodo_ingest.config import _Invalid
from dodo_ingest.errors import ConfigurationError
from dodo_ingest.ratelimit import settings as _settings
from dodo_ingest.ratelimit.backends import GenericBackend, MemoryBackend, RedisBackend, Rule
from dodo_ingest.ratelimit.decision import Decision, LimitState
from dodo_ingest.ratelimit.periods import EPOCH, as_utc, period_containing

log = logging.getLogger("dodo_ingest.ratelimit")

NAMESPACE = "dodo_ingest"
LOG_EVERY = 30.0


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One parsed limit: ``amount`` units per window; ``months`` > 0 makes it a billing period."""

    name: str
    amount: int
    item: RateLimitItem
    months: int

    @property
    def seconds(self) -> int:
        """The rolling window's length (a billing period's nominal length: 30 days a month)."""
        return self.item.get_expiry()


LimitSpec: TypeAlias = "tuple[RateLimit, ...] | Callable[[str], Any]"
"""What ``rate_limits`` parses to: fixed limits, or a callable ``(customer_id) -> limits | None``."""


def parse_limits(value: str | Sequence[str]) -> tuple[RateLimit, ...]:
    """``"100/minute;20000/month"`` or a list of such strings -> limits, shortest window first, periods last.

    An empty string or list means no limit. Raises ``ValueError`` naming what could not be parsed."""
    if isinstance(value, str):
        return _parse_string(value)
    if isinstance(value, tuple) and all(isinstance(v, RateLimit) for v in value):
        return value  # already parsed
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return _parse_many(tuple(value))
    raise ValueError(f"expected limits such as '100/minute;20000/month' (or a list of them), got {value!r}")


@lru_cache(maxsize=1024)
def _parse_string(text: str) -> tuple[RateLimit, ...]:
    if not text.strip():
        return ()
    try:
        items = limits_lib.parse_many(text)
    except ValueError:
        raise ValueError(
            f"cannot parse {text!r} as rate limits; write them like '100/minute;20000/month' "
            "(units: second, minute, hour, day, month, year; several separated by ';')"
        ) from None
    parsed = []
    for item in items:
        item = type(item)(item.amount, item.multiples, namespace=NAMESPACE)
        granularity = item.GRANULARITY.name
        months = {"month": 1, "year": 12}.get(granularity, 0) * item.multiples
        unit = granularity if item.multiples == 1 else f"{item.multiples} {granularity}s"
        parsed.append(RateLimit(f"{item.amount}/{unit}", item.amount, item, months))
    return _ordered(parsed)


@lru_cache(maxsize=256)
def _parse_many(texts: tuple[str, ...]) -> tuple[RateLimit, ...]:
    return _ordered([limit for text in texts for limit in _parse_string(text)])


def _ordered(parsed: list[RateLimit]) -> tuple[RateLimit, ...]:
    unique = list(dict.fromkeys(parsed))
    return tuple(sorted(unique, key=lambda limit: (limit.months > 0, limit.months, limit.seconds)))


# --- the circuit breaker ------------------------------------------------------------------------------------


class CircuitBreaker:
    """Stops calling a failing store: open after ``threshold`` failures in a row, one probe after ``cooldown``."""

    def __init__(self, threshold: int = 3, cooldown: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> Literal["closed", "open", "half-open"]:
        """``closed`` (calls go through), ``open`` (none do), ``half-open`` (one probe is out or allowed)."""
        if self._opened_at is None:
            return "closed"
        if self._probing or self._clock() - self._opened_at >= self.cooldown:
            return "half-open"
        return "open"

    def allow(self) -> bool:
        """Whether this call may reach the store."""
        if self._opened_at is None:
            return True
        return self._allow_probe()

    def _allow_probe(self) -> bool:
        with self._lock:
            opened_at = self._opened_at  # it may have closed while this thread waited for the lock
            if opened_at is None:
                return True
            if self._probing or self._clock() - opened_at < self.cooldown:
                return False
            self._probing = True
            return True

    def success(self) -> None:
        """The store answered."""
        if self._failures or self._opened_at is not None:
            with self._lock:
                self._failures, self._opened_at, self._probing = 0, None, False

    def failure(self) -> bool:
        """The store failed; True when this failure opened the breaker."""
        with self._lock:
            self._failures += 1
            reopened = self._probing
            self._probing = False
            if reopened or (self._opened_at is None and self._failures >= self.threshold):
                self._opened_at = self._clock()
                return not reopened
            return False


# --- worker processes and memory:// ---------------------------------------------------------------------------


def worker_processes(environ: Mapping[str, str] | None = None, argv: Sequence[str] | None = None) -> int:
    """How many worker processes this server runs, as far as can be told: uWSGI's ``numproc``, gunicorn's
    ``-w``/``--workers`` (command line or ``GUNICORN_CMD_ARGS``), else ``WEB_CONCURRENCY``; 1 if unknown."""
    environ = os.environ if environ is None else environ
    argv = sys.argv if argv is None else argv
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is not None and isinstance(getattr(uwsgi, "numproc", None), int):
        return int(uwsgi.numproc)
    if (argv and os.path.basename(argv[0]).startswith("gunicorn")) or "gunicorn.arbiter" in sys.modules:
        args = [*shlex.split(environ.get("GUNICORN_CMD_ARGS", "")), *argv[1:]]
        for i, arg in enumerate(args):
            value = None
            if arg in ("-w", "--workers") and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith("--workers="):
                value = arg.split("=", 1)[1]
            elif arg.startswith("-w") and arg[2:].isdigit():
                value = arg[2:]
            if value is not None and value.isdigit():
                return int(value)
    concurrency = environ.get("WEB_CONCURRENCY", "")
    return int(concurrency) if concurrency.isdigit() and int(concurrency) > 0 else 1


def shared_memory_warning(storage: str, workers: int) -> str | None:
    """The warning to give when ``memory://`` limits run in several processes (None when there is none)."""
    if urlsplit(storage).scheme != "memory" or workers <= 1:
        return None
    return (
        f"rate_limit_storage is memory:// with {workers} worker processes: each process counts on its own, so "
        f"every limit is in effect multiplied by {workers}. Use a shared store such as "
        "rate_limit_storage='redis://host:6379/0'."
    )


def _safe_uri(uri: str) -> str:
    parts = urlsplit(uri)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _escape(identifier: str) -> str:
    # '/' separates the parts of a key and braces are Redis Cluster hash tags: keep ids from forging either.
    if "/" in identifier or "%" in identifier or "{" in identifier or "}" in identifier:
        for char, code in (("%", "%25"), ("/", "%2F"), ("{", "%7B"), ("}", "%7D")):
            identifier = identifier.replace(char, code)
    return identifier


# --- the limiter ----------------------------------------------------------------------------------------------

AnchorHook: TypeAlias = "Callable[[str], datetime | Awaitable[datetime | None] | None]"


class Limiter:
    """Checks and counts per-customer limits in a ``limits`` storage. Thread-safe and fork-safe.

    Every argument has the meaning of the setting of the same name (``rate_limits``, ``rate_limit_storage``,
    ...); :meth:`from_config` builds one from validated settings. ``clock`` (epoch seconds) decides billing
    periods; ``workers`` overrides the detected number of worker processes for the ``memory://`` warning;
    ``storage_options`` go to the ``limits`` storage (and its Redis client); ``breaker_*`` tune the breaker.
    """

    def __init__(
        self,
        limits: Any = None,
        *,
        storage: str = _settings.DEFAULT_STORAGE,
        strategy: str = _settings.DEFAULT_STRATEGY,
        fail_open: bool = True,
        timeout: float = _settings.DEFAULT_TIMEOUT,
        billing_anchor: Any = None,
        clock: Callable[[], float] = time.time,
        workers: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
        breaker_threshold: int = 3,
        breaker_cooldown: float = 2.0,
    ) -> None:
        self._limits: LimitSpec | None = _check("rate_limits", _settings.parse_rate_limits, limits)
        self.storage_uri: str = _check("rate_limit_storage", _settings.parse_storage, storage)
        self.strategy: str = _check("rate_limit_strategy", _settings.parse_strategy, strategy)
        self.fail_open: bool = _check("rate_limit_fail_open", _settings.parse_flag, fail_open)
        self.timeout: float = _check("rate_limit_timeout", _settings.parse_timeout, timeout)
        self._anchor: AnchorHook | None = _check(
            "rate_limit_billing_anchor", _settings.parse_billing_anchor, billing_anchor
        )
        self._clock = clock
        # limits gives fixed and moving windows the same key with different Redis types: a deployment that
        # switches strategy would hit WRONGTYPE. The strategy is part of every rolling key here.
        self._key_strategy = {"sliding-window-counter": "swc", "fixed-window": "fw", "moving-window": "mw"}[
            self.strategy
        ]
        self.breaker = CircuitBreaker(breaker_threshold, breaker_cooldown)
        self._backend = self._make_backend(dict(storage_options or {}))
        self._periods: dict[tuple[float, int], tuple[float, float]] = {}
        self._rule_cache: dict[tuple[Any, ...], tuple[Any, Any, list[Rule], float]] = {}
        self._counts = dict.fromkeys(
            ("rate_limited", "failed_open", "failed_closed", "storage_errors", "limits_errors", "refund_errors"), 0
        )
        self._counts["breaker_opened"] = 0
        self._stats_lock = threading.Lock()
        self._last_log = 0.0
        self._unlogged = 0
        self._pid = os.getpid()
        self._memory = isinstance(self._backend.storage, MemoryStorage)
        warning = shared_memory_warning(self.storage_uri, workers if workers is not None else worker_processes())
        if warning:
            log.warning(warning)

    @classmethod
    def from_config(cls, config: Any, *, workers: int | None = None, clock: Callable[[], float] = time.time) -> Limiter:
        """A Limiter from validated settings: a Mapping by setting name, or an object with those attributes
        (the core's ``Config``). Missing settings take their defaults."""

        def get(name: str, default: Any) -> Any:
            if isinstance(config, Mapping):
                return config.get(name, default)
            return getattr(config, name, default)

        return cls(
            get("rate_limits", None),
            storage=get("rate_limit_storage", _settings.DEFAULT_STORAGE),
            strategy=get("rate_limit_strategy", _settings.DEFAULT_STRATEGY),
            fail_open=get("rate_limit_fail_open", True),
            timeout=get("rate_limit_timeout", _settings.DEFAULT_TIMEOUT),
            billing_anchor=get("rate_limit_billing_anchor", None),
            clock=clock,
            workers=workers,
        )

    def __repr__(self) -> str:
        return f"Limiter(storage={_safe_uri(self.storage_uri)!r}, strategy={self.strategy!r})"

    @property
    def enabled(self) -> bool:
        """Whether customer-wide limits are configured (per-view ``limits=`` work either way)."""
        return self._limits is not None

    def _make_backend(self, options: dict[str, Any]) -> GenericBackend:
        scheme = urlsplit(self.storage_uri).scheme
        async_options: dict[str, Any] = {}
        if scheme.startswith(("redis", "valkey")):
            defaults: dict[str, Any] = {"socket_timeout": self.timeout, "socket_connect_timeout": self.timeout}
            if scheme in ("redis", "rediss", "redis+unix"):
                from redis.asyncio.retry import Retry as AsyncRetry
                from redis.backoff import NoBackoff
                from redis.retry import Retry

                # redis-py retries 3 times with a 1 s exponential backoff by default: a dead Redis would hold
                # every request for seconds. One attempt, then the breaker decides.
                async_options = {**defaults, "retry": AsyncRetry(NoBackoff(), 0), **options}
                defaults["retry"] = Retry(NoBackoff(), 0)
            options = {**defaults, **options}
        storage = cast(Storage, storage_from_string(self.storage_uri, **options))
        if type(storage) is MemoryStorage:
            return MemoryBackend(storage, self.strategy)
        if type(storage) is RedisStorage:
            async_options = {k: v for k, v in async_options.items() if k != "connection_class"}
            return RedisBackend(storage, self.strategy, self.storage_uri, async_options)
        return GenericBackend(storage, self.strategy)

    # --- the checks -------------------------------------------------------------------------------------------

    def check(self, customer_id: str, *, scope: str = "", cost: int = 1, limits: Any = None) -> Decision:
        """Consume ``cost`` units for ``customer_id`` from the customer's limits and from ``limits`` (the
        view's own, counted per ``scope``). Never raises for a store or hook failure (see fail-open)."""
        if cost.__class__ is not int or cost < 1:
            _check_cost(cost)
        try:
            spec = self._limits
            customer = spec if spec.__class__ is tuple else self._resolve(spec, customer_id)
            own = () if limits is None else self._resolve(_spec(limits), customer_id)
            if not customer and not own:
                return Decision(True, "unlimited")
            anchor: Any = None
            if self._anchor is not None and _any_period(customer, own):
                anchor = self._anchor(customer_id)
                if inspect.isawaitable(anchor):
                    _discard(anchor)
                    raise TypeError("rate_limit_billing_anchor is async; use acheck() from async code")
            now = self._clock()
            rules = self._rules(customer_id, scope, customer, own, anchor, now)
        except Exception as exc:
            return self._hook_failed(exc)
        if self._memory and os.getpid() != self._pid:
            self._forked()
        if not self.breaker.allow():
            return self._unavailable(None)
        try:
            outcomes = self._backend.consume(rules, cost, now)
        except Exception as exc:
            return self._unavailable(exc)
        self.breaker.success()
        decision = self._decide(rules, outcomes, cost)
        if not decision.allowed:
            periods = [rule for rule in rules if rule.is_period]
            if periods:
                try:
                    self._backend.refund(periods, cost, now)
                except Exception as exc:
                    self._refund_failed(exc)
        return decision

    async def acheck(self, customer_id: str, *, scope: str = "", cost: int = 1, limits: Any = None) -> Decision:
        """:meth:`check` for async code: never blocks the event loop (``limits.aio`` on Redis); the limits
        callable and the billing anchor may be async functions."""
        _check_cost(cost)
        try:
            customer = await self._aresolve(self._limits, customer_id)
            own = await self._aresolve(_spec(limits), customer_id) if limits is not None else ()
            if not customer and not own:
                return Decision(True, "unlimited")
            anchor: Any = None
            if self._anchor and _any_period(customer, own):
                anchor = self._anchor(customer_id)
                if inspect.isawaitable(anchor):
                    anchor = await anchor
            now = self._clock()
            rules = self._rules(customer_id, scope, customer, own, anchor, now)
        except Exception as exc:
            return self._hook_failed(exc)
        if self._memory and os.getpid() != self._pid:
            self._forked()
        if not self.breaker.allow():
            return self._unavailable(None)
        try:
            outcomes = await self._backend.aconsume(rules, cost, now)
        except Exception as exc:
            return self._unavailable(exc)
        self.breaker.success()
        decision = self._decide(rules, outcomes, cost)
        if not decision.allowed:
            periods = [rule for rule in rules if rule.is_period]
            if periods:
                try:
                    await self._backend.arefund(periods, cost, now)
                except Exception as exc:
                    self._refund_failed(exc)
        return decision

    def usage(self, customer_id: str, *, scope: str = "", limits: Any = None) -> tuple[LimitState, ...]:
        """The customer's limits (and ``limits`` for ``scope``) as they stand, consuming nothing: units used
        and remaining, seconds to reset. Raises the store's error (this is for the app's UI, not a request's
        gate); empty when no limit applies."""
        customer = self._resolve(self._limits, customer_id)
        own = self._resolve(_spec(limits), customer_id) if limits is not None else ()
        anchor = self._anchor(customer_id) if self._anchor and _any_period(customer, own) else None
        if inspect.isawaitable(anchor):
            _discard(anchor)
            raise TypeError("rate_limit_billing_anchor is async; use ausage() from async code")
        now = self._clock()
        rules = self._rules(customer_id, scope, customer, own, anchor, now)
        return tuple(self._backend.peek(rules, now))

    async def ausage(self, customer_id: str, *, scope: str = "", limits: Any = None) -> tuple[LimitState, ...]:
        """:meth:`usage` for async code (the store is read in a worker thread)."""
        import asyncio

        customer = await self._aresolve(self._limits, customer_id)
        own = await self._aresolve(_spec(limits), customer_id) if limits is not None else ()
        anchor: Any = None
        if self._anchor and _any_period(customer, own):
            anchor = self._anchor(customer_id)
            if inspect.isawaitable(anchor):
                anchor = await anchor
        now = self._clock()
        rules = self._rules(customer_id, scope, customer, own, anchor, now)
        return tuple(await asyncio.to_thread(self._backend.peek, rules, now))

    # --- settling with the bill -------------------------------------------------------------------------------

    def adjust(
        self, customer_id: str, units: int, *, scope: str = "", limits: Any = None, now: float | None = None
    ) -> bool:
        """Add ``units`` to the customer's billing periods (and to ``limits``' periods for ``scope``), checking
        no limit; negative ``units`` give units back. For the requests whose bill and check differ: billed
        without a check (they never reached the view: a 404, a 401 from authentication), or checked and
        then not billed (``should_meter`` said no, the view was exempted). Rolling windows are left alone:
        they limit a rate, not a bill. ``now`` (this Limiter's :attr:`clock`) places the period, so a request
        that ran across a period's end settles in the period it was checked in. Never raises; False when the
        store or a hook failed (counted as ``refund_errors`` / ``limits_errors``)."""
        if not units:
            return True
        try:
            prepared = self._periods_for(customer_id, scope, limits, now)
            if prepared is None:
                return True
            rules, at = prepared
        except Exception as exc:
            self._adjust_failed(exc)
            return False
        if self._memory and os.getpid() != self._pid:
            self._forked()
        if not self.breaker.allow():
            self._count("refund_errors")
            return False
        try:
            self._backend.refund(rules, -units, at)
        except Exception as exc:
            self._store_failed_on_adjust(exc)
            return False
        self.breaker.success()
        return True

    async def aadjust(
        self, customer_id: str, units: int, *, scope: str = "", limits: Any = None, now: float | None = None
    ) -> bool:
        """:meth:`adjust` for async code (``limits.aio`` on Redis; the limits callable may be async)."""
        if not units:
            return True
        try:
            customer = await self._aresolve(self._limits, customer_id)
            own = await self._aresolve(_spec(limits), customer_id) if limits is not None else ()
            if not _any_period(customer, own):
                return True
            anchor: Any = self._anchor(customer_id) if self._anchor else None
            if inspect.isawaitable(anchor):
                anchor = await anchor
            at = self._clock() if now is None else now
            rules = [rule for rule in self._rules(customer_id, scope, customer, own, anchor, at) if rule.is_period]
        except Exception as exc:
            self._adjust_failed(exc)
            return False
        if not self.breaker.allow():
            self._count("refund_errors")
            return False
        try:
            await self._backend.arefund(rules, -units, at)
        except Exception as exc:
            self._store_failed_on_adjust(exc)
            return False
        self.breaker.success()
        return True

    def _periods_for(
        self, customer_id: str, scope: str, limits: Any, now: float | None
    ) -> tuple[list[Rule], float] | None:
        customer = self._resolve(self._limits, customer_id)
        own = self._resolve(_spec(limits), customer_id) if limits is not None else ()
        if not _any_period(customer, own):
            return None
        anchor = self._anchor(customer_id) if self._anchor else None
        if inspect.isawaitable(anchor):
            _discard(anchor)
            raise TypeError("rate_limit_billing_anchor is async; use aadjust() from async code")
        at = self._clock() if now is None else now
        return [rule for rule in self._rules(customer_id, scope, customer, own, anchor, at) if rule.is_period], at

    def _adjust_failed(self, exc: Exception) -> None:
        self._count("limits_errors")
        self._log(f"rate limits could not be resolved ({type(exc).__name__}: {exc}); a quota was not settled", exc)

    def _store_failed_on_adjust(self, exc: Exception) -> None:
        self._count("storage_errors")
        if self.breaker.failure():
            self._count("breaker_opened")
        self._count("refund_errors")
        self._log(f"a request's quota units could not be settled with its bill ({type(exc).__name__}: {exc})", exc)

    @property
    def clock(self) -> Callable[[], float]:
        """The clock (epoch seconds) that places billing periods."""
        return self._clock

    @property
    def in_memory(self) -> bool:
        """Whether the store is this process's memory (a check then never waits on I/O)."""
        return self._memory

    def stats(self) -> dict[str, int]:
        """Counters: ``rate_limited`` (rejected checks), ``failed_open`` / ``failed_closed`` (checks decided without
        the store), ``storage_errors``, ``limits_errors`` (a limits or anchor hook failed), ``refund_errors``,
        ``breaker_opened``."""
        with self._stats_lock:
            return dict(self._counts)

    def close(self) -> None:
        """Close the store's connections (a later check reconnects)."""
        self._backend.close()

    # --- internals --------------------------------------------------------------------------------------------

    def _resolve(self, spec: LimitSpec | None, customer_id: str) -> tuple[RateLimit, ...]:
        if spec is None:
            return ()
        if isinstance(spec, tuple):
            return spec
        result = spec(customer_id)
        if inspect.isawaitable(result):
            _discard(result)
            raise TypeError("the rate limits callable is async; use acheck() from async code")
        return _coerce(result)

    async def _aresolve(self, spec: LimitSpec | None, customer_id: str) -> tuple[RateLimit, ...]:
        if spec is None:
            return ()
        if isinstance(spec, tuple):
            return spec
        result = spec(customer_id)
        if inspect.isawaitable(result):
            result = await result
        return _coerce(result)

    def _rules(
        self,
        customer_id: str,
        scope: str,
        customer: tuple[RateLimit, ...],
        own: tuple[RateLimit, ...],
        anchor: datetime | None,
        now: float,
    ) -> list[Rule]:
        anchor_ts = 0.0 if anchor is None else as_utc(anchor).timestamp()
        cache_key = (id(customer), id(own), customer_id, scope, anchor_ts)
        cached = self._rule_cache.get(cache_key)
        if cached is not None and cached[0] is customer and cached[1] is own and now < cached[3]:
            return cached[2]
        identity = _escape(customer_id)
        rules = []
        valid_until = math.inf
        for limits, where in ((customer, ""), (own, _escape(scope))):
            for limit in limits:
                policy = f"{scope}:{limit.name}" if where else limit.name
                if limit.months:
                    start, end = self._period(now, limit.months, anchor, anchor_ts)
                    valid_until = min(valid_until, end)
                    key = f"{NAMESPACE}/{identity}/{where}/period/{limit.months}m/{int(start)}"
                    window = round(end - start)
                    ids = ("period", identity, where)
                    rules.append(Rule(policy, limit.amount, limit.item, ids, key, 0, window, end, True))
                else:
                    seconds = limit.seconds
                    ids = (self._key_strategy, identity, where)
                    rules.append(
                        Rule(policy, limit.amount, limit.item, ids, limit.item.key_for(*ids), seconds, seconds)
                    )
        if len(self._rule_cache) > 10_000:
            self._rule_cache.clear()
        self._rule_cache[cache_key] = (customer, own, rules, valid_until)
        return rules

    def _period(self, now: float, months: int, anchor: datetime | None, anchor_ts: float) -> tuple[float, float]:
        cached = self._periods.get((anchor_ts, months))
        if cached is not None and cached[0] <= now < cached[1]:
            return cached
        period = period_containing(now, months, EPOCH if anchor is None else anchor)
        if len(self._periods) > 4096:
            self._periods.clear()
        self._periods[(anchor_ts, months)] = period
        return period

    def _decide(self, rules: list[Rule], states: list[LimitState], cost: int) -> Decision:
        for state in states:
            if state.exceeded:
                break
        else:
            return Decision(True, "allowed", tuple(states))
        reported = []
        for rule, state in zip(rules, states, strict=True):
            if rule.is_period:  # refunded by the caller: report the count without this check
                used = max(0, state.used - cost)
                state = state._replace(used=used, remaining=max(0, rule.amount - used))
            reported.append(state)
        self._count("rate_limited")
        retry_after = max(1, max(state.reset for state in reported if state.exceeded))
        return Decision(False, "limited", tuple(reported), retry_after)

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self._counts[name] += 1

    def _unavailable(self, exc: Exception | None) -> Decision:
        if exc is not None:
            self._count("storage_errors")
            if self.breaker.failure():
                self._count("breaker_opened")
        self._count("failed_open" if self.fail_open else "failed_closed")
        what = "passed unchecked" if self.fail_open else "were rejected with 503"
        self._log(
            f"rate limit storage {_safe_uri(self.storage_uri)} unavailable"
            + (f" ({type(exc).__name__}: {exc})" if exc is not None else " (circuit breaker open)")
            + f"; requests {what}",
            exc,
        )
        if self.fail_open:
            return Decision(True, "fail_open")
        return Decision(False, "unavailable", retry_after=max(1, math.ceil(self.breaker.cooldown)))

    def _hook_failed(self, exc: Exception) -> Decision:
        self._count("limits_errors")
        self._log(f"rate limits could not be resolved ({type(exc).__name__}: {exc}); the request passed", exc)
        return Decision(True, "fail_open")

    def _refund_failed(self, exc: Exception) -> None:
        self._count("refund_errors")
        self._log(f"a rejected request's quota units could not be given back ({type(exc).__name__}: {exc})", exc)

    def _log(self, message: str, exc: BaseException | None) -> None:
        now = time.monotonic()
        with self._stats_lock:
            if now - self._last_log < LOG_EVERY and self._last_log:
                self._unlogged += 1
                return
            suppressed, self._unlogged, self._last_log = self._unlogged, 0, now
        suffix = f" ({suppressed} similar messages suppressed in the last {LOG_EVERY:g} s)" if suppressed else ""
        log.warning(message + suffix, exc_info=exc if exc is not None and not _is_store_error(exc) else None)

    def _forked(self) -> None:
        self._pid = os.getpid()
        log.warning(
            "a memory:// rate limiter was copied into forked process %d: each process counts on its own, so "
            "limits multiply by the number of processes; use a shared store such as redis://",
            self._pid,
        )


def _check(name: str, parse: Callable[[Any], Any], value: Any) -> Any:
    try:
        return parse(value)
    except _Invalid as exc:
        raise ConfigurationError(f"{name}: {exc}") from None


def _check_cost(cost: int) -> None:
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
        raise ValueError(f"cost must be a whole number of units >= 1, got {cost!r}")


def _spec(limits: Any) -> LimitSpec | None:
    if limits is None or (isinstance(limits, tuple) and all(isinstance(limit, RateLimit) for limit in limits)):
        return cast("LimitSpec | None", limits)
    if callable(limits):
        return cast(LimitSpec, limits)
    return parse_limits(limits)


def _coerce(result: Any) -> tuple[RateLimit, ...]:
    if result is None:
        return ()
    if isinstance(result, tuple) and all(isinstance(limit, RateLimit) for limit in result):
        return result
    return parse_limits(result)


def _any_period(*groups: tuple[RateLimit, ...]) -> bool:
    return any(limit.months for group in groups for limit in group)


def _discard(awaitable: Any) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()


def _is_store_error(exc: BaseException) -> bool:
    try:
        from redis.exceptions import RedisError
    except ImportError:  # pragma: no cover
        return isinstance(exc, OSError)
    return isinstance(exc, (RedisError, OSError))
