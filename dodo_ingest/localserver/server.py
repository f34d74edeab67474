"""The HTTP side of the local Dodo server: request handler, :class:`LocalDodoServer` and the CLI.

Standard library only (``http.server.ThreadingHTTPServer``): HTTP/1.1 with
keep-alive, Nagle disabled, every response written in a single send with a
``Content-Length``, and a listen backlog of 1024 (the standard library's 5
loses connections when a client opens a hundred at once, as Dodo's JS
blueprint and the async Python SDK do). Routes:

* Dodo's API (bearer auth; rules in :mod:`.rules` and :mod:`.meters`):
  ``POST /events/ingest``, ``GET /events``, ``GET /events/{event_id}``,
  ``POST /meters``, ``GET /meters``, ``GET|PATCH|DELETE /meters/{id}``,
  ``POST /meters/{id}/unarchive``.
* ``GET /`` - the dashboard (:mod:`.dashboard`; its files under ``/_local/static/``).
* ``/_local/*`` - controls and read-outs, no auth: ``GET|POST|DELETE /_local/faults``,
  ``GET|PUT|DELETE /_local/rate-limit``, ``GET|DELETE /_local/events`` (DELETE clears
  events and the request log), ``GET /_local/requests``, ``GET /_local/stats``,
  ``GET /_local/usage`` (each meter's value per customer over a time range: what Dodo
  would bill), ``GET /_local/dashboard`` (the dashboard's data).

Unknown routes answer 404 and known routes with the wrong method 405, both
as JSON ``{"code", "message"}``. Error codes are those of Dodo's error-code
page: ``INVALID_REQUEST_BODY`` (a body Dodo rejects, 400 or 422),
``MAXIMUM_KEYS_REACHED`` (more than 50 metadata keys, 400),
``INVALID_QUERY_PARAMS`` (a bad query parameter, 400 or 422), ``UNAUTHORIZED``,
``NOT_FOUND``, ``TOO_MANY_REQUESTS``, ``INTERNAL_SERVER_ERROR``; a few the page
does not name (``PAYLOAD_TOO_LARGE``, ``METHOD_NOT_ALLOWED``). Nothing is
printed per request unless ``verbose`` is set, and the Authorization header is
never logged.

Semantics where Dodo's spec leaves room:

* ``POST /events/ingest`` answers ``{"ingested_count": N}`` with N = the number
  of events in the request, including ids already stored (which are ignored).
  Checks run in this order: scripted fault, 413 (from Content-Length, before
  reading), 401, 429 (the optional request budget), 422/400 (see :mod:`.rules`).
  Chunked bodies are accepted.
* Every other Dodo route: scripted fault, 401, 405, 429, then the request.
* ``GET /events``: ``page_size`` (default 10) and ``page_number`` (0-based)
  must be integers in 0..2**31-1 (the spec's int32, no lower maximum is
  published), else 422. ``start`` is inclusive and ``end`` exclusive (the
  spec only says "after"/"before"); a malformed date is 400, as the spec
  lists. ``meter_id`` applies that meter's event name and filter (an unknown
  meter is 404; an ``event_name`` that is not the meter's is 422). Items are
  ordered by timestamp, then ingestion order; ``metadata`` is ``{}`` when none
  was sent.
* ``GET /meters``: ``page_size`` 0..100 (default 10), ``page_number`` 0-based,
  ``archived=true`` lists only archived meters, ``false`` (the default) only
  active ones; anything else is 422. Meters are listed in creation order.
  ``DELETE /meters/{id}`` archives (204); ``POST /meters/{id}/unarchive``
  answers 200 with an empty body; both are 404 for an unknown meter. Archived
  meters can still be retrieved and used with ``GET /events?meter_id=``.
* ``GET /events/ingest`` is 405 (the ingest route), so an event whose id is
  literally ``ingest`` cannot be read back by id.
"""

from __future__ import annotations

