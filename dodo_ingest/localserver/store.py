"""SQLite storage for the local Dodo server's events.

One connection (``check_same_thread=False``) guarded by a lock, so the store can
be shared by the HTTP handler threads and the test code. A batch is written
with a single ``executemany`` of ``INSERT OR IGNORE`` in one transaction, which
gives Dodo's idempotency: an ``event_id`` already stored is silently skipped.
File databases use WAL with ``synchronous=NORMAL``; ``":memory:"`` is allowed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from typing import Any

from .rules import NormalizedEvent, format_timestamp

__all__ = ["BUSINESS_ID", "EventStore"]

BUSINESS_ID = "bus_local"
"""The ``business_id`` every locally stored event reports."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY,
    event_id     TEXT NOT NULL UNIQUE,
    customer_id  TEXT NOT NULL,
    event_name   TEXT NOT NULL,
    ts_us        INTEGER NOT NULL,
    metadata     TEXT
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (ts_us, seq);
"""
_INSERT = (
    "INSERT OR IGNORE INTO events (event_id, customer_id, event_name, ts_us, metadata) VALUES (?, ?, ?, ?, ?)"
)
_COLUMNS = "event_id, customer_id, event_name, ts_us, metadata"
_GET_ONE = "SELECT event_id, customer_id, event_name, ts_us, metadata FROM events WHERE event_id = ?"


def _row_to_event(row: tuple[str, str, str, int, str | None]) -> dict[str, Any]:
    event_id, customer_id, event_name, ts_us, metadata = row
    return {
        "business_id": BUSINESS_ID,
        "customer_id": customer_id,
        "event_id": event_id,
        "event_name": event_name,
        "timestamp": format_timestamp(ts_us),
        "metadata": json.loads(metadata) if metadata is not None else {},
    }


class EventStore:
    """Thread-safe SQLite event store (a file path or ``":memory:"``)."""

    def __init__(self, path: str = ":memory:") -> None:
        self.path = path
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None
        )
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

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the event store is closed")
        return self._conn

    def insert(self, events: Iterable[NormalizedEvent]) -> int:
        """Store a batch in one transaction, skipping ids already stored; return how many were new."""
        with self._lock:
            conn = self._db()
            conn.execute("BEGIN")
            try:
                cursor = conn.executemany(_INSERT, events)
                added = max(cursor.rowcount, 0)
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
        """Block until at least ``n`` events are stored or ``timeout`` seconds pass; return which."""
        with self._changed:
            return self._changed.wait_for(lambda: self._conn is None or self._count >= n, timeout) and (
                self._count >= n
            )

    def get(self, event_id: str) -> dict[str, Any] | None:
        """The stored event with this id, or None."""
        with self._lock:
            row = self._db().execute(_GET_ONE, (event_id,)).fetchone()
        return _row_to_event(row) if row is not None else None

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
    ) -> list[dict[str, Any]]:
        """Stored events matching every given filter.

        ``start_us`` is inclusive and ``end_us`` exclusive (epoch microseconds).
        ``order`` is ``"time"`` (timestamp, then ingestion order) or ``"ingestion"``.
        ``limit``/``offset`` page through the result.
        """
        clauses: list[str] = []
        params: list[Any] = []
        if customer_id is not None:
            clauses.append("customer_id = ?")
            params.append(customer_id)
        if event_name is not None:
            clauses.append("event_name = ?")
            params.append(event_name)
        if start_us is not None:
            clauses.append("ts_us >= ?")
            params.append(start_us)
        if end_us is not None:
            clauses.append("ts_us < ?")
            params.append(end_us)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        order_by = "ts_us, seq" if order == "time" else "seq"
        sql = f"SELECT {_COLUMNS} FROM events{where} ORDER BY {order_by}"  # noqa: S608 - fixed fragments only
        if limit is not None or offset:
            sql += " LIMIT ? OFFSET ?"
            params.extend((-1 if limit is None else limit, offset))
        with self._lock:
            rows = self._db().execute(sql, params).fetchall()
        return [_row_to_event(row) for row in rows]

    def clear(self) -> None:
        """Delete every stored event."""
        with self._lock:
            self._db().execute("DELETE FROM events")
            self._count = 0

    def close(self) -> None:
        """Close the database (idempotent); waiters in :meth:`wait_for_count` are released."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                self._changed.notify_all()
