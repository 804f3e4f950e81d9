"""A stand-in OTLP/gRPC destination (grpcio server): records what arrives, answers as scripted."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

REQUESTS: dict[str, Any] = {
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export": trace_service_pb2.ExportTraceServiceRequest,
    "/opentelemetry.proto.collector.logs.v1.LogsService/Export": logs_service_pb2.ExportLogsServiceRequest,
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export": metrics_service_pb2.ExportMetricsServiceRequest,
}


@dataclass
class GrpcReply:
    """OK with `body` (a serialized Export*ServiceResponse), or a failure `code`, with RetryInfo when
    `retry_delay_s` is set; after `delay_s`."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    body: bytes = b""
    message: str = ""
    retry_delay_s: float | None = None
    delay_s: float = 0.0  # before answering


@dataclass
class Call:
    method: str
    metadata: dict[str, str]
    message: Any
    code: grpc.StatusCode


def retry_status(code: grpc.StatusCode, message: str, delay_s: float) -> bytes:
    info = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=int(delay_s), nanos=round((delay_s % 1) * 1e9))
    )
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(info)
    return status.SerializeToString()


class GrpcUpstream:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.script: list[GrpcReply] = []
        self.default = GrpcReply()
        self.cond = threading.Condition()
        self.in_flight = 0
        self.most_in_flight = 0  # calls being answered at once, at most
        upstream = self

        def handle(method: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
            def export(request: bytes, context: grpc.ServicerContext) -> bytes:
                with upstream.cond:
                    reply = upstream.script.pop(0) if upstream.script else upstream.default
                    upstream.in_flight += 1
                    upstream.most_in_flight = max(upstream.most_in_flight, upstream.in_flight)
                time.sleep(reply.delay_s)
                with upstream.cond:
                    upstream.in_flight -= 1
                message = REQUESTS[method]()
                message.ParseFromString(request)
                metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
                with upstream.cond:
                    upstream.calls.append(Call(method, metadata, message, reply.code))
                    upstream.cond.notify_all()
                if reply.code == grpc.StatusCode.OK:
                    return reply.body
                if reply.retry_delay_s is not None:
                    details = retry_status(reply.code, reply.message, reply.retry_delay_s)
                    context.set_trailing_metadata([("grpc-status-details-bin", details)])
                context.abort(reply.code, reply.message)
                raise AssertionError("unreachable")

            return export

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        generic = [
            grpc.method_handlers_generic_handler(
                path[1:].rsplit("/", 1)[0],
                {
                    "Export": grpc.unary_unary_rpc_method_handler(
                        handle(path), request_deserializer=None, response_serializer=None
                    )
                },
            )
            for path in REQUESTS
        ]
        self.server.add_generic_rpc_handlers(generic)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server.start()

    def ok_calls(self) -> list[Call]:
        with self.cond:
            return [c for c in self.calls if c.code == grpc.StatusCode.OK]

    def wait_for(self, predicate: Callable[[GrpcUpstream], bool], timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self.cond:
                self.cond.wait(min(left, 0.1))
        return True

    def close(self) -> None:
        self.server.stop(0)
