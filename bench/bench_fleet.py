"""Shared-buffer benchmarks (``buffer_url``): the forwarder's throughput, add() with a buffer, end-to-end delay.

    python bench/bench_fleet.py write     # flush-thread CPU per event: the writer's script vs a pipeline of XADDs
    python bench/bench_fleet.py forward   # a forwarder's sustained events/s into the local server, full requests
    python bench/bench_fleet.py add       # add() on the request thread: no buffer vs buffer_url
    python bench/bench_fleet.py delay     # request to Dodo under the budget: batcher -> Redis -> 2 forwarders
    python bench/bench_fleet.py all

Each run starts its own redis-server (tests/ratelimit/redis_server.py) and the local server in its own process
(``dodo-ingest serve``); forwarders run as ``python -m dodo_ingest.cli forward`` processes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_spool import sample_events  # noqa: E402
from common import KEY, METADATA, add_samples, percentile, start_server  # noqa: E402

from dodo_ingest import Ingestion  # noqa: E402
from dodo_ingest.fleet.stream import StreamWriter  # noqa: E402
from tests.ratelimit.redis_server import RedisServer  # noqa: E402


def server_count(url: str) -> int:
    return int(requests.get(url + "/_local/stats", timeout=5).json()["event_count"])


def start_forwarder(redis_url: str, url: str, name: str, **settings: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DODO_PAYMENTS_API_KEY": KEY,
        "DODO_PAYMENTS_BASE_URL": url,
        "PYTHONPATH": str(ROOT),
        **{f"DODO_INGEST_{k.upper()}": v for k, v in settings.items()},
    }
    command = [sys.executable, "-m", "dodo_ingest.cli", "forward", "--buffer", redis_url, "--name", name]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    process.wait(timeout=30)


# --- write -------------------------------------------------------------------------------------------------


def bench_write(chunks: int) -> None:
    """CPU seconds per event to add 1000-event chunks: StreamWriter (one script) vs a redis-py pipeline."""
    import redis

    events = sample_events(1000)
    with RedisServer() as redis_server:
        writer = StreamWriter(redis_server.url, "bench")
        writer.append(events)
        started = time.process_time()
        for _ in range(chunks):
            writer.append(events)
        script = (time.process_time() - started) / (chunks * 1000)
        writer.close()
        client = redis.Redis.from_url(redis_server.url)
        started = time.process_time()
        for _ in range(chunks):
            pipe = client.pipeline(transaction=False)
            for encoded, created in events:
                pipe.xadd("bench:pipeline", {"e": encoded, "t": repr(created)})
            pipe.execute()
        pipeline = (time.process_time() - started) / (chunks * 1000)
        client.close()
    print(
        f"| flush-thread CPU per event, {chunks} chunks of 1000 | script {script * 1e6:.1f} µs "
        f"| pipeline of XADDs {pipeline * 1e6:.1f} µs |"
    )


# --- forward -------------------------------------------------------------------------------------------------


def bench_forward(events: int, forwarders: int) -> None:
    """A backlog of ``events`` in the stream, then ``forwarders`` unpaced forwarders: events/s until all stored."""
    with RedisServer() as redis_server:
        writer = StreamWriter(redis_server.url, "dodo-ingest")
        for start in range(0, events, 1000):
            writer.append(sample_events(min(1000, events - start)))
        writer.close()
        proc, url = start_server()
        try:
            started = time.monotonic()
            procs = [
                start_forwarder(redis_server.url, url, f"f{n}", max_requests_per_minute="null", flush_interval="0.1")
                for n in range(forwarders)
            ]
            while server_count(url) < events:
                time.sleep(0.05)
            elapsed = time.monotonic() - started
            for p in procs:
                stop(p)
            requests_made = requests.get(url + "/_local/stats", timeout=5).json()["requests"]
        finally:
            proc.kill()
    print(
        f"| forward a {events}-event backlog, {forwarders} forwarder(s), unpaced | {events / elapsed:,.0f} events/s "
        f"| {requests_made} requests ({events / requests_made:.0f} events each), {elapsed:.1f} s incl. start-up |"
    )


# --- add -----------------------------------------------------------------------------------------------------


def bench_add(url: str, calls: int, buffer_url: str | None) -> tuple[float, float]:
    """p50 / p99 ns of add() with the flush thread running (writing to Redis when ``buffer_url`` is set)."""
    samples = add_samples(calls, base_url=url, buffer_url=buffer_url)
    return float(percentile(samples, 0.5)), float(percentile(samples, 0.99))


def bench_adds(calls: int, rounds: int) -> None:
    with RedisServer() as redis_server:
        proc, url = start_server()
        try:
            results: dict[str, list[tuple[float, float]]] = {"no buffer": [], "buffer_url": []}
            for _ in range(rounds):
                results["no buffer"].append(bench_add(url, calls, None))
                results["buffer_url"].append(bench_add(url, calls, redis_server.url))
        finally:
            proc.kill()
    for name, values in results.items():
        p50 = min(v[0] for v in values)
        p99 = min(v[1] for v in values)
        print(
            f"| add(), {name}, best of {rounds} rounds of {calls} | p50 {p50 / 1000:.2f} µs | p99 {p99 / 1000:.2f} µs |"
        )


# --- delay ---------------------------------------------------------------------------------------------------


def bench_delay(rate: float, seconds: float) -> None:
    """Events added at ``rate``/s for ``seconds``; 2 forwarders with the default budget (90/minute) into a server
    with ``--rate-limit 100/minute``. An event's delay: from its add() to the first poll of the server's count
    (every 20 ms) that includes it (events arrive in about the order they were added)."""
    with RedisServer() as redis_server:
        proc, url = start_server("--rate-limit", "100/minute")
        procs = [start_forwarder(redis_server.url, url, f"f{n}") for n in range(2)]
        batch = Ingestion(api_key=KEY, base_url=url, buffer_url=redis_server.url).create_batch()
        added: list[float] = []
        seen: list[tuple[float, int]] = []
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                seen.append((time.monotonic(), server_count(url)))
                done.wait(0.02)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        try:
            interval, start = 1.0 / rate, time.monotonic()
            total = int(rate * seconds)
            for n in range(total):
                target = start + n * interval
                pause = target - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                added.append(time.monotonic())
                batch.add("cus_bench", METADATA)
            while server_count(url) < total:
                time.sleep(0.05)
            time.sleep(0.05)
            done.set()
            poller.join()
            stats = requests.get(url + "/_local/stats", timeout=5).json()
        finally:
            batch.shutdown(timeout=10)
            for p in procs:
                stop(p)
            proc.kill()
    delays, index = [], 0
    for at, count in seen:
        while index < min(count, len(added)):
            delays.append(at - added[index])
            index += 1
    print(
        f"| end to end at {rate:.0f} events/s for {seconds:.0f} s, 2 forwarders, budget 90/minute | "
        f"p50 {percentile(delays, 0.5):.2f} s, p99 {percentile(delays, 0.99):.2f} s, max {max(delays):.2f} s | "
        f"{stats['requests']} requests ({total / stats['requests']:.0f} events each), "
        f"{stats['requests'] / seconds * 60:.0f}/minute |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["write", "forward", "add", "delay", "all"])
    parser.add_argument("--chunks", type=int, default=50, help="write: 1000-event chunks")
    parser.add_argument("--events", type=int, default=200_000, help="forward: backlog size")
    parser.add_argument("--forwarders", type=int, default=1, help="forward: forwarders")
    parser.add_argument("--calls", type=int, default=200_000, help="add: calls per round")
    parser.add_argument("--rounds", type=int, default=3, help="add: interleaved rounds")
    parser.add_argument("--rate", type=float, default=500.0, help="delay: events per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="delay: duration")
    args = parser.parse_args()
    print("| measure | result | notes |\n|---|---|---|")
    if args.what in ("write", "all"):
        bench_write(args.chunks)
    if args.what in ("forward", "all"):
        bench_forward(args.events, args.forwarders)
    if args.what in ("add", "all"):
        bench_adds(args.calls, args.rounds)
    if args.what in ("delay", "all"):
        bench_delay(args.rate, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
