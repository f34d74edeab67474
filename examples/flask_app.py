"""A minimal Flask API metered with dodo-ingest.

Configuration comes from the environment: ``DODO_PAYMENTS_API_KEY`` (required), ``DODO_PAYMENTS_BASE_URL``
(e.g. a local server started with ``dodo-ingest serve``) and any ``DODO_INGEST_<SETTING>`` variable
(``DODO_INGEST_FLUSH_INTERVAL=2``, ``DODO_INGEST_EXCLUDE_PATHS='["/internal"]'``; JSON values are parsed).

    dodo-ingest serve --port 8765 &
    export DODO_PAYMENTS_API_KEY=sk_test_local DODO_PAYMENTS_BASE_URL=http://127.0.0.1:8765
    flask --app examples/flask_app.py run                # or: gunicorn -w 2 examples.flask_app:app
    curl -H 'X-Api-Key: key_alice' localhost:5000/api/v1/items/42

The billed customer comes from the caller's credentials, looked up on the server: never from a customer id the
client sends (a client could then bill its calls to someone else).
"""

from __future__ import annotations

import json
import os
from typing import Any

from flask import Flask, abort, g, request

from dodo_ingest_flask import DodoIngest


def settings_from_env(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``DODO_INGEST_*`` environment variables as Flask config values (JSON parsed when it parses)."""
    settings: dict[str, Any] = {}
    for key, raw in (os.environ if environ is None else environ).items():
        if key.startswith("DODO_INGEST_"):
            try:
                settings[key] = json.loads(raw)
            except ValueError:
                settings[key] = raw
    return settings


app = Flask(__name__)
app.config.update(settings_from_env())
dodo = DodoIngest(app)


#: Stand-in for your authentication: in a real app, a (cached) database lookup of the caller's API key.
API_KEYS = {"key_alice": "cus_alice", "key_bob": "cus_bob", "key_carol": "cus_carol"}


@app.before_request
def authenticate() -> None:
    customer_id = API_KEYS.get(request.headers.get("X-Api-Key", ""))
    if customer_id:
        g.dodo_customer_id = customer_id  # the extension's default customer
    elif request.path.startswith("/api/"):
        abort(401)


@app.get("/api/v1/items/<int:item_id>")
def get_item(item_id: int) -> dict[str, Any]:
    if item_id > 1000:
        abort(404)
    return {"id": item_id, "name": f"Item {item_id}"}


@app.post("/api/v1/items")
def create_item() -> tuple[dict[str, Any], int]:
    body = request.get_json(silent=True) or {}
    if "name" not in body:
        return {"error": "name is required"}, 422
    return {"id": 1001, "name": body["name"]}, 201


@app.get("/health")
@dodo.exempt
def health() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    app.run(port=5000)
