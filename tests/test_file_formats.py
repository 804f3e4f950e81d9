"""The file sink's two formats read back exactly.

`json`: the core's protobuf → OTLP/JSON, parsed by protobuf's own `json_format` (after the one
OTLP/JSON deviation, hex trace/span ids), gives back the very request bytes: every value kind,
strings that need escaping, non-finite doubles. `proto`: the Collector's framing, replayed.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from trackgate import Pipeline, _core, replay
from trackgate.config import Config, FileExporterConfig

# Strings a JSON writer can get wrong: quotes, backslashes, every control character, DEL,
# multi-byte UTF-8 (incl. U+2028, which JSON allows raw), long clean runs around an escape.
EDGE_STRINGS = [
    "",
    'quote " and backslash \\ and slash /',
    "".join(chr(c) for c in range(0x20)) + "\x7f",
    "tab\there\nnewline\r\n\b\f",
    "é ü 中文 😀 \u2028\u2029 \ufeff",
    "x" * 37 + '"' + "y" * 41 + "\\" + "z" * 7,
    "clean ascii of exactly sixteen!!",
]
HEX_KEYS = {"traceId", "spanId", "parentSpanId"}


def hex_ids_to_base64(doc: Any) -> Any:
    """OTLP/JSON writes ids in hex; protobuf JSON expects base64."""
    if isinstance(doc, dict):
        return {
            k: base64.b64encode(bytes.fromhex(v)).decode() if k in HEX_KEYS else hex_ids_to_base64(v)
            for k, v in doc.items()
        }
    if isinstance(doc, list):
        return [hex_ids_to_base64(v) for v in doc]
    return doc


def assert_round_trip(signal: str, msg: Message) -> None:
    body = msg.SerializeToString()
    text = _core.to_json(signal, body)  # type: ignore[arg-type]
    # Strict JSON (non-finite doubles only as strings); "-0" is -0.0 (Python reads it as the int 0).
    doc = json.loads(text, parse_int=lambda t: -0.0 if t == "-0" else int(t))
    back = type(msg)()
    json_format.ParseDict(hex_ids_to_base64(doc), back)
    assert back.SerializeToString() == body
    # The core's own reader too (what `trackgate replay` uses).
    assert _core.to_protobuf(signal, text) == body  # type: ignore[arg-type]


def fill_values(value: AnyValue, i: int, depth: int = 0) -> None:
    """One AnyValue of each kind, by index; arrays and kvlists nest two levels."""
    kind = i % 7 if depth < 2 else i % 5
    if kind == 0:
        value.string_value = EDGE_STRINGS[i % len(EDGE_STRINGS)]
    elif kind == 1:
        value.bool_value = i % 2 == 1
    elif kind == 2:
        value.int_value = [-(1 << 63), -1, 0, 1, (1 << 63) - 1][i % 5]
    elif kind == 3:
        value.double_value = [0.1, -0.0, 1e300, 5e-324, 1e21, 123.0, -2.5][i % 7]
    elif kind == 4:
        value.bytes_value = bytes(range(i % 256)) + b"\x00\xff"
    elif kind == 5:
        for j in range(3):
            fill_values(value.array_value.values.add(), i + j + 1, depth + 1)
    else:
        for j, key in enumerate(EDGE_STRINGS[:3]):
            kv = value.kvlist_value.values.add(key=key or "k")
            fill_values(kv.value, i + j, depth + 1)


def test_logs_round_trip_every_value_kind_and_string() -> None:
    msg = ExportLogsServiceRequest()
    rl = msg.resource_logs.add(schema_url="https://opentelemetry.io/schemas/1.21.0")
    rl.resource.attributes.add(key="service.name").value.string_value = "api ✓"
    rl.resource.dropped_attributes_count = 3
    sl = rl.scope_logs.add()
    sl.scope.name, sl.scope.version = "scope\n", "1.0"
    for i in range(60):
        r = sl.log_records.add()
        r.time_unix_nano = (1 << 64) - 1 - i
        r.observed_time_unix_nano = 1_700_000_000_000_000_000 + i
        r.severity_number = i % 25
        r.severity_text = EDGE_STRINGS[i % len(EDGE_STRINGS)]
        fill_values(r.body, i)
        for j in range(i % 4):
            fill_values(r.attributes.add(key=EDGE_STRINGS[j] or "empty").value, i + j)
        r.flags = i
        r.trace_id, r.span_id = bytes([i]) * 16, bytes([255 - i]) * 8
        r.event_name = "job.done" if i % 3 else ""
    assert_round_trip("logs", msg)


def test_traces_round_trip() -> None:
    msg = ExportTraceServiceRequest()
    rs = msg.resource_spans.add()
    ss = rs.scope_spans.add()
    for i in range(30):
        s = ss.spans.add()
        s.trace_id, s.span_id = bytes(range(i, i + 16)), bytes(range(i, i + 8))
        if i:
            s.parent_span_id = bytes(range(8))
        s.trace_state = "k=v" if i % 2 else ""
        s.name = EDGE_STRINGS[i % len(EDGE_STRINGS)]
        s.kind = i % 6
        s.start_time_unix_nano, s.end_time_unix_nano = i, (1 << 64) - 1
        s.flags = 0x100 | i
        fill_values(s.attributes.add(key="a").value, i)
        ev = s.events.add(name="exception", time_unix_nano=7)
        fill_values(ev.attributes.add(key="exception.message").value, i + 1)
        link = s.links.add(trace_id=b"\xab" * 16, span_id=b"\xcd" * 8, trace_state="x=y", flags=1)
        link.dropped_attributes_count = i
        s.status.code = i % 3
        s.status.message = EDGE_STRINGS[(i + 1) % len(EDGE_STRINGS)]
        s.dropped_events_count = i % 2
    assert_round_trip("traces", msg)


def test_metrics_round_trip_every_point_kind_and_non_finite_doubles() -> None:
    msg = ExportMetricsServiceRequest()
    sm = msg.resource_metrics.add().scope_metrics.add()
    specials = [math.nan, math.inf, -math.inf, -0.0, 0.5, 1e-7, 2.0**53 + 2]
    gauge = sm.metrics.add(name="g", unit="1", description="a\tgauge")
    for i, v in enumerate(specials):
        p = gauge.gauge.data_points.add(time_unix_nano=i, as_double=v)
        ex = p.exemplars.add(as_int=-i, span_id=b"\x01" * 8, trace_id=b"\x02" * 16)
        ex.filtered_attributes.add(key="k").value.double_value = v
    gauge.gauge.data_points.add(as_int=-(1 << 63))
    total = sm.metrics.add(name="s")
    total.sum.aggregation_temporality, total.sum.is_monotonic = 2, True
    total.sum.data_points.add(as_int=(1 << 63) - 1, start_time_unix_nano=1)
    hist = sm.metrics.add(name="h")
    hist.histogram.aggregation_temporality = 1
    hp = hist.histogram.data_points.add(count=5, sum=math.inf, min=-math.inf, max=math.nan)
    hp.bucket_counts.extend([0, 1, (1 << 64) - 1])
    hp.explicit_bounds.extend([-math.inf, 0.25])
    exp = sm.metrics.add(name="e")
    ep = exp.exponential_histogram.data_points.add(scale=-3, zero_count=2, zero_threshold=1e-9, count=9)
    ep.positive.offset, ep.negative.offset = -5, 7
    ep.positive.bucket_counts.extend([1, 2, 3])
    ep.negative.bucket_counts.extend([4])
    summary = sm.metrics.add(name="q")
    qp = summary.summary.data_points.add(count=3, sum=-1.5, flags=1)
    qp.quantile_values.add(quantile=0.99, value=math.nan)
    qp.quantile_values.add(quantile=0.5, value=3.0)
    assert_round_trip("metrics", msg)


def logs(text: str) -> bytes:
    msg = ExportLogsServiceRequest()
    msg.resource_logs.add().scope_logs.add().log_records.add().body.string_value = text
    return msg.SerializeToString()


def frames(path: Path) -> list[bytes]:
    data, out, at = path.read_bytes(), [], 0
    while at < len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        out.append(data[at + 4 : at + 4 + length])
        at += 4 + length
    assert at == len(data)
    return out


def bodies(path: Path) -> list[str]:
    out = []
    for frame in frames(path):
        msg = ExportLogsServiceRequest()
        msg.ParseFromString(frame)
        out += [r.body.string_value for rl in msg.resource_logs for sl in rl.scope_logs for r in sl.log_records]
    return out


def proto_config(out: Path, **kw: Any) -> Config:
    cfg = Config()
    cfg.batch.max_records = 1
    cfg.exporters.file = FileExporterConfig(dir=str(out), format="proto", **kw)
    return cfg


def json_config(out: Path) -> Config:
    cfg = Config()
    cfg.exporters.file = FileExporterConfig(dir=str(out))
    return cfg


def test_proto_format_writes_the_batch_framed_and_replays(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with Pipeline(proto_config(out)) as p:
        for i in range(3):
            p.ingest("logs", logs(f"line {i} \u2028"))
            assert p.flush(5)
    assert sorted(f.name for f in out.iterdir()) == ["logs.binpb"]
    assert bodies(out / "logs.binpb") == [f"line {i} \u2028" for i in range(3)]

    # replay tells the framing from a raw request by itself, and from the file name the signal.
    again = tmp_path / "again"
    report = replay([out / "logs.binpb"], json_config(again))
    assert report.errors == [] and report.requests == 3 and report.accepted == 3
    lines = (again / "logs.jsonl").read_bytes().splitlines()  # not str.splitlines: U+2028 is no line end here
    got = [
        r["body"]["stringValue"]
        for line in lines
        for rl in json.loads(line)["resourceLogs"]
        for sl in rl["scopeLogs"]
        for r in sl["logRecords"]
    ]
    assert got == [f"line {i} \u2028" for i in range(3)]


def test_proto_format_cuts_a_torn_frame_and_rotates(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    cfg = proto_config(out, max_file_bytes=200, max_files=2)
    with Pipeline(cfg) as p:
        p.ingest("logs", logs("first"))
        assert p.flush(5)
    # A worker died mid-write: a frame whose length runs past the end of the file.
    with open(out / "logs.binpb", "ab") as fh:
        fh.write((1000).to_bytes(4, "big") + b"\x0a\x05torn")
    with Pipeline(cfg) as p:
        p.ingest("logs", logs("second"))
        assert p.flush(5)
        assert bodies(out / "logs.binpb") == ["first", "second"]
        for i in range(8):  # ~80 bytes a frame, two a file: rotates, keeping max_files rotated files
            p.ingest("logs", logs(f"more {i}" + "x" * 60))
            assert p.flush(5)
    rotated = sorted(out.glob("logs-*.binpb"))
    assert len(rotated) == 2
    for f in [*rotated, out / "logs.binpb"]:
        assert f.stat().st_size <= 200
        frames(f)  # whole frames only


def test_replay_reports_a_torn_proto_frame(tmp_path: Path) -> None:
    path = tmp_path / "logs.binpb"
    body = logs("kept")
    path.write_bytes(len(body).to_bytes(4, "big") + body + (50).to_bytes(4, "big") + b"\x0a")
    with pytest.raises(ValueError, match=rf"torn frame at byte {4 + len(body)} \(a length of 50 runs past the end"):
        replay([path], json_config(tmp_path / "o"))


def test_unknown_format_is_a_config_error(tmp_path: Path) -> None:
    from trackgate.config import ConfigError, load

    path = tmp_path / "trackgate.toml"
    path.write_text('[exporters.file]\nformat = "protobuf"\n')
    with pytest.raises(ConfigError, match="format"):
        load(path)


def test_json_line_is_written_by_the_core(tmp_path: Path) -> None:
    body = logs('a "quoted" line')
    line = _core.to_json_line("logs", body)
    assert len(line) == len(_core.to_json("logs", body)) + 1
    path = tmp_path / "logs.jsonl"
    path.write_bytes(b"before\n")
    line.write_to(path)
    line.write_to(str(path))
    assert path.read_bytes() == b"before\n" + 2 * (_core.to_json("logs", body) + b"\n")
    with pytest.raises(FileNotFoundError):
        line.write_to(tmp_path / "missing" / "logs.jsonl")
    with pytest.raises(ValueError, match="truncated protobuf"):
        _core.to_json_line("logs", b"\x0a\x05\xff")
