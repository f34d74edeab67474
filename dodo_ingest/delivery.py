"""The delivery policy: what to do with each answer from Dodo, shared by the flush thread and synchronous sends.

* 2xx: sent.
* network error, timeout, 408, 409, 429, 5xx (and ``x-should-retry: true``): retried with the same event ids.
  The wait is our own backoff (0.5 s x 2^n capped at 30 s, "equal jitter": between half and all of it), or the
  server's ``Retry-After`` / ``retry-after-ms`` plus up to 10 % jitter, but **never less than our backoff**: a
  ``Retry-After: 0`` (or a date in the past) cannot turn into a tight loop. Retries go on until the delivery's
  budget (``max_retry_time`` in the background, ``sync_timeout`` for a synchronous send) is spent: then
  ``retries_exhausted``.
* 400 / 422 for a multi-event request: split in halves, both sent. When both halves fail the same way as the
  whole, the request itself is bad (not one event in it): all of it is dropped as ``rejected`` after three
  requests, instead of 2n-1. Otherwise the failing half is split again, so one bad event costs about
  2 log2(n) requests. 413: split until the pieces fit; a single event: ``rejected`` (``too_large`` for 413).
* 401 / 403: never retried; the request and everything still waiting in this delivery are dropped as
  ``unauthorized`` and one loud error names the likely cause.
* A TLS certificate failure is retried like a network error but logged as the configuration problem it is.
* Before every attempt, events Dodo would reject as older than its one-hour window are dropped as ``expired``.

Every wait goes through the owner's :class:`Waiter`. ``flush()`` may cut our own backoff short but not a wait
the server asked for; near a shutdown deadline the waiter answers "last chance": one more attempt is made at
once, and if it fails too the events are dropped as ``shutdown``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from dodo_ingest.config import Config
from dodo_ingest.events import MAX_EVENT_AGE, encode_batch
from dodo_ingest.stats import Counters, RateLimitedLog
from dodo_ingest.transport import Answer, Transport

logger = logging.getLogger("dodo_ingest.delivery")

BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0


class KeyRejected(Exception):
    """Dodo answered 401/403 to a sender whose events are kept elsewhere (the spool's, a forwarder's): keep them,
    stand down."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.message)
        self.answer = answer


