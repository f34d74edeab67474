"""How one check reaches a ``limits`` storage.

Every backend does the same thing for a list of rules: consume ``cost`` units from each and report, per rule,
whether it admitted the units and what is left. The Limiter decides from that, refunds billing periods when the
check as a whole is rejected, and handles failures; a backend only talks to its store.

- :class:`GenericBackend`: any ``limits`` storage, through its public strategy API (``hit`` then
  ``get_window_stats`` per rolling limit, ``incr`` per billing period). Several round trips per check.
- :class:`MemoryBackend`: ``memory://``. The same storage primitives and key scheme as the ``limits`` strategies
  (so ``get_window_stats`` reads what a check wrote), but the consuming call also yields the window's numbers,
  saving the second pass: about half the cost of ``hit`` + ``get_window_stats``.
- :class:`RedisBackend`: ``redis://``, ``rediss://``, ``redis+unix://``. One pipelined round trip per check: the
  storage's own Lua scripts (the ones its ``hit`` and ``get_window_stats`` run), on the storage's own keys,
  sent together in one ``MULTI``/``EXEC``. ``limits.aio`` (redis-py's asyncio client) for ``await`` checks.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeAlias, cast

from limits.limits import RateLimitItem
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import STRATEGIES, RateLimiter

from dodo_ingest.ratelimit.decision import LimitState

ASYNC_CONNECTIONS = 16  # per event loop
#: Seconds a task may wait for one of those connections. Waiting for a busy connection is not the store being
#: down (that is the socket timeout's and the breaker's job): a burst of tasks on a loaded host must not fail open.
ASYNC_POOL_WAIT = 2.0
PERIOD_GRACE = 3600  # seconds a period's key outlives the period (a late refund still finds it)


@dataclass(frozen=True, slots=True)
class Rule:
    """One limit applied to one customer (and scope) in one check."""

    policy: str
    amount: int
    item: RateLimitItem
    identifiers: tuple[str, ...]
    key: str
    """The storage key: ``item.key_for(*identifiers)`` for rolling windows, the period's own key for periods."""
    expiry: int
    """Seconds a rolling window's key lives (its window)."""
    window: int
    """Seconds the window spans (a billing period's actual length)."""
    period_end: float = 0.0
    """Epoch seconds (by the Limiter's clock) at which the billing period ends; 0 for rolling windows."""
    is_period: bool = False
    """Whether this is a billing-period quota (counted with ``incr`` on its own key)."""

    def period_expiry(self, now: float) -> int:
        """Seconds the period's key must live: to the period's end, plus an hour for late refunds."""
        return max(1, math.ceil(self.period_end - now)) + PERIOD_GRACE


Outcome: TypeAlias = LimitState
"""What a store said about one rule."""

_new_state: Callable[[tuple[Any, ...]], LimitState] = cast(Any, partial(tuple.__new__, LimitState))


def _outcome(rule: Rule, admitted: bool, used: int, remaining: int, reset: float) -> LimitState:
    return _new_state(
        (
            rule.policy,
            rule.amount,
            used,
            remaining if remaining > 0 else 0,
            math.ceil(reset) if reset > 0 else 0,
            rule.window,
            not admitted,
        )
    )


