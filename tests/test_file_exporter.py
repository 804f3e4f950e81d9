"""The file sink rotates by size and keeps a bounded number of files."""

from __future__ import annotations

import json

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from trackgate import Pipeline
from trackgate.config import Config, FileExporterConfig


def logs(text: str) -> bytes:
    msg = ExportLogsServiceRequest()
    msg.resource_logs.add().scope_logs.add().log_records.add().body.string_value = text
    return msg.SerializeToString()


def test_rotation_keeps_every_line_and_bounds_files(tmp_path) -> None:
    cfg = Config()
    cfg.batch.max_records = 1
    cfg.exporters.file = FileExporterConfig(dir=str(tmp_path), max_file_bytes=400, max_files=3)
    with Pipeline(cfg) as p:
        for i in range(4):
            p.ingest("logs", logs(f"line-{i:03d}-" + "x" * 100))
            assert p.flush(5)
    files = [*sorted(tmp_path.glob("logs-*.jsonl")), tmp_path / "logs.jsonl"]
    bodies = [
        rec["body"]["stringValue"]
        for f in files
        for line in f.read_text().splitlines()
        for rl in json.loads(line)["resourceLogs"]
        for sl in rl["scopeLogs"]
        for rec in sl["logRecords"]
    ]
    assert [b[:8] for b in bodies] == ["line-000", "line-001", "line-002", "line-003"]
    assert all(f.stat().st_size <= 400 for f in files)

    with Pipeline(cfg) as p:
        for i in range(10):
            p.ingest("logs", logs(f"more-{i:03d}-" + "x" * 100))
            assert p.flush(5)
    assert len(list(tmp_path.glob("logs-*.jsonl"))) == 3
