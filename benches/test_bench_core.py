"""The data plane against a pure-Python pipeline on the same input.

Both sides do the same work on an OTLP export request: decode, reject spans with bad ids,
sample by trace id, add a resource attribute, and produce the protobuf to send. The Python
baseline uses upb-backed `opentelemetry-proto` messages and a Python loop over the records.
Run with `make bench`; figures and the command go to benches/RESULTS.md.
"""

from __future__ import annotations

import gzip
import json
import random

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from trackgate import _core
from trackgate.config import FileExporterConfig
from trackgate.exporters.file import FileExporter

SPANS = 2000
RATIO = 0.5
THRESHOLD = round((1 - RATIO) * (1 << 56))


def make_traces(n: int = SPANS) -> bytes:
    rng = random.Random(1)
    msg = ExportTraceServiceRequest()
    rs = msg.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "comfy-worker"
    spans = rs.scope_spans.add()
    spans.scope.name = "comfyui"
    for i in range(n):
        s = spans.spans.add()
        s.trace_id, s.span_id = rng.randbytes(16), rng.randbytes(8)
        s.name = f"node.execute.{i % 17}"
        s.kind = 1
        s.start_time_unix_nano = 1_700_000_000_000_000_000 + i
        s.end_time_unix_nano = s.start_time_unix_nano + 5_000_000
        for key in ("job.id", "workflow.id", "node.type"):
            s.attributes.add(key=key).value.string_value = f"{key}-{i % 97}"
        s.attributes.add(key="gpu.index").value.int_value = i % 8
    return msg.SerializeToString()


def make_logs(n: int = SPANS) -> bytes:
    rng = random.Random(2)
    msg = ExportLogsServiceRequest()
    rl = msg.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = "api"
    records = rl.scope_logs.add()
    for i in range(n):
        r = records.log_records.add()
        r.time_unix_nano = 1_700_000_000_000_000_000 + i
        r.severity_number = 9 if i % 10 else 17
        r.body.string_value = f"job {i} moved to state running on worker w-{i % 13}"
        r.trace_id, r.span_id = rng.randbytes(16), rng.randbytes(8)
    return msg.SerializeToString()


def python_pipeline(body: bytes) -> bytes:
    """The baseline: parse everything, loop in Python, serialize everything."""
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = ExportTraceServiceRequest()
    for rs in req.resource_spans:
        keys = {kv.key for kv in rs.resource.attributes}
        new_rs = out.resource_spans.add()
        new_rs.resource.CopyFrom(rs.resource)
        if "machine.id" not in keys:
            new_rs.resource.attributes.append(KeyValue(key="machine.id"))
            new_rs.resource.attributes[-1].value.string_value = "gpu-01"
        for ss in rs.scope_spans:
            new_ss = new_rs.scope_spans.add()
            new_ss.scope.CopyFrom(ss.scope)
            for span in ss.spans:
                if len(span.trace_id) != 16 or len(span.span_id) != 8:
                    continue
                keep = span.status.code == 2 or int.from_bytes(span.trace_id[9:], "big") >= THRESHOLD
                if keep:
                    new_ss.spans.append(span)
    return out.SerializeToString()


def core(exporters: list[str] | None = None) -> _core.Core:
    return _core.Core(
        exporters=exporters or ["bench"],
        sampling_traces=RATIO,
        resource_attributes=[("machine.id", "gpu-01")],
        batch_max_delay_ms=0,
        queue_max_bytes=1 << 34,
    )


def core_pipeline(c: _core.Core, signal: str, body: bytes, fmt: str = "protobuf", enc: str | None = None) -> bytes:
    c.ingest(signal, body, fmt, enc)  # type: ignore[arg-type]
    batch = c.next_batch("bench", signal, 0.0, True)  # type: ignore[arg-type]
    assert batch is not None
    c.ack(batch)
    return batch.body


@pytest.fixture(scope="module")
def traces_body() -> bytes:
    return make_traces()


def test_same_decisions(traces_body: bytes) -> None:
    """The benchmark compares like with like: both keep the same spans."""
    ours = ExportTraceServiceRequest()
    ours.ParseFromString(core_pipeline(core(), "traces", traces_body))
    theirs = ExportTraceServiceRequest()
    theirs.ParseFromString(python_pipeline(traces_body))
    assert [s.span_id for s in ours.resource_spans[0].scope_spans[0].spans] == [
        s.span_id for s in theirs.resource_spans[0].scope_spans[0].spans
    ]


