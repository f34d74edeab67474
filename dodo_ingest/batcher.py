"""The thread-based batcher: a bounded in-memory queue drained by one daemon flush thread per batcher and process.

Request thread: :meth:`Batcher.add` appends a :class:`Queued` tuple to a deque under a lock (no validation, no
serialization, no I/O) and wakes the flush thread only when the queue goes from empty to non-empty or
reaches ``max_batch_size``.

Flush thread (:meth:`Batcher._run`, top to bottom): wait until :meth:`Batcher._send_now` says a request is due
(``max_batch_size`` events waiting, the oldest waiting ``flush_interval``, a ``flush()``, a shutdown); take up
to one request's worth (1000 events, ``max_request_bytes``); build, validate and encode each event, dropping
the ones that cannot be sent (anything at all that goes wrong with one event drops that event, counted as
``invalid``, never the thread); deliver the rest with :class:`~dodo_ingest.delivery.Deliverer`, retries
included; account for every event. The flush thread is also the batcher's :class:`~dodo_ingest.delivery.Waiter`:
every wait is an ``Event.wait`` that ``flush()`` and ``shutdown()`` interrupt.

Durable delivery (``spool_dir``): the flush thread hands each chunk to the spool instead (:meth:`Batcher._hand_over`,
the one place a chunk leaves the queue), at most 50 ms after its oldest event was accepted; the host's one
:class:`~dodo_ingest.host_sender.HostSender` delivers it from there. The request budget
(``max_requests_per_minute``) is part of the one "should we send now" rule: a due batch waits for the
:class:`~dodo_ingest.pacing.RequestPacer`, and grows meanwhile.

Rollups (``rollup_interval``): :meth:`Batcher.enqueue` folds the adapters' requests into
:class:`~dodo_ingest.rollup.Rollups` instead of queueing them; the flush thread queues a window's rollups, as
ordinary events with fixed ids, when the window ends (``flush()`` and a shutdown close it early).

Per-process state: every entry point compares ``os.getpid()`` with the pid that built the queue, lock, counters
and thread; a forked child (by ``os.fork``, uWSGI, or a raw ``fork()``) starts afresh and the parent keeps and
delivers what it had queued. If the flush thread ever ends unexpectedly, the next ``add()`` starts a new one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, cast

from dodo_ingest import lifecycle, spool
from dodo_ingest.config import MAX_EVENTS_PER_REQUEST, Config
from dodo_ingest.delivery import Budget, Deliverer, Pending, record_drop
from dodo_ingest.errors import ConfigurationError, ValidationError
from dodo_ingest.events import (
    Event,
    check_identifiers,
    clean_metadata,
    describe,
    encode_event,
    encode_plain,
    format_timestamp,
    new_event_id,
)
from dodo_ingest.host_sender import HostSender
from dodo_ingest.pacing import PacedTransport, RequestPacer
from dodo_ingest.rollup import Facts, Rollup, Rollups
from dodo_ingest.stats import Counters, RateLimitedLog, Stats
from dodo_ingest.sync import SyncSender
from dodo_ingest.transport import IngestClient, Transport

if TYPE_CHECKING:
    from dodo_ingest.fleet.lease import EmbeddedForwarder
    from dodo_ingest.fleet.stream import StreamWriter

logger = logging.getLogger("dodo_ingest.batcher")

TransportFactory = Callable[[Config], Transport]

#: Capture sinks installed by :func:`dodo_ingest.testing.capture_events`: while any is installed, every
#: batcher hands its events to them instead of queueing them.
_capture_sinks: list[Callable[[Event | None, str | None], None]] = []

_EMPTY_BODY = len('{"events":[]}')
_REFUSED = {"queue_full": "max_queue_size events are already waiting", "shutdown": "added after shutdown()"}
#: Seconds kept before a shutdown deadline for the last attempt of a failing request.
_LAST_ATTEMPT_RESERVE = 1.0


class LazyMetadata:
    """Metadata that the flush thread builds (the request thread only hands over the facts)."""

    __slots__ = ()

    #: Whether these are a request's facts that ``rollup_interval`` folds into a rollup
    #: (:class:`dodo_ingest.rollup.Facts`).
    rollable: ClassVar[bool] = False

    def build(self) -> Mapping[str, Any]:
        """The event's metadata (may raise: the event is then dropped as ``invalid``)."""
        raise NotImplementedError


