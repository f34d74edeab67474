"""Usage-based rate limits and billing-period quotas per customer, shared across workers and hosts.

The framework-free core; the adapters call it before the view::

    limiter = Limiter.from_config(config)               # or Limiter("100/minute;20000/month", storage=...)
    decision = limiter.check(customer_id, scope="render", cost=5, limits="10/minute")
    if not decision.allowed:
        status, headers, body = rejection_response(decision)   # 429 (503 if the store is down, fail closed)
    response_headers.extend(decision.headers())         # RateLimit-Policy / RateLimit on every response

``await limiter.acheck(...)`` in async code; ``limiter.usage(customer_id)`` for the app's own UI.
:data:`RATE_LIMIT_SETTINGS` are the settings, in the core's schema. Importing this package does not import
``limits``: the names below load on first use, so the core can merge the settings without the extra installed.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from dodo_ingest.ratelimit.settings import RATE_LIMIT_SETTINGS

if TYPE_CHECKING:
    from dodo_ingest.ratelimit.decision import Decision, LimitState, rejection_response
    from dodo_ingest.ratelimit.limiter import Limiter, RateLimit, parse_limits, shared_memory_warning, worker_processes

__all__ = [
    "RATE_LIMIT_SETTINGS",
    "Decision",
    "LimitState",
    "Limiter",
    "RateLimit",
    "parse_limits",
    "rejection_response",
    "shared_memory_warning",
    "worker_processes",
]

_LAZY = {
    "Decision": "decision",
    "LimitState": "decision",
    "rejection_response": "decision",
    "Limiter": "limiter",
    "RateLimit": "limiter",
    "parse_limits": "limiter",
    "shared_memory_warning": "limiter",
    "worker_processes": "limiter",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
