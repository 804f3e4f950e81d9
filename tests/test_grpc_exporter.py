"""The OTLP/gRPC exporter (`protocol = "grpc"`) against a grpcio stand-in destination."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from grpc_upstream import GrpcReply, GrpcUpstream, retry_status
from trackgate import Pipeline, telemetry
from trackgate._core import Batch, Core, grpc_retry_delay
from trackgate.config import Config, ConfigError, OtlpExporterConfig, RetryConfig, load
from trackgate.exporters.otlp_grpc import OtlpGrpcExporter, status_outcome


def traces(name: str, n: int = 1) -> bytes:
    msg = ExportTraceServiceRequest()
    spans = msg.resource_spans.add().scope_spans.add()
    for i in range(n):
        span = spans.spans.add()
        span.trace_id = (i + 1).to_bytes(16, "big")
        span.span_id = b"\x02" * 8
        span.name = f"{name}-{i}"
    return msg.SerializeToString()


@pytest.fixture
def grpc_upstream() -> Iterator[GrpcUpstream]:
    up = GrpcUpstream()
    yield up
    up.close()


def exporter_cfg(endpoint: str, **kw: object) -> OtlpExporterConfig:
    retry = RetryConfig(initial_interval_s=0.1, max_interval_s=0.5, max_elapsed_s=20.0)
    fields: dict[str, object] = {"token": "tok", "dataset": "jobs", "timeout_s": 5.0, "retry": retry, **kw}
    return OtlpExporterConfig(endpoint=endpoint, protocol="grpc", **fields)  # type: ignore[arg-type]


def one_batch(body: bytes) -> Batch:
    core = Core(exporters=["dash0"])
    core.ingest("traces", body, "protobuf")
    batch = core.next_batch("dash0", "traces", 1.0, flush=True)
    assert batch is not None
    return batch


def counter(metric: telemetry.Counter, **labels: str) -> float:
    return metric.value(**labels)


def test_delivers_with_metadata_and_gzip(grpc_upstream: GrpcUpstream) -> None:
    cfg = Config()
    cfg.batch.max_delay_ms = 10
    cfg.exporters.dash0 = exporter_cfg(grpc_upstream.endpoint)
    labels = {"exporter": "dash0", "signal": "traces"}
    before = counter(telemetry.EXPORTED_RECORDS, **labels)
    with Pipeline(cfg) as p:
        assert isinstance(p.exporters[0], OtlpGrpcExporter)
        p.ingest("traces", traces("grpc", 3))
        assert p.flush(10)
    (call,) = grpc_upstream.ok_calls()
    assert call.method.endswith("TraceService/Export")
    assert [s.name for s in call.message.resource_spans[0].scope_spans[0].spans] == ["grpc-0", "grpc-1", "grpc-2"]
    assert call.metadata["authorization"] == "Bearer tok"
    assert call.metadata["dash0-dataset"] == "jobs"
    assert call.metadata["user-agent"].startswith("trackgate/")
    assert counter(telemetry.EXPORTED_RECORDS, **labels) - before == 3


def test_unavailable_with_retry_info_is_retried_after_the_given_delay(grpc_upstream: GrpcUpstream) -> None:
    grpc_upstream.script = [GrpcReply(grpc.StatusCode.UNAVAILABLE, message="busy", retry_delay_s=2.5)]
    exporter = OtlpGrpcExporter("dash0", exporter_cfg(grpc_upstream.endpoint))
    batch = one_batch(traces("retry"))
    outcome = exporter.send(batch)
    assert outcome.kind == "retry"
    assert outcome.retry_after == 2.5
    assert outcome.cause == "grpc_unavailable"
    assert "busy" in outcome.reason
    assert exporter.send(batch).kind == "ok"  # the next attempt lands
    assert len(grpc_upstream.ok_calls()) == 1
    exporter.close()


def test_retry_through_the_runner(grpc_upstream: GrpcUpstream) -> None:
    grpc_upstream.script = [GrpcReply(grpc.StatusCode.UNAVAILABLE, retry_delay_s=0.2)]
    cfg = Config()
    cfg.batch.max_delay_ms = 10
    cfg.exporters.otlp = exporter_cfg(grpc_upstream.endpoint)
    before = counter(telemetry.EXPORT_RETRIES, exporter="otlp", signal="traces", cause="grpc_unavailable")
    with Pipeline(cfg) as p:
        p.ingest("traces", traces("later"))
        assert grpc_upstream.wait_for(lambda u: len(u.ok_calls()) == 1)
    assert [c.code for c in grpc_upstream.calls] == [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.OK]
    after = counter(telemetry.EXPORT_RETRIES, exporter="otlp", signal="traces", cause="grpc_unavailable")
    assert after - before == 1


def test_several_calls_in_flight_on_one_channel(grpc_upstream: GrpcUpstream) -> None:
    """`concurrency` applies to gRPC too: the calls share the channel's HTTP/2 connection."""
    grpc_upstream.default = GrpcReply(delay_s=0.2)
    cfg = Config()
    cfg.batch.max_records, cfg.batch.max_delay_ms = 1, 0
    cfg.exporters.otlp = exporter_cfg(grpc_upstream.endpoint, concurrency=3)
    with Pipeline(cfg) as p:
        for i in range(16):  # one span per batch
            p.ingest("traces", traces(f"s{i}"))
        assert grpc_upstream.wait_for(lambda u: len(u.ok_calls()) == 16)
        assert p.flush(5)
    names = sorted(
        span.name for c in grpc_upstream.ok_calls() for span in c.message.resource_spans[0].scope_spans[0].spans
    )
    assert names == sorted(f"s{i}-0" for i in range(16))
    assert grpc_upstream.most_in_flight == 3


