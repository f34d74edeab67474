"""The durable spool on disk (opt-in: ``spool_dir``): accepted events wait in files until Dodo has them.

Layout, one directory per Dodo host, so that a test and a live deployment on one machine never mix::

    <spool_dir>/<host>/                  e.g. live.dodopayments.com/, 127.0.0.1_8765/
        sender.lock                      flock: held by the host's one sender (see dodo_ingest.host_sender)
        seg-<ns>-<pid>-<rand>.log        an append-only segment; its one writer (a batcher) holds a flock on it
        seg-<ns>-<pid>-<rand>.ack        how far the sender has delivered that segment (a byte offset)
        seg-<ns>-<pid>-<rand>.damaged    bytes of a damaged segment that could not be read, kept for inspection

**Records.** A segment starts with the line ``#dodo-ingest-spool v1``; then one line per event, ASCII::

    <crc32 of the rest, 8 hex digits> <creation time, epoch seconds> <the event's JSON, exactly as sent>\\n

The JSON is the one the flush thread encoded, with its ``event_id`` and ``timestamp`` fixed at creation, so a
replay sends identical events and Dodo, which ignores ids it already has, bills each once. (Event JSON is
ASCII and has no raw newline: :func:`dodo_ingest.events.encode_event` escapes both.)

**Writing** (:class:`SegmentWriter`, on the flush thread): a group commit is one ``write()`` of every event taken
since the last one, at most :data:`COMMIT_INTERVAL` after the oldest of them was accepted. Once ``write()``
returns, the events survive the death of the process (``kill -9``, the OOM killer, a crash); a thread of the
writer's own then fsyncs them (:class:`_Syncer`), so that they also survive a power loss, without a slow disk
ever holding back the next commit. A segment is sealed (closed, its lock released) after
:data:`SEGMENT_BYTES` or :data:`SEGMENT_SECONDS`, or when its writer stops; a dead writer's lock is released by
the kernel, which is how the sender tells a finished segment from one still growing.

**Reading** (:func:`parse_records`, :class:`SegmentCursor`, on the sender): a line whose checksum or shape is
wrong is *damage*: it is skipped and reported, the lines around it are sent. An unterminated last line is a
write in progress while the writer lives, and damage (a write cut short) once it is gone. Nothing in a spool
file can raise into the host app: the sender logs, counts (``spool_corrupt``) and moves on.

**Why segments, not SQLite** (``python bench/bench_spool.py write``, this project's 2-core VM, ext4): both commit
far faster than one key's budget can carry events (about 1,700/s). 100-event commits, fsynced, write about 140k
events/s to segments (p50 0.6-0.7 ms, p99 1.6-4 ms; 0.16-0.25 ms without the fsync, mostly the checksums), and
185k-200k to SQLite in WAL mode with ``synchronous=FULL`` (p50 0.4 ms, but p99 6.6-6.9 ms: its checkpoints, with
a single writer). Segments win on what matters beyond speed: every file has one writer, so no process's commit
ever waits on another's lock (one SQLite database serializes every writer on the host and the sender's
deletes), and the fsync runs beside the next write instead of before it; a damaged file is detected line by
line and its readable part replayed, where a damaged SQLite file is "malformed" as a whole; and a delivered
segment goes with one ``unlink``, with no vacuum or checkpoint to starve.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import struct
import threading
import time
import weakref
import zlib
from collections.abc import Iterable, Sequence
from typing import NamedTuple

HEADER = b"#dodo-ingest-spool v1\n"
#: Events are written to the spool at most this long (seconds) after they were accepted.
COMMIT_INTERVAL = 0.05
#: A segment is sealed once it holds this many bytes ...
SEGMENT_BYTES = 4 * 1024 * 1024
#: ... or is this old (seconds): a delivered segment can only be removed once sealed.
SEGMENT_SECONDS = 60.0
#: Bytes of damage kept per segment in its ``.damaged`` file.
DAMAGE_KEPT = 1024 * 1024
#: Seconds a measurement of the spool's size on disk is reused by a writer.
SIZE_REFRESH = 0.5

_SEGMENT_NAME = re.compile(r"seg-\d{20}-\d+-[0-9a-f]{8}\.log")
_ACK = struct.Struct("<QI")  # offset, crc32 of the offset


class Record(NamedTuple):
    """One event read from a segment: its JSON, its creation time, and the offset just past its line."""

    json: str
    created: float
    end: int


class Damage(NamedTuple):
    """A stretch of a segment that could not be read: where it starts and its bytes."""

    offset: int
    data: bytes


def encode_record(json: str, created: float) -> bytes:
    """One spool line for an event (``json`` is ASCII without newlines)."""
    body = f"{created!r} {json}".encode("ascii")
    return b"%08x %s\n" % (zlib.crc32(body), body)


def parse_records(data: bytes, base: int, final: bool) -> tuple[list[Record], list[Damage], int]:
    """The records and damage in ``data``, the bytes of a segment from offset ``base``.

    Returns ``(records, damage, consumed)``: ``consumed`` bytes were read (``base + consumed`` is where the next
    read starts). ``final``: the writer is gone, so an unterminated last line is damage; otherwise it is a
    write in progress and is left for the next read.
    """
    records: list[Record] = []
    damage: list[Damage] = []
    position = 0
    size = len(data)
    while position < size:
        newline = data.find(b"\n", position)
        if newline < 0:
            if final:
                damage.append(Damage(base + position, data[position:]))
                position = size
            break
        line = data[position:newline]
        end = newline + 1
        if line == HEADER[:-1]:
            pass
        else:
            record = _parse_line(line, base + end)
            if record is None:
                damage.append(Damage(base + position, data[position:end]))
            else:
                records.append(record)
        position = end
    return records, damage, position


def _parse_line(line: bytes, end: int) -> Record | None:
    if len(line) < 12 or line[8:9] != b" ":
        return None
    try:
        crc = int(line[:8], 16)
    except ValueError:
        return None
    body = line[9:]
    if zlib.crc32(body) != crc:
        return None
    created_text, _, json = body.partition(b" ")
    try:
        created = float(created_text)
        text = json.decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    if not text.startswith("{"):
        return None
    return Record(text, created, end)


def event_id_of(json: str) -> str:
    """The ``event_id`` of an event's JSON, still quoted (equal ids have equal encodings): every event JSON
    the SDK writes begins with it, and no quoted string can contain ``","customer_id":`` unescaped."""
    end = json.find(',"customer_id":')
    return json[12:end] if json.startswith('{"event_id":') and end > 0 else json