class GenericBackend:
    """Any ``limits`` storage through its public strategy API."""

    def __init__(self, storage: Storage, strategy: str) -> None:
        self.storage = storage
        self.strategy: RateLimiter = STRATEGIES[strategy](storage)
        self.strategy_name = strategy

    def consume(self, rules: Sequence[Rule], cost: int, now: float) -> list[Outcome]:
        """Consume ``cost`` units from every rule (all are tried; none is skipped). ``now`` is the Limiter's
        clock, which places billing periods; rolling windows run on the store's clock."""
        outcomes = []
        for rule in rules:
            if rule.is_period:
                outcomes.append(_period(rule, self.storage.incr(rule.key, rule.period_expiry(now), cost), now))
            else:
                admitted = self.strategy.hit(rule.item, *rule.identifiers, cost=cost)
                outcomes.append(self._stats(rule, admitted))
        return outcomes

    async def aconsume(self, rules: Sequence[Rule], cost: int, now: float) -> list[Outcome]:
        """:meth:`consume` without blocking the event loop (in a worker thread)."""
        return await asyncio.to_thread(self.consume, rules, cost, now)

    def refund(self, rules: Sequence[Rule], cost: int, now: float) -> None:
        """Give back ``cost`` units to billing periods consumed by a check that was rejected."""
        for rule in rules:
            self.storage.incr(rule.key, rule.period_expiry(now), -cost)

    async def arefund(self, rules: Sequence[Rule], cost: int, now: float) -> None:
        """:meth:`refund` without blocking the event loop."""
        await asyncio.to_thread(self.refund, rules, cost, now)

    def peek(self, rules: Sequence[Rule], now: float) -> list[Outcome]:
        """The state of every rule, consuming nothing (for :meth:`Limiter.usage`)."""
        outcomes = []
        for rule in rules:
            if rule.is_period:
                outcomes.append(_period(rule, self.storage.get(rule.key), now))
            else:
                outcomes.append(self._stats(rule, True))
        return outcomes

    def _stats(self, rule: Rule, admitted: bool) -> Outcome:
        reset_at, remaining = self.strategy.get_window_stats(rule.item, *rule.identifiers)
        return _outcome(rule, admitted, rule.amount - remaining, remaining, reset_at - time.time())

    def close(self) -> None:
        """Release connections (nothing to do for most storages)."""


def _period(rule: Rule, count: int, now: float) -> Outcome:
    return _outcome(rule, count <= rule.amount, count, rule.amount - count, rule.period_end - now)


def _sliding(
    rule: Rule, admitted: bool, previous: int, previous_ttl: float, current: int, current_ttl: float
) -> Outcome:
    """The sliding window counter's numbers, as ``limits``' ``SlidingWindowCounterRateLimiter`` computes them."""
    expiry = rule.expiry
    weighted = math.floor(previous * previous_ttl / expiry + current)
    reset = 0.0
    if previous:
        reset = previous_ttl % (expiry / previous)
        if current:
            reset = min(reset, current_ttl % expiry)
    elif current:
        reset = current_ttl % expiry
    return _outcome(rule, admitted, weighted, rule.amount - weighted, reset)


class MemoryBackend(GenericBackend):
    """``memory://``: the ``limits`` memory storage, consumed and measured in one pass per rule."""

    storage: MemoryStorage

    def __init__(self, storage: MemoryStorage, strategy: str) -> None:
        super().__init__(storage, strategy)
        self._window_keys: dict[str, tuple[int, str, str]] = {}
        self._rolling = {
            "sliding-window-counter": self._sliding,
            "fixed-window": self._fixed,
            "moving-window": self._moving,
        }[strategy]

    def consume(self, rules: Sequence[Rule], cost: int, now: float) -> list[Outcome]:
        """Consume from every rule; a rolling window that rejects keeps nothing (as its ``hit`` would)."""
        rolling = self._rolling
        return [
            _period(rule, self.storage.incr(rule.key, rule.period_expiry(now), cost), now)
            if rule.is_period
            else rolling(rule, cost)
            for rule in rules
        ]

    def _fixed(self, rule: Rule, cost: int) -> Outcome:
        count = self.storage.incr(rule.key, rule.expiry, cost)
        reset = self.storage.get_expiry(rule.key) - time.time()
        return _outcome(rule, count <= rule.amount, count, rule.amount - count, reset)

    def _moving(self, rule: Rule, cost: int) -> Outcome:
        admitted = self.storage.acquire_entry(rule.key, rule.amount, rule.expiry, cost)
        start, count = self.storage.get_moving_window(rule.key, rule.amount, rule.expiry)
        reset = start + rule.expiry - time.time() if count else 0.0
        return _outcome(rule, admitted, count, rule.amount - count, reset)

    def _sliding(self, rule: Rule, cost: int) -> Outcome:
        # The keys and weights of limits' MemoryStorage.acquire_sliding_window_entry / get_sliding_window. The
        # increment comes first and is undone if it does not fit, so concurrent threads never admit too much.
        storage, expiry, now = self.storage, rule.expiry, time.time()
        index = int(now / expiry)
        keys = self._window_keys.get(rule.key)
        if keys is None or keys[0] != index:
            keys = (index, *storage.sliding_window_keys(rule.key, expiry, now))
            if len(self._window_keys) > 10_000:
                self._window_keys.clear()
            self._window_keys[rule.key] = keys
        previous_key, current_key = keys[1], keys[2]
        previous = storage.get(previous_key)
        previous_ttl = (1 - (((now - expiry) / expiry) % 1)) * expiry if previous else 0.0
        current = storage.incr(current_key, 2 * expiry, cost)
        admitted = math.floor(previous * previous_ttl / expiry + current) <= rule.amount
        if not admitted:
            current = storage.decr(current_key, cost)
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return _sliding(rule, admitted, previous, previous_ttl, current, current_ttl)

    async def aconsume(self, rules: Sequence[Rule], cost: int, now: float) -> list[Outcome]:
        """In-process counters never block: run inline."""
        return self.consume(rules, cost, now)

    async def arefund(self, rules: Sequence[Rule], cost: int, now: float) -> None:
        """In-process counters never block: run inline."""
        self.refund(rules, cost, now)


