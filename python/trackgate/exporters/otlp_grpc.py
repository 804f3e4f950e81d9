"""OTLP/gRPC exporter: Dash0 (`ingress.<region>.aws.dash0.com:4317`) or any OTLP/gRPC backend.

The queued batch is already a serialized `Export*ServiceRequest`, so the call is a generic unary
call with identity (de)serializers: no protobuf classes at runtime. Retries are the runner's:
the OTLP/gRPC retryable codes, RESOURCE_EXHAUSTED only with RetryInfo, RetryInfo honoured.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

import grpc

from trackgate import __version__
from trackgate._core import Batch, grpc_retry_delay, parse_partial_success
from trackgate.config import OtlpExporterConfig, mask_url
from trackgate.exporters.base import Exporter, Outcome, waiting_on_destination
from trackgate.exporters.otlp_http import count_over_dash0_limits

log = logging.getLogger("trackgate.exporter.otlp_grpc")

METHODS = {
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
}
# OTLP/gRPC specification: these codes are transient; RESOURCE_EXHAUSTED only when the server
# says when to come back (RetryInfo). Everything else is permanent.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def status_outcome(code: grpc.StatusCode, reason: str, retry_delay: float | None) -> Outcome:
    """A failed call: retry what the spec calls transient (honouring RetryInfo), drop the rest."""
    cause = f"grpc_{code.name.lower()}"
    if code in RETRYABLE or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_delay is not None):
        return Outcome.retry(cause, reason, retry_delay)
    return Outcome.drop(cause, reason)


def retry_delay_of(trailers: Any) -> float | None:
    for key, value in trailers or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                return grpc_retry_delay(value)
            except ValueError:
                return None
    return None


class OtlpGrpcExporter(Exporter):
    # A series' points go out in order: backends refuse a sample older than one they have.
    ordered = frozenset({"metrics"})

    def __init__(self, name: str, cfg: OtlpExporterConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.retry = cfg.retry
        self.concurrency = cfg.concurrency  # calls in flight per signal, on one HTTP/2 channel
        parsed = urllib.parse.urlsplit(cfg.endpoint)
        self.target = parsed.netloc.rpartition("@")[2]  # userinfo never goes on the wire as a target
        self.safe_target = mask_url(cfg.endpoint)
        self.tls = parsed.scheme == "https" if cfg.insecure is None else not cfg.insecure
        options = [
            ("grpc.primary_user_agent", f"trackgate/{__version__}"),
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ("grpc.enable_retries", 0),  # retries are the runner's, with the queue behind them
        ]
        compression = grpc.Compression.Gzip if cfg.compression == "gzip" else grpc.Compression.NoCompression
        if self.tls:
            self.channel = grpc.secure_channel(
                self.target, grpc.ssl_channel_credentials(), options=options, compression=compression
            )
        else:
            self.channel = grpc.insecure_channel(self.target, options=options, compression=compression)
        self.calls = {
            signal: self.channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            for signal, path in METHODS.items()
        }
        # gRPC metadata keys are lowercase.
        self.metadata: list[tuple[str, str]] = [(k.lower(), v) for k, v in cfg.auth_headers().items()]
        self.check_limits = cfg.check_dash0_limits if cfg.check_dash0_limits is not None else name == "dash0"
        self._warned: set[tuple[str, str]] = set()

    def send(self, batch: Batch) -> Outcome:
        if self.check_limits:
            count_over_dash0_limits(self.name, batch, self._warned)
        body = batch.body
        try:
            with waiting_on_destination():
                response = self.calls[batch.signal](body, timeout=self.cfg.timeout_s, metadata=self.metadata)
        except grpc.RpcError as exc:
            call: Any = exc  # the raised error is also the grpc.Call with code, details, trailers
            code: grpc.StatusCode = call.code()
            details = (call.details() or "")[:200]
            reason = f"gRPC {code.name} from {self.safe_target} ({batch.signal})" + (f": {details}" if details else "")
            return status_outcome(code, reason, retry_delay_of(call.trailing_metadata()))
        rejected, message = 0, ""
        if response:
            try:
                rejected, message = parse_partial_success(response, "protobuf")
            except ValueError:
                log.warning("undecodable success response", extra={"exporter": self.name})
        # gRPC compresses inside the channel: the count is of the uncompressed message.
        return Outcome.ok(sent_bytes=len(body), rejected=rejected, reason=message)

    def close(self) -> None:
        self.channel.close()
