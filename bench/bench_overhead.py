"""Request-path overhead of the three adapters, in one run, against the same apps bare and a hand-written floor.

    python bench/bench_overhead.py            # 25 rounds of 900 requests per variant (~1-2 minutes)
    python bench/bench_overhead.py --quick    # 7 rounds

Method (issue 7): each app is called directly as a WSGI callable in this process (no sockets). The SDK's real
batcher runs with a transport that drops each body at the transport boundary: the flush thread still wakes,
builds, validates and encodes every event. Rounds are interleaved (every variant once per round, in a shuffled
order); a round's cost of a variant is its request thread's CPU µs per request over 900 requests (CPU time, so
that waiting for a core on a shared machine is not counted), and the table shows the **median of the per-round
paired differences** against the bare app of the same round. The flush thread's work is kept out of the timed
requests (a round is shorter than a batch of 1000) and measured on its own: after each round, ``flush()`` makes the
flush thread build and encode that round's events while this thread waits, and the flush thread's own CPU clock
gives its CPU per event.

The floor is the least a metering integration can do: append one tuple (route, method, status, duration) to a
deque per request, via Flask's ``before_request``/``after_request`` hooks, as a WSGI wrapper, and as a Django
middleware.

Rollups (issue 10): the WSGI middleware with ``rollup_interval=60``: the request thread folds the request into its
window's sums instead of queueing an event ("flush thread µs / event" is then per request folded, the window closed
early by each round's ``flush()``).

Rate limits (issue 9): the Flask extension and the WSGI middleware again with ``rate_limits`` on (a minute limit
and a monthly quota, high enough never to reject), on ``memory://`` and on a real ``redis-server`` this script
starts on a free loopback port (skipped without one); "vs its floor" is then the paired difference against the
same adapter without rate limits: the check, the headers and the cost in the event. Without ``rate_limits`` an
adapter pays one attribute check for rate limiting (the plain rows).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import platform
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import django  # noqa: E402
from django.conf import settings  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402

KEY = "sk_bench_key_0123456789"
ROUND = 900  # requests per variant and round: below max_batch_size, so the flush thread waits for flush()
SINK: deque[tuple[Any, ...]] = deque(maxlen=100_000)


class DroppingTransport:
    """Accepts every body at once: the batcher's flush thread still builds, validates and encodes each event."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def post(self, body: bytes, timeout: float | None = None) -> Any:
        from dodo_ingest.transport import Answer

        return Answer(200)

    def close(self) -> None:
        pass


def new_ingestion(**settings: Any) -> Any:
    from dodo_ingest import Ingestion

    return Ingestion(
        **settings,
        api_key=KEY,
        transport_factory=DroppingTransport,
        max_batch_size=1000,
        flush_interval=600.0,
        max_queue_size=1_000_000,
        max_requests_per_minute=None,  # the pipeline's cost, not Dodo's request budget
    )


# --- Flask (and the WSGI middleware around it) -----------------------------------------------------------------


def flask_app(variant: str, ingestion: Any) -> Any:
    import flask
    from flask import Flask, g, request

    from dodo_ingest.wsgi import DodoIngestMiddleware
    from dodo_ingest_flask import DodoIngest

    app = Flask(f"bench_{variant}")

    @app.get("/hello/<int:user_id>")
    def hello(user_id: int) -> dict[str, Any]:
        return {"hello": "world", "user": user_id}

    perf_counter = time.perf_counter
    if variant == "floor-hooks":

        @app.before_request
        def start() -> None:
            g.bench_started = perf_counter()

        @app.after_request
        def collect(response: flask.Response) -> flask.Response:
            rule = request.url_rule
            SINK.append(
                (rule.rule if rule else None, request.method, response.status_code, perf_counter() - g.bench_started)
            )
            return response

    elif variant == "floor-wsgi":
        inner = app.wsgi_app

        def floor(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            started = perf_counter()
            result = inner(environ, start_response)
            SINK.append((environ["PATH_INFO"], environ["REQUEST_METHOD"], perf_counter() - started))
            return result

        app.wsgi_app = floor  # type: ignore[method-assign]
    elif variant.startswith("dodo-flask"):
        DodoIngest(app, ingestion=ingestion, fallback_customer_id="cus_bench", **limits_of(variant))
    elif variant.startswith("dodo-wsgi"):
        app.wsgi_app = DodoIngestMiddleware(  # type: ignore[method-assign]
            app.wsgi_app, ingestion, fallback_customer_id="cus_bench", **limits_of(variant)
        )
    return app


LIMITS = "10000000/minute;1000000000/month"  # never reached: every check admits
REDIS_URL: str | None = None  # set by main() when a redis-server could be started


def limits_of(variant: str) -> dict[str, Any]:
    """The rate-limit settings of a variant: none, ``-mem`` (memory://) or ``-redis``."""
    if variant.endswith("-mem"):
        return {"rate_limits": LIMITS}
    if variant.endswith("-redis"):
        assert REDIS_URL is not None
        return {"rate_limits": LIMITS, "rate_limit_storage": REDIS_URL}
    return {}


# --- Django ------------------------------------------------------------------------------------------------------


def django_hello(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"hello": "world"})


