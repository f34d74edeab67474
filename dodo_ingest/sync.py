"""Synchronous sends (``track_api_call``, ``Ingestion.send``, ``sync_mode``): in the calling thread, within a short
budget of their own (``sync_timeout``), and without holding any lock across network I/O.

Each call borrows a connection from a small pool and gives it back afterwards, so concurrent calls from many
threads each have their own connection and none waits on another's retries. The pool belongs to one process:
a forked child (by any means) never reuses the parent's sockets.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from dodo_ingest.config import Config
from dodo_ingest.delivery import Budget, Deliverer, Dropped, Pending
from dodo_ingest.stats import Counters, RateLimitedLog
from dodo_ingest.transport import Transport

#: Idle connections kept for later calls (more concurrent calls open their own and close them afterwards).
POOL_SIZE = 4


class SyncSender:
    """Delivers events in the calling thread with the shared policy, within ``sync_timeout`` (and
    ``max_retry_time``, if that is shorter)."""

    def __init__(
        self,
        config: Config,
        transport_factory: Callable[[Config], Transport],
        counters: Counters,
        log: RateLimitedLog,
    ) -> None:
        self.config = config
        self._factory = transport_factory
        self.counters = counters
        self.log = log
        self._pid = os.getpid()
        self._idle: list[Transport] = []
        self._lock = threading.Lock()  # guards the pool only; never held across I/O

    def send(self, events: list[Pending]) -> list[Dropped]:
        """Deliver up to 1000 events now; return what was dropped (all accounted for in the counters)."""
        transport = self._borrow()
        budget = min(self.config.sync_timeout, self.config.max_retry_time)
        try:
            deliverer = Deliverer(
                self.config,
                transport,
                self.counters,
                Budget(budget),
                self.log,
                budget=budget,
                deadline_reason="retries_exhausted",
            )
            return deliverer.deliver(events)
        finally:
            self._give_back(transport)

    def _borrow(self) -> Transport:
        pid = os.getpid()
        if self._pid != pid:  # a forked child: the idle connections are the parent's sockets; leave them
            self._idle, self._lock, self._pid = [], threading.Lock(), pid
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._factory(self.config)

    def _give_back(self, transport: Transport) -> None:
        if self._pid == os.getpid():
            with self._lock:
                if len(self._idle) < POOL_SIZE:
                    self._idle.append(transport)
                    return
        transport.close()

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for transport in idle:
            transport.close()
