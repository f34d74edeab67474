"""A plain WSGI app metered by :class:`dodo_ingest.wsgi.DodoIngestMiddleware`.

``GET /health`` (not metered), ``GET /api/work`` (JSON), ``GET /api/stream`` (a streamed body).
Settings come from ``DODO_INGEST_*`` variables; the key and host from ``DODO_PAYMENTS_*``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from dodo_ingest import annotate
from dodo_ingest.wsgi import DodoIngestMiddleware
from tests.servers.apps.common import EXCLUDED, body, customer_for, metadata, seq_of, settings_from_env

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def _stream(payload: bytes) -> Iterator[bytes]:
    for _ in range(3):
        yield b"chunk\n"
    yield payload


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The bare application."""
    path = environ.get("PATH_INFO", "")
    if path == "/health":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    if path not in ("/api/work", "/api/stream"):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    customer = customer_for(environ.get("HTTP_AUTHORIZATION"))
    if customer is None:
        start_response("401 Unauthorized", [("Content-Type", "text/plain")])
        return [b"unauthorized"]
    seq = seq_of(environ.get("HTTP_X_TEST_SEQ"))
    annotate(customer_id=customer, metadata=metadata(seq))
    payload = body(customer, seq)
    if path == "/api/stream":
        start_response("200 OK", [("Content-Type", "application/json")])
        return _stream(payload)
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]


application = DodoIngestMiddleware(app, exclude_paths=EXCLUDED, **settings_from_env())
