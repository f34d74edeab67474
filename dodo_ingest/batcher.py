"""The thread-based batcher: a bounded in-memory queue drained by one daemon flush thread per batcher and process.

Request thread: :meth:`Batcher.add` appends a tuple to a deque under a lock (no validation, no
serialization, no I/O) and wakes the flush thread only when the queue goes from empty to non-empty or
reaches ``max_batch_size``. Flush thread: waits until ``max_batch_size`` events are waiting, or the oldest
has waited ``flush_interval``, or ``flush()`` / ``shutdown()`` asks; then validates, serializes each event
once, and hands requests of up to 1000 events / ``max_request_bytes`` to its send stage (a second daemon
thread that owns the HTTP session and runs :class:`Deliverer`, retries included), then encodes the next request
while that one is on the wire, topping it up with whatever arrived meanwhile before handing it over.

Fork safety: the thread starts lazily on the first event in each process; an ``os.register_at_fork`` hook
and a pid check in ``add`` give a forked child a fresh queue, lock, session and thread (the parent keeps
and delivers what it had queued). At interpreter exit every live batcher drains within its
``shutdown_timeout``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import queue
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from dodo_ingest.config import MAX_EVENTS_PER_REQUEST, Config
from dodo_ingest.delivery import Deliverer, Pending, record_drop
from dodo_ingest.errors import ValidationError
from dodo_ingest.events import (
    Event,
    check_identifier,
    clean_metadata,
    encode_event,
    encode_plain,
    format_timestamp,
    new_event_id,
)
from dodo_ingest.stats import Counters, RateLimitedLog, Stats
from dodo_ingest.transport import IngestClient, Transport

logger = logging.getLogger("dodo_ingest.batcher")

# A queued item: (seq, customer_id, event_name, metadata, created, event_id or None)
Item = tuple[int, Any, Any, Any, float, Any]
TransportFactory = Callable[[Config], Transport]

#: Capture sinks installed by :func:`dodo_ingest.testing.capture_events`: while any is installed, every
#: batcher hands its events to them instead of queueing them.
_capture_sinks: list[Callable[[Event | None, str | None], None]] = []


def validate_item(item: Item, counters: Counters) -> tuple[str, str, str, str, dict[str, Any]]:
    """Validate a queued item (lenient policy): ``(event_id, customer_id, event_name, timestamp, metadata)``.

    Raises ValidationError to drop it. Fixes the event id here, once; retries reuse the serialized event.
    """
    _, customer_id, event_name, metadata, created, event_id = item
    if type(customer_id) is not str or not customer_id.strip():
        raise ValidationError("customer_id", check_identifier("customer_id", customer_id) or "invalid")
    if type(event_name) is not str or not event_name.strip():
        raise ValidationError("event_name", check_identifier("event_name", event_name) or "invalid")
    if event_id is not None:
        problem = check_identifier("event_id", event_id)
        if problem:
            raise ValidationError("event_id", problem)
    clean, repairs = clean_metadata(metadata, strict=False)
    if repairs:
        counters.add("repaired", repairs)
    return event_id or new_event_id(), customer_id, event_name, format_timestamp(created), clean


def prepare(item: Item, counters: Counters) -> Event:
    """Validate a queued item and build its :class:`Event` (capture and sync modes)."""
    return Event(*validate_item(item, counters), created=item[4])


_EMPTY_BODY = len('{"events":[]}')
_REFUSED = {"queue_full": "max_queue_size events are already waiting", "shutdown": "added after shutdown()"}


class _Chunk:
    """One request in the making: the queued items taken for it and their encoded events."""

    __slots__ = ("items", "ready", "size")

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.ready: list[Pending] = []
        self.size = _EMPTY_BODY


class _SendStage:
    """A daemon thread that delivers one chunk at a time (with its retries), so that the flush thread can
    encode the next chunk meanwhile. It owns the HTTP session; a hand-off of size one bounds the pipeline."""

    def __init__(self, batcher: Batcher, deliverer: Deliverer) -> None:
        self._batcher = batcher
        self._deliverer = deliverer
        self._handoff: queue.Queue[_Chunk | None] = queue.Queue(maxsize=1)
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="dodo-ingest-send", daemon=True)
        self._thread.start()

    def submit(self, chunk: _Chunk) -> None:
        """Hand over a chunk (call only when :meth:`wait_idle` said the stage is idle)."""
        self._idle.clear()
        self._handoff.put(chunk)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the previous chunk is delivered (or dropped)."""
        return self._idle.wait(timeout)

    def stop(self, timeout: float | None) -> None:
        """Finish the chunk in hand, then end the thread (waiting at most ``timeout`` seconds)."""
        try:
            self._handoff.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            chunk = self._handoff.get()
            if chunk is None:
                return
            try:
                self._batcher._complete(chunk, self._deliverer)
            except Exception:  # pragma: no cover - a bug; keep the app alive and say so
                logger.exception("dodo-ingest send stage failed on a request")
            finally:
                self._idle.set()


