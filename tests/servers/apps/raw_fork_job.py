"""Parent and child of a raw ``fork()`` bill on one batcher (issue 7, item 1).

``python -m tests.servers.apps.raw_fork_job MODE``: libc's ``fork()`` called through ``ctypes`` runs none of
Python's at-fork hooks (as uWSGI forks its workers, in C). ``MODE`` is ``thread-running`` (the batcher has
delivered events and its threads wait, idle, when the process forks) or ``never-used`` (the batcher exists
but has no thread yet). The parent bills requests 0..19 before the fork and 200..229 after it, the child
100..129; each delivers with ``flush()``. Prints ``{"child": pid, "child_status": code, "parent": pid}``.

This runs in a process of its own so that no other thread wakes up around the fork: a thread waiting for
the GIL at that moment can leave the child's interpreter stuck, whatever the SDK does.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys

from dodo_ingest import Batcher, Ingestion, create_batch
from tests.helpers import wait_until
from tests.servers.apps.common import TOKENS

CHILD_OK = 0
CHILD_NOT_DELIVERED = 3


def customer(seq: int) -> str:
    return TOKENS[sorted(TOKENS)[seq % len(TOKENS)]]


def bill(batch: Batcher, seqs: range) -> None:
    for seq in seqs:
        assert batch.add(customer(seq), {"seq": seq, "pid": os.getpid()})


def raw_fork() -> int:
    """libc ``fork()``; ``PyDLL`` keeps the GIL across the call, so the child starts holding it."""
    fork = ctypes.PyDLL(None).fork
    fork.restype = ctypes.c_int
    fork.argtypes = []
    pid: int = fork()
    if pid < 0:
        raise OSError(ctypes.get_errno(), "fork() failed")
    return pid


def wait_for_child(pid: int, timeout: float) -> int:
    """The child's exit code; it is killed (code -9) if still running after ``timeout`` (stuck)."""
    status: list[int] = []

    def exited() -> bool:
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status.append(code)
        return bool(done)

    if not wait_until(exited, timeout, interval=0.02):
        os.kill(pid, signal.SIGKILL)
        status.append(os.waitpid(pid, 0)[1])
    return os.waitstatus_to_exitcode(status[0])


def main(mode: str) -> dict[str, int]:
    batch = create_batch(Ingestion(), max_size=1000, flush_interval=30.0)
    if mode == "thread-running":
        bill(batch, range(20))
        assert batch.flush(timeout=20)
    pid = raw_fork()
    if pid == 0:
        code = CHILD_NOT_DELIVERED
        try:
            bill(batch, range(100, 130))
            if batch.flush(timeout=20):
                code = CHILD_OK
        finally:
            os._exit(code)  # leave like a worker that is killed after its work: no cleanup of the parent's
    bill(batch, range(200, 230))
    assert batch.flush(timeout=20)
    return {"child": pid, "child_status": wait_for_child(pid, 60), "parent": os.getpid()}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
