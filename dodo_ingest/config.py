"""The one configuration schema shared by every entry point.

A keyword argument ``flush_interval=2.0``, a Django setting ``DODO_INGEST_FLUSH_INTERVAL = 2.0`` and a Flask
config key ``DODO_INGEST_FLUSH_INTERVAL`` mean the same thing and are checked by the same code here.
:data:`SETTINGS` documents every setting once; ``dodo-ingest settings`` prints it as a table.

Every invalid value raises :class:`~dodo_ingest.errors.ConfigurationError` whose message names the setting
as the user spelled it and says how to fix it. The API key never appears in a message or a ``repr``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import import_module
from typing import Any, Literal
from urllib.parse import urlsplit

from dodo_ingest.errors import ConfigurationError

PREFIX = "DODO_INGEST_"
ENV_API_KEY = "DODO_PAYMENTS_API_KEY"
ENV_BASE_URL = "DODO_PAYMENTS_BASE_URL"
HOSTS = {"test_mode": "https://test.dodopayments.com", "live_mode": "https://live.dodopayments.com"}
MAX_EVENTS_PER_REQUEST = 1000  # Dodo's limit for one POST /events/ingest
UNMATCHED_ENDPOINT = "<unmatched>"

Environment = Literal["test_mode", "live_mode"]


class _Invalid(Exception):
    """Raised by a parser; the loader turns it into a ConfigurationError naming the setting."""


# --- parsers: (value) -> normalized value, or raise _Invalid("what is wrong; the fix") -------------------


def _number(lo: float, hi: float, *, integer: bool = False, unit: str = "") -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kind = "a whole number" if integer else "a number"
            raise _Invalid(f"expected {kind}{' of ' + unit if unit else ''}, got {type(value).__name__} {value!r}")
        if integer and not isinstance(value, int):
            raise _Invalid(f"expected a whole number, got {value!r}")
        if not math.isfinite(value) or not lo <= value <= hi:
            raise _Invalid(f"must be between {lo:g} and {hi:g}{' ' + unit if unit else ''}, got {value!r}")
        return int(value) if integer else float(value)

    return parse


def _seconds(lo: float, hi: float) -> Callable[[Any], float]:
    base = _number(lo, hi, unit="seconds")

    def parse(value: Any) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1000 and value > hi:
            raise _Invalid(f"is in seconds, not milliseconds: got {value!r}; use {value / 1000:g} for {value:g} ms")
        result: float = base(value)
        return result

    return parse


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected True or False, got {value!r}")
    return value


def _optional_str(what: str) -> Callable[[Any], str | None]:
    def parse(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise _Invalid(f"expected a non-empty string ({what}), got {type(value).__name__}")
        return value.strip()

    return parse


def _api_key(value: Any) -> str | None:
    """The key travels in an HTTP header: printable ASCII without whitespace. Never echo it back."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"expected your Dodo Payments API key as a non-empty string, got {type(value).__name__}")
    key = value.strip()
    bad = [c for c in key if not ("!" <= c <= "~")]
    if bad:
        kinds = sorted({"whitespace" if c.isspace() else "non-ASCII" if not c.isascii() else "control" for c in bad})
        raise _Invalid(
            f"the key contains {len(bad)} {' and '.join(kinds)} character(s) at position(s) "
            f"{', '.join(str(key.index(c)) for c in bad[:3])}; an API key is printable ASCII only. Copy it again "
            "from the Dodo dashboard (a zero-width space or a line break often comes with a paste)"
        )
    return key


def _environment(value: Any) -> str:
    if value not in HOSTS:
        raise _Invalid(f"must be 'test_mode' or 'live_mode', got {value!r}")
    return str(value)


def _event_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"expected the meter's event name as a non-empty string (e.g. 'api_call'), got {value!r}")
    return value