urlpatterns = [path("hello/<int:user_id>", lambda request, user_id: django_hello(request))]


class FloorMiddleware:
    """The floor as a Django middleware: time the request, append a tuple to a deque."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        match = request.resolver_match
        SINK.append(
            (match.route if match else None, request.method, response.status_code, time.perf_counter() - started)
        )
        return response


def customer_for(request: HttpRequest, response: Any) -> str:
    return "cus_bench"


def django_app(variant: str) -> Any:
    from django.core.handlers.wsgi import WSGIHandler

    settings.MIDDLEWARE = {
        "django-bare": [],
        "django-floor": ["bench_overhead.FloorMiddleware"],
        "dodo-django": ["dodo_ingest_django.middleware.DodoIngestMiddleware"],
    }[variant]
    return WSGIHandler()


def configure_django() -> None:
    sys.modules.setdefault("bench_overhead", sys.modules[__name__])
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="bench_overhead",
        INSTALLED_APPS=["dodo_ingest_django"],
        MIDDLEWARE=[],
        USE_TZ=True,
        DODO_INGEST_API_KEY=KEY,
        DODO_INGEST_CUSTOMER_RESOLVER="bench_overhead.customer_for",
        DODO_INGEST_MAX_BATCH_SIZE=1000,
        DODO_INGEST_FLUSH_INTERVAL=600.0,
        DODO_INGEST_MAX_QUEUE_SIZE=1_000_000,
        DODO_INGEST_MAX_REQUESTS_PER_MINUTE=None,
        LOGGING_CONFIG=None,
    )
    django.setup()
    from dodo_ingest_django.conf import conf

    conf.reset()
    # The Django adapter builds its Ingestion from settings: give it the dropping transport too.
    from dodo_ingest import Ingestion
    from dodo_ingest_django import conf as conf_module

    original = conf_module.Ingestion

    class BenchIngestion(Ingestion):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, transport_factory=DroppingTransport, **kwargs)

    conf_module.Ingestion = BenchIngestion  # type: ignore[misc]
    assert original is Ingestion


# --- timing ------------------------------------------------------------------------------------------------------


def environ() -> dict[str, Any]:
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


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
    return lambda data: None


def run(app: Any, count: int) -> float:
    """CPU µs of this thread per request, over ``count`` calls of ``app`` (body iterated and closed, as a WSGI
    server does). CPU time, not wall time: on a shared machine the time this thread waits for a core is noise."""
    template = environ()
    perf_counter = time.thread_time
    started = perf_counter()
    for _ in range(count):
        env = template.copy()
        env["wsgi.input"] = io.BytesIO(b"")
        result = app(env, start_response)
        for _chunk in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return (perf_counter() - started) / count * 1e6


def flush_cost(ingestion: Any, events: int) -> float:
    """CPU µs per event of the flush thread building and encoding ``events`` queued events (this thread waits)."""
    thread = ingestion.batcher._thread
    if thread is None or thread.ident is None:  # not started yet: start it, and measure the next round
        assert ingestion.flush(timeout=60)
        return float("nan")
    clock = time.pthread_getcpuclockid(thread.ident)
    started = time.clock_gettime(clock)
    assert ingestion.flush(timeout=60)
    return (time.clock_gettime(clock) - started) / events * 1e6


def start_redis() -> tuple[Any, str, str] | None:
    """A throw-away redis-server (bench_ratelimit's), or None when none is installed."""
    import shutil

    if shutil.which("redis-server") is None:
        print("redis-server is not installed: the redis:// rows are skipped\n")
        return None
    from bench.bench_ratelimit import start_redis as start

    return start()


def main() -> int:
    global REDIS_URL
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    rounds = 7 if args.quick else 25
    configure_django()
    from dodo_ingest_django.conf import conf

    redis_server = start_redis()
    try:
        if redis_server is not None:
            REDIS_URL = redis_server[1]
        return measure(rounds, conf, quick=args.quick)
    finally:
        if redis_server is not None:
            import shutil

            process, _, workdir = redis_server
            process.terminate()
            process.wait(timeout=10)
            shutil.rmtree(workdir, ignore_errors=True)


def measure(rounds: int, conf: Any, *, quick: bool) -> int:
    limited = ["dodo-flask-mem", "dodo-wsgi-mem"]
    if REDIS_URL is not None:
        limited += ["dodo-flask-redis", "dodo-wsgi-redis"]
    ingestions = {name: new_ingestion() for name in ["dodo-flask", "dodo-wsgi", *limited]}
    ingestions["dodo-wsgi-rollup"] = new_ingestion(rollup_interval=60.0)
    apps: dict[str, Any] = {
        "flask-bare": flask_app("bare", None),
        "floor-hooks": flask_app("floor-hooks", None),
        "floor-wsgi": flask_app("floor-wsgi", None),
        "dodo-flask": flask_app("dodo-flask", ingestions["dodo-flask"]),
        "dodo-wsgi": flask_app("dodo-wsgi", ingestions["dodo-wsgi"]),
        **{name: flask_app(name, ingestions[name]) for name in [*limited, "dodo-wsgi-rollup"]},
        "django-bare": django_app("django-bare"),
        "django-floor": django_app("django-floor"),
        "dodo-django": django_app("dodo-django"),
    }
    ingestions["dodo-django"] = conf.ingestion
    for name, app in apps.items():  # warm up, and check that every dodo variant really meters
        run(app, 300)
        if name in ingestions:
            assert ingestions[name].flush(timeout=60)
            stats = ingestions[name].stats()
            assert stats.sent >= 300 or stats.rolled_up >= 300, (name, stats)
    samples: dict[str, list[float]] = {name: [] for name in apps}
    flush: dict[str, list[float]] = {name: [] for name in ingestions}
    order = list(apps)
    rng = random.Random(7)
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            samples[name].append(run(apps[name], ROUND))
            if name in ingestions:
                flush[name].append(flush_cost(ingestions[name], ROUND))

    def paired(name: str, against: str) -> float:
        return statistics.median(a - b for a, b in zip(samples[name], samples[against], strict=True))

    print(
        f"Python {platform.python_version()}, Flask {importlib.metadata.version('flask')}, "
        f"Django {django.get_version()}, {platform.machine()}; {rounds} interleaved rounds of {ROUND} requests "
        "per variant; medians of per-round paired differences\n"
    )
    rows = [
        ("bare Flask", "flask-bare", "flask-bare", None),
        ("floor: a deque append via Flask request hooks", "floor-hooks", "flask-bare", None),
        ("floor: a deque append via a WSGI wrapper (around Flask)", "floor-wsgi", "flask-bare", None),
        ("`DodoIngest` (Flask extension)", "dodo-flask", "flask-bare", "floor-hooks"),
        ("`DodoIngestMiddleware` (WSGI) around the Flask app", "dodo-wsgi", "flask-bare", "floor-wsgi"),
        ("`DodoIngest` + rate limits, memory:// (vs `DodoIngest`)", "dodo-flask-mem", "flask-bare", "dodo-flask"),
        ("`DodoIngest` + rate limits, redis:// (vs `DodoIngest`)", "dodo-flask-redis", "flask-bare", "dodo-flask"),
        ("WSGI + rate limits, memory:// (vs WSGI)", "dodo-wsgi-mem", "flask-bare", "dodo-wsgi"),
        ("WSGI + rate limits, redis:// (vs WSGI)", "dodo-wsgi-redis", "flask-bare", "dodo-wsgi"),
        ("WSGI + `rollup_interval=60` (vs WSGI)", "dodo-wsgi-rollup", "flask-bare", "dodo-wsgi"),
        ("bare Django", "django-bare", "django-bare", None),
        ("floor: a deque append in a Django middleware", "django-floor", "django-bare", None),
        ("`DodoIngestMiddleware` (Django)", "dodo-django", "django-bare", "django-floor"),
    ]
    print("| variant | µs / request | overhead vs bare | vs its floor | flush thread µs / event |")
    print("|---|---:|---:|---:|---:|")
    for label, name, bare, floor in rows:
        if name not in apps:
            continue
        overhead = f"{paired(name, bare):+.1f} µs" if name != bare else "—"
        versus = f"{paired(name, floor):+.1f} µs" if floor else ""
        measured = [v for v in flush.get(name, []) if v == v]  # without the NaN of a round that started the thread
        background = f"{statistics.median(measured):.1f}" if measured else ""
        print(f"| {label} | {statistics.median(samples[name]):.1f} | {overhead} | {versus} | {background} |")
    print("\ncommand: python bench/bench_overhead.py" + (" --quick" if quick else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
