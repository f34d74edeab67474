"""What the test apps share: token authentication, settings from the environment, the per-request facts.

The billed customer comes from the server side: the client sends ``Authorization: Bearer <token>`` and the
app maps the token to its customer (``TOKENS``); an unknown or missing token gets 401 and is not billed.

``X-Test-Seq`` is the test driver's number for the request. The apps copy it into the event's metadata
(``seq``) only so that the tests can tell which request each stored event belongs to; it never decides who
is billed, nor the event id.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

#: Server-side credentials: bearer token -> the Dodo customer it bills.
TOKENS = {"tok_alice": "cus_alice", "tok_bob": "cus_bob", "tok_carol": "cus_carol"}

#: Paths the apps serve and meter (the health check is excluded from metering).
EXCLUDED = ["/health"]


def customer_for(authorization: str | None) -> str | None:
    """The customer of a ``Bearer`` token, or None (not authenticated)."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    return TOKENS.get(authorization[len("Bearer ") :].strip())


def seq_of(raw: str | None) -> int:
    """The driver's request number (``X-Test-Seq``), -1 when absent or not a number."""
    try:
        return int(raw or "")
    except ValueError:
        return -1


def metadata(seq: int) -> dict[str, Any]:
    """The event metadata the apps add for the tests: the request's number and the serving process."""
    return {"seq": seq, "pid": os.getpid()}


def body(customer: str, seq: int) -> bytes:
    """The JSON answer of a metered request: who was billed, which request, which process served it."""
    return json.dumps({"customer": customer, "seq": seq, "pid": os.getpid()}).encode()


def settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``DODO_INGEST_<NAME>`` environment variables as ``{name: value}`` (JSON values parsed)."""
    settings: dict[str, Any] = {}
    for key, raw in (os.environ if environ is None else environ).items():
        if key.startswith("DODO_INGEST_"):
            try:
                value: Any = json.loads(raw)
            except ValueError:
                value = raw
            settings[key[len("DODO_INGEST_") :].lower()] = value
    return settings