def _base_url(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _Invalid(f"expected a URL string, got {type(value).__name__}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid(f"expected an http(s) URL such as 'https://test.dodopayments.com', got {value!r}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise _Invalid(
            f"plain http would send the API key unencrypted to {parts.hostname}; use https "
            "(http is allowed only for a local server on localhost / 127.0.0.1 / ::1)"
        )
    return value.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _callable(value: Any) -> Callable[..., Any] | None:
    """A callable, or a dotted path to one (``"myapp.billing.customer_for"``)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = import_dotted(value)
    if not callable(value):
        raise _Invalid(f"expected a callable or a dotted path to one, got {type(value).__name__}")
    return value  # type: ignore[no-any-return]


def import_dotted(path: str) -> Any:
    """Import ``"package.module.attribute"``; raise ``_Invalid`` with the reason if that fails."""
    module_path, _, attribute = path.rpartition(".")
    if not module_path:
        raise _Invalid(f"{path!r} is not a dotted path; write it as 'package.module.function'")
    try:
        module = import_module(module_path)
    except ImportError as exc:
        raise _Invalid(f"cannot import module {module_path!r} of {path!r}: {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise _Invalid(f"module {module_path!r} has no attribute {attribute!r}") from None


_REGEX_CHARS = frozenset("^$*+?{}[]\\|()")


@dataclass(frozen=True)
class PathPattern:
    """One entry of ``include_paths`` / ``exclude_paths``.

    An entry containing any of ``^$*+?{}[]\\|()`` is a regular expression that must match the whole path.
    Any other entry is a literal prefix matched at segment boundaries: ``/admin`` matches ``/admin`` and
    ``/admin/users`` but not ``/administrator``.
    """

    source: str
    regex: re.Pattern[str] | None

    def matches(self, path: str) -> bool:
        """Whether ``path`` (no query string) is covered by this entry."""
        if self.regex is not None:
            return self.regex.fullmatch(path) is not None
        prefix = self.source.rstrip("/")
        return path == self.source or path == prefix or path.startswith(prefix + "/")


def _paths(value: Any) -> tuple[PathPattern, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise _Invalid(f"expected a list of path patterns such as [r'/admin/.*', '/healthz'], got {value!r}")
    patterns = []
    for i, entry in enumerate(value):
        if not isinstance(entry, str) or not entry:
            raise _Invalid(f"entry {i} must be a non-empty string, got {entry!r}")
        if _REGEX_CHARS.intersection(entry):
            try:
                patterns.append(PathPattern(entry, re.compile(entry)))
            except re.error as exc:
                raise _Invalid(f"entry {i} {entry!r} is not a valid regular expression: {exc}") from None
        else:
            patterns.append(PathPattern(entry, None))
    return tuple(patterns)


def _methods(value: Any) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise _Invalid(f"expected a list of HTTP methods such as ['OPTIONS', 'HEAD'], got {value!r}")
    methods = []
    for entry in value:
        if not isinstance(entry, str) or not entry.isalpha():
            raise _Invalid(f"expected HTTP method names such as 'OPTIONS', got {entry!r}")
        methods.append(entry.upper())
    return frozenset(methods)


def _spool_dir(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise _Invalid(f"expected a directory path (str or pathlib.Path), got {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str):
        raise _Invalid("expected a text path, not bytes")
    if os.name != "posix":
        raise _Invalid("the durable spool needs POSIX file locks (Linux, macOS); leave spool_dir unset here")
    return os.path.abspath(os.path.expanduser(path))


def _per_minute(value: Any) -> float | None:
    if value is None:
        return None
    result: float = _number(1, 100_000, unit="requests per minute")(value)
    return result


def _rollup_interval(value: Any) -> float | None:
    if value is None:
        return None
    result: float = _seconds(1.0, 900.0)(value)
    return result


def _buffer_url(value: Any) -> str | None:
    """A Redis URL; never echoed back (it may carry a password)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _Invalid(f"expected a Redis URL string such as 'redis://redis:6379/0', got {type(value).__name__}")
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix") or (parts.scheme != "unix" and not parts.hostname):
        raise _Invalid(
            f"expected a Redis URL such as 'redis://redis:6379/0' (or rediss://, unix://), got one with scheme "
            f"{parts.scheme!r}"
        )
    return value


def _forwarder(value: Any) -> str:
    if value not in ("external", "embedded"):
        raise _Invalid(f"must be 'external' (run `dodo-ingest forward`) or 'embedded', got {value!r}")
    return str(value)


def _stream_name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,100}", value):
        raise _Invalid(
            f"expected a Redis key prefix of letters, digits and _ . : - (e.g. 'dodo-ingest'), got {value!r}"
        )
    return value


def _fallback_customer(value: Any) -> str | None:
    result = _optional_str("a Dodo customer id such as 'cus_123'")(value)
    if result is not None and result.lower() in ("anonymous", "unknown", "none", "null"):
        raise _Invalid(
            f"{result!r} is not a Dodo customer id; Dodo requires an existing customer (cus_...). "
            "Create a customer for unidentified traffic and use its id, or leave this unset to skip such requests"
        )
    return result


@dataclass(frozen=True)
class Setting:
    """One configuration setting: its keyword name, default, parser and documentation.

    ``scope`` is ``"delivery"`` (how events reach Dodo: the :class:`Ingestion`'s) or ``"request"`` (how a
    request becomes an event: each adapter may have its own). ``aliases`` are older names still accepted.
    """

    name: str
    default: Any
    parse: Callable[[Any], Any]
    doc: str
    scope: Literal["delivery", "request"] = "delivery"
    aliases: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The Django setting / Flask config key: ``DODO_INGEST_<NAME>``."""
        return PREFIX + self.name.upper()


# The rate-limit settings live beside their parsers; that module needs only what is defined above.
from dodo_ingest.ratelimit.settings import DEFAULT_STORAGE, RATE_LIMIT_SETTINGS  # noqa: E402

SETTINGS: tuple[Setting, ...] = (
    Setting(
        "api_key",
        None,
        _api_key,
        f"Dodo Payments API key. Falls back to the `{ENV_API_KEY}` environment variable. Required unless "
        "`enabled` is False.",
    ),
    Setting(
        "environment",
        "test_mode",
        _environment,
        "`test_mode` (https://test.dodopayments.com) or `live_mode` (https://live.dodopayments.com). "
        "Test keys work only in test mode, live keys only in live mode.",
    ),
    Setting(
        "base_url",
        None,
        _base_url,
        f"Overrides the environment's host (falls back to `{ENV_BASE_URL}`), e.g. the local server "
        "`http://127.0.0.1:8765`. Must be https unless it is a loopback address.",
    ),
    Setting(
        "max_batch_size",
        100,
        _number(1, MAX_EVENTS_PER_REQUEST, integer=True),
        "Flush as soon as this many events are waiting (1-1000). A backlog is always sent in requests of "
        "up to 1000 events.",
    ),
    Setting(
        "flush_interval",
        5.0,
        _seconds(0.01, 600.0),
        "Seconds: flush when the oldest waiting event is this old (not a timer reset on every add).",
    ),
    Setting(
        "max_queue_size",
        100_000,
        _number(1, 10_000_000, integer=True),
        "Events held in memory at most; beyond it new events are dropped and counted as `queue_full`.",
    ),
    Setting(
        "max_request_bytes",
        1_000_000,
        _number(10_000, 100_000_000, integer=True),
        "Byte cap of one request body; larger batches are split.",
    ),
    Setting(
        "request_timeout",
        10.0,
        _seconds(0.1, 300.0),
        "Seconds to wait for Dodo's answer to one request (the connect timeout is min(this, 5)).",
    ),
    Setting(
        "max_retry_time",
        600.0,
        _seconds(0.0, 3000.0),
        "Seconds a failing batch is retried (exponential backoff with full jitter, honouring "
        "Retry-After) before its events are dropped as `retries_exhausted`.",
    ),
    Setting(
        "shutdown_timeout",
        5.0,
        _seconds(0.0, 600.0),
        "Seconds the exit drain (atexit, `shutdown()`) may take; what is left is logged and counted as `shutdown`.",
    ),
    Setting(
        "sync_timeout",
        10.0,
        _seconds(0.1, 600.0),
        "Seconds a synchronous send (`track_api_call`, `Ingestion.send`, `sync_mode`) may take in all, retries "
        "included, before it fails: a view never waits on Dodo for long. Background batches use `max_retry_time`.",
    ),
    Setting(
        "sync_mode",
        False,
        _flag,
        "Send in the calling thread, with the same validation, retry and drop policy (scripts, tests, serverless).",
    ),
    Setting(
        "on_error",
        None,
        _callable,
        "Callable `(error: DeliveryFailure) -> None` called on the flush thread when a request fails. "
        "Dotted path accepted.",
    ),
    Setting(
        "on_drop",
        None,
        _callable,
        "Callable `(events: list[dict], reason: str) -> None` called with every event that is dropped. "
        "Dotted path accepted.",
    ),
    Setting(
        "max_requests_per_minute",
        90,
        _per_minute,
        "Requests per minute each sender makes at most (Dodo allows about 100 per key). A token bucket paces "
        "the requests; when it binds, batches grow toward 1000 events instead. A 429 halves the pace, each "
        "accepted request raises it again by 1 (AIMD). None: unpaced. Synchronous sends are never paced.",
    ),
    Setting(
        "spool_dir",
        None,
        _spool_dir,
        "Directory of the durable spool (opt-in; local disk). Accepted events are on disk within 50 ms and "
        "removed only after Dodo's 2xx; a process that dies leaves them for the next one; the processes that "
        "share it elect one to send for all. See *Durable delivery and Dodo's request budget*.",
    ),
    Setting(
        "spool_max_bytes",
        1024**3,
        _number(1024 * 1024, 1024**4, integer=True, unit="bytes"),
        "Bytes the spool may take on disk (every process of the host together); beyond it new events are dropped "
        "and counted as `spool_full`.",
    ),
    Setting(
        "rollup_interval",
        None,
        _rollup_interval,
        "Seconds of a rollup window (opt-in, 1 to 900): the middlewares' requests are sent as one event per "
        "customer, endpoint, method and status class per window, with `calls`, `errors` and sums and maxima, "
        "instead of one event per request. Bill with a Sum meter over `calls`. See *Rollups*.",
    ),
    Setting(
        "buffer_url",
        None,
        _buffer_url,
        "Redis URL of the shared buffer (opt-in), e.g. `redis://redis:6379/0`: the flush thread writes events to a "
        "Redis Stream and `dodo-ingest forward` sends them within one fleet-wide budget. Redis unreachable: events "
        "wait in memory (or the spool) and move on when it is back. See *Running at scale*.",
    ),
    Setting(
        "buffer_stream",
        "dodo-ingest",
        _stream_name,
        "Prefix of the buffer's Redis keys (`<prefix>:events` is the stream); one per Dodo API key.",
    ),
    Setting(
        "forwarder",
        "external",
        _forwarder,
        "Who sends the buffer to Dodo: `external` (`dodo-ingest forward` processes) or `embedded` (the app "
        "processes elect one of themselves with a Redis lease).",
    ),
    # --- the request-to-event path (middlewares and extensions) ---
    Setting(
        "event_name",
        "api_call",
        _event_name,
        "Event name sent with every event; must equal your meter's event name (case-sensitive).",
        scope="request",
    ),
    Setting(
        "enabled",
        True,
        _flag,
        "Global kill switch: when False nothing is queued or sent and no API key is needed.",
        scope="request",
    ),
    Setting(
        "customer_resolver",
        None,
        _callable,
        "Callable returning the Dodo customer id (a `str`) of a finished request, called after the view ran "
        "(while the framework's request context still exists): Django/Flask `(request, response)`, WSGI "
        "`(environ, status, headers)`. Take it from your authentication, never from a client-supplied header. "
        "Dotted path accepted. Formerly `customer_id` (still accepted).",
        scope="request",
        aliases=("customer_id",),
    ),
    Setting(
        "fallback_customer_id",
        None,
        _fallback_customer,
        "Customer id used when none is found; unset (default) means such requests are not sent and are "
        "counted as `skipped_no_customer`.",
        scope="request",
    ),
    Setting(
        "include_paths",
        None,
        _paths,
        "If set, only paths matching one of these are metered. Regexes (full match) or literal prefixes.",
        scope="request",
    ),
    Setting(
        "exclude_paths",
        (),
        _paths,
        "Paths never metered, e.g. `[r'/admin/.*', '/healthz']`. Regexes (full match) or literal prefixes.",
        scope="request",
    ),
    Setting(
        "exclude_methods",
        (),
        _methods,
        "HTTP methods never metered. Empty by default: an `OPTIONS` request that a view answers is billed "
        "like any other (only CORS preflights are skipped, see `skip_cors_preflight`).",
        scope="request",
    ),
    Setting(
        "skip_cors_preflight",
        True,
        _flag,
        "Do not meter CORS preflights (`OPTIONS` with an `Access-Control-Request-Method` header).",
        scope="request",
    ),
    Setting(
        "should_meter",
        None,
        _callable,
        "Callable deciding per request whether to meter it, with the same arguments as `customer_resolver`. "
        "If it raises, the request is metered and the failure counted (`hook_errors`).",
        scope="request",
    ),
    Setting(
        "metadata_hook",
        None,
        _callable,
        "Callable returning a dict of extra metadata for a request, with the same arguments as "
        "`customer_resolver`. If it raises, the request is still billed without it. Formerly `extra_metadata` "
        "(still accepted).",
        scope="request",
        aliases=("extra_metadata",),
    ),
    Setting(
        "capture_client_ip",
        False,
        _flag,
        "Add `client_ip` to metadata (personal data: opt-in).",
        scope="request",
    ),
    Setting(
        "capture_user_agent",
        False,
        _flag,
        "Add `user_agent` to metadata (personal data: opt-in).",
        scope="request",
    ),
    # --- rate limits and quotas, checked before the view (dodo_ingest.ratelimit) ---
    *RATE_LIMIT_SETTINGS,
)

_BY_NAME = {s.name: s for s in SETTINGS}
#: Every accepted keyword, old names included, mapped to its setting.
_BY_KEYWORD = {**{alias: s for s in SETTINGS for alias in s.aliases}, **_BY_NAME}
REQUEST_SETTING_NAMES = frozenset(s.name for s in SETTINGS if s.scope == "request")


def check_names(kwargs: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigurationError` for a keyword that is no setting (a misspelt name)."""
    unknown = sorted(set(kwargs) - set(_BY_KEYWORD))
    if unknown:
        raise ConfigurationError(f"unknown setting {unknown[0]!r}; valid settings are: {', '.join(sorted(_BY_NAME))}")


def _default(name: str) -> Any:
    """A setting's default, parsed: the defaults are written once, in :data:`SETTINGS`."""
    setting = _BY_NAME[name]
    return setting.parse(setting.default)


@dataclass(frozen=True)
class RequestConfig:
    """Validated request-path settings: how an adapter turns a request into an event (no API key here)."""

    event_name: str = _default("event_name")
    enabled: bool = _default("enabled")
    customer_resolver: Callable[..., Any] | None = None
    fallback_customer_id: str | None = None
    include_paths: tuple[PathPattern, ...] | None = None
    exclude_paths: tuple[PathPattern, ...] = _default("exclude_paths")
    exclude_methods: frozenset[str] = _default("exclude_methods")
    skip_cors_preflight: bool = _default("skip_cors_preflight")
    should_meter: Callable[..., Any] | None = None
    metadata_hook: Callable[..., Any] | None = None
    capture_client_ip: bool = _default("capture_client_ip")
    capture_user_agent: bool = _default("capture_user_agent")
    #: Parsed limits (a tuple of ``dodo_ingest.ratelimit.RateLimit``) or a callable; None: rate limiting is off.
    rate_limits: Any = None
    rate_limit_storage: str = DEFAULT_STORAGE  # parsing it would import `limits`, an optional extra
    rate_limit_strategy: str = _default("rate_limit_strategy")
    rate_limit_fail_open: bool = _default("rate_limit_fail_open")
    rate_limit_timeout: float = _default("rate_limit_timeout")
    rate_limit_key: Callable[..., Any] | None = None
    rate_limit_billing_anchor: Callable[..., Any] | None = None
    rate_limit_legacy_headers: bool = _default("rate_limit_legacy_headers")
    rate_limit_rejected_event: str | None = None
    rate_limit_response: Callable[..., Any] | None = None

    @classmethod
    def load(
        cls,
        kwargs: Mapping[str, Any] | None = None,
        mapping: Mapping[str, Any] | None = None,
        *,
        base: RequestConfig | None = None,
        source: str = "",
    ) -> RequestConfig:
        """Request-path settings from ``kwargs`` (which win) and ``mapping``'s ``DODO_INGEST_*`` keys, on top of
        ``base`` (e.g. the shared :class:`Ingestion`'s). Delivery settings are refused: they belong to the
        ingestion that this adapter shares."""
        kwargs = dict(kwargs or {})
        check_names(kwargs)
        foreign = sorted(k for k in kwargs if k in _BY_KEYWORD and _BY_KEYWORD[k].scope != "request")
        if foreign:
            raise ConfigurationError(
                f"{foreign[0]!r} cannot be set on an adapter that is given an ingestion; configure it on the "
                f"Ingestion instead (an adapter accepts only {', '.join(sorted(REQUEST_SETTING_NAMES))})"
            )
        values = _collect(kwargs, mapping, source, scope="request")
        return replace(base or cls(), **values)


@dataclass(frozen=True)
class Config:
    """Validated settings of an :class:`Ingestion`: delivery, and the request path its adapters default to.

    Build it with :meth:`Config.load`; it never holds an invalid value. :attr:`request` is the request-path
    part an adapter works with.
    """

    api_key: str | None = field(default=None, repr=False)
    environment: str = _default("environment")
    base_url: str | None = None
    max_batch_size: int = _default("max_batch_size")
    flush_interval: float = _default("flush_interval")
    max_queue_size: int = _default("max_queue_size")
    max_request_bytes: int = _default("max_request_bytes")
    request_timeout: float = _default("request_timeout")
    max_retry_time: float = _default("max_retry_time")
    shutdown_timeout: float = _default("shutdown_timeout")
    sync_timeout: float = _default("sync_timeout")
    sync_mode: bool = _default("sync_mode")
    on_error: Callable[..., Any] | None = None
    on_drop: Callable[..., Any] | None = None
    max_requests_per_minute: float | None = _default("max_requests_per_minute")
    spool_dir: str | None = None
    spool_max_bytes: int = _default("spool_max_bytes")
    buffer_url: str | None = field(default=None, repr=False)  # may carry a password
    buffer_stream: str = _default("buffer_stream")
    forwarder: str = _default("forwarder")
    rollup_interval: float | None = None
    request: RequestConfig = field(default_factory=RequestConfig)

    @classmethod
    def load(
        cls,
        kwargs: Mapping[str, Any] | None = None,
        mapping: Mapping[str, Any] | None = None,
        *,
        source: str = "",
        environ: Mapping[str, str] | None = None,
    ) -> Config:
        """Validate and merge settings: keyword arguments win over ``DODO_INGEST_*`` keys of ``mapping``
        (Django settings, Flask ``app.config``), which win over the ``DODO_PAYMENTS_*`` environment variables,
        which win over the defaults. ``source`` names where ``mapping`` came from, for error messages.
        """
        kwargs = dict(kwargs or {})
        check_names(kwargs)
        environ = os.environ if environ is None else environ
        values = _collect(kwargs, mapping, source, scope="delivery")
        if values.get("api_key") is None and environ.get(ENV_API_KEY):
            values["api_key"] = _parse(_BY_NAME["api_key"], environ[ENV_API_KEY], ENV_API_KEY)
        if values.get("base_url") is None and environ.get(ENV_BASE_URL):
            values["base_url"] = _parse(_BY_NAME["base_url"], environ[ENV_BASE_URL], ENV_BASE_URL)
        request = RequestConfig(**_collect(kwargs, mapping, source, scope="request"))
        config = cls(**values, request=request)
        if config.rollup_interval is not None and config.sync_mode:
            raise ConfigurationError(
                "rollup_interval: rollups are built by the background batcher; unset sync_mode, or rollup_interval"
            )
        if request.enabled and config.api_key is None:
            raise ConfigurationError(
                f"no API key: set {'DODO_INGEST_API_KEY' if mapping is not None else 'api_key='} or the "
                f"{ENV_API_KEY} environment variable (or disable metering with enabled=False)"
            )
        return config

    def with_changes(self, **changes: Any) -> Config:
        """A copy with some settings changed, validated like :meth:`load`."""
        delivery: dict[str, Any] = {}
        request: dict[str, Any] = {}
        for keyword, value in changes.items():
            setting = _BY_KEYWORD.get(keyword)
            if setting is None:
                check_names({keyword: value})
                continue
            target = request if setting.scope == "request" else delivery
            target[setting.name] = _parse(setting, value, keyword)
        return replace(self, **delivery, request=replace(self.request, **request))

    @property
    def enabled(self) -> bool:
        """Whether metering is on (the ``enabled`` setting)."""
        return self.request.enabled

    @property
    def event_name(self) -> str:
        """The default event name of this ingestion's events."""
        return self.request.event_name

    @property
    def host(self) -> str:
        """Where events are sent: ``base_url`` if set, else the environment's host."""
        return self.base_url or HOSTS[self.environment]

    def describe(self) -> dict[str, Any]:
        """The settings as a dict safe to log: the API key is masked."""
        result = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "request"}
        result.update({f.name: getattr(self.request, f.name) for f in fields(self.request)})
        result["api_key"] = mask_key(self.api_key)
        result["buffer_url"] = redact_url(self.buffer_url)
        return result


