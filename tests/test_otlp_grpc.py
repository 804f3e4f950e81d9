"""OTLP/gRPC on the gateway's gRPC port: the real SDK, a raw grpcio client, workers, kill -9."""

from __future__ import annotations

import gzip
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from conftest import Gateway, dash0_config, free_port
from otel_clients import Sdk, attrs
from upstream import Reply, Upstream

pytestmark = pytest.mark.slow

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


def numbered(start: int, n: int) -> bytes:
    msg = ExportTraceServiceRequest()
    spans = msg.resource_spans.add().scope_spans.add()
    for i in range(start, start + n):
        span = spans.spans.add()
        span.trace_id = (i + 1).to_bytes(16, "big")
        span.span_id = (i + 1).to_bytes(8, "big")
        span.name = f"rec-{i}"
    return msg.SerializeToString()


class Client:
    """A raw grpcio client: generic unary calls with the bytes as they are."""

    def __init__(self, target: str, compression: grpc.Compression = grpc.Compression.NoCompression) -> None:
        self.channel = grpc.insecure_channel(target, compression=compression, options=[("grpc.enable_retries", 0)])

    def call(
        self, body: bytes, path: str = TRACES, metadata: list[tuple[str, str]] | None = None
    ) -> tuple[grpc.StatusCode, bytes, grpc.Call | None]:
        stub = self.channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        try:
            response, call = stub.with_call(body, timeout=10, metadata=metadata or [])
        except grpc.RpcError as exc:
            return exc.code(), b"", exc  # type: ignore[attr-defined]
        return grpc.StatusCode.OK, response, call

    def close(self) -> None:
        self.channel.close()


def names(up: Upstream) -> Counter[str]:
    return Counter(s.name for s in up.spans())


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_sdk_over_grpc_reaches_dash0(gateway_factory, upstream: Upstream, compression) -> None:
    gw = gateway_factory(dash0_config(upstream), env={"MACHINE_ID": "gpu-07"})
    sdk = Sdk.connect(gw.url, compression=compression, grpc_target=gw.grpc_target)
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
    assert attrs(spans["comfy.render"].attributes)["gpu.index"] == 0
    resource = attrs(upstream.delivered("/v1/traces")[0].message.resource_spans[0].resource.attributes)
    assert resource["service.name"] == "job-worker"
    assert resource["machine.id"] == "gpu-07"  # the gateway's enrichment applies to gRPC too

    (log,) = upstream.log_records()
    assert log.body.string_value == "render slow"
    assert log.severity_number == 13
    assert int.from_bytes(log.trace_id, "big") == trace_id

    metrics = {m.name: m for m in upstream.metrics()}
    assert metrics["jobs.completed"].sum.data_points[0].as_int == 3
    assert metrics["job.duration"].histogram.data_points[0].sum == 1.5
    sdk.shutdown()

    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'trackgate_grpc_requests_total{method="traces",code="OK"} 2' in text


def test_raw_client_statuses(gateway_factory, upstream: Upstream) -> None:
    gw = gateway_factory(dash0_config(upstream))
    client = Client(gw.grpc_target)
    # Not protobuf at all: INVALID_ARGUMENT (never retried by clients).
    code, _, call = client.call(b"\xff\xff\xff\xff")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert call is not None and "cannot decode" in call.details()  # type: ignore[attr-defined]
    # An unknown method: UNIMPLEMENTED.
    code, _, _ = client.call(numbered(0, 1), path="/opentelemetry.proto.collector.trace.v1.TraceService/Nope")
    assert code == grpc.StatusCode.UNIMPLEMENTED
    # Some records refused: OK with partial_success.
    msg = ExportTraceServiceRequest()
    spans = msg.resource_spans.add().scope_spans.add()
    for i, tid in enumerate([b"\x01" * 16, b"\x01" * 8]):
        span = spans.spans.add()
        span.trace_id, span.span_id, span.name = tid, b"\x02" * 8, f"partial-{i}"
    code, body, _ = client.call(msg.SerializeToString())
    assert code == grpc.StatusCode.OK
    resp = ExportTraceServiceResponse()
    resp.ParseFromString(body)
    assert resp.partial_success.rejected_spans == 1
    assert "trace_id" in resp.partial_success.error_message
    # A full success has no partial_success.
    code, body, _ = client.call(numbered(10, 3))
    assert code == grpc.StatusCode.OK
    resp = ExportTraceServiceResponse()
    resp.ParseFromString(body)
    assert not resp.HasField("partial_success")
    assert upstream.wait_for(lambda u: {"partial-0", "rec-10", "rec-12"} <= set(names(u)))
    assert "partial-1" not in names(upstream)
    client.close()


