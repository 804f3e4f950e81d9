"""How delivery reacts to the destination: retry what OTLP says is retryable, drop what is not."""

from __future__ import annotations

import time

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from conftest import free_port
from trackgate import Pipeline, telemetry
from trackgate.config import Config, OtlpExporterConfig, RetryConfig
from trackgate.exporters.base import parse_retry_after
from upstream import Reply, Upstream


def traces(name: str, n: int = 1) -> bytes:
    msg = ExportTraceServiceRequest()
    spans = msg.resource_spans.add().scope_spans.add()
    for i in range(n):
        span = spans.spans.add()
        span.trace_id = i.to_bytes(16, "big") if i else b"\x09" * 16
        span.span_id = b"\x02" * 8
        span.name = f"{name}-{i}"
    return msg.SerializeToString()


def pipeline_to(url: str, timeout_s: float = 2.0, **retry: float) -> Pipeline:
    retry_cfg = RetryConfig(**{"initial_interval_s": 0.1, "max_interval_s": 0.5, "max_elapsed_s": 20.0, **retry})
    exporter = OtlpExporterConfig(endpoint=url, token="t", timeout_s=timeout_s, retry=retry_cfg)
    cfg = Config()
    cfg.batch.max_delay_ms = 10
    cfg.exporters.otlp = exporter
    return Pipeline(cfg).start()


def counter(metric: telemetry.Counter, **labels: str) -> float:
    return metric.value(**labels)


def test_503_with_retry_after_then_200_is_delivered_once(upstream: Upstream) -> None:
    upstream.script = [Reply(503, {"Retry-After": "1"})]
    with pipeline_to(upstream.url) as p:
        started = time.monotonic()
        p.ingest("traces", traces("retry-after"))
        assert upstream.wait_for(lambda u: len(u.spans()) == 1)
        waited = time.monotonic() - started
        assert p.flush(5)
    assert [r.status for r in upstream.received] == [503, 200]
    assert [s.name for s in upstream.spans()] == ["retry-after-0"]
    assert waited >= 0.9  # Retry-After: 1 was honoured, not the 0.1 s backoff


def test_400_is_not_retried_and_is_counted(upstream: Upstream) -> None:
    upstream.script = [Reply(400, body=b"bad data")]
    labels = {"exporter": "otlp", "signal": "traces", "reason": "permanent_error"}
    before = counter(telemetry.FAILED_RECORDS, **labels)
    with pipeline_to(upstream.url) as p:
        p.ingest("traces", traces("poison", 3))
        assert upstream.wait_for(lambda u: len(u.received) == 1)
        assert p.flush(5)
        time.sleep(0.3)  # a retry, were there one, would come after 0.1 s
    assert [r.status for r in upstream.received] == [400]
    assert counter(telemetry.FAILED_RECORDS, **labels) - before == 3


def test_upstream_down_then_up_delivers() -> None:
    port = free_port()
    with pipeline_to(f"http://127.0.0.1:{port}") as p:
        p.ingest("traces", traces("while-down", 2))
        time.sleep(0.5)  # a few connection-refused attempts
        up = Upstream(port)
        try:
            assert up.wait_for(lambda u: len(u.spans()) == 2)
            assert p.flush(5)
        finally:
            up.close()
    assert counter(telemetry.EXPORT_RETRIES, exporter="otlp", signal="traces", cause="connection") >= 1


def test_hanging_upstream_times_out_and_retries(upstream: Upstream) -> None:
    upstream.script = [Reply(200, delay_s=3.0)]
    with pipeline_to(upstream.url, timeout_s=0.5) as p:
        p.ingest("traces", traces("slow"))
        assert upstream.wait_for(lambda u: len(u.delivered()) >= 2, timeout=10)
    # The first answer came too late (the gateway had given up); the retry landed.
    assert all(s.name == "slow-0" for s in upstream.spans())
    assert counter(telemetry.EXPORT_RETRIES, exporter="otlp", signal="traces", cause="timeout") >= 1


def test_partial_success_from_upstream_is_counted(upstream: Upstream) -> None:
    resp = ExportTraceServiceResponse()
    resp.partial_success.rejected_spans = 1
    resp.partial_success.error_message = "span too old"
    upstream.script = [Reply(200, body=resp.SerializeToString())]
    labels = {"exporter": "otlp", "signal": "traces"}
    before = counter(telemetry.UPSTREAM_REJECTED, **labels)
    with pipeline_to(upstream.url) as p:
        p.ingest("traces", traces("partial", 2))
        assert p.flush(5)
    assert counter(telemetry.UPSTREAM_REJECTED, **labels) - before == 1
    assert len(upstream.received) == 1


def test_batches_merge_requests(upstream: Upstream) -> None:
    cfg_delay_ms = 300
    retry_cfg = RetryConfig(initial_interval_s=0.1, max_interval_s=0.5)
    cfg = Config()
    cfg.batch.max_delay_ms = cfg_delay_ms
    cfg.exporters.otlp = OtlpExporterConfig(endpoint=upstream.url, retry=retry_cfg)
    with Pipeline(cfg) as p:
        for i in range(5):
            p.ingest("traces", traces(f"req{i}", 2))
        assert p.flush(5)
    assert len(upstream.spans()) == 10
    assert len(upstream.received) < 5  # several client requests went out as one batch


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3", 3.0), ("0", 0.0), ("", None), ("soon", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)
def test_parse_retry_after(value: str, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date_in_future() -> None:
    from email.utils import formatdate

    got = parse_retry_after(formatdate(time.time() + 30, usegmt=True))
    assert got is not None and 28 <= got <= 31


def test_records_over_dash0_limits_are_counted_and_sent_whole(upstream: Upstream) -> None:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    msg = ExportLogsServiceRequest()
    records = msg.resource_logs.add().scope_logs.add().log_records
    big = records.add()
    big.body.string_value = "x" * 5000  # over the 4 KB body limit
    for i in range(20):  # over the 16-attribute limit
        big.attributes.add(key=f"k{i}").value.string_value = "v"
    records.add().body.string_value = "small"
    cfg = Config()
    cfg.batch.max_delay_ms = 10
    cfg.exporters.dash0 = OtlpExporterConfig(endpoint=upstream.url, token="t")
    labels = {"exporter": "dash0", "signal": "logs"}
    before = {lim: counter(telemetry.OVER_LIMIT, limit=lim, **labels) for lim in ("log_body", "log_attributes")}
    with Pipeline(cfg) as p:
        p.ingest("logs", msg.SerializeToString())
        assert p.flush(5)
    assert counter(telemetry.OVER_LIMIT, limit="log_body", **labels) - before["log_body"] == 1
    assert counter(telemetry.OVER_LIMIT, limit="log_attributes", **labels) - before["log_attributes"] == 1
    bodies = sorted(len(r.body.string_value) for r in upstream.log_records())
    assert bodies == [5, 5000]  # counted, not cut: Dash0 applies its own truncation