def _collect(
    kwargs: Mapping[str, Any], mapping: Mapping[str, Any] | None, source: str, *, scope: str
) -> dict[str, Any]:
    """The parsed values of one scope's settings given by keyword (old names too) or in ``mapping``."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.scope != scope:
            continue
        raw: Any = _MISSING
        for keyword in (setting.name, *setting.aliases):
            if keyword in kwargs:
                raw, label = kwargs[keyword], keyword
                break
        else:
            if mapping is not None:
                for keyword in (setting.name, *setting.aliases):
                    key = PREFIX + keyword.upper()
                    if key in mapping:
                        raw, label = mapping[key], f"{source}{key}" if source else key
                        break
        if raw is not _MISSING:
            values[setting.name] = _parse(setting, raw, label)
    return values


_MISSING = object()


def _parse(setting: Setting, raw: Any, label: str) -> Any:
    try:
        return setting.parse(raw)
    except _Invalid as exc:
        raise ConfigurationError(f"{label}: {exc}") from None


def mask_key(key: str | None) -> str:
    """``"<unset>"`` or ``"<set, 32 chars>"``: never any character of the key itself."""
    return "<unset>" if not key else f"<set, {len(key)} chars>"


def redact_url(url: str | None) -> str | None:
    """A URL safe to log: its password (and user name) replaced by ``***``."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return parts._replace(netloc=netloc).geturl()


def check_setting(name: str, value: Any) -> str | None:
    """Validate one setting (its name or an older alias); return the problem as text, or None.
    Used by Django's system checks."""
    try:
        _BY_KEYWORD[name].parse(value)
    except _Invalid as exc:
        return str(exc)
    return None


def settings_table() -> str:
    """Every setting as a Markdown table (the README's settings table is generated from this)."""
    rows = ["| keyword / `DODO_INGEST_*` key | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = s.default
        if isinstance(default, tuple):
            default = list(default)
        rows.append(f"| `{s.name}` / `{s.key}` | `{default!r}` | {s.doc} |")
    return "\n".join(rows)