@pytest.mark.benchmark(group="traces-protobuf-2000-spans")
def test_python_baseline_protobuf(benchmark, traces_body: bytes) -> None:
    benchmark(python_pipeline, traces_body)


@pytest.mark.benchmark(group="traces-protobuf-2000-spans")
def test_core_protobuf(benchmark, traces_body: bytes) -> None:
    c = core()
    benchmark(core_pipeline, c, "traces", traces_body)


@pytest.mark.benchmark(group="traces-gzip-2000-spans")
def test_python_baseline_gzip(benchmark, traces_body: bytes) -> None:
    packed = gzip.compress(traces_body)
    benchmark(lambda: gzip.compress(python_pipeline(gzip.decompress(packed))))


@pytest.mark.benchmark(group="traces-gzip-2000-spans")
def test_core_gzip(benchmark, traces_body: bytes) -> None:
    packed = gzip.compress(traces_body)
    c = core()
    benchmark(lambda: _core.gzip(core_pipeline(c, "traces", packed, enc="gzip")))


def _hex_ids(doc: dict) -> dict:
    # json_format writes ids base64; OTLP/JSON wants hex.
    for rs in doc["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for key in ("traceId", "spanId"):
                    s[key] = __import__("base64").b64decode(s[key]).hex()
    return doc


@pytest.mark.benchmark(group="traces-json-2000-spans")
def test_python_baseline_json(benchmark, traces_body: bytes) -> None:
    msg = ExportTraceServiceRequest()
    msg.ParseFromString(traces_body)
    body = json.dumps(_hex_ids(json_format.MessageToDict(msg))).encode()

    def run() -> bytes:
        doc = json.loads(body)
        for rs in doc["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for s in ss["spans"]:
                    for key in ("traceId", "spanId"):
                        s[key] = __import__("base64").b64encode(bytes.fromhex(s[key])).decode()
        req = json_format.ParseDict(doc, ExportTraceServiceRequest())
        return python_pipeline(req.SerializeToString())

    benchmark(run)


@pytest.mark.benchmark(group="traces-json-2000-spans")
def test_core_json(benchmark, traces_body: bytes) -> None:
    body = _core.to_json("traces", traces_body)
    c = core()
    benchmark(core_pipeline, c, "traces", body, "json")


@pytest.mark.benchmark(group="file-sink-encode-2000-spans")
def test_python_baseline_to_json(benchmark, traces_body: bytes) -> None:
    msg = ExportTraceServiceRequest()
    msg.ParseFromString(traces_body)
    benchmark(lambda: json.dumps(json_format.MessageToDict(msg)))


@pytest.mark.benchmark(group="file-sink-encode-2000-spans")
def test_core_to_json(benchmark, traces_body: bytes) -> None:
    benchmark(_core.to_json, "traces", traces_body)


# The file sink's encoding (protobuf → OTLP/JSON) at the request sizes the end-to-end bench posts
# (100 records) and at the batch sizes it writes (2,000).
@pytest.mark.parametrize("signal", ["logs", "traces"])
@pytest.mark.parametrize("n", [100, 2000])
@pytest.mark.benchmark(group="file-sink-encode")
def test_core_to_json_sizes(benchmark, signal: str, n: int) -> None:
    body = make_logs(n) if signal == "logs" else make_traces(n)
    benchmark.extra_info["protobuf_bytes"] = len(body)
    benchmark.extra_info["json_bytes"] = len(_core.to_json(signal, body))  # type: ignore[arg-type]
    benchmark(_core.to_json, signal, body)


# The whole per-batch work of the file sink's thread (encode, lock, torn-tail check, write), without
# fsync, for a batch of 2,000 log records, in each format.
@pytest.mark.parametrize("fmt", ["json", "proto"])
@pytest.mark.benchmark(group="file-sink-send-2000-records")
def test_file_sink_send(benchmark, tmp_path, fmt: str) -> None:
    c = core()
    c.ingest("logs", make_logs(), "protobuf", None)
    batch = c.next_batch("bench", "logs", 0.0, True)
    assert batch is not None
    cfg = FileExporterConfig(dir=str(tmp_path), format=fmt, max_file_bytes=64 << 20, max_files=1)  # type: ignore[arg-type]
    sink = FileExporter(cfg, fsync="never")
    benchmark(lambda: sink.send(batch))


@pytest.mark.benchmark(group="logs-protobuf-2000-records")
def test_core_logs(benchmark) -> None:
    body = make_logs()
    c = core()
    benchmark(core_pipeline, c, "logs", body)


def make_logs_with_attributes(n: int = SPANS, secrets: bool = False) -> bytes:
    """Log records with a body and 4 attributes; with `secrets`, every 10th record holds a
    password attribute and a URL with a token (what scrubbing rewrites)."""
    msg = ExportLogsServiceRequest()
    rl = msg.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = "api"
    records = rl.scope_logs.add()
    for i in range(n):
        r = records.log_records.add()
        r.time_unix_nano = 1_700_000_000_000_000_000 + i
        r.severity_number = 9
        r.body.string_value = f"GET /jobs/{i}?page=2 answered 200 in 12 ms for worker w-{i % 13}"
        for key in ("job.id", "http.route", "user.agent"):
            r.attributes.add(key=key).value.string_value = f"{key}-{i % 97}"
        r.attributes.add(key="http.status_code").value.int_value = 200
        if secrets and i % 10 == 0:
            r.attributes.add(key="db.password").value.string_value = "hunter2"
            r.body.string_value += f" https://api.example/cb?token=t{i}"
    return msg.SerializeToString()


def scrub_core(on: bool) -> _core.Core:
    return _core.Core(exporters=["bench"], batch_max_delay_ms=0, queue_max_bytes=1 << 34, scrub_otlp=on)


@pytest.mark.benchmark(group="logs-scrub-2000-records")
def test_core_logs_scrub_off(benchmark) -> None:
    body = make_logs_with_attributes(secrets=True)
    benchmark(core_pipeline, scrub_core(False), "logs", body)


@pytest.mark.benchmark(group="logs-scrub-2000-records")
def test_core_logs_scrub_on_clean(benchmark) -> None:
    """Scrubbing on, nothing to filter: every record takes the zero-copy path."""
    body = make_logs_with_attributes(secrets=False)
    benchmark(core_pipeline, scrub_core(True), "logs", body)


@pytest.mark.benchmark(group="logs-scrub-2000-records")
def test_core_logs_scrub_on_secrets(benchmark) -> None:
    """Scrubbing on, one record in ten rewritten."""
    body = make_logs_with_attributes(secrets=True)
    c = scrub_core(True)
    out = ExportLogsServiceRequest.FromString(core_pipeline(c, "logs", body))
    assert b"hunter2" not in out.SerializeToString()
    benchmark(core_pipeline, c, "logs", body)


def limits_core(content_counts: bool) -> _core.Core:
    return _core.Core(exporters=["bench"], batch_max_delay_ms=0, queue_max_bytes=1 << 34, content_counts=content_counts)


def pipeline_with_report(c: _core.Core, signal: str, body: bytes, walk_again: bool) -> list[tuple[str, int]]:
    c.ingest(signal, body, "protobuf")  # type: ignore[arg-type]
    batch = c.next_batch("bench", signal, 0.0, True)  # type: ignore[arg-type]
    assert batch is not None
    c.ack(batch)
    return _core.dash0_content_report(batch.signal, batch.body) if walk_again else batch.content_report


@pytest.mark.benchmark(group="limits-logs-2000-records")
def test_core_limits_walk_again(benchmark) -> None:
    """Before issue 11: ingest, then the exporter walks the batch again for the Dash0 counts."""
    body = make_logs_with_attributes()
    benchmark(pipeline_with_report, limits_core(False), "logs", body, True)


@pytest.mark.benchmark(group="limits-logs-2000-records")
def test_core_limits_counted_in_the_walk(benchmark) -> None:
    """Issue 11: the counts are taken in the ingest walk and carried by the batch."""
    body = make_logs_with_attributes()
    c = limits_core(True)
    assert pipeline_with_report(c, "logs", body, False) == pipeline_with_report(c, "logs", body, True)
    benchmark(pipeline_with_report, c, "logs", body, False)


@pytest.mark.benchmark(group="limits-logs-2000-records")
def test_core_limits_not_counted(benchmark) -> None:
    """No exporter reports the counts: the ingest walk without them."""
    body = make_logs_with_attributes()
    c = limits_core(False)
    benchmark(core_pipeline, c, "logs", body)


@pytest.mark.benchmark(group="limits-traces-2000-spans")
def test_core_limits_traces_walk_again(benchmark, traces_body: bytes) -> None:
    benchmark(pipeline_with_report, limits_core(False), "traces", traces_body, True)


@pytest.mark.benchmark(group="limits-traces-2000-spans")
def test_core_limits_traces_counted_in_the_walk(benchmark, traces_body: bytes) -> None:
    benchmark(pipeline_with_report, limits_core(True), "traces", traces_body, False)
