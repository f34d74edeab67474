"""``dodo-ingest demo``: the whole path, end to end, offline, in well under a minute.

1. starts the local Dodo-compatible server (in-process, ephemeral port, in-memory database);
2. serves an instrumented sample Flask API on loopback (:mod:`dodo_ingest.demo.app`);
3. drives realistic traffic from several customers over real HTTP, from several threads: path parameters,
   4xx and 5xx, an unhandled exception, a streamed export, unidentified requests (not billed) and an
   exempt health check;
4. flushes, reads the events back from the server with ``GET /events`` (paged), and prints calls per
   customer and per endpoint, latency percentiles, error rates and the SDK's own counters;
5. checks that the server holds exactly one event per metered request (exit status 1 if not).
"""

from __future__ import annotations

from dodo_ingest.demo.runner import main

__all__ = ["main"]