import argparse
import contextlib
import hmac
import json
import os
import secrets
import signal
import socket
import socketserver
import sqlite3
import struct
import sys
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote

from .dashboard import RANGES, UsageIndex, build_dashboard, static_file
from .faults import Fault, FaultQueue
from .meters import event_matches, parse_meter_create, parse_meter_update, usage_by_customer
from .ratelimit import RateLimit, RateLimiter, parse_rate_limits
from .rules import (
    INVALID_REQUEST_BODY,
    NormalizedEvent,
    RuleViolation,
    format_timestamp,
    parse_body,
    parse_timestamp,
    validate_ingest,
)
from .store import BUSINESS_ID, EventStore

__all__ = ["LocalDodoServer", "RequestRecord", "main"]

_INT32_MAX = 2**31 - 1
_LOOPBACK_FOR_WILDCARD = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}  # noqa: S104 - not a bind
_DEFAULT_PAGE_SIZE = 10
_MAX_METER_PAGE_SIZE = 100
_LISTEN_BACKLOG = 1024
INVALID_QUERY_PARAMS = "INVALID_QUERY_PARAMS"
_ERROR_CODES = {
    400: INVALID_REQUEST_BODY,
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    409: "CONFLICT",
    411: "LENGTH_REQUIRED",
    413: "PAYLOAD_TOO_LARGE",
    422: INVALID_REQUEST_BODY,
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
    def __init__(self, status: int, message: str, *, close: bool = False, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.code = code


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


def _public_meter(meter: Mapping[str, Any]) -> dict[str, Any]:
    """A stored meter in Dodo's ``MeterResponse`` form (without the local ``archived`` flag)."""
    return {key: value for key, value in meter.items() if key != "archived"}


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
    request_queue_size = _LISTEN_BACKLOG  # socketserver's default of 5 drops bursts of connections

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
    _route_label: str | None = None  # "GET /events/{event_id}": Dodo routes only, for the response counts
    _extra_headers: list[tuple[str, str]]  # added to this request's answer (a fault's, Retry-After)
    _after_fault: Fault | None = None  # a fault with process=True, applied when the answer is written

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
        self._route_label, self._extra_headers, self._after_fault = None, [], None
        with contextlib.suppress(OSError):
            self._write(code, _error_body(code, message or _phrase(code)))

    def _write(self, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Answer with JSON (``payload`` None: an empty body)."""
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        self._write_raw(status, body, "application/json" if body else None, headers)

    def _write_raw(
        self, status: int, body: bytes, content_type: str | None, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        head = [f"HTTP/1.1 {status} {_phrase(status)}", f"Date: {formatdate(usegmt=True)}"]
        if status in (204, 304):  # these never carry a body
            body = b""
        else:
            if content_type is not None:
                head.append(f"Content-Type: {content_type}")
            head.append(f"Content-Length: {len(body)}")
        head.extend(f"{name}: {value}" for name, value in [*headers, *self._extra_headers])
        if self.close_connection:
            head.append("Connection: close")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace")
        if self.command != "HEAD":
            data += body
        if self._route_label is not None:  # counted before the client can see the answer
            self.app.count_response(self._route_label, status)
        self.wfile.write(data)
        self.log_request(status, len(body))

    def _respond(self, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> None:
        self._drain()
        fault, self._after_fault = self._after_fault, None
        if fault is not None:  # process=True: the request was handled; now misbehave instead of answering
            if fault.drop_connection:
                self._drop()
                return
            status, payload = self._fault_answer(fault, payload if 200 <= status < 300 else None)
            headers = fault.headers()
        self._write(status, payload, headers)

    def _fail(
        self, status: int, message: str, headers: Iterable[tuple[str, str]] = (), code: str | None = None
    ) -> None:
        self._respond(status, _error_body(status, message, code), headers)

    @staticmethod
    def _fault_answer(fault: Fault, ok_payload: Any) -> tuple[int, Any]:
        """The status and body a misbehaving fault answers with (``ok_payload`` for a 2xx without ``body``)."""
        status = fault.status if fault.status is not None else 200
        if fault.body is not None:
            return status, fault.body
        if 200 <= status < 300:
            return status, ok_payload if ok_payload is not None else {}
        return status, _error_body(status, f"injected fault: HTTP {status}")

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

    def _bearer(self) -> str | None:
        header = self.headers.get("Authorization", "")
        scheme, _, key = header.strip().partition(" ")
        key = key.strip()
        return key if scheme.lower() == "bearer" and key else None

    def _authorized(self) -> bool:
        key = self._bearer()
        if key is None:
            return False
        expected = self.app.api_key
        if expected is None:
            return True
        return hmac.compare_digest(key.encode("utf-8", "replace"), expected.encode("utf-8", "replace"))

    def _over_budget(self) -> bool:
        """Apply the request budget to this (authorized) request; when over it, add Retry-After and say so."""
        limiter = self.app.rate_limiter
        if limiter is None:
            return False
        wait = limiter.acquire(self._bearer() or "")
        if wait is None:
            return False
        self._extra_headers.append(("Retry-After", RateLimiter.retry_after(wait)))
        return True

    def _budget_message(self) -> str:
        return f"rate limit exceeded: at most {self.app.rate_limit} requests per API key; retry later"

    def _drop(self) -> None:
        """Close the connection without a response (a reset), as a dropped connection fault."""
        self.close_connection = True
        self._body_state = "read"
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server = self.server
        assert isinstance(server, _HTTPServer)
        server.mark_dropped(self.connection)
        if self._route_label is not None:
            self.app.count_response(self._route_label, 0)
        self.log_request(0)

    # ---- dispatch -------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        te = self.headers.get("Transfer-Encoding")
        self._body_state = "unread" if te is not None or self.headers.get("Content-Length") else "read"
        self._route_label, self._extra_headers, self._after_fault = None, [], None
        try:
            self._route()
        except _ClientGone:
            self.close_connection = True
        except _HttpError as exc:
            if exc.close:
                self.close_connection = True
            self._fail(exc.status, exc.message, code=exc.code)
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
        if path.startswith(("/events", "/meters")):
            self._route_api(path, query, method)
            return
        if path.startswith("/_local/static/"):
            handlers: dict[str, Callable[[str], None]] | None = {
                "GET": lambda _query: self._static(path[len("/_local/static/") :])
            }
        else:
            routes: dict[str, dict[str, Callable[[str], None]]] = {
                "/": {"GET": lambda _query: self._static("index.html")},
                "/_local/faults": {
                    "GET": self._local_faults,
                    "POST": self._local_add_faults,
                    "DELETE": self._local_clear_faults,
                },
                "/_local/rate-limit": {
                    "GET": self._local_rate_limit,
                    "PUT": self._local_set_rate_limit,
                    "DELETE": self._local_clear_rate_limit,
                },
                "/_local/events": {"GET": self._local_events, "DELETE": self._local_clear},
                "/_local/requests": {"GET": self._local_requests},
                "/_local/stats": {"GET": self._local_stats},
                "/_local/usage": {"GET": self._local_usage},
                "/_local/dashboard": {"GET": self._local_dashboard},
            }
            handlers = routes.get(path)
        if handlers is None:
            self._fail(404, f"no route for {path[:200]}")
            return
        handler = handlers.get(method)
        if handler is None:
            self._fail(405, f"{self.command} is not allowed on {path[:200]}", [("Allow", ", ".join(handlers))])
            return
        handler(query)

    def _resolve_api(self, path: str) -> tuple[str, dict[str, Callable[[str], None]]] | None:
        """The route template and the handlers by method of a Dodo API path, or None (404)."""
        if path == "/events/ingest":
            return "/events/ingest", {"POST": lambda _query: self._ingest()}
        if path == "/events":
            return "/events", {"GET": self._list_events}
        if path == "/meters":
            return "/meters", {"GET": self._list_meters, "POST": lambda _query: self._create_meter()}
        if path.startswith("/events/") and len(path) > 8 and "/" not in path[8:]:
            event_id = unquote(path[8:])
            return "/events/{event_id}", {"GET": lambda _query: self._get_event(event_id)}
        if not path.startswith("/meters/"):
            return None
        raw_id, _, action = path[8:].partition("/")
        meter_id = unquote(raw_id)
        if not meter_id:
            return None
        if action == "unarchive":
            return "/meters/{id}/unarchive", {"POST": lambda _query: self._set_archived(meter_id, False)}
        if action:
            return None
        return "/meters/{id}", {
            "GET": lambda _query: self._get_meter(meter_id),
            "PATCH": lambda _query: self._update_meter(meter_id),
            "DELETE": lambda _query: self._set_archived(meter_id, True),
        }

    def _route_api(self, path: str, query: str, method: str) -> None:
        resolved = self._resolve_api(path)
        if resolved is None:
            self._fail(404, f"no route for {path[:200]}")
            return
        template, handlers = resolved
        if method in handlers:
            self._route_label = f"{method} {template}"
        if (method, template) == ("POST", "/events/ingest"):
            self._ingest()  # faults, auth and the budget in the order that route documents
            return
        fault = self.app.faults.take(method, path) if method in handlers else None
        if fault is not None:
            if fault.delay > 0 and self.app.stopping.wait(fault.delay):
                self._drop()
                return
            if fault.misbehaves and not fault.process:
                self._drain()
                if fault.drop_connection:
                    self._drop()
                else:
                    status, payload = self._fault_answer(fault, None)
                    self._write(status, payload, fault.headers())
                return
            if fault.misbehaves:
                self._after_fault = fault
            else:
                self._extra_headers.extend(fault.headers())
        if not self._authorized():
            self._fail(401, "missing or invalid API key (expected 'Authorization: Bearer <key>')")
            return
        handler = handlers.get(method)
        if handler is None:
            self._fail(405, f"{self.command} is not allowed on {path[:200]}", [("Allow", ", ".join(handlers))])
            return
        if self._over_budget():
            self._fail(429, self._budget_message())
            return
        handler(query)

    # ---- Dodo routes ----------------------------------------------------------------------------

    def _ingest(self) -> None:
        app = self.app
        fault = app.faults.take("POST", "/events/ingest")
        authorized = self._authorized()
        misbehaves = fault is not None and fault.misbehaves
        if fault is not None and not misbehaves:
            self._extra_headers.extend(fault.headers())
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
        status, payload = self._fault_answer(fault, {"ingested_count": count})
        self.app.record(RequestRecord(status, count, ids, size, authorized))
        self._respond(status, payload, fault.headers())

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
        if self._over_budget():
            count, ids = _peek_events(_loads_or_none(raw))
            return 429, _error_body(429, self._budget_message()), count, ids, len(raw)
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

        page_size = self._int_param("page_size", one("page_size"), _DEFAULT_PAGE_SIZE)
        page_number = self._int_param("page_number", one("page_number"), 0)
        bounds = self._time_params(one)
        event_name = one("event_name")
        meter_id = one("meter_id")
        where: Callable[[dict[str, Any]], bool] | None = None
        if meter_id is not None:
            meter = self.app.store.get_meter(meter_id)
            if meter is None:
                self._fail(404, f"meter {meter_id[:200]!r} not found")
                return
            if event_name is not None and event_name != meter["event_name"]:
                message = f"event_name: {event_name[:64]!r} is not the event name of meter {meter_id[:64]!r}"
                raise _HttpError(422, message, code=INVALID_QUERY_PARAMS)
            event_name = meter["event_name"]
            where = lambda event: event_matches(meter, event)  # noqa: E731
        items = self.app.store.query(
            customer_id=one("customer_id"),
            event_name=event_name,
            start_us=bounds[0],
            end_us=bounds[1],
            limit=page_size,
            offset=page_size * page_number,
            where=where,
        )
        self._respond(200, {"items": items})

    @staticmethod
    def _time_params(one: Callable[[str], str | None]) -> tuple[int | None, int | None]:
        """``start`` and ``end`` as epoch microseconds (400 INVALID_QUERY_PARAMS when not RFC 3339)."""
        bounds: list[int | None] = []
        for name in ("start", "end"):
            value = one(name)
            if value is None:
                bounds.append(None)
                continue
            try:
                # an unescaped "+" in a query string arrives as a space
                bounds.append(parse_timestamp(value.replace(" ", "+")))
            except ValueError as exc:
                raise _HttpError(400, f"{name}: {value[:64]!r} is {exc}", code=INVALID_QUERY_PARAMS) from None
        return bounds[0], bounds[1]

    @staticmethod
    def _int_param(name: str, value: str | None, default: int, maximum: int = _INT32_MAX) -> int:
        if value is None:
            return default
        if not value.isascii() or not value.isdigit() or int(value) > maximum:
            message = f"{name}: must be an integer between 0 and {maximum}, got {value[:32]!r}"
            raise _HttpError(422, message, code=INVALID_QUERY_PARAMS)
        return int(value)

    def _json_body(self) -> Any:
        """The request body as strict JSON (422 INVALID_REQUEST_BODY when it is not)."""
        try:
            return parse_body(self._read_body())
        except RuleViolation as exc:
            raise _HttpError(exc.status, exc.message, code=exc.code) from None

    # ---- meters ---------------------------------------------------------------------------------

    def _list_meters(self, query: str) -> None:
        params = parse_qs(query, keep_blank_values=True)

        def one(name: str) -> str | None:
            values = params.get(name)
            return values[-1] if values else None

        page_size = self._int_param("page_size", one("page_size"), _DEFAULT_PAGE_SIZE, _MAX_METER_PAGE_SIZE)
        page_number = self._int_param("page_number", one("page_number"), 0)
        archived = one("archived")
        if archived not in (None, "true", "false"):
            raise _HttpError(422, f"archived: must be true or false, got {archived[:32]!r}", code=INVALID_QUERY_PARAMS)
        meters = self.app.store.meters(archived=archived == "true", limit=page_size, offset=page_size * page_number)
        self._respond(200, {"items": [_public_meter(meter) for meter in meters]})

    def _create_meter(self) -> None:
        try:
            fields = parse_meter_create(self._json_body())
        except RuleViolation as exc:
            raise _HttpError(exc.status, exc.message, code=exc.code) from None
        self._respond(201, _public_meter(self.app.create_meter(fields)))

    def _get_meter(self, meter_id: str) -> None:
        meter = self.app.store.get_meter(meter_id)
        if meter is None:
            self._fail(404, f"meter {meter_id[:200]!r} not found")
        else:
            self._respond(200, _public_meter(meter))

    def _update_meter(self, meter_id: str) -> None:
        try:
            changes = parse_meter_update(self._json_body())
        except RuleViolation as exc:
            raise _HttpError(exc.status, exc.message, code=exc.code) from None
        changes["updated_at"] = format_timestamp(int(self.app.clock() * 1_000_000))
        meter = self.app.store.update_meter(meter_id, changes)
        if meter is None:
            self._fail(404, f"meter {meter_id[:200]!r} not found")
        else:
            self._respond(200, _public_meter(meter))

    def _set_archived(self, meter_id: str, archived: bool) -> None:
        changes = {"archived": archived, "updated_at": format_timestamp(int(self.app.clock() * 1_000_000))}
        if self.app.store.update_meter(meter_id, changes) is None:
            self._fail(404, f"meter {meter_id[:200]!r} not found")
        elif archived:
            self._respond(204, None)
        else:
            self._respond(200, None)

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

    def _local_faults(self, query: str) -> None:
        self._respond(200, {"items": self.app.faults.snapshot()})

    def _local_rate_limit(self, query: str) -> None:
        limiter = self.app.rate_limiter
        self._respond(200, {"rate_limit": self.app.rate_limit, "refused": 0 if limiter is None else limiter.refused})

    def _local_set_rate_limit(self, query: str) -> None:
        raw = self._read_body()
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or set(data) != {"rate_limit"}:
                raise ValueError('expected {"rate_limit": "100/minute"} (or null to switch it off)')
            limit = data["rate_limit"]
            if limit is not None and not isinstance(limit, str):
                raise ValueError("rate_limit must be a string such as '100/minute', or null")
            self.app.set_rate_limit(limit)
        except (ValueError, RecursionError) as exc:
            raise _HttpError(422, f"invalid rate limit: {exc}") from None
        self._local_rate_limit(query)

    def _local_clear_rate_limit(self, query: str) -> None:
        self.app.set_rate_limit(None)
        self._local_rate_limit(query)

    def _local_usage(self, query: str) -> None:
        params = parse_qs(query)

        def one(name: str) -> str | None:
            values = params.get(name)
            return values[-1] if values else None

        start_us, end_us = self._time_params(one)
        meter_id = one("meter_id")
        try:
            items = self.app.usage_between(meter_id, start_us, end_us, customer_id=one("customer_id"))
        except KeyError:
            self._fail(404, f"meter {str(meter_id)[:200]!r} not found")
            return
        bounds = {
            "start": None if start_us is None else format_timestamp(start_us),
            "end": None if end_us is None else format_timestamp(end_us),
        }
        self._respond(200, {**bounds, "items": items})

    def _local_dashboard(self, query: str) -> None:
        params = parse_qs(query)

        def one(name: str) -> str:
            values = params.get(name)
            return values[-1] if values else ""

        range_name = one("range") or "all"
        if range_name not in RANGES:
            raise _HttpError(422, f"range: must be one of {', '.join(RANGES)}", code=INVALID_QUERY_PARAMS)
        filters = {name: one(name) for name in ("customer_id", "event_name", "endpoint", "status") if one(name)}
        self._respond(200, self.app.dashboard(range_name, filters))

    def _static(self, name: str) -> None:
        found = static_file(name)
        if found is None:
            self._fail(404, f"no route for /_local/static/{name[:200]}")
            return
        self._drain()
        body, content_type = found
        self._write_raw(200, body, content_type, [("Cache-Control", "no-cache")])

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
    ``GET /events``, ``GET /events/{id}`` and Dodo's ``/meters`` API, stores
    events and meters in SQLite, serves a dashboard at ``/`` and can be
    scripted to misbehave with :class:`~dodo_ingest.localserver.Fault`.

    ``api_key=None`` accepts any non-empty bearer key. Timestamps older than
    ``max_event_age`` or more than ``max_future_skew`` seconds ahead are
    rejected (400); bodies above ``max_body_bytes`` get 413. ``verbose`` prints
    one line per request to stderr. ``request_log_size`` bounds
    :attr:`requests` (oldest records are forgotten). ``clock`` returns the
    current time in seconds since the epoch. ``rate_limit`` (``"100/minute"``,
    ``"100/minute,10/second"``; None = unlimited) is Dodo's per-key request
    budget: requests over it get 429 with ``Retry-After``.
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
        rate_limit: str | Sequence[RateLimit] | None = None,
    ) -> None:
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")
        self.rate_limiter: RateLimiter | None = None
        self.set_rate_limit(rate_limit)
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
        self._responses: Counter[tuple[str, int]] = Counter()
        self._records_lock = threading.Lock()
        self._index = UsageIndex()
        self._dashboard_cache: tuple[Any, float, dict[str, Any]] | None = None  # (key, computed at, payload)
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
            self._index = UsageIndex()
            self._dashboard_cache = None
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
        """Forget every stored event, the request log and the response counts (faults and meters stay)."""
        self.store.clear()
        with self._records_lock:
            self._records.clear()
            self._request_total = 0
            self._responses.clear()

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

    def count_response(self, route: str, status: int) -> None:
        """Count one answer of a Dodo route (``"POST /events/ingest"``; status 0 = connection dropped)."""
        with self._records_lock:
            self._responses[(route, status)] += 1

    def response_counts(self) -> dict[str, dict[str, int]]:
        """Answers of Dodo's routes so far, ``{"POST /events/ingest": {"200": 12, "429": 3}}`` (0 = dropped)."""
        out: dict[str, dict[str, int]] = {}
        with self._records_lock:
            for (route, status), count in sorted(self._responses.items()):
                out.setdefault(route, {})[str(status)] = count
        return out

    # ---- request budget -------------------------------------------------------------------------

    @property
    def rate_limit(self) -> str | None:
        """The request budget per API key (``"100/minute"``), or None when unlimited."""
        return None if self.rate_limiter is None else str(self.rate_limiter)

    def set_rate_limit(self, rate_limit: str | Sequence[RateLimit] | None) -> None:
        """Set (or with None remove) the per-key request budget; a new budget starts empty.

        Raises ValueError for an invalid budget, e.g. ``"100/fortnight"``.
        """
        if rate_limit is None or rate_limit == "":
            self.rate_limiter = None
            return
        limits = parse_rate_limits(rate_limit) if isinstance(rate_limit, str) else tuple(rate_limit)
        self.rate_limiter = RateLimiter(limits)

    # ---- meters and usage -----------------------------------------------------------------------

    def create_meter(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Store a meter from validated ``POST /meters`` fields (see :func:`.meters.parse_meter_create`).

        Returns it in Dodo's ``MeterResponse`` form, with a new ``mtr_...`` id.
        """
        now = format_timestamp(int(self.clock() * 1_000_000))
        meter = {
            "id": "mtr_" + secrets.token_hex(8),
            "business_id": BUSINESS_ID,
            **fields,
            "created_at": now,
            "updated_at": now,
        }
        self.store.add_meter(meter)
        return meter

    def meters(self, archived: bool | None = False) -> list[dict[str, Any]]:
        """Stored meters in creation order (each with an ``archived`` flag): active (default), archived or all."""
        return self.store.meters(archived=archived)

    def usage_between(
        self,
        meter_id: str | None = None,
        start_us: int | None = None,
        end_us: int | None = None,
        *,
        customer_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Each meter's value per customer over ``[start_us, end_us)``: what Dodo would bill for those events.

        One meter (KeyError if unknown) or every active one. Each item is ``{"meter": {...}, "total",
        "customers": [{"customer_id", "value", "events"}]}``, largest value first; reads the whole store.
        """
        if meter_id is not None:
            meter = self.store.get_meter(meter_id)
            if meter is None:
                raise KeyError(meter_id)
            meters = [meter]
        else:
            meters = self.store.meters(archived=False)
        items = []
        for meter in meters:
            events = self.store.scan(
                event_name=meter["event_name"], customer_id=customer_id, start_us=start_us, end_us=end_us
            )
            usage = usage_by_customer(meter, events).to_dict()
            items.append({"meter": _public_meter(meter), "total": usage["total"], "customers": usage["customers"]})
        return items

    def dashboard(self, range_name: str = "all", filters: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The dashboard's data (``GET /_local/dashboard``): see :func:`.dashboard.build_dashboard`."""
        events = self._index.refresh(self.store)
        meters = self.store.meters(archived=False)
        # An open dashboard on an idle server costs nothing: the same events, meters and view give the same
        # answer (a time range moves with the clock, so it is recomputed at most once a second).
        key = (self._index.position, json.dumps(meters, sort_keys=True), range_name, sorted((filters or {}).items()))
        cached, now = self._dashboard_cache, time.monotonic()
        if cached is not None and cached[0] == key and (range_name == "all" or now - cached[1] < 1.0):
            payload = dict(cached[2])
        else:
            payload = build_dashboard(
                events,
                meters,
                now_us=int(self.clock() * 1_000_000),
                range_name=range_name,
                filters=filters,
                latest_limit=25,
            )
            self._dashboard_cache = (key, now, payload)
            payload = dict(payload)
        payload["server"] = {
            "url": self._url,
            "event_count": self.event_count(),
            "requests": self.stats()["requests"],
            "responses": self.response_counts(),
            "rate_limit": self.rate_limit,
            "faults": self.faults.snapshot(),
            "indexed_events": len(events),
            "index_truncated": self._index.truncated,
        }
        return payload

    def store_events(self, events: list[NormalizedEvent], body: bytes | None = None) -> int:
        """Insert normalized events (from ``body``), ignoring ids already stored; return how many were new."""
        return self.store.insert(events, body)


# ---- command line -------------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dodo-ingest serve",
        description="Run a local Dodo-compatible usage server (POST /events/ingest, GET /events, /meters) "
        "with a dashboard at /.",
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
    parser.add_argument(
        "--rate-limit",
        default=None,
        metavar="N/PERIOD",
        help="Dodo's per-key request budget, e.g. 100/minute or 100/minute,10/second: requests over it get "
        "429 with Retry-After (default: unlimited)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="JSON",
        help='queue a scripted fault, e.g. \'{"status": 503, "retry_after": "2", "repeat": 3}\' '
        "(fields as for POST /_local/faults; repeatable)",
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=None,
        metavar="P",
        help="answer this fraction (0-1) of all Dodo API requests with --fault-status and Retry-After: 1",
    )
    parser.add_argument(
        "--fault-status", type=int, default=503, help="status of the --fault-rate failures (default 503)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print one line per request")
    return parser


def _faults_from_args(args: argparse.Namespace) -> list[Fault]:
    """The faults the command line asks for (ValueError with the offending option)."""
    faults: list[Fault] = []
    for text in args.fault:
        try:
            data = json.loads(text)
            items = data if isinstance(data, list) else [data]
            faults.extend(Fault.from_dict(item) for item in items)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"--fault {text!r}: {exc}") from None
    if args.fault_rate is not None:
        try:
            faults.append(
                Fault(
                    status=args.fault_status,
                    retry_after="1",
                    route="*",
                    probability=args.fault_rate,
                    repeat=None,
                )
            )
        except ValueError as exc:
            raise ValueError(f"--fault-rate / --fault-status: {exc}") from None
    return faults


def main(argv: list[str] | None = None) -> int:
    """``dodo-ingest serve``: serve until Ctrl-C or SIGTERM, then exit 0 (1 if the server cannot start)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    api_key = args.api_key if args.api_key is not None else os.environ.get("DODO_LOCAL_API_KEY")
    try:
        faults = _faults_from_args(args)
        if args.rate_limit is not None:
            parse_rate_limits(args.rate_limit)
    except ValueError as exc:
        parser.error(str(exc))
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
            rate_limit=args.rate_limit,
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

    server.add_faults(*faults)
    auth = "API key required" if api_key else "no API key configured: any non-empty bearer key is accepted"
    budget = f"request budget {server.rate_limit} per key" if server.rate_limit else "no request budget"
    queued = f"; {len(faults)} fault(s) queued" if faults else ""
    print(
        f"Local Dodo events server on {server.url} (db: {args.db}; {auth}; {budget}{queued}). "
        f"Point the SDK at it: export DODO_PAYMENTS_BASE_URL={server.url}\n"
        f"Dashboard: {server.url}/  (open it in a browser)",
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