def test_partial_success_is_counted(grpc_upstream: GrpcUpstream) -> None:
    resp = ExportTraceServiceResponse()
    resp.partial_success.rejected_spans = 1
    resp.partial_success.error_message = "span too old"
    grpc_upstream.script = [GrpcReply(body=resp.SerializeToString())]
    exporter = OtlpGrpcExporter("otlp", exporter_cfg(grpc_upstream.endpoint))
    outcome = exporter.send(one_batch(traces("partial", 2)))
    assert (outcome.kind, outcome.rejected, outcome.reason) == ("ok", 1, "span too old")
    exporter.close()


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (GrpcReply(grpc.StatusCode.INVALID_ARGUMENT, message="bad"), "drop"),
        (GrpcReply(grpc.StatusCode.UNAUTHENTICATED), "drop"),
        (GrpcReply(grpc.StatusCode.RESOURCE_EXHAUSTED), "drop"),  # without RetryInfo: permanent
        (GrpcReply(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_delay_s=1.0), "retry"),
        (GrpcReply(grpc.StatusCode.UNAVAILABLE), "retry"),
        (GrpcReply(grpc.StatusCode.ABORTED), "retry"),
        (GrpcReply(grpc.StatusCode.DATA_LOSS), "retry"),
    ],
)
def test_retryable_codes(grpc_upstream: GrpcUpstream, reply: GrpcReply, kind: str) -> None:
    grpc_upstream.script = [reply]
    exporter = OtlpGrpcExporter("otlp", exporter_cfg(grpc_upstream.endpoint))
    outcome = exporter.send(one_batch(traces("codes")))
    assert outcome.kind == kind
    assert outcome.retry_after == (reply.retry_delay_s if kind == "retry" else None)
    exporter.close()


def test_unreachable_destination_is_retried() -> None:
    from conftest import free_port

    exporter = OtlpGrpcExporter("otlp", exporter_cfg(f"http://127.0.0.1:{free_port()}", timeout_s=2.0))
    outcome = exporter.send(one_batch(traces("nowhere")))
    assert outcome.kind == "retry"
    exporter.close()


def test_status_outcome_and_retry_info_decoding() -> None:
    assert status_outcome(grpc.StatusCode.PERMISSION_DENIED, "no", None).kind == "drop"
    assert status_outcome(grpc.StatusCode.DEADLINE_EXCEEDED, "slow", None).kind == "retry"
    assert grpc_retry_delay(retry_status(grpc.StatusCode.UNAVAILABLE, "x", 0.25)) == 0.25
    assert grpc_retry_delay(b"") is None


def test_tls_follows_the_scheme_and_insecure() -> None:
    assert OtlpGrpcExporter("otlp", exporter_cfg("https://ingress.eu-west-1.aws.dash0.com:4317")).tls
    assert not OtlpGrpcExporter("otlp", exporter_cfg("http://127.0.0.1:4317")).tls
    assert not OtlpGrpcExporter("otlp", exporter_cfg("https://10.0.0.1:4317", insecure=True)).tls
    assert OtlpGrpcExporter("otlp", exporter_cfg("http://gw:4317", insecure=False)).tls


def test_config_checks(tmp_path) -> None:
    path = tmp_path / "t.toml"
    path.write_text('[exporters.dash0]\nendpoint = "https://x:4317/v1"\nprotocol = "grpc"\n')
    with pytest.raises(ConfigError, match="without a path"):
        load(path, env={})
    path.write_text('[exporters.dash0]\nendpoint = "https://x"\ninsecure = true\n')
    with pytest.raises(ConfigError, match="insecure"):
        load(path, env={})
    path.write_text('[exporters.dash0]\nendpoint = "https://x:4317"\nprotocol = "grpc"\ntoken = "t"\n')
    assert load(path, env={}).exporters.dash0.protocol == "grpc"  # type: ignore[union-attr]


def test_otel_exporter_otlp_protocol_env() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    cfg = load(None, env=env)
    assert cfg.exporters.otlp is not None and cfg.exporters.otlp.protocol == "grpc"
    env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
    assert load(None, env=env).exporters.otlp.protocol == "http"  # type: ignore[union-attr]
    env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "carrier-pigeon"
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        load(None, env=env)
