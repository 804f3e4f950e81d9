"""Dash0 content counts taken once at ingest and carried by the batch (issue 11): the report a
batch carries is the one a walk of its body gives, live or read back from disk, and exporters
count from it without walking the body again. Also the exporters' gzip level."""

from __future__ import annotations

import gc
import time
import zlib
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from trackgate import Pipeline, telemetry
from trackgate._core import Batch, Core, dash0_content_report, gzip
from trackgate.config import Config, OtlpExporterConfig
from trackgate.exporters.otlp_http import count_over_dash0_limits
from trackgate.loadgen import request_body
from upstream import Upstream

HOUR_NS = 3600 * 10**9


def logs_over_limits(tag: str) -> bytes:
    """One record over each log limit, one record within them, one rewritten by scrubbing."""
    now = time.time_ns()
    msg = ExportLogsServiceRequest()
    records = msg.resource_logs.add().scope_logs.add().log_records
    records.add(time_unix_nano=now).body.string_value = "b" * 5000  # body over 4 KB
    many = records.add(time_unix_nano=now)
    for i in range(17):  # over 16 attributes
        many.attributes.add(key=f"k{i}").value.string_value = "v"
    records.add(time_unix_nano=now).attributes.add(key="long").value.string_value = "é" * 2049
    records.add(observed_time_unix_nano=now - 7 * HOUR_NS).body.string_value = f"old {tag}"
    records.add(time_unix_nano=now).body.string_value = f"fine {tag}"
    # Over the value limit as sent, but scrubbing replaces the value: counted as it leaves.
    records.add(time_unix_nano=now).attributes.add(key="password").value.string_value = "p" * 3000
    return msg.SerializeToString()


def spans_over_limits() -> bytes:
    now = time.time_ns()
    msg = ExportTraceServiceRequest()
    spans = msg.resource_spans.add().scope_spans.add().spans
    for i, (attributes, start) in enumerate([(33, now), (1, now - 7 * HOUR_NS), (2, now)]):
        span = spans.add(trace_id=(i + 1).to_bytes(16, "big"), span_id=b"\x01" * 8, start_time_unix_nano=start)
        for a in range(attributes):
            span.attributes.add(key=f"a{a}").value.string_value = "x" * (2100 if i == 2 else 3)
    return msg.SerializeToString()


def take(core: Core, signal: str) -> Batch:
    batch = core.next_batch("dash0", signal, 5.0, True)  # type: ignore[arg-type]
    assert batch is not None
    return batch


@pytest.mark.parametrize("content_counts", [True, False])
def test_batches_carry_the_report_of_their_body(content_counts: bool) -> None:
    core = Core(exporters=["dash0"], scrub_otlp=True, content_counts=content_counts)
    for tag in ("a", "b"):
        core.ingest("logs", logs_over_limits(tag), "protobuf")
    core.ingest("traces", spans_over_limits(), "protobuf")
    for signal, expected in [
        ("logs", {"log_body": 2, "log_attributes": 2, "attribute_value": 2, "too_old": 2}),
        ("traces", {"span_attributes": 1, "attribute_value": 1, "too_old": 1}),
    ]:
        batch = take(core, signal)
        report = batch.content_report
        assert report == dash0_content_report(signal, batch.body)  # type: ignore[arg-type]
        assert {k: v for k, v in report if v} == expected
        core.ack(batch)
    core.close()


def test_report_of_batches_read_back_from_disk(tmp_path: Path) -> None:
    """Counts live in memory only: entries read back after a restart are walked again."""
    core = Core(exporters=["dash0"], storage_dir=tmp_path, scrub_otlp=True)
    core.ingest("logs", logs_over_limits("kept"), "protobuf")
    before = take(core, "logs").content_report  # not acked: delivered again after the restart
    core.close()
    del core  # a process that is gone: its lock goes with the core
    gc.collect()
    core = Core(exporters=["dash0"], storage_dir=tmp_path, scrub_otlp=True)
    core.ingest("logs", logs_over_limits("new"), "protobuf")  # a live entry in the same batch
    batch = take(core, "logs")
    assert batch.records == 12
    assert batch.content_report == dash0_content_report("logs", batch.body)
    assert dict(batch.content_report)["log_body"] == 2 * dict(before)["log_body"] == 2
    core.close()


class UnreadableBody:
    """A batch whose body must not be read: counting has to come from the carried report."""

    signal = "logs"

    def __init__(self, report: list[tuple[str, int]]) -> None:
        self.content_report = report

    @property
    def body(self) -> bytes:
        raise AssertionError("the exporter walked the batch body again")


def test_exporter_counts_from_the_carried_report() -> None:
    labels = {"exporter": "carried", "signal": "logs"}
    before = telemetry.OVER_LIMIT.value(limit="log_body", **labels)
    batch = UnreadableBody([("log_body", 3), ("too_old", 0)])
    count_over_dash0_limits("carried", batch, set())  # type: ignore[arg-type]
    assert telemetry.OVER_LIMIT.value(limit="log_body", **labels) - before == 3


@pytest.mark.parametrize(("level", "xfl"), [(1, 4), (9, 2)])
def test_gzip_level_reaches_the_wire(upstream: Upstream, level: int, xfl: int) -> None:
    cfg = Config()
    cfg.batch.max_delay_ms = 10
    cfg.exporters.otlp = OtlpExporterConfig(endpoint=upstream.url, token="t", compression_level=level)
    body = logs_over_limits("level")
    with Pipeline(cfg) as p:
        p.ingest("logs", body)
        assert p.flush(5)
    (got,) = upstream.delivered("/v1/logs")
    assert got.headers["content-encoding"] == "gzip"
    assert got.raw[8] == xfl  # the gzip header's XFL byte: 4 = fastest, 2 = best
    sent = ExportLogsServiceRequest.FromString(body).resource_logs[0].scope_logs[0].log_records
    assert list(upstream.log_records()) == list(sent)


@pytest.mark.parametrize("configured", [None, 6])
def test_gzip_level_per_signal_unless_configured(upstream: Upstream, configured: int | None) -> None:
    """Unset, traces batches go at level 1, metrics at 2 and logs at 3; a configured level applies
    to every signal. Each body is identified by recompressing it: exactly one level gives it."""
    cfg = Config()
    cfg.batch.max_delay_ms = 10
    cfg.exporters.otlp = OtlpExporterConfig(endpoint=upstream.url, token="t", compression_level=configured)
    defaults = {"traces": 1, "metrics": 2, "logs": 3}
    with Pipeline(cfg) as p:
        for signal in defaults:
            p.ingest(signal, request_body(signal, 200))
        assert p.flush(5)
    for signal, default in defaults.items():
        (got,) = upstream.delivered(f"/v1/{signal}")
        plain = zlib.decompress(got.raw, wbits=31)
        assert [level for level in (1, 2, 3, 6) if gzip(plain, level) == got.raw] == [configured or default]
