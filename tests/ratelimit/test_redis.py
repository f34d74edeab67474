"""The Limiter on a real redis-server: exactly the limit across threads, tasks and processes; one round trip
per check; Redis stopped mid-run (fail open, breaker, no network wait) and back (limits resume)."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from datetime import datetime
from typing import Any

import pytest
import redis

from dodo_ingest.ratelimit import Limiter
from dodo_ingest.ratelimit.limiter import CircuitBreaker
from tests.helpers import wait_until
from tests.ratelimit.conftest import ManualClock
from tests.ratelimit.redis_server import RedisServer

STRATEGIES = ["sliding-window-counter", "fixed-window", "moving-window"]


class RoundTrips(redis.Connection):
    """A redis-py connection that counts connection attempts and requests sent (round trips)."""

    connects = 0
    sends = 0

    def connect(self) -> None:
        type(self).connects += 1
        super().connect()

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def counting() -> type[RoundTrips]:
    RoundTrips.connects = RoundTrips.sends = 0
    return RoundTrips


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_exactly_the_limit_then_429_data_and_one_round_trip_per_check(
    redis_url: str, strategy: str, counting: type[RoundTrips], clock: ManualClock
) -> None:
    limiter = Limiter(
        "5/minute;1000/month",
        storage=redis_url,
        strategy=strategy,
        clock=clock,
        storage_options={"connection_class": counting},
    )
    limiter.check("cus_warmup")  # connects and loads the scripts
    counting.sends = 0
    decisions = [limiter.check("cus_1") for _ in range(5)]
    assert counting.sends == 5  # one round trip per admitted check, whatever the number of limits
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    assert all(d.allowed for d in decisions)
    rejected = limiter.check("cus_1")
    assert not rejected.allowed and rejected.retry_after is not None and 1 <= rejected.retry_after <= 60
    assert counting.sends == 5 + 2  # a rejection adds the quota refund
    usage = {state.policy: state for state in limiter.usage("cus_1")}
    assert usage["1000/month"].used == 5  # the rejected check was refunded: quota == admitted units
    assert usage["5/minute"].remaining == 0  # read back through limits' own get_window_stats


def test_threads_sharing_redis_get_exactly_50(redis_url: str) -> None:
    limiter = Limiter("50/minute", storage=redis_url)
    results: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(16)

    def hammer() -> None:
        start.wait()
        mine = [limiter.check("cus_1").allowed for _ in range(10)]
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=hammer) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 160 and sum(results) == 50


async def test_async_tasks_sharing_redis_get_exactly_50(redis_url: str) -> None:
    limiter = Limiter("50/minute;10000/month", storage=redis_url)
    decisions = await asyncio.gather(*(limiter.acheck("cus_1") for _ in range(120)))
    assert sum(d.allowed for d in decisions) == 50
    rejected = next(d for d in decisions if not d.allowed)
    assert rejected.binding is not None and rejected.binding.policy == "50/minute"
    assert dict(rejected.headers())["Retry-After"] == str(rejected.retry_after)
    month = (await limiter.ausage("cus_1"))[1]
    assert month.used == 50


async def test_an_async_check_is_one_round_trip(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import redis.asyncio

    sends = []
    original = redis.asyncio.Connection.send_packed_command

    async def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sends.append(command)
        await original(self, command, check_health)

    limiter = Limiter("5/minute;100/month", storage=redis_url)
    await limiter.acheck("cus_warmup")  # connects, loads the scripts
    monkeypatch.setattr(redis.asyncio.Connection, "send_packed_command", counting)
    decisions = [await limiter.acheck("cus_1") for _ in range(5)]
    assert len(sends) == 5 and all(d.allowed for d in decisions)
    assert decisions[-1].remaining == 0


def _process_worker(url: str, start: Any, results: Any) -> None:
    limiter = Limiter("50/minute", storage=url)
    start.wait()
    results.put(sum(limiter.check("cus_1").allowed for _ in range(40)))


@pytest.mark.slow
def test_processes_sharing_redis_get_exactly_50(redis_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_process_worker, args=(redis_url, start, results)) for _ in range(4)]
    for process in processes:
        process.start()
    counts = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    assert sum(counts) == 50 and len(counts) == 4


def test_the_monthly_boundary_on_redis(redis_url: str, clock: ManualClock) -> None:
    limiter = Limiter("2/month", storage=redis_url, clock=clock)
    clock.set(datetime(2025, 3, 31, 23, 59, 59))
    assert [limiter.check("cus_1").allowed for _ in range(3)] == [True, True, False]
    clock.set(datetime(2025, 4, 1))
    decision = limiter.check("cus_1")
    assert decision.allowed and decision.remaining == 1 and decision.states[0].window == 30 * 86400
    keys = redis.Redis.from_url(redis_url).keys("*period*")
    assert len(keys) == 2  # one key per period; the old one expires an hour after its period


@pytest.mark.parametrize("preloaded", [False, True])
def test_checks_survive_redis_losing_its_scripts(redis_url: str, clock: ManualClock, preloaded: bool) -> None:
    limiter = Limiter("3/minute;100/month", storage=redis_url, clock=clock)
    assert limiter.check("cus_1").allowed
    client = redis.Redis.from_url(redis_url)
    client.script_flush()
    if preloaded:  # another app (or limits itself) loaded one of the scripts: only the others are missing
        client.script_load(limiter._backend.storage.lua_incr_expire.script)
    assert [limiter.check("cus_1").allowed for _ in range(3)] == [True, True, False]
    assert limiter.stats()["storage_errors"] == 0
    assert limiter.usage("cus_1")[1].used == 3  # no command ran twice


@pytest.mark.slow
def test_redis_stopped_mid_run_fails_open_then_limits_resume(counting: type[RoundTrips]) -> None:
    with RedisServer() as server:
        monotonic = [0.0]
        limiter = Limiter("3/minute", storage=server.url, storage_options={"connection_class": counting})
        limiter.breaker = CircuitBreaker(threshold=3, cooldown=5.0, clock=lambda: monotonic[0])
        assert [limiter.check("cus_1").allowed for _ in range(4)] == [True, True, True, False]

        server.stop()
        down = [limiter.check("cus_1") for _ in range(50)]
        assert all(d.allowed and d.reason == "fail_open" for d in down)
        assert limiter.breaker.state == "open"
        stats = limiter.stats()
        assert stats["failed_open"] == 50 and stats["storage_errors"] == 3 and stats["breaker_opened"] == 1
        connects = counting.connects
        assert all(limiter.check("cus_1").allowed for _ in range(200))
        assert counting.connects == connects  # with the breaker open no check touches the network

        server.start()  # same port, empty (no persistence)
        monotonic[0] += 5.0
        assert [limiter.check("cus_1").allowed for _ in range(4)] == [True, True, True, False]
        assert limiter.breaker.state == "closed"
        assert limiter.stats()["failed_open"] == 250


@pytest.mark.slow
def test_a_hung_redis_times_out_then_the_breaker_stops_all_waits(counting: type[RoundTrips]) -> None:
    import signal

    with RedisServer() as server:
        monotonic = [0.0]
        limiter = Limiter("3/minute", storage=server.url, timeout=0.05, storage_options={"connection_class": counting})
        limiter.breaker = CircuitBreaker(threshold=3, cooldown=5.0, clock=lambda: monotonic[0])
        assert limiter.check("cus_1").allowed
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)  # accepts nothing more, answers nothing: reads time out
        try:
            down = [limiter.check("cus_1") for _ in range(3)]
            assert all(d.reason == "fail_open" for d in down)
            assert limiter.breaker.state == "open" and limiter.stats()["storage_errors"] == 3
            sends, connects = counting.sends, counting.connects
            assert all(limiter.check("cus_1").reason == "fail_open" for _ in range(100))
            assert (counting.sends, counting.connects) == (sends, connects)  # nothing waited on the hung server
        finally:
            server.process.send_signal(signal.SIGCONT)
        monotonic[0] += 5.0
        observer = redis.Redis(port=server.port)
        # the timed-out checks' connections: once the server has read and closed them, the count is final
        assert wait_until(lambda: observer.info("clients")["connected_clients"] == 1)
        # Commands that timed out sat in the server's socket buffers and may run now that it resumed: a timed-out
        # check's outcome is unknown (its request passed, so its units may count). Limits resume from the counter.
        used = limiter.usage("cus_1")[0].used
        assert 1 <= used <= 4
        assert [limiter.check("cus_1").allowed for _ in range(4)] == [True] * max(0, 3 - used) + [False] * (
            4 - max(0, 3 - used)
        )
        assert limiter.breaker.state == "closed"
