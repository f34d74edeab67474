"""A batch job that bills from ``multiprocessing.Pool`` workers (issue 7, item 14).

``python -m tests.servers.apps.pool_job METHOD ENDING N``: a pool of 2 workers (start method ``fork`` or
``spawn``) bills requests ``0..N-1``, one event each, on the module's batcher; the parent bills ``N..N+9``
itself. ``ENDING`` is ``with-block`` (``with Pool() as pool``, whose exit calls ``terminate()``: SIGTERM to
the workers) or ``close-join`` (the workers finish on their own). Prints ``{seq: pid}`` as JSON.
Nothing is flushed by time (``flush_interval`` 30 s): each process's exit must deliver what it holds.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys

from dodo_ingest import Ingestion, create_batch
from tests.servers.apps.common import TOKENS

batch = create_batch(Ingestion(), max_size=1000, flush_interval=30.0)


def bill(seq: int) -> tuple[int, int]:
    """Bill request ``seq`` to its customer; return ``(seq, pid)``."""
    customer = TOKENS[sorted(TOKENS)[seq % len(TOKENS)]]
    assert batch.add(customer, {"seq": seq, "pid": os.getpid()})
    return seq, os.getpid()


def main(method: str, ending: str, n: int) -> dict[int, int]:
    context = multiprocessing.get_context(method)
    if ending == "with-block":
        with context.Pool(2) as pool:
            done = pool.map(bill, range(n), chunksize=1)
    else:
        pool = context.Pool(2)
        done = pool.map(bill, range(n), chunksize=1)
        pool.close()
        pool.join()
    done += [bill(seq) for seq in range(n, n + 10)]
    return dict(done)


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
