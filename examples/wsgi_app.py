"""A minimal plain-WSGI app (no framework) metered with ``DodoIngestMiddleware``.

``DODO_PAYMENTS_API_KEY`` and ``DODO_PAYMENTS_BASE_URL`` come from the environment.

    dodo-ingest serve --port 8765 &
    export DODO_PAYMENTS_API_KEY=sk_test_local DODO_PAYMENTS_BASE_URL=http://127.0.0.1:8765
    python examples/wsgi_app.py                            # or: gunicorn -w 2 examples.wsgi_app:application
    curl -H 'X-Api-Key: key_alice' localhost:8000/api/v1/items/42

The billed customer comes from the caller's credentials, looked up on the server: never from a customer id the
client sends (a client could then bill its calls to someone else).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from dodo_ingest.wsgi import DodoIngestMiddleware, set_customer

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


#: Stand-in for your authentication: in a real app, a (cached) database lookup of the caller's API key.
API_KEYS = {"key_alice": "cus_alice", "key_bob": "cus_bob", "key_carol": "cus_carol"}


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """Two routes: ``GET /api/v1/items/<id>`` (needs an API key) and ``GET /health``; anything else is 404."""
    customer_id = API_KEYS.get(environ.get("HTTP_X_API_KEY", ""))
    if customer_id:
        set_customer(environ, customer_id)
    path = environ.get("PATH_INFO", "/")
    if path == "/health":
        body, status = {"status": "ok"}, "200 OK"
    elif path.startswith("/api/") and customer_id is None:
        body, status = {"error": "a valid X-Api-Key is required"}, "401 Unauthorized"
    elif path.startswith("/api/v1/items/") and path.rsplit("/", 1)[1].isdigit():
        body, status = {"id": int(path.rsplit("/", 1)[1])}, "200 OK"
    else:
        body, status = {"error": "not found"}, "404 Not Found"
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


# /api/v1/items/42 is metered as the endpoint /api/v1/items/{id}; 404s as <unmatched>.
application = DodoIngestMiddleware(app, exclude_paths=["/health"])


if __name__ == "__main__":
    from wsgiref.simple_server import make_server

    with make_server("127.0.0.1", 8000, application) as server:
        print("serving on http://127.0.0.1:8000")
        server.serve_forever()
