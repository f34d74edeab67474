"""Spool and request-budget benchmarks: what durability costs, and how many requests a fleet makes.

    python bench/bench_spool.py write          # spool write throughput, fsync cost; SQLite WAL for comparison
    python bench/bench_spool.py add            # add() on the request thread, spool off and on
    python bench/bench_spool.py window         # from add() to on disk: the kill -9 loss window
    python bench/bench_spool.py fleet          # gunicorn, 8 workers: requests per minute to Dodo, spool off / on
    python bench/bench_spool.py all

``fleet`` runs ``dodo-ingest serve --rate-limit 100/minute`` in its own process, gunicorn with 8 sync workers
serving ``tests/spool/load_app.py``, and a load of ``--rate`` requests/s for ``--seconds``; it reports the
requests per minute the server received, its 429s, and whether every answered request was billed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import KEY, METADATA, add_samples, free_port, percentile, start_server, wait_http  # noqa: E402

from dodo_ingest import Ingestion, spool  # noqa: E402
from dodo_ingest.events import encode_event, format_timestamp, new_event_id  # noqa: E402
from tests.spool.load import Load  # noqa: E402

# --- write ---------------------------------------------------------------------------------------------------


def sample_events(n: int) -> list[tuple[str, float]]:
    now = time.time()
    return [
        (encode_event(new_event_id(), "cus_bench", "api_call", format_timestamp(now), METADATA), now) for _ in range(n)
    ]


def bench_write(events: int, commit: int) -> None:
    """Events/s and commit latency: 100-event group commits, as the flush thread makes them."""
    batch = sample_events(commit)
    rows = [(created, json) for json, created in batch]
    print(f"\n### Spool writes: {events} events in commits of {commit} (temporary directory on {tmp_fs()})\n")
    print("| store | events/s | commit p50 | commit p99 |")
    print("|---|---:|---:|---:|")
    for fsync in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            directory = spool.SpoolDirectory(tmp, "http://127.0.0.1:1")
            directory.create()
            writer = spool.SegmentWriter(directory, max_bytes=1 << 40, fsync=fsync)
            times = []
            start = time.perf_counter()
            for _ in range(events // commit):
                t0 = time.perf_counter()
                writer.append(batch)
                writer.sync()  # the fsync runs in the writer's own thread; a commit is durable once it returns
                times.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            writer.close()
        label = "segments, write + fsync" if fsync else "segments, write only (survives kill -9, not power loss)"
        row(label, events / elapsed, times)
    for synchronous in ("FULL", "NORMAL"):
        with tempfile.TemporaryDirectory() as tmp:
            db = sqlite3.connect(os.path.join(tmp, "spool.db"), isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute("CREATE TABLE spool (id INTEGER PRIMARY KEY, created REAL, json TEXT)")
            times = []
            start = time.perf_counter()
            for _ in range(events // commit):
                t0 = time.perf_counter()
                db.execute("BEGIN")
                db.executemany("INSERT INTO spool (created, json) VALUES (?, ?)", rows)
                db.execute("COMMIT")
                times.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            db.close()
        row(f"SQLite WAL, synchronous={synchronous}", events / elapsed, times)
    fsyncs = []
    with tempfile.NamedTemporaryFile(dir=tempfile.gettempdir()) as f:
        for _ in range(500):
            os.write(f.fileno(), b"x" * 300)
            t0 = time.perf_counter()
            os.fsync(f.fileno())
            fsyncs.append(time.perf_counter() - t0)
    print(f"\nfsync alone: p50 {percentile(fsyncs, 0.5) * 1e3:.2f} ms, p99 {percentile(fsyncs, 0.99) * 1e3:.2f} ms")


def row(label: str, rate: float, times: list[float]) -> None:
    print(f"| {label} | {rate:,.0f} | {percentile(times, 0.5) * 1e3:.2f} ms | {percentile(times, 0.99) * 1e3:.2f} ms |")


def tmp_fs() -> str:
    try:
        out = subprocess.run(["df", "-T", tempfile.gettempdir()], capture_output=True, text=True, check=True).stdout
        return out.splitlines()[1].split()[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "?"


# --- add --------------------------------------------------------------------------------------------------------


def bench_add(url: str, calls: int, spool_dir: str | None) -> tuple[float, float]:
    """p50 / p99 ns of add() with the flush thread (and, with a spool, the spool writer and sender) running."""
    samples = add_samples(calls, base_url=url, spool_dir=spool_dir)
    return float(percentile(samples, 0.5)), float(percentile(samples, 0.99))


def bench_adds(calls: int, rounds: int) -> None:
    proc, url = start_server()
    try:
        print(f"\n### add() on the request thread, {calls} calls, best of {rounds} interleaved rounds\n")
        print("| variant | p50 | p99 |")
        print("|---|---:|---:|")
        results: dict[str, list[tuple[float, float]]] = {"spool off": [], "spool on": []}
        for _ in range(rounds):
            results["spool off"].append(bench_add(url, calls, None))
            with tempfile.TemporaryDirectory() as tmp:
                results["spool on"].append(bench_add(url, calls, tmp))
        for name, values in results.items():
            p50 = min(v[0] for v in values)
            p99 = min(v[1] for v in values)
            print(f"| {name} | {p50 / 1000:.2f} µs | {p99 / 1000:.2f} µs |")
    finally:
        proc.kill()


# --- window -----------------------------------------------------------------------------------------------------


def bench_window(samples: int) -> None:
    """Seconds from add() returning to the event's line being in the file (what a kill -9 cannot take away)."""
    proc, url = start_server("--fault-rate", "1", "--fault-status", "503")  # nothing is delivered: files only grow
    try:
        with tempfile.TemporaryDirectory() as tmp:
            batch = Ingestion(api_key=KEY, base_url=url, spool_dir=tmp).create_batch(flush_interval=5.0)
            directory = spool.SpoolDirectory(tmp, url)
            lags: list[float] = []
            for i in range(samples):
                before = directory.used_bytes()
                t0 = time.perf_counter()
                batch.add("cus_window", {"i": i})
                while directory.used_bytes() == before:
                    time.sleep(0.0005)
                lags.append(time.perf_counter() - t0)
                time.sleep(0.02)
            batch.shutdown(timeout=1)
    finally:
        proc.kill()
    print(f"\n### From add() to on disk, {samples} events one at a time (the idle case: the full commit interval)\n")
    print(
        f"p50 {percentile(lags, 0.5) * 1e3:.1f} ms, p99 {percentile(lags, 0.99) * 1e3:.1f} ms, "
        f"max {max(lags) * 1e3:.1f} ms (commit interval {spool.COMMIT_INTERVAL * 1e3:.0f} ms)"
    )


