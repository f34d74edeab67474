"""Rate-limit check cost: µs per ``Limiter.check`` on memory:// and on a real Redis, and round trips per check.

    python bench/bench_ratelimit.py           # full run (~30 s)
    python bench/bench_ratelimit.py --quick   # smaller counts

Memory figures use 1,000 customers (and 10,000 / 50,000 in two extra rows). Redis is a ``redis-server`` this
script starts on a free loopback port (no persistence) and stops; the round trips are counted by a redis-py
connection that counts the requests it sends. "check" is ``limiter.check()``; "+ headers" adds building the
response's ``RateLimit-Policy`` / ``RateLimit`` fields, which an adapter does on every response. Each figure is
the best of several runs (other load on the machine only ever adds); CPU time (of this process, so including a
storage's own threads) is given beside wall time because it does not count waiting for a core on a shared
machine. A bare redis-py ``PING`` is measured beside, as the price of one round trip here. Prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dodo_ingest.ratelimit import Limiter  # noqa: E402

HUGE = "100000/minute"
HUGE_WITH_MONTH = "100000/minute;10000000/month"
CUSTOMERS = [f"cus_{i:04d}" for i in range(1000)]  # realistic windows: each customer sees a few checks


class CountingConnection(redis.Connection):
    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        super().send_packed_command(command, check_health)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis() -> tuple[subprocess.Popen[bytes], str, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server)")
    port, workdir = free_port(), tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                sys.exit("redis-server did not start")
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0", workdir


def per_call_us(fn: Callable[[], object], n: int, runs: int) -> tuple[float, float]:
    """(wall µs, CPU µs of this process) per call, each the best of ``runs``. CPU time is what the check costs
    the host's request thread (and the storage's own threads); wall time adds waiting for the network and for
    a core on a loaded machine."""
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn()
        cpus.append((time.process_time() - cpu) / n * 1e6)
        walls.append((time.perf_counter() - wall) / n * 1e6)
    return min(walls), min(cpus)


def measure(limiter: Limiter, n: int, runs: int) -> tuple[str, str, str]:
    for customer in CUSTOMERS:  # warm: connection, scripts, caches
        limiter.check(customer)
    turn = iter(range(10**9))
    wall, cpu = per_call_us(lambda: limiter.check(CUSTOMERS[next(turn) % 1000]), n, runs)
    _, both = per_call_us(lambda: limiter.check(CUSTOMERS[next(turn) % 1000]).headers(), n, runs)
    return f"{wall:.1f}", f"{cpu:.1f}", f"{both:.1f}"


def round_trips(limiter: Limiter, checks: int = 200) -> float:
    limiter.check("cus_rt")
    CountingConnection.sends = 0
    for _ in range(checks):
        limiter.check("cus_rt")
    return CountingConnection.sends / checks


def async_us(limiter: Limiter, n: int, runs: int) -> tuple[float, float, float]:
    """(wall µs, CPU µs) per ``acheck`` and round trips per ``acheck`` (asyncio requests sent, counted)."""
    sends = [0]
    original = redis.asyncio.Connection.send_packed_command

    async def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sends[0] += 1
        await original(self, command, check_health)

    async def run() -> tuple[float, float, float]:
        await limiter.acheck("cus_async")
        walls, cpus = [], []
        for _ in range(runs):
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                await limiter.acheck("cus_async")
            cpus.append((time.process_time() - cpu) / n * 1e6)
            walls.append((time.perf_counter() - wall) / n * 1e6)
        redis.asyncio.Connection.send_packed_command = counting  # type: ignore[method-assign]
        try:
            for _ in range(200):
                await limiter.acheck("cus_async")
        finally:
            redis.asyncio.Connection.send_packed_command = original  # type: ignore[method-assign]
        return min(walls), min(cpus), sends[0] / 200

    return asyncio.run(run())


def many_customers(count: int, n: int, runs: int) -> tuple[float, float]:
    customers = [f"cus_{i:06d}" for i in range(count)]
    limiter = Limiter(HUGE, strategy="sliding-window-counter")
    for customer in customers:
        limiter.check(customer)
    turn = iter(range(10**9))
    return per_call_us(lambda: limiter.check(customers[next(turn) % count]), n, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    args = parser.parse_args()
    n_mem, n_redis, runs = (5_000, 500, 3) if args.quick else (50_000, 3_000, 5)

    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores")
    rows: list[tuple[str, ...]] = []
    strategies = ("sliding-window-counter", "fixed-window", "moving-window")
    shapes = ((HUGE, "1 rolling"), (HUGE_WITH_MONTH, "1 rolling + month"))

    for strategy in strategies:
        for spec, shape in shapes:
            rows.append(("memory://", strategy, shape, *measure(Limiter(spec, strategy=strategy), n_mem, runs), "0"))

    # limits' MemoryStorage sweeps every key it holds every 10 ms from a timer thread: the cost grows with customers.
    for count in (10_000, 50_000):
        wall, cpu = many_customers(count, n_mem, runs)
        shape = f"1 rolling, {count:,} customers"
        rows.append(("memory://", "sliding-window-counter", shape, f"{wall:.1f}", f"{cpu:.1f}", "-", "0"))

    proc, url, workdir = start_redis()
    try:
        client = redis.Redis.from_url(url)
        wall, cpu = per_call_us(client.ping, n_redis, runs)
        rows.append(("redis:// bare PING", "-", "-", f"{wall:.1f}", f"{cpu:.1f}", "-", "1"))
        options = {"connection_class": CountingConnection}
        for strategy in strategies:
            for spec, shape in shapes:
                limiter = Limiter(spec, storage=url, strategy=strategy, storage_options=options)
                figures = measure(limiter, n_redis, runs)
                rows.append(("redis://", strategy, shape, *figures, f"{round_trips(limiter):g}"))
        wall, cpu, trips = async_us(Limiter(HUGE_WITH_MONTH, storage=url), n_redis, runs)
        rows.append(
            (
                "redis:// acheck",
                "sliding-window-counter",
                "1 rolling + month",
                f"{wall:.1f}",
                f"{cpu:.1f}",
                "-",
                f"{trips:g}",
            )
        )
        # A rejected check that consumed a billing period refunds it: one more round trip.
        limiter = Limiter("1/minute;1000000/month", storage=url, storage_options=options)
        rows.append(
            (
                "redis:// rejected",
                "sliding-window-counter",
                "1 rolling + month",
                "-",
                "-",
                "-",
                f"{round_trips(limiter):g}",
            )
        )
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)

    unlimited = Limiter(None)
    wall, cpu = per_call_us(lambda: unlimited.check("c"), n_mem, runs)
    rows.append(("(no limit applies)", "-", "0", f"{wall:.2f}", f"{cpu:.2f}", "-", "0"))

    print(
        "\n| storage | strategy | limits | µs per check (wall) | µs per check (CPU) | CPU µs + headers | round trips |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