class Queued(NamedTuple):
    """One accepted event, as the request thread hands it over."""

    seq: int
    customer_id: Any
    event_name: Any
    metadata: Any  # a dict, None, or LazyMetadata
    created: float
    event_id: Any  # None: the flush thread gives it one


def build_event(item: Queued, counters: Counters) -> tuple[str, str, str, str, dict[str, Any]]:
    """Validate a queued event (lenient policy): ``(event_id, customer_id, event_name, timestamp, metadata)``.

    Raises :class:`ValidationError` to drop it. The event id is fixed here, once; retries reuse the JSON.
    """
    customer_id, event_name, event_id = item.customer_id, item.event_name, item.event_id
    check_identifiers(customer_id, event_name, event_id)
    metadata = item.metadata
    if isinstance(metadata, LazyMetadata):
        metadata = metadata.build()
    clean, repairs = clean_metadata(metadata, strict=False)
    if repairs:
        counters.add("repaired", repairs)
    return (
        event_id or new_event_id(),
        str.__str__(customer_id),
        str.__str__(event_name),
        format_timestamp(item.created),
        clean,
    )


def encode_item(item: Queued, counters: Counters) -> str:
    """A queued event as its JSON, ready to send (raises ValidationError to drop it)."""
    if item.event_id is None:
        metadata = item.metadata
        if isinstance(metadata, LazyMetadata):
            metadata = metadata.build()
            item = item._replace(metadata=metadata)
        encoded = encode_plain(item.customer_id, item.event_name, metadata, item.created)
        if encoded is not None:
            return encoded
    return encode_event(*build_event(item, counters))


def _raw_record(item: Queued) -> dict[str, Any]:
    """What ``on_drop`` gets for an event that never became JSON."""
    metadata = item.metadata
    if isinstance(metadata, LazyMetadata):
        try:
            metadata = dict(metadata.build())
        except Exception:
            metadata = None
    return {
        "event_id": item.event_id,
        "customer_id": item.customer_id,
        "event_name": item.event_name,
        "timestamp": format_timestamp(item.created),
        "metadata": metadata,
    }


class _Chunk(NamedTuple):
    """One request's worth taken from the queue: the last sequence number in it and its ready events."""

    last_seq: int
    ready: list[Pending]


class _Spool(NamedTuple):
    """A batcher's durable spool: its own segment writer, and its process's candidate for the host's sender."""

    writer: spool.SegmentWriter
    sender: HostSender


class _Buffer(NamedTuple):
    """The shared Redis buffer (``buffer_url``): this process's stream writer, with ``forwarder="embedded"`` its
    candidate for the fleet's forwarder, and the chunk that Redis could not take (written first when it is back;
    meanwhile the queue fills, bounded by ``max_queue_size``)."""

    writer: StreamWriter
    forwarder: EmbeddedForwarder | None
    held: list[_Chunk]


def _open_buffer(config: Config, transport_factory: TransportFactory) -> _Buffer:
    """This process's buffer writer (the ``fleet`` extra is a configuration error when missing)."""
    assert config.buffer_url is not None
    try:
        from dodo_ingest.fleet.lease import EmbeddedForwarder
        from dodo_ingest.fleet.stream import StreamWriter
    except ImportError as exc:
        raise ConfigurationError(
            f"buffer_url needs the redis package ({exc}); pip install 'dodo-ingest[fleet]', or leave buffer_url unset"
        ) from None
    embedded = EmbeddedForwarder(config, transport_factory) if config.forwarder == "embedded" else None
    return _Buffer(StreamWriter(config.buffer_url, config.buffer_stream), embedded, [])


