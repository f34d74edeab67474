"""Who pays for a request: the example's API keys map to Dodo customers."""

from typing import Any

from django.http import HttpRequest

#: In a real app: a database lookup of the caller's API key (cached).
API_KEYS = {
    "key_alice": "cus_alice",
    "key_bob": "cus_bob",
    "key_carol": "cus_carol",
}


def customer_for(request: HttpRequest, response: Any) -> str | None:
    """``DODO_INGEST_CUSTOMER_RESOLVER``: the customer of the ``X-Api-Key`` header (looked up here, on the server:
    never a customer id the client names); None means not billed."""
    return API_KEYS.get(request.headers.get("X-Api-Key", ""))
