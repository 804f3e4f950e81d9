"""A stand-in for Dash0 (or any OTLP/HTTP backend): decodes what arrives with opentelemetry-proto
and can be told to fail, throttle or hang."""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

REQUESTS: dict[str, type[Message]] = {
    "/v1/traces": trace_service_pb2.ExportTraceServiceRequest,
    "/v1/logs": logs_service_pb2.ExportLogsServiceRequest,
    "/v1/metrics": metrics_service_pb2.ExportMetricsServiceRequest,
}


@dataclass
class Reply:
    """One scripted answer: a status, headers, a body, and optionally a delay before answering."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay_s: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes
    body: bytes
    message: Message | None
    status: int


class StandIn:
    """A local HTTP server standing in for a SaaS destination: it records what arrives (subclasses
    decode it in `_handle`), wakes waiters, and answers as scripted."""

    def __init__(self, port: int = 0) -> None:
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                stand_in._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        raise NotImplementedError

    def _notify(self, received: list[Any], record: Any) -> None:
        with self.cond:
            received.append(record)
            self.cond.notify_all()

    @staticmethod
    def _answer(h: BaseHTTPRequestHandler, reply: Reply, content_type: str) -> None:
        try:
            h.send_response(reply.status)
            for key, value in reply.headers.items():
                h.send_header(key, value)
            h.send_header("Content-Type", content_type)
            h.send_header("Content-Length", str(len(reply.body)))
            h.end_headers()
            h.wfile.write(reply.body)
        except OSError:
            pass  # the client gave up (a timeout test)

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self.cond:
                self.cond.wait(min(left, 0.1))
        return True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Upstream(StandIn):
    def __init__(self, port: int = 0) -> None:
        self.received: list[Received] = []
        self.script: list[Reply] = []
        self.default = Reply()
        super().__init__(port)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length", "0"))
        raw = h.rfile.read(length)
        with self.lock:
            reply = self.script.pop(0) if self.script else self.default
        if reply.delay_s:
            time.sleep(reply.delay_s)
        encoding = (h.headers.get("Content-Encoding") or "").lower()
        body = gzip.decompress(raw) if encoding == "gzip" else zlib.decompress(raw) if encoding == "deflate" else raw
        message: Message | None = None
        kind = REQUESTS.get(h.path)
        if kind is not None:
            message = kind()
            message.ParseFromString(body)
        record = Received(h.path, {k.lower(): v for k, v in h.headers.items()}, raw, body, message, reply.status)
        self._notify(self.received, record)
        self._answer(h, reply, "application/x-protobuf")

    def delivered(self, path: str | None = None) -> list[Received]:
        """Requests answered with 2xx (optionally for one path)."""
        with self.lock:
            return [r for r in self.received if 200 <= r.status < 300 and (path is None or r.path == path)]

    def spans(self) -> list[Any]:
        return [
            span
            for r in self.delivered("/v1/traces")
            for rs in r.message.resource_spans  # type: ignore[union-attr]
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    def log_records(self) -> list[Any]:
        return [
            rec
            for r in self.delivered("/v1/logs")
            for rl in r.message.resource_logs  # type: ignore[union-attr]
            for sl in rl.scope_logs
            for rec in sl.log_records
        ]

    def metrics(self) -> list[Any]:
        return [
            m
            for r in self.delivered("/v1/metrics")
            for rm in r.message.resource_metrics  # type: ignore[union-attr]
            for sm in rm.scope_metrics
            for m in sm.metrics
        ]