def _open_spool_directory(config: Config) -> None:
    """Check at start-up that the spool directory can be used (a problem is a configuration error)."""
    assert config.spool_dir is not None
    directory = spool.SpoolDirectory(config.spool_dir, config.host)
    try:
        directory.create()
    except OSError as exc:
        raise ConfigurationError(
            f"spool_dir: cannot use {directory.path!r} ({exc.strerror or exc}); give a local directory this "
            "process can create and write to, or leave spool_dir unset"
        ) from None


class Batcher:
    """Queues events and delivers them in the background. Thread-safe; ``add`` never blocks or raises.

    Build one with :func:`dodo_ingest.create_batch` (or :meth:`Ingestion.create_batch`); middlewares share
    :attr:`Ingestion.batcher`.
    """

    def __init__(self, config: Config, *, transport_factory: TransportFactory = IngestClient) -> None:
        self.config = config
        self._enabled = config.enabled
        self._transport_factory = transport_factory
        if config.spool_dir is not None and config.enabled:
            _open_spool_directory(config)
        self._init_process_state()
        lifecycle.register(self)

    def __repr__(self) -> str:
        return (
            f"<Batcher {self.config.host} event_name={self.config.event_name!r} "
            f"max_size={self.config.max_batch_size} flush_interval={self.config.flush_interval}s>"
        )

    # --- per-process state --------------------------------------------------------------------------------

    def _init_process_state(self) -> None:
        self._pid = os.getpid()
        self._log = RateLimitedLog(logger)
        self.counters = Counters()
        self._lock = self.counters.lock
        self._queue: deque[Queued] = deque()
        self._seq = 0  # sequence number of the last accepted event
        self._done_seq = 0  # every event up to this sequence number is sent or dropped
        self._done = threading.Condition(threading.Lock())
        self._wake = threading.Event()  # the flush thread's wait for work: batch full, flush, stop
        self._interrupt = threading.Event()  # cuts a retry wait short: flush, stop
        self._flush_target = 0
        self._flushes = 0  # incremented by every flush() that has something to wait for
        self._thread: threading.Thread | None = None
        self._closed = False  # shutdown begun: add() refuses
        self._finalized = False  # shutdown finished: what is left has been accounted for
        self._deadline: float | None = None
        self._shutdown_drops_before = 0
        self._sync = SyncSender(self.config, self._transport_factory, self.counters, self._log)
        spool.close_inherited()  # a forked child: the parent's spool files, and their locks, stay the parent's
        self._spool: _Spool | None = None
        self._pacer: RequestPacer | None = None
        config = self.config
        if config.spool_dir is not None:
            directory = spool.SpoolDirectory(config.spool_dir, config.host)
            sender = HostSender(config, directory, self._transport_factory, self.counters, self._log)
            self._spool = _Spool(spool.SegmentWriter(directory, config.spool_max_bytes), sender)
        elif config.max_requests_per_minute is not None and config.buffer_url is None:
            self._pacer = RequestPacer(config.max_requests_per_minute)
        self._buffer = _open_buffer(config, self._transport_factory) if config.buffer_url is not None else None
        self._rollups = Rollups(config.rollup_interval) if config.rollup_interval is not None else None

    def _own(self) -> None:
        """Make sure this process's state is this process's own (uWSGI and raw forks run no at-fork hook)."""
        if self._pid != os.getpid():
            with lifecycle.fork_guard():
                if self._pid != os.getpid():
                    self._init_process_state()

    @property
    def closed(self) -> bool:
        """Whether a shutdown has begun (in this process): ``add`` refuses from then on."""
        return self._pid == os.getpid() and self._closed

    @property
    def owner_pid(self) -> int:
        """The pid of the process whose events this batcher holds."""
        return self._pid

    @property
    def shutdown_timeout(self) -> float:
        """Seconds the exit drain may take (the ``shutdown_timeout`` setting)."""
        return self.config.shutdown_timeout

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
        except Exception as exc:
            self._refuse(Queued(0, customer_id, event_name, None, time.time(), event_id), "invalid", str(exc))
            return False
        return self.enqueue(customer_id, event_name or self.config.event_name, item_metadata, event_id)

    def enqueue(self, customer_id: Any, event_name: Any, metadata: Any, event_id: Any = None) -> bool:
        """:meth:`add` without the copy and the defaults (the adapters' path); never raises."""
        try:
            if self._pid != os.getpid():
                self._own()
            config = self.config
            if not self._enabled:
                return False
            created = time.time()
            if _capture_sinks or config.sync_mode:
                return self._add_now(Queued(0, customer_id, event_name, metadata, created, event_id))
            rollups = self._rollups
            if rollups is not None and event_id is None and isinstance(metadata, LazyMetadata) and metadata.rollable:
                return self._fold(rollups, customer_id, event_name, cast(Facts, metadata), created)
            queue = self._queue
            with self._lock:
                depth = len(queue)
                if self._closed or depth >= config.max_queue_size:
                    reason = "shutdown" if self._closed else "queue_full"
                else:
                    reason = None
                    self._seq += 1
                    queue.append(Queued(self._seq, customer_id, event_name, metadata, created, event_id))
                    self.counters.accepted += 1
            if reason is not None:
                self._refuse(Queued(0, customer_id, event_name, metadata, created, event_id), reason, _REFUSED[reason])
                return False
            if depth == 0 or depth + 1 == config.max_batch_size:
                self._wake.set()
            if self._thread is None:
                self._start()
            return True
        except Exception:  # pragma: no cover - defensive: metering must never break the caller
            logger.exception("dodo-ingest could not queue an event; dropped")
            self.counters.drop("invalid")
            return False

    def _fold(self, rollups: Rollups, customer_id: str, event_name: str, facts: Facts, created: float) -> bool:
        """``rollup_interval``: add a request to its window's sums instead of queueing an event for it."""
        opened = rollups.fold(customer_id, event_name, facts, created)
        if opened is None:
            self._refuse(Queued(0, customer_id, event_name, facts, created, None), "shutdown", _REFUSED["shutdown"])
            return False
        if opened:
            self._wake.set()  # the flush thread waits for the window's end from now on
        if self._thread is None:
            self._start()
        return True

    def _queue_rollups(self, rollups: list[Rollup]) -> None:
        """Queue closed windows' rollups like any event (bounded by ``max_queue_size``; after the shutdown has
        accounted for the queue, dropped as ``shutdown``)."""
        if not rollups:
            return
        refused: list[tuple[Queued, str]] = []
        with self._lock:
            for rollup in rollups:
                item = Queued(0, *rollup)
                if self._finalized or len(self._queue) >= self.config.max_queue_size:
                    refused.append((item, "shutdown" if self._finalized else "queue_full"))
                    continue
                self._seq += 1
                self._queue.append(item._replace(seq=self._seq))
                self.counters.accepted += 1
        for item, reason in refused:
            self._refuse(item, reason, f"a rollup of {item.metadata['calls']} calls: {_REFUSED[reason]}")
        self._wake.set()

    def _refuse(self, item: Queued, reason: str, message: str) -> None:
        """An event not accepted: counted and logged here; ``on_drop`` runs in the calling thread."""
        record_drop(self.counters, self.config, self._log, [_raw_record(item)], reason, message)

    def _add_now(self, item: Queued) -> bool:
        """Capture mode and sync mode: validate and hand over in the calling thread."""
        with self._lock:
            self.counters.accepted += 1
        try:
            event = Event(*build_event(item, self.counters), created=item.created)
        except Exception as exc:
            message = str(exc) if isinstance(exc, ValidationError) else f"could not be built: {describe(exc)}"
            for sink in list(_capture_sinks):
                sink(None, message)
            self._refuse(item, "invalid", message)
            return False
        if _capture_sinks:
            for sink in list(_capture_sinks):
                sink(event, None)
            self.counters.add("sent")
            return True
        return not self._sync.send([Pending(0, event.to_json(), event.created)])

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(target=self._run, name="dodo-ingest-flush", daemon=True)
            self._thread = thread
        lifecycle.process_started_thread()
        try:
            thread.start()
        except RuntimeError:  # at interpreter shutdown no thread can start: the exit drain sends instead
            logger.debug("dodo-ingest could not start its flush thread", exc_info=True)
            with self._lock:
                if self._thread is thread:
                    self._thread = None
        if self._spool is not None:
            self._spool.sender.start()
        if self._buffer is not None and self._buffer.forwarder is not None:
            self._buffer.forwarder.start()

    # --- the flush thread ---------------------------------------------------------------------------------

    def _run(self) -> None:
        transport = self._transport_factory(self.config)
        if self._pacer is not None:
            transport = PacedTransport(transport, self._pacer)
        deliverer = Deliverer(self.config, transport, self.counters, self, self._log)
        try:
            while self._wait_for_work():
                chunk = self._take()
                if chunk is not None:
                    self._hand_over(chunk, deliverer)
        except BaseException:  # pragma: no cover - a bug; keep the app alive, say so, let add() restart us
            logger.exception("dodo-ingest flush thread failed; a new one starts with the next event")
        finally:
            transport.close()
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _wait_for_work(self) -> bool:
        """Block until a request is due (True) or the batcher has stopped and nothing is left (False)."""
        while True:
            self._wake.clear()
            window_ends_in = self._close_windows() if self._rollups is not None else None
            with self._lock:
                due_in = self._send_now()
                stopping = self._closed
            if window_ends_in is not None and (due_in is None or window_ends_in < due_in):
                due_in = window_ends_in
            if due_in is None:
                if stopping:
                    return False
                self._wake.wait()
            elif due_in <= 0:
                return True
            else:
                self._wake.wait(due_in)

    def _close_windows(self) -> float | None:
        """``rollup_interval``: queue the rollups of the windows that have ended; seconds until the next ends."""
        assert self._rollups is not None
        now = time.time()
        ends_in = self._rollups.due_in(now)
        if ends_in is not None and ends_in <= 0:
            self._queue_rollups(self._rollups.close(now))
            ends_in = self._rollups.due_in(now)
        return ends_in

    def _send_now(self) -> float | None:
        """The one "should we send now" rule (called under the lock): seconds until a request is due (0 or less:
        now), or None when nothing is queued (or the shutdown deadline has passed).

        With a spool, "send" means "write to disk", within 50 ms of acceptance; with a buffer, "write to Redis",
        as soon, unless Redis just failed (then at its retry time). With a request budget, a due batch also waits
        for the pacer (never at shutdown); the batch grows meanwhile."""
        queue = self._queue
        held = self._buffer is not None and self._buffer.held
        if not queue and not held:
            return None
        if self._closed:
            deadline = self._deadline
            return None if deadline is not None and time.monotonic() >= deadline else 0.0
        if held:
            assert self._buffer is not None
            return self._buffer.writer.retry_in()
        if self._flush_target > self._done_seq or len(queue) >= self.config.max_batch_size:
            due = 0.0
        elif self._spool is not None or self._buffer is not None:
            return queue[0].created + spool.COMMIT_INTERVAL - time.time()
        else:
            due = queue[0].created + self.config.flush_interval - time.time()
        if due > 0 or self._pacer is None:
            return due
        return self._pacer.delay()

    def _take(self) -> _Chunk | None:
        """Take up to one request's worth from the head of the queue, each event built and encoded.

        Events that cannot be sent are dropped here, once: ``invalid`` (anything that goes wrong building one
        event) or ``too_large`` (one event over ``max_request_bytes``).
        """
        config = self.config
        with self._lock:
            if self._buffer is not None and self._buffer.held:
                return self._buffer.held.pop()
            count = min(len(self._queue), MAX_EVENTS_PER_REQUEST)
            items = [self._queue.popleft() for _ in range(count)]
            self.counters.in_flight += count
        if not items:
            return None
        ready: list[Pending] = []
        size = _EMPTY_BODY
        user_ids: set[str] = set()
        invalid: list[tuple[Queued, str, str]] = []
        taken = len(items)
        for index, item in enumerate(items):
            try:
                encoded = encode_item(item, self.counters)
            except ValidationError as exc:
                invalid.append((item, "invalid", str(exc)))
                continue
            except Exception as exc:  # a hook's dict, a value whose __float__ raises...: this event only
                invalid.append((item, "invalid", f"could not be built: {type(exc).__name__}: {describe(exc)}"))
                continue
            if item.event_id is not None:
                if item.event_id in user_ids:
                    invalid.append((item, "duplicate_id", f"event_id {describe(item.event_id)} repeats in one request"))
                    continue
                user_ids.add(item.event_id)
            if _EMPTY_BODY + len(encoded) > config.max_request_bytes:
                invalid.append(
                    (item, "too_large", f"the event alone exceeds max_request_bytes={config.max_request_bytes}")
                )
                continue
            if ready and size + len(encoded) + 1 > config.max_request_bytes:
                self._give_back(items[index:])
                taken = index
                break
            size += len(encoded) + 1
            ready.append(Pending(item.seq, encoded, item.created))
        if invalid:
            with self._lock:
                self.counters.in_flight -= len(invalid)
            for item, reason, message in invalid:
                self._refuse(item, reason, message)
        return _Chunk(items[taken - 1].seq, ready)

    def _give_back(self, items: list[Queued]) -> None:
        """Put events that did not fit back at the head of the queue (unless the shutdown has already
        accounted for the queue: then they are dropped, once)."""
        with self._lock:
            self.counters.in_flight -= len(items)
            finalized = self._finalized
            if not finalized:
                self._queue.extendleft(reversed(items))
        if finalized:
            for item in items:
                self._refuse(item, "shutdown", "the shutdown deadline passed before these could be delivered")
            self._mark_done(items[-1].seq)

    def _hand_over(self, chunk: _Chunk, deliverer: Deliverer) -> None:
        """The one place a taken chunk leaves the queue: to Dodo, or, with a spool, to disk, or to Redis."""
        if self._buffer is not None:
            self._write_to_buffer(chunk, self._buffer, deliverer)
        elif self._spool is None:
            self._deliver(chunk, deliverer)
        else:
            self._write_to_spool(chunk, self._spool, deliverer)

    def _write_to_spool(self, chunk: _Chunk, spooled: _Spool, deliverer: Deliverer) -> None:
        """Write a chunk to this batcher's segment in one commit and wake the host's sender. What does not fit
        under ``spool_max_bytes`` is dropped as ``spool_full``; if the disk cannot be written at all (full, or the
        directory removed), the chunk is delivered from memory instead, as without a spool."""
        ready = chunk.ready
        try:
            written = spooled.writer.append([(p.json, p.created) for p in ready]) if ready else 0
        except OSError as exc:
            self._log.log(
                logging.ERROR,
                "spool-write",
                "dodo-ingest cannot write its spool at %s (%s); sending from memory meanwhile",
                spooled.writer.directory.path,
                exc.strerror or exc,
            )
            self._deliver(chunk, deliverer)
            return
        if written < len(ready):
            record_drop(
                self.counters,
                self.config,
                self._log,
                [json.loads(p.json) for p in ready[written:]],
                "spool_full",
                f"the spool at {spooled.writer.directory.path} holds spool_max_bytes={self.config.spool_max_bytes}",
            )
        with self._lock:  # after the drops are counted: no event is ever in neither count
            self.counters.in_flight -= len(ready)
            self.counters.spooled += written
        self._mark_done(chunk.last_seq)
        if written and spooled.sender.is_leader:
            spooled.sender.wake()

    def _write_to_buffer(self, chunk: _Chunk, buffered: _Buffer, deliverer: Deliverer) -> None:
        """Write a chunk to the Redis stream in one round trip. If Redis cannot be reached, the chunk goes to the spool
        (with ``spool_dir``; until Redis is due to be tried again, without trying it), or waits to be written first
        at the next attempt (:data:`~dodo_ingest.fleet.stream.RETRY_INTERVAL` later), or, during the exit drain,
        straight to Dodo: counted as ``buffer_unavailable``, never dropped for it."""
        from dodo_ingest.fleet.stream import BufferUnavailable

        ready = chunk.ready
        try:
            if self._spool is not None and buffered.writer.retry_in() > 0:
                raise BufferUnavailable("it failed less than a second ago")
            buffered.writer.append([(p.json, p.created) for p in ready])
        except BufferUnavailable as exc:
            self.counters.add("buffer_unavailable", len(ready))
            fallback = "the spool" if self._spool else "Dodo directly" if self._closed else "memory, retrying"
            self._log.log(
                logging.WARNING, "buffer", "dodo-ingest cannot write to Redis (%s); events go to %s", exc, fallback
            )
            if self._spool is not None:
                self._write_to_spool(chunk, self._spool, deliverer)
            elif self._closed:
                self._deliver(chunk, deliverer)
            else:
                with self._lock:
                    buffered.held.append(chunk)
            return
        with self._lock:
            self.counters.in_flight -= len(ready)
            self.counters.buffered += len(ready)
        self._mark_done(chunk.last_seq)

    def _deliver(self, chunk: _Chunk, deliverer: Deliverer) -> None:
        """Deliver a taken chunk, then account for every event in it (sent or dropped)."""
        try:
            if chunk.ready:
                deliverer.deliver(chunk.ready)
        except Exception:  # pragma: no cover - a bug in delivery: the events are not known to be sent
            logger.exception("dodo-ingest failed delivering %d events; dropped", len(chunk.ready))
            self.counters.drop("internal_error", len(chunk.ready))
        finally:
            with self._lock:
                self.counters.in_flight -= len(chunk.ready)
            self._mark_done(chunk.last_seq)

    def _mark_done(self, seq: int) -> None:
        with self._done:
            if seq > self._done_seq:
                self._done_seq = seq
            self._done.notify_all()

    # --- the flush thread's waits (the Waiter of its Deliverer) -------------------------------------------

    def wait(self, seconds: float, mandated: bool) -> bool:
        """Wait before a retry. ``flush()`` and the start of a shutdown cut our own backoff short (not a wait the
        server asked for); near the shutdown deadline, answer False at the last moment that still leaves time for
        one more attempt."""
        end = time.monotonic() + seconds
        flushes = self._flushes
        while True:
            self._interrupt.clear()
            with self._lock:
                deadline = self._deadline
            now = time.monotonic()
            if deadline is not None:
                last_moment = deadline - min(_LAST_ATTEMPT_RESERVE, self.config.request_timeout)
                if end > last_moment:
                    if now < last_moment:
                        self._interrupt.wait(last_moment - now)
                        continue  # re-check: the deadline can only move closer
                    return False
            if now >= end:
                return True
            if not mandated and self._flushes != flushes:
                return True
            self._interrupt.wait(end - now)

    def time_left(self) -> float | None:
        """Seconds until the shutdown deadline, if a shutdown has begun."""
        deadline = self._deadline
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    # --- control --------------------------------------------------------------------------------------------

    def flush(self, timeout: float = 10.0) -> bool:
        """Send everything queued so far now; wait at most ``timeout`` seconds.

        Returns True when every event added before the call has been sent or dropped (see :meth:`stats`). With a
        spool: when they are on disk and, if this process is the host's sender, the whole spool has been sent
        (in another worker, the host's sender sends them within ``flush_interval``). With a buffer (``buffer_url``):
        when they are in Redis; the forwarders send them.
        """
        deadline = time.monotonic() + timeout
        done = self._flush_queue(timeout)
        if self._spool is None or not done:
            return done
        return self._spool.sender.flush(deadline)

    def _flush_queue(self, timeout: float) -> bool:
        """:meth:`flush` of the in-memory queue: sent (or, with a spool, written) or dropped."""
        self._own()
        if self._rollups is not None:
            self._queue_rollups(self._rollups.close())  # the open windows, closed early
        with self._lock:
            target = self._seq
            if target <= self._done_seq:
                return True
            self._flush_target = max(self._flush_target, target)
            self._flushes += 1
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._start()
            thread = self._thread
            if thread is None or not thread.is_alive():
                return self._drain_here(time.monotonic() + timeout)
        self._wake.set()
        self._interrupt.set()
        with self._done:
            return self._done.wait_for(lambda: self._done_seq >= target, timeout)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Deliver what is queued within ``timeout`` (default ``shutdown_timeout``), then stop. Idempotent.

        A request that keeps failing is tried once more just before the deadline. Events still queued at the
        deadline are dropped as ``shutdown`` (counted, logged, passed to ``on_drop``). Returns True when
        nothing was left behind. Later ``add`` calls return False.
        """
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        self.begin_shutdown(time.monotonic() + timeout)
        return self.finish_shutdown()

    cleanup = shutdown  # the JavaScript blueprint's name

    def begin_shutdown(self, deadline: float) -> None:
        """Refuse new events and start delivering what is queued, until ``deadline`` (``time.monotonic()``)."""
        self._own()
        if self._rollups is not None:
            self._queue_rollups(self._rollups.close(stop=True))
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._deadline = deadline
            self._shutdown_drops_before = self.counters.dropped.get("shutdown", 0)
            self._flushes += 1  # a shutdown is also a flush: it cuts our own backoff short
        self._wake.set()
        self._interrupt.set()
        if self._spool is not None:
            self._spool.sender.begin_shutdown(deadline)

    def finish_shutdown(self) -> bool:
        """Wait (until the deadline) for the drain :meth:`begin_shutdown` started; account for what is left."""
        self._own()
        deadline = self._deadline or time.monotonic()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
        elif self._queue and not self._finalized:
            self._drain_here(deadline)
        with self._lock:
            if self._finalized:
                left: list[Queued] = []
            else:
                self._finalized = True
                left = list(self._queue)
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
            self._mark_done(left[-1].seq)
        if in_flight:
            logger.warning(
                "dodo-ingest: %d events were still being sent when the shutdown deadline passed; they are counted "
                "as sent or dropped when that request ends",
                in_flight,
            )
        self._sync.close()
        if self._spool is not None:
            self._finish_spool(self._spool, thread)
        if self._buffer is not None:
            with self._lock:
                held, self._buffer.held[:] = list(self._buffer.held), []
                self.counters.in_flight -= sum(len(c.ready) for c in held)
            for chunk in held:  # Redis was down, and the exit drain could not deliver them either
                record_drop(
                    self.counters,
                    self.config,
                    self._log,
                    [json.loads(p.json) for p in chunk.ready],
                    "shutdown",
                    "Redis and Dodo could not be reached before the shutdown deadline",
                )
                self._mark_done(chunk.last_seq)
            if self._buffer.forwarder is not None:
                self._buffer.forwarder.shutdown(max(0.0, deadline - time.monotonic()))
            self._buffer.writer.close()
        with self._lock:
            lost = self.counters.dropped.get("shutdown", 0) - self._shutdown_drops_before
        return not lost and not in_flight

    def _finish_spool(self, spooled: _Spool, thread: threading.Thread | None) -> None:
        """Seal this batcher's segment; let the host's sender finish within the deadline; say what is left."""
        if thread is None or not thread.is_alive() or thread is threading.current_thread():
            spooled.writer.close(timeout=self.time_left() or 0.0)
        left = spooled.sender.finish_shutdown()
        if left:
            logger.warning(
                "dodo-ingest: %d events wait in the spool at %s; the host's next sender sends them (another "
                "worker, or the next process started with this spool_dir), within Dodo's one-hour window",
                left,
                spooled.writer.directory.path,
            )

    def _drain_here(self, deadline: float) -> bool:
        """Deliver in the calling thread (no flush thread could run), within ``deadline``."""
        transport = self._transport_factory(self.config)
        deliverer = Deliverer(
            self.config, transport, self.counters, Budget(max(0.0, deadline - time.monotonic())), self._log
        )
        try:
            while self._queue and time.monotonic() < deadline:
                chunk = self._take()
                if chunk is not None:
                    self._hand_over(chunk, deliverer)
        finally:
            transport.close()
        return not self._queue

    def stats(self) -> Stats:
        """A consistent snapshot of the counters: accepted, sent, retried, dropped by reason, queued, ..."""
        self._own()
        with self._lock:
            stats = self.counters.snapshot(len(self._queue))
        rollups = self._rollups
        if rollups is None:
            return stats
        return dataclasses.replace(stats, rolled_up=rollups.folded, rolling=rollups.pending)

    def __enter__(self) -> Batcher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()
