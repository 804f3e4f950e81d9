"""Secrets (tokens, DSNs, header values) never appear in logs, error messages or /metrics."""

from __future__ import annotations

import json
import urllib.request

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from upstream import Reply, Upstream

pytestmark = pytest.mark.slow

SECRETS = ["tok-IN-9f3a", "dash0-TOKEN-77c1", "hdr-VALUE-5e2b", "sentrykey0123456789abcdef01234567", "pw-URL-aa11"]


def test_no_secret_in_logs_metrics_or_answers(gateway_factory, upstream: Upstream) -> None:
    upstream.default = Reply(401, body=b"unauthorized")  # a permanent failure: logged with its reason
    config = f"""
[server]
tokens = ["{SECRETS[0]}"]
[exporters.dash0]
endpoint = "http://user:{SECRETS[4]}@127.0.0.1:{upstream.port}"
token = "{SECRETS[1]}"
headers = {{ "x-api-key" = "{SECRETS[2]}" }}
retry = {{ initial_interval_s = 0.1, max_interval_s = 0.2 }}
[exporters.sentry]
dsn = "http://{SECRETS[3]}@127.0.0.1:9/42"
[self_monitoring]
sentry_dsn = "http://{SECRETS[3]}@127.0.0.1:9/43"
"""
    gw = gateway_factory(config)
    msg = ExportTraceServiceRequest()
    span = msg.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 8, "x"
    answers = []
    for token in (SECRETS[0], "wrong"):
        req = urllib.request.Request(
            gw.url + "/v1/traces",
            data=msg.SerializeToString(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                answers.append(resp.read())
        except urllib.error.HTTPError as err:
            answers.append(err.read())
    req = urllib.request.Request(
        gw.url + "/v1/traces",
        data=msg.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {SECRETS[0]}"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200
    assert upstream.wait_for(lambda u: len(u.received) >= 1)
    with urllib.request.urlopen(gw.url + "/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert upstream.received[0].headers["authorization"] == f"Bearer {SECRETS[1]}"  # really configured
    gw.stop()
    log = gw.log()
    assert "HTTP 401" in log  # the failure was logged, with its reason
    check = subprocess_check_config(gw)
    for secret in SECRETS:
        assert secret not in log, secret
        assert secret not in metrics, secret
        assert all(secret.encode() not in a for a in answers), secret
        assert secret not in check, secret


def subprocess_check_config(gw) -> str:
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "trackgate", "check-config", str(gw.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=gw.env,
    )
    assert run.returncode == 0, run.stderr
    json.loads(run.stdout)
    return run.stdout + run.stderr
