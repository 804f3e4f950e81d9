"""The file sinks acknowledge only what is on disk, and new queue directories survive a power cut.

`os.fsync` and `os.rename` are wrapped to record, in order with the queue's acks, what was synced
(a file with its size then, a directory with its entries then) and renamed; a switch makes fsync
fail with EIO, as a failing disk does.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from trackgate import Pipeline, telemetry
from trackgate.config import Config, FileExporterConfig, RetryConfig
from trackgate.exporters.file import EnvelopeFileExporter

FAST_RETRY = RetryConfig(initial_interval_s=0.02, max_interval_s=0.1)


def logs(text: str) -> bytes:
    msg = ExportLogsServiceRequest()
    msg.resource_logs.add().scope_logs.add().log_records.add().body.string_value = text
    return msg.SerializeToString()


def bodies(path: Path) -> list[str]:
    return [
        rec["body"]["stringValue"]
        for line in path.read_text().splitlines()
        for rl in json.loads(line)["resourceLogs"]
        for sl in rl["scopeLogs"]
        for rec in sl["logRecords"]
    ]


class Journal:
    """fsyncs, renames and acks, in the order they happened."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str, Any]] = []
        self.failing = False
        real_fsync, real_rename = os.fsync, os.rename

        def fsync(fd: int) -> None:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if self.failing:
                self.events.append(("fsync_failed", target, None))
                raise OSError(errno.EIO, "Input/output error")
            real_fsync(fd)
            detail = frozenset(os.listdir(target)) if os.path.isdir(target) else os.fstat(fd).st_size
            self.events.append(("fsync", target, detail))

        def rename(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            real_rename(src, dst, *args, **kwargs)
            self.events.append(("rename", str(src), str(dst)))

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", rename)

    def spy_acks(self, pipeline: Pipeline) -> None:
        """Wraps the pipeline's core (before `start`) so that its acks are recorded here."""
        pipeline.core = AckSpy(pipeline.core, self.events)  # type: ignore[assignment]

    def index(self, kind: str, target: str | None = None, after: int = -1) -> list[int]:
        return [
            i for i, e in enumerate(self.events) if i > after and e[0] == kind and (target is None or e[1] == target)
        ]


class AckSpy:
    def __init__(self, core: Any, events: list[tuple[str, str, Any]]) -> None:
        self._core = core
        self._events = events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)

    def ack(self, batch: Any) -> None:
        self._events.append(("ack", batch.signal, batch.records))
        self._core.ack(batch)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def file_config(out: Path, fsync: str = "always", interval_ms: int = 200, max_file_bytes: int = 1 << 20) -> Config:
    cfg = Config()
    cfg.batch.max_records = 1
    cfg.storage.fsync = fsync  # type: ignore[assignment]
    cfg.storage.fsync_interval_ms = interval_ms
    cfg.exporters.file = FileExporterConfig(dir=str(out), max_file_bytes=max_file_bytes, max_files=10)
    return cfg


def test_always_fsyncs_each_line_and_new_file_before_its_ack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    journal = Journal(monkeypatch)
    p = Pipeline(file_config(out))
    journal.spy_acks(p)
    ends = []
    with p:
        for i in range(3):
            p.ingest("logs", logs(f"line-{i}"))
            assert p.flush(5)
            ends.append((out / "logs.jsonl").stat().st_size)
    current = str(out / "logs.jsonl")
    acks = journal.index("ack")
    assert len(acks) == 3
    for end, ack in zip(ends, acks, strict=True):
        synced = [journal.events[i][2] for i in journal.index("fsync", current) if i < ack]
        assert synced and synced[-1] >= end, "a line was acknowledged before an fsync covered it"
    # The file's name was made durable (a directory fsync listing it) before the first ack.
    assert any(i < acks[0] and "logs.jsonl" in journal.events[i][2] for i in journal.index("fsync", str(out))), (
        "the new file's directory entry was not synced before the ack"
    )


def test_rotation_syncs_the_old_file_and_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    journal = Journal(monkeypatch)
    for fsync in ("always", "interval"):
        p = Pipeline(file_config(out / fsync, fsync, interval_ms=1, max_file_bytes=400))
        journal.spy_acks(p)
        with p:
            for i in range(6):
                p.ingest("logs", logs(f"line-{i}-" + "x" * 100))
                assert p.flush(5)
        current = str(out / fsync / "logs.jsonl")
        renames = journal.index("rename", current)
        assert len(renames) >= 2, fsync
        for r in renames:
            rotated = journal.events[r][2]
            before = [i for i in journal.index("fsync", current) if i < r]
            assert before and journal.events[before[-1]][2] == Path(rotated).stat().st_size, (
                f"{fsync}: the file was renamed before all of it was synced"
            )
            next_ack = journal.index("ack", after=r)[0]
            assert any(
                r < i < next_ack and Path(rotated).name in journal.events[i][2]
                for i in journal.index("fsync", str(out / fsync))
            ), f"{fsync}: the rotation's rename was not synced before the next ack"
        files = [*sorted((out / fsync).glob("logs-*.jsonl")), out / fsync / "logs.jsonl"]
        assert [b for f in files for b in bodies(f)] == [f"line-{i}-" + "x" * 100 for i in range(6)]


