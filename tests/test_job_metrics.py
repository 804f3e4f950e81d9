"""Job metrics derived from lifecycle events, across two gateway workers, at the OTLP stand-in."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from conftest import Gateway, dash0_config
from http_client import call
from redis_server import RedisServer
from trackgate.jobmetrics import DURATION_BOUNDS, JobMetrics, RedisState, state_key_base
from upstream import Upstream


def totals(up: Upstream) -> dict[tuple[str, tuple[tuple[str, str], ...]], Any]:
    """The latest value of each series per instance (`service.instance.id`), summed over instances."""
    latest: dict[tuple[str, str, tuple[tuple[str, str], ...]], tuple[int, Any]] = {}
    for req in up.delivered("/v1/metrics"):
        for rm in req.message.resource_metrics:  # type: ignore[union-attr]
            res = {kv.key: kv.value.string_value for kv in rm.resource.attributes}
            instance = res.get("service.instance.id", "")
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    for p in getattr(m, kind).data_points:
                        attrs = tuple(sorted((kv.key, kv.value.string_value) for kv in p.attributes))
                        if kind == "histogram":
                            value: Any = (p.count, tuple(p.bucket_counts))
                        else:
                            value = p.as_int
                        key = (instance, m.name, attrs)
                        if key not in latest or latest[key][0] <= p.time_unix_nano:
                            latest[key] = (p.time_unix_nano, value)
    out: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
    for (_inst, name, attrs), (_t, value) in latest.items():
        key = (name, attrs)
        if isinstance(value, tuple):
            count, buckets = out.get(key, (0, (0,) * len(value[1])))
            out[key] = (count + value[0], tuple(a + b for a, b in zip(buckets, value[1], strict=True)))
        else:
            out[key] = out.get(key, 0) + value
    return out


def buckets(*values: float) -> tuple[int, tuple[int, ...]]:
    counts = [0] * (len(DURATION_BOUNDS) + 1)
    for v in values:
        counts[next((i for i, b in enumerate(DURATION_BOUNDS) if v <= b), len(DURATION_BOUNDS))] += 1
    return len(values), tuple(counts)


@pytest.mark.slow
def test_lifecycle_events_across_two_workers_yield_the_job_metrics(
    gateway_factory: type[Gateway], redis_server: RedisServer, upstream: Upstream
) -> None:
    config = f"""
[exporters.redis]
url = "{redis_server.url}"

