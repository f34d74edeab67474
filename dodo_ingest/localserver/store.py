"""SQLite storage for the local Dodo server's events.

One connection (``check_same_thread=False``) guarded by a lock, so the store can
be shared by the HTTP handler threads and the test code. A batch is written
with ``executemany`` of ``INSERT OR IGNORE`` in one transaction, which gives
Dodo's idempotency: an ``event_id`` already stored is silently skipped. File
databases use WAL with ``synchronous=NORMAL``; ``":memory:"`` is allowed.

To keep per-event work minimal, metadata is not re-encoded event by event: the
request body (already valid JSON) is stored once in ``batches`` and each event
row points at ``events[position].metadata`` inside it. Reads parse each
referenced body once per query.

Meters (``POST /meters``) live in their own table as their JSON form, with an
``archived`` flag; :meth:`EventStore.clear` forgets events, never meters.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .rules import NormalizedEvent, format_timestamp

__all__ = ["BUSINESS_ID", "EventStore"]

BUSINESS_ID = "bus_local"
"""The ``business_id`` every locally stored event reports."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id           INTEGER PRIMARY KEY,
    body         BLOB NOT NULL          -- an ingest body: {"events": [{"metadata": {...}}, ...]}
);
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY,   -- ingestion order
    event_id     TEXT NOT NULL UNIQUE,
    customer_id  TEXT NOT NULL,
    event_name   TEXT NOT NULL,
    ts_us        INTEGER NOT NULL,      -- microseconds since the epoch, UTC
    batch        INTEGER,               -- batches.id holding the metadata, NULL when none
    position     INTEGER                -- index of the event in that body's "events"
);
CREATE TABLE IF NOT EXISTS meters (
    seq          INTEGER PRIMARY KEY,   -- creation order
    id           TEXT NOT NULL UNIQUE,
    body         TEXT NOT NULL,         -- the meter's API form (JSON)
    archived     INTEGER NOT NULL DEFAULT 0
);
"""
# No index besides the event_id one: each index costs more per insert than the occasional sort of a
# local GET /events saves. Rows go in through a 50-row statement (far fewer statement steps than one
# row at a time) and a 1-row statement for the remainder.
_CHUNK = 50
_INSERT_PREFIX = "INSERT OR IGNORE INTO events (event_id, customer_id, event_name, ts_us, batch, position) VALUES "
_INSERT_ONE = _INSERT_PREFIX + "(?, ?, ?, ?, ?, ?)"
_INSERT_CHUNK = _INSERT_PREFIX + ", ".join(["(?, ?, ?, ?, ?, ?)"] * _CHUNK)
_SELECT = "SELECT event_id, customer_id, event_name, ts_us, batch, position, seq FROM events"
_GET_ONE = _SELECT + " WHERE event_id = ?"

_Row = tuple[str, str, str, int, int | None, int | None]
_StoredRow = tuple[str, str, str, int, int | None, int | None, int]


def _chunks(rows: list[_Row]) -> Iterator[tuple[Any, ...]]:
    chain = itertools.chain.from_iterable
    for start in range(0, len(rows) - len(rows) % _CHUNK, _CHUNK):
        yield tuple(chain(rows[start : start + _CHUNK]))


class EventStore:
    """Thread-safe SQLite event store (a file path or ``":memory:"``)."""

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._conn: sqlite3.Connection | None = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        try:
            if path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT COUNT(*) FROM events").fetchone()
        except BaseException:
            self._conn.close()
            raise
        self._count: int = row[0]
        self._generation = 0

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the event store is closed")
        return self._conn

    def insert(self, events: Sequence[NormalizedEvent], body: bytes | None = None) -> int:
        """Store a batch in one transaction, skipping ids already stored; return how many were new.

        ``body`` is the JSON request the events came from, in which ``events[i].metadata``
        is the metadata of ``events[i]``; it is stored as is instead of encoding each
        event's metadata. Without it, one is built from the events.
        """
        with_metadata = any(event[4] is not None for event in events)
        if with_metadata and body is None:
            body = json.dumps({"events": [{"metadata": event[4]} for event in events]}).encode()
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN")
            try:
                batch = (
                    conn.execute("INSERT INTO batches (body) VALUES (?)", (body,)).lastrowid if with_metadata else None
                )
                rows: list[_Row] = [
                    (e[0], e[1], e[2], e[3], batch, None if e[4] is None else i) for i, e in enumerate(events)
                ]
                tail = len(rows) - len(rows) % _CHUNK
                added = max(conn.executemany(_INSERT_CHUNK, _chunks(rows)).rowcount, 0) if tail else 0
                if tail < len(rows):
                    added += max(conn.executemany(_INSERT_ONE, rows[tail:]).rowcount, 0)
                if batch is not None and added == 0:  # a pure retry: nothing refers to this body
                    conn.execute("DELETE FROM batches WHERE id = ?", (batch,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._count += added
            if added:
                self._changed.notify_all()
            return added

    def count(self) -> int:
        """Number of events stored."""
        with self._lock:
            self._db()
            return self._count

    def wait_for_count(self, n: int, timeout: float) -> bool:
        """Block until at least ``n`` events are stored (True) or ``timeout`` seconds pass (False)."""
        with self._changed:
            self._changed.wait_for(lambda: self._conn is None or self._count >= n, timeout)
            return self._count >= n

    def get(self, event_id: str) -> dict[str, Any] | None:
        """The stored event with this id, or None."""
        with self._lock:
            rows = self._db().execute(_GET_ONE, (event_id,)).fetchall()
            events = self._materialize(rows)
        return events[0] if events else None

    @property
    def generation(self) -> int:
        """Incremented by every :meth:`clear`, so a reader that follows ``seq`` knows to start over."""
        return self._generation

    @staticmethod
    def _where(
        customer_id: str | None, event_name: str | None, start_us: int | None, end_us: int | None
    ) -> tuple[list[str], list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("customer_id = ?", customer_id),
            ("event_name = ?", event_name),
            ("ts_us >= ?", start_us),
            ("ts_us < ?", end_us),
        ):
            if value is not None:
                clauses.append(clause)
                params.append(value)
        return clauses, params

    def query(
        self,
        *,
        customer_id: str | None = None,
        event_name: str | None = None,
        start_us: int | None = None,
        end_us: int | None = None,
        limit: int | None = None,
        offset: int = 0,
        order: str = "time",
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Stored events matching every given filter.

        ``start_us`` is inclusive and ``end_us`` exclusive (epoch microseconds).
        ``order`` is ``"time"`` (timestamp, then ingestion order) or ``"ingestion"``.
        ``limit``/``offset`` page through the result. ``where``, when given, is a further
        predicate on each event's API dict (a meter's filter), applied before paging.
        """
        if where is not None:
            matching = (
                event
                for event in self.scan(
                    customer_id=customer_id, event_name=event_name, start_us=start_us, end_us=end_us, order=order
                )
                if where(event)
            )
            stop = None if limit is None else offset + limit
            return [self._public(event) for event in itertools.islice(matching, offset, stop)]
        clauses, params = self._where(customer_id, event_name, start_us, end_us)
        where_sql = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        order_by = " ORDER BY ts_us, seq" if order == "time" else " ORDER BY seq"
        sql = _SELECT + where_sql + order_by
        if limit is not None or offset:
            sql += " LIMIT ? OFFSET ?"
            params.extend((-1 if limit is None else limit, offset))
        with self._lock:
            rows = self._db().execute(sql, params).fetchall()
            return self._materialize(rows)

    def scan(
        self,
        *,
        customer_id: str | None = None,
        event_name: str | None = None,
        start_us: int | None = None,
        end_us: int | None = None,
        after_seq: int = 0,
        order: str = "time",
        chunk: int = 2000,
    ) -> Iterator[dict[str, Any]]:
        """Iterate over matching events in chunks, without holding the lock between chunks.

        Each event is its API dict plus ``seq`` (ingestion order) and ``ts_us``. With
        ``order="ingestion"`` only events with ``seq > after_seq`` are returned, so a reader can
        follow the store as it grows (check :attr:`generation` for a :meth:`clear` in between).
        """
        clauses, params = self._where(customer_id, event_name, start_us, end_us)
        if order == "time":
            cursor: tuple[int, ...] = (-(2**62), 0)
            keyset, order_by = "(ts_us, seq) > (?, ?)", " ORDER BY ts_us, seq LIMIT ?"
        else:
            cursor = (after_seq,)
            keyset, order_by = "seq > ?", " ORDER BY seq LIMIT ?"
        sql = _SELECT + " WHERE " + " AND ".join([*clauses, keyset]) + order_by
        while True:
            with self._lock:
                rows = self._db().execute(sql, [*params, *cursor, chunk]).fetchall()
                events = self._materialize(rows, internal=True)
            yield from events
            if len(rows) < chunk:
                return
            last = events[-1]
            cursor = (last["ts_us"], last["seq"]) if order == "time" else (last["seq"],)

    @staticmethod
    def _public(event: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in event.items() if key not in ("seq", "ts_us")}

    def _materialize(self, rows: list[_StoredRow], internal: bool = False) -> list[dict[str, Any]]:
        """Turn event rows into API dicts, parsing each referenced body once (lock held).

        ``internal`` adds ``seq`` and ``ts_us`` to each dict.
        """
        conn = self._db()
        bodies: dict[int, list[Any]] = {}
        out = []
        for event_id, customer_id, event_name, ts_us, batch, position, seq in rows:
            metadata: dict[str, Any] = {}
            if batch is not None and position is not None:
                events = bodies.get(batch)
                if events is None:
                    (blob,) = conn.execute("SELECT body FROM batches WHERE id = ?", (batch,)).fetchone()
                    events = bodies[batch] = json.loads(blob)["events"]
                metadata = events[position]["metadata"]
            event: dict[str, Any] = {
                "business_id": BUSINESS_ID,
                "customer_id": customer_id,
                "event_id": event_id,
                "event_name": event_name,
                "timestamp": format_timestamp(ts_us),
                "metadata": metadata,
            }
            if internal:
                event["seq"], event["ts_us"] = seq, ts_us
            out.append(event)
        return out

    def clear(self) -> None:
        """Delete every stored event."""
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN")
            conn.execute("DELETE FROM events")
            conn.execute("DELETE FROM batches")
            conn.execute("COMMIT")
            self._count = 0
            self._generation += 1

    # ---- meters -------------------------------------------------------------------------------------------

    def add_meter(self, meter: dict[str, Any]) -> None:
        """Store a new meter (its API form, with a unique ``id``)."""
        with self._lock:
            self._db().execute("INSERT INTO meters (id, body) VALUES (?, ?)", (meter["id"], json.dumps(meter)))

    def get_meter(self, meter_id: str) -> dict[str, Any] | None:
        """The meter's API form plus ``archived`` (bool), or None."""
        with self._lock:
            row = self._db().execute("SELECT body, archived FROM meters WHERE id = ?", (meter_id,)).fetchone()
        return None if row is None else self._meter(row)

    def meters(
        self, *, archived: bool | None = False, limit: int | None = None, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Meters in creation order (each with ``archived``): active ones, archived ones, or all (None)."""
        sql = "SELECT body, archived FROM meters"
        params: list[Any] = []
        if archived is not None:
            sql += " WHERE archived = ?"
            params.append(int(archived))
        sql += " ORDER BY seq LIMIT ? OFFSET ?"
        params.extend((-1 if limit is None else limit, offset))
        with self._lock:
            rows = self._db().execute(sql, params).fetchall()
        return [self._meter(row) for row in rows]

    def update_meter(self, meter_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        """Apply ``changes`` to a meter's API form (``archived`` sets the flag); the result, or None."""
        with self._lock:
            conn = self._db()
            row = conn.execute("SELECT body, archived FROM meters WHERE id = ?", (meter_id,)).fetchone()
            if row is None:
                return None
            meter = self._meter(row)
            meter.update(changes)
            archived = int(bool(meter.pop("archived")))
            update = "UPDATE meters SET body = ?, archived = ? WHERE id = ?"
            conn.execute(update, (json.dumps(meter), archived, meter_id))
            meter["archived"] = bool(archived)
            return meter

    @staticmethod
    def _meter(row: tuple[str, int]) -> dict[str, Any]:
        meter: dict[str, Any] = json.loads(row[0])
        meter["archived"] = bool(row[1])
        return meter

    def close(self) -> None:
        """Close the database (idempotent); waiters in :meth:`wait_for_count` are released."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                self._changed.notify_all()
