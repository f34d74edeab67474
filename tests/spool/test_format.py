"""The spool's file format: records, damage, acks, segments and their size bound (unit tests on real files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dodo_ingest import spool
from dodo_ingest.events import encode_event, format_timestamp


def event_json(i: int, created: float | None = None) -> tuple[str, float]:
    """An event as the flush thread encodes it (every one of the same length, for the size tests)."""
    created = 1_700_000_000.125 if created is None else created
    return encode_event(f"evt_{i:06d}", "cus_1", "api_call", format_timestamp(created), {"i": i % 10}), created


def test_records_round_trip_with_their_ids_and_creation_times() -> None:
    events = [event_json(i) for i in range(3)]
    data = spool.HEADER + b"".join(spool.encode_record(j, c) for j, c in events)
    records, damage, consumed = spool.parse_records(data, 0, final=True)
    assert damage == [] and consumed == len(data)
    assert [(r.json, r.created) for r in records] == events
    assert records[-1].end == len(data)
    assert spool.event_id_of(records[0].json) == '"evt_000000"'


def test_a_damaged_line_is_skipped_and_reported_and_its_neighbours_are_read() -> None:
    lines = [spool.encode_record(*event_json(i)) for i in range(3)]
    broken = lines[1][:20] + b"X" + lines[1][21:]  # one flipped byte: the checksum no longer matches
    data = lines[0] + broken + lines[2]
    records, damage, _ = spool.parse_records(data, 100, final=True)
    assert [r.json for r in records] == [spool.parse_records(line, 0, True)[0][0].json for line in (lines[0], lines[2])]
    assert damage == [spool.Damage(100 + len(lines[0]), broken)]


def test_an_unterminated_last_line_is_a_write_in_progress_until_the_writer_is_gone() -> None:
    whole = spool.encode_record(*event_json(0))
    torn = spool.encode_record(*event_json(1))[:-30]
    records, damage, consumed = spool.parse_records(whole + torn, 0, final=False)
    assert len(records) == 1 and damage == [] and consumed == len(whole)
    records, damage, consumed = spool.parse_records(whole + torn, 0, final=True)
    assert len(records) == 1 and damage == [spool.Damage(len(whole), torn)] and consumed == len(whole + torn)


def test_zeros_after_a_power_loss_are_damage_not_records() -> None:
    data = spool.encode_record(*event_json(0)) + b"\0" * 4096
    records, damage, _ = spool.parse_records(data, 0, final=True)
    assert len(records) == 1 and len(damage) == 1 and damage[0].data == b"\0" * 4096


def test_acks_survive_and_a_damaged_ack_means_start_again(tmp_path: Path) -> None:
    segment = str(tmp_path / "seg-00000000000000000001-1-0a0b0c0d.log")
    assert spool.read_ack(segment) == 0
    spool.write_ack(segment, 12345)
    assert spool.read_ack(segment) == 12345
    with open(spool.ack_path(segment), "r+b") as ack:
        ack.write(b"\xff")
    assert spool.read_ack(segment) == 0


def test_the_destination_directory_is_named_after_the_host() -> None:
    assert spool.destination_name("https://live.dodopayments.com") == "live.dodopayments.com"
    assert spool.destination_name("http://127.0.0.1:8765/") == "127.0.0.1_8765"
    assert spool.destination_name("http://[::1]:80") == "___1__80"


def test_a_writer_commits_locks_its_segment_and_removes_it_empty(tmp_path: Path) -> None:
    directory = spool.SpoolDirectory(str(tmp_path), "http://127.0.0.1:1")
    directory.create()
    writer = spool.SegmentWriter(directory, max_bytes=1 << 20)
    assert writer.append([event_json(i) for i in range(10)]) == 10
    [segment] = directory.segments()
    cursor = spool.SegmentCursor(segment)
    assert not cursor.try_seal(), "the writer holds its segment's lock"
    records, damage = cursor.read(spool.DAMAGE_KEPT, 1000, 1 << 20)
    assert len(records) == 10 and damage == []
    writer.close()
    assert cursor.try_seal(), "a closed segment is sealed"
    cursor.close()
    empty = spool.SegmentWriter(directory, max_bytes=1 << 20)
    empty._rotate()
    assert len(directory.segments()) == 2
    empty.close()
    assert directory.segments() == [segment], "an empty segment is removed when sealed"


def test_the_size_bound_covers_every_segment_of_the_host(tmp_path: Path) -> None:
    directory = spool.SpoolDirectory(str(tmp_path), "http://127.0.0.1:1")
    directory.create()
    one = event_json(0)
    line = len(spool.encode_record(*one))
    first = spool.SegmentWriter(directory, max_bytes=len(spool.HEADER) * 2 + line * 15)
    second = spool.SegmentWriter(directory, max_bytes=len(spool.HEADER) * 2 + line * 15)
    assert first.append([event_json(i) for i in range(10)]) == 10
    # the second writer sees the first one's ten lines: five more fit
    assert second.append([event_json(i) for i in range(10)]) == 5
    assert second.append([event_json(0)]) == 0
    assert directory.used_bytes() <= len(spool.HEADER) * 2 + line * 15
    first.close()
    second.close()


def test_a_forked_child_closes_the_parents_spool_files_without_unlocking_them(tmp_path: Path) -> None:
    directory = spool.SpoolDirectory(str(tmp_path), "http://127.0.0.1:1")
    directory.create()
    writer = spool.SegmentWriter(directory, max_bytes=1 << 20)
    writer.append([event_json(0)])
    [segment] = directory.segments()
    pid = os.fork()
    if pid == 0:  # the child: the at-fork hook closed its copy; the parent's lock must still hold
        cursor = spool.SegmentCursor(segment)
        os._exit(0 if not cursor.try_seal() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    cursor = spool.SegmentCursor(segment)
    assert not cursor.try_seal(), "the child's exit did not take the parent's lock with it"
    writer.close()
    assert cursor.try_seal()
    cursor.close()


@pytest.mark.parametrize("size", [10, 100_000])
def test_a_cursor_reads_in_pieces_and_never_splits_a_line(tmp_path: Path, size: int) -> None:
    directory = spool.SpoolDirectory(str(tmp_path), "http://127.0.0.1:1")
    directory.create()
    writer = spool.SegmentWriter(directory, max_bytes=1 << 30)
    events = [event_json(i) for i in range(2500)]
    assert writer.append(events) == 2500
    cursor = spool.SegmentCursor(directory.segments()[0])
    seen: list[str] = []
    while batch := cursor.read(size, 1000, 1 << 20)[0]:
        assert len(batch) <= 1000
        seen += [r.json for r in batch]
    assert seen == [j for j, _ in events]
    writer.close()
    cursor.close()


def test_the_pending_count_is_exact_for_small_spools_and_estimated_for_large_ones(tmp_path: Path) -> None:
    directory = spool.SpoolDirectory(str(tmp_path), "http://127.0.0.1:1")
    directory.create()
    writer = spool.SegmentWriter(directory, max_bytes=1 << 30)
    writer.append([event_json(i) for i in range(3000)])
    [segment] = directory.segments()
    assert directory.pending_events() == 3000
    line = len(spool.encode_record(*event_json(0)))
    spool.write_ack(segment, len(spool.HEADER) + 1000 * line)
    assert directory.pending_events() == 2000
    assert directory.pending_events(exact_up_to=100 * line) == 2000  # estimated from the first 100 lines
    writer.close()
