"""File exporter, the embedded default: one OTLP/JSON `Export*ServiceRequest` per line, per signal.

This is the OpenTelemetry Collector file exporter's format, so the Collector's `otlpjsonfile`
receiver and `trackgate replay` read it back. Files rotate by size; several gateway worker
processes may share the directory (an exclusive lock covers each write and rotation).
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from pathlib import Path

from trackgate._core import Batch, to_json
from trackgate.config import FileExporterConfig
from trackgate.exporters.base import Exporter, Outcome


class FileExporter(Exporter):
    def __init__(self, cfg: FileExporterConfig, name: str = "file") -> None:
        self.name = name
        self.cfg = cfg
        self.dir = Path(cfg.dir)
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, signal: str) -> Path:
        return self.dir / f"{signal}.jsonl"

    def send(self, batch: Batch) -> Outcome:
        line = to_json(batch.signal, batch.body) + b"\n"
        path = self.path(batch.signal)
        try:
            with open(path, "ab") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                size = os.fstat(fh.fileno()).st_size
                if size and size + len(line) > self.cfg.max_file_bytes and _still_current(fh, path):
                    self._rotate(batch.signal, path)
                    fcntl.flock(fh, fcntl.LOCK_UN)
                    return self.send(batch)
                if not _still_current(fh, path):  # another worker rotated it between open and lock
                    return self.send(batch)
                fh.write(line)
                fh.flush()
        except OSError as exc:
            # A full or read-only disk heals when an operator acts: keep the batch and retry.
            return Outcome.retry("io_error", f"cannot write {path}: {exc.strerror or exc}")
        return Outcome.ok(sent_bytes=len(line))

    def _rotate(self, signal: str, path: Path) -> None:
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"_{int(now * 1e6) % 1_000_000:06d}"
        path.rename(self.dir / f"{signal}-{stamp}.jsonl")
        rotated = sorted(self.dir.glob(f"{signal}-*.jsonl"))
        for old in rotated[: max(0, len(rotated) - self.cfg.max_files)]:
            old.unlink(missing_ok=True)

    def files(self, signal: str) -> list[Path]:
        """Every file of a signal, oldest first (rotated ones, then the current one)."""
        current = self.path(signal)
        return sorted(self.dir.glob(f"{signal}-*.jsonl")) + ([current] if current.exists() else [])


def _still_current(fh: object, path: Path) -> bool:
    try:
        return os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino  # type: ignore[attr-defined]
    except FileNotFoundError:
        return False


class EnvelopeFileExporter(Exporter):
    """Sentry envelopes, one file each, when no upstream Sentry is configured: the embedded sink.

    Files are `<dir>/sentry/<UTC time>-<event id>.envelope`, exactly the bytes that would have been
    forwarded; `trackgate replay` and Sentry's own tools read them.
    """

    def __init__(self, cfg: FileExporterConfig, name: str = "sentry-file") -> None:
        self.name = name
        self.dir = Path(cfg.dir) / "sentry"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._count = 0

    def send(self, batch: Batch) -> Outcome:
        header = batch.body.split(b"\n", 1)[0]
        event_id = re.search(rb'"event_id"\s*:\s*"([0-9a-fA-F-]{32,36})"', header)
        now = time.time()
        self._count += 1
        stem = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"_{int(now * 1e6) % 1_000_000:06d}"
        name = event_id.group(1).decode().replace("-", "") if event_id else f"{os.getpid()}-{self._count}"
        path = self.dir / f"{stem}-{name}.envelope"
        try:
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(batch.body)
            tmp.rename(path)  # readers never see half an envelope
        except OSError as exc:
            return Outcome.retry("io_error", f"cannot write {path}: {exc.strerror or exc}")
        return Outcome.ok(sent_bytes=len(batch.body))
