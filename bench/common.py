"""What the benchmarks share: the key, a typical event's metadata, free ports, the local server in a process."""

from __future__ import annotations

import gc
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk_bench_key"
METADATA = {
    "endpoint": "/api/v1/items/<int:item_id>",
    "method": "GET",
    "status_code": 200,
    "response_time_ms": 12.5,
    "request_bytes": 0,
    "response_bytes": 512,
}


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, seconds: float = 30, method: str = "GET") -> None:
    """Wait until ``url`` answers below 500 (exit the benchmark if it never does)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.request(method, url, data=b"{}" if method == "POST" else None, timeout=1).status_code < 500:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} did not answer")


def start_server(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    """``dodo-ingest serve`` (in-memory store, :data:`KEY`) in its own process, as Dodo would be: the SDK's
    flush thread then does not share the GIL with it. Extra ``args`` go to its command line."""
    port = free_port()
    command = [sys.executable, "-m", "dodo_ingest.localserver", "--port", str(port), "--db", ":memory:"]
    proc = subprocess.Popen(
        [*command, "--api-key", KEY, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/_local/stats")
    return proc, url


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0-1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def add_samples(calls: int, *, yield_every: int | None = 100, **settings: Any) -> list[int]:
    """Nanoseconds of each of ``calls`` ``add()`` calls, sorted, on a batch of an ``Ingestion(**settings)`` (the
    key and no request pacing by default) whose flush thread runs meanwhile. ``yield_every``: give the flush thread
    the GIL every so many calls, as request threads would (None: never)."""
    from dodo_ingest import Ingestion

    settings = {"api_key": KEY, "max_requests_per_minute": None, **settings}
    batch = Ingestion(**settings).create_batch(max_size=100, flush_interval=5.0, max_queue_size=calls + 10)
    add, clock = batch.add, time.perf_counter_ns
    for _ in range(2000):  # warm up, start the thread
        add("cus_bench", METADATA)
    samples = [0] * calls
    gc.disable()
    try:
        for i in range(calls):
            t0 = clock()
            add("cus_bench", METADATA)
            samples[i] = clock() - t0
            if yield_every is not None and i % yield_every == yield_every - 1:
                time.sleep(0)
    finally:
        gc.enable()
    batch.shutdown(timeout=60)
    samples.sort()
    return samples
