"""dodo-ingest for Flask: meter every API call of a Flask app for usage-based billing with Dodo Payments.

>>> from dodo_ingest_flask import DodoIngest
>>> dodo = DodoIngest()          # app.config["DODO_INGEST_API_KEY"], ["DODO_INGEST_EVENT_NAME"], ...
>>> dodo.init_app(app)           # or DodoIngest(app, customer_resolver=lambda request, response: ...)

Per request: ``g.dodo_customer_id = "cus_..."`` (the default customer) or :func:`set_customer`;
per view: :func:`exempt`, :func:`meter` and :func:`limit` (a blueprint: ``dodo.exempt(bp)``). See
:mod:`dodo_ingest_flask.extension` for how a request becomes exactly one event, and where its rate limits
are checked.
"""

from dodo_ingest.request import annotate
from dodo_ingest_flask.extension import (
    EXTENSION_KEY,
    DodoIngest,
    RateLimitExceeded,
    RateLimitUnavailable,
    ViewOptions,
    exempt,
    limit,
    meter,
    set_customer,
)

__all__ = [
    "EXTENSION_KEY",
    "DodoIngest",
    "RateLimitExceeded",
    "RateLimitUnavailable",
    "ViewOptions",
    "annotate",
    "exempt",
    "limit",
    "meter",
    "set_customer",
]
