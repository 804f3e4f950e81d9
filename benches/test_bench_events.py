"""Events: NDJSON → validated, normalized events (the core) beside a Python baseline (orjson +
msgspec validation), and Redis delivery throughput (pipelined XADD) against a local redis-server."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from trackgate._core import JobMetrics, decode_events

N = 2000


@pytest.fixture(scope="module")
def ndjson() -> bytes:
    now = time.time()
    lines = [
        orjson.dumps(
            {
                "event_type": ("jobStarted", "job_progress", "job_completed")[i % 3],
                "job_id": f"job-{i // 3}",
                "service": "ocr",
                "worker_id": f"w-{i % 7}",
                "timestamp": int((now + i) * 1000),
                "data": {"progress": i % 100, "duration_ms": i, "output_size": 1024},
            }
        )
        for i in range(N)
    ]
    return b"\n".join(lines) + b"\n"


class Event(msgspec.Struct):
    event_type: str
    timestamp: int | float | str | None = None
    event_id: str | None = None
    job_id: str | None = None
    service: str | None = None
    worker_id: str | None = None
    machine_id: str | None = None
    session_id: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    data: dict[str, Any] = {}


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_DECODER = msgspec.json.Decoder(Event)


def python_baseline(body: bytes) -> tuple[bytes, int]:
    out = []
    rejected = 0
    for line in body.splitlines():
        try:
            e = _DECODER.decode(line)
        except msgspec.ValidationError:
            rejected += 1
            continue
        ts = e.timestamp
        nanos = int(ts * 1_000_000) if isinstance(ts, int) and ts < 10**14 else time.time_ns()
        doc = {
            "event_id": e.event_id or str(msgspec.UNSET),
            "event_type": _CAMEL.sub("_", e.event_type).lower(),
            "time_unix_nano": nanos,
            "service": e.service,
            "job_id": e.job_id,
            "worker_id": e.worker_id,
            "data": e.data,
        }
        out.append(orjson.dumps(doc))
    return b"\n".join(out) + b"\n", rejected


def test_same_events(ndjson: bytes) -> None:
    core = decode_events(ndjson)
    baseline, rejected = python_baseline(ndjson)
    assert core.accepted == N and rejected == 0
    assert [orjson.loads(x)["event_type"] for x in core.ndjson.splitlines()] == [
        orjson.loads(x)["event_type"] for x in baseline.splitlines()
    ]


def test_core_events_ndjson(benchmark, ndjson: bytes) -> None:
    result = benchmark(decode_events, ndjson)
    assert result.accepted == N


def test_python_baseline_events_ndjson(benchmark, ndjson: bytes) -> None:
    _, rejected = benchmark(python_baseline, ndjson)
    assert rejected == 0


# -- job metrics: one request's events counted (local job state) --------------------------------


def python_job_metrics_baseline(body: bytes, active: dict[str, float], totals: dict[Any, float]) -> None:
    """The counting as jobmetrics.py did it before it moved into the core: orjson per line, then
    a Python loop (the processed/active counters, the duration histogram, output bytes)."""
    bounds = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
    for e in [orjson.loads(line) for line in body.splitlines() if line.strip()]:
        kind, job, service = e.get("event_type"), e.get("job_id"), str(e.get("service") or "unknown_service")
        data, ts = e.get("data") or {}, e.get("time_unix_nano", 0) / 1e9
        if kind == "job_started" and job:
            if job not in active:
                active[job] = ts
                totals[("active", service)] = totals.get(("active", service), 0) + 1
        elif kind in ("job_completed", "job_failed"):
            if job and active.pop(job, None) is not None:
                totals[("active", service)] -= 1
            key = ("processed", kind, service)
            totals[key] = totals.get(key, 0) + 1
            duration = data.get("duration_ms")
            if isinstance(duration, int | float) and duration >= 0:
                i = next((i for i, b in enumerate(bounds) if duration / 1000 <= b), len(bounds))
                totals[("duration", service, i)] = totals.get(("duration", service, i), 0) + 1
            size = data.get("output_size")
            if isinstance(size, int | float):
                totals[("output", service)] = totals.get(("output", service), 0) + int(size)


def test_core_job_metrics_count_decoded(benchmark, ndjson: bytes) -> None:
    """`JobMetrics.count` on a `decode_events` result (the /v1/events path): no NDJSON parse."""
    result = decode_events(ndjson)
    metrics = JobMetrics(time.time_ns(), [])
    benchmark(metrics.count, result)
    assert sum(metrics.processed().values()) > 0


def test_core_job_metrics_count_ndjson(benchmark, ndjson: bytes) -> None:
    """`JobMetrics.count` on the bus NDJSON (the path of events found in logs): a borrowing parse."""
    body = decode_events(ndjson).ndjson
    metrics = JobMetrics(time.time_ns(), [])
    benchmark(metrics.count, body)
    assert sum(metrics.processed().values()) > 0


def test_python_baseline_job_metrics_count(benchmark, ndjson: bytes) -> None:
    body = decode_events(ndjson).ndjson
    totals: dict[Any, float] = {}
    benchmark(python_job_metrics_baseline, body, {}, totals)
    assert totals


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed (make redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp: Path = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp)],
        stdout=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


class FakeBatch:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.records = body.count(b"\n")


def test_redis_delivery_2000_events(benchmark, ndjson: bytes, redis_url: str) -> None:
    from trackgate.config import RedisExporterConfig
    from trackgate.exporters.redis import RedisExporter

    exporter = RedisExporter(RedisExporterConfig(url=redis_url, maxlen=100_000))
    batch = FakeBatch(decode_events(ndjson).ndjson)
    outcome = benchmark(exporter.send, batch)  # type: ignore[arg-type]
    assert outcome.kind == "ok"
    exporter.close()
