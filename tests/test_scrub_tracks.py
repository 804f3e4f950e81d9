"""`[scrub] tracks`: the same rules on OTLP logs and spans as on Sentry events, through the real
gateway; off (the default for OTLP), records arrive byte for byte. Also: a metric with a name and
no data points is forwarded."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from conftest import dash0_config
from http_client import call
from otel_clients import attrs
from sentry_upstream import SentryUpstream
from upstream import Upstream

pytestmark = pytest.mark.slow

F = "[Filtered]"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEsecretbody\n-----END RSA PRIVATE KEY-----"
PEM_OUT = "-----BEGIN RSA PRIVATE KEY-----[Filtered]-----END RSA PRIVATE KEY-----"

# (attribute key, value sent, value expected): each default rule, an extra key, a safe key.
ROWS = [
    ("db.password", "hunter2", F),  # key rule
    ("http.request.header.authorization", "Basic dXNlcjpwYXNz", F),
    ("http.request.header.cookie", "sessionid=abc", F),
    ("api_key", "k-123", F),
    ("user.ssn", "078-05-1120", F),  # extra key
    ("author", "ann", "ann"),  # safe key (contains "auth")
    ("card", "paid with 4111 1111 1111 1111", "paid with [Filtered]"),  # Luhn-valid card
    ("dsn", "postgres://app:s3cret@db/app", "postgres://app:[Filtered]@db/app"),  # URL password
    ("url", "https://h/cb?token=t1&page=2", "https://h/cb?token=[Filtered]&page=2"),  # query value
    ("header", "Bearer eyJhbGciOi.x1", "Bearer [Filtered]"),
    ("key", PEM, PEM_OUT),
    ("plain", "nothing to see", "nothing to see"),
    ("note", "ref JOB-SECRET-4711 done", "ref [Filtered] done"),  # extra pattern
]


def kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def logs_request(body: str) -> bytes:
    req = logs_service_pb2.ExportLogsServiceRequest()
    record = LogRecord(time_unix_nano=1, severity_number=9, body=AnyValue(string_value=body))
    record.attributes.extend(kv(k, v) for k, v, _ in ROWS)
    req.resource_logs.add().scope_logs.add().log_records.append(record)
    return req.SerializeToString()


def traces_request() -> bytes:
    req = trace_service_pb2.ExportTraceServiceRequest()
    span = Span(trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="GET /", start_time_unix_nano=1)
    span.attributes.extend(kv(k, v) for k, v, _ in ROWS)
    event = span.events.add(name="exception", time_unix_nano=2)
    event.attributes.extend(kv(k, v) for k, v, _ in ROWS)
    req.resource_spans.add().scope_spans.add().spans.append(span)
    return req.SerializeToString()


def post(gw: Any, path: str, body: bytes) -> None:
    status, _, answer = call(f"http://127.0.0.1:{gw.port}{path}", body, {"Content-Type": "application/x-protobuf"})
    assert status == 200, answer


def config(upstream: Upstream, sentry: SentryUpstream, tracks: str) -> str:
    return (
        dash0_config(upstream)
        + f"""
[scrub]
tracks = {tracks}
extra_keys = ["ssn"]
safe_keys = ["author"]
extra_patterns = ["JOB-SECRET-[0-9]+"]

