"""``dodo-ingest forward``: delivers the shared buffer to Dodo, in full requests, within the fleet's budget.

One loop, top to bottom (:meth:`Forwarder.run`):

1. **Gather** up to 1000 entries: first those a dead forwarder left (``XAUTOCLAIM`` of entries idle longer than
   the lease, every half lease), else new ones (``XREADGROUP`` through the consumer group, blocking up to a
   second); then more, until there are 1000 or the oldest has waited ``flush_interval`` (as in a batcher: at low
   load a few requests a minute, not one per event). Entries that do not fit under ``max_request_bytes`` wait for
   the next request.
2. **Take a slot** of the fleet-wide budget (:class:`~dodo_ingest.fleet.budget.FleetBudget`); while it waits,
   the stream fills, and the request is topped up to 1000 events (a non-blocking ``XREADGROUP``) once it has one.
3. **Send** one request with :class:`~dodo_ingest.delivery.Deliverer` (the SDK's delivery policy: retries with
   backoff and ``Retry-After``, each retry taking a budget slot of its own; halving on 400/422; events older than
   Dodo's one-hour window dropped as ``expired``). Retries go on until the events would expire, as the spool's do.
   401/403 drops nothing: the entries stay in the stream and the forwarder stands down for a minute.
4. **Acknowledge and delete** (``XACK`` + ``XDEL`` in one ``MULTI``) only after Dodo's 2xx, or after a permanent
   drop that was counted. If Redis cannot take the acknowledgement, the forwarder keeps it and gives it first
   when Redis is back (not sending those events again). A forwarder that dies between Dodo's answer and the
   acknowledgement leaves the entries pending; another claims them after the lease and sends them again with the
   same event ids, which Dodo ignores: exactly-once effect. While a request is retried, the forwarder re-claims
   its entries to itself (``XCLAIM ... JUSTID``) every third of a lease, so that nobody takes over a forwarder
   that is merely waiting.

:meth:`Forwarder.stop` (SIGTERM, SIGINT) is graceful: no new entries are read; the request in hand is finished and
acknowledged within ``stop_timeout`` seconds; what cannot be sent by then stays pending for another forwarder.
The counters are published every second to ``<prefix>:forwarder:<name>`` (a hash with a TTL) for ``--status``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, NamedTuple

import redis
from redis.exceptions import RedisError, ResponseError

from dodo_ingest.config import MAX_EVENTS_PER_REQUEST, PREFIX, SETTINGS, Config, redact_url
from dodo_ingest.delivery import Deliverer, KeyCheck, KeyRejected, Pending, record_drop
from dodo_ingest.errors import ConfigurationError
from dodo_ingest.events import MAX_EVENT_AGE
from dodo_ingest.fleet.budget import FleetBudget
from dodo_ingest.fleet.stream import GROUP, BufferUnavailable, Keys, connect, describe_error
from dodo_ingest.stats import Counters, RateLimitedLog
from dodo_ingest.transport import Answer, IngestClient, Transport

logger = logging.getLogger("dodo_ingest.fleet.forwarder")

#: Seconds an entry may stay unacknowledged with its reader before another forwarder claims it.
DEFAULT_LEASE = 30.0
#: Seconds the request in hand may take to finish after :meth:`Forwarder.stop`.
DEFAULT_STOP_TIMEOUT = 10.0
#: Seconds a forwarder whose key Dodo rejected stands down.
KEY_REJECTED_PAUSE = 60.0
#: Seconds between two publications of the counters; they expire after :data:`STATUS_TTL`.
STATUS_INTERVAL = 1.0
STATUS_TTL = 30
#: Seconds between two progress lines in the log.
PROGRESS_INTERVAL = 10.0
#: Seconds a read blocks waiting for new entries.
BLOCK = 1.0
#: Seconds between two reads while a request waits to fill up.
LINGER_STEP = 0.1
#: Seconds between two attempts when Redis cannot be reached.
RETRY_INTERVAL = 1.0
_EMPTY_BODY = len('{"events":[]}')


class Entry(NamedTuple):
    """One stream entry in hand: its id and its event."""

    id: bytes
    pending: Pending


class _Stopped(Exception):
    """The stop deadline passed: what is in hand stays pending for another forwarder."""


class Forwarder:
    """One forwarder of the buffer at ``url``: reads with the consumer group, sends, acknowledges.

    ``config`` gives the Dodo host, key and delivery settings (``max_requests_per_minute`` is the fleet-wide
    budget; ``buffer_stream`` the keys' prefix). Thread-safe :meth:`stop`; :meth:`run` blocks until stopped.
    """

    def __init__(
        self,
        config: Config,
        url: str,
        *,
        name: str | None = None,
        lease: float = DEFAULT_LEASE,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        transport_factory: Callable[[Config], Transport] = IngestClient,
        keepalive: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.url = url
        self.keys = Keys(config.buffer_stream)
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.lease = lease
        self.stop_timeout = stop_timeout
        self.counters = Counters()
        self.log = RateLimitedLog(logger, interval=10.0)
        self._factory = transport_factory
        #: Called after every round and during long waits (the embedded forwarder extends its lease there).
        self.keepalive = keepalive
        self._client = connect(url, timeout=BLOCK + 5.0, connect_timeout=2.0)
        rate = config.max_requests_per_minute
        self.budget = FleetBudget(url, self.keys.prefix, rate) if rate is not None else None
        self._stopping = threading.Event()
        self._stop_deadline = float("inf")
        self._group_ready = False
        self._carry: list[Entry] = []
        self._unacked: list[bytes] = []  # delivered to Dodo, their acknowledgement not yet taken by Redis
        self._next_claim = 0.0
        self._claim_from = b"0-0"
        self._published = 0.0
        self._progress = (time.monotonic(), 0)
        self._state = "starting"
        self.claimed = 0  # entries taken over from forwarders gone quiet
        self.started = time.time()

    def __repr__(self) -> str:
        return f"<Forwarder {self.name} {redact_url(self.url)} {self.keys.stream} -> {self.config.host}>"

    # --- control -------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop gracefully: read nothing more; finish the request in hand within ``stop_timeout``."""
        if not self._stopping.is_set():
            self._stop_deadline = time.monotonic() + self.stop_timeout
            self._stopping.set()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping.is_set()

    def run(self) -> None:
        """Forward until :meth:`stop`; never raises for Redis or Dodo trouble (it is logged, counted, retried)."""
        transport = self._factory(self.config)
        logger.info("dodo-ingest forwarder %s: %s -> %s", self.name, redact_url(self.url), self.config.host)
        try:
            while not self._stopping.is_set() or (
                (self._carry or self._unacked) and time.monotonic() < self._stop_deadline
            ):
                try:
                    self._round(transport)
                    self._state = "forwarding"
                    if self.keepalive is not None:
                        self.keepalive()
                except _Stopped:
                    break
                except KeyRejected as exc:
                    self._state = "key rejected"
                    if self._stopping.is_set():
                        break
                    self.log.log(
                        logging.ERROR,
                        "auth",
                        "Dodo rejected the API key (%s) at %s; the events stay in the stream, forwarding pauses "
                        "for %.0f s",
                        exc.answer.message,
                        self.config.host,
                        KEY_REJECTED_PAUSE,
                    )
                    self._publish()
                    self._stopping.wait(KEY_REJECTED_PAUSE)
                except (BufferUnavailable, RedisError, OSError) as exc:
                    self._state = "redis unavailable"
                    self._group_ready = False
                    message = str(exc) if isinstance(exc, BufferUnavailable) else describe_error(exc, self.url)
                    self.log.log(logging.WARNING, "redis", "dodo-ingest forwarder: Redis unavailable (%s)", message)
                    self._stopping.wait(RETRY_INTERVAL)
                except Exception:  # a bug: say so, keep what is in hand, go on (the process must not die of it)
                    self._state = "error"
                    self.log.log(
                        logging.ERROR, "bug", "dodo-ingest forwarder %s failed a round", self.name, exc_info=True
                    )
                    self._stopping.wait(RETRY_INTERVAL)
                self._publish()
        finally:
            transport.close()
            self._state = "stopped"
            with contextlib.suppress(RedisError, OSError):
                self._publish(force=True)
            self._client.close()
            stats = self.counters.snapshot(0)
            logger.info(
                "dodo-ingest forwarder %s stopped: %d events sent in %d requests, dropped %s, %d left pending",
                self.name,
                stats.sent,
                stats.requests,
                stats.dropped,
                len(self._carry),
            )

    # --- one round: gather, take a slot, send, acknowledge -------------------------------------------------

    def _round(self, transport: Transport) -> None:
        self._ensure_group()
        if self._unacked:  # Dodo has them: acknowledge them before anything else, never send them again
            self._ack(self._unacked)
            self._unacked = []
        entries, self._carry = self._carry, []
        if not self._stopping.is_set() and len(entries) < MAX_EVENTS_PER_REQUEST:
            entries += self._claim(MAX_EVENTS_PER_REQUEST - len(entries))
            if not entries:
                entries = self._read(MAX_EVENTS_PER_REQUEST, block=True)
            if entries:
                entries = self._linger(entries)
        batch = self._fit(entries)
        if not batch:
            return
        try:
            if self.budget is not None:
                self._wait_for_slot(batch)
            if len(batch) < MAX_EVENTS_PER_REQUEST and not self._carry and not self._stopping.is_set():
                batch += self._fit(self._read(MAX_EVENTS_PER_REQUEST - len(batch), block=False), self._size(batch))
            self._send(batch, transport)
        except BaseException:
            self._carry = batch + self._carry  # still pending under this forwarder: sent in the next round
            raise
        self._unacked = [e.id for e in batch]
        self._ack(self._unacked)
        self._unacked = []
        self._report_progress()

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self._client.xgroup_create(self.keys.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _claim(self, count: int) -> list[Entry]:
        """Entries idle longer than the lease (their forwarder died), every half lease."""
        now = time.monotonic()
        if now < self._next_claim:
            return []
        answer: Any = self._client.xautoclaim(
            self.keys.stream, GROUP, self.name, int(self.lease * 1000), start_id=self._claim_from, count=count
        )
        next_from, claimed = answer[0], answer[1]
        deleted = answer[2] if len(answer) > 2 else []
        if deleted:  # pending entries whose data is gone (trimmed by hand): nothing to send, acknowledge them
            self._client.xack(self.keys.stream, GROUP, *deleted)
        self._claim_from = next_from if next_from not in (b"0-0", "0-0") else b"0-0"
        if self._claim_from == b"0-0":
            self._next_claim = now + self.lease / 2
        entries = self._parse(claimed)
        if entries:
            self.claimed += len(entries)
            logger.info(
                "dodo-ingest forwarder %s claimed %d entries of a forwarder gone quiet", self.name, len(entries)
            )
        return entries

    def _linger(self, entries: list[Entry]) -> list[Entry]:
        """Read more until there are 1000 or the oldest has waited ``flush_interval`` (reads 10 times a second)."""
        # the events' clocks are their hosts': never linger longer than flush_interval from now
        due = min(min(e.pending.created for e in entries), time.time()) + self.config.flush_interval
        while len(entries) < MAX_EVENTS_PER_REQUEST and not self._stopping.is_set():
            left = due - time.time()
            if left <= 0:
                break
            self._stopping.wait(min(left, LINGER_STEP))
            entries = entries + self._read(MAX_EVENTS_PER_REQUEST - len(entries), block=False)
        return entries

    def _read(self, count: int, *, block: bool) -> list[Entry]:
        try:
            answer: Any = self._client.xreadgroup(
                GROUP, self.name, {self.keys.stream: ">"}, count=count, block=int(BLOCK * 1000) if block else None
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis lost the stream (restarted without persistence)
                self._group_ready = False
                return []
            raise
        if not answer:
            return []
        return self._parse(answer[0][1])

    def _parse(self, raw: list[Any]) -> list[Entry]:
        """Stream entries as events; an entry that is no event is dropped (``invalid``) and acknowledged."""
        entries: list[Entry] = []
        bad: list[bytes] = []
        for entry_id, fields in raw:
            try:
                encoded = fields[b"e"].decode()
                created = float(fields[b"t"])
            except (KeyError, ValueError, TypeError, AttributeError, UnicodeDecodeError):
                bad.append(entry_id)
                continue
            entries.append(Entry(entry_id, Pending(0, encoded, created)))
        if bad:
            record_drop(
                self.counters,
                self.config,
                self.log,
                [{"stream_entry": i.decode(errors="replace")} for i in bad],
                "invalid",
                f"stream entries of {self.keys.stream} that hold no event",
            )
            self._ack(bad)
        return entries

    def _size(self, batch: list[Entry]) -> int:
        return _EMPTY_BODY + sum(len(e.pending.json) + 1 for e in batch)

    def _fit(self, entries: list[Entry], size: int = _EMPTY_BODY) -> list[Entry]:
        """The entries that fit in one request after ``size`` bytes; the rest is carried to the next round."""
        limit = self.config.max_request_bytes
        for index, entry in enumerate(entries):
            grown = size + len(entry.pending.json) + 1
            if grown > limit and (index or size > _EMPTY_BODY):  # one event alone goes as it is (Dodo: 413)
                self._carry = entries[index:] + self._carry
                return entries[:index]
            size = grown
        return entries

    def _wait_for_slot(self, batch: list[Entry]) -> None:
        """Wait for a budget slot, keeping ``batch`` claimed; past the stop deadline, give up (:class:`_Stopped`)."""
        assert self.budget is not None
        touched = time.monotonic()
        while True:
            wait = self.budget.take()
            if wait <= 0:
                return
            now = time.monotonic()
            if now + wait > self._stop_deadline:
                raise _Stopped
            if now - touched > self.lease / 3:
                self._touch(batch)
                touched = now
            threading.Event().wait(min(wait, self.lease / 3))

    def _touch(self, batch: list[Entry]) -> None:
        """Reset the idle time of the entries in hand, so that no other forwarder claims them."""
        if self.keepalive is not None:
            self.keepalive()
        if batch:
            self._client.xclaim(self.keys.stream, GROUP, self.name, 0, [e.id for e in batch], justid=True)

    def _send(self, batch: list[Entry], transport: Transport) -> None:
        paid = _Budgeted(KeyCheck(transport), self, batch)
        waiter = _Waiter(self, batch)
        deliverer = Deliverer(self.config, paid, self.counters, waiter, self.log, budget=MAX_EVENT_AGE)
        deliverer.deliver([e.pending for e in batch])

    def _ack(self, ids: list[bytes]) -> None:
        if not ids:
            return
        pipe = self._client.pipeline(transaction=True)
        pipe.xack(self.keys.stream, GROUP, *ids)
        pipe.xdel(self.keys.stream, *ids)
        pipe.execute()

    # --- reporting -----------------------------------------------------------------------------------------

    def _report_progress(self) -> None:
        now = time.monotonic()
        since, sent_before = self._progress
        if now - since < PROGRESS_INTERVAL:
            return
        stats = self.counters.snapshot(0)
        self._progress = (now, stats.sent)
        logger.info(
            "dodo-ingest forwarder %s: %d events sent in %d requests (%.0f events/s lately), %d retried, dropped %s",
            self.name,
            stats.sent,
            stats.requests,
            (stats.sent - sent_before) / (now - since),
            stats.retried,
            stats.dropped,
        )

    def _publish(self, force: bool = False) -> None:
        """Publish the counters to Redis (at most every :data:`STATUS_INTERVAL` unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._published < STATUS_INTERVAL:
            return
        self._published = now
        stats = self.counters.snapshot(0)
        key = self.keys.forwarder(self.name)
        fields = {
            "name": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "state": self._state,
            "started": self.started,
            "updated": time.time(),
            "sent": stats.sent,
            "requests": stats.requests,
            "retried": stats.retried,
            "dropped": json.dumps(stats.dropped),
            "in_hand": len(self._carry),
            "claimed": self.claimed,
            "last_error": stats.last_error or "",
        }
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(key, mapping=fields)
            pipe.expire(key, STATUS_TTL)
            pipe.execute()
        except (RedisError, OSError):
            if force:
                raise


class _Budgeted:
    """The forwarder's transport: every request but the first (whose slot the round took) takes a budget slot;
    401/403 becomes :class:`KeyRejected` before the delivery policy would drop the events."""

    def __init__(self, transport: Transport, forwarder: Forwarder, batch: list[Entry]) -> None:
        self.transport = transport
        self.forwarder = forwarder
        self.batch = batch
        self.paid = True

    def post(self, body: bytes, timeout: float | None = None) -> Answer:
        if not self.paid and self.forwarder.budget is not None:
            self.forwarder._wait_for_slot(self.batch)
        self.paid = False
        return self.transport.post(body, timeout)

    def close(self) -> None:  # pragma: no cover - the forwarder closes the real transport itself
        pass


class _Waiter:
    """Retry waits of the forwarder: they keep the entries claimed, and end the request at the stop deadline."""

    def __init__(self, forwarder: Forwarder, batch: list[Entry]) -> None:
        self.forwarder = forwarder
        self.batch = batch

    def wait(self, seconds: float, mandated: bool) -> bool:
        forwarder = self.forwarder
        end = time.monotonic() + seconds
        if end > forwarder._stop_deadline:
            raise _Stopped
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return True
            if forwarder._stopping.wait(min(left, forwarder.lease / 3)) and end > forwarder._stop_deadline:
                raise _Stopped
            forwarder._touch(self.batch)

    def time_left(self) -> float | None:
        deadline = self.forwarder._stop_deadline
        return None if deadline == float("inf") else max(0.0, deadline - time.monotonic())


def status(url: str, prefix: str) -> dict[str, Any]:
    """The buffer's state: stream length, pending and unread entries, the budget used, and every live
    forwarder's counters (what ``dodo-ingest forward --status`` prints)."""
    keys = Keys(prefix)
    client: redis.Redis = connect(url, timeout=5.0, connect_timeout=2.0)
    try:
        length: Any = client.xlen(keys.stream)
        result: dict[str, Any] = {"stream": keys.stream, "length": int(length)}
        groups: Any = client.xinfo_groups(keys.stream) if result["length"] or client.exists(keys.stream) else []
        for group in groups:
            if group.get("name") in (GROUP, GROUP.encode()):
                result["pending"] = int(group.get("pending") or 0)
                lag = group.get("lag")
                result["unread"] = None if lag is None else int(lag)
        forwarders = []
        for key in client.scan_iter(match=keys.forwarders, count=100):
            raw: Any = client.hgetall(key)
            forwarders.append({k.decode(): v.decode() for k, v in raw.items()})
        result["forwarders"] = sorted(forwarders, key=lambda f: f.get("name", ""))
        return result
    finally:
        client.close()


def _environment_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """The delivery settings given as ``DODO_INGEST_*`` environment variables (JSON values parsed)."""
    names = {s.name for s in SETTINGS if s.scope == "delivery"}
    result: dict[str, Any] = {}
    for key, value in environ.items():
        name = key[len(PREFIX) :].lower() if key.startswith(PREFIX) else None
        if name in names:
            try:
                result[name] = json.loads(value)
            except ValueError:
                result[name] = value
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dodo-ingest forward",
        description="Forward the shared Redis buffer to Dodo within one fleet-wide request budget. The Dodo key and "
        "host come from DODO_PAYMENTS_API_KEY / DODO_PAYMENTS_BASE_URL, delivery settings (max_requests_per_minute, "
        "buffer_stream, ...) from DODO_INGEST_* variables.",
    )
    parser.add_argument("--buffer", default=None, metavar="URL", help="Redis URL (default: $DODO_INGEST_BUFFER_URL)")
    parser.add_argument("--stream", default=None, metavar="PREFIX", help="key prefix (default: buffer_stream)")
    parser.add_argument("--status", action="store_true", help="print the buffer's and the forwarders' state, exit")
    parser.add_argument("--name", default=None, help="this forwarder's consumer name (default: host-pid)")
    parser.add_argument(
        "--lease",
        type=float,
        default=DEFAULT_LEASE,
        help=f"seconds before another forwarder claims what this one left unacknowledged (default {DEFAULT_LEASE:g})",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=DEFAULT_STOP_TIMEOUT,
        help=f"seconds the request in hand may take after SIGTERM (default {DEFAULT_STOP_TIMEOUT:g})",
    )
    return parser


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """``dodo-ingest forward``: forward until SIGTERM or SIGINT (exit 0); ``--status``: print the state."""
    environ = os.environ if environ is None else environ
    parser = _parser()
    args = parser.parse_args(argv)
    settings = _environment_settings(environ)
    if args.buffer is not None:
        settings["buffer_url"] = args.buffer
    if args.stream is not None:
        settings["buffer_stream"] = args.stream
    if args.status:
        settings["enabled"] = False  # the status needs no API key
    try:
        config = Config.load(settings, environ=environ)
    except ConfigurationError as exc:
        print(f"dodo-ingest forward: {exc}", file=sys.stderr)
        return 2
    if config.buffer_url is None:
        parser.error("give the Redis URL with --buffer or DODO_INGEST_BUFFER_URL")
    if args.status:
        try:
            print(json.dumps(status(config.buffer_url, config.buffer_stream), indent=2))
        except (RedisError, OSError) as exc:
            print(f"dodo-ingest forward: {describe_error(exc, config.buffer_url)}", file=sys.stderr)
            return 1
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    forwarder = Forwarder(config, config.buffer_url, name=args.name, lease=args.lease, stop_timeout=args.stop_timeout)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        forwarder.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    forwarder.run()
    return 0
