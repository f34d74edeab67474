"""Helpers of the spool tests: the files of a spool, and segments as a dead process would leave them."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dodo_ingest import spool
from dodo_ingest.events import encode_event, format_timestamp


def host_dir(spool_dir: Path, url: str) -> Path:
    """The directory of the local server's host inside ``spool_dir``."""
    return spool_dir / spool.destination_name(url)


def segments(spool_dir: Path, url: str) -> list[Path]:
    """The segments in the spool, oldest first."""
    return [Path(p) for p in spool.SpoolDirectory(str(spool_dir), url).segments()]


def spooled_events(spool_dir: Path, url: str) -> list[spool.Record]:
    """Every readable record in the spool (delivered or not)."""
    records: list[spool.Record] = []
    for path in segments(spool_dir, url):
        records += spool.parse_records(path.read_bytes(), 0, final=True)[0]
    return records


def leave_segment(spool_dir: Path, url: str, events: list[tuple[str, float]], pid: int = 4_000_000) -> Path:
    """A segment as a dead process leaves it: written, never delivered, nobody holding its lock."""
    directory = host_dir(spool_dir, url)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"seg-{time.time_ns():020d}-{pid}-{os.urandom(4).hex()}.log"
    path.write_bytes(spool.HEADER + b"".join(spool.encode_record(j, c) for j, c in events))
    return path


def event(event_id: str, created: float, customer_id: str = "cus_replay", **metadata: int | str) -> tuple[str, float]:
    """An event's JSON as the flush thread encodes it, with its creation time."""
    return encode_event(event_id, customer_id, "api_call", format_timestamp(created), dict(metadata)), created