# --- fleet ------------------------------------------------------------------------------------------------------


def bench_fleet(workers: int, rate: float, seconds: float, rate_limit: str) -> None:
    print(
        f"\n### {workers} gunicorn workers, {rate:.0f} requests/s for {seconds:.0f} s, "
        f"local server with --rate-limit {rate_limit}\n"
    )
    print("| variant | requests/minute to Dodo | 429s | mean events/request | answered | billed |")
    print("|---|---:|---:|---:|---:|---:|")
    for variant in ("memory", "spool"):
        fleet_run(variant, workers, rate, seconds, rate_limit)


def fleet_run(variant: str, workers: int, rate: float, seconds: float, rate_limit: str) -> None:
    server, url = start_server("--rate-limit", rate_limit)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "DODO_PAYMENTS_API_KEY": KEY,
            "DODO_PAYMENTS_BASE_URL": url,
            "PYTHONPATH": str(ROOT),
            "DODO_INGEST_SHUTDOWN_TIMEOUT": "20",
        }
        if variant == "spool":
            env["DODO_INGEST_SPOOL_DIR"] = tmp
        command = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}"]
        command += ["--graceful-timeout", "30", "--log-level", "warning", "tests.spool.load_app:application"]
        app = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_http(f"http://127.0.0.1:{port}/health")
            requests.delete(url + "/_local/events", timeout=10)
            load = Load(f"http://127.0.0.1:{port}/work", threads=16, rate=rate)
            start = time.monotonic()
            threading.Event().wait(seconds)
            answered = load.stop()
            counts = requests.get(url + "/_local/stats", timeout=10).json()
            during = counts["requests"]
            minutes = (time.monotonic() - start) / 60
            app.send_signal(signal.SIGTERM)
            app.wait(timeout=120)
            if variant == "spool":  # what the last worker left waits for the next process
                Ingestion(api_key=KEY, base_url=url, spool_dir=tmp).batcher.flush(timeout=300)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                billed = requests.get(url + "/_local/stats", timeout=10).json()["event_count"]
                if billed >= len(answered):
                    break
                time.sleep(0.5)
            responses = requests.get(url + "/_local/dashboard", timeout=30).json()["server"]["responses"]
            ingest = responses.get("POST /events/ingest", {})
            ok = int(ingest.get("200", 0))
            print(
                f"| {variant} | {during / minutes:.0f} | {ingest.get('429', 0)} | "
                f"{billed / max(ok, 1):.0f} | {len(answered)} | {billed} |",
                flush=True,
            )
        finally:
            if app.poll() is None:
                app.kill()
            server.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["write", "add", "window", "fleet", "all"])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rate", type=float, default=200.0, help="fleet: requests/s to the app")
    parser.add_argument("--seconds", type=float, default=60.0, help="fleet: seconds of load per variant")
    parser.add_argument("--rate-limit", default="100/minute", help="fleet: the local server's budget")
    args = parser.parse_args()
    if args.what in ("write", "all"):
        bench_write(200_000, 100)
    if args.what in ("add", "all"):
        bench_adds(200_000, 3)
    if args.what in ("window", "all"):
        bench_window(200)
    if args.what in ("fleet", "all"):
        bench_fleet(args.workers, args.rate, args.seconds, args.rate_limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