def destination_name(host: str) -> str:
    """The directory of a Dodo host inside ``spool_dir``: ``https://live.dodopayments.com`` ->
    ``live.dodopayments.com``, ``http://127.0.0.1:8765`` -> ``127.0.0.1_8765``."""
    bare = host.split("://", 1)[-1].rstrip("/")
    return re.sub(r"[^A-Za-z0-9.-]", "_", bare) or "default"


# --- files owned by a process: closed (never unlocked) in a forked child ----------------------------------

_open_files: weakref.WeakSet[OwnedFile] = weakref.WeakSet()
_open_files_lock = threading.Lock()


class OwnedFile:
    """A file descriptor that belongs to the process that opened it.

    A forked child shares the parent's open file description, and with it the parent's flock: the child must
    close its copy (so that the lock goes when the parent goes) and never unlock it (which would take the lock
    from the parent). :func:`close_inherited` does that, from an at-fork hook and from the batcher's pid check.
    """

    __slots__ = ("__weakref__", "fd", "path", "pid")

    def __init__(self, path: str, flags: int, mode: int = 0o600) -> None:
        self.path = path
        self.fd = os.open(path, flags | os.O_CLOEXEC, mode)
        self.pid = os.getpid()
        with _open_files_lock:
            _open_files.add(self)

    def try_lock(self) -> bool:
        """Take an exclusive flock without waiting; False when another open file holds it."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def still_there(self) -> bool:
        """Whether its path still names this file (not removed, or moved away with its directory)."""
        try:
            named, opened = os.stat(self.path), os.fstat(self.fd)
        except OSError:
            return False
        return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)

    def close(self) -> None:
        """Close it (which releases its lock, if this process opened it). Idempotent."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
            with _open_files_lock:
                _open_files.discard(self)


def close_inherited() -> None:
    """Close every spool file this process inherited from its parent (their locks stay the parent's)."""
    pid = os.getpid()
    with _open_files_lock:
        inherited = [f for f in _open_files if f.pid != pid]
    for owned in inherited:
        owned.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=close_inherited)


# --- the directory ---------------------------------------------------------------------------------------