def test_gzip_request(gateway_factory, upstream: Upstream) -> None:
    gw = gateway_factory(dash0_config(upstream))
    client = Client(gw.grpc_target, compression=grpc.Compression.Gzip)
    msg = ExportLogsServiceRequest()
    records = msg.resource_logs.add().scope_logs.add()
    for i in range(50):
        records.log_records.add().body.string_value = f"line {i} " + "x" * 200  # compressible
    assert len(gzip.compress(msg.SerializeToString())) < len(msg.SerializeToString()) // 4
    code, _, _ = client.call(msg.SerializeToString(), path=LOGS)
    assert code == grpc.StatusCode.OK
    assert upstream.wait_for(lambda u: len(u.log_records()) == 50)
    assert upstream.log_records()[49].body.string_value.startswith("line 49 ")
    client.close()


def test_message_over_max_body_bytes(gateway_factory, upstream: Upstream) -> None:
    gw = gateway_factory(dash0_config(upstream, "[server]\nmax_body_bytes = 2000\n"))
    client = Client(gw.grpc_target)
    assert client.call(numbered(0, 5))[0] == grpc.StatusCode.OK
    assert client.call(numbered(0, 100))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Small on the wire, over the limit once decompressed: refused as well.
    gz = Client(gw.grpc_target, compression=grpc.Compression.Gzip)
    msg = ExportLogsServiceRequest()
    msg.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "y" * 10_000
    assert gz.call(msg.SerializeToString(), path=LOGS)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    client.close()
    gz.close()


def test_tokens_required(gateway_factory, upstream: Upstream) -> None:
    gw = gateway_factory(dash0_config(upstream, '[server]\ntokens = ["s3cret"]\n'))
    client = Client(gw.grpc_target)
    code, _, call = client.call(numbered(0, 1))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert call is not None and "bearer token" in call.details()  # type: ignore[attr-defined]
    assert client.call(numbered(0, 1), metadata=[("authorization", "Bearer wrong")])[0] == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert client.call(numbered(0, 1), metadata=[("authorization", "Bearer s3cret")])[0] == grpc.StatusCode.OK
    assert upstream.wait_for(lambda u: names(u)["rec-0"] == 1)
    client.close()


def test_full_queue_answers_unavailable_with_retry_info(gateway_factory, upstream: Upstream) -> None:
    upstream.default = Reply(503, {"Retry-After": "1"})
    gw = gateway_factory(dash0_config(upstream, '[storage]\nmax_bytes = 4000\ncompression = "none"\n'))
    client = Client(gw.grpc_target)
    results = [client.call(numbered(i * 20, 20)) for i in range(6)]
    codes = [code for code, _, _ in results]
    assert codes[0] == grpc.StatusCode.OK and grpc.StatusCode.UNAVAILABLE in codes
    refused = next(call for code, _, call in results if code == grpc.StatusCode.UNAVAILABLE)
    trailers = dict(refused.trailing_metadata())  # type: ignore[union-attr]
    status = status_pb2.Status()
    status.ParseFromString(trailers["grpc-status-details-bin"])
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "queue is full" in status.message
    (detail,) = status.details
    info = error_details_pb2.RetryInfo()
    assert detail.Unpack(info)
    assert info.retry_delay.seconds >= 1
    try:  # a refusal over gRPC takes the gateway out of rotation, as one over HTTP does
        urllib.request.urlopen(gw.url + "/readyz", timeout=5)
        ready_status = 200
    except urllib.error.HTTPError as exc:
        ready_status = exc.code
    assert ready_status == 503

    accepted = {f"rec-{i * 20 + j}" for i, c in enumerate(codes) if c == grpc.StatusCode.OK for j in range(20)}
    upstream.default = Reply(200)  # the destination comes back: everything acknowledged arrives
    assert upstream.wait_for(lambda u: accepted <= set(names(u)), timeout=20)
    client.close()


