"""Living within Dodo's per-key request budget: a token bucket per sender that adapts to 429s.

Dodo documents about 100 requests per minute per API key, shared by every process that uses the key. Each
sender (the flush thread of a batcher, or the host's one spool sender) paces its own requests with a
:class:`RequestPacer`:

* **Token bucket.** Tokens accrue at ``rate`` per minute (``max_requests_per_minute`` to begin with) up to
  :data:`BURST`; a new batch waits until a token is there. Every request spends one, retries and the halves of a
  split request included, and those never wait for one: the bucket goes into debt, so the *next* batch waits
  longer. While a batch waits, events keep arriving, so when the budget binds, batches grow toward 1000
  events instead of requests growing in number.
* **AIMD on 429.** A 429 halves the rate (at most once per :data:`DECREASE_HOLDOFF` seconds: the 429s of one
  burst are one signal, not many) and empties the bucket; every accepted request gives back
  :data:`INCREASE_PER_SUCCESS` requests per minute, up to the configured rate. Processes that share a key
  thereby converge on shares of the budget without a storm (the retry waits themselves are jittered).

Synchronous sends (``track_api_call``, ``sync_mode``) are not paced: a view never waits for budget.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dodo_ingest.transport import Answer, Transport

#: Requests a sender may make at once after a quiet spell (Dodo allows bursts of about 10 per second per key).
BURST = 5.0
#: The rate never drops below this many requests per minute, however many 429s come back.
MIN_RATE = 1.0
#: Requests per minute given back by each accepted request (additive increase).
INCREASE_PER_SUCCESS = 1.0
#: Seconds after a decrease during which further 429s do not decrease the rate again.
DECREASE_HOLDOFF = 2.0


class RequestPacer:
    """A token bucket of requests with additive-increase / multiplicative-decrease of its rate. Thread-safe."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling = float(per_minute)
        self._rate = self.ceiling
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = min(BURST, max(1.0, self.ceiling / 60.0))
        self._updated = clock()
        self._last_decrease = float("-inf")
        self.decreases = 0

    def __repr__(self) -> str:
        return f"<RequestPacer {self.rate:.1f}/minute of {self.ceiling:g}>"

    @property
    def rate(self) -> float:
        """The current pace, in requests per minute."""
        with self._lock:
            return self._rate

    def _refill(self, now: float) -> None:
        self._tokens = min(max(BURST, 1.0), self._tokens + (now - self._updated) * self._rate / 60.0)
        self._updated = now

    def delay(self) -> float:
        """Seconds until the next batch may be sent (0.0: now)."""
        with self._lock:
            self._refill(self._clock())
            if self._tokens >= 1.0:
                return 0.0
            return (1.0 - self._tokens) * 60.0 / self._rate

    def spend(self) -> None:
        """One request is being made (the bucket may go into debt: the next batch waits longer)."""
        with self._lock:
            self._refill(self._clock())
            self._tokens -= 1.0

    def observe(self, status: int | None) -> None:
        """Adapt to an answer: 429 decreases the rate, 2xx increases it, anything else changes nothing."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            if status == 429:
                if now - self._last_decrease >= DECREASE_HOLDOFF:
                    self._rate = max(MIN_RATE, self._rate / 2.0)
                    self._last_decrease = now
                    self.decreases += 1
                self._tokens = min(self._tokens, 0.0)
            elif status is not None and 200 <= status < 300:
                self._rate = min(self.ceiling, self._rate + INCREASE_PER_SUCCESS)


class PacedTransport:
    """A :class:`Transport` that tells its pacer about every request and answer (it never waits itself: the
    sender waits for :meth:`RequestPacer.delay` before it takes a batch, so that the batch can grow)."""

    def __init__(self, transport: Transport, pacer: RequestPacer) -> None:
        self.transport = transport
        self.pacer = pacer

    def __repr__(self) -> str:
        return f"<PacedTransport {self.transport!r} {self.pacer!r}>"

    def post(self, body: bytes, timeout: float | None = None) -> Answer:
        """Send one body through the wrapped transport, counting it against the budget."""
        self.pacer.spend()
        answer = self.transport.post(body, timeout)
        self.pacer.observe(answer.status)
        return answer

    def close(self) -> None:
        """Close the wrapped transport."""
        self.transport.close()