[exporters.sentry]
dsn = "{sentry.dsn()}"
timeout_s = 2.0
"""
    )


def check_rows(values: dict[str, object]) -> None:
    assert {k: values[k] for k, _, _ in ROWS} == {k: want for k, _, want in ROWS}


def test_all_tracks_scrub_otlp_logs_spans_and_sentry_events(
    gateway_factory,
    upstream: Upstream,
    sentry_upstream: SentryUpstream,
) -> None:
    gw = gateway_factory(config(upstream, sentry_upstream, '["all"]'))
    post(gw, "/v1/logs", logs_request("GET /login?password=hunter2&user=ann failed"))
    post(gw, "/v1/traces", traces_request())
    # A Sentry event under the same rules (extra and safe keys from [scrub]).
    event = {"event_id": uuid.uuid4().hex, "message": "x", "extra": {k: v for k, v, _ in ROWS}}
    payload = json.dumps(event).encode()
    envelope = b"\n".join(
        [json.dumps({"event_id": event["event_id"]}).encode(), json.dumps({"type": "event"}).encode(), payload]
    )
    status, _, _ = call(
        f"http://127.0.0.1:{gw.port}/api/1/envelope/",
        envelope,
        {"Content-Type": "application/x-sentry-envelope", "X-Sentry-Auth": "Sentry sentry_key=k, sentry_version=7"},
    )
    assert status == 200

    assert upstream.wait_for(lambda u: len(u.log_records()) == 2 and u.spans())
    (otlp_record,) = [r for r in upstream.log_records() if not attrs(r.attributes).get("sentry.event_id")]
    assert otlp_record.body.string_value == "GET /login?password=[Filtered]&user=ann failed"
    check_rows(attrs(otlp_record.attributes))
    (span,) = upstream.spans()
    check_rows(attrs(span.attributes))
    check_rows(attrs(span.events[0].attributes))
    assert span.name == "GET /"
    assert sentry_upstream.wait_for(lambda s: s.items("event"))
    (item,) = sentry_upstream.items("event")
    check_rows(item.json()["extra"])

    # Counted per track, and the scrubbed values are in no log line.
    status, _, metrics = call(f"http://127.0.0.1:{gw.port}/metrics")
    assert status == 200
    assert 'trackgate_scrubbed_records_total{track="otlp"} 2' in metrics.decode()
    assert 'trackgate_scrubbed_records_total{track="sentry"} 1' in metrics.decode()
    assert "hunter2" not in gw.log() and "s3cret" not in gw.log()


def test_default_leaves_otlp_untouched_and_forwards_metrics_without_points(
    gateway_factory,
    upstream: Upstream,
    sentry_upstream: SentryUpstream,
) -> None:
    gw = gateway_factory(dash0_config(upstream))
    body = logs_request("password=hunter2")
    post(gw, "/v1/logs", body)
    post(gw, "/v1/traces", traces_request())
    metrics = metrics_service_pb2.ExportMetricsServiceRequest()
    metrics.resource_metrics.add().scope_metrics.add().metrics.append(Metric(name="jobs.queued"))
    post(gw, "/v1/metrics", metrics.SerializeToString())

    assert upstream.wait_for(lambda u: u.log_records() and u.spans() and u.metrics())
    sent = logs_service_pb2.ExportLogsServiceRequest.FromString(body).resource_logs[0].scope_logs[0].log_records[0]
    (record,) = upstream.log_records()
    assert record.SerializeToString() == sent.SerializeToString()
    (span,) = upstream.spans()
    sent_span = trace_service_pb2.ExportTraceServiceRequest.FromString(traces_request())
    assert span.SerializeToString() == sent_span.resource_spans[0].scope_spans[0].spans[0].SerializeToString()
    assert [m.name for m in upstream.metrics()] == ["jobs.queued"]


def test_fluent_and_events_tracks_are_scrubbed_and_otlp_left_alone(gateway_factory, upstream: Upstream) -> None:
    """`tracks = ["fluent", "events"]`: a Fluent Bit record and a job event lose their secrets; an
    OTLP log in the same gateway (track not listed) arrives as sent."""
    gw = gateway_factory(dash0_config(upstream) + '\n[scrub]\ntracks = ["fluent", "events"]\n')
    record = [{"date": 1.7e9, "log": "login ok", "password": "fluent-hunter2", "user": "ann"}]
    status, _, answer = call(
        f"http://127.0.0.1:{gw.port}/v1/fluent/app", json.dumps(record).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200, answer
    event = {"event_type": "job_failed", "job_id": "j-1", "timestamp": 1_700_000_000,
             "data": {"error": "db down", "api_key": "event-hunter2"}}  # fmt: skip
    status, _, answer = call(
        f"http://127.0.0.1:{gw.port}/v1/events", json.dumps(event).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200, answer
    post(gw, "/v1/logs", logs_request("otlp password=otlp-hunter2"))

    assert upstream.wait_for(lambda u: len(u.log_records()) == 3)
    sent = [r.SerializeToString() for r in upstream.log_records()]
    assert not any(b"fluent-hunter2" in r or b"event-hunter2" in r for r in sent)
    assert sum(b"[Filtered]" in r for r in sent) >= 2
    assert any(b"otlp password=otlp-hunter2" in r for r in sent)  # OTLP is not a listed track
    assert any(b"ann" in r for r in sent) and any(b"db down" in r for r in sent)  # the rest is kept
    status, _, metrics = call(f"http://127.0.0.1:{gw.port}/metrics")
    assert 'trackgate_scrubbed_records_total{track="events"} 1' in metrics.decode()
    assert 'trackgate_scrubbed_records_total{track="otlp"} 1' in metrics.decode()  # the Fluent record


def test_fluent_and_events_tables(gateway_factory, upstream: Upstream) -> None:
    """Every row (each default rule, an extra key, a safe key, a pattern) on a Fluent record and on a
    job event's data."""
    cfg = dash0_config(upstream) + (
        '\n[scrub]\ntracks = ["fluent", "events"]\nextra_keys = ["ssn"]\nsafe_keys = ["author"]\n'
        'extra_patterns = ["JOB-SECRET-[0-9]+"]\n'
    )
    gw = gateway_factory(cfg)
    record = {"date": 1.7e9, "log": "fluent line", **{k: v for k, v, _ in ROWS}}
    status, _, answer = call(
        f"http://127.0.0.1:{gw.port}/v1/fluent/app", json.dumps([record]).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200, answer
    event = {"event_type": "job_started", "job_id": "j-2", "timestamp": 1_700_000_000, "data": dict(record)}
    status, _, answer = call(
        f"http://127.0.0.1:{gw.port}/v1/events", json.dumps(event).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200, answer
    assert upstream.wait_for(lambda u: len(u.log_records()) == 2)
    by_event = {bool(attrs(r.attributes).get("event.name")): attrs(r.attributes) for r in upstream.log_records()}
    check_rows(by_event[False])  # the Fluent record: fields as attributes
    check_rows({k.removeprefix("event.data."): v for k, v in by_event[True].items()})
