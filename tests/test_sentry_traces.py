"""Sentry transactions become OTLP spans; an OTel SDK's trace and a Sentry transaction meet in one trace."""

from __future__ import annotations

from typing import Any

import pytest
import sentry_sdk
from opentelemetry import trace

from otel_clients import Sdk, attrs
from sentry_upstream import SentryUpstream, parse_envelope
from test_sentry_e2e import gateway_config, sdk  # noqa: F401 - fixtures
from upstream import Upstream

pytestmark = pytest.mark.slow


def record_envelopes(client: Any) -> list[bytes]:
    """What the SDK sends, serialized before compression, by wrapping its transport."""
    sent: list[bytes] = []
    transport = client.transport
    original = transport.capture_envelope

    def capture(envelope: Any) -> None:
        sent.append(envelope.serialize())
        original(envelope)

    transport.capture_envelope = capture
    return sent


def test_transaction_with_two_spans_becomes_three_otlp_spans(
    gateway_factory,
    upstream: Upstream,
    sentry_upstream: SentryUpstream,
    sdk,  # noqa: F811
) -> None:
    gw = gateway_factory(gateway_config(upstream, sentry_upstream))
    client = sdk(gw, traces_sample_rate=1.0, server_name="api-1")
    sent = record_envelopes(client)
    sentry_sdk.set_tag("job.id", "job-77")
    with sentry_sdk.start_transaction(name="POST /jobs", op="http.server") as tx:
        with sentry_sdk.start_span(op="db.query", name="INSERT INTO jobs") as db:
            db.set_data("db.system", "postgresql")
        with sentry_sdk.start_span(op="queue.publish", name="enqueue render") as publish:
            publish.set_status("internal_error")
        tx.set_status("ok")
    sentry_sdk.flush(timeout=5)

    assert upstream.wait_for(lambda u: len(u.spans()) == 3)
    spans = {s.name: s for s in upstream.spans()}
    assert set(spans) == {"POST /jobs", "INSERT INTO jobs", "enqueue render"}
    root, insert, enqueue = spans["POST /jobs"], spans["INSERT INTO jobs"], spans["enqueue render"]
    assert root.trace_id.hex() == tx.trace_id and root.span_id.hex() == tx.span_id
    assert root.parent_span_id == b""
    for child, sentry_span in ((insert, db), (enqueue, publish)):
        assert child.trace_id.hex() == tx.trace_id
        assert child.parent_span_id == root.span_id
        assert child.span_id.hex() == sentry_span.span_id
        assert root.start_time_unix_nano <= child.start_time_unix_nano <= child.end_time_unix_nano
        assert child.end_time_unix_nano <= root.end_time_unix_nano
        assert attrs(child.attributes)["job.id"] == "job-77"
    assert abs(root.start_time_unix_nano - int(tx.start_timestamp.timestamp() * 1e9)) < 1_000
    assert root.end_time_unix_nano > root.start_time_unix_nano
    assert root.kind == trace.SpanKind.SERVER.value + 1  # OTLP numbers kinds from 1 (INTERNAL)
    assert root.status.code == 1  # OK
    assert enqueue.status.code == 2 and enqueue.status.message == "internal_error"  # ERROR
    assert insert.status.code == 0  # no status: unset
    a = attrs(root.attributes)
    assert a["job.id"] == "job-77" and a["sentry.op"] == "http.server"
    assert a["sentry.event_id"] == sentry_upstream_event_id(sent)
    assert attrs(insert.attributes)["db.system"] == "postgresql"
    assert attrs(insert.attributes)["sentry.op"] == "db.query"
    (resource_spans,) = upstream.delivered("/v1/traces")[0].message.resource_spans  # type: ignore[union-attr]
    resource = attrs(resource_spans.resource.attributes)
    assert resource["service.name"] == "api-1" and resource["service.version"] == "worker@1.2.3"
    assert resource["deployment.environment.name"] == "test" and resource["sentry.project_id"] == "42"

    # The envelope reaches Sentry as the SDK sent it.
    assert sentry_upstream.wait_for(lambda s: s.items("transaction"))
    (original,) = (parse_envelope(b) for b in sent if b'"type":"transaction"' in b)
    (forwarded,) = sentry_upstream.delivered()
    assert forwarded.headers == original.headers
    assert [(i.headers, i.payload) for i in forwarded.items] == [(i.headers, i.payload) for i in original.items]


def sentry_upstream_event_id(sent: list[bytes]) -> str:
    (envelope,) = (parse_envelope(b) for b in sent if b'"type":"transaction"' in b)
    return str(envelope.headers["event_id"])


def test_otel_span_and_sentry_transaction_share_a_trace(
    gateway_factory,
    upstream: Upstream,
    sentry_upstream: SentryUpstream,
    sdk,  # noqa: F811
) -> None:
    """A worker instrumented with OpenTelemetry calls an API server instrumented with sentry-sdk;
    the trace context travels in `traceparent` and `sentry-trace` as the two SDKs write them."""
    gw = gateway_factory(gateway_config(upstream, sentry_upstream))
    worker = Sdk.connect(f"http://127.0.0.1:{gw.port}", service="job-worker")
    sdk(gw, traces_sample_rate=1.0)
    try:
        tracer = worker.tracer_provider.get_tracer("worker")
        with tracer.start_as_current_span("call api") as otel_span:
            ctx = otel_span.get_span_context()
            trace_id, span_id = f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
            headers = {"traceparent": f"00-{trace_id}-{span_id}-01", "sentry-trace": f"{trace_id}-{span_id}-1"}
            # The API server's side: sentry-sdk continues the incoming trace.
            incoming = sentry_sdk.continue_trace(headers, op="http.server", name="GET /api")
            with sentry_sdk.start_transaction(incoming), sentry_sdk.start_span(op="db.query", name="SELECT job"):
                pass
        worker.flush()
        sentry_sdk.flush(timeout=5)
    finally:
        worker.shutdown()

    assert upstream.wait_for(lambda u: len(u.spans()) == 3)
    spans = {s.name: s for s in upstream.spans()}
    assert {s.trace_id.hex() for s in spans.values()} == {trace_id}
    assert spans["GET /api"].parent_span_id.hex() == span_id
    assert spans["SELECT job"].parent_span_id == spans["GET /api"].span_id
    assert spans["call api"].span_id.hex() == span_id
