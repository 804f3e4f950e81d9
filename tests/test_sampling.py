"""Sampling is consistent by trace id (replicas agree without talking) and never drops errors."""

from __future__ import annotations

import random

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from trackgate import Pipeline
from trackgate.config import Config, FileExporterConfig


def make_pipeline(tmp_path, name: str, traces: float, logs: float = 1.0) -> Pipeline:
    cfg = Config()
    cfg.sampling.traces = traces
    cfg.sampling.logs = logs
    cfg.exporters.file = FileExporterConfig(dir=str(tmp_path / name))
    return Pipeline(cfg)


def spans_request(trace_ids: list[bytes], error_every: int = 0) -> bytes:
    msg = ExportTraceServiceRequest()
    spans = msg.resource_spans.add().scope_spans.add()
    for i, tid in enumerate(trace_ids):
        span = spans.spans.add()
        span.trace_id, span.span_id, span.name = tid, (i + 1).to_bytes(8, "big"), f"span-{i}"
        if error_every and i % error_every == 0:
            span.status.code = 2
    return msg.SerializeToString()


def kept_names(p: Pipeline) -> list[str]:
    batch = p.core.next_batch("file", "traces", 1.0, True)
    if batch is None:
        return []
    msg = ExportTraceServiceRequest()
    msg.ParseFromString(batch.body)
    return sorted(s.name for rs in msg.resource_spans for ss in rs.scope_spans for s in ss.spans)


def test_same_trace_id_same_decision_in_two_pipelines(tmp_path) -> None:
    rng = random.Random(7)
    ids = [rng.randbytes(16) for _ in range(2000)]
    body = spans_request(ids)
    a = make_pipeline(tmp_path, "a", 0.3)
    b = make_pipeline(tmp_path, "b", 0.3)
    ra, rb = a.ingest("traces", body), b.ingest("traces", body)
    assert ra.accepted == rb.accepted and ra.sampled_out == rb.sampled_out
    assert ra.accepted + ra.sampled_out == 2000
    assert 450 < ra.accepted < 750  # about 30 % kept
    assert kept_names(a) == kept_names(b)
    a.close(0)
    b.close(0)


def test_spans_of_one_trace_are_kept_or_dropped_together(tmp_path) -> None:
    p = make_pipeline(tmp_path, "t", 0.5)
    rng = random.Random(3)
    ids = [tid for tid in (rng.randbytes(16) for _ in range(50)) for _ in range(4)]
    p.ingest("traces", spans_request(ids))
    kept = kept_names(p)
    kept_traces = {ids[int(n.split("-")[1])] for n in kept}
    assert len(kept) == 4 * len(kept_traces)
    p.close(0)


def test_errors_survive_a_zero_rate(tmp_path) -> None:
    p = make_pipeline(tmp_path, "e", 0.0, logs=0.0)
    rng = random.Random(5)
    result = p.ingest("traces", spans_request([rng.randbytes(16) for _ in range(30)], error_every=10))
    assert (result.accepted, result.sampled_out) == (3, 27)
    assert kept_names(p) == ["span-0", "span-10", "span-20"]

    logs = ExportLogsServiceRequest()
    records = logs.resource_logs.add().scope_logs.add()
    for severity in (9, 13, 17, 21):  # INFO, WARN, ERROR, FATAL
        records.log_records.add(severity_number=severity).body.string_value = f"sev{severity}"
    result = p.ingest("logs", logs.SerializeToString())
    assert (result.accepted, result.sampled_out) == (2, 2)
    p.close(0)


def test_errors_dropped_when_keep_errors_is_off(tmp_path) -> None:
    cfg = Config()
    cfg.sampling.traces = 0.0
    cfg.sampling.keep_errors = False
    cfg.exporters.file = FileExporterConfig(dir=str(tmp_path / "x"))
    p = Pipeline(cfg)
    rng = random.Random(9)
    result = p.ingest("traces", spans_request([rng.randbytes(16) for _ in range(10)], error_every=2))
    assert (result.accepted, result.sampled_out) == (0, 10)
    p.close(0)
