"""Events inside logs on every log path: Fluent Bit's http output (`/v1/fluent`), the Fluent http
input listener, the forward listener and OTLP/gRPC (the OTLP/HTTP path is in test_events.py).
Each path gets one line carrying an `event_type` and one ordinary line; only the first reaches
the Redis stream, as an event."""

from __future__ import annotations

import time

import orjson
import pytest

from conftest import Gateway, free_port
from http_client import call
from otel_clients import Sdk
from redis_server import RedisServer
from test_events import redis_config, stream_entries, wait_until
from test_fluent_forward import Client, event_time

pytestmark = pytest.mark.slow

T0 = 1795936387


def test_event_type_lines_on_every_log_path_reach_the_stream(
    gateway_factory: type[Gateway], redis_server: RedisServer
) -> None:
    fluent_port, forward_port = free_port(), free_port()
    gw = gateway_factory(
        redis_config(redis_server)
        + f'\n[receivers.fluent_http]\nlisten = "127.0.0.1:{fluent_port}"\n'
        + f'\n[receivers.forward]\nlisten = "127.0.0.1:{forward_port}"\n'
    )
    json_headers = {"Content-Type": "application/json"}

    # Fluent Bit's http output: a record field, and a JSON log line (lifted by the conversion).
    records = [
        {"log": "job a done", "event_type": "job_completed", "job_id": "fh-1", "duration_ms": 120},
        {"log": orjson.dumps({"event_type": "jobStarted", "jobId": "fh-2", "message": "go"}).decode()},
        {"log": "an ordinary line", "job_id": "fh-3"},
    ]
    status, _, body = call(gw.url + "/v1/fluent/app", orjson.dumps(records), json_headers)
    assert status == 200, body

    # The Fluent http input drop-in (answers 201).
    line = {"event_type": "jobFailed", "job_id": "fi-1", "error": "oom", "log": "failed"}
    status, _, body = call(f"http://127.0.0.1:{fluent_port}/app.logs", orjson.dumps(line), json_headers)
    assert status == 201, body

    # The forward protocol: the ack comes once the record and its event are queued.
    c = Client(forward_port)
    c.send(
        [
            "app.fwd",
            event_time(T0),
            {"log": "finished", "event_type": "job_completed", "job_id": "fw-1"},
            {"chunk": "a"},
        ]
    )
    assert c.answer() == {"ack": "a"}
    c.send(["app.fwd", event_time(T0), {"log": "nothing special", "job_id": "fw-2"}, {"chunk": "b"}])
    assert c.answer() == {"ack": "b"}
    c.close()

    # OTLP/gRPC from the real SDK: `extra` becomes the record's attributes.
    sdk = Sdk.connect(gw.url, service="grpc-worker", grpc_target=gw.grpc_target)
    sdk.logger.info("job received", extra={"event_type": "job_received", "job.id": "gr-1", "input_size": 7})
    sdk.logger.info("no event here", extra={"job.id": "gr-2"})
    sdk.flush()
    sdk.shutdown()

    want = {
        ("job_completed", "fh-1"),
        ("job_started", "fh-2"),
        ("job_failed", "fi-1"),
        ("job_completed", "fw-1"),
        ("job_received", "gr-1"),
    }
    assert wait_until(lambda: len(stream_entries(redis_server)) >= len(want), timeout=20)
    time.sleep(0.3)  # nothing more arrives
    entries = stream_entries(redis_server)
    assert {(e["event_type"], e["job_id"]) for e in entries} == want
    assert len(entries) == len(want)
    by_job = {e["job_id"]: e for e in entries}
    assert orjson.loads(by_job["fh-1"]["data"])["duration_ms"] == 120
    assert orjson.loads(by_job["fi-1"]["data"])["error"] == "oom"
    assert by_job["fw-1"]["time_unix_nano"] == str(T0 * 10**9)
    assert by_job["gr-1"]["service"] == "grpc-worker"
    assert orjson.loads(by_job["gr-1"]["data"])["input_size"] == 7
    # A resent record gives the same event_id (derived from its bytes): consumers drop the repeat.
    assert len({e["event_id"] for e in entries}) == len(want)
    _, _, metrics = call(gw.url + "/metrics")
    assert b'trackgate_events_total{outcome="from_logs"} 5' in metrics


def test_events_found_in_logs_feed_the_job_metrics_without_an_event_bus(gateway_factory: type[Gateway]) -> None:
    """No Redis: the events taken from logs still count (job metrics), none is lost to the tap."""
    gw = gateway_factory("[metrics]\ninterval = 3600\n")
    records = [{"log": "done", "event_type": "job_completed", "job_id": f"m-{i}"} for i in range(3)]
    status, _, body = call(gw.url + "/v1/fluent/app", orjson.dumps(records), {"Content-Type": "application/json"})
    assert status == 200, body
    _, _, metrics = call(gw.url + "/metrics")
    assert b'trackgate_events_total{outcome="from_logs"} 3' in metrics