class RedisBackend(GenericBackend):
    """Redis: one pipelined round trip per check, with the storage's own scripts and keys."""

    storage: RedisStorage

    def __init__(self, storage: RedisStorage, strategy: str, uri: str, async_options: dict[str, Any]) -> None:
        super().__init__(storage, strategy)
        self.uri = uri
        self.async_options = async_options
        self._aio: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        s = storage
        scripts = {
            "sliding-window-counter": (s.lua_acquire_sliding_window, s.lua_sliding_window),
            "moving-window": (s.lua_acquire_moving_window, s.lua_moving_window),
            "fixed-window": (s.lua_incr_expire, None),
        }[strategy]
        self._acquire = (scripts[0].sha, scripts[0].script)
        self._window = (scripts[1].sha, scripts[1].script) if scripts[1] is not None else None
        self._incr = (s.lua_incr_expire.sha, s.lua_incr_expire.script)
        self.scripts = [script for script in (self._acquire, self._window, self._incr) if script is not None]
        self._keys: dict[str, tuple[str, ...]] = {}

    def _redis_keys(self, rule: Rule) -> tuple[str, ...]:
        keys = self._keys.get(rule.key)
        if keys is None:
            storage = self.storage
            if self.strategy_name == "sliding-window-counter" and not rule.is_period:
                keys = (
                    storage.prefixed_key(storage._previous_window_key(rule.key)),
                    storage.prefixed_key(storage._current_window_key(rule.key)),
                )
            else:
                keys = (storage.prefixed_key(rule.key),)
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[rule.key] = keys
        return keys

    def _commands(self, rules: Sequence[Rule], cost: int, now: float) -> list[tuple[Any, ...]]:
        commands: list[tuple[Any, ...]] = []
        wall = time.time()
        for rule in rules:
            keys = self._redis_keys(rule)
            if rule.is_period:
                commands.append(("EVALSHA", self._incr[0], 1, keys[0], rule.period_expiry(now), cost))
            elif self.strategy_name == "sliding-window-counter":
                assert self._window is not None
                commands.append(("EVALSHA", self._acquire[0], 2, *keys, rule.amount, rule.expiry, cost))
                commands.append(("EVALSHA", self._window[0], 2, *keys, rule.expiry))
            elif self.strategy_name == "fixed-window":
                commands.append(("EVALSHA", self._incr[0], 1, keys[0], rule.expiry, cost))
                commands.append(("PTTL", keys[0]))
            else:
                assert self._window is not None
                commands.append(("EVALSHA", self._acquire[0], 1, keys[0], wall, rule.amount, rule.expiry, cost))
                commands.append(("EVALSHA", self._window[0], 1, keys[0], wall - rule.expiry, rule.amount))
        return commands

    def _outcomes(self, rules: Sequence[Rule], replies: list[Any], now: float) -> list[Outcome]:
        outcomes: list[Outcome] = []
        position, wall = 0, time.time()
        for rule in rules:
            first = replies[position]
            if rule.is_period:
                outcomes.append(_period(rule, int(first), now))
                position += 1
                continue
            second = replies[position + 1]
            position += 2
            if self.strategy_name == "sliding-window-counter":
                w = second or [0, 0, 0, 0]
                outcomes.append(
                    _sliding(
                        rule,
                        bool(first),
                        int(w[0] or 0),
                        max(0.0, float(w[1] or 0)) / 1000,
                        int(w[2] or 0),
                        max(0.0, float(w[3] or 0)) / 1000,
                    )
                )
            elif self.strategy_name == "fixed-window":
                count = int(first)
                outcomes.append(_outcome(rule, count <= rule.amount, count, rule.amount - count, int(second) / 1000))
            else:
                count = int(second[1]) if second else 0
                reset = float(second[0]) + rule.expiry - wall if second else 0.0
                outcomes.append(_outcome(rule, bool(first), count, rule.amount - count, reset))
        return outcomes

    def consume(self, rules: Sequence[Rule], cost: int, now: float) -> list[Outcome]:
        """One ``MULTI``/``EXEC`` round trip (two more when Redis lacks a script, e.g. after a restart)."""
        commands = self._commands(rules, cost, now)
        client = cast(Any, self.storage.get_connection())
        pipe = client.pipeline(transaction=True)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        missing = _missing_scripts(commands, replies)
        if missing:
            for _sha, text in self.scripts:
                client.script_load(text)
            pipe = client.pipeline(transaction=True)
            for i in missing:
                pipe.execute_command(*commands[i])
            for i, reply in zip(missing, pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
            _raise_failures(replies)
        return self._outcomes(rules, replies, now)

    async def aconsume(self, rules: Sequence[Rule], cost: int, now: float) -> list[Outcome]:
        """The same round trip on ``limits.aio``'s asyncio Redis client of the running event loop."""
        commands = self._commands(rules, cost, now)
        client = self._aio_storage().bridge.get_connection()
        pipe = client.pipeline(transaction=True)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        missing = _missing_scripts(commands, replies)
        if missing:
            for _sha, text in self.scripts:
                await client.script_load(text)
            pipe = client.pipeline(transaction=True)
            for i in missing:
                pipe.execute_command(*commands[i])
            for i, reply in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
                replies[i] = reply
            _raise_failures(replies)
        return self._outcomes(rules, replies, now)

    async def arefund(self, rules: Sequence[Rule], cost: int, now: float) -> None:
        """:meth:`refund` on the asyncio client."""
        storage = self._aio_storage()
        for rule in rules:
            await storage.incr(rule.key, rule.period_expiry(now), -cost)

    def _aio_storage(self) -> Any:
        # An asyncio connection belongs to the loop that opened it: one limits.aio storage per event loop.
        loop = asyncio.get_running_loop()
        storage = self._aio.get(loop)
        if storage is None:
            from limits.aio.storage import RedisStorage as AsyncRedisStorage
            from redis.asyncio import BlockingConnectionPool

            # Bounded: a burst of tasks shares a few connections instead of opening one each, whose handshakes
            # would queue on the loop past the connect timeout. A task waits for a free one at most ASYNC_POOL_WAIT.
            options = dict(self.async_options)
            pool = BlockingConnectionPool.from_url(
                self.uri,
                max_connections=ASYNC_CONNECTIONS,
                timeout=ASYNC_POOL_WAIT,
                **options,
            )
            storage = AsyncRedisStorage(
                "async+" + self.uri,
                implementation="redispy",
                key_prefix=self.storage.key_prefix,
                connection_pool=cast(Any, pool),
            )
            self._aio[loop] = storage
        return storage

    def close(self) -> None:
        """Close the connection pool (a later check reconnects)."""
        cast(Any, self.storage.get_connection()).close()


def _missing_scripts(commands: list[tuple[Any, ...]], replies: list[Any]) -> list[int]:
    """The positions of commands whose script Redis lacks (restart, ``SCRIPT FLUSH``, another app's Redis).
    Those commands did not run, so running them again cannot count twice. Any other failure is raised."""
    from redis.exceptions import NoScriptError

    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if len(missing) < sum(isinstance(reply, Exception) for reply in replies):
        _raise_failures(replies)
    return missing


def _raise_failures(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
