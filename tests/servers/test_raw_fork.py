"""A fork that runs none of Python's at-fork hooks: libc's ``fork()`` called through ``ctypes`` (issue 7,
item 1), the way uWSGI forks its workers.

Parent and child each add events to the same batcher (the child inherits it with the parent's per-process
state: id source, queue, lock, session, threads); the local server must hold every one, under distinct ids.
The fork happens in :mod:`tests.servers.apps.raw_fork_job`, a process with no other thread awake.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dodo_ingest.localserver import LocalDodoServer
from tests.servers.apps.raw_fork_job import CHILD_OK, customer
from tests.servers.harness import Served, check_store, run_job

# Real server processes: slow (the `servers` tox environment); a generous per-test limit for a busy 2-core box.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.mark.parametrize("mode", ["thread-running", "never-used"])
def test_parent_and_child_of_a_raw_fork_deliver_every_event(
    dodo_server: LocalDodoServer, tmp_path: Path, mode: str
) -> None:
    job = run_job(dodo_server, "tests.servers.apps.raw_fork_job", mode)
    result = json.loads(job.stdout)
    assert result["child_status"] == CHILD_OK, (result, job.stderr)
    parent_seqs = [*range(20), *range(200, 230)] if mode == "thread-running" else list(range(200, 230))
    served = {s: Served(s, customer(s), result["parent"]) for s in parent_seqs}
    served.update({s: Served(s, customer(s), result["child"]) for s in range(100, 130)})
    check_store(dodo_server, served, job.stderr)
