"""File exporter, the embedded default: one OTLP/JSON `Export*ServiceRequest` per line, per signal.

This is the OpenTelemetry Collector file exporter's format, so the Collector's `otlpjsonfile`
receiver and `trackgate replay` read it back. Files rotate by size; several gateway worker
processes may share the directory (an exclusive lock covers each write and rotation).

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
from typing import BinaryIO

from trackgate._core import Batch, to_json
from trackgate.config import FileExporterConfig, Fsync
from trackgate.durable import make_dirs, sync_dir, sync_file
from trackgate.exporters.base import SIGNALS, Exporter, Outcome, Signal

# How far back a torn last line is looked for, per read.
_CHUNK = 64 * 1024


@dataclass
class _Unsynced:
    """One signal's writes not yet covered by an fsync (fsync = "interval")."""

    lines: list[bytes] = field(default_factory=list)
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
        make_dirs(self.dir, durable=fsync != "never")
        self._unsynced = {signal: _Unsynced() for signal in SIGNALS}

    def path(self, signal: str) -> Path:
        return self.dir / f"{signal}.jsonl"

    def send(self, batch: Batch) -> Outcome:
        line = to_json(batch.signal, batch.body) + b"\n"
        pending = self._unsynced[batch.signal]
        try:
            with pending.lock:
                self._append(batch.signal, line)
                if self.fsync == "interval":
                    pending.lines.append(line)
        except OSError as exc:
            # A full or read-only disk, a failing fsync: heals when an operator acts. Keep the
            # batch and retry.
            return Outcome.retry("io_error", f"cannot write {self.path(batch.signal)}: {exc.strerror or exc}")
        return Outcome.ok(sent_bytes=len(line), unsynced=self.fsync == "interval")

    def sync(self, signal: Signal) -> None:
        pending = self._unsynced[signal]
        with pending.lock:
            try:
                if pending.failed and pending.lines:
                    # After a failed fsync the kernel may have dropped those pages: write them again.
                    self._append(signal, b"".join(pending.lines))
                with contextlib.suppress(FileNotFoundError):  # rotated away: synced by the rotation
                    sync_file(self.path(signal))
                # The file's name too: this or another worker may have created it since the last sync.
                sync_dir(self.dir)
            except OSError:
                pending.failed = True
                raise
            pending.lines.clear()
            pending.failed = False

    def _append(self, signal: str, data: bytes) -> None:
        """Appends `data` to the signal's current file under the lock the workers share, rotating
        first when it would overflow. With fsync "always", returns once it is on disk."""
        path = self.path(signal)
        while True:
            with open(path, "a+b", buffering=0) as fh:  # unbuffered: nothing left to flush after a failure
                fcntl.flock(fh, fcntl.LOCK_EX)
                if not _still_current(fh, path):  # another worker rotated it between open and lock
                    continue
                size = _cut_torn_tail(fh.fileno())
                if size and size + len(data) > self.cfg.max_file_bytes:
                    self._rotate(signal, path, fh)
                    continue
                try:
                    _write_all(fh.fileno(), data)
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
        path.rename(self.dir / f"{signal}-{stamp}.jsonl")
        if self.fsync != "never":
            sync_dir(self.dir)
        rotated = sorted(self.dir.glob(f"{signal}-*.jsonl"))
        for old in rotated[: max(0, len(rotated) - self.cfg.max_files)]:
            old.unlink(missing_ok=True)

    def files(self, signal: str) -> list[Path]:
        """Every file of a signal, oldest first (rotated ones, then the current one)."""
        current = self.path(signal)
        return sorted(self.dir.glob(f"{signal}-*.jsonl")) + ([current] if current.exists() else [])


def _still_current(fh: BinaryIO, path: Path) -> bool:
    try:
        return os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _cut_torn_tail(fd: int) -> int:
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


def _write_all(fd: int, data: bytes) -> None:
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
            _write_all(fh.fileno(), data)
            if sync:
                os.fsync(fh.fileno())
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
