"""Route templates for plain WSGI apps, which have no router the SDK can ask.

Billing needs a small, stable set of endpoint names (invariant 8): ``/users/123`` and ``/users/456``
must both be metered as ``/users/{id}``, and a raw id must never become an endpoint name. The default
resolver, :func:`default_route_resolver`, normalizes the path segment by segment; every segment that
looks like an identifier becomes the placeholder ``{id}``:

=========================================  ==============================  ===================
kind                                       example segment                 becomes
=========================================  ==============================  ===================
integer                                    ``123``, ``-7``                 ``{id}``
UUID (with or without dashes)              ``9f1c2b7e-4d5a-...``           ``{id}``
hex of 8+ characters with a digit          ``9f1c2b7e``, ``deadbeef01``    ``{id}``
token of 10+ characters with a digit       ``cus_8Kq2mZ01xY``, ``2024-01-31``  ``{id}``
prefixed id (``word_`` + 10+ characters)   ``cus_NffrFeUfNVzHib``          ``{id}``
anything longer than 64 characters         (a signed token, an e-mail)     ``{id}``
=========================================  ==============================  ===================

Ordinary words (``users``, ``v1``, ``orders``, ``deadbeef``, ``healthz``) are kept. A request answered
with 404 gets the constant ``<unmatched>``, so scanners probing random
paths add one endpoint, not thousands. If your framework knows the real route template (Pyramid's
``matched_route``, Bottle's ``bottle.route``), pass your own resolver ``(environ, status_code) -> str | None``
to :class:`~dodo_ingest.wsgi.DodoIngestMiddleware`; returning None means "unmatched".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

__all__ = ["PLACEHOLDER", "RouteResolver", "default_route_resolver", "is_identifier", "normalize_path"]

#: What an id-like path segment is replaced with.
PLACEHOLDER = "{id}"

#: ``(environ, status_code) -> route template``; None means no route matched (metered as unmatched).
RouteResolver = Callable[[Mapping[str, Any], int], str | None]

_INTEGER = re.compile(r"[+-]?\d+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
_HEX = re.compile(r"[0-9a-fA-F]{8,}")
_TOKEN = re.compile(r"[A-Za-z0-9_.~:=-]{10,}")
_PREFIXED = re.compile(r"[A-Za-z]{2,12}_[A-Za-z0-9]{10,}")
_MAX_SEGMENT = 64


def is_identifier(segment: str) -> bool:
    """Whether a path segment looks like an identifier rather than a word (see the module's table)."""
    if not segment:
        return False
    if len(segment) > _MAX_SEGMENT:
        return True
    if _INTEGER.fullmatch(segment) or _UUID.fullmatch(segment) or _PREFIXED.fullmatch(segment):
        return True
    has_digit = any(c.isdigit() for c in segment)
    if not has_digit:
        return False
    return bool(_HEX.fullmatch(segment) or _TOKEN.fullmatch(segment))


@lru_cache(maxsize=4096)
def normalize_path(path: str) -> str:
    """``/users/123/orders/9f1c2b7e4d5a`` -> ``/users/{id}/orders/{id}`` (cached: paths repeat)."""
    if not path:
        return "/"
    segments = path.split("/")
    changed = False
    for index, segment in enumerate(segments):
        if is_identifier(segment):
            segments[index] = PLACEHOLDER
            changed = True
    result = "/".join(segments) if changed else path
    return result if result.startswith("/") else "/" + result


def default_route_resolver(environ: Mapping[str, Any], status_code: int) -> str | None:
    """The normalized ``PATH_INFO`` (see :func:`normalize_path`); None (unmatched) for a 404."""
    if status_code == 404:
        return None
    path: str = environ.get("PATH_INFO") or "/"
    if not path.isascii():  # PEP 3333 hands the path over as latin-1-decoded bytes
        path = path.encode("latin-1", "replace").decode("utf-8", "replace")
    return normalize_path(path)
