"""A Flask app metered by :class:`dodo_ingest_flask.DodoIngest` (settings from ``DODO_INGEST_*`` variables)."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Flask, Response, abort, g, request

from dodo_ingest import annotate
from dodo_ingest_flask import DodoIngest
from tests.servers.apps.common import EXCLUDED, body, customer_for, metadata, seq_of, settings_from_env

app = Flask(__name__)
app.config.update({"DODO_INGEST_" + name.upper(): value for name, value in settings_from_env().items()})
app.config["DODO_INGEST_EXCLUDE_PATHS"] = EXCLUDED
dodo = DodoIngest(app)


@app.before_request
def authenticate() -> None:
    # The customer is what the server's authentication says, never a client-supplied id.
    customer = customer_for(request.headers.get("Authorization"))
    if customer is None and request.path != "/health":
        abort(401)
    g.customer = customer


def _bill() -> bytes:
    seq = seq_of(request.headers.get("X-Test-Seq"))
    annotate(customer_id=g.customer, metadata=metadata(seq))
    return body(g.customer, seq)


@app.get("/health")
def health() -> str:
    return "ok"


@app.get("/api/work")
def work() -> Response:
    return Response(_bill(), mimetype="application/json")


@app.get("/api/stream")
def stream() -> Response:
    payload = _bill()

    def chunks() -> Iterator[bytes]:
        for _ in range(3):
            yield b"chunk\n"
        yield payload

    return Response(chunks(), mimetype="application/json")