class SpoolDirectory:
    """One host's directory in ``spool_dir``: its segments, their size, its sender lock."""

    def __init__(self, spool_dir: str, host: str) -> None:
        self.path = os.path.join(spool_dir, destination_name(host))
        self.lock_path = os.path.join(self.path, "sender.lock")

    def __repr__(self) -> str:
        return f"<SpoolDirectory {self.path}>"

    def create(self) -> None:
        """Create the directory (and ``spool_dir``) if needed, readable by this user only; raise OSError."""
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        probe = os.path.join(self.path, f".probe-{os.getpid()}")
        with open(probe, "wb"):
            pass
        os.unlink(probe)

    def segments(self) -> list[str]:
        """Paths of the segments, oldest first."""
        try:
            names = [e.name for e in os.scandir(self.path) if _SEGMENT_NAME.fullmatch(e.name)]
        except FileNotFoundError:
            return []
        return [os.path.join(self.path, name) for name in sorted(names)]

    def used_bytes(self) -> int:
        """Bytes of all segments on disk (delivered parts of segments not yet removed included)."""
        total = 0
        for path in self.segments():
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(path).st_size
        return total

    def pending_events(self, exact_up_to: int = 16 * 1024 * 1024) -> int:
        """Events not yet delivered, counted from the files (one line each) while they hold at most
        ``exact_up_to`` undelivered bytes, estimated from the average line beyond that: for reports at exit."""
        pending, sampled, lines = 0, 0, 0
        for path in self.segments():
            offset = read_ack(path)
            try:
                with open(path, "rb") as segment:
                    size = os.fstat(segment.fileno()).st_size
                    if offset == 0:
                        offset = len(segment.readline())  # the header
                    pending += max(0, size - offset)
                    if sampled < exact_up_to:
                        segment.seek(offset)
                        data = segment.read(exact_up_to - sampled)
                        sampled += len(data)
                        lines += data.count(b"\n")
            except FileNotFoundError:
                continue
        if pending <= sampled or not lines:
            return lines
        return round(pending * lines / sampled)

    def sync(self) -> None:
        """fsync the directory itself, so that a new segment's name survives a power loss."""
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


# --- writing ----------------------------------------------------------------------------------------------


