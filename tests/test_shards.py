"""Queue shards: one that cannot be opened holds back neither a worker's start nor the adoption
of the others, and a new shard's directories survive a power cut."""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from trackgate import Pipeline, shards
from trackgate._core import Batch
from trackgate.config import Config, FileExporterConfig
from trackgate.exporters.base import Exporter, Outcome


def logs(text: str, n: int = 1) -> bytes:
    msg = ExportLogsServiceRequest()
    records = msg.resource_logs.add().scope_logs.add()
    for i in range(n):
        records.log_records.add().body.string_value = f"{text}-{i}"
    return msg.SerializeToString()


def break_shard(path: Path, how: str) -> None:
    """A shard directory that exists but cannot be opened (EISDIR where a file belongs)."""
    path.mkdir(parents=True)
    name = "seg-00000000000000000001.tgq" if how == "segment" else "LOCK"
    (path / name).mkdir()


class Collect(Exporter):
    def __init__(self) -> None:
        self.name = "file"
        self.records = 0
        self.lock = threading.Lock()

    def send(self, batch: Batch) -> Outcome:
        with self.lock:
            self.records += batch.records
        return Outcome.ok()


@pytest.mark.parametrize("how", ["segment", "lock"])
def test_unopenable_shard_neither_stops_a_start_nor_the_adoption_of_others(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = Config()
    cfg.storage.dir = str(tmp_path / "data")
    cfg.exporters.file = FileExporterConfig(dir=str(tmp_path / "out"))
    root = tmp_path / "data" / "queue"
    break_shard(root / "0", how)
    # A healthy orphan beside it, holding 7 records (queued by a process that is gone).
    orphan = Pipeline(cfg, [Collect()], queue_dir=root / "2", register_metrics=False)
    orphan.ingest("logs", logs("orphan", 7))
    orphan.close(0)
    del orphan  # its process is gone: the queue's lock goes with the core
    gc.collect()

    collect = Collect()
    p = Pipeline(cfg, [collect])  # a new worker: shard 0 is skipped, not fatal
    assert p.queue_dir == root / "1"
    adopter = shards.Adopter(p)
    try:
        adopter.scan()
        assert set(adopter.draining) == {root / "2"}
        deadline = time.monotonic() + 10
        while collect.records < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert collect.records == 7
        for _ in range(2):  # later scans retry the broken shard (logged once) and retire the drained one
            adopter.scan()
        assert adopter.draining == {}
    finally:
        adopter.close(1)
        p.close(0)
    warnings = [r for r in caplog.records if r.getMessage().startswith("queue shard cannot be opened")]
    assert [getattr(r, "shard", None) for r in warnings] == [str(root / "0")]


def test_new_queue_shard_is_synced_into_its_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: set[tuple[str, str]] = set()  # (directory, an entry it held when it was fsynced)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        target = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.isdir(target):
            synced.update((target, name) for name in os.listdir(target))

    monkeypatch.setattr(os, "fsync", fsync)
    cfg = Config()
    cfg.storage.dir = str(tmp_path / "data")
    cfg.exporters.file = FileExporterConfig(dir=str(tmp_path / "out"))
    Pipeline(cfg).close(0)
    # Each new directory is listed in a synced parent: tmp/data, data/queue, queue/0.
    assert (str(tmp_path), "data") in synced
    assert (str(tmp_path / "data"), "queue") in synced
    assert (str(tmp_path / "data" / "queue"), "0") in synced


def test_closing_the_adopter_during_a_scan_leaves_no_drain_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker shutting down while its adopter is between finding an orphan and opening it:
    close() returns at once, and the scan adopts nothing more, so no drain is left holding the
    shard."""
    cfg = Config()
    cfg.storage.dir = str(tmp_path / "data")
    cfg.exporters.file = FileExporterConfig(dir=str(tmp_path / "out"))
    root = tmp_path / "data" / "queue"
    orphan = Pipeline(cfg, [Collect()], queue_dir=root / "2", register_metrics=False)
    orphan.ingest("logs", logs("orphan", 3))
    orphan.close(0)
    del orphan
    gc.collect()

    found, resume = threading.Event(), threading.Event()
    real_candidates = shards.candidates

    def slow_candidates(root: Path, exclude: set[Path]) -> list[Path]:
        paths = real_candidates(root, exclude)
        found.set()
        resume.wait(10)  # the scan pauses here, an orphan in hand
        return paths

    monkeypatch.setattr(shards, "candidates", slow_candidates)
    p = Pipeline(cfg, [Collect()])
    adopter = shards.Adopter(p)
    adopter.first_delay_s = 0.0
    adopter.start()
    try:
        assert found.wait(10)
        started = time.monotonic()
        adopter.close(1)  # does not wait for the scan (which may be opening a large shard)
        assert time.monotonic() - started < 1.0
        resume.set()
        adopter.join(10)
        assert not adopter.is_alive()
        assert adopter.draining == {}
        # Nothing holds the orphan: the next process can open it (and finds its 3 records).
        monkeypatch.setattr(shards, "candidates", real_candidates)
        again = Pipeline(cfg, [Collect()], queue_dir=root / "2", register_metrics=False)
        try:
            assert again.pending() == 3
        finally:
            again.close(0)
    finally:
        resume.set()
        adopter.close(0)
        p.close(0)
