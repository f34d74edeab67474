"""gunicorn ``--max-requests`` and a Dodo outage (issue 7, item 15).

Each worker's flush thread sends while the local Dodo server answers every ingest request with 503 (the
outage, made with its fault injection): its first batch fails and it waits to retry. Then Dodo comes back,
and the load goes on until both of those workers reach ``--max-requests`` and are recycled, still inside
that wait. A worker's exit drain must then make its attempt within its shutdown deadline: Dodo is up, so
nothing may be lost. (Dropping the waiting batch at shutdown without one more try loses every event the
worker had sent during the outage.)

Two outages: 503 with ``Retry-After: 120`` (a wait far beyond the 5 s shutdown deadline, set by the server),
and plain 503s repeated until the SDK's own backoff has grown to its cap. The test asserts no time: the
outage ends when the server has seen the failures, the load when gunicorn logged the recycles.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from dodo_ingest.localserver import Fault, LocalDodoServer
from tests.helpers import wait_until
from tests.servers.harness import (
    APPS,
    BackgroundLoad,
    ServerProcess,
    app_env,
    check_store,
    describe_requests,
    drive,
    gunicorn,
)

# Real server processes: slow (the `servers` tox environment); a generous per-test limit for a busy 2-core box.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MAX_REQUESTS = 50  # gunicorn adds a jitter in [0, 10]: a worker is recycled after 50-60 requests


def failed_posts(dodo_server: LocalDodoServer) -> int:
    return sum(1 for r in dodo_server.requests if r.status == 503)


@pytest.mark.parametrize(
    ("retry_after", "failures_per_worker"),
    [("120", 1), (None, 7)],  # 7 failures: the SDK's own backoff has reached its 30 s cap
    ids=["503-retry-after-120s", "503-backoff"],
)
def test_workers_recycled_after_an_outage_lose_nothing(
    dodo_server: LocalDodoServer, tmp_path: Path, retry_after: str | None, failures_per_worker: int
) -> None:
    options = ["--preload", "--max-requests", str(MAX_REQUESTS), "--max-requests-jitter", "10"]
    env = app_env(dodo_server, flush_interval="0.2")  # send during the run: the flush threads meet the outage
    dodo_server.add_faults(Fault(status=503, retry_after=retry_after, repeat=1_000_000))
    with ServerProcess(gunicorn(APPS["flask"], *options), env, tmp_path) as server:
        # The outage: a few requests (fewer than --max-requests in all), whose sends fail.
        served = drive(server.url, range(30))
        outage_workers = {s.pid for s in served.values()}
        # With Retry-After each of those workers fails once, then waits; without, the backoff grows. (Counted
        # per worker: when one worker took all 30 requests, it alone must reach the count.)
        wanted = failures_per_worker * len(outage_workers)
        assert wait_until(lambda: failed_posts(dodo_server) >= wanted, 120), describe_requests(dodo_server)
        dodo_server.clear_faults()  # Dodo is back
        with BackgroundLoad(server.url, start=100) as load:
            load.wait_for(
                lambda: all(f"Worker exiting (pid: {pid})" in server.output() for pid in outage_workers),
                120,
                "both workers of the outage to be recycled",
            )
            after = load.count()
            load.wait_for(lambda: load.count() >= after + 20, 60, "load on the replacements")
        served.update(load.stop())
        assert server.stop(signal.SIGTERM) == 0, server.output()
    check_store(dodo_server, served, server.output())