[metrics]
interval = 30
job_timeout_s = 60
""" + dash0_config(upstream)
    gw = gateway_factory(config, env={"METRICS_COLLECTION_INTERVAL": "300ms"}, workers=2)
    now = time.time()
    ns = lambda t: int(t * 1e9)  # noqa: E731
    script = [
        {"event_type": "job_received", "job_id": "j1", "service": "ocr", "timestamp": ns(now - 10),
         "data": {"input_size": 100}},
        {"event_type": "job_started", "job_id": "j1", "service": "ocr", "timestamp": ns(now - 8.5)},
        {"event_type": "job_completed", "job_id": "j1", "service": "ocr", "timestamp": ns(now),
         "data": {"duration_ms": 1500, "output_size": 50}},
        {"event_type": "job_received", "job_id": "j2", "service": "ocr", "timestamp": ns(now - 20)},
        {"event_type": "job_started", "job_id": "j2", "service": "ocr", "timestamp": ns(now - 0.3)},
        {"event_type": "jobFailed", "job_id": "j2", "service": "ocr", "timestamp": ns(now),
         "data": {"duration_ms": 200000, "error_type": "OOM", "error": "CUDA out of memory"}},
        # Started long ago, never ends: timed out.
        {"event_type": "job_started", "job_id": "j3", "service": "ocr", "timestamp": ns(now - 3600)},
        {"event_type": "job_started", "job_id": "j4", "service": "asr", "timestamp": ns(now)},
        {"event_type": "job_completed", "job_id": "j4", "service": "asr", "timestamp": ns(now),
         "data": {"duration_ms": 50}},
        {"event_type": "job_started", "job_id": "j5", "service": "asr", "timestamp": ns(now)},
    ]  # fmt: skip
    for event in script:  # one request each: the two workers share them
        status, _, body = call(gw.url + "/v1/events", orjson.dumps(event), {"Content-Type": "application/json"})
        assert status == 200, body
    expected = {
        ("jobs_processed_total", (("service", "ocr"), ("status", "completed"))): 1,
        ("jobs_processed_total", (("service", "ocr"), ("status", "failed"))): 1,
        ("jobs_processed_total", (("service", "ocr"), ("status", "timeout"))): 1,
        ("jobs_processed_total", (("service", "asr"), ("status", "completed"))): 1,
        ("errors_total", (("error_type", "OOM"), ("service", "ocr"))): 1,
        ("jobs_active", (("service", "ocr"),)): 0,
        ("jobs_active", (("service", "asr"),)): 1,
        ("job_duration_seconds", (("service", "ocr"),)): buckets(1.5, 200.0),
        ("job_duration_seconds", (("service", "asr"),)): buckets(0.05),
        ("job_queue_wait_seconds", (("service", "ocr"),)): buckets(1.5, 19.7),
        ("job_input_bytes_total", (("service", "ocr"),)): 100,
        ("job_output_bytes_total", (("service", "ocr"),)): 50,
    }

    def matches(up: Upstream) -> bool:
        got = totals(up)
        return all(got.get(k) == v for k, v in expected.items())

    ok = upstream.wait_for(matches, timeout=30)
    got = totals(upstream)
    assert ok, {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
    instances = {
        kv.value.string_value
        for r in upstream.delivered("/v1/metrics")
        for rm in r.message.resource_metrics  # type: ignore[union-attr]
        for kv in rm.resource.attributes
        if kv.key == "service.instance.id"
    }
    assert len(instances) >= 1


def apply(metrics: JobMetrics, events: list[dict[str, Any]]) -> None:
    """Counts `events` as one accepted request (normalized NDJSON, as the receiver hands it)."""
    metrics.offer(b"".join(orjson.dumps(e) + b"\n" for e in events))


class Sink:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def ingest(self, signal: Any, body: bytes, format: Any = "json", content_encoding: str | None = None) -> None:
        assert signal == "metrics" and format == "json"
        self.bodies.append(body)


def test_an_end_seen_before_its_start_leaves_no_active_job() -> None:
    sink = Sink()
    metrics = JobMetrics(sink, 30.0, 60.0, None)
    t = time.time_ns()
    apply(
        metrics,
        [
            {"event_type": "job_completed", "job_id": "x", "service": "s", "time_unix_nano": t, "data": {}},
            {"event_type": "job_started", "job_id": "x", "service": "s", "time_unix_nano": t, "data": {}},
        ],
    )
    assert metrics.active["s"] == 0
    assert metrics.processed[("completed", "s")] == 1
    metrics.export()
    doc = orjson.loads(sink.bodies[-1])
    names = [m["name"] for m in doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]]
    assert "jobs_processed_total" in names


# -- temporality ----------------------------------------------------------------------------------


def decoded(body: bytes) -> dict[str, Any]:
    """One export, decoded with opentelemetry-proto: name → (metric, its points)."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    req = json_format.Parse(body, ExportMetricsServiceRequest())
    out: dict[str, Any] = {}
    for m in req.resource_metrics[0].scope_metrics[0].metrics:
        data = getattr(m, m.WhichOneof("data"))
        out[m.name] = (data, list(data.data_points))
    return out


def lifecycle(job: str, duration_ms: int, t: int) -> list[dict[str, Any]]:
    return [
        {"event_type": "job_started", "job_id": job, "service": "s", "time_unix_nano": t, "data": {}},
        {"event_type": "job_completed", "job_id": job, "service": "s", "time_unix_nano": t,
         "data": {"duration_ms": duration_ms}},
    ]  # fmt: skip


def test_cumulative_points_start_at_the_process_start() -> None:
    sink = Sink()
    metrics = JobMetrics(sink, 30.0, 60.0, None)
    t = time.time_ns()
    apply(metrics, lifecycle("a", 300, t))
    metrics.export()
    apply(metrics, lifecycle("b", 3000, t))
    metrics.export()
    first, second = decoded(sink.bodies[0]), decoded(sink.bodies[1])
    data, points = second["jobs_processed_total"]
    assert data.aggregation_temporality == 2 and data.is_monotonic
    assert [p.as_int for p in points] == [2]
    assert points[0].start_time_unix_nano == metrics.start_ns
    assert first["jobs_processed_total"][1][0].start_time_unix_nano == metrics.start_ns
    hist, (h,) = second["job_duration_seconds"]
    assert hist.aggregation_temporality == 2 and h.count == 2


