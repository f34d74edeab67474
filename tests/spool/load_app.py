"""A WSGI app for the spool's real-server tests: every answered request carries its caller's ``X-Request-Id``
into its event's metadata, so a test can match events to answered requests one by one.

Settings come from ``DODO_INGEST_*`` environment variables (JSON values parsed), e.g. ``DODO_INGEST_SPOOL_DIR``.
Run: ``gunicorn -w 8 tests.spool.load_app:application``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from dodo_ingest.wsgi import DodoIngestMiddleware, set_customer

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def settings(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """``DODO_INGEST_<NAME>`` variables as keyword settings."""
    result: dict[str, Any] = {}
    for key, value in environ.items():
        if key.startswith("DODO_INGEST_"):
            try:
                result[key[len("DODO_INGEST_") :].lower()] = json.loads(value)
            except ValueError:
                result[key[len("DODO_INGEST_") :].lower()] = value
    return result


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """``/health`` (not metered) and anything else: 200 with a small JSON body, billed to one customer."""
    set_customer(environ, "cus_load")  # a stand-in for a real authentication lookup
    body = b'{"ok":true}'
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def request_id(environ: WSGIEnvironment, status: str, headers: list[tuple[str, str]]) -> dict[str, str]:
    """The caller's request id, to match events to requests in tests."""
    return {"request_id": environ.get("HTTP_X_REQUEST_ID", "")}


application = DodoIngestMiddleware(app, exclude_paths=["/health"], metadata_hook=request_id, **settings())
