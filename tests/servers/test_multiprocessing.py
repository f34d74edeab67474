"""``multiprocessing.Pool`` workers bill, and the pool ends as pools end (issue 7, item 14).

``with Pool() as pool:`` ends in ``terminate()``: SIGTERM to every worker, whose default action skips
``atexit`` and multiprocessing's finalizers alike. What the workers queued must still be delivered; so
must it when the pool is closed and joined. Both start methods a Linux program uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dodo_ingest.localserver import LocalDodoServer
from tests.servers.apps.common import TOKENS
from tests.servers.harness import Served, check_store, run_job

# Real server processes: slow (the `servers` tox environment); a generous per-test limit for a busy 2-core box.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

N = 60


@pytest.mark.parametrize("ending", ["with-block", "close-join"])
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_workers_deliver_what_they_billed(
    dodo_server: LocalDodoServer, tmp_path: Path, method: str, ending: str
) -> None:
    job = run_job(dodo_server, "tests.servers.apps.pool_job", method, ending, str(N))
    pids = {int(seq): pid for seq, pid in json.loads(job.stdout).items()}
    assert pids[N] not in {pids[s] for s in range(N)}, "the pool workers billed requests 0..N-1"
    served = {s: Served(s, TOKENS[sorted(TOKENS)[s % len(TOKENS)]], pid) for s, pid in pids.items()}
    check_store(dodo_server, served, job.stderr)
