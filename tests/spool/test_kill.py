"""``kill -9``: a process killed mid-run loses no event accepted more than the commit window before the kill, and
the next process replays what it left; a killed host sender is replaced within seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from dodo_ingest import Batcher
from dodo_ingest.localserver import Fault, LocalDodoServer
from tests.conftest import TEST_KEY
from tests.helpers import wait_until
from tests.spool.helpers import segments, spooled_events

ROOT = Path(__file__).resolve().parents[2]
#: The documented bound: an event accepted more than this long before a kill -9 is on disk.
LOSS_WINDOW = 0.1

PRODUCER = """
import os, sys, threading, time
from dodo_ingest import Ingestion

name = sys.argv[2]
batch = Ingestion(spool_dir=sys.argv[1], shutdown_timeout=2.0).create_batch(max_size=100, flush_interval=0.2)
out = os.fdopen(1, "w", buffering=1)
pause = threading.Event()
limit = int(sys.argv[3]) if len(sys.argv) > 3 else 10**9
for i in range(limit):
    batch.add("cus_" + name, {"i": i, "producer": name})
    out.write(f"{i} {time.time()!r}\\n")  # after add() returned: the event is accepted
    if i % 10 == 9:
        pause.wait(0.002)
"""


def instant(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))


class Producer:
    """A process adding events to a batcher with a spool, as fast as it can; a thread collects the ``(i,
    accepted_at)`` lines it prints after each ``add()`` returned."""

    def __init__(self, server: LocalDodoServer, spool_dir: Path, name: str, log: Path) -> None:
        env = {
            **os.environ,
            "DODO_PAYMENTS_API_KEY": TEST_KEY,
            "DODO_PAYMENTS_BASE_URL": server.url,
            "PYTHONPATH": str(ROOT),
        }
        self.name = name
        self.log = log
        self.accepted: list[tuple[int, float]] = []
        with log.open("w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(PRODUCER), str(spool_dir), name],
                env=env,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            parts = line.split()
            if len(parts) == 2 and line.endswith("\n"):  # the last line may be cut short by a kill
                self.accepted.append((int(parts[0]), float(parts[1])))

    def wait_for(self, count: int) -> None:
        assert wait_until(lambda: len(self.accepted) >= count, timeout=30), self.log.read_text()[-2000:]

    def kill(self) -> float:
        """SIGKILL; returns the time of the kill."""
        killed_at = time.time()
        os.kill(self.process.pid, signal.SIGKILL)
        self.finish()
        assert self.process.returncode == -signal.SIGKILL
        return killed_at

    def stop(self) -> None:
        """SIGTERM: an ordinary stop, drained."""
        self.process.send_signal(signal.SIGTERM)
        self.finish()
        assert self.process.returncode in (0, -signal.SIGTERM), self.log.read_text()[-2000:]

    def finish(self) -> None:
        self.process.wait(timeout=30)
        self._reader.join(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("dodo", ["down", "up"])
def test_kill_9_loses_nothing_older_than_the_window_and_the_next_process_replays_the_rest(
    dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher], tmp_path: Path, dodo: str
) -> None:
    if dodo == "down":  # nothing is delivered before the kill: every event must come back from the disk
        dodo_server.add_faults(Fault(status=503, retry_after="1", repeat=None))
    producer = Producer(dodo_server, tmp_path, "kill", tmp_path / "producer.log")
    producer.wait_for(4000)
    killed_at = producer.kill()
    accepted = producer.accepted
    on_disk = {e["metadata"]["i"]: e for e in (json.loads(r.json) for r in spooled_events(tmp_path, dodo_server.url))}
    dodo_server.clear_faults()

    replay = make_batch(spool_dir=tmp_path)  # the next process with the same spool_dir
    assert replay.flush(timeout=60)
    stored = {e["metadata"]["i"]: e for e in dodo_server.events(customer_id="cus_kill")}
    assert len(stored) == dodo_server.event_count(), "one event per id"
    assert set(stored) <= {i for i, _ in accepted} | set(on_disk)
    for i, event in stored.items():  # the ids and timestamps fixed when the events were created
        assert event["event_id"] == on_disk[i]["event_id"]
        assert instant(event["timestamp"]) == instant(on_disk[i]["timestamp"])
    lost = [(i, at) for i, at in accepted if i not in stored]
    late = [killed_at - at for _, at in lost]
    print(f"\n{dodo}: {len(accepted)} accepted, {len(lost)} lost, all within {max(late, default=0) * 1000:.1f} ms")
    assert all(gap < LOSS_WINDOW for gap in late), f"lost events accepted {max(late):.3f} s before the kill"
    if dodo == "down":
        assert not any(r.status == 200 for r in dodo_server.requests[:1]), "the killed process delivered nothing"
    assert segments(tmp_path, dodo_server.url) == [], "the replay delivered and removed the dead process's segment"


@pytest.mark.slow
def test_a_killed_host_sender_is_replaced_within_seconds_and_nothing_is_lost(
    dodo_server: LocalDodoServer, make_batch: Callable[..., Batcher], tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    producers = {name: Producer(dodo_server, spool_dir, name, tmp_path / f"{name}.log") for name in "abc"}
    for producer in producers.values():
        producer.wait_for(300)
    lock = spool_dir / next(p.name for p in spool_dir.iterdir()) / "sender.lock"
    assert wait_until(lambda: lock.exists() and lock.read_text().strip().isdigit(), timeout=10)
    leader = next(p for p in producers.values() if p.process.pid == int(lock.read_text()))
    leader.wait_for(len(leader.accepted) + 2000)
    killed_at = leader.kill()
    survivors = [p for p in producers.values() if p is not leader]
    assert wait_until(lambda: lock.read_text().strip() in {str(p.process.pid) for p in survivors}, timeout=10)

    def delivered(producer: Producer) -> set[int]:
        return {e["metadata"]["i"] for e in dodo_server.events(customer_id=f"cus_{producer.name}")}

    # the new sender replays the dead one's segment: everything accepted before the window
    before_window = {i for i, at in leader.accepted if killed_at - at >= LOSS_WINDOW}
    assert wait_until(lambda: before_window <= delivered(leader), timeout=30)
    for producer in survivors:
        producer.wait_for(len(producer.accepted) + 1000)
        producer.stop()
    assert make_batch(spool_dir=spool_dir).flush(timeout=60)  # the next process sends what the last one left
    for producer in survivors:
        assert {i for i, _ in producer.accepted} <= delivered(producer), f"{producer.name} lost events"
    received = sum(r.event_count for r in dodo_server.requests if r.status == 200)
    assert received - dodo_server.event_count() <= 1000, "at most the killed sender's request in flight is sent twice"