class Batcher:
    """Queues events and delivers them in the background. Thread-safe; ``add`` never blocks or raises.

    Build one with :func:`dodo_ingest.create_batch` (or :meth:`Ingestion.create_batch`); middlewares share
    :attr:`Ingestion.batcher`.
    """

    def __init__(self, config: Config, *, transport_factory: TransportFactory = IngestClient) -> None:
        self.config = config
        self._transport_factory = transport_factory
        self._log = RateLimitedLog(logger)
        self._init_process_state()
        _live_batchers.add(self)

    def __repr__(self) -> str:
        return (
            f"<Batcher {self.config.host} event_name={self.config.event_name!r} "
            f"max_size={self.config.max_batch_size} flush_interval={self.config.flush_interval}s>"
        )

    # --- per-process state --------------------------------------------------------------------------------

    def _init_process_state(self) -> None:
        self._pid = os.getpid()
        self.counters = Counters()
        self._lock = self.counters.lock
        self._queue: deque[Item] = deque()
        self._taken: deque[Item] = deque()  # the flush thread's share of the queue, popped under the lock
        self._seq = 0  # sequence number of the last accepted event
        self._done_seq = 0  # every event up to this sequence number is sent or dropped
        self._done = threading.Condition(threading.Lock())
        self._wake = threading.Event()  # wakes the flush thread: queue no longer empty, batch full, flush, stop
        self._retry_wake = threading.Event()  # cuts a retry wait short: flush, stop
        self._flush_target = 0
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._drain_deadline: float | None = None
        self._shutdown_drops_before = 0
        self._sync_lock = threading.Lock()
        self._sync_deliverer: Deliverer | None = None

    def _after_fork(self) -> None:
        """In a forked child: forget the parent's queue (the parent delivers it) and start afresh."""
        self._init_process_state()

    # --- the request-thread side --------------------------------------------------------------------------

    def add(
        self,
        customer_id: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        event_name: str | None = None,
        event_id: str | None = None,
    ) -> bool:
        """Queue one event; O(1), never blocks, never raises. Returns whether it was accepted.

        ``metadata`` is copied. The event's timestamp is now; its ``event_id`` (unless given) is fixed when
        it is built and reused on every retry. Invalid events are dropped (reason ``invalid``) on the flush
        thread; see :mod:`dodo_ingest.events` for what is repaired instead.
        """
        try:
            item_metadata = dict(metadata) if metadata is not None else None
            return self._add(customer_id, event_name or self.config.event_name, item_metadata, event_id)
        except Exception:  # pragma: no cover - defensive: metering must never break the caller
            logger.exception("dodo-ingest could not queue an event; dropped")
            self.counters.drop("invalid")
            return False

    def _add(self, customer_id: Any, event_name: Any, metadata: Any, event_id: Any) -> bool:
        if self._pid != os.getpid():
            self._after_fork()
        config = self.config
        if not config.enabled:
            return False
        created = time.time()
        if _capture_sinks or config.sync_mode:
            return self._add_now((0, customer_id, event_name, metadata, created, event_id))
        queue = self._queue
        with self._lock:
            depth = len(queue) + len(self._taken)
            if self._closed or depth >= config.max_queue_size:
                reason = "shutdown" if self._closed else "queue_full"
            else:
                reason = None
                self._seq += 1
                queue.append((self._seq, customer_id, event_name, metadata, created, event_id))
                self.counters.accepted += 1
        if reason is not None:
            item = (0, customer_id, event_name, metadata, created, event_id)
            record_drop(self.counters, config, self._log, [_raw_record(item)], reason, _REFUSED[reason])
            return False
        if depth == 0 or depth + 1 == config.max_batch_size:
            self._wake.set()
        if self._thread is None:
            self._start()
        return True

    def _add_now(self, item: Item) -> bool:
        """Capture mode and sync mode: validate and hand over in the calling thread."""
        with self._lock:
            self.counters.accepted += 1
        try:
            event = prepare(item, self.counters)
        except ValidationError as exc:
            for sink in list(_capture_sinks):
                sink(None, str(exc))
            record_drop(self.counters, self.config, self._log, [_raw_record(item)], "invalid", str(exc))
            return False
        if _capture_sinks:
            for sink in list(_capture_sinks):
                sink(event, None)
            self.counters.add("sent")
            return True
        with self._sync_lock:
            if self._sync_deliverer is None:
                self._sync_deliverer = Deliverer(
                    self.config, self._transport_factory(self.config), self.counters, _blocking_sleep, self._log
                )
            drops = self._sync_deliverer.deliver([Pending(0, event.to_json(), event.created)])
        return not drops

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(target=self._run, name="dodo-ingest-flush", daemon=True)
            self._thread = thread
        _hook_multiprocessing_exit()
        _warn_if_uwsgi_has_no_threads()
        try:
            thread.start()
        except RuntimeError:  # at interpreter shutdown no thread can start: the exit drain sends instead
            logger.debug("dodo-ingest could not start its flush thread", exc_info=True)

    # --- the flush thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        transport = self._transport_factory(self.config)
        deliverer = Deliverer(self.config, transport, self.counters, self._sleep, self._log)
        sender = _SendStage(self, deliverer)
        try:
            self._loop(sender)
        except Exception:  # pragma: no cover - a bug; keep the app alive and say so
            logger.exception("dodo-ingest flush thread crashed; events stay queued until shutdown")
        finally:
            deadline = self._drain_deadline
            sender.stop(None if deadline is None else max(0.0, deadline - time.monotonic()))
            transport.close()

    def _pipeline(self, sender: _SendStage) -> None:
        """Encode the next request while the send stage still delivers the previous one, then top it up with
        what arrived meanwhile and hand it over: encoding overlaps the network round trip."""
        chunk = self._take(None)
        if chunk is None:
            return
        while not sender.wait_idle(0.25):
            deadline = self._drain_deadline
            if deadline is not None and time.monotonic() >= deadline:
                self._give_back(chunk.items)  # still queued: the shutdown accounts for it
                return
        sender.submit(self._take(chunk) or chunk)

    def _loop(self, sender: _SendStage) -> None:
        config = self.config
        while True:
            self._wake.clear()
            with self._lock:
                pending = len(self._queue) + len(self._taken)
                head = self._taken[0] if self._taken else (self._queue[0] if self._queue else None)
                stopping, deadline = self._stopping, self._drain_deadline
                flush_wanted = self._flush_target > self._done_seq
            if stopping and deadline is not None and time.monotonic() >= deadline:
                return
            if head is None:
                if stopping:
                    return
                self._wake.wait()
                continue
            due_in = head[4] + config.flush_interval - time.time()
            if not (stopping or flush_wanted or pending >= config.max_batch_size or due_in <= 0):
                self._wake.wait(min(due_in, config.flush_interval))
                continue
            self._pipeline(sender)

    def send_next(self, deliverer: Deliverer) -> None:
        """Take up to one request's worth of events from the head of the queue and deliver it, in this thread."""
        chunk = self._take(None)
        if chunk is not None:
            self._complete(chunk, deliverer)

    def _take(self, chunk: _Chunk | None) -> _Chunk | None:
        """Move events from the head of the queue into ``chunk`` (a new one if None), validated and encoded,
        until it holds 1000 events or ``max_request_bytes``. Invalid and oversized events are dropped here."""
        config = self.config
        room = MAX_EVENTS_PER_REQUEST - (len(chunk.items) if chunk is not None else 0)
        with self._lock:
            if self._queue and len(self._taken) < room:
                if self._taken:
                    self._taken.extend(self._queue)
                    self._queue.clear()
                else:
                    self._taken, self._queue = self._queue, deque()
            taken = self._taken
            items = [taken.popleft() for _ in range(min(len(taken), room))]
            self.counters.in_flight += len(items)
        if not items:
            return chunk
        if chunk is None:
            chunk = _Chunk()
        invalid: list[tuple[Item, str]] = []
        oversized: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            encoded = encode_plain(item[1], item[2], item[3], item[4]) if item[5] is None else None
            if encoded is None:
                try:
                    fields = validate_item(item, self.counters)
                except ValidationError as exc:
                    invalid.append((item, str(exc)))
                    continue
                encoded = encode_event(*fields)
            if _EMPTY_BODY + len(encoded) > config.max_request_bytes:
                oversized.append(json.loads(encoded))
                continue
            if chunk.size + len(encoded) + 1 > config.max_request_bytes:
                self._give_back(items[index:])
                items = items[:index]
                break
            chunk.size += len(encoded) + 1
            chunk.ready.append(Pending(item[0], encoded, item[4]))
        chunk.items.extend(items)
        for item, message in invalid:
            record_drop(self.counters, config, self._log, [_raw_record(item)], "invalid", message)
        if oversized:
            record_drop(
                self.counters,
                config,
                self._log,
                oversized,
                "too_large",
                f"event alone exceeds max_request_bytes={config.max_request_bytes}",
            )
        return chunk

    def _complete(self, chunk: _Chunk, deliverer: Deliverer) -> None:
        """Deliver a taken chunk, then account for every event in it (sent or dropped)."""
        try:
            if chunk.ready:
                deliverer.deliver(chunk.ready)
        finally:
            with self._lock:
                self.counters.in_flight -= len(chunk.items)
            if chunk.items:
                with self._done:
                    self._done_seq = max(self._done_seq, chunk.items[-1][0])
                    self._done.notify_all()

    def _give_back(self, items: list[Item]) -> None:
        with self._lock:
            self._taken.extendleft(reversed(items))
            self.counters.in_flight -= len(items)

    def _sleep(self, seconds: float) -> bool:
        """The flush thread's only way to wait: ``flush()`` cuts it short (True: retry now); a shutdown
        deadline closer than the wait makes it give up at once (False)."""
        end = time.monotonic() + seconds
        while True:
            with self._lock:
                deadline = self._drain_deadline
                flush_wanted = self._flush_target > self._done_seq
            if deadline is not None and end > deadline:
                return False
            remaining = end - time.monotonic()
            if remaining <= 0:
                return True
            if self._retry_wake.wait(remaining):
                self._retry_wake.clear()
                if flush_wanted:
                    return True

    # --- control --------------------------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Send everything queued so far now; wait at most ``timeout`` seconds.

        Returns True when every event added before the call has been sent or dropped (see :meth:`stats`).
        """
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            target = self._seq
            if target <= self._done_seq:
                return True
            self._flush_target = max(self._flush_target, target)
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._start()
            thread = self._thread
            if thread is None or not thread.is_alive():
                return self._drain_here(time.monotonic() + timeout)
        self._wake.set()
        self._retry_wake.set()
        with self._done:
            return self._done.wait_for(lambda: self._done_seq >= target, timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Deliver what is queued within ``timeout`` (default ``shutdown_timeout``), then stop. Idempotent.

        Events still queued at the deadline are dropped as ``shutdown`` (counted, logged, passed to
        ``on_drop``). Returns True when nothing was left behind. Later ``add`` calls return False.
        """
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        self._begin_shutdown(time.monotonic() + timeout)
        return self._finish_shutdown()

    cleanup = shutdown  # the JavaScript blueprint's name

    def _begin_shutdown(self, deadline: float) -> None:
        if self._pid != os.getpid():
            self._after_fork()
        with self._lock:
            if self._closed:
                return
            self._closed = self._stopping = True
            self._drain_deadline = deadline
            self._shutdown_drops_before = self.counters.dropped.get("shutdown", 0)
        self._wake.set()
        self._retry_wake.set()

    def _finish_shutdown(self) -> bool:
        deadline = self._drain_deadline or time.monotonic()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        elif self._queue or self._taken:
            self._drain_here(deadline)
        with self._lock:
            left = list(self._taken) + list(self._queue)
            self._taken.clear()
            self._queue.clear()
            in_flight = self.counters.in_flight
        if left:
            record_drop(
                self.counters,
                self.config,
                self._log,
                [_raw_record(i) for i in left],
                "shutdown",
                "the shutdown deadline passed before these could be delivered",
            )
            with self._done:
                self._done_seq = max(self._done_seq, left[-1][0])
                self._done.notify_all()
        if in_flight:
            logger.warning("dodo-ingest: %d events were still being sent when the shutdown deadline passed", in_flight)
        with self._lock:
            lost = self.counters.dropped.get("shutdown", 0) - self._shutdown_drops_before
        return not lost and not in_flight

    def _drain_here(self, deadline: float) -> bool:
        """Deliver in the calling thread (no flush thread could run), within ``deadline``."""
        transport = self._transport_factory(self.config)

        def sleep(seconds: float) -> bool:
            if time.monotonic() + seconds > deadline:
                return False
            time.sleep(seconds)
            return True

        deliverer = Deliverer(self.config, transport, self.counters, sleep, self._log)
        try:
            while (self._queue or self._taken) and time.monotonic() < deadline:
                self.send_next(deliverer)
        finally:
            transport.close()
        return not (self._queue or self._taken)

    def stats(self) -> Stats:
        """A consistent snapshot of the counters: accepted, sent, retried, dropped by reason, queued, ..."""
        with self._lock:
            return self.counters.snapshot(len(self._queue) + len(self._taken))

    def __enter__(self) -> Batcher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()


