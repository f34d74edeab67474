"""The HTTP side of the local Dodo server: request handler, :class:`LocalDodoServer` and the CLI.

Standard library only (``http.server.ThreadingHTTPServer``): HTTP/1.1 with
keep-alive, Nagle disabled, every response written in a single send with a
``Content-Length``. Routes:

* ``POST /events/ingest``, ``GET /events``, ``GET /events/{event_id}`` - Dodo's
  API (bearer auth; rules in :mod:`dodo_ingest.localserver.rules`).
* ``POST /_local/faults`` (JSON list of faults), ``DELETE /_local/faults``,
  ``DELETE /_local/events`` (clear events and request log), ``GET /_local/events``,
  ``GET /_local/requests``, ``GET /_local/stats`` - test controls, no auth.

Unknown routes answer 404 and known routes with the wrong method 405, both
as JSON ``{"code", "message"}``. Nothing is printed per request unless
``verbose`` is set, and the Authorization header is never logged.

Semantics where Dodo's spec leaves room:

* ``POST /events/ingest`` answers ``{"ingested_count": N}`` with N = the number
  of events in the request, including ids already stored (which are ignored).
  Checks run in this order: scripted fault, 413 (from Content-Length, before
  reading), 401, 422/400 (see :mod:`.rules`). Chunked bodies are accepted.
* ``GET /events``: ``page_size`` (default 10) and ``page_number`` (0-based)
  must be integers in 0..2**31-1 (the spec's int32, no lower maximum is
  published), else 422. ``start`` is inclusive and ``end`` exclusive (the
  spec only says "after"/"before"); a malformed date is 400, as the spec
  lists. ``meter_id`` is 422: meters are not emulated. Items are ordered by
  timestamp, then ingestion order; ``metadata`` is ``{}`` when none was sent.
* ``GET /events/ingest`` is 405 (the ingest route), so an event whose id is
  literally ``ingest`` cannot be read back by id.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import os
import signal
import socket
import socketserver
import sqlite3
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote

from .faults import Fault, FaultQueue
from .rules import NormalizedEvent, RuleViolation, parse_body, parse_timestamp, validate_ingest
from .store import EventStore

__all__ = ["LocalDodoServer", "RequestRecord", "main"]

_INT32_MAX = 2**31 - 1
_LOOPBACK_FOR_WILDCARD = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # noqa: S104 - not a bind
_DEFAULT_PAGE_SIZE = 10
_ERROR_CODES = {
    400: "INVALID_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    411: "LENGTH_REQUIRED",
    413: "PAYLOAD_TOO_LARGE",
    422: "UNPROCESSABLE_ENTITY",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_SERVER_ERROR",
    501: "NOT_IMPLEMENTED",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}


@dataclass(frozen=True)
class RequestRecord:
    """One ``POST /events/ingest`` as the server saw it, after faults were applied.

    ``status`` is the status answered (0 when the connection was dropped),
    ``event_count``/``event_ids`` describe the body as sent (best effort when it
    was invalid), ``body_bytes`` is its size and ``authorization_ok`` whether
    the bearer key was accepted.
    """

    status: int
    event_count: int
    event_ids: list[str]
    body_bytes: int
    authorization_ok: bool


class _HttpError(Exception):
    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


class _ClientGone(Exception):
    """The client went away in the middle of a request."""


def _error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    if code is None:
        code = _ERROR_CODES.get(status)
        if code is None:
            try:
                code = HTTPStatus(status).name
            except ValueError:
                code = f"HTTP_{status}"
    return {"code": code, "message": message}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _peek_events(body: Any) -> tuple[int, list[str]]:
    """Best-effort event count and ids of a (possibly invalid) ingest body, for the request log."""
    if isinstance(body, dict):
        events = body.get("events")
        if isinstance(events, list):
            ids = [e["event_id"] for e in events if isinstance(e, dict) and type(e.get("event_id")) is str]
            return len(events), ids
    return 0, []


def _loads_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its LocalDodoServer and its open connections."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], app: LocalDodoServer, family: socket.AddressFamily) -> None:
        self.address_family = family
        self.app = app
        self._conn_lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._dropped: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn(), a reverse DNS lookup that can take seconds.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def mark_dropped(self, request: socket.socket) -> None:
        """Close this connection with a reset (no FIN, no response) when its handler finishes."""
        with self._conn_lock:
            self._dropped.add(request)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._open.discard(request)
            dropped = request in self._dropped
            self._dropped.discard(request)
        if dropped:
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open client connection, so idle keep-alive handlers exit now."""
        with self._conn_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.app.verbose:
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Routes one request at a time on a keep-alive connection."""

    protocol_version = "HTTP/1.1"
    server_version = "dodo-ingest-localserver"
    disable_nagle_algorithm = True
    _body_state = "none"  # "unread" | "read" per request
    _parsed: Any = None

    # ---- plumbing -------------------------------------------------------------------------------

    @property
    def app(self) -> LocalDodoServer:
        server = self.server
        assert isinstance(server, _HTTPServer)
        return server.app

    def log_message(self, format: str, *args: Any) -> None:
        if self.app.verbose:
            sys.stderr.write(f"[dodo-local] {self.address_string()} {format % args}\n")

    def log_error(self, format: str, *args: Any) -> None:
        self.log_message(format, *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line, oversized headers...) as JSON; closes the connection."""
        self.close_connection = True
        self._body_state = "read"
        with contextlib.suppress(OSError):
            self._write(code, _error_body(code, message or _phrase(code)))

    def _write(self, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        head = [f"HTTP/1.1 {status} {_phrase(status)}", f"Date: {formatdate(usegmt=True)}"]
        if status in (204, 304):  # these never carry a body
            body = b""
        else:
            body = json.dumps(payload, separators=(",", ":")).encode()
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        head.extend(f"{name}: {value}" for name, value in headers)
        if self.close_connection:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace")
        if self.command != "HEAD":
            data += body
        self.wfile.write(data)
        self.log_request(status, len(body))

    def _respond(self, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        self._drain()
        self._write(status, payload, headers)

    def _fail(self, status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        self._respond(status, _error_body(status, message), headers)

    def _content_length(self) -> int:
        raw = self.headers.get("Content-Length")
        if raw is None:
            return 0
        raw = raw.strip()
        if not raw.isdigit():
            raise _HttpError(400, "invalid Content-Length header", close=True)
        return int(raw)

    def _read_body(self) -> bytes:
        """The request body (Content-Length or chunked); 413 above max_body_bytes, before reading it."""
        self._body_state = "read"
        cap = self.app.max_body_bytes
        encoding = self.headers.get("Transfer-Encoding")
        if encoding is not None:
            if encoding.strip().lower() != "chunked":
                raise _HttpError(501, f"Transfer-Encoding {encoding!r} is not supported", close=True)
            return self._read_chunked(cap)
        length = self._content_length()
        if length > cap:
            raise _HttpError(413, f"request body of {length} bytes exceeds the {cap}-byte limit", close=True)
        data = self.rfile.read(length) if length else b""
        if len(data) < length:
            raise _ClientGone
        return data

    def _read_chunked(self, cap: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise _ClientGone
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _HttpError(400, "malformed chunked body", close=True) from None
            if size < 0:
                raise _HttpError(400, "malformed chunked body", close=True)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > cap:
                raise _HttpError(413, f"request body exceeds the {cap}-byte limit", close=True)
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise _ClientGone
            parts.append(chunk)
            self.rfile.readline(1024)

    def _drain(self) -> None:
        """Consume an unread request body so the keep-alive connection stays in sync (or close it)."""
        if self._body_state != "unread":
            return
        try:
            self._read_body()
        except (_HttpError, _ClientGone, OSError):
            self.close_connection = True

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        scheme, _, key = header.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return False
        expected = self.app.api_key
        if expected is None:
            return True
        return hmac.compare_digest(key.encode("utf-8", "replace"), expected.encode("utf-8", "replace"))

    def _drop(self) -> None:
        """Close the connection without a response (a reset), as a dropped connection fault."""
        self.close_connection = True
        self._body_state = "read"
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server = self.server
        assert isinstance(server, _HTTPServer)
        server.mark_dropped(self.connection)
        self.log_request(0)

    # ---- dispatch -------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        te = self.headers.get("Transfer-Encoding")
        self._body_state = "unread" if te is not None or self.headers.get("Content-Length") else "read"
        try:
            self._route()
        except _ClientGone:
            self.close_connection = True
        except _HttpError as exc:
            if exc.close:
                self.close_connection = True
            self._fail(exc.status, exc.message)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
        except Exception as exc:
            if self.app.verbose:
                traceback.print_exc()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._fail(500, f"internal error in the local server: {type(exc).__name__}")

    def _route(self) -> None:
        path, _, query = self.path.partition("?")
        method = "GET" if self.command == "HEAD" else self.command
        if path.startswith("/events"):
            self._route_events(path, query, method)
            return
        routes: dict[str, dict[str, Callable[[str], None]]] = {
            "/_local/faults": {"POST": self._local_add_faults, "DELETE": self._local_clear_faults},
            "/_local/events": {"GET": self._local_events, "DELETE": self._local_clear},
            "/_local/requests": {"GET": self._local_requests},
            "/_local/stats": {"GET": self._local_stats},
        }
        handlers = routes.get(path)
        if handlers is None:
            self._fail(404, f"no route for {path[:200]}")
            return
        handler = handlers.get(method)
        if handler is None:
            self._fail(405, f"{self.command} is not allowed on {path}", [("Allow", ", ".join(handlers))])
            return
        handler(query)

    def _route_events(self, path: str, query: str, method: str) -> None:
        if path == "/events/ingest":
            allowed = "POST"
        elif path == "/events" or (len(path) > 8 and path.startswith("/events/") and "/" not in path[8:]):
            allowed = "GET"
        else:
            self._fail(404, f"no route for {path[:200]}")
            return
        if allowed == "POST" and method == "POST":
            self._ingest()
            return
        if not self._authorized():
            self._fail(401, "missing or invalid API key (expected 'Authorization: Bearer <key>')")
            return
        if method != allowed:
            self._fail(405, f"{self.command} is not allowed on {path}", [("Allow", allowed)])
            return
        if path == "/events":
            self._list_events(query)
        else:
            self._get_event(unquote(path[len("/events/") :]))

    # ---- Dodo routes ----------------------------------------------------------------------------

    def _ingest(self) -> None:
        app = self.app
        fault = app.faults.take()
        authorized = self._authorized()
        misbehaves = fault is not None and (fault.status is not None or fault.drop_connection)
        if fault is not None and fault.delay > 0 and app.stopping.wait(fault.delay):
            self._drop()
            return
        if fault is not None and misbehaves and not fault.process:
            try:
                raw = self._read_body()
            except _HttpError:  # too large or malformed framing: answer anyway, then hang up
                raw = b""
                self.close_connection = True
            count, ids = _peek_events(_loads_or_none(raw))
            self._answer_fault(fault, authorized, count, ids, len(raw))
            return
        status, payload, count, ids, size = self._process_ingest(authorized)
        if fault is not None and misbehaves:
            self._answer_fault(fault, authorized, count, ids, size)
            return
        app.record(RequestRecord(status, count, ids, size, authorized))
        self._respond(status, payload)
        self._parsed = None  # free the decoded batch only now, after the client has its answer

    def _answer_fault(self, fault: Fault, authorized: bool, count: int, ids: list[str], size: int) -> None:
        if fault.drop_connection:
            self.app.record(RequestRecord(0, count, ids, size, authorized))
            self._drop()
            return
        status = fault.status if fault.status is not None else 200
        self.app.record(RequestRecord(status, count, ids, size, authorized))
        payload: dict[str, Any]
        if fault.body is not None:
            payload = fault.body
        elif 200 <= status < 300:
            payload = {"ingested_count": count}
        else:
            payload = _error_body(status, f"injected fault: HTTP {status}")
        headers = [("Retry-After", fault.retry_after)] if fault.retry_after is not None else []
        self._respond(status, payload, headers)

    def _process_ingest(self, authorized: bool) -> tuple[int, dict[str, Any], int, list[str], int]:
        """Apply Dodo's rules: (status, payload, event_count, event_ids, body_bytes)."""
        app = self.app
        try:
            raw = self._read_body()
        except _HttpError as exc:
            self.close_connection = self.close_connection or exc.close
            size = self._content_length() if exc.status == 413 and "Content-Length" in self.headers else 0
            return exc.status, _error_body(exc.status, exc.message), 0, [], size
        if not authorized:
            count, ids = _peek_events(_loads_or_none(raw))
            message = "missing or invalid API key (expected 'Authorization: Bearer <key>')"
            return 401, _error_body(401, message), count, ids, len(raw)
        body: Any = None
        try:
            body = parse_body(raw)
            events = validate_ingest(
                body, now=app.clock(), max_event_age=app.max_event_age, max_future_skew=app.max_future_skew
            )
        except RuleViolation as exc:
            count, ids = _peek_events(body)
            return exc.status, _error_body(exc.status, exc.message, exc.code), count, ids, len(raw)
        app.store_events(events, raw)
        self._parsed = (body, events)
        return 200, {"ingested_count": len(events)}, len(events), [e[0] for e in events], len(raw)

    def _list_events(self, query: str) -> None:
        params = parse_qs(query, keep_blank_values=True)

        def one(name: str) -> str | None:
            values = params.get(name)
            return values[-1] if values else None

        if one("meter_id") is not None:
            self._fail(422, "meter_id: meters are not emulated by the local server; filter by event_name")
            return
        page_size = self._int_param("page_size", one("page_size"), _DEFAULT_PAGE_SIZE)
        page_number = self._int_param("page_number", one("page_number"), 0)
        bounds: dict[str, int | None] = {}
        for name in ("start", "end"):
            value = one(name)
            if value is None:
                bounds[name] = None
                continue
            try:
                # an unescaped "+" in a query string arrives as a space
                bounds[name] = parse_timestamp(value.replace(" ", "+"))
            except ValueError as exc:
                raise _HttpError(400, f"{name}: {value[:64]!r} is {exc}") from None
        items = self.app.store.query(
            customer_id=one("customer_id"),
            event_name=one("event_name"),
            start_us=bounds["start"],
            end_us=bounds["end"],
            limit=page_size,
            offset=page_size * page_number,
        )
        self._respond(200, {"items": items})

    @staticmethod
    def _int_param(name: str, value: str | None, default: int) -> int:
        if value is None:
            return default
        if not value.isascii() or not value.isdigit() or int(value) > _INT32_MAX:
            message = f"{name}: must be an integer between 0 and {_INT32_MAX}, got {value[:32]!r}"
            raise _HttpError(422, message)
        return int(value)

    def _get_event(self, event_id: str) -> None:
        event = self.app.store.get(event_id)
        if event is None:
            self._fail(404, f"event {event_id[:200]!r} not found")
        else:
            self._respond(200, event)

    # ---- local control routes -------------------------------------------------------------------

    def _local_add_faults(self, query: str) -> None:
        raw = self._read_body()
        try:
            data = json.loads(raw)
            items = data if isinstance(data, list) else [data]
            faults = [Fault.from_dict(item) for item in items]
        except (ValueError, TypeError, RecursionError) as exc:
            raise _HttpError(422, f"invalid faults: {exc}") from None
        self.app.add_faults(*faults)
        self._respond(200, {"queued": len(faults)})

    def _local_clear_faults(self, query: str) -> None:
        self.app.clear_faults()
        self._respond(200, {"queued": 0})

    def _local_events(self, query: str) -> None:
        params = parse_qs(query)
        customer = params.get("customer_id", [None])[-1]
        name = params.get("event_name", [None])[-1]
        self._respond(200, {"items": self.app.events(customer_id=customer, event_name=name)})

    def _local_requests(self, query: str) -> None:
        self._respond(200, {"items": [asdict(r) for r in self.app.requests]})

    def _local_clear(self, query: str) -> None:
        self.app.clear()
        self._respond(200, self.app.stats())

    def _local_stats(self, query: str) -> None:
        self._respond(200, self.app.stats())


class LocalDodoServer:
    """A local, Dodo-compatible usage-events server (in a daemon thread) for demos, tests and development.

    It accepts exactly what Dodo's ``POST /events/ingest`` accepts, serves
    ``GET /events`` and ``GET /events/{id}``, stores events in SQLite and can
    be scripted to misbehave with :class:`~dodo_ingest.localserver.Fault`.

    ``api_key=None`` accepts any non-empty bearer key. Timestamps older than
    ``max_event_age`` or more than ``max_future_skew`` seconds ahead are
    rejected (400); bodies above ``max_body_bytes`` get 413. ``verbose`` prints
    one line per request to stderr. ``request_log_size`` bounds
    :attr:`requests` (oldest records are forgotten). ``clock`` returns the
    current time in seconds since the epoch.
    """

    def __init__(
        self,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        db_path: str = ":memory:",
        max_body_bytes: int = 5 * 1024 * 1024,
        max_event_age: float = 3600.0,
        max_future_skew: float = 300.0,
        *,
        verbose: bool = False,
        request_log_size: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")
        self.api_key = api_key or None
        self.host = host
        self.port = port
        self.db_path = db_path
        self.max_body_bytes = max_body_bytes
        self.max_event_age = float(max_event_age)
        self.max_future_skew = float(max_future_skew)
        self.verbose = verbose
        self.clock = clock
        self.faults = FaultQueue()
        self.stopping = threading.Event()
        self._records: deque[RequestRecord] = deque(maxlen=request_log_size)
        self._request_total = 0
        self._records_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._store: EventStore | None = None
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> LocalDodoServer:
        """Open the database, bind the socket and serve in a daemon thread; returns self."""
        with self._state_lock:
            if self._httpd is not None:
                raise RuntimeError("LocalDodoServer is already running")
            store = EventStore(self.db_path)
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            try:
                httpd = _HTTPServer((self.host, self.port), self, family)
            except BaseException:
                store.close()
                raise
            self.stopping = threading.Event()
            self._store, self._httpd = store, httpd
            bound_port = httpd.server_address[1]
            # a wildcard address is not something to connect to: advertise loopback instead
            host = _LOOPBACK_FOR_WILDCARD.get(self.host, self.host)
            host = f"[{host}]" if ":" in host else host
            self._url = f"http://{host}:{bound_port}"
            self._thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"dodo-local-server:{bound_port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections, the socket and the database. Idempotent."""
        with self._state_lock:
            httpd, thread, store = self._httpd, self._thread, self._store
            self._httpd = self._thread = None
            if httpd is None:
                return
            self.stopping.set()
            httpd.shutdown()
            httpd.close_connections()
            httpd.server_close()
            if thread is not None:
                thread.join(timeout=5)
            if store is not None:
                store.close()

    def __enter__(self) -> LocalDodoServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self._url if self._httpd is not None else "stopped"
        return f"<LocalDodoServer {state} db={self.db_path!r}>"

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash). Available after :meth:`start`."""
        if self._url is None:
            raise RuntimeError("LocalDodoServer has not been started")
        return self._url

    @property
    def running(self) -> bool:
        """Whether the server is currently serving."""
        return self._httpd is not None

    @property
    def store(self) -> EventStore:
        """The event store (open while the server runs)."""
        if self._store is None:
            raise RuntimeError("LocalDodoServer has not been started")
        return self._store

    # ---- inspection and control -----------------------------------------------------------------

    def events(self, customer_id: str | None = None, event_name: str | None = None) -> list[dict[str, Any]]:
        """Stored events in ingestion order, optionally filtered.

        Each is ``{"event_id", "customer_id", "event_name", "timestamp", "metadata", "business_id"}``
        (``metadata`` is ``{}`` when the event had none; ``timestamp`` is RFC 3339 UTC with ``Z``).
        """
        return self.store.query(customer_id=customer_id, event_name=event_name, order="ingestion")

    def get_event(self, event_id: str) -> dict[str, Any] | None:
        """The stored event with this id, or None."""
        return self.store.get(event_id)

    def event_count(self) -> int:
        """How many distinct events are stored."""
        return self.store.count()

    def wait_for_events(self, n: int, timeout: float = 10.0) -> bool:
        """Block until at least ``n`` events are stored (True) or ``timeout`` seconds pass (False)."""
        return self.store.wait_for_count(n, timeout)

    def clear(self) -> None:
        """Forget every stored event and the request log (queued faults stay)."""
        self.store.clear()
        with self._records_lock:
            self._records.clear()
            self._request_total = 0

    @property
    def requests(self) -> list[RequestRecord]:
        """One record per ``POST /events/ingest`` received, oldest first (see :class:`RequestRecord`)."""
        with self._records_lock:
            return list(self._records)

    def add_faults(self, *faults: Fault) -> None:
        """Queue faults; each applies to the next ingest request(s), first in first out."""
        self.faults.add(*faults)

    def clear_faults(self) -> None:
        """Drop every queued fault."""
        self.faults.clear()

    def stats(self) -> dict[str, int]:
        """``{"event_count": N, "requests": M}`` as served by ``GET /_local/stats``."""
        with self._records_lock:
            total = self._request_total
        return {"event_count": self.event_count(), "requests": total}

    def record(self, record: RequestRecord) -> None:
        """Append to the request log (used by the handler)."""
        with self._records_lock:
            self._records.append(record)
            self._request_total += 1

    def store_events(self, events: list[NormalizedEvent], body: bytes | None = None) -> int:
        """Insert normalized events (from ``body``), ignoring ids already stored; return how many were new."""
        return self.store.insert(events, body)


# ---- command line -------------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dodo-ingest serve",
        description="Run a local Dodo-compatible usage-events server (POST /events/ingest, GET /events).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on; 0 = any free port")
    parser.add_argument(
        "--db",
        default="dodo-local.sqlite3",
        help="SQLite file (default: dodo-local.sqlite3 in the current directory; ':memory:' allowed)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="bearer key to require (default: $DODO_LOCAL_API_KEY; if unset any non-empty key is accepted)",
    )
    parser.add_argument("--max-body-bytes", type=int, default=5 * 1024 * 1024, help="413 above this size")
    parser.add_argument("--max-event-age", type=float, default=3600.0, help="max timestamp age, seconds")
    parser.add_argument("--max-future-skew", type=float, default=300.0, help="max timestamp lead, seconds")
    parser.add_argument("-v", "--verbose", action="store_true", help="print one line per request")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``dodo-ingest serve``: serve until Ctrl-C or SIGTERM, then exit 0 (1 if the server cannot start)."""
    args = _build_parser().parse_args(argv)
    api_key = args.api_key if args.api_key is not None else os.environ.get("DODO_LOCAL_API_KEY")
    try:
        server = LocalDodoServer(
            api_key=api_key or None,
            host=args.host,
            port=args.port,
            db_path=args.db,
            max_body_bytes=args.max_body_bytes,
            max_event_age=args.max_event_age,
            max_future_skew=args.max_future_skew,
            verbose=args.verbose,
        ).start()
    except (OSError, sqlite3.Error, ValueError) as exc:
        print(f"dodo-ingest serve: cannot start on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()
    restore: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            restore[sig] = signal.signal(sig, on_signal)

    auth = "API key required" if api_key else "no API key configured: any non-empty bearer key is accepted"
    print(
        f"Local Dodo events server on {server.url} (db: {args.db}; {auth}). "
        f"Point the SDK at it: export DODO_PAYMENTS_BASE_URL={server.url}",
        flush=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        for sig, handler in restore.items():
            signal.signal(sig, handler)
    print("Local Dodo events server stopped.", file=sys.stderr, flush=True)
    return 0