def test_interval_acks_only_what_one_fsync_covered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    journal = Journal(monkeypatch)
    # An interval far longer than the test: only the flush below may sync.
    p = Pipeline(file_config(out, "interval", interval_ms=600_000))
    journal.spy_acks(p)
    current = out / "logs.jsonl"
    with p:
        for i in range(4):
            p.ingest("logs", logs(f"line-{i}"))
        assert wait_until(lambda: current.exists() and len(bodies(current)) == 4)
        # Written, not synced: nothing is acknowledged, all of it is still queued.
        assert journal.index("fsync", str(current)) == []
        assert journal.index("ack") == []
        assert p.pending() == 4
        assert p.flush(5)
        assert p.pending() == 0
    syncs = journal.index("fsync", str(current))
    acks = journal.index("ack")
    assert len(syncs) == 1 and journal.events[syncs[0]][2] == current.stat().st_size
    assert acks and all(a > syncs[0] for a in acks)
    assert any(i < acks[0] and "logs.jsonl" in journal.events[i][2] for i in journal.index("fsync", str(out))), (
        "the new file's directory entry was not synced before the ack"
    )
    assert bodies(current) == [f"line-{i}" for i in range(4)]


@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_failing_fsync_is_not_delivered_until_it_heals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: str
) -> None:
    out = tmp_path / "out"
    p = Pipeline(file_config(out, fsync, interval_ms=1))
    journal = Journal(monkeypatch)
    journal.spy_acks(p)
    (exporter,) = p.exporters
    exporter.retry = FAST_RETRY
    current = str(out / "logs.jsonl")
    failed_before = telemetry.FAILED_RECORDS.value(exporter="file", signal="logs", reason="retries_exhausted")
    retries = "io_error" if fsync == "always" else "sync_error"
    retries_before = telemetry.EXPORT_RETRIES.value(exporter="file", signal="logs", cause=retries)
    journal.failing = True
    with p:
        p.ingest("logs", logs("line-0"))
        p.ingest("logs", logs("line-1"))
        assert wait_until(lambda: len(journal.index("fsync_failed", current)) >= 3)  # retried, and failing
        assert journal.index("ack") == []
        assert p.pending() == 2
        assert telemetry.EXPORT_RETRIES.value(exporter="file", signal="logs", cause=retries) > retries_before
        journal.failing = False  # the disk heals
        assert p.flush(10)
    assert p.pending() == 0
    got = bodies(out / "logs.jsonl")
    assert set(got) == {"line-0", "line-1"}
    if fsync == "always":  # the failed append was cut again, so each line is there once
        assert sorted(got) == ["line-0", "line-1"]
    last_failure = journal.index("fsync_failed")[-1]
    first_ack = journal.index("ack")[0]
    assert any(last_failure < i < first_ack for i in journal.index("fsync", current))
    assert telemetry.FAILED_RECORDS.value(exporter="file", signal="logs", reason="retries_exhausted") == failed_before


def envelope(event_id: str) -> bytes:
    item = json.dumps({"event_id": event_id, "message": "boom"}).encode()
    return b"\n".join([json.dumps({"event_id": event_id}).encode(), b'{"type":"event"}', item]) + b"\n"


@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_envelope_sink_syncs_file_and_name_before_the_ack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: str
) -> None:
    cfg = file_config(tmp_path / "out", fsync, interval_ms=1)
    exporter = EnvelopeFileExporter(cfg.exporters.file, fsync=fsync, fsync_interval_ms=1)  # type: ignore[arg-type]
    exporter.retry = FAST_RETRY
    p = Pipeline(cfg, [exporter], queue_name="sentry-queue", register_metrics=False)
    journal = Journal(monkeypatch)
    journal.spy_acks(p)
    ids = [f"{i:032x}" for i in range(1, 4)]
    journal.failing = True
    with p:
        for event_id in ids:
            p.core.enqueue("logs", envelope(event_id), 1)
        assert wait_until(lambda: len(journal.index("fsync_failed")) >= 3)
        assert journal.index("ack") == []
        assert list(exporter.dir.glob("*.envelope")) == []  # nothing visible that is not on disk
        journal.failing = False
        assert p.flush(10)
    files = sorted(exporter.dir.glob("*.envelope"))
    assert sorted(f.name.split("-")[-1].removesuffix(".envelope") for f in files) == ids
    assert all(f.read_bytes() == envelope(f.name.split("-")[-1].removesuffix(".envelope")) for f in files)
    assert list(exporter.dir.glob("*.tmp")) == []
    for f in files:
        (renamed,) = [i for i in journal.index("rename") if journal.events[i][2] == str(f)]
        tmp = journal.events[renamed][1]
        assert any(i < renamed and journal.events[i][2] == f.stat().st_size for i in journal.index("fsync", tmp))
        next_ack = journal.index("ack", after=renamed)[0]
        assert any(
            renamed < i < next_ack and f.name in journal.events[i][2] for i in journal.index("fsync", str(exporter.dir))
        ), "the envelope's name was not synced before its ack"
