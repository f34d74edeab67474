"""Per-request overhead of the Flask extension and the WSGI middleware, against a hand-written floor.

    python bench/bench_flask.py            # in-process table + gunicorn requests/s (~1-2 minutes)
    python bench/bench_flask.py --quick    # smaller counts, no gunicorn

In-process: a hello-world JSON view called directly as a WSGI callable (no HTTP), µs per request, the best of
several interleaved runs (robust to noisy neighbours on a shared VM); each run ends when the variant's own
batcher has delivered its events, so the flush thread's work is charged to the variant that caused it.
Variants: the bare app; the floor, a minimal hand-written collector that appends one tuple to a deque per request,
once through Flask's request hooks and once as a WSGI wrapper; ``DodoIngest``; and
``DodoIngestMiddleware`` around the Flask app. The SDK's batcher is real, with a transport that discards
bodies, so the flush thread's work is included but no network is.

Under gunicorn: 2 sync workers on loopback serving the same app, a fixed number of requests from client
threads; events go to a local Dodo server in this process.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import flask  # noqa: E402
import requests  # noqa: E402
from flask import Flask, g, request  # noqa: E402

from dodo_ingest import Ingestion  # noqa: E402
from dodo_ingest.config import Config  # noqa: E402
from dodo_ingest.transport import Answer  # noqa: E402
from dodo_ingest.wsgi import DodoIngestMiddleware  # noqa: E402
from dodo_ingest_flask import DodoIngest  # noqa: E402

KEY = "sk_bench_key"
VARIANTS = ["bare", "floor-hooks", "floor-wsgi", "dodo-flask", "dodo-wsgi"]
LABELS = {
    "bare": "bare Flask",
    "floor-hooks": "floor: deque append via Flask request hooks",
    "floor-wsgi": "floor: deque append via a WSGI wrapper",
    "dodo-flask": "`DodoIngest` (Flask extension)",
    "dodo-wsgi": "`DodoIngestMiddleware` (WSGI)",
}


class NullTransport:
    """Accepts every body instantly (the batcher's flush thread still serializes and 'sends')."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def post(self, body: bytes, timeout: float | None = None) -> Answer:
        return Answer(200)

    def close(self) -> None:
        pass


def create_app(variant: str = "bare", base_url: str | None = None) -> Any:
    """The hello-world app in one of :data:`VARIANTS` (also gunicorn's factory: ``create_app('dodo-flask')``)."""
    app = Flask(__name__)
    sink: deque[tuple[Any, ...]] = deque(maxlen=100_000)

    @app.get("/hello/<int:user_id>")
    def hello(user_id: int) -> dict[str, Any]:
        return {"hello": "world", "user": user_id}

    settings: dict[str, Any] = {"fallback_customer_id": "cus_bench", "max_batch_size": 1000, "flush_interval": 1.0}
    settings["max_requests_per_minute"] = None  # the pipeline's cost, not Dodo's request budget
    ingestion = None
    if base_url is None:
        ingestion = Ingestion(api_key=KEY, transport_factory=NullTransport, **settings)
        settings = {"fallback_customer_id": "cus_bench"}
    else:
        settings.update(api_key=KEY, base_url=base_url)
    if ingestion is not None:
        app.extensions["bench_ingestion"] = ingestion  # flushed inside each timed run (see time_in_process)
    if variant == "floor-hooks":
        perf_counter = time.perf_counter

        @app.before_request
        def start() -> None:
            g.bench_started = perf_counter()

        @app.after_request
        def collect(response: flask.Response) -> flask.Response:
            rule = request.url_rule
            sink.append(
                (rule.rule if rule else None, request.method, response.status_code, perf_counter() - g.bench_started)
            )
            return response

    elif variant == "floor-wsgi":
        inner = app.wsgi_app
        perf_counter = time.perf_counter

        def floor(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            started = perf_counter()
            result = inner(environ, start_response)
            sink.append((environ["PATH_INFO"], environ["REQUEST_METHOD"], perf_counter() - started))
            return result

        app.wsgi_app = floor  # type: ignore[method-assign]
    elif variant == "dodo-flask":
        DodoIngest(app, ingestion=ingestion, **settings)
    elif variant == "dodo-wsgi":
        app.wsgi_app = DodoIngestMiddleware(app.wsgi_app, ingestion, **settings)  # type: ignore[method-assign]
    elif variant != "bare":
        raise ValueError(f"unknown variant {variant!r}")
    return app


def _environ() -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/hello/42",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
    return _write


def _write(data: bytes) -> None:
    pass


def time_in_process(app: Any, count: int) -> float:
    """µs per request calling ``app`` as a WSGI callable ``count`` times (body iterated and closed).

    The run ends when the variant's own batcher has delivered its events (``flush``), so the flush thread's
    work is charged to the variant that caused it and never spills into the next variant's run.
    """
    template = _environ()
    perf_counter = time.perf_counter
    started = perf_counter()
    for _ in range(count):
        environ = template.copy()
        environ["wsgi.input"] = io.BytesIO(b"")
        result = app(environ, _start_response)
        for _chunk in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
    ingestion = getattr(app, "extensions", {}).get("bench_ingestion")
    if ingestion is not None:
        ingestion.flush(timeout=60)
    return (perf_counter() - started) / count * 1e6


def in_process(count: int, runs: int, variants: list[str] | None = None) -> dict[str, float]:
    """Median µs per request of each variant; the runs are interleaved so drift affects all alike."""
    variants = variants or VARIANTS
    apps = {variant: create_app(variant) for variant in variants}
    samples: dict[str, list[float]] = {variant: [] for variant in variants}
    for app in apps.values():
        time_in_process(app, 2000)  # warm up
    for _ in range(runs):
        for variant, app in apps.items():
            samples[variant].append(time_in_process(app, count))
    return {variant: min(values) for variant, values in samples.items()}  # min: robust to noisy neighbours


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def under_gunicorn(variant: str, total: int, clients: int, base_url: str) -> float:
    """Requests/s of 2 sync gunicorn workers serving ``variant``, ``total`` requests from ``clients`` threads."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        "2",
        "-k",
        "sync",
        "-b",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        "--chdir",
        str(ROOT),
        f"bench.bench_flask:create_app({variant!r}, {base_url!r})",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/hello/42"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url, timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("gunicorn did not start") from None
                time.sleep(0.05)

        def worker(n: int) -> None:
            with requests.Session() as session:
                for _ in range(n):
                    session.get(url, timeout=10).raise_for_status()

        share = total // clients
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(worker, [share] * clients))
        return share * clients / (time.perf_counter() - started)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller counts, skip gunicorn")
    parser.add_argument("--count", type=int, default=None, help="requests per in-process run")
    parser.add_argument("--runs", type=int, default=None, help="in-process runs per variant (best run)")
    parser.add_argument("--gunicorn-requests", type=int, default=3000)
    args = parser.parse_args(argv)
    count = args.count or (3000 if args.quick else 20_000)
    runs = args.runs or (3 if args.quick else 7)

    print(
        f"Python {platform.python_version()}, Flask {importlib.metadata.version('flask')}, "
        f"{os.cpu_count()} CPUs, {platform.machine()}; {runs} interleaved runs of {count} requests, best run"
    )
    results = in_process(count, runs)
    bare = results["bare"]
    floors = {"dodo-flask": "floor-hooks", "dodo-wsgi": "floor-wsgi"}
    print("\n| variant | µs / request | overhead vs bare | overhead / its floor's |")
    print("|---|---:|---:|---:|")
    for variant in VARIANTS:
        overhead = results[variant] - bare
        ratio = ""
        if variant in floors:
            floor_overhead = results[floors[variant]] - bare
            ratio = f"{overhead / floor_overhead:.1f}x" if floor_overhead > 0 else "n/a"
        print(f"| {LABELS[variant]} | {results[variant]:.1f} | {overhead:+.1f} µs | {ratio} |")

    # Breakdown: the same adapters with the core's batcher replaced by the floor (one deque append), so the
    # remaining overhead is the adapter plus the shared request-to-event path (Meter.record), without the
    # batcher's lock and the flush thread's validation and serialization.
    from dodo_ingest.batcher import Batcher

    floor_queue: deque[tuple[Any, ...]] = deque(maxlen=100_000)

    def deque_add(self: Batcher, customer_id: Any, event_name: Any, metadata: Any, event_id: Any = None) -> bool:
        floor_queue.append((customer_id, event_name, metadata))
        return True

    original_add = Batcher.enqueue
    Batcher.enqueue = deque_add  # type: ignore[method-assign]
    try:
        partial = in_process(count, runs, ["bare", "dodo-flask", "dodo-wsgi"])
    finally:
        Batcher.enqueue = original_add  # type: ignore[method-assign]
    for variant in ("dodo-flask", "dodo-wsgi"):
        overhead = partial[variant] - partial["bare"]
        print(
            f"| {LABELS[variant]}, batcher replaced by a deque append | {partial[variant]:.1f} | {overhead:+.1f} µs | |"
        )

    if not args.quick:
        from dodo_ingest.localserver import LocalDodoServer

        clients = 8
        print(
            f"\n| under gunicorn (2 sync workers, loopback, {args.gunicorn_requests} requests from {clients} "
            "client threads) | requests/s |"
        )
        print("|---|---:|")
        with LocalDodoServer(api_key=KEY) as server:
            for variant in ("bare", "floor-hooks", "dodo-flask"):
                rate = under_gunicorn(variant, args.gunicorn_requests, clients, server.url)
                print(f"| {LABELS[variant]} | {rate:,.0f} |")
            print(f"\n(events stored by the local server during the gunicorn runs: {server.event_count()})")
    print("\ncommand: python bench/bench_flask.py" + (" --quick" if args.quick else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
