"""Writes a seed corpus for each fuzz target under fuzz/corpus/<target>/ (git-ignored).

Valid OTLP requests of every signal, built with opentelemetry-proto, in protobuf and OTLP/JSON
(protobuf's JSON mapping with hex ids),
plain and compressed, each behind the option bytes its target reads first (see fuzz/src/lib.rs).
Run with the project's virtualenv: `.venv/bin/python fuzz/seeds.py`.
"""

from __future__ import annotations

import base64
import gzip
import json
import sys
import zlib
from pathlib import Path
from typing import Any

import zstandard
from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

# Option bytes: the order of Signal::ALL, Format and ENCODINGS in the fuzz crate.
SIGNAL = {"logs": 0, "traces": 1, "metrics": 2}
PROTOBUF, JSON = 0, 1
ENCODING = {None: 0, "gzip": 2, "deflate": 4, "zstd": 5}


def traces() -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "checkout ✓"
    ss = rs.scope_spans.add()
    ss.scope.name, ss.scope.version = "io.example", "1.0"
    for i, code in enumerate([0, 2]):
        span = ss.spans.add()
        span.trace_id, span.span_id = bytes(range(1, 17)), bytes([i + 1] * 8)
        span.parent_span_id = b"\x09" * 8
        span.name, span.kind = f"GET /item/{i}", 2
        span.start_time_unix_nano, span.end_time_unix_nano = 1_700_000_000_000_000_000, 1_700_000_000_500_000_000
        span.status.code = code
        attr = span.attributes.add()
        attr.key = "nested"
        values = attr.value.array_value.values
        values.add().int_value = -42
        values.add().double_value = 1.5
        values.add().bytes_value = b"\x00\xff"
        inner = values.add().kvlist_value.values.add()
        inner.key, inner.value.bool_value = "flag", True
        event = span.events.add()
        event.name, event.time_unix_nano = "exception", 1_700_000_000_100_000_000
        link = span.links.add()
        link.trace_id, link.span_id, link.flags = b"\xab" * 16, b"\xcd" * 8, 0x301
    return req


def logs() -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    sl = req.resource_logs.add().scope_logs.add()
    for severity in (9, 17):
        rec = sl.log_records.add()
        rec.time_unix_nano, rec.severity_number, rec.severity_text = 1_700_000_000_000_000_000, severity, "x"
        rec.body.string_value = 'line with "quotes" and \\ and \n'
        rec.trace_id, rec.span_id = b"\x01" * 16, b"\x02" * 8
    sl.log_records.add().body.kvlist_value.values.add().key = "k"
    return req


def metrics() -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    sm = req.resource_metrics.add().scope_metrics.add()
    gauge = sm.metrics.add()
    gauge.name, gauge.unit = "cpu", "1"
    gauge.gauge.data_points.add().as_double = 0.5
    total = sm.metrics.add()
    total.name = "requests"
    total.sum.aggregation_temporality, total.sum.is_monotonic = 2, True
    total.sum.data_points.add().as_int = 7
    hist = sm.metrics.add()
    hist.name = "latency"
    point = hist.histogram.data_points.add()
    point.count, point.sum = 3, 1.25
    point.bucket_counts.extend([1, 2, 0])
    point.explicit_bounds.extend([0.1, 1.0])
    exemplar = point.exemplars.add()
    exemplar.as_double, exemplar.trace_id, exemplar.span_id = 0.2, b"\x03" * 16, b"\x04" * 8
    exp = sm.metrics.add()
    exp.name = "exp"
    epoint = exp.exponential_histogram.data_points.add()
    epoint.scale, epoint.zero_count = -3, 1
    epoint.positive.offset = -2
    epoint.positive.bucket_counts.extend([5, 0, 1])
    summary = sm.metrics.add()
    summary.name = "summary"
    quantile = summary.summary.data_points.add().quantile_values.add()
    quantile.quantile, quantile.value = 0.99, 12.0
    return req


def hex_ids(node: Any) -> Any:
    """OTLP/JSON writes trace and span ids in hex where protobuf's JSON writes base64."""
    if isinstance(node, dict):
        return {k: base64.b64decode(v).hex() if k in ID_KEYS else hex_ids(v) for k, v in node.items()}
    if isinstance(node, list):
        return [hex_ids(v) for v in node]
    return node


