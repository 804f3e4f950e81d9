"""The real OpenTelemetry Python SDK, wired to send to a gateway over OTLP/HTTP protobuf or OTLP/gRPC."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

__all__ = ["Sdk", "SeverityNumber", "attrs"]


def attrs(kvs: object) -> dict[str, object]:
    """OTLP KeyValues (opentelemetry-proto messages) as a plain dict."""
    out: dict[str, object] = {}
    for kv in kvs:  # type: ignore[attr-defined]
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None
    return out


@dataclass
class Sdk:
    tracer_provider: TracerProvider
    logger_provider: LoggerProvider
    meter_provider: MeterProvider
    logger: logging.Logger

    @classmethod
    def connect(
        cls,
        base_url: str,
        service: str = "job-worker",
        compression: Compression = Compression.NoCompression,
        headers: dict[str, str] | None = None,
        resource: dict[str, str] | None = None,
        grpc_target: str | None = None,
    ) -> Sdk:
        """OTLP/HTTP to `base_url`, or OTLP/gRPC (plaintext) to `grpc_target` ("host:port") when given."""
        res = Resource.create({"service.name": service, **(resource or {})})
        tp = TracerProvider(resource=res)
        lp = LoggerProvider(resource=res)
        if grpc_target is None:
            kw = {"compression": compression, "headers": headers or {}, "timeout": 5}
            spans = OTLPSpanExporter(endpoint=f"{base_url}/v1/traces", **kw)
            logs = OTLPLogExporter(endpoint=f"{base_url}/v1/logs", **kw)
            metrics = OTLPMetricExporter(endpoint=f"{base_url}/v1/metrics", **kw)
        else:
            gz = grpc.Compression.Gzip if compression == Compression.Gzip else grpc.Compression.NoCompression
            gkw = {"endpoint": grpc_target, "insecure": True, "headers": headers or {}, "timeout": 5, "compression": gz}
            spans, logs, metrics = GrpcSpanExporter(**gkw), GrpcLogExporter(**gkw), GrpcMetricExporter(**gkw)
        tp.add_span_processor(SimpleSpanProcessor(spans))
        lp.add_log_record_processor(SimpleLogRecordProcessor(logs))
        reader = PeriodicExportingMetricReader(metrics, export_interval_millis=3_600_000)
        mp = MeterProvider(resource=res, metric_readers=[reader])
        logger = logging.getLogger(f"sdk-test-{service}-{id(lp)}")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.addHandler(LoggingHandler(level=logging.DEBUG, logger_provider=lp))
        return cls(tp, lp, mp, logger)

    def flush(self) -> None:
        self.tracer_provider.force_flush()
        self.logger_provider.force_flush()
        self.meter_provider.force_flush()

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.logger_provider.shutdown()
        self.meter_provider.shutdown()
