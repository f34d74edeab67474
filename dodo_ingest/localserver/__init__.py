"""A local, Dodo-compatible usage-events server (standard library only).

``LocalDodoServer`` is the embedded default the SDK's demo, its test-suite and
local development run against: it accepts exactly what Dodo's
``POST /events/ingest`` accepts (see :mod:`.rules`), stores events and meters in
SQLite (:mod:`.store`), serves ``GET /events``, ``GET /events/{id}`` and Dodo's
``/meters`` API (:mod:`.meters`), a dashboard at ``/`` (:mod:`.dashboard`),
optionally Dodo's per-key request budget (:mod:`.ratelimit`), and can be
scripted to misbehave with :class:`Fault` (:mod:`.faults`). ``main`` is the
``dodo-ingest serve`` command line.

    from dodo_ingest.localserver import LocalDodoServer, Fault

    with LocalDodoServer(api_key="sk_test") as server:
        server.add_faults(Fault(status=503, retry_after="1"))
        ...  # point the SDK at server.url
        assert server.wait_for_events(10)
"""

from .faults import Fault
from .rules import RuleViolation
from .server import LocalDodoServer, RequestRecord, main

__all__ = ["Fault", "LocalDodoServer", "RequestRecord", "RuleViolation", "main"]