class _Syncer:
    """fsyncs a writer's segments in a thread of its own, so that a slow disk never holds back the next
    ``write()``. A commit survives the death of its process once written; it survives a power loss once this
    thread has fsynced it, normally within a millisecond (the disk's own latency when the disk is busy). It also
    seals retired segments (fsync, then close: which releases their lock) and fsyncs the directory after a new
    segment appears.
    """

    def __init__(self, directory: SpoolDirectory) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._dirty: list[OwnedFile] = []  # written since their last fsync
        self._retired: list[OwnedFile] = []  # sealed: fsync, then close
        self._new_name = False
        self._busy = False
        self._thread: threading.Thread | None = None

    def written(self, owned: OwnedFile, *, new: bool = False) -> None:
        """``owned`` was written to (``new``: it was just created: fsync the directory too)."""
        with self._work:
            if owned not in self._dirty:
                self._dirty.append(owned)
            self._new_name = self._new_name or new
            self._work.notify()
        self._ensure_thread()

    def retire(self, owned: OwnedFile) -> None:
        """Seal ``owned`` once everything written to it is on disk."""
        with self._work:
            self._retired.append(owned)
            self._work.notify()
        self._ensure_thread()

    def drain(self, timeout: float) -> None:
        """Wait until everything written so far is fsynced and every retired segment sealed."""
        with self._work:
            self._work.wait_for(lambda: not (self._dirty or self._retired or self._busy), timeout)

    def _ensure_thread(self) -> None:
        with self._work:
            if self._thread is not None and self._thread.is_alive():
                return
            thread = self._thread = threading.Thread(target=self._run, name="dodo-ingest-spool-fsync", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # at interpreter shutdown no thread can start: sync in the calling thread
            with self._work:
                self._thread = None
            self._sync_once()

    def _run(self) -> None:
        while True:
            with self._work:
                self._work.wait_for(lambda: bool(self._dirty or self._retired or self._new_name), 5.0)
                if not (self._dirty or self._retired or self._new_name):
                    self._thread = None  # idle: the next write starts a new thread
                    return
            self._sync_once()

    def _sync_once(self) -> None:
        with self._work:
            dirty, retired, new_name = self._dirty, self._retired, self._new_name
            self._dirty, self._retired, self._new_name, self._busy = [], [], False, True
        try:
            for owned in [*dirty, *(f for f in retired if f not in dirty)]:
                if owned.fd >= 0:
                    with contextlib.suppress(OSError):
                        os.fsync(owned.fd)
            if new_name:
                self.directory.sync()
            for owned in retired:
                owned.close()
        finally:
            with self._work:
                self._busy = False
                self._work.notify_all()


class SegmentWriter:
    """Appends a batcher's events to its own segment in group commits (the flush thread's side of the spool).

    Not thread-safe: one flush thread writes. With ``fsync`` (the default) a :class:`_Syncer` thread makes
    every commit durable against a power loss too, without holding back the next one.
    """

    def __init__(self, directory: SpoolDirectory, max_bytes: int, fsync: bool = True) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._syncer = _Syncer(directory) if fsync else None
        self._file: OwnedFile | None = None
        self._size = 0
        self._opened = 0.0
        self._used: int | None = None  # bytes of the whole spool, as last measured ...
        self._used_at = float("-inf")  # ... at this time.monotonic()
        self.written = 0

    def __repr__(self) -> str:
        return f"<SegmentWriter {self._file.path if self._file else self.directory.path}>"

    def append(self, events: Sequence[tuple[str, float]]) -> int:
        """Write ``(json, created)`` pairs in one commit; return how many were written: the first n. The rest
        would have taken the spool past ``spool_max_bytes``. Raises OSError (a full disk, a removed directory)."""
        lines = [encode_record(json, created) for json, created in events]
        rotate = (
            self._file is None
            or self._size >= SEGMENT_BYTES
            or time.monotonic() - self._opened >= SEGMENT_SECONDS
            or not self._file.still_there()  # someone removed it: nobody would ever read it
        )
        room = self._room() - (len(HEADER) if rotate else 0)
        count, size = 0, 0
        for line in lines:
            if size + len(line) > room:
                break
            size += len(line)
            count += 1
        if not count:
            return 0
        if rotate:
            self._rotate()
            if self._used is not None:
                self._used += len(HEADER)
        assert self._file is not None
        data = b"".join(lines[:count])
        view = memoryview(data)
        while view:
            written = os.write(self._file.fd, view)
            view = view[written:]
        if self._syncer is not None:
            self._syncer.written(self._file, new=rotate)
        self._size += len(data)
        if self._used is not None:
            self._used += len(data)
        self.written += count
        return count

    def _room(self) -> int:
        now = time.monotonic()
        if self._used is None or now - self._used_at >= SIZE_REFRESH:
            self._used, self._used_at = self.directory.used_bytes(), now
        return max(0, self.max_bytes - self._used)

    def _rotate(self) -> None:
        """Seal the current segment and start a new one (created under a temporary name, locked, then renamed,
        so that the sender never sees a segment without its writer's lock)."""
        self._seal()
        os.makedirs(self.directory.path, mode=0o700, exist_ok=True)
        name = f"seg-{time.time_ns():020d}-{os.getpid()}-{os.urandom(4).hex()}"
        temporary = os.path.join(self.directory.path, name + ".tmp")
        path = os.path.join(self.directory.path, name + ".log")
        owned = OwnedFile(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        try:
            if not owned.try_lock():  # pragma: no cover - a fresh file nobody else can know of
                raise OSError(errno.EAGAIN, "could not lock a new spool segment", temporary)
            os.write(owned.fd, HEADER)
            os.rename(temporary, path)
        except BaseException:
            owned.close()
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        owned.path = path
        self._file, self._size, self._opened = owned, len(HEADER), time.monotonic()

    def _seal(self) -> None:
        """Let go of the current segment (removed at once if it holds no event)."""
        owned, self._file = self._file, None
        if owned is None:
            return
        if self._size <= len(HEADER) and owned.pid == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(owned.path)
        if self._syncer is not None and owned.pid == os.getpid():
            self._syncer.retire(owned)
        else:
            owned.close()

    def sync(self, timeout: float = 5.0) -> None:
        """Wait (up to ``timeout``) until everything written so far is on disk."""
        if self._syncer is not None:
            self._syncer.drain(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Seal the current segment, and wait (up to ``timeout``) until everything written is on disk. Idempotent."""
        self._seal()
        self.sync(timeout)


# --- reading ----------------------------------------------------------------------------------------------


def ack_path(segment: str) -> str:
    """The ``.ack`` file of a segment."""
    return segment[: -len(".log")] + ".ack"


def read_ack(segment: str) -> int:
    """How far ``segment`` has been delivered (0 when its ack file is missing or damaged: then a replay resends
    from the start, which Dodo's id check makes harmless)."""
    try:
        with open(ack_path(segment), "rb") as ack:
            data = ack.read(_ACK.size)
    except OSError:
        return 0
    if len(data) != _ACK.size:
        return 0
    offset, crc = _ACK.unpack(data)
    return offset if zlib.crc32(data[:8]) == crc else 0


def write_ack(segment: str, offset: int) -> None:
    """Record that ``segment`` is delivered up to ``offset`` (not fsynced: a lost ack only costs a resend)."""
    packed = struct.pack("<Q", offset)
    data = packed + struct.pack("<I", zlib.crc32(packed))
    fd = os.open(ack_path(segment), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


class SegmentCursor:
    """The sender's position in one segment: what it has read, what is delivered, whether it is sealed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.acked = read_ack(path)
        self.read_to = self.acked
        self.sealed = False  # its writer is gone: it will never grow again
        self._file: OwnedFile | None = None

    def __repr__(self) -> str:
        return f"<SegmentCursor {os.path.basename(self.path)} read={self.read_to} acked={self.acked}>"

    def read(self, limit: int, max_records: int, max_bytes: int) -> tuple[list[Record], list[Damage]]:
        """Read new records: at most ``max_records`` whose JSON takes at most ``max_bytes`` (at least one), from
        about ``limit`` bytes of the file, and the damage before them. Raises OSError (e.g. a removed file)."""
        if self._file is None:
            self._file = OwnedFile(self.path, os.O_RDONLY)
        start = self.read_to
        data = os.pread(self._file.fd, limit, start)
        if len(data) == limit and data.rfind(b"\n") < 0:  # one line longer than the read: read it whole
            data = os.pread(self._file.fd, max(limit, os.fstat(self._file.fd).st_size - start), start)
        # sealed and read to its end: an unterminated last line will never be finished
        final = self.sealed and start + len(data) >= os.fstat(self._file.fd).st_size
        records, damage, consumed = parse_records(data, start, final)
        cut, size = start + consumed, 0
        for index, record in enumerate(records):
            size += len(record.json) + 1
            if index >= max_records or (index and size > max_bytes):
                cut = records[index - 1].end if index else start
                records = records[:index]
                damage = [d for d in damage if d.offset < cut]
                break
        self.read_to = cut
        return records, damage

    def at_end(self) -> bool:
        """Whether everything in the file has been read."""
        try:
            return self.read_to >= os.stat(self.path).st_size
        except FileNotFoundError:
            return True

    def try_seal(self) -> bool:
        """Whether the writer is gone (its lock is free; the lock is then ours and stays ours)."""
        if not self.sealed:
            if self._file is None:
                self._file = OwnedFile(self.path, os.O_RDONLY)
            self.sealed = self._file.try_lock()
        return self.sealed

    def ack(self, offset: int) -> None:
        """Everything before ``offset`` is delivered (sent, or dropped and counted)."""
        if offset > self.acked:
            self.acked = offset
            write_ack(self.path, offset)

    def remove(self) -> None:
        """Delete the segment and its ack file (only once it is sealed and delivered)."""
        for path in (self.path, ack_path(self.path)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.close()

    def keep_damage(self, damage: Iterable[Damage]) -> str:
        """Append damaged bytes (up to :data:`DAMAGE_KEPT` per segment) to its ``.damaged`` file; return its path."""
        path = self.path[: -len(".log")] + ".damaged"
        with contextlib.suppress(OSError), open(path, "ab") as kept:
            room = DAMAGE_KEPT - kept.tell()
            for part in damage:
                if room <= 0:
                    break
                chunk = b"@%d " % part.offset + part.data[:room] + b"\n"
                kept.write(chunk)
                room -= len(chunk)
        return path

    def close(self) -> None:
        """Close the segment's file (releasing its lock, if the cursor held it)."""
        if self._file is not None:
            self._file.close()
            self._file = None
