"""Fluent logs → OTLP protobuf: the core beside a pure-Python baseline doing the same mapping.

Input: 2,000 Kubernetes container log records as Fluent Bit's `tail` + `kubernetes` filter emit
them (pod metadata with labels and annotations, a JSON-logging app's line in `log`), sent as
the `http` output's `json_lines` body, and as one forward-protocol PackedForward message (entries
`[[EventTime, {}], record]`, as Fluent Bit ≥ 5.0.5 sends). Both sides: decode, lift the app's
JSON fields out of `log`, severity, timestamp, Kubernetes metadata to resource attributes grouped
per pod, correlation ids to `job.id`/trace/span ids, the tag as `fluent.tag`, and the protobuf
to send. The core is "ingest + next_batch + ack" through the binding; the baseline uses orjson /
msgpack and upb-backed `opentelemetry-proto` messages with a Python loop over the records.
"""

from __future__ import annotations

import random
import struct
from datetime import datetime
from typing import Any

import msgpack
import orjson
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import ResourceLogs

from trackgate import _core

N = 2000
T0 = 1_795_936_387
TAG = "kube.var.log.containers.api"

K8S = {
    "pod_name": "k8s.pod.name",
    "namespace_name": "k8s.namespace.name",
    "container_name": "k8s.container.name",
    "host": "k8s.node.name",
    "pod_id": "k8s.pod.uid",
    "docker_id": "container.id",
    "container_image": "container.image.name",
}
SEVERITY = {"trace": 1, "debug": 5, "info": 9, "warn": 13, "warning": 13, "error": 17, "fatal": 21}
CORRELATION = {"job_id": "job.id", "jobId": "job.id", "worker_id": "worker.id", "request_id": "request.id"}


def make_records(n: int = N) -> list[dict[str, Any]]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        pod = i % 8
        app_line = {
            "level": ("info", "info", "debug", "warn", "error")[i % 5],
            "message": f"job {i} step {i % 11} finished in {rng.randint(1, 900)} ms",
            "job_id": f"job-{i // 4}",
            "worker_id": f"w-{pod}",
            "trace_id": rng.randbytes(16).hex(),
            "span_id": rng.randbytes(8).hex(),
            "duration_ms": rng.randint(1, 900),
        }
        out.append(
            {
                "log": orjson.dumps(app_line).decode(),
                "stream": "stdout" if i % 5 != 4 else "stderr",
                "time": f"2026-11-29T07:13:{i % 60:02d}.{i:06d}Z",
                "kubernetes": {
                    "pod_name": f"api-7d9f8c6b5-{pod:05d}",
                    "namespace_name": "prod",
                    "pod_id": f"5f1c2a3b-0000-4000-8000-00000000000{pod}",
                    "labels": {"app": "api", "pod-template-hash": "7d9f8c6b5", "tier": "backend"},
                    "annotations": {"prometheus.io/scrape": "true"},
                    "host": f"node-{pod % 3}",
                    "container_name": "api",
                    "docker_id": f"{pod:02d}" * 32,
                    "container_image": "ghcr.io/acme/api:1.42.0",
                },
            }
        )
    return out


def json_lines_body(records: list[dict[str, Any]]) -> bytes:
    """Fluent Bit's `http` output with `format json_lines`: the date key first, one per line."""
    return b"".join(orjson.dumps({"date": T0 + i / 1000, **r}) + b"\n" for i, r in enumerate(records))


def event_time(secs: int, nanos: int) -> msgpack.ExtType:
    return msgpack.ExtType(0, struct.pack(">II", secs, nanos))


def packed_forward_message(records: list[dict[str, Any]]) -> bytes:
    entries = b"".join(msgpack.packb([[event_time(T0, i * 1000), {}], r]) for i, r in enumerate(records))
    return msgpack.packb([TAG, entries, {"chunk": "bench", "size": len(records)}])


# --- the pure-Python baseline -------------------------------------------------------------------


def _set(kv: KeyValue, value: Any) -> None:
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    elif isinstance(value, float):
        kv.value.double_value = value
    else:
        kv.value.string_value = value if isinstance(value, str) else orjson.dumps(value).decode()


def _time_nanos(value: Any) -> int:
    if isinstance(value, (int, float)):
        return int(value * 1e9)
    if isinstance(value, str):
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9)
        except ValueError:
            return 0
    return 0


