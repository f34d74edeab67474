"""One sender per host: of all the processes that share a spool directory, one sends for all of them.

Every batcher with ``spool_dir`` set writes its events to its own segment (:mod:`dodo_ingest.spool`) and runs a
:class:`HostSender` thread. The senders elect one of them with an flock on ``sender.lock`` in the host's spool
directory. The one holding it reads every segment (its own process's and every other's, and those a dead
process left), sends their events in full requests within the request budget
(:class:`~dodo_ingest.pacing.RequestPacer`) and records how far it got in each segment's ack file; it removes a
segment once its writer has sealed it and every event in it is delivered. The others try the lock every
:data:`ELECTION_INTERVAL` seconds: the kernel releases the lock of a process that dies, however it dies, so
another takes over within about a second, from where the ack files say the dead one stopped. A request that was
in flight when its sender died is sent again; Dodo ignores the ids it already has. Nine gunicorn workers thus
cost Dodo the requests of one, and never two processes send the same spooled events at once.

With the spool, a failing request is retried until its events would fall outside Dodo's one-hour window
(not ``max_retry_time``): those are then dropped as ``expired`` and logged at ERROR. A shutdown does not drop
anything: what is not delivered by its deadline stays on disk for the next sender. When Dodo rejects the key
(401/403), the events stay on disk too, and this process stands down as the sender for a minute, so that a
process with a working key (the rest of a rolling deploy) can send them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable

from dodo_ingest.config import MAX_EVENTS_PER_REQUEST, Config
from dodo_ingest.delivery import Deliverer, KeyCheck, KeyRejected, Pending, record_drop
from dodo_ingest.events import MAX_EVENT_AGE
from dodo_ingest.pacing import PacedTransport, RequestPacer
from dodo_ingest.spool import Damage, OwnedFile, Record, SegmentCursor, SpoolDirectory, event_id_of
from dodo_ingest.stats import Counters, RateLimitedLog
from dodo_ingest.transport import Answer, Transport

logger = logging.getLogger("dodo_ingest.host_sender")

#: Seconds between a waiting sender's attempts to take over.
ELECTION_INTERVAL = 1.0
#: Seconds between looks at the spool for other processes' events, when the sender has nothing to send.
POLL_INTERVAL = 0.2
#: Seconds a sender whose key Dodo rejected stands down before it tries to send again.
KEY_REJECTED_PAUSE = 60.0
#: Bytes read from a segment at a time.
READ_BYTES = 256 * 1024
_EMPTY_BODY = len('{"events":[]}')


class _Stopped(Exception):
    """The shutdown deadline passed: what is not delivered stays on disk."""


class HostSender:
    """The sender thread of one batcher's spool: elected, it sends the spool of every process on the host.

    Thread-safe; every method returns promptly. The thread starts with the batcher's flush thread.
    """

    def __init__(
        self,
        config: Config,
        directory: SpoolDirectory,
        transport_factory: Callable[[Config], Transport],
        counters: Counters,
        log: RateLimitedLog,
    ) -> None:
        self.config = config
        self.directory = directory
        self._factory = transport_factory
        self.counters = counters
        self.log = log
        rate = config.max_requests_per_minute
        self.pacer = RequestPacer(rate) if rate is not None else None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._wake = threading.Event()  # new records, a flush, a stop: look again now
        self._interrupt = threading.Event()  # cuts a retry wait short: a flush, a stop
        self._thread: threading.Thread | None = None
        self._leader: OwnedFile | None = None
        self._term: OwnedFile | None = None  # the lock this thread's read-ahead was made under
        self._next_election = 0.0
        self._cursors: dict[str, SegmentCursor] = {}
        self._window: list[tuple[SegmentCursor, Record]] = []  # the next request, read ahead
        self._window_bytes = _EMPTY_BODY
        self._flush_requested = 0
        self._flushed = 0
        self._closing = False
        self._writers_done = False
        self._stopped = False
        self._deadline: float | None = None

    def __repr__(self) -> str:
        return f"<HostSender {self.directory.path} leader={self.is_leader}>"

    @property
    def is_leader(self) -> bool:
        """Whether this sender currently sends for the host."""
        return self._leader is not None

    # --- control (any thread) -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread, if it is not running."""
        with self._lock:
            if self._closing or (self._thread is not None and self._thread.is_alive()):
                return
            thread = threading.Thread(target=self._run, name="dodo-ingest-spool-sender", daemon=True)
            self._thread = thread
        try:
            thread.start()
        except RuntimeError:  # at interpreter shutdown: what is on disk waits for the next sender
            logger.debug("dodo-ingest could not start its spool sender", exc_info=True)

    def wake(self) -> None:
        """New records were written: look at once."""
        self._wake.set()

    def flush(self, deadline: float) -> bool:
        """If this process is the host's sender, send everything in the spool now; wait until ``deadline``
        (``time.monotonic()``). True when the spool was emptied, or when another process is the sender."""
        if self._stopped:
            return True  # after a shutdown: what is left was reported, and waits for the next sender
        self.start()
        thread = self._thread
        if thread is None or not thread.is_alive():
            return False
        if not self._elect(force=True):
            return True
        with self._lock:
            self._flush_requested += 1
            target = self._flush_requested
        self._wake.set()
        self._interrupt.set()
        with self._changed:
            return self._changed.wait_for(
                lambda: self._flushed >= target or not thread.is_alive(), max(0.0, deadline - time.monotonic())
            ) and (self._flushed >= target)

    def begin_shutdown(self, deadline: float) -> None:
        """Send what is in the spool until ``deadline``, then stop (new records may still come)."""
        with self._lock:
            self._closing = True
            self._deadline = deadline
        self._wake.set()
        self._interrupt.set()

    def finish_shutdown(self) -> int:
        """The batcher's last events are written: finish, within the deadline. Returns how many events are left
        in the spool with no process sending them (0 when another process is the host's sender)."""
        with self._lock:
            self._writers_done = True
            deadline = self._deadline if self._deadline is not None else time.monotonic()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._stopped = True
        self._wake.set()
        self._interrupt.set()
        try:
            if self._leader is None and self._another_sends():
                return 0
            return self.directory.pending_events()
        except OSError:
            return 0

    def _another_sends(self) -> bool:
        """Whether another process holds the host's sender lock."""
        probe = OwnedFile(self.directory.lock_path, os.O_RDWR | os.O_CREAT)
        try:
            return not probe.try_lock()
        finally:
            probe.close()

    # --- the thread -------------------------------------------------------------------------------------------

    def _run(self) -> None:
        transport: Transport = KeyCheck(self._factory(self.config))
        if self.pacer is not None:
            transport = PacedTransport(transport, self.pacer)
        deliverer = Deliverer(self.config, transport, self.counters, self, self.log, budget=MAX_EVENT_AGE + 60.0)
        try:
            while not self._stopped:
                self._wake.clear()
                try:
                    if not self._step(deliverer):
                        return
                except KeyRejected as rejected:
                    self._stand_down(rejected.answer)
                except _Stopped:
                    raise
                except Exception:  # a bug or an unexpected OS error: say so, keep the app alive, try again
                    self.log.log(
                        logging.ERROR, "spool-sender", "dodo-ingest spool sender failed; retrying", exc_info=True
                    )
                    self._forget()
                    self._pause(1.0)
        except _Stopped:
            pass
        finally:
            transport.close()
            self._resign()
            with self._changed:
                self._changed.notify_all()

    def _step(self, deliverer: Deliverer) -> bool:
        """One turn of the loop, top to bottom: lead (or wait to), read ahead, wait until the next request is
        due, send it. False: the sender is done (its batcher has shut down and nothing is left)."""
        if not self._elect():
            if self._closing:
                return False
            self._pause(ELECTION_INTERVAL)
            return True
        if self._term is not self._leader:  # a new term: what the last one read ahead is re-read from the acks
            self._forget()
            self._term = self._leader
        flush_seen = self._flush_requested
        self._fill()
        if not self._window:
            self._idle(flush_seen)
        if not self._window:
            if self._closing and self._writers_done:
                return False
            self._pause(POLL_INTERVAL)
            return True
        due_in = self._due_in()
        if due_in > 0:
            self._pause(min(due_in, POLL_INTERVAL))
            return True
        self._send(deliverer)
        return True

    def _elect(self, force: bool = False) -> bool:
        """Hold the host's sender lock, or try to take it (at most once per ELECTION_INTERVAL unless forced)."""
        with self._lock:
            if self._leader is not None:
                if self._leader.still_there():
                    return True
                # the spool directory was removed under us: a new sender.lock means a new election
                leader, self._leader = self._leader, None
                leader.close()
            now = time.monotonic()
            if self._closing or (not force and now < self._next_election):
                return False
            self._next_election = now + ELECTION_INTERVAL
            owned = OwnedFile(self.directory.lock_path, os.O_RDWR | os.O_CREAT)
            if not owned.try_lock():
                owned.close()
                return False
            self._leader = owned
        os.ftruncate(owned.fd, 0)
        os.pwrite(owned.fd, f"{os.getpid()}\n".encode(), 0)
        logger.info("dodo-ingest: process %d now sends the spool at %s for this host", os.getpid(), self.directory.path)
        return True

    def _resign(self) -> None:
        self._forget()
        with self._lock:
            leader, self._leader = self._leader, None
        if leader is not None:
            leader.close()

    def _forget(self) -> None:
        """Drop what was read ahead (it is re-read from the ack files)."""
        for cursor in self._cursors.values():
            cursor.close()
        self._cursors = {}
        self._window = []
        self._window_bytes = _EMPTY_BODY

    def _stand_down(self, answer: Answer) -> None:
        self.log.log(
            logging.ERROR,
            "spool-auth",
            "Dodo rejected the API key (%s) at %s: check that the key belongs to %s and has not been revoked. "
            "The spooled events are kept on disk; this process stops sending them for %d s, so that a process "
            "with a working key can.",
            answer.message,
            self.config.host,
            self.config.environment,
            int(KEY_REJECTED_PAUSE),
        )
        self._resign()
        with self._lock:
            self._next_election = time.monotonic() + KEY_REJECTED_PAUSE
        self._pause(min(KEY_REJECTED_PAUSE, ELECTION_INTERVAL))

    def _pause(self, seconds: float) -> None:
        """Wait for a wake-up (new records, flush, stop) or ``seconds``; raise _Stopped past the deadline."""
        deadline = self._deadline
        if self._stopped or (deadline is not None and time.monotonic() >= deadline):
            raise _Stopped
        if deadline is not None:
            seconds = min(seconds, max(0.0, deadline - time.monotonic()))
        self._wake.wait(seconds)

    def _idle(self, flush_seen: int) -> None:
        """Nothing is waiting: flushes requested before the last look are done."""
        self._collect()
        if not self._window:
            with self._changed:
                self._flushed = max(self._flushed, flush_seen)
                self._changed.notify_all()

    def _collect(self) -> None:
        """The window is delivered: record every segment's progress; remove the segments that are sealed and
        delivered (after a last read: their writer may have written once more before letting go)."""
        for path, cursor in list(self._cursors.items()):
            cursor.ack(cursor.read_to)
            if not self._window_full() and cursor.try_seal():
                records, damage = cursor.read(READ_BYTES, self._room_events(), self._room_bytes())
                self._report_damage(cursor, damage)
                if records:
                    self._take(cursor, records)
                elif cursor.at_end():
                    cursor.remove()
                    del self._cursors[path]

    def _room_bytes(self) -> int:
        return max(1, self.config.max_request_bytes - self._window_bytes)

    def _fill(self) -> None:
        """Read ahead from the segments, oldest first, until the window holds one full request."""
        paths = self.directory.segments()
        for gone in set(self._cursors) - set(paths):
            self._cursors.pop(gone).close()
        for path in paths:
            cursor = self._cursors.get(path)
            if cursor is None:
                cursor = self._cursors[path] = SegmentCursor(path)
            while not self._window_full():
                try:
                    records, damage = cursor.read(READ_BYTES, self._room_events(), self._room_bytes())
                except FileNotFoundError:
                    self._cursors.pop(path).close()
                    break
                self._report_damage(cursor, damage)
                self._take(cursor, records)
                if not records and not damage:
                    break  # read to its end, for now
            if self._window_full():
                return

    def _room_events(self) -> int:
        return MAX_EVENTS_PER_REQUEST - len(self._window)

    def _window_full(self) -> bool:
        return self._room_events() <= 0 or self._window_bytes >= self.config.max_request_bytes

    def _take(self, cursor: SegmentCursor, records: list[Record]) -> None:
        """Add records to the window; a user-supplied event_id already in it is a ``duplicate_id`` (one request
        must not hold one id twice, and Dodo would ignore the repeat anyway)."""
        ids = {event_id_of(r.json) for _, r in self._window} if records and self._window else set()
        repeats: list[str] = []
        for record in records:
            event_id = event_id_of(record.json)
            if event_id in ids:
                repeats.append(record.json)
                continue
            ids.add(event_id)
            self._window.append((cursor, record))
            self._window_bytes += len(record.json) + 1
        if repeats:
            self._drop(repeats, "duplicate_id", "the same event_id was spooled twice for one request")

    def _due_in(self) -> float:
        """Seconds until the window should be sent: the batcher's rule (max_batch_size events, or the oldest
        flush_interval old, or a flush or a shutdown), then the request budget."""
        if self._closing or self._flush_requested > self._flushed or len(self._window) >= self.config.max_batch_size:
            due = 0.0
        else:
            oldest = min(record.created for _, record in self._window)
            due = oldest + self.config.flush_interval - time.time()
        if due <= 0 and self.pacer is not None:
            due = self.pacer.delay()
        return due

    def _send(self, deliverer: Deliverer) -> None:
        """Deliver the window (everything in it ends sent or dropped, and counted), then record the progress."""
        window, self._window, self._window_bytes = self._window, [], _EMPTY_BODY
        oldest_allowed = time.time() - MAX_EVENT_AGE
        expired = [record.json for _, record in window if record.created < oldest_allowed]
        if expired:
            self.log.log(
                logging.ERROR,
                "spool-expired",
                "dodo-ingest: %d spooled events are older than Dodo's one-hour window and can no longer be sent; "
                "dropped as 'expired' (they waited in %s through an outage or a stop longer than that)",
                len(expired),
                self.directory.path,
            )
            self._drop(expired, "expired", "spooled longer than Dodo's one-hour window")
        fresh = [Pending(0, record.json, record.created) for _, record in window if record.created >= oldest_allowed]
        if fresh:
            deliverer.deliver(fresh)  # raises _Stopped / KeyRejected: nothing is acked, all stays on disk
        self._collect()

    def _drop(self, events: list[str], reason: str, message: str) -> None:
        record_drop(self.counters, self.config, self.log, [json.loads(e) for e in events], reason, message)

    def _report_damage(self, cursor: SegmentCursor, damage: list[Damage]) -> None:
        if not damage:
            return
        kept = cursor.keep_damage(damage)
        self.counters.drop("spool_corrupt", len(damage))
        self.log.log(
            logging.ERROR,
            "spool-damage",
            "dodo-ingest: spool segment %s is damaged (a write cut short by a crash or a power loss?): %d bytes "
            "in %d place(s) could not be read and were skipped (counted as 'spool_corrupt'); the readable events "
            "around them are sent. The damaged bytes are kept in %s",
            cursor.path,
            sum(len(d.data) for d in damage),
            len(damage),
            kept,
        )

    # --- the Waiter of the deliverer ----------------------------------------------------------------------------

    def wait(self, seconds: float, mandated: bool) -> bool:
        """Wait before a retry; a flush or the start of a shutdown cuts our own backoff short. At the shutdown
        deadline the delivery is abandoned (:class:`_Stopped`): the events stay on disk, nothing is dropped."""
        end = time.monotonic() + seconds
        flushes, closing = self._flush_requested, self._closing
        while True:
            self._interrupt.clear()
            now = time.monotonic()
            deadline = self._deadline
            if self._stopped or (deadline is not None and now >= deadline):
                raise _Stopped
            if now >= end:
                return True
            if not mandated and (self._flush_requested != flushes or self._closing != closing):
                return True
            self._interrupt.wait(min(end, deadline if deadline is not None else end) - now)

    def time_left(self) -> float | None:
        """Seconds until the shutdown deadline, if a shutdown has begun (bounds each request's timeout)."""
        if self._stopped:
            raise _Stopped
        deadline = self._deadline
        return None if deadline is None else max(0.0, deadline - time.monotonic())