def _raw_record(item: Item) -> dict[str, Any]:
    _, customer_id, event_name, metadata, created, event_id = item
    return {
        "event_id": event_id,
        "customer_id": customer_id,
        "event_name": event_name,
        "timestamp": format_timestamp(created),
        "metadata": metadata,
    }


def _blocking_sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return True


# --- process-wide hooks: fork and exit ----------------------------------------------------------------------

_live_batchers: weakref.WeakSet[Batcher] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for batcher in list(_live_batchers):
        batcher._after_fork()


_exit_hook_pid = 0


def _warn_if_uwsgi_has_no_threads() -> None:
    """uWSGI runs no Python threads unless told to: the flush thread would never run."""
    uwsgi = sys.modules.get("uwsgi")
    options = getattr(uwsgi, "opt", None) if uwsgi is not None else None
    if not isinstance(options, dict):
        return
    if not any(options.get(k) for k in ("enable-threads", b"enable-threads", "threads", b"threads")):
        logger.warning(
            "dodo-ingest: uWSGI is running without threads, so events would never be sent. "
            "Start uWSGI with --enable-threads (and --lazy-apps is recommended), or use sync_mode=True."
        )


def _hook_multiprocessing_exit() -> None:
    """multiprocessing children leave through ``os._exit``, which skips atexit: drain in its finalizers.

    Called when a flush thread starts; multiprocessing clears its finalizers when a child starts, so this
    must run in the child itself, not at fork time.
    """
    global _exit_hook_pid
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None or _exit_hook_pid == os.getpid() or multiprocessing.parent_process() is None:
        return
    _exit_hook_pid = os.getpid()
    from multiprocessing import util

    util.Finalize(None, drain_all, exitpriority=100)


def drain_all() -> None:
    """Shut every live batcher down within its ``shutdown_timeout`` (all at once, not one after another)."""
    batchers = [b for b in list(_live_batchers) if b._pid == os.getpid()]
    now = time.monotonic()
    for batcher in batchers:
        batcher._begin_shutdown(now + batcher.config.shutdown_timeout)
    for batcher in batchers:
        batcher._finish_shutdown()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(drain_all)