def python_map(req: ExportLogsServiceRequest, groups: dict[tuple, ResourceLogs], rec: dict, time_ns: int) -> None:
    resource: list[tuple[str, str]] = []
    k8s = rec.pop("kubernetes", None) or {}
    for key, value in k8s.items():
        if key in K8S:
            resource.append((K8S[key], str(value)))
        elif key in ("labels", "annotations"):
            prefix = "k8s.pod.label." if key == "labels" else "k8s.pod.annotation."
            resource.extend((prefix + k, str(v)) for k, v in value.items())
    body = rec.pop("log", None) or rec.pop("message", None) or rec.pop("msg", None)
    if isinstance(body, str) and body.startswith("{"):
        try:
            inner = orjson.loads(body)
        except orjson.JSONDecodeError:
            inner = None
        if isinstance(inner, dict):
            body = inner.pop("message", None) or inner.pop("msg", None) or body
            rec.update(inner)
    key = tuple(resource)
    rl = groups.get(key)
    if rl is None:
        rl = req.resource_logs.add()
        for k, v in resource:
            rl.resource.attributes.add(key=k).value.string_value = v
        rl.scope_logs.add().scope.name = "trackgate.fluent"
        groups[key] = rl
    lr = rl.scope_logs[0].log_records.add()
    lr.body.string_value = body if isinstance(body, str) else orjson.dumps(rec).decode()
    level = rec.pop("level", None)
    if isinstance(level, str):
        lr.severity_text = level
        lr.severity_number = SEVERITY.get(level.lower(), 0)  # type: ignore[assignment]
    stamp = rec.pop("time", None)
    lr.time_unix_nano = time_ns or _time_nanos(stamp)
    lr.observed_time_unix_nano = time_ns
    trace_id, span_id = rec.pop("trace_id", None), rec.pop("span_id", None)
    if trace_id:
        lr.trace_id = bytes.fromhex(trace_id)
    if span_id:
        lr.span_id = bytes.fromhex(span_id)
    stream = rec.pop("stream", None)
    if stream:
        lr.attributes.add(key="log.iostream").value.string_value = stream
    for k, v in rec.items():
        _set(lr.attributes.add(key=CORRELATION.get(k, k)), v)
    lr.attributes.add(key="fluent.tag").value.string_value = TAG


def python_json_lines(body: bytes) -> bytes:
    req = ExportLogsServiceRequest()
    groups: dict[tuple, ResourceLogs] = {}
    for line in body.splitlines():
        rec = orjson.loads(line)
        python_map(req, groups, rec, _time_nanos(rec.pop("date", None)))
    return req.SerializeToString()


def _ext(code: int, data: bytes) -> int:
    secs, nanos = struct.unpack(">II", data)
    return secs * 1_000_000_000 + nanos


def _unpacker(entries: bytes) -> msgpack.Unpacker:
    u = msgpack.Unpacker(raw=False, ext_hook=_ext)
    u.feed(entries)
    return u


def python_forward_entries(message: bytes) -> bytes:
    tag, entries, _option = msgpack.unpackb(message, raw=False)
    assert tag == TAG
    req = ExportLogsServiceRequest()
    groups: dict[tuple, ResourceLogs] = {}
    for (time_ns, _metadata), rec in _unpacker(entries):
        python_map(req, groups, rec, time_ns)
    return req.SerializeToString()


# --- the core -----------------------------------------------------------------------------------


def core() -> _core.Core:
    return _core.Core(exporters=["bench"], batch_max_delay_ms=0, queue_max_bytes=1 << 34)


def drain(c: _core.Core) -> bytes:
    batch = c.next_batch("bench", "logs", 0.0, True)
    assert batch is not None
    c.ack(batch)
    return batch.body


def core_json_lines(c: _core.Core, body: bytes) -> bytes:
    c.ingest_fluent(body, "application/x-ndjson", TAG)
    return drain(c)


def core_forward(c: _core.Core, message: bytes) -> bytes:
    c.ingest_forward(message)
    return drain(c)


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return make_records()


def summary(body: bytes) -> list[tuple[str, int, bytes, int]]:
    req = ExportLogsServiceRequest()
    req.ParseFromString(body)
    return sorted(
        (lr.body.string_value, lr.severity_number, lr.trace_id, len(rl.resource.attributes))
        for rl in req.resource_logs
        for sl in rl.scope_logs
        for lr in sl.log_records
    )


def test_same_mapping(records: list[dict[str, Any]]) -> None:
    """Like with like: both sides produce the same records, grouped under the same resources."""
    body = json_lines_body(records)
    ours, theirs = core_json_lines(core(), body), python_json_lines(body)
    assert len(summary(ours)) == N and summary(ours) == summary(theirs)
    message = packed_forward_message(records)
    ours, theirs = core_forward(core(), message), python_forward_entries(message)
    assert summary(ours) == summary(theirs)
    groups = ExportLogsServiceRequest()
    groups.ParseFromString(ours)
    assert len(groups.resource_logs) == 8  # one per pod


@pytest.mark.benchmark(group="fluent-json-lines-2000-records")
def test_python_baseline_fluent_json_lines(benchmark, records: list[dict[str, Any]]) -> None:
    benchmark(python_json_lines, json_lines_body(records))


@pytest.mark.benchmark(group="fluent-json-lines-2000-records")
def test_core_fluent_json_lines(benchmark, records: list[dict[str, Any]]) -> None:
    c = core()
    benchmark(core_json_lines, c, json_lines_body(records))


@pytest.mark.benchmark(group="forward-packed-2000-records")
def test_python_baseline_forward_packed(benchmark, records: list[dict[str, Any]]) -> None:
    benchmark(python_forward_entries, packed_forward_message(records))


@pytest.mark.benchmark(group="forward-packed-2000-records")
def test_core_forward_packed(benchmark, records: list[dict[str, Any]]) -> None:
    c = core()
    benchmark(core_forward, c, packed_forward_message(records))
