"""A plan table reached by dotted path, as a user's ``DODO_INGEST_RATE_LIMITS = "myapp.billing.limits_for"``."""

from __future__ import annotations

PLANS = {"cus_free": "2/minute;100/month"}


def limits_for(customer_id: str) -> str | None:
    """The free plan's limits; everyone else is unlimited."""
    return PLANS.get(customer_id)
