"""Core benchmarks: caller-side cost of ``add()``, end-to-end events/s into the local server, memory.

    python bench/bench_core.py            # full run (~1 minute)
    python bench/bench_core.py --quick    # smaller counts

The local server runs in a separate process (as Dodo would be), so the SDK's flush thread does not share
the GIL with it. Prints a Markdown table for the README.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import KEY, METADATA, add_samples, free_port, start_server, wait_http  # noqa: E402

from dodo_ingest import Ingestion  # noqa: E402
from dodo_ingest.config import Config  # noqa: E402
from dodo_ingest.transport import Answer  # noqa: E402

SINK = """
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # one write per response: separate header and body writes stall on delayed ACKs
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"ingested_count": 0}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
"""


def start_sink() -> tuple[subprocess.Popen[bytes], str]:
    """A loopback HTTP sink that reads each body and answers 200 (how the design notes measured the peers)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SINK, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/events/ingest", 20, method="POST")
    return proc, url


def bench_add(url: str, calls: int) -> tuple[float, float, float]:
    """p50 / p99 / mean nanoseconds of one add(), the flush thread running and sending meanwhile."""
    samples = add_samples(calls, yield_every=None, base_url=url)
    overhead = min(_timer_overhead() for _ in range(5))
    return (
        samples[len(samples) // 2] - overhead,
        samples[int(len(samples) * 0.99)] - overhead,
        statistics.fmean(samples) - overhead,
    )


def _timer_overhead() -> int:
    clock = time.perf_counter_ns
    values = []
    for _ in range(10000):
        t0 = clock()
        values.append(clock() - t0)
    values.sort()
    return values[len(values) // 2]


def bench_throughput(url: str, events: int, *, verify: bool = True) -> tuple[float, int]:
    """Events per second from the first add() to the moment flush() confirms delivery."""
    if verify:
        requests.delete(url + "/_local/events", timeout=10)
    batch = Ingestion(api_key=KEY, base_url=url, max_requests_per_minute=None).create_batch(
        max_size=1000, flush_interval=5.0, max_queue_size=events + 10
    )
    start = time.perf_counter()
    for _ in range(events):
        batch.add("cus_bench", METADATA)
    assert batch.flush(timeout=300), "flush timed out"
    elapsed = time.perf_counter() - start
    stats = batch.stats()
    batch.shutdown()
    assert stats.sent == events, stats
    if verify:
        stored = requests.get(url + "/_local/stats", timeout=10).json()["event_count"]
        assert stored == events, (stats, stored)
    return events / elapsed, stats.requests


class _Stuck:
    """A transport that never answers until released: everything stays queued."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def post(self, body: bytes, timeout: float | None = None) -> Answer:
        self.release.wait()
        return Answer(200)

    def close(self) -> None:
        pass


def bench_memory(events: int) -> float:
    """Bytes of memory held per queued event (tracemalloc), the flush thread stuck on a request."""
    release = threading.Event()
    config = Config.load({"api_key": KEY, "max_queue_size": events * 2})
    batch = Ingestion(config=config, transport_factory=lambda c: _Stuck(release)).create_batch(
        max_size=1000, flush_interval=600
    )
    batch.add("cus_bench", METADATA)  # start the thread before measuring
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(events):
        batch.add("cus_bench", {**METADATA, "response_time_ms": float(i)})
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    release.set()
    batch.shutdown(timeout=10)
    return (after - before) / events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    args = parser.parse_args()
    calls = 100_000 if args.quick else 300_000
    volume = 100_000 if args.quick else 300_000
    proc, url = start_server()
    try:
        p50, p99, mean = bench_add(url, calls)
        rates = [bench_throughput(url, volume) for _ in range(1 if args.quick else 3)]
    finally:
        proc.terminate()
        proc.wait(10)
    sink, sink_url = start_sink()
    try:
        sink_rates = [bench_throughput(sink_url, volume, verify=False) for _ in range(1 if args.quick else 3)]
    finally:
        sink.terminate()
        sink.wait(10)
    memory = bench_memory(10_000)
    rate, posts = max(rates)
    sink_rate, sink_posts = max(sink_rates)
    print(f"\nPython {platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}\n")
    print("| measure | result | target |")
    print("|---|---|---|")
    print(f"| `add()` p50 over {calls:,} calls (flush thread running) | {p50 / 1000:.2f} µs | ≤ 2 µs |")
    print(f"| `add()` p99 | {p99 / 1000:.2f} µs | ≤ 10 µs |")
    print(f"| `add()` mean | {mean / 1000:.2f} µs | |")
    print(
        f"| end to end into the local server ({volume:,} events, {posts} requests, best of "
        f"{len(rates)}) | {rate:,.0f} events/s | ≥ 100,000 events/s |"
    )
    print(
        f"| end to end into a loopback HTTP sink that discards bodies ({volume:,} events, {sink_posts} requests, "
        f"best of {len(sink_rates)}) | {sink_rate:,.0f} events/s | ≥ 100,000 events/s |"
    )
    print(f"| memory per 10k queued events | {memory * 10_000 / 1e6:.2f} MB ({memory:.0f} B/event) | ≤ 10 MB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
