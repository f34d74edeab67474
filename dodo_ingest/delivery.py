"""The delivery policy: what to do with each answer from Dodo, shared by the flush thread and sync mode.

* 2xx: sent.
* network error, timeout, 408, 409, 429, 5xx: retried with the same event ids, after ``Retry-After``
  (plus up to 10 % jitter, so processes sharing a key do not return in lockstep) or else exponential backoff
  with full jitter (0.5 s x 2^n, capped at 30 s), until ``max_retry_time`` has passed: then
  ``retries_exhausted``.
* 400 / 422 / 413 for a multi-event request: split in halves, so the good events are delivered and the
  bad ones isolated; for a single event: dropped as ``rejected`` (``too_large`` for 413).
* 401 / 403: never retried; the request and everything still waiting in this delivery are dropped as
  ``unauthorized`` and one loud error names the likely cause.
* Before every attempt, events Dodo would reject as older than its one-hour window are dropped as ``expired``.

Every wait goes through the ``sleep`` callable given by the owner, which ``flush()`` and ``shutdown()``
can interrupt; when it answers False (the shutdown deadline is too close) the rest is dropped as ``shutdown``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from dodo_ingest.config import Config
from dodo_ingest.events import MAX_EVENT_AGE, encode_batch
from dodo_ingest.stats import Counters, RateLimitedLog
from dodo_ingest.transport import Answer, Transport

logger = logging.getLogger("dodo_ingest.delivery")

BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0


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


def backoff(attempt: int) -> float:
    """Full jitter: a uniform wait in [0, min(30, 0.5 x 2^attempt)] seconds."""
    return random.uniform(0.0, min(BACKOFF_CAP, BACKOFF_BASE * (2 ** min(attempt, 16))))


class Deliverer:
    """Delivers lists of :class:`Pending` events through a :class:`Transport` with the policy above."""

    def __init__(
        self,
        config: Config,
        transport: Transport,
        counters: Counters,
        sleep: Callable[[float], bool],
        log: RateLimitedLog | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.transport = transport
        self.counters = counters
        self.sleep = sleep
        self.log = log or RateLimitedLog(logger)
        self.clock = clock
        self.wall = wall

    def deliver(self, events: list[Pending]) -> list[Dropped]:
        """Send ``events`` (at most one request's worth); return what was dropped. Counts everything."""
        drops: list[Dropped] = []
        work: deque[list[Pending]] = deque([events])
        started = self.clock()
        attempt = 0
        while work:
            batch = self._without_expired(work.popleft(), drops)
            if not batch:
                continue
            answer = self.transport.post(encode_batch([p.json for p in batch]))
            self.counters.add("requests")
            if answer.ok:
                self.counters.add("sent", len(batch))
                attempt = 0
                continue
            will_retry = answer.retryable and self.clock() - started < self.config.max_retry_time
            self._report(answer, len(batch), will_retry)
            if will_retry:
                delay = (
                    backoff(attempt)
                    if answer.retry_after is None
                    else answer.retry_after + random.uniform(0.0, min(1.0, answer.retry_after * 0.1))
                )
                attempt += 1
                if not self.sleep(delay):
                    self._drop(drops, [batch, *work], "shutdown", "shut down while waiting to retry")
                    break
                self.counters.add("retried")
                work.appendleft(batch)
            elif answer.retryable:
                self._drop(drops, [batch], "retries_exhausted", answer.message)
            elif answer.status in (400, 413, 422) and len(batch) > 1:
                middle = len(batch) // 2
                work.appendleft(batch[middle:])
                work.appendleft(batch[:middle])
            elif answer.status in (401, 403):
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
                self._drop(drops, [batch, *work], "unauthorized", answer.message)
                break
            else:
                self._drop(drops, [batch], "too_large" if answer.status == 413 else "rejected", answer.message)
        return drops

    def _without_expired(self, batch: list[Pending], drops: list[Dropped]) -> list[Pending]:
        oldest_allowed = self.wall() - MAX_EVENT_AGE
        if all(p.created >= oldest_allowed for p in batch):
            return batch
        fresh = [p for p in batch if p.created >= oldest_allowed]
        expired = [p for p in batch if p.created < oldest_allowed]
        self._drop(drops, [expired], "expired", "older than Dodo's one-hour window")
        return fresh

    def _report(self, answer: Answer, count: int, will_retry: bool) -> None:
        message = answer.message or f"HTTP {answer.status}"
        self.counters.error(message)
        if answer.status not in (401, 403):
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

    def _drop(self, drops: list[Dropped], batches: list[list[Pending]], reason: str, message: str) -> None:
        events = [p for batch in batches for p in batch]
        if not events:
            return
        drops.append(Dropped(events, reason, message))
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
