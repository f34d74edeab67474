"""A small local HTTP server that answers like the OpenAI and Anthropic APIs, for the LLM wrapper's tests.

The real ``openai`` and ``anthropic`` clients are pointed at it with ``base_url``; nothing leaves loopback.
It serves ``POST /v1/chat/completions`` (plain and streamed, with the final usage chunk when
``stream_options.include_usage`` asks), ``POST /v1/responses`` (plain and streamed), ``POST /v1/embeddings``,
``GET /v1/models`` and Anthropic's ``POST /v1/messages`` (plain and streamed). Token counts are deterministic:
input = the number of words in the request's text, output = the words of :data:`REPLY`.

Models with special meaning: ``error-500`` / ``error-400`` answer that status; ``cut-off`` streams two events
and then drops the connection.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLY = "Hello from the fake model"
OUTPUT_TOKENS = len(REPLY.split())
CREATED = 1_700_000_000


def count_words(value: Any) -> int:
    """Words in every string of a request body's text fields (messages, input, prompt, system)."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(count_words(v) for v in value)
    if isinstance(value, dict):
        return sum(count_words(v) for k, v in value.items() if k in ("content", "text", "input", "messages", "system"))
    return 0


def input_tokens(body: dict[str, Any]) -> int:
    """The input token count the server reports for a request body."""
    return count_words({k: body[k] for k in ("messages", "input", "system") if k in body})


class FakeLLMServer:
    """The server, in a daemon thread on an ephemeral loopback port. ``requests`` lists ``(path, body)``."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (Anthropic's base URL; OpenAI's is this + ``/v1``)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def record(self, path: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append((path, body))

    def __enter__(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_owner: FakeLLMServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # --- plumbing ---------------------------------------------------------------------------------------------

    def _json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", "req_fake")
        self.end_headers()
        self.wfile.write(data)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _sse(self, data: Any, event: str | None = None) -> None:
        text = (
            f"event: {event}\n" if event else ""
        ) + f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
        raw = text.encode()
        self.wfile.write(f"{len(raw):x}\r\n".encode() + raw + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _cut(self) -> None:
        self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(2)

    # --- routes -----------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._json(
                200, {"object": "list", "data": [{"id": "gpt-fake", "object": "model", "created": 0, "owned_by": "me"}]}
            )
        else:
            self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server_owner.record(self.path, body)
        model = body.get("model", "")
        if model in ("error-500", "error-400"):
            status = int(model[-3:])
            self._json(status, {"type": "error", "error": {"message": f"fake {status}", "type": "api_error"}})
            return
        route = {
            "/v1/chat/completions": self._chat,
            "/v1/responses": self._responses,
            "/v1/embeddings": self._embeddings,
            "/v1/messages": self._messages,
        }.get(self.path.split("?")[0])
        if route is None:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
        else:
            route(body, model)

    def _chat(self, body: dict[str, Any], model: str) -> None:
        given = input_tokens(body)
        usage = {"prompt_tokens": given, "completion_tokens": OUTPUT_TOKENS, "total_tokens": given + OUTPUT_TOKENS}
        if not body.get("stream"):
            self._json(
                200,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": CREATED,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": REPLY, "refusal": None},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": usage,
                },
            )
            return
        with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self._start_stream()

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            payload: dict[str, Any] = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": CREATED,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }
            if with_usage:
                payload["usage"] = None
            return payload

        words = REPLY.split()
        self._sse(chunk({"role": "assistant", "content": ""}, None))
        for i, word in enumerate(words):
            self._sse(chunk({"content": word if i == 0 else " " + word}, None))
            if model == "cut-off" and i == 1:
                self._cut()
                return
        self._sse(chunk({}, "stop"))
        if with_usage:
            self._sse(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": CREATED,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
        self._sse("[DONE]")
        self._end_stream()

    def _embeddings(self, body: dict[str, Any], model: str) -> None:
        given = count_words(body.get("input"))
        self._json(
            200,
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                "model": model,
                "usage": {"prompt_tokens": given, "total_tokens": given},
            },
        )

    def _response(self, model: str, given: int, done: bool) -> dict[str, Any]:
        message = {
            "type": "message",
            "id": "msg_fake",
            "status": "completed" if done else "in_progress",
            "role": "assistant",
            "content": [{"type": "output_text", "text": REPLY, "annotations": []}] if done else [],
        }
        return {
            "id": "resp_fake",
            "object": "response",
            "created_at": CREATED,
            "model": model,
            "status": "completed" if done else "in_progress",
            "output": [message] if done else [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": given,
                "output_tokens": OUTPUT_TOKENS,
                "total_tokens": given + OUTPUT_TOKENS,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            }
            if done
            else None,
        }

    def _responses(self, body: dict[str, Any], model: str) -> None:
        given = input_tokens(body)
        if not body.get("stream"):
            self._json(200, self._response(model, given, True))
            return
        self._start_stream()
        seq = iter(range(1000))
        item = {"type": "message", "id": "msg_fake", "status": "in_progress", "role": "assistant", "content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": self._response(model, given, False)},
            {"type": "response.output_item.added", "output_index": 0, "item": item},
            {
                "type": "response.content_part.added",
                "item_id": "msg_fake",
                "output_index": 0,
                "content_index": 0,
                "part": part,
            },
        ]
        for i, word in enumerate(REPLY.split()):
            events.append(
                {
                    "type": "response.output_text.delta",
                    "item_id": "msg_fake",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": word if i == 0 else " " + word,
                    "logprobs": [],
                }
            )
        done = self._response(model, given, True)
        events += [
            {
                "type": "response.output_text.done",
                "item_id": "msg_fake",
                "output_index": 0,
                "content_index": 0,
                "text": REPLY,
                "logprobs": [],
            },
            {
                "type": "response.content_part.done",
                "item_id": "msg_fake",
                "output_index": 0,
                "content_index": 0,
                "part": done["output"][0]["content"][0],
            },
            {"type": "response.output_item.done", "output_index": 0, "item": done["output"][0]},
            {"type": "response.completed", "response": done},
        ]
        for event in events:
            event["sequence_number"] = next(seq)
            self._sse(event, event["type"])
        self._end_stream()

    def _messages(self, body: dict[str, Any], model: str) -> None:
        given = input_tokens(body)
        if not body.get("stream"):
            self._json(
                200,
                {
                    "id": "msg_fake",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": REPLY}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": given,
                        "output_tokens": OUTPUT_TOKENS,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                    },
                },
            )
            return
        self._start_stream()
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": given, "output_tokens": 1},
            },
        }
        self._sse(start, "message_start")
        self._sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start",
        )
        self._sse({"type": "ping"}, "ping")
        for i, word in enumerate(REPLY.split()):
            delta = {"type": "text_delta", "text": word if i == 0 else " " + word}
            self._sse({"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta")
            if model == "cut-off" and i == 1:
                self._cut()
                return
        self._sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        self._sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": OUTPUT_TOKENS},
            },
            "message_delta",
        )
        self._sse({"type": "message_stop"}, "message_stop")
        self._end_stream()
