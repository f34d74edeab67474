"""The demo's sample API: a small multi-tenant Flask API metered with :class:`dodo_ingest_flask.DodoIngest`.

Customers authenticate with ``Authorization: Bearer <token>``; ``before_request`` maps the token to the
customer's Dodo id and stores it in ``g.dodo_customer_id`` (the extension's default customer). Requests
without a valid token get 401 and, having no customer, are not billed. ``/health`` is exempt. Each customer's
plan sets its rate limits; a customer over its quota gets 429 (not billed).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from flask import Flask, Response, abort, g, request, stream_with_context

from dodo_ingest import annotate
from dodo_ingest_flask import DodoIngest

#: (Dodo customer id, display name) of the demo's customers; more are generated when asked for.
CUSTOMER_NAMES = [
    ("cus_acme", "Acme Corp"),
    ("cus_globex", "Globex"),
    ("cus_initech", "Initech"),
    ("cus_umbrella", "Umbrella"),
    ("cus_hooli", "Hooli"),
    ("cus_stark", "Stark Industries"),
    ("cus_wayne", "Wayne Enterprises"),
    ("cus_tyrell", "Tyrell Corp"),
]

#: Users with an id above this do not exist (404).
MAX_USER_ID = 1000


def customers(count: int) -> list[tuple[str, str]]:
    """``count`` demo customers as (customer id, name)."""
    result = list(CUSTOMER_NAMES[:count])
    for index in range(len(result), count):
        result.append((f"cus_demo_{index + 1:03d}", f"Demo Customer {index + 1}"))
    return result


def token_for(customer_id: str) -> str:
    """The demo API token of a customer."""
    return "tok_" + hashlib.sha256(customer_id.encode()).hexdigest()[:16]


def _pause(key: str, low_ms: float, high_ms: float) -> None:
    """A deterministic, key-dependent pause standing in for real work (a database, a search index)."""
    fraction = int(hashlib.sha256(key.encode()).hexdigest()[:4], 16) / 0xFFFF
    time.sleep((low_ms + (high_ms - low_ms) * fraction) / 1000.0)


#: Units one report export consumes from its customer's quota (and bills: the event's ``cost``).
EXPORT_COST = 5


def create_app(
    customer_ids: list[str], *, plans: Mapping[str, str] | None = None, **dodo_settings: Any
) -> tuple[Flask, DodoIngest]:
    """The sample API and its extension; ``plans`` maps customers to their rate limits (``"20/month"``).

    With plans, every request of a known customer is checked before its view (dodo-ingest's rate limiting,
    ``memory://`` storage: the demo is one process): over its limits a customer gets 429 and is not billed.
    """
    app = Flask("dodo_ingest_demo")
    app.logger.setLevel(logging.CRITICAL)  # the demo's deliberate exceptions need no tracebacks
    tokens = {token_for(customer_id): customer_id for customer_id in customer_ids}
    if plans is not None:
        dodo_settings.setdefault("rate_limits", plans.get)  # (customer_id) -> limits | None
    dodo = DodoIngest(app, **dodo_settings)
    lock = threading.Lock()
    orders: dict[str, int] = {}

    @app.before_request
    def authenticate() -> None:
        if request.path in ("/health", "/api/v1/status"):
            header = request.headers.get("Authorization", "")
            customer = tokens.get(header.removeprefix("Bearer "))
            if customer:
                g.dodo_customer_id = customer
            return
        header = request.headers.get("Authorization", "")
        customer = tokens.get(header.removeprefix("Bearer "))
        if customer is None:
            abort(401)
        g.dodo_customer_id = customer  # the extension's default customer (and whose limits apply)

    @app.get("/health")
    @dodo.exempt
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/v1/status")
    def status() -> dict[str, Any]:
        return {"status": "operational", "version": "2026.11"}

    @app.get("/api/v1/users/<int:user_id>")
    def get_user(user_id: int) -> dict[str, Any]:
        _pause(f"user{user_id}", 0.5, 3)
        if user_id > MAX_USER_ID:
            abort(404)
        return {"id": user_id, "name": f"User {user_id}", "plan": "pro" if user_id % 3 else "free"}

    @app.get("/api/v1/users/<int:user_id>/orders")
    def list_orders(user_id: int) -> dict[str, Any]:
        _pause(f"orders{user_id}", 1, 6)
        return {"user_id": user_id, "orders": [{"id": user_id * 10 + i} for i in range(user_id % 5)]}

    @app.post("/api/v1/orders")
    def create_order() -> tuple[dict[str, Any], int]:
        body: Mapping[str, Any] = request.get_json(silent=True) or {}
        if not isinstance(body.get("sku"), str) or not isinstance(body.get("quantity"), int):
            return {"error": "sku (string) and quantity (integer) are required"}, 422
        _pause(body["sku"], 2, 8)
        with lock:
            orders[g.dodo_customer_id] = orders.get(g.dodo_customer_id, 0) + 1
        annotate(metadata={"quantity": body["quantity"]})
        return {"sku": body["sku"], "quantity": body["quantity"], "status": "accepted"}, 201

    @app.get("/api/v1/search")
    def search() -> dict[str, Any]:
        query = request.args.get("q", "")
        _pause("search" + query, 3, 25)
        results = len(query) * 3
        annotate(metadata={"results": results})  # extra metadata from inside a view
        return {"query": query, "results": results}

    @app.get("/api/v1/reports/<report_id>/export")
    @dodo.meter(metadata={"feature": "export"})
    @dodo.limit(cost=EXPORT_COST)  # an export uses 5 units of its customer's quota, and bills 5
    def export_report(report_id: str) -> Response:
        def rows() -> Iterator[str]:
            yield "day,calls\n"
            for day in range(1, 6):
                _pause(f"{report_id}{day}", 1, 3)  # the body streams: the event is timed to its end
                yield f"2026-11-{day:02d},{day * 17}\n"

        return Response(stream_with_context(rows()), mimetype="text/csv")

    @app.get("/api/v1/flaky")
    def flaky() -> dict[str, str]:
        if request.args.get("fail") == "1":
            raise RuntimeError("upstream database timed out")  # metered as 500 with error=RuntimeError
        return {"status": "ok"}

    return app, dodo