def test_delta_points_carry_the_change_since_the_last_export() -> None:
    sink = Sink()
    metrics = JobMetrics(sink, 30.0, 60.0, None, temporality="delta")
    t = time.time_ns()
    apply(metrics, lifecycle("a", 300, t) + lifecycle("b", 400, t))
    apply(metrics, [{"event_type": "job_started", "job_id": "c", "service": "s", "time_unix_nano": t, "data": {}}])
    metrics.export()
    first = decoded(sink.bodies[-1])
    data, (p1,) = first["jobs_processed_total"]
    assert data.aggregation_temporality == 1 and data.is_monotonic
    assert p1.as_int == 2 and p1.start_time_unix_nano == metrics.start_ns
    hist, (h1,) = first["job_duration_seconds"]
    assert hist.aggregation_temporality == 1 and (h1.count, tuple(h1.bucket_counts)) == buckets(0.3, 0.4)
    # jobs_active is an up/down counter: cumulative in both modes (the OTel SDK's delta preference).
    active, (a1,) = first["jobs_active"]
    assert active.aggregation_temporality == 2 and a1.as_int == 1 and a1.start_time_unix_nano == metrics.start_ns

    apply(metrics, lifecycle("d", 70_000, t))
    metrics.export()
    second = decoded(sink.bodies[-1])
    _, (p2,) = second["jobs_processed_total"]
    assert p2.as_int == 1
    assert p2.start_time_unix_nano == p1.time_unix_nano, "each delta starts where the last one ended"
    _, (h2,) = second["job_duration_seconds"]
    assert (h2.count, tuple(h2.bucket_counts)) == buckets(70.0)
    assert h2.sum == pytest.approx(70.0)

    # No change: the counters and histograms are left out; the active jobs stay.
    metrics.export()
    assert set(decoded(sink.bodies[-1])) == {"jobs_active"}


def test_a_delta_that_was_not_queued_is_carried_into_the_next() -> None:
    class Failing(Sink):
        fail = True

        def ingest(self, signal: Any, body: bytes, format: Any = "json", content_encoding: str | None = None) -> None:
            if self.fail:
                raise RuntimeError("queue is full")
            super().ingest(signal, body, format, content_encoding)

    sink = Failing()
    metrics = JobMetrics(sink, 30.0, 60.0, None, temporality="delta")
    t = time.time_ns()
    apply(metrics, lifecycle("a", 100, t))
    metrics.export()  # refused: nothing reported
    sink.fail = False
    apply(metrics, lifecycle("b", 100, t))
    metrics.export()
    (body,) = sink.bodies
    _, (p,) = decoded(body)["jobs_processed_total"]
    assert p.as_int == 2 and p.start_time_unix_nano == metrics.start_ns


def test_temporality_is_checked() -> None:
    with pytest.raises(ValueError, match="temporality"):
        JobMetrics(Sink(), 30.0, 60.0, None, temporality="sometimes")


# -- Redis Cluster: the shared-state keys share one hash slot -------------------------------------


def test_state_keys_carry_a_hash_tag() -> None:
    assert state_key_base("trackgate:events") == "{trackgate:events}"
    assert state_key_base("{bus}:events") == "{bus}:events"  # a tag of its own is kept
    assert state_key_base("a{}b") == "{a{}b}"  # an empty tag is no tag for Cluster


def test_shared_state_keys_in_one_slot_and_single_node_unchanged(redis_server: RedisServer) -> None:
    from redis.crc import key_slot

    state = RedisState(redis_server.url, "trackgate:events", 60.0)
    t = time.time()
    assert state.run([("r", "j1", "s", t - 2), ("s", "j1", "s", t - 1)]) == [(False, None), (True, t - 2)]
    assert state.run([("f", "j1", "s", t), ("f", "j2", "s", t)]) == [(True, t - 1), (False, None)]
    assert state.run([("s", "j2", "s", t)]) == [(False, None)], "an end before its start: never active"
    keys = [state.received_key, state.active_key, state.service_key, state.done_prefix + "j2"]
    assert all(k.startswith("{trackgate:events}:jobs:") for k in keys)
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert redis_server.client().exists(state.done_prefix + "j2") == 1


def test_shared_state_unreachable_counts_without_it() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics = JobMetrics(Sink(), 30.0, 60.0, RedisState(f"redis://127.0.0.1:{port}/0", "p", 60.0))
    t = time.time_ns()
    apply(metrics, lifecycle("a", 300, t))
    assert metrics.state_failures == 1
    assert metrics.processed[("completed", "s")] == 1
    assert metrics.active["s"] == 0, "the start was not counted as active without the state"


def test_shared_timeout_sweep_counts_each_job_once(redis_server: RedisServer) -> None:
    sinks = [Sink(), Sink()]
    workers = [JobMetrics(sink, 30.0, 60.0, RedisState(redis_server.url, "sweep", 60.0)) for sink in sinks]
    t = time.time_ns()
    apply(workers[0], [{"event_type": "job_started", "job_id": "old", "service": "ocr", "time_unix_nano": t}])
    apply(workers[1], [{"event_type": "job_started", "job_id": "new", "service": "asr", "time_unix_nano": t}])
    for w in workers:  # both sweep 61 s later: both jobs are past the 60 s timeout
        w.sweep(now=t / 1e9 + 61)
    timeouts = [w.processed[("timeout", svc)] for w in workers for svc in ("ocr", "asr")]
    assert sorted(timeouts) == [0, 0, 1, 1], "each timed-out job counted by one worker"
    assert sum(w.active["ocr"] for w in workers) == 0 and sum(w.active["asr"] for w in workers) == 0
    assert redis_server.client().zcard("{sweep}:jobs:active") == 0
