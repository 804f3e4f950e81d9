"""File exporter, the embedded default: the OpenTelemetry Collector file exporter's two formats.

- `json` (default): one OTLP/JSON `Export*ServiceRequest` per line (`<signal>.jsonl`), as the
  Collector's `otlpjsonfile` receiver reads it; the core re-encodes each batch.
- `proto`: each request as its protobuf bytes after a 4-byte big-endian length (`<signal>.binpb`),
  the Collector's `format: proto` framing; the batch is written as it is, with no re-encoding.

`trackgate replay` reads both back. Files rotate by size; several gateway worker processes may
share the directory (an exclusive lock covers each write and rotation). Per batch the Python here
is a handful of calls, each releasing the GIL (encode, flock, pread, write, fsync); a JSON line is
encoded and written by the core and never copied into a Python object.

A delivered batch is acknowledged and then forgotten by the queue, so the sink follows the queue's
`[storage] fsync` policy before it reports a batch delivered:
- `always`: the line is fsynced before `send` returns ok;
- `interval`: `send` returns ok(unsynced) and the runner holds the ack until `sync`, which it
  calls at most every `fsync_interval_ms`: an ack never covers a line that is not on disk;
- `never`: left to the kernel (survives a killed process, not a power cut).
A new file and a rotation are made durable in the directory too. A failing write or fsync is a
retry: the batch stays queued and is written again (at least once: a line may then appear twice).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

from trackgate._core import Batch, JsonLine, to_json_line
from trackgate.config import FileExporterConfig, Fsync
from trackgate.durable import make_dirs, sync_dir, sync_file
from trackgate.exporters.base import SIGNALS, Exporter, Outcome, Signal

# How far back a torn last line is looked for, per read.
_CHUNK = 64 * 1024
# At most this many buffers per writev (Linux's IOV_MAX).
_IOV_MAX = 1024
_SUFFIX: Final = {"json": ".jsonl", "proto": ".binpb"}
# A frame's length is a big-endian u32 (the Collector's framing).
_MAX_FRAME = (1 << 32) - 1


@dataclass
class _Unsynced:
    """One signal's writes not yet covered by an fsync (fsync = "interval")."""

    lines: list[bytes | JsonLine] = field(default_factory=list)  # the pieces written, in order
    failed: bool = False  # the last sync failed: write the lines again before syncing
    lock: threading.Lock = field(default_factory=threading.Lock)  # an adopted shard's runner shares this