ID_KEYS = {"traceId", "spanId", "parentSpanId"}


def to_json(msg: Message) -> bytes:
    return json.dumps(hex_ids(json_format.MessageToDict(msg)), ensure_ascii=False).encode()


def compress(body: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body)
    if encoding == "deflate":
        return zlib.compress(body)
    if encoding == "zstd":
        return zstandard.ZstdCompressor().compress(body)
    return body


def main(out: Path) -> None:
    requests: dict[str, Message] = {"traces": traces(), "logs": logs(), "metrics": metrics()}
    seeds: dict[str, list[bytes]] = {name: [] for name in
                                     ("validate", "protobuf_to_json", "json_to_protobuf", "ingest", "decompress",
                                      "parse_partial_success")}  # fmt: skip
    for signal, msg in requests.items():
        s = bytes([SIGNAL[signal]])
        pb, text = msg.SerializeToString(), to_json(msg)
        seeds["validate"].append(s + pb)
        seeds["protobuf_to_json"].append(s + pb)
        seeds["json_to_protobuf"].append(s + text)
        for encoding, code in ENCODING.items():
            # signal, format, encoding, traces ratio, logs ratio, flags, limit, then the body.
            for fmt, body in ((PROTOBUF, pb), (JSON, text)):
                options = bytes([SIGNAL[signal], fmt, code, 2, 2, 3, 0])
                seeds["ingest"].append(options + compress(body, encoding))
            if encoding is not None:
                seeds["decompress"].append(bytes([code, 4]) + compress(pb, encoding))
    partial = ExportTraceServiceResponse()
    partial.partial_success.rejected_spans, partial.partial_success.error_message = 2, "trace_id must be 16 bytes"
    seeds["parse_partial_success"] += [
        bytes([PROTOBUF]) + partial.SerializeToString(),
        bytes([PROTOBUF]) + ExportLogsServiceResponse().SerializeToString(),
        bytes([JSON]) + b'{"partialSuccess":{"rejectedLogRecords":"3","errorMessage":"bad \\u00e9"}}',
        bytes([JSON]) + b"{}",
    ]
    event = {
        "event_id": "9ec79c33ec9942ab8353589fcb2e04dc",
        "message": "boom",
        "level": "error",
        "exception": {"values": [{"type": "ValueError", "value": "card 4111 1111 1111 1111"}]},
        "request": {"headers": [["Authorization", "Bearer x"]], "data": {"password": "hunter2"}},
        "contexts": {"trace": {"trace_id": "771a43a4192642f0b136d5159a501700", "span_id": "b0e6f15b45c36b12"}},
    }
    log_items = {
        "items": [
            {"timestamp": 1.5, "level": "info", "body": "hi", "attributes": {"k": {"value": 1, "type": "integer"}}}
        ]
    }
    header = b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc","dsn":"https://key@sentry.example/42"}'
    event_json, logs_json = json.dumps(event).encode(), json.dumps(log_items).encode()
    envelope = b"\n".join([
        header,
        b'{"type":"event"}', event_json,
        b'{"type":"log","length":%d}' % len(logs_json), logs_json,
        b'{"type":"attachment","length":3,"filename":"a.bin"}', b"\x00\n\xff",
        b'{"type":"transaction"}', json.dumps({**event, "type": "transaction"}).encode(),
    ]) + b"\n"  # fmt: skip
    seeds["sentry_envelope"] = [bytes([0]) + envelope, bytes([0x28]) + envelope]
    seeds["sentry_store"] = [
        bytes([0]) + event_json,
        bytes([0]) + base64.b64encode(zlib.compress(event_json)),
        bytes([0]) + envelope,
    ]
    for target, bodies in seeds.items():
        folder = out / target
        folder.mkdir(parents=True, exist_ok=True)
        for i, body in enumerate(bodies):
            (folder / f"seed-{i:02d}").write_bytes(body)
    print(f"wrote {sum(map(len, seeds.values()))} seeds under {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "corpus")
