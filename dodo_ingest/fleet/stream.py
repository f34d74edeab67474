"""The layout of the shared buffer in Redis, its client, and the writer of the flush thread.

Keys, under the ``buffer_stream`` prefix (default ``dodo-ingest``):

- ``<prefix>:events``: the stream. Each entry holds one event's JSON, encoded by the flush thread (field ``e``,
  its event id fixed before Redis sees it) and its creation time (field ``t``, epoch seconds).
- consumer group ``forwarders`` on it: every forwarder reads through it.
- ``<prefix>:forwarder:<name>``: a forwarder's counters (a hash with a TTL), for ``dodo-ingest forward --status``.
- ``<prefix>:lease``: the embedded forwarder's election lock.
- the fleet budget's moving window, kept by the ``limits`` library under its own key for ``<prefix>``.

The flush thread writes one chunk (up to 1000 events) in one round trip: a script of four lines that runs ``XADD``
for each event (:data:`APPEND_SCRIPT`). Why a script and not a pipeline of ``XADD`` commands: the chunk is added
atomically (all of it or none, so a failed attempt leaves no partial chunk to duplicate), and it costs the flush
thread about 5 µs of CPU per event instead of 21 µs for redis-py's pipeline (``bench/bench_fleet.py write``,
1000-event chunks), CPU that would otherwise contend with the request threads for the GIL. Its client has short
socket timeouts, so an unreachable Redis costs the flush thread at most about a second per attempt, and never a
request thread anything.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from dodo_ingest.config import redact_url

GROUP = "forwarders"
#: Seconds the flush thread waits before it tries Redis again after a failed write.
RETRY_INTERVAL = 1.0
#: Socket timeouts of the flush thread's client (connect, and each command).
CONNECT_TIMEOUT = 0.5
COMMAND_TIMEOUT = 1.0
#: Adds ``(json, created)`` pairs given flat in ARGV to the stream KEYS[1], one entry each.
APPEND_SCRIPT = """
for i = 1, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '*', 'e', ARGV[i], 't', ARGV[i + 1])
end
return #ARGV / 2
"""


class Keys(NamedTuple):
    """The Redis keys of one buffer."""

    prefix: str

    @property
    def stream(self) -> str:
        """The stream of events."""
        return f"{self.prefix}:events"

    @property
    def lease(self) -> str:
        """The embedded forwarder's election lock."""
        return f"{self.prefix}:lease"

    def forwarder(self, name: str) -> str:
        """The counters hash of forwarder ``name``."""
        return f"{self.prefix}:forwarder:{name}"

    @property
    def forwarders(self) -> str:
        """A ``SCAN`` pattern matching every forwarder's counters."""
        return f"{self.prefix}:forwarder:*"


class BufferUnavailable(Exception):
    """Redis could not be reached or answered with an error (the message never contains the URL's password)."""


def connect(url: str, timeout: float = COMMAND_TIMEOUT, connect_timeout: float = CONNECT_TIMEOUT) -> redis.Redis:
    """A client for ``url`` with bounded socket timeouts and a single immediate retry (a connection that a Redis
    restart closed is replaced once, not retried with long backoffs)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
    )


def describe_error(exc: BaseException, url: str) -> str:
    """What went wrong with Redis at ``url``, safe to log (no password)."""
    text = str(exc)
    password = urlsplit(url).password
    if password:
        text = text.replace(password, "***")
    return f"{type(exc).__name__}: {text} (at {redact_url(url)})"


class StreamWriter:
    """Writes encoded events to the stream, one pipeline per chunk; used by one flush thread.

    After a failure, :meth:`retry_in` says how long to wait before the next attempt.
    """

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self._client: redis.Redis | None = None
        self._script: Any = None
        self._retry_at = 0.0

    def __repr__(self) -> str:
        return f"<StreamWriter {redact_url(self.url)} {self.keys.stream}>"

    def retry_in(self) -> float:
        """Seconds until the next write should be tried (0 or less: now)."""
        return self._retry_at - time.monotonic()

    def append(self, events: Sequence[tuple[str, float]]) -> None:
        """Add ``(json, created)`` events to the stream in one round trip, atomically; raise
        :class:`BufferUnavailable`.

        If Redis ran the script but its answer was lost (a timeout), the events are written again with the same
        ids: the forwarder sends them twice and Dodo ignores the second.
        """
        if not events:
            return
        try:
            if self._client is None:
                self._client = connect(self.url)
                self._script = self._client.register_script(APPEND_SCRIPT)
            args: list[str] = []
            for encoded, created in events:
                args += (encoded, repr(created))
            self._script(keys=[self.keys.stream], args=args)
        except (RedisError, OSError) as exc:
            self._retry_at = time.monotonic() + RETRY_INTERVAL
            self.close()
            raise BufferUnavailable(describe_error(exc, self.url)) from None
        self._retry_at = 0.0

    def close(self) -> None:
        """Drop the connection (the next write opens a new one)."""
        client, self._client, self._script = self._client, None, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError):  # closing a broken connection
                client.close()
