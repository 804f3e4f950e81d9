"""/healthz, /readyz and /metrics tell an operator what the gateway is doing."""

from __future__ import annotations

import json
import re
import time

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from http_client import call

pytestmark = pytest.mark.slow


def get(url: str) -> tuple[int, str]:
    status, _, body = call(url, timeout=5)
    return status, body.decode()


def post_spans(url: str, n: int, bad: int = 0) -> int:
    msg = ExportTraceServiceRequest()
    spans = msg.resource_spans.add().scope_spans.add()
    for i in range(n + bad):
        span = spans.spans.add()
        span.trace_id = b"\x07" * (16 if i < n else 3)
        span.span_id, span.name = b"\x01" * 8, "x"
    return call(url + "/v1/traces", msg.SerializeToString(), {"Content-Type": "application/x-protobuf"})[0]


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(got.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics")


def test_health_ready_and_metrics(gateway_factory) -> None:
    gw = gateway_factory("[batch]\nmax_delay_ms = 20\n")
    assert get(gw.url + "/healthz") == (200, "ok\n")
    assert get(gw.url + "/readyz")[0] == 200
    assert post_spans(gw.url, 5, bad=2) == 200
    status, text = get(gw.url + "/metrics")
    assert status == 200
    assert sample(text, "trackgate_receiver_records_total", signal="traces", outcome="received") == 7
    assert sample(text, "trackgate_receiver_records_total", signal="traces", outcome="accepted") == 5
    assert sample(text, "trackgate_receiver_records_total", signal="traces", outcome="rejected") == 2
    assert sample(text, "trackgate_http_requests_total", route="/v1/traces", code="200") == 1
    assert sample(text, "trackgate_http_request_duration_seconds_count", route="/v1/traces") == 1
    assert "# TYPE trackgate_receiver_records_total counter" in text
    assert "trackgate_queue_bytes" in text


def test_queue_full_answers_429_and_not_ready(gateway_factory, upstream) -> None:
    from upstream import Reply

    # The destination is down (503) so nothing drains; a tiny queue fills after one request.
    upstream.default = Reply(503, {"Retry-After": "30"})
    config = f"""
[storage]
max_bytes = 2000
compression = "none"
[exporters.otlp]
endpoint = "{upstream.url}"
"""
    gw = gateway_factory(config)
    statuses = [post_spans(gw.url, 20) for _ in range(5)]
    assert statuses[0] == 200
    assert 429 in statuses
    assert get(gw.url + "/readyz")[0] == 503
    _, text = get(gw.url + "/metrics")
    assert sample(text, "trackgate_http_requests_total", route="/v1/traces", code="429") >= 1


def test_bench_command_loads_a_gateway(gateway_factory) -> None:
    import subprocess
    import sys

    gw = gateway_factory("")
    run = subprocess.run(
        [sys.executable, "-m", "trackgate", "bench", "--url", gw.url, "--duration", "1", "--records", "10"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "records/s" in run.stdout and "p99" in run.stdout
    _, text = get(gw.url + "/metrics")
    assert sample(text, "trackgate_receiver_records_total", signal="traces", outcome="accepted") >= 10


def test_metrics_add_up_across_worker_processes(gateway_factory) -> None:
    gw = gateway_factory("[batch]\nmax_delay_ms = 20\n", workers=2)
    for _ in range(40):  # a new connection each: the kernel spreads them over both workers
        assert post_spans(gw.url, 5) == 200
    deadline = time.monotonic() + 10
    totals = []
    while time.monotonic() < deadline:
        _, text = get(gw.url + "/metrics")
        totals.append(sample(text, "trackgate_receiver_records_total", signal="traces", outcome="accepted"))
        if totals[-5:] == [200.0] * 5:  # every scrape, whichever worker answers, sees all 200
            break
        time.sleep(0.3)
    assert totals[-5:] == [200.0] * 5, totals
    # Each worker's own share (its snapshot file): both served some, and the shares add up.
    key = 'trackgate_receiver_records_total{signal="traces",outcome="accepted"}'
    shares = [json.loads(p.read_bytes()).get(key, 0) for p in (gw.tmp / "trackgate-data" / "metrics").glob("*.json")]
    assert len(shares) == 2 and all(shares) and sum(shares) == 200, shares
