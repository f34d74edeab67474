"""The durable spool in one process, against the local Dodo server: delivery through disk, outages longer than
memory holds, the size bound, replay of what a dead process left (expired and damaged parts included), a
rejected key, and batchers sharing one spool."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dodo_ingest import Batcher
from dodo_ingest.localserver import Fault, LocalDodoServer
from tests.helpers import wait_until
from tests.spool.helpers import event, host_dir, leave_segment, segments, spooled_events


def test_events_go_through_the_spool_once_with_their_ids_and_the_files_go_away(
    make_batch: Callable[..., Batcher], dodo_server: LocalDodoServer, tmp_path: Path
) -> None:
    batch = make_batch(spool_dir=tmp_path, max_size=100, flush_interval=0.2)
    for i in range(2500):
        assert batch.add("cus_spool", {"i": i})
    assert batch.flush(timeout=20)
    events = dodo_server.events()
    assert sorted(e["metadata"]["i"] for e in events) == list(range(2500))
    assert len({e["event_id"] for e in events}) == 2500
    stats = batch.stats()
    assert stats.spooled == 2500 and stats.sent == 2500 and stats.dropped == {}
    assert batch.shutdown()
    assert segments(tmp_path, dodo_server.url) == [], "delivered segments are removed"


def test_an_outage_longer_than_memory_holds_fills_the_disk_not_the_memory(
    make_batch: Callable[..., Batcher], dodo_server: LocalDodoServer, tmp_path: Path
) -> None:
    dodo_server.add_faults(Fault(status=503, retry_after="1", repeat=None))
    batch = make_batch(spool_dir=tmp_path, max_size=100, flush_interval=0.2, max_queue_size=200)
    accepted = 0
    for round_ in range(30):  # 3000 events through a queue of 200: only the spool can hold them
        for i in range(100):
            accepted += batch.add("cus_outage", {"i": round_ * 100 + i})
        assert wait_until(lambda: batch.stats().queued == 0, timeout=10)
    assert accepted == 3000
    assert wait_until(lambda: len(spooled_events(tmp_path, dodo_server.url)) == 3000, timeout=10)
    assert batch.stats().dropped == {}
    assert dodo_server.event_count() == 0
    dodo_server.clear_faults()
    assert dodo_server.wait_for_events(3000, timeout=60)
    assert sorted(e["metadata"]["i"] for e in dodo_server.events()) == list(range(3000))
    ok = [r for r in dodo_server.requests if r.status == 200]
    assert max(r.event_count for r in ok) == 1000, "the backlog goes out in full requests"
    assert len(ok) <= 5


def test_past_spool_max_bytes_new_events_are_dropped_as_spool_full(
    make_batch: Callable[..., Batcher], dodo_server: LocalDodoServer, tmp_path: Path
) -> None:
    dropped: list[tuple[int, str]] = []
    dodo_server.add_faults(Fault(status=503, retry_after="1", repeat=None))
    batch = make_batch(
        spool_dir=tmp_path,
        spool_max_bytes=1024 * 1024,
        flush_interval=0.2,
        on_drop=lambda events, reason: dropped.append((len(events), reason)),
    )
    for i in range(8000):  # about 200 bytes each: more than a MiB
        batch.add("cus_full", {"i": i, "pad": "x" * 40})
    assert wait_until(lambda: batch.stats().queued == 0 and batch.stats().in_flight == 0, timeout=10)
    stats = batch.stats()
    full = stats.dropped.get("spool_full", 0)
    assert 0 < full < 8000 and stats.spooled + full == 8000
    assert sum(n for n, reason in dropped if reason == "spool_full") == full
    on_disk = sum(p.stat().st_size for p in segments(tmp_path, dodo_server.url))
    assert on_disk <= 1024 * 1024
    dodo_server.clear_faults()
    assert dodo_server.wait_for_events(stats.spooled, timeout=60)
    assert batch.flush(timeout=20)
    assert dodo_server.event_count() == stats.spooled


def test_a_spool_left_behind_is_replayed_with_its_ids_and_timestamps_and_its_expired_part_dropped_loudly(
    make_batch: Callable[..., Batcher], dodo_server: LocalDodoServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    fresh = [event(f"evt_left_{i}", now - 600 + i, i=i) for i in range(50)]
    stale = [event(f"evt_stale_{i}", now - 7200 + i, i=i) for i in range(20)]
    leave_segment(tmp_path, dodo_server.url, stale[:10] + fresh[:25])
    leave_segment(tmp_path, dodo_server.url, stale[10:] + fresh[25:], pid=4_000_001)
    expired: list[int] = []
    batch = make_batch(spool_dir=tmp_path, on_drop=lambda events, reason: expired.append(len(events)))
    with caplog.at_level(logging.ERROR, logger="dodo_ingest"):
        assert batch.flush(timeout=20), "a flush replays the spool, even with nothing added"
    stored = {e["event_id"]: e for e in dodo_server.events()}
    assert set(stored) == {f"evt_left_{i}" for i in range(50)}
    from dodo_ingest.events import format_timestamp

    assert all(stored[f"evt_left_{i}"]["timestamp"] == format_timestamp(now - 600 + i) for i in range(50))
    assert batch.stats().dropped == {"expired": 20} and sum(expired) == 20
    assert any("older than Dodo's one-hour window" in r.getMessage() for r in caplog.records)
    assert segments(tmp_path, dodo_server.url) == []


def test_segments_left_by_several_dead_processes_go_out_in_requests_of_at_most_1000(
    make_batch: Callable[..., Batcher], dodo_server: LocalDodoServer, tmp_path: Path
) -> None:
    now = time.time()
    for n in range(3):
        leave_segment(tmp_path, dodo_server.url, [event(f"evt_{n}_{i}", now - 60, i=i) for i in range(700)], pid=n + 1)
    assert make_batch(spool_dir=tmp_path).flush(timeout=30)
    assert dodo_server.event_count() == 2100
    assert [r.status for r in dodo_server.requests] == [200, 200, 200]
    assert [r.event_count for r in dodo_server.requests] == [1000, 1000, 100]


def test_long_events_still_go_out_in_full_requests(
    make_batch: Callable[..., Batcher], dodo_server: LocalDodoServer, tmp_path: Path
) -> None:
    now = time.time()
    pad = "x" * 400  # 1000 of these take more than one read of a segment
    leave_segment(tmp_path, dodo_server.url, [event(f"evt_long_{i}", now - 60, i=i, pad=pad) for i in range(2000)])
    assert make_batch(spool_dir=tmp_path).flush(timeout=30)
    assert [r.event_count for r in dodo_server.requests] == [1000, 1000]


def test_a_damaged_spool_is_replayed_as_far_as_it_can_be_read_and_the_rest_is_reported(
    make_batch: Callable[..., Batcher], dodo_server: LocalDodoServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    now = time.time()
    path = leave_segment(tmp_path, dodo_server.url, [event(f"evt_d_{i}", now - 60, i=i) for i in range(30)])
    data = bytearray(path.read_bytes())
    lines = data.split(b"\n")
    lines[5] = lines[5][:30] + b"#" + lines[5][31:]  # a flipped byte in the middle (line 5 = event 4)
    damaged = b"\n".join(lines)
    path.write_bytes(damaged[: len(damaged) - 60])  # and cut short mid-line, as by a power loss
    batch = make_batch(spool_dir=tmp_path)
    with caplog.at_level(logging.ERROR, logger="dodo_ingest"):
        assert batch.flush(timeout=20)
    ids = {e["event_id"] for e in dodo_server.events()}
    assert ids == {f"evt_d_{i}" for i in range(29)} - {"evt_d_4"}
    assert batch.stats().dropped == {"spool_corrupt": 2}
    assert any("is damaged" in r.getMessage() for r in caplog.records)
    kept = list(host_dir(tmp_path, dodo_server.url).glob("*.damaged"))
    assert len(kept) == 1 and b"evt_d_4" in kept[0].read_bytes() and b"evt_d_29" in kept[0].read_bytes()


def test_a_rejected_key_keeps_the_spool_for_a_sender_with_a_working_key(
    make_batch: Callable[..., Batcher], dodo_server: LocalDodoServer, tmp_path: Path
) -> None:
    wrong = make_batch(spool_dir=tmp_path, api_key="sk_test_wrong_key_000", flush_interval=0.1)
    for i in range(40):
        wrong.add("cus_key", {"i": i})
    assert wait_until(lambda: any(r.status == 401 for r in dodo_server.requests), timeout=10)
    assert wrong.shutdown(timeout=2)
    assert wrong.stats().dropped == {}, "a rejected key drops nothing from the spool"
    assert len(spooled_events(tmp_path, dodo_server.url)) == 40
    right = make_batch(spool_dir=tmp_path)
    assert right.flush(timeout=20)
    assert sorted(e["metadata"]["i"] for e in dodo_server.events()) == list(range(40))


def test_batchers_that_share_a_spool_elect_one_sender(
    make_batch: Callable[..., Batcher], dodo_server: LocalDodoServer, tmp_path: Path
) -> None:
    batches = [make_batch(spool_dir=tmp_path, flush_interval=0.3, max_size=1000) for _ in range(3)]
    for round_ in range(5):
        for n, batch in enumerate(batches):
            for i in range(50):
                batch.add(f"cus_{n}", {"i": round_ * 50 + i})
    assert dodo_server.wait_for_events(750, timeout=30)
    assert all(b.flush(timeout=20) for b in batches)
    sent = [b.stats().sent for b in batches]
    assert sorted(sent) == [0, 0, 750], "one sender sent for all three"
    assert dodo_server.event_count() == 750


def test_a_spool_directory_removed_under_a_running_batcher_is_made_again(
    make_batch: Callable[..., Batcher], dodo_server: LocalDodoServer, tmp_path: Path
) -> None:
    batch = make_batch(spool_dir=tmp_path / "spool", flush_interval=0.1)
    batch.add("cus_rm", {"i": 0})
    assert dodo_server.wait_for_events(1, timeout=10)
    (tmp_path / "spool").rename(tmp_path / "gone")  # removed (in one step: the batcher keeps writing)
    shutil.rmtree(tmp_path / "gone", ignore_errors=True)
    for i in range(1, 20):
        batch.add("cus_rm", {"i": i})
    assert dodo_server.wait_for_events(20, timeout=20)
    assert batch.stats().dropped == {}


def test_an_unusable_spool_dir_is_a_configuration_error_at_start_up(
    make_batch: Callable[..., Batcher], tmp_path: Path
) -> None:
    from dodo_ingest.errors import ConfigurationError

    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigurationError, match="spool_dir: cannot use"):
        make_batch(spool_dir=tmp_path / "file" / "spool")