def test_disabled_listener_is_not_bound(gateway_factory, upstream: Upstream) -> None:
    gw = gateway_factory(dash0_config(upstream, "[receivers.otlp_grpc]\nenabled = false\n"))
    client = Client(gw.grpc_target)
    assert client.call(numbered(0, 1))[0] == grpc.StatusCode.UNAVAILABLE  # nothing listens
    client.close()


def test_two_workers_share_the_port_and_survive_kill_9(gateway_factory, upstream: Upstream) -> None:
    upstream.default = Reply(503)  # nothing leaves: every acknowledged record is still queued at the kill
    gw: Gateway = gateway_factory(dash0_config(upstream), workers=2)
    with urllib.request.urlopen(gw.url + "/healthz", timeout=5) as resp:
        assert resp.status == 200
    acked: list[str] = []
    # New connections each time: the kernel spreads them over both workers' sockets.
    for i in range(20):
        client = Client(gw.grpc_target)
        code, _, _ = client.call(numbered(i * 5, 5))
        client.close()
        if code == grpc.StatusCode.OK:
            acked.extend(f"rec-{j}" for j in range(i * 5, i * 5 + 5))
    assert len(acked) == 100
    log = gw.log()
    assert log.count("OTLP/gRPC listening") == 2  # one listener per worker, one port

    gw.kill()
    upstream.default = Reply(200)
    gw.start()
    client = Client(gw.grpc_target)
    assert client.call(numbered(1000, 1))[0] == grpc.StatusCode.OK
    client.close()
    assert upstream.wait_for(lambda u: set(acked) | {"rec-1000"} <= set(names(u)), timeout=60), (
        f"missing {len(set(acked) - set(names(upstream)))} of {len(acked)} acknowledged records"
    )


def test_concurrent_calls_on_one_connection(gateway_factory, upstream: Upstream) -> None:
    gw = gateway_factory(dash0_config(upstream))
    client = Client(gw.grpc_target)
    codes: list[grpc.StatusCode] = []

    def send(i: int) -> None:
        codes.append(client.call(numbered(i * 10, 10))[0])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [grpc.StatusCode.OK] * 16
    assert upstream.wait_for(lambda u: len(names(u)) == 160)
    client.close()


def test_non_loopback_grpc_listen_without_tokens_is_refused(tmp_path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "trackgate", "serve", "--grpc-listen", "0.0.0.0:4999"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 2
    assert "receivers.otlp_grpc.listen" in run.stderr and "tokens" in run.stderr


def test_grpc_port_in_use_fails_the_start(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "trackgate", "serve", "--listen", f"127.0.0.1:{free_port()}",
             "--grpc-listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
    assert run.returncode != 0
    assert f"cannot listen for OTLP/gRPC on 127.0.0.1:{port}" in run.stdout + run.stderr


def test_gateway_to_gateway_over_grpc(gateway_factory, upstream: Upstream, tmp_path) -> None:
    """In and out: an edge gateway exports over OTLP/gRPC (gzip) into a central gateway's gRPC port."""
    central = gateway_factory(dash0_config(upstream))
    edge_dir = tmp_path / "edge"
    edge_dir.mkdir()
    edge = Gateway(
        edge_dir,
        f"""
[batch]
max_delay_ms = 50

[exporters.otlp]
endpoint = "http://{central.grpc_target}"
protocol = "grpc"
compression = "gzip"
retry = {{ initial_interval_s = 0.2, max_interval_s = 1.0, max_elapsed_s = 30.0 }}
""",
        env={"MACHINE_ID": "edge-1"},
    )
    try:
        client = Client(edge.grpc_target)
        assert client.call(numbered(0, 30))[0] == grpc.StatusCode.OK
        client.close()
        wanted = {f"rec-{i}" for i in range(30)}
        assert upstream.wait_for(lambda u: wanted <= set(names(u)))
        resource = attrs(upstream.delivered("/v1/traces")[0].message.resource_spans[0].resource.attributes)
        assert resource["machine.id"] == "edge-1"  # added by the edge, carried through the central
    finally:
        edge.close()
