"""The file sink's output replays to the same records; raw protobuf files replay too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otel_clients import Sdk
from trackgate import Pipeline, replay
from trackgate.config import Config, FileExporterConfig, SentryExporterConfig


def file_config(out: Path) -> Config:
    cfg = Config()
    cfg.exporters.file = FileExporterConfig(dir=str(out))
    return cfg


def records(path: Path) -> list[tuple[str, dict]]:
    """Every record of a file sink file with its resource, in order, ignoring how batches were cut."""
    out = []
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        (key,) = doc
        for resource in doc[key]:
            scopes_key = next(k for k in resource if k.startswith("scope"))
            for scope in resource[scopes_key]:
                items_key = next(k for k in scope if k != "scope" and k != "schemaUrl")
                for item in scope[items_key]:
                    out.append((json.dumps(resource.get("resource"), sort_keys=True), item))
    return out


@pytest.mark.slow
def test_file_sink_output_replays_to_identical_records(gateway_factory, tmp_path: Path) -> None:
    gw = gateway_factory("", env={"MACHINE_ID": "m-1"})
    sdk = Sdk.connect(gw.url)
    tracer = sdk.tracer_provider.get_tracer("replay")
    for i in range(20):
        with tracer.start_as_current_span(f"op-{i}", attributes={"i": i, "ratio": i / 3, "tags": ["a", "b"]}):
            sdk.logger.error("failed %d", i)
    meter = sdk.meter_provider.get_meter("replay")
    meter.create_histogram("latency").record(0.25, {"route": "/jobs"})
    meter.create_up_down_counter("queue.depth").add(-4)
    sdk.flush()
    sdk.shutdown()
    assert gw.stop() == 0
    first = tmp_path / "trackgate-data" / "out"
    second = tmp_path / "replayed"
    files = sorted(first.glob("*.jsonl"))
    assert {f.name for f in files} == {"traces.jsonl", "logs.jsonl", "metrics.jsonl"}

    report = replay(files, file_config(second))
    assert report.errors == []
    assert report.accepted == sum(len(records(f)) for f in files)
    assert len(records(first / "traces.jsonl")) == len(records(first / "logs.jsonl")) == 20
    for name in ("traces.jsonl", "logs.jsonl", "metrics.jsonl"):
        assert records(second / name) == records(first / name), name


def test_replay_cli_protobuf_file(tmp_path: Path) -> None:
    msg = ExportMetricsServiceRequest()
    metric = msg.resource_metrics.add().scope_metrics.add().metrics.add()
    metric.name = "gpu.temp"
    metric.gauge.data_points.add(as_double=71.5, time_unix_nano=1_700_000_000_000_000_000)
    src = tmp_path / "capture.bin"
    src.write_bytes(msg.SerializeToString())
    out = tmp_path / "out"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[exporters.file]\ndir = "{out}"\n')
    run = subprocess.run(
        [sys.executable, "-m", "trackgate", "replay", str(src), "--signal", "metrics", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "1 records accepted" in run.stdout
    (line,) = (out / "metrics.jsonl").read_text().splitlines()
    point = json.loads(line)["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["gauge"]["dataPoints"][0]
    assert point == {"asDouble": 71.5, "timeUnixNano": "1700000000000000000"}


def test_replay_reports_bad_lines_and_protobuf_without_signal(tmp_path: Path) -> None:
    bad = tmp_path / "mixed.jsonl"
    good = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "ok"}}]}]}]})
    bad.write_text(good + "\n" + '{"resourceLogs": [{"scopeLogs": 5}]}\n')
    report = replay([bad], file_config(tmp_path / "o"))
    assert report.accepted == 1 and len(report.errors) == 1 and "mixed.jsonl" in report.errors[0]

    blob = tmp_path / "capture.bin"
    blob.write_bytes(ExportTraceServiceRequest().SerializeToString() or b"\x0a\x00")
    from trackgate.replay import ReplayError

    with pytest.raises(ReplayError, match="--signal"):
        replay([blob], file_config(tmp_path / "o2"))


def test_pipeline_library_round_trip(tmp_path: Path) -> None:
    """`trackgate.Pipeline` in-process: JSON in, file sink out, same JSON back."""
    doc = {
        "resourceLogs": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "lib"}}]},
                "scopeLogs": [
                    {
                        "scope": {"name": "s"},
                        "logRecords": [
                            {
                                "timeUnixNano": "1700000000000000001",
                                "severityNumber": 17,
                                "body": {"kvlistValue": {"values": [{"key": "k", "value": {"intValue": "-5"}}]}},
                                "traceId": "0102030405060708090a0b0c0d0e0f10",
                                "spanId": "0102030405060708",
                                "eventName": "job.failed",
                            }
                        ],
                    }
                ],
            }
        ]
    }
    with Pipeline(file_config(tmp_path / "lib")) as p:
        result = p.ingest("logs", json.dumps(doc).encode(), "json")
        assert result.accepted == 1
        assert p.flush(5)
    (line,) = (tmp_path / "lib" / "logs.jsonl").read_text().splitlines()
    assert json.loads(line) == doc


def test_replay_sentry_envelope_files(tmp_path: Path) -> None:
    """Envelope files (as the file sink writes them) take the Sentry track: scrubbed, forwarded
    upstream, and their errors become OTLP log records."""
    from sentry_upstream import SentryUpstream

    event = json.dumps(
        {"level": "error", "message": "disk full", "extra": {"api_key": "k-123"}, "tags": {"job.id": "job-7"}}
    ).encode()
    env = (
        b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc"}\n'
        + json.dumps({"type": "event", "length": len(event)}).encode()
        + b"\n"
        + event
        + b"\n"
    )
    src = tmp_path / "20261128T000000-9ec79c33ec9942ab8353589fcb2e04dc.envelope"
    src.write_bytes(env)
    stand_in = SentryUpstream()
    try:
        cfg = file_config(tmp_path / "out")
        cfg.exporters.sentry = SentryExporterConfig(dsn=stand_in.dsn("upkey0123", "5"))
        report = replay([src], cfg)
        assert report.errors == [] and report.requests == 1
        assert stand_in.wait_for(lambda s: len(s.items("event")) == 1)
        (item,) = stand_in.items("event")
        assert item.json()["extra"]["api_key"] == "[Filtered]"
    finally:
        stand_in.close()
    (line,) = (tmp_path / "out" / "logs.jsonl").read_text().splitlines()
    record = json.loads(line)["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    assert record["body"]["stringValue"] == "disk full"
    assert {"key": "job.id", "value": {"stringValue": "job-7"}} in record["attributes"]
