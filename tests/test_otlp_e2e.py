"""End to end: the real OpenTelemetry SDK → `trackgate serve` → a stand-in Dash0."""

from __future__ import annotations

import gzip
import json
import urllib.request

import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.trace import StatusCode

from conftest import dash0_config
from otel_clients import Sdk, attrs
from upstream import Upstream

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip, Compression.Deflate])
def test_sdk_traces_logs_metrics_reach_dash0(gateway_factory, upstream: Upstream, compression) -> None:
    gw = gateway_factory(dash0_config(upstream), env={"MACHINE_ID": "gpu-07", "WORKER_ID": "w-3"})
    sdk = Sdk.connect(gw.url, compression=compression, resource={"worker.id": "w-from-sdk"})
    tracer = sdk.tracer_provider.get_tracer("comfy")
    with tracer.start_as_current_span("job.run", attributes={"job.id": "job-42"}) as parent:
        with tracer.start_as_current_span("comfy.render") as child:
            child.set_attribute("gpu.index", 0)
            sdk.logger.warning("render slow", extra={"job.id": "job-42"})
        trace_id = parent.get_span_context().trace_id
    meter = sdk.meter_provider.get_meter("comfy")
    meter.create_counter("jobs.completed").add(3, {"queue": "gpu"})
    meter.create_histogram("job.duration", unit="s").record(1.5)
    sdk.flush()

    assert upstream.wait_for(lambda u: len(u.spans()) == 2 and u.log_records() and len(u.metrics()) == 2)
    spans = {s.name: s for s in upstream.spans()}
    assert set(spans) == {"job.run", "comfy.render"}
    assert int.from_bytes(spans["job.run"].trace_id, "big") == trace_id
    assert spans["comfy.render"].parent_span_id == spans["job.run"].span_id
    assert attrs(spans["job.run"].attributes)["job.id"] == "job-42"

    request = upstream.delivered("/v1/traces")[0]
    resource = attrs(request.message.resource_spans[0].resource.attributes)
    assert resource["service.name"] == "job-worker"
    assert resource["machine.id"] == "gpu-07"  # added by the gateway
    assert resource["worker.id"] == "w-from-sdk"  # the client's own value wins
    assert request.headers["authorization"] == "Bearer test-token-123"
    assert request.headers["dash0-dataset"] == "jobs"
    assert request.headers["content-encoding"] == "gzip"
    assert request.headers["content-type"] == "application/x-protobuf"
    assert request.raw[:2] == b"\x1f\x8b"  # really gzip on the wire

    (log,) = upstream.log_records()
    assert log.body.string_value == "render slow"
    assert log.severity_number == 13  # WARN
    assert int.from_bytes(log.trace_id, "big") == trace_id
    assert attrs(log.attributes)["job.id"] == "job-42"

    metrics = {m.name: m for m in upstream.metrics()}
    assert metrics["jobs.completed"].sum.data_points[0].as_int == 3
    assert metrics["job.duration"].histogram.data_points[0].count == 1
    sdk.shutdown()


def test_json_request_and_response(gateway_factory, upstream: Upstream) -> None:
    gw = gateway_factory(dash0_config(upstream))
    doc = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "manual"},
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1b174",
                                "name": "POST /jobs",
                                "kind": 2,
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": 1544712661000000000,
                                "status": {"code": 2, "message": "boom"},
                                "attributes": [{"key": "retries", "value": {"intValue": "3"}}],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    req = urllib.request.Request(
        gw.url + "/v1/traces", data=json.dumps(doc).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/json"
        assert json.loads(resp.read()) == {}
    assert upstream.wait_for(lambda u: len(u.spans()) == 1)
    (span,) = upstream.spans()
    assert span.trace_id.hex() == "5b8efff798038103d269b633813fc60c"
    assert span.span_id.hex() == "eee19b7ec3c1b174"
    assert span.start_time_unix_nano == 1544712660000000000
    assert span.end_time_unix_nano == 1544712661000000000
    assert span.status.code == StatusCode.ERROR.value
    assert attrs(span.attributes)["retries"] == 3


def test_zstd_request_body(gateway_factory, upstream: Upstream) -> None:
    zstd = pytest.importorskip("zstandard")
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    req_msg = ExportLogsServiceRequest()
    rec = req_msg.resource_logs.add().scope_logs.add().log_records.add()
    rec.body.string_value = "zstd works"
    gw = gateway_factory(dash0_config(upstream))
    body = zstd.ZstdCompressor().compress(req_msg.SerializeToString())
    req = urllib.request.Request(
        gw.url + "/v1/logs",
        data=body,
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "zstd"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
    assert upstream.wait_for(lambda u: len(u.log_records()) == 1)
    assert upstream.log_records()[0].body.string_value == "zstd works"


def test_default_file_sink(gateway_factory, tmp_path) -> None:
    """No exporter configured: records land in the embedded file sink as OTLP/JSON lines."""
    gw = gateway_factory("")
    sdk = Sdk.connect(gw.url)
    with sdk.tracer_provider.get_tracer("t").start_as_current_span("to-file"):
        pass
    sdk.flush()
    assert gw.stop() == 0  # SIGTERM drains the queue into the sink
    lines = (tmp_path / "trackgate-data" / "out" / "traces.jsonl").read_text().splitlines()
    names = [
        span["name"]
        for line in lines
        for rs in json.loads(line)["resourceSpans"]
        for ss in rs["scopeSpans"]
        for span in ss["spans"]
    ]
    assert names == ["to-file"]
    first = json.loads(lines[0])["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert len(first["traceId"]) == 32 and int(first["traceId"], 16)  # hex, as OTLP/JSON wants
    assert isinstance(first["startTimeUnixNano"], str)
    sdk.shutdown()


def test_gzip_is_kept_compressed_end_to_end(gateway_factory, upstream: Upstream) -> None:
    """A gzip body in, a gzip body out; the upstream sees the same records."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    msg = ExportMetricsServiceRequest()
    metric = msg.resource_metrics.add().scope_metrics.add().metrics.add()
    metric.name = "gpu.utilization"
    point = metric.gauge.data_points.add()
    point.as_double = 0.93
    gw = gateway_factory(dash0_config(upstream))
    req = urllib.request.Request(
        gw.url + "/v1/metrics",
        data=gzip.compress(msg.SerializeToString()),
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
    assert upstream.wait_for(lambda u: len(u.metrics()) == 1)
    assert upstream.metrics()[0].gauge.data_points[0].as_double == pytest.approx(0.93)
