"""System checks (``python manage.py check``): every configuration mistake, with a stable id.

The values are validated by the core schema (:func:`dodo_ingest.config.check_setting`), so a check and
start-up agree on what is valid; this module only sorts the problems into ids. No check does network I/O
(``manage.py dodo_ingest_check`` does the connectivity test).

==================  =====================================================================================
id                  meaning
==================  =====================================================================================
dodo_ingest.E001    no API key: ``DODO_INGEST_API_KEY`` unset or blank and ``DODO_PAYMENTS_API_KEY`` unset
dodo_ingest.E002    a ``DODO_INGEST_*`` setting has the wrong type
dodo_ingest.E003    a dotted path (``DODO_INGEST_CUSTOMER_RESOLVER = "app.billing.customer_for"``) cannot be imported
dodo_ingest.E004    a callable setting is neither callable nor a dotted path to a callable
dodo_ingest.E005    an ``INCLUDE_PATHS`` / ``EXCLUDE_PATHS`` entry is not a valid regular expression
dodo_ingest.E006    a value is out of range or not one of the allowed values
dodo_ingest.E007    the app is installed but ``DodoIngestMiddleware`` is not in ``MIDDLEWARE``
dodo_ingest.E008    ``DodoIngestMiddleware`` is in ``MIDDLEWARE`` more than once (each request would bill twice)
dodo_ingest.W001    ``DodoIngestMiddleware`` is not at the top of ``MIDDLEWARE``: responses returned early by
                    the middleware above it are not metered
dodo_ingest.W002    an unknown ``DODO_INGEST_*`` setting (a typo?); it is ignored
dodo_ingest.W003    rate limits on ``memory://`` storage with several worker processes: each process counts on
                    its own, so every limit is multiplied by the number of workers
==================  =====================================================================================
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks

from dodo_ingest.config import ENV_API_KEY, PREFIX, SETTINGS, Setting, check_setting, import_dotted
from dodo_ingest.ratelimit.settings import DEFAULT_STORAGE

TAG = "dodo_ingest"
MIDDLEWARE_PATH = "dodo_ingest_django.middleware.DodoIngestMiddleware"

#: Middleware that may sit above DodoIngestMiddleware without hiding billable responses from it.
SAFE_ABOVE = frozenset(
    {
        "django.middleware.security.SecurityMiddleware",  # HTTPS redirects are not API calls
        "django.middleware.gzip.GZipMiddleware",  # never answers by itself
        "whitenoise.middleware.WhiteNoiseMiddleware",  # static files
        "corsheaders.middleware.CorsMiddleware",  # answers CORS preflights (not metered by default)
        "django_prometheus.middleware.PrometheusBeforeMiddleware",
    }
)

#: How each setting's value is typed, for sorting problems into E002 (type) and E006 (value).
CALLABLE_SETTINGS = frozenset(
    {
        "on_error",
        "on_drop",
        "customer_resolver",
        "should_meter",
        "metadata_hook",
        "rate_limit_key",
        "rate_limit_billing_anchor",
        "rate_limit_response",
    }
)
PATH_SETTINGS = frozenset({"include_paths", "exclude_paths"})
_REGEX_CHARS = frozenset("^$*+?{}[]\\|()")


def register() -> None:
    """Register the checks (done by the app's ``ready()``); idempotent."""
    checks.register(check_settings, TAG)
    checks.register(check_middleware, TAG)
    checks.register(check_rate_limit_storage, TAG)


def _error(id_: int, msg: str, hint: str | None = None) -> checks.CheckMessage:
    return checks.Error(msg, hint=hint, id=f"dodo_ingest.E{id_:03d}")


def _warning(id_: int, msg: str, hint: str | None = None) -> checks.CheckMessage:
    return checks.Warning(msg, hint=hint, id=f"dodo_ingest.W{id_:03d}")


def check_settings(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Validate every ``DODO_INGEST_*`` setting (E001-E006, W002)."""
    messages: list[checks.CheckMessage] = []
    known = {key for s in SETTINGS for key in _keys(s)}
    for setting in SETTINGS:
        for key in _keys(setting):
            if not hasattr(settings, key):
                continue
            value = getattr(settings, key)
            if setting.name == "api_key" and (value is None or (isinstance(value, str) and not value.strip())):
                continue  # reported as E001 below
            message = _check_one(setting, key, value)
            if message is not None:
                messages.append(message)
    enabled = getattr(settings, PREFIX + "ENABLED", True)
    api_key = getattr(settings, PREFIX + "API_KEY", None)
    missing = api_key is None or (isinstance(api_key, str) and not api_key.strip())
    if enabled is not False and missing and not os.environ.get(ENV_API_KEY, "").strip():
        messages.append(
            _error(
                1,
                "dodo-ingest has no API key: settings.DODO_INGEST_API_KEY is "
                f"{'blank' if api_key is not None else 'not set'} and {ENV_API_KEY} is not in the environment.",
                hint=f"Set DODO_INGEST_API_KEY (e.g. from the {ENV_API_KEY} environment variable), or set "
                "DODO_INGEST_ENABLED = False to switch metering off.",
            )
        )
    for name in sorted(n for n in dir(settings) if n.startswith(PREFIX) and n not in known):
        close = difflib.get_close_matches(name, sorted(known), n=1)
        messages.append(
            _warning(
                2,
                f"settings.{name} is not a dodo-ingest setting; it is ignored.",
                hint=f"Did you mean {close[0]}?" if close else "See the settings table in the README.",
            )
        )
    return messages


def _keys(setting: Setting) -> tuple[str, ...]:
    """The setting's ``DODO_INGEST_*`` name, and those of its older aliases (still accepted)."""
    return (setting.key, *(PREFIX + alias.upper() for alias in setting.aliases))


def _check_one(setting: Setting, key: str, value: Any) -> checks.CheckMessage | None:
    label = f"settings.{key}"
    if setting.name in CALLABLE_SETTINGS or (setting.name == "rate_limits" and _is_dotted(value)):
        return _check_callable(label, value)
    problem = check_setting(setting.name, value)
    if problem is None:
        return None
    if setting.name in PATH_SETTINGS:
        bad = _bad_regex(value)
        if bad is not None:
            return _error(
                5,
                f"{label}: {bad}",
                hint="Entries containing any of ^$*+?{}[]\\|() are regular expressions that must "
                "match the whole path; escape literal characters or use a plain prefix.",
            )
    if _has_expected_type(setting, value):
        return _error(6, f"{label}: {problem}")
    return _error(2, f"{label} has the wrong type: {problem}")


def _is_dotted(value: Any) -> bool:
    """``"myapp.billing.limits_for"`` (a plan callable), not limits such as ``"100/minute"``."""
    return isinstance(value, str) and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", value.strip()) is not None


def _check_callable(label: str, value: Any) -> checks.CheckMessage | None:
    if value is None or (callable(value) and not isinstance(value, str)):
        return None
    if isinstance(value, str):
        try:
            target = import_dotted(value)
        except Exception as exc:
            return _error(
                3,
                f"{label}: cannot import {value!r}: {exc}",
                hint="Write it as 'package.module.function' and check the module imports cleanly.",
            )
        if not callable(target):
            return _error(4, f"{label}: {value!r} is a {type(target).__name__}, not a callable.")
        return None
    return _error(4, f"{label}: expected a callable or a dotted path to one, got {type(value).__name__}.")


def _bad_regex(value: Any) -> str | None:
    if isinstance(value, str) or not isinstance(value, Iterable):
        return None
    for i, entry in enumerate(value):
        if isinstance(entry, str) and _REGEX_CHARS.intersection(entry):
            try:
                re.compile(entry)
            except re.error as exc:
                return f"entry {i} {entry!r} is not a valid regular expression: {exc}"
    return None


def _has_expected_type(setting: Setting, value: Any) -> bool:
    if setting.name == "rate_limits":  # "100/minute", a list of such strings, or a callable
        if isinstance(value, (list, tuple)):
            return all(isinstance(entry, str) for entry in value)
        return value is None or isinstance(value, str) or callable(value)
    default = setting.default
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, (tuple, list, frozenset)) or setting.name in PATH_SETTINGS:
        return (
            isinstance(value, Iterable)
            and not isinstance(value, str)
            and all(isinstance(entry, str) for entry in value)
        )
    return value is None or isinstance(value, str)


def check_middleware(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``DodoIngestMiddleware`` is in ``MIDDLEWARE`` exactly once, at the top (E007, E008, W001)."""
    middleware = getattr(settings, "MIDDLEWARE", None) or []
    if isinstance(middleware, str) or not isinstance(middleware, Iterable):
        return []
    entries = [m for m in middleware if isinstance(m, str)]
    positions = [i for i, m in enumerate(entries) if m == MIDDLEWARE_PATH]
    if not positions:
        return [
            _error(
                7,
                f"{MIDDLEWARE_PATH} is not in settings.MIDDLEWARE, so no request is metered.",
                hint=f"Add '{MIDDLEWARE_PATH}' as the first entry of MIDDLEWARE.",
            )
        ]
    if len(positions) > 1:
        return [
            _error(
                8,
                f"{MIDDLEWARE_PATH} is in settings.MIDDLEWARE {len(positions)} times; every request would be "
                "billed more than once.",
                hint="Keep one entry, at the top of MIDDLEWARE.",
            )
        ]
    above = [m for m in entries[: positions[0]] if m not in SAFE_ABOVE]
    if above:
        return [
            _warning(
                1,
                f"{MIDDLEWARE_PATH} comes after {', '.join(above)} in settings.MIDDLEWARE: responses they "
                "return by themselves (redirects, 403s, cached pages) are not metered.",
                hint="Move it to the top of MIDDLEWARE so that it sees every response.",
            )
        ]
    return []


def check_rate_limit_storage(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Rate limits on ``memory://`` with several worker processes (W003)."""
    if getattr(settings, PREFIX + "RATE_LIMITS", None) is None or getattr(settings, PREFIX + "ENABLED", True) is False:
        return []
    storage = getattr(settings, PREFIX + "RATE_LIMIT_STORAGE", DEFAULT_STORAGE)
    if not isinstance(storage, str):
        return []  # reported as E002
    try:
        from dodo_ingest.ratelimit import shared_memory_warning, worker_processes
    except ImportError:
        return []  # the `limits` package is missing: reported by check_settings (E006)
    workers = worker_processes()
    if shared_memory_warning(storage, workers) is None:
        return []
    return [
        _warning(
            3,
            f"settings.DODO_INGEST_RATE_LIMIT_STORAGE is {storage!r} with {workers} worker processes: each process "
            f"counts on its own, so every rate limit is in effect multiplied by {workers}.",
            hint="Set DODO_INGEST_RATE_LIMIT_STORAGE = 'redis://host:6379/0' so that every worker (and host) "
            "counts in one place.",
        )
    ]