class FileExporter(Exporter):
    def __init__(
        self, cfg: FileExporterConfig, name: str = "file", fsync: Fsync = "always", fsync_interval_ms: int = 200
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.fsync = fsync
        self.sync_interval_s = fsync_interval_ms / 1000
        self.dir = Path(cfg.dir)
        self.suffix = _SUFFIX[cfg.format]
        make_dirs(self.dir, durable=fsync != "never")
        self._unsynced = {signal: _Unsynced() for signal in SIGNALS}
        # proto: per signal, (inode, offset) up to which the current file's frames are known whole,
        # so the torn-tail check walks only the frames appended since (by any worker).
        self._whole: dict[str, tuple[int, int]] = {}

    def path(self, signal: str) -> Path:
        return self.dir / f"{signal}{self.suffix}"

    def _pieces(self, batch: Batch) -> list[bytes | JsonLine]:
        """What one batch appends, in pieces (no concatenating copy)."""
        body = batch.body
        if self.cfg.format == "proto":
            return [len(body).to_bytes(4, "big"), body]
        return [to_json_line(batch.signal, body)]  # encoded in the core, the GIL released

    def send(self, batch: Batch) -> Outcome:
        if self.cfg.format == "proto" and len(batch.body) > _MAX_FRAME:  # batches are far smaller
            return Outcome.drop("too_large", f"a batch of {len(batch.body)} bytes does not fit a 4-byte frame length")
        pieces = self._pieces(batch)
        pending = self._unsynced[batch.signal]
        try:
            with pending.lock:
                self._append(batch.signal, pieces)
                if self.fsync == "interval":
                    pending.lines.extend(pieces)
        except OSError as exc:
            # A full or read-only disk, a failing fsync: heals when an operator acts. Keep the
            # batch and retry.
            return Outcome.retry("io_error", f"cannot write {self.path(batch.signal)}: {exc.strerror or exc}")
        return Outcome.ok(sent_bytes=sum(map(len, pieces)), unsynced=self.fsync == "interval")

    def sync(self, signal: Signal) -> None:
        pending = self._unsynced[signal]
        with pending.lock:
            try:
                if pending.failed and pending.lines:
                    # After a failed fsync the kernel may have dropped those pages: write them again.
                    self._append(signal, pending.lines)
                with contextlib.suppress(FileNotFoundError):  # rotated away: synced by the rotation
                    sync_file(self.path(signal))
                # The file's name too: this or another worker may have created it since the last sync.
                sync_dir(self.dir)
            except OSError:
                pending.failed = True
                raise
            pending.lines.clear()
            pending.failed = False

    def _append(self, signal: str, pieces: list[bytes | JsonLine]) -> None:
        """Appends `pieces` to the signal's current file under the lock the workers share, rotating
        first when it would overflow. With fsync "always", returns once it is on disk."""
        path = self.path(signal)
        length = sum(map(len, pieces))
        while True:
            with open(path, "a+b", buffering=0) as fh:  # unbuffered: nothing left to flush after a failure
                fcntl.flock(fh, fcntl.LOCK_EX)
                if not _still_current(fh, path):  # another worker rotated it between open and lock
                    continue
                size = self._cut_torn_tail(signal, fh.fileno())
                if size and size + length > self.cfg.max_file_bytes:
                    self._rotate(signal, path, fh)
                    continue
                try:
                    _write_all(fh.fileno(), path, pieces)
                    if self.cfg.format == "proto":
                        self._whole[signal] = (os.fstat(fh.fileno()).st_ino, size + length)
                    if self.fsync == "always":
                        os.fsync(fh.fileno())
                        if size == 0:  # a new file: its name, before any worker's line in it is acked
                            sync_dir(self.dir)
                except OSError:
                    # Leave no part of it behind: the retry writes it whole (still under the lock).
                    with contextlib.suppress(OSError):
                        os.ftruncate(fh.fileno(), size)
                    raise
            return

    def _rotate(self, signal: str, path: Path, fh: BinaryIO) -> None:
        if self.fsync != "never":
            os.fsync(fh.fileno())  # complete on disk before it leaves the current name
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"_{int(now * 1e6) % 1_000_000:06d}"
        path.rename(self.dir / f"{signal}-{stamp}{self.suffix}")
        if self.fsync != "never":
            sync_dir(self.dir)
        rotated = sorted(self.dir.glob(f"{signal}-*{self.suffix}"))
        for old in rotated[: max(0, len(rotated) - self.cfg.max_files)]:
            old.unlink(missing_ok=True)

    def _cut_torn_tail(self, signal: str, fd: int) -> int:
        if self.cfg.format == "json":
            return _cut_torn_line(fd)
        ino = os.fstat(fd).st_ino
        known_ino, known = self._whole.get(signal, (ino, 0))
        size = _cut_torn_frame(fd, known if known_ino == ino else 0)
        self._whole[signal] = (ino, size)
        return size

    def files(self, signal: str) -> list[Path]:
        """Every file of a signal, oldest first (rotated ones, then the current one)."""
        current = self.path(signal)
        return sorted(self.dir.glob(f"{signal}-*{self.suffix}")) + ([current] if current.exists() else [])


def _still_current(fh: BinaryIO, path: Path) -> bool:
    try:
        return os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _cut_torn_line(fd: int) -> int:
    """The file's size after cutting a partial last line (a write the process or the machine died
    in: never synced, so never acknowledged, so it will be written again). Call under the lock."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    end = size
    while end > 0:
        start = max(0, end - _CHUNK)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            end = start + newline + 1
            break
        end = start
    os.ftruncate(fd, end)
    return end


def _cut_torn_frame(fd: int, start: int) -> int:
    """The file's size after cutting a partial last frame, walking the frames from `start` (a
    frame boundary). Call under the lock."""
    size = os.fstat(fd).st_size
    end = start if start <= size else 0  # shorter than known: cut by hand, walk it all
    while end + 4 <= size:
        length = int.from_bytes(os.pread(fd, 4, end), "big")
        if end + 4 + length > size:
            break
        end += 4 + length
    if end != size:
        os.ftruncate(fd, end)
    return end


def _write_all(fd: int, path: Path, pieces: list[bytes | JsonLine]) -> None:
    """Appends the pieces in order: JSON lines by the core (to `path`, the file `fd` is open on,
    whose lock the caller holds), runs of bytes with as few writev calls as the kernel allows."""
    run: list[bytes] = []
    for piece in pieces:
        if isinstance(piece, JsonLine):
            _writev_all(fd, run)
            run = []
            piece.write_to(path)
        else:
            run.append(piece)
    _writev_all(fd, run)


def _writev_all(fd: int, pieces: list[bytes]) -> None:
    views = [memoryview(p) for p in pieces if p]
    at = 0
    while at < len(views):
        written = os.writev(fd, views[at : at + _IOV_MAX])
        while at < len(views) and written >= len(views[at]):
            written -= len(views[at])
            at += 1
        if written:
            views[at] = views[at][written:]


def _write_one(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class EnvelopeFileExporter(Exporter):
    """Sentry envelopes, one file each, when no upstream Sentry is configured: the embedded sink.

    Files are `<dir>/sentry/<UTC time>-<event id>.envelope`, exactly the bytes that would have been
    forwarded; `trackgate replay` and Sentry's own tools read them. Each is written under a
    temporary name and renamed once complete (and, unless fsync is "never", synced), so readers
    never see half an envelope. With fsync "interval" the renames wait for the sync.
    """

    def __init__(
        self,
        cfg: FileExporterConfig,
        name: str = "sentry-file",
        fsync: Fsync = "always",
        fsync_interval_ms: int = 200,
    ) -> None:
        self.name = name
        self.fsync = fsync
        self.sync_interval_s = fsync_interval_ms / 1000
        self.dir = Path(cfg.dir) / "sentry"
        make_dirs(self.dir, durable=fsync != "never")
        self._count = 0
        # Written under their temporary name, awaiting the sync (fsync = "interval").
        self._unsynced: list[tuple[Path, bytes]] = []
        self._failed = False
        self._lock = threading.Lock()

    def send(self, batch: Batch) -> Outcome:
        header = batch.body.split(b"\n", 1)[0]
        event_id = re.search(rb'"event_id"\s*:\s*"([0-9a-fA-F-]{32,36})"', header)
        now = time.time()
        self._count += 1
        stem = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"_{int(now * 1e6) % 1_000_000:06d}"
        name = event_id.group(1).decode().replace("-", "") if event_id else f"{os.getpid()}-{self._count}"
        path = self.dir / f"{stem}-{name}.envelope"
        try:
            if self.fsync == "interval":
                with self._lock:
                    _write(path.with_suffix(".tmp"), batch.body, sync=False)
                    self._unsynced.append((path, batch.body))
                return Outcome.ok(sent_bytes=len(batch.body), unsynced=True)
            tmp = path.with_suffix(".tmp")
            _write(tmp, batch.body, sync=self.fsync == "always")
            tmp.rename(path)
            if self.fsync == "always":
                sync_dir(self.dir)
        except OSError as exc:
            return Outcome.retry("io_error", f"cannot write {path}: {exc.strerror or exc}")
        return Outcome.ok(sent_bytes=len(batch.body))

    def sync(self, signal: Signal) -> None:
        with self._lock:
            try:
                for path, body in self._unsynced:
                    tmp = path.with_suffix(".tmp")
                    if self._failed or not tmp.exists():  # a failed fsync may have dropped the pages
                        _write(tmp, body, sync=True)
                    else:
                        sync_file(tmp)
                for path, _ in self._unsynced:
                    path.with_suffix(".tmp").rename(path)
                sync_dir(self.dir)
            except OSError:
                self._failed = True
                raise
            self._unsynced.clear()
            self._failed = False


def _write(path: Path, data: bytes, sync: bool) -> None:
    try:
        with open(path, "wb", buffering=0) as fh:
            _write_one(fh.fileno(), data)
            if sync:
                os.fsync(fh.fileno())
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
