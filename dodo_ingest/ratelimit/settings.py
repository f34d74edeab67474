"""The rate-limit settings, in the core's one schema (:class:`dodo_ingest.config.Setting`).

:data:`RATE_LIMIT_SETTINGS` is merged into :data:`dodo_ingest.config.SETTINGS`, so ``rate_limits=...``,
``DODO_INGEST_RATE_LIMITS`` (Django) and ``app.config["DODO_INGEST_RATE_LIMITS"]`` (Flask) mean the same thing and
are checked by the parsers here. This module does not import ``limits`` at import time: the core can merge the
schema without the ``ratelimit`` extra installed, and only a user who sets a rate-limit value needs it.

The parsers return what :meth:`dodo_ingest.ratelimit.Limiter.from_config` takes: ``rate_limits`` becomes a
tuple of :class:`~dodo_ingest.ratelimit.RateLimit` or a callable, the callables become callables.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from dodo_ingest.config import Setting, _Invalid, import_dotted

if TYPE_CHECKING:
    from dodo_ingest.ratelimit.limiter import LimitSpec

STRATEGIES = ("sliding-window-counter", "fixed-window", "moving-window")
DEFAULT_STORAGE = "memory://"
DEFAULT_STRATEGY = "sliding-window-counter"
DEFAULT_TIMEOUT = 0.1
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")
_INSTALL = "install it with: pip install 'dodo-ingest[ratelimit]'"


def _callable(value: Any, what: str) -> Callable[..., Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = import_dotted(value)
    if not callable(value):
        raise _Invalid(f"expected {what}, or a dotted path to one, got {type(value).__name__}")
    return value  # type: ignore[no-any-return]


def parse_rate_limits(value: Any) -> LimitSpec | None:
    """``None`` (off), ``"100/minute;20000/month"``, a list of such strings, or a callable / dotted path
    ``(customer_id) -> limits | None``. Strings are parsed now, so a typo fails at start-up."""
    if value is None:
        return None
    try:
        from dodo_ingest.ratelimit.limiter import parse_limits
    except ImportError as exc:  # pragma: no cover - only without the extra
        raise _Invalid(f"rate limiting needs the `limits` package ({exc}); {_INSTALL}") from None
    if isinstance(value, str) and _DOTTED.fullmatch(value.strip()):
        fn = _callable(value.strip(), "a callable (customer_id) -> limits")  # "myapp.billing.limits_for"
        assert fn is not None
        return fn
    if callable(value):
        return value  # type: ignore[no-any-return]
    try:
        return parse_limits(value)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None


def parse_storage(value: Any) -> str:
    """A ``limits`` storage URI (``memory://``, ``redis://host:6379/0``, ``rediss://...``, ...)."""
    if not isinstance(value, str) or "://" not in value:
        raise _Invalid(f"expected a storage URI such as 'memory://' or 'redis://127.0.0.1:6379/0', got {value!r}")
    scheme = urlsplit(value).scheme
    if scheme.startswith("async+"):
        raise _Invalid(f"give the plain URI ({value[len('async+') :]!r}); the async client is derived from it")
    try:
        from limits.storage import storage_from_string  # noqa: F401
        from limits.storage.base import Storage
    except ImportError as exc:  # pragma: no cover - only without the extra
        raise _Invalid(f"rate limiting needs the `limits` package ({exc}); {_INSTALL}") from None
    known = set(_registered_schemes(Storage))
    if scheme not in known:
        raise _Invalid(f"unknown storage scheme {scheme!r}; use one of {', '.join(sorted(known))}")
    return value


def _registered_schemes(base: type) -> list[str]:
    schemes: list[str] = []
    stack: list[type] = list(base.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        declared = getattr(cls, "STORAGE_SCHEME", None) or []
        schemes.extend([declared] if isinstance(declared, str) else declared)
    return schemes


def parse_strategy(value: Any) -> str:
    """One of the ``limits`` strategies for rolling windows."""
    if value not in STRATEGIES:
        raise _Invalid(f"must be one of {', '.join(STRATEGIES)}, got {value!r}")
    return str(value)


def parse_flag(value: Any) -> bool:
    """True or False, nothing else."""
    if not isinstance(value, bool):
        raise _Invalid(f"expected True or False, got {value!r}")
    return value


def parse_timeout(value: Any) -> float:
    """Seconds, 0.001-10."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Invalid(f"expected a number of seconds, got {value!r}")
    if value >= 100:
        raise _Invalid(f"is in seconds, not milliseconds: got {value!r}; use {value / 1000:g} for {value:g} ms")
    if not 0.001 <= value <= 10:
        raise _Invalid(f"must be between 0.001 and 10 seconds, got {value!r}")
    return float(value)


def parse_billing_anchor(value: Any) -> Callable[..., Any] | None:
    """None, a callable ``(customer_id) -> datetime | None``, or a dotted path to one."""
    return _callable(value, "a callable (customer_id) -> datetime | None")


def parse_key(value: Any) -> Callable[..., Any] | None:
    """None, a callable ``(request) -> customer id | None``, or a dotted path to one."""
    return _callable(value, "a callable (request) -> customer id")


def parse_response(value: Any) -> Callable[..., Any] | None:
    """None, a callable ``(request, decision) -> response``, or a dotted path to one."""
    return _callable(value, "a callable (request, decision) -> response")


def _optional_event_name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"expected None or an event name such as 'api_call_rejected', got {value!r}")
    return value


def _names(values: Sequence[str]) -> str:
    return ", ".join(f"`{v}`" for v in values)


RATE_LIMIT_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "rate_limits",
        None,
        parse_rate_limits,
        "Limits every metered request of a customer consumes, in `limits` notation: `'100/minute;20000/month'`, "
        "a list of such strings, or a callable / dotted path `(customer_id) -> limits | None` (None: unlimited; "
        "may be async). `N/month` and `N/year` are billing periods (see `rate_limit_billing_anchor`); seconds, "
        "minutes, hours and days are rolling windows. Off when unset.",
        scope="request",
    ),
    Setting(
        "rate_limit_storage",
        DEFAULT_STORAGE,
        parse_storage,
        "A `limits` storage URI: `memory://` (one process: limits multiply by the number of worker processes, "
        "a warning says so) or `redis://host:6379/0` (shared by every worker and host).",
        scope="request",
    ),
    Setting(
        "rate_limit_strategy",
        DEFAULT_STRATEGY,
        parse_strategy,
        f"How rolling windows count: {_names(STRATEGIES)}. The default keeps two counters per limit and "
        "does not depend on client clocks; `moving-window` is exact but stores one entry per unit.",
        scope="request",
    ),
    Setting(
        "rate_limit_fail_open",
        True,
        parse_flag,
        "When the storage is unreachable, let requests pass (counted as `failed_open`, logged at most every "
        "30 s); False rejects them with 503. A circuit breaker stops trying for 2 s after 3 failures in a row.",
        scope="request",
    ),
    Setting(
        "rate_limit_timeout",
        DEFAULT_TIMEOUT,
        parse_timeout,
        "Seconds to connect to / wait for the storage on one check; no retries (a dead store costs at most "
        "this, and nothing once the circuit breaker is open).",
        scope="request",
    ),
    Setting(
        "rate_limit_key",
        None,
        parse_key,
        "Callable `(request) -> customer id | None` run before the view to find whose limit a request "
        "consumes (e.g. from an API-key header). Unset: the customer resolution that can run before the view.",
        scope="request",
    ),
    Setting(
        "rate_limit_billing_anchor",
        None,
        parse_billing_anchor,
        "Callable `(customer_id) -> datetime | None` (may be async): the start of the customer's billing cycle. "
        "Periods then run from that day and time of day in each month (clamped to the month's last day). "
        "Unset or None: calendar months in UTC.",
        scope="request",
    ),
    Setting(
        "rate_limit_legacy_headers",
        False,
        parse_flag,
        "Also send `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (epoch seconds) beside "
        "the IETF `RateLimit-Policy` / `RateLimit` fields.",
        scope="request",
    ),
    Setting(
        "rate_limit_rejected_event",
        None,
        _optional_event_name,
        "What a request rejected by the limiter sends to Dodo: None (default) sends nothing, so quota and bill "
        "agree; an event name sends it under that name (your meter's own name bills it).",
        scope="request",
    ),
    Setting(
        "rate_limit_response",
        None,
        parse_response,
        "Callable building the answer to a rejected request instead of the default 429 JSON body: Django "
        "`(request, decision) -> HttpResponse` (a view), Flask `(request, decision) -> response value` (or "
        "`@app.errorhandler(429)`), WSGI `(environ, decision) -> (status, headers, body)`. `Retry-After` and the "
        "`RateLimit` fields are added to its response. Dotted path accepted.",
        scope="request",
    ),
)