class KeyCheck:
    """A transport that raises :class:`KeyRejected` for 401/403 before the delivery policy would drop the events:
    for a sender whose events wait on disk or in Redis, a rejected key is a configuration problem, not a property
    of the events."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def post(self, body: bytes, timeout: float | None = None) -> Answer:
        """Send; raise :class:`KeyRejected` for 401/403."""
        answer = self.transport.post(body, timeout)
        if answer.status in (401, 403):
            raise KeyRejected(answer)
        return answer

    def close(self) -> None:
        """Close the wrapped transport."""
        self.transport.close()


class Pending(NamedTuple):
    """An event ready to send: serialized once, with its creation time and queue sequence number."""

    seq: int
    json: str
    created: float


@dataclass(frozen=True)
class DeliveryFailure:
    """What ``on_error`` receives when a request to Dodo fails."""

    status: int | None
    message: str
    event_count: int
    will_retry: bool


@dataclass(frozen=True)
class Dropped:
    """Events given up on, and why."""

    events: list[Pending]
    reason: str
    message: str


class Waiter(Protocol):
    """How a delivery waits between attempts (the flush thread's waits can be interrupted)."""

    def wait(self, seconds: float, mandated: bool) -> bool:
        """Wait up to ``seconds``; ``mandated``: the server asked for this wait (``flush()`` does not cut it).

        Returns False when no more waiting is possible (a deadline is near): the caller makes one last attempt.
        """
        ...  # pragma: no cover

    def time_left(self) -> float | None:
        """Seconds until the owner's hard deadline (a shutdown), or None."""
        ...  # pragma: no cover


class Budget:
    """A waiter with a deadline of its own, sleeping in the calling thread (synchronous sends, a drain without
    a flush thread). Nothing can interrupt it, so it is only used where a short deadline bounds it."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.deadline = clock() + seconds

    def wait(self, seconds: float, mandated: bool) -> bool:
        left = self.deadline - self.clock()
        if seconds >= left:
            return False
        time.sleep(seconds)
        return True

    def time_left(self) -> float | None:
        return max(0.0, self.deadline - self.clock())


def backoff(attempt: int) -> float:
    """Our own wait before retry number ``attempt + 1``: uniform in [c/2, c], c = min(30, 0.5 x 2^attempt)."""
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * (2 ** min(attempt, 16)))
    return random.uniform(ceiling / 2, ceiling)


def retry_delay(attempt: int, retry_after: float | None) -> tuple[float, bool]:
    """``(seconds, mandated)``: the server's ``Retry-After`` (with jitter) when it asks for longer than our own
    backoff, else the backoff. Never less than the backoff, whatever the server said."""
    floor = backoff(attempt)
    if retry_after is None or retry_after <= floor:
        return floor, False
    return retry_after + random.uniform(0.0, min(1.0, retry_after * 0.1)), True


class Deliverer:
    """Delivers lists of :class:`Pending` events through a :class:`Transport` with the policy above."""

    def __init__(
        self,
        config: Config,
        transport: Transport,
        counters: Counters,
        waiter: Waiter,
        log: RateLimitedLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        budget: float | None = None,
        deadline_reason: str = "shutdown",
    ) -> None:
        self.config = config
        self.transport = transport
        self.counters = counters
        self.waiter = waiter
        self.log = log or RateLimitedLog(logger)
        self.clock = clock
        self.wall = wall
        self.budget = config.max_retry_time if budget is None else budget
        #: The drop reason when the waiter's deadline (a shutdown; a synchronous call's budget) ends the retries.
        self.deadline_reason = deadline_reason
        self._drops: list[Dropped] = []
        self._abort: tuple[str, str] | None = None
        self._last_chance = False
        self._started = 0.0

    def deliver(self, events: list[Pending]) -> list[Dropped]:
        """Send ``events`` (at most one request's worth); return what was dropped. Counts everything."""
        self._drops = []
        self._abort = None
        self._last_chance = False
        self._started = self.clock()
        rejection = self._send(events)
        if rejection is not None:
            self._resolve(events, rejection)
        return self._drops

    # --- one batch, with its retries -----------------------------------------------------------------------

    def _send(self, batch: list[Pending]) -> Answer | None:
        """Send ``batch`` until it is sent, dropped, or rejected as a request; return the rejection (400, 413,
        422) for the caller to split, else None (everything accounted for)."""
        attempt = 0
        while True:
            if self._abort is not None:
                self._drop(batch, *self._abort)
                return None
            batch = self._without_expired(batch)
            if not batch:
                return None
            left = self.waiter.time_left()
            answer = self.transport.post(
                encode_batch([p.json for p in batch]),
                timeout=None if left is None else max(0.1, min(left, self.config.request_timeout)),
            )
            self.counters.add("requests")
            if answer.ok:
                self.counters.add("sent", len(batch))
                return None
            retry = answer.retryable and not self._last_chance and self.clock() - self._started < self.budget
            self._report(answer, len(batch), retry)
            if answer.retryable:
                if not retry:
                    if self._last_chance:
                        self._abort = (
                            self.deadline_reason,
                            f"the deadline passed while Dodo answered {answer.message}",
                        )
                        self._drop(batch, *self._abort)
                    else:
                        self._drop(batch, "retries_exhausted", answer.message)
                    return None
                delay, mandated = retry_delay(attempt, answer.retry_after)
                attempt += 1
                if not self.waiter.wait(delay, mandated):
                    self._last_chance = True  # one more attempt now; if it fails, the rest is dropped
                self.counters.add("retried")
                continue
            if answer.status in (401, 403):
                self.log.log(
                    logging.ERROR,
                    "auth",
                    "Dodo rejected the API key (%s) at %s: check that the key belongs to %s "
                    "(test keys work only in test_mode, live keys only in live_mode) and has not "
                    "been revoked. Events are dropped as 'unauthorized' until this is fixed.",
                    answer.message,
                    self.config.host,
                    self.config.environment,
                )
                self._abort = ("unauthorized", answer.message)
                self._drop(batch, *self._abort)
                return None
            if answer.status in (400, 413, 422) and len(batch) > 1:
                return answer
            self._drop(batch, "too_large" if answer.status == 413 else "rejected", answer.message)
            return None

    def _resolve(self, batch: list[Pending], rejection: Answer) -> None:
        """``batch`` was rejected as a whole: find the bad events by halving, within a bound."""
        if len(batch) == 1:
            self._drop(batch, "too_large" if rejection.status == 413 else "rejected", rejection.message)
            return
        middle = len(batch) // 2
        halves = (batch[:middle], batch[middle:])
        answers = [self._send(half) for half in halves]
        if rejection.status != 413 and all(
            a is not None and (a.status, a.message) == (rejection.status, rejection.message) for a in answers
        ):
            self._drop(
                batch,
                "rejected",
                f"{rejection.message} (both halves of the request failed the same way: the request itself was "
                "rejected, not one event in it)",
            )
            return
        for half, answer in zip(halves, answers, strict=True):
            if answer is not None:
                self._resolve(half, answer)

    # --- accounting ------------------------------------------------------------------------------------------

    def _without_expired(self, batch: list[Pending]) -> list[Pending]:
        oldest_allowed = self.wall() - MAX_EVENT_AGE
        if all(p.created >= oldest_allowed for p in batch):
            return batch
        self._drop([p for p in batch if p.created < oldest_allowed], "expired", "older than Dodo's one-hour window")
        return [p for p in batch if p.created >= oldest_allowed]

    def _report(self, answer: Answer, count: int, will_retry: bool) -> None:
        message = answer.message or f"HTTP {answer.status}"
        self.counters.error(message)
        if answer.tls_error:
            self.log.log(
                logging.ERROR,
                "tls",
                "dodo-ingest cannot verify the TLS certificate of %s (%s). This is a configuration problem, not a "
                "network blip: a proxy that intercepts TLS, or a missing CA bundle (set REQUESTS_CA_BUNDLE). "
                "Events are kept and retried, but none will be delivered until it is fixed.",
                self.config.host,
                message,
            )
        elif answer.status not in (401, 403):
            self.log.log(
                logging.WARNING,
                f"fail-{answer.status}",
                "Dodo request with %d events failed (%s); %s",
                count,
                message,
                "will retry" if will_retry else "not retrying",
            )
        callback = self.config.on_error
        if callback is not None:
            call_safely(callback, DeliveryFailure(answer.status, message, count, will_retry))

    def _drop(self, events: list[Pending], reason: str, message: str) -> None:
        if not events:
            return
        self._drops.append(Dropped(events, reason, message))
        record_drop(self.counters, self.config, self.log, [json.loads(p.json) for p in events], reason, message)


def record_drop(
    counters: Counters, config: Config, log: RateLimitedLog, events: list[dict[str, Any]], reason: str, message: str
) -> None:
    """Count, log (rate-limited) and hand to ``on_drop`` events given up on."""
    counters.drop(reason, len(events))
    log.log(logging.WARNING, f"drop-{reason}", "dodo-ingest dropped %d events (%s): %s", len(events), reason, message)
    if config.on_drop is not None:
        call_safely(config.on_drop, events, reason)


def call_safely(callback: Callable[..., Any], *args: Any) -> None:
    """Call a user callback; an exception in it is logged, never propagated into the flush thread."""
    try:
        callback(*args)
    except Exception:
        logger.exception("dodo-ingest callback %r raised; ignored", callback)
