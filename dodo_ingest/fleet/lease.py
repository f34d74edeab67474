"""The embedded forwarder (``forwarder="embedded"``): the app processes elect one of themselves to forward.

Every batcher with a buffer and ``forwarder="embedded"`` runs a thread that tries to take the lease, a redis-py
:class:`~redis.lock.Lock` on ``<prefix>:lease`` with a timeout of :data:`LEASE` seconds, every
:data:`ELECTION_INTERVAL` seconds. The process that holds it runs a :class:`~dodo_ingest.fleet.forwarder.Forwarder`
in that thread and renews the lease after every round (``reacquire``); if it cannot (Redis lost the key, or the
process stalled past the lease and another took over), it stops forwarding and goes back to trying. A process that
dies stops renewing, and another takes over when the lease runs out; what the dead one had in hand is claimed
(``XAUTOCLAIM``) like any forwarder's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable

from redis.exceptions import LockError, RedisError

from dodo_ingest.config import Config
from dodo_ingest.fleet.forwarder import Forwarder
from dodo_ingest.fleet.stream import Keys, connect
from dodo_ingest.transport import Transport

logger = logging.getLogger("dodo_ingest.fleet.lease")

#: Seconds the lease lasts unless renewed (and the forwarder's claim lease).
LEASE = 15.0
#: Seconds between a waiting process's attempts to take the lease.
ELECTION_INTERVAL = 2.0


class EmbeddedForwarder:
    """One app process's candidacy for the fleet's forwarder. Thread-safe; every method returns promptly."""

    def __init__(self, config: Config, transport_factory: Callable[[Config], Transport]) -> None:
        assert config.buffer_url is not None
        self.config = config
        self.url = config.buffer_url
        self._factory = transport_factory
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._forwarder: Forwarder | None = None

    @property
    def is_leader(self) -> bool:
        """Whether this process forwards for the fleet now."""
        return self._forwarder is not None

    def start(self) -> None:
        """Start the candidacy thread, if it is not running."""
        with self._lock:
            if self._stop.is_set() or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(target=self._run, name="dodo-ingest-forwarder", daemon=True)
        try:
            self._thread.start()
        except RuntimeError:  # at interpreter shutdown
            logger.debug("dodo-ingest could not start its embedded forwarder", exc_info=True)

    def shutdown(self, timeout: float) -> None:
        """Stop forwarding (finishing the request in hand within ``timeout``) and give the lease up."""
        self._stop.set()
        with self._lock:
            forwarder, thread = self._forwarder, self._thread
        if forwarder is not None:
            forwarder.stop_timeout = min(forwarder.stop_timeout, timeout)
            forwarder.stop()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        client = connect(self.url, timeout=5.0, connect_timeout=2.0)
        lease = client.lock(Keys(self.config.buffer_stream).lease, timeout=LEASE, blocking=False, thread_local=False)
        name = f"{socket.gethostname()}-{os.getpid()}-embedded-{os.urandom(2).hex()}"
        try:
            while not self._stop.is_set():
                try:
                    elected = lease.acquire(blocking=False)
                except RedisError:
                    elected = False
                if not elected:
                    self._stop.wait(ELECTION_INTERVAL)
                    continue
                logger.info("dodo-ingest: this process (%d) forwards the buffer for the fleet", os.getpid())
                forwarder = Forwarder(self.config, self.url, name=name, lease=LEASE, transport_factory=self._factory)

                def renew(forwarder: Forwarder = forwarder) -> None:
                    try:
                        lease.reacquire()
                    except (LockError, RedisError):
                        logger.warning("dodo-ingest: this process lost the forwarder lease; it stops forwarding")
                        forwarder.stop_timeout = 0.0
                        forwarder.stop()

                forwarder.keepalive = renew
                with self._lock:
                    self._forwarder = forwarder
                if self._stop.is_set():
                    forwarder.stop()
                forwarder.run()
                with self._lock:
                    self._forwarder = None
                with contextlib.suppress(LockError, RedisError):
                    lease.release()
        finally:
            client.close()
