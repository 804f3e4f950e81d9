"""`trackgate bench`: a small load generator for a running gateway (records/s, latency percentiles).

Each of `concurrency` threads holds one keep-alive connection and posts the same OTLP request
(built once, `records` spans or log records with random ids) until `duration` passes: over
OTLP/HTTP, or with `protocol="grpc"` as OTLP/gRPC unary calls (one channel per thread).
"""

from __future__ import annotations

import http.client
import os
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field

import orjson

from trackgate._core import gzip, to_protobuf


def events_body(records: int) -> bytes:
    """NDJSON of `records` job lifecycle events (POST /v1/events)."""
    now = time.time_ns()
    kinds = ("job_received", "job_started", "job_progress", "job_completed")
    lines = [
        orjson.dumps(
            {
                "event_type": kinds[i % 4],
                "job_id": f"job-{i // 4}",
                "service": "bench",
                "worker_id": "w-1",
                "timestamp": now + i,
                "data": {"progress": i % 100, "duration_ms": 1200, "output_size": 4096},
            }
        )
        for i in range(records)
    ]
    return b"\n".join(lines) + b"\n"


def request_body(signal: str, records: int) -> bytes:
    """An OTLP protobuf request of `records` spans or log records, as a job worker would send."""
    if signal == "events":
        return events_body(records)
    now = time.time_ns()
    common = [{"key": "job.id", "value": {"stringValue": "job-1"}}, {"key": "gpu.index", "value": {"intValue": "0"}}]
    if signal == "traces":
        items_key, scope_key, items = (
            "spans",
            "scopeSpans",
            [
                {
                    "traceId": os.urandom(16).hex(),
                    "spanId": os.urandom(8).hex(),
                    "name": f"node.execute.{i % 17}",
                    "kind": 1,
                    "startTimeUnixNano": str(now),
                    "endTimeUnixNano": str(now + 5_000_000),
                    "attributes": common,
                }
                for i in range(records)
            ],
        )
    else:
        items_key, scope_key, items = (
            "logRecords",
            "scopeLogs",
            [
                {
                    "timeUnixNano": str(now),
                    "severityNumber": 9,
                    "body": {"stringValue": f"job job-1 step {i} done"},
                    "attributes": common,
                }
                for i in range(records)
            ],
        )
    resource_key = "resourceSpans" if signal == "traces" else "resourceLogs"
    doc = {
        resource_key: [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "bench"}}]},
                scope_key: [{"scope": {"name": "trackgate-bench"}, items_key: items}],
            }
        ]
    }
    return to_protobuf(signal, orjson.dumps(doc))  # type: ignore[arg-type]


@dataclass
class BenchResult:
    seconds: float
    records_per_request: int
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int | str] = field(default_factory=Counter)  # HTTP status, or gRPC code name
    ok_status: int | str = 200

    @property
    def ok(self) -> int:
        return self.statuses.get(self.ok_status, 0)

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0

    def report(self) -> str:
        ok = self.ok
        answers = dict(sorted(self.statuses.items(), key=lambda kv: str(kv[0])))
        rps, records = ok / self.seconds, ok * self.records_per_request / self.seconds
        lines = [
            f"requests: {sum(self.statuses.values())} in {self.seconds:.1f}s, answers {answers}",
            f"accepted: {rps:,.0f} requests/s, {records:,.0f} records/s",
            "latency ms: "
            + ", ".join(f"p{p:g} {self.percentile(p) * 1e3:.2f}" for p in (50, 90, 99))
            + f", max {max(self.latencies, default=0) * 1e3:.2f}",
        ]
        return "\n".join(lines)


def run(
    url: str,
    signal: str = "traces",
    records: int = 100,
    concurrency: int = 4,
    duration: float = 10.0,
    compress: bool = False,
    token: str = "",
    protocol: str = "http",
) -> BenchResult:
    if protocol == "grpc":
        if signal == "events":
            raise ValueError("events are posted over HTTP only (/v1/events)")
        return run_grpc(url, signal, records, concurrency, duration, compress, token)
    body = request_body(signal, records)
    headers = {"Content-Type": "application/x-ndjson" if signal == "events" else "application/x-protobuf"}
    if compress:
        body = gzip(body)
        headers["Content-Encoding"] = "gzip"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    target = urllib.parse.urlsplit(url.rstrip("/"))
    path = f"{target.path}/v1/{signal}"
    result = BenchResult(duration, records)
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def worker() -> None:
        conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port or 80, timeout=30)
        latencies: list[float] = []
        statuses: Counter[int | str] = Counter()
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                statuses[resp.status] += 1
                latencies.append(time.perf_counter() - t0)
            except OSError:
                statuses[0] += 1
                conn.close()
                conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port or 80, timeout=30)
        conn.close()
        with lock:
            result.latencies.extend(latencies)
            result.statuses.update(statuses)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.monotonic() - started
    return result


GRPC_METHODS = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}


def run_grpc(
    url: str, signal: str, records: int, concurrency: int, duration: float, compress: bool, token: str
) -> BenchResult:
    import grpc

    body = request_body(signal, records)
    parsed = urllib.parse.urlsplit(url if "//" in url else f"http://{url}")
    target = f"{parsed.hostname or '127.0.0.1'}:{parsed.port or 4317}"
    metadata = [("authorization", f"Bearer {token}")] if token else []
    compression = grpc.Compression.Gzip if compress else grpc.Compression.NoCompression
    result = BenchResult(duration, records, ok_status="OK")
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def worker() -> None:
        # One channel (one HTTP/2 connection) per thread, as the HTTP bench holds one connection each.
        channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        call = channel.unary_unary(GRPC_METHODS[signal], request_serializer=None, response_deserializer=None)
        latencies: list[float] = []
        statuses: Counter[int | str] = Counter()
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                call(body, timeout=30, metadata=metadata, compression=compression)
                statuses["OK"] += 1
                latencies.append(time.perf_counter() - t0)
            except grpc.RpcError as exc:
                statuses[exc.code().name] += 1
        channel.close()
        with lock:
            result.latencies.extend(latencies)
            result.statuses.update(statuses)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.monotonic() - started
    return result
