"""Fluent Bit's `http` output → `trackgate serve` → the OTLP stand-in: every format, date variant,
compression, tag source, and the refusals (each built as Fluent Bit v5.1.1 writes them, see
../shared/PROTOCOLS.md)."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard

from conftest import dash0_config
from http_client import call
from otel_clients import attrs
from upstream import Upstream

pytestmark = pytest.mark.slow

T0 = 1795936387.068743  # 2026-11-29T07:13:07.068743Z
T0_NS = 1795936387_068743000
TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"
K8S = {
    "pod_name": "api-7d9f",
    "namespace_name": "jobs",
    "container_name": "worker",
    "host": "node-3",
    "docker_id": "c0ffee",
    "labels": {"app": "worker"},
}
# A container line from `tail` (no parser): the JSON app's fields are inside `log`.
APP_LINE = json.dumps(
    {"level": "error", "message": "job failed", "job_id": "job-1", "trace_id": TRACE, "span_id": SPAN, "rows": 3}
)
RECORDS: list[dict[str, Any]] = [
    {"log": APP_LINE, "stream": "stderr", "kubernetes": K8S},
    {"message": "plain line worker_id=w-9", "lvl": "WARN", "machine_id": "gpu-2"},
]


def event_time(t: float) -> msgpack.ExtType:
    secs = int(t)
    return msgpack.ExtType(0, struct.pack(">II", secs, round((t - secs) * 1e9)))


def dated(record: dict[str, Any], fmt: str, key: str = "date") -> dict[str, Any]:
    """The record as the http output writes it for `json_date_format fmt` (first key: the date)."""
    when = dt.datetime.fromtimestamp(T0, dt.UTC)
    value: object = {
        "double": T0,
        "iso8601": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "epoch": int(T0),
        "epoch_ms": int(T0 * 1000),
        "java_sql_timestamp": when.strftime("%Y-%m-%d %H:%M:%S.%f"),
    }[fmt]
    return {key: value, **record}


def body_for(fmt: str, records: list[dict[str, Any]]) -> tuple[bytes, str]:
    if fmt == "json":
        return json.dumps([dated(r, "double") for r in records]).encode(), "application/json"
    if fmt == "json_lines":
        return b"".join(json.dumps(dated(r, "double")).encode() + b"\n" for r in records), "application/x-ndjson"
    if fmt == "json_stream":
        return b"".join(json.dumps(dated(r, "double")).encode() for r in records), "application/json"
    if fmt == "msgpack":
        packed = b"".join(msgpack.packb([[event_time(T0), {}], r]) for r in records)
        return packed, "application/msgpack"
    if fmt == "msgpack_legacy":
        return b"".join(msgpack.packb([int(T0), r]) for r in records), "application/msgpack"
    raise AssertionError(fmt)


def by_body(upstream: Upstream) -> dict[str, tuple[Any, dict[str, object]]]:
    """Log records by body text, with their resource attributes."""
    out: dict[str, tuple[Any, dict[str, object]]] = {}
    for request in upstream.delivered("/v1/logs"):
        for rl in request.message.resource_logs:  # type: ignore[union-attr]
            resource = attrs(rl.resource.attributes)
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    out[rec.body.string_value] = (rec, resource)
    return out


@pytest.mark.parametrize(
    ("fmt", "encoding"),
    [
        ("json", None),
        ("json", "gzip"),
        ("json_lines", None),
        ("json_stream", "zstd"),
        ("msgpack", None),
        ("msgpack", "gzip"),
        ("msgpack_legacy", None),
    ],
)
def test_http_output_formats(gateway_factory, upstream: Upstream, fmt: str, encoding: str | None) -> None:
    gw = gateway_factory(dash0_config(upstream))
    body, content_type = body_for(fmt, RECORDS)
    headers = {"Content-Type": content_type, "User-Agent": "Fluent-Bit"}
    if encoding == "gzip":
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    elif encoding == "zstd":
        body = zstandard.ZstdCompressor().compress(body)
        headers["Content-Encoding"] = "zstd"
    status, _, answer = call(gw.url + "/v1/fluent/kube.var.log", body, headers)
    assert status == 200, answer
    assert json.loads(answer) == {"accepted": 2, "rejected": 0}
    assert upstream.wait_for(lambda u: len(u.log_records()) == 2)
    records = by_body(upstream)

    rec, resource = records["job failed"]
    assert rec.severity_number == 17 and rec.severity_text == "error"
    want_ns = T0_NS if fmt != "msgpack_legacy" else int(T0) * 10**9
    assert abs(rec.time_unix_nano - want_ns) < 1000
    assert rec.observed_time_unix_nano > 0
    assert rec.trace_id.hex() == TRACE and rec.span_id.hex() == SPAN
    a = attrs(rec.attributes)
    assert a["job.id"] == "job-1" and a["rows"] == 3
    assert a["fluent.tag"] == "kube.var.log" and a["log.iostream"] == "stderr"
    assert "kubernetes" not in a and "log" not in a
    assert resource["k8s.pod.name"] == "api-7d9f" and resource["k8s.namespace.name"] == "jobs"
    assert resource["k8s.container.name"] == "worker" and resource["k8s.node.name"] == "node-3"
    assert resource["container.id"] == "c0ffee" and resource["k8s.pod.label.app"] == "worker"

    rec, resource = records["plain line worker_id=w-9"]
    assert rec.severity_number == 13
    a = attrs(rec.attributes)
    assert a["worker.id"] == "w-9" and a["machine.id"] == "gpu-2"
    assert "k8s.pod.name" not in resource  # grouped apart from the Kubernetes record


@pytest.mark.parametrize("date_format", ["double", "iso8601", "epoch", "epoch_ms", "java_sql_timestamp", "none"])
def test_json_date_formats(gateway_factory, upstream: Upstream, date_format: str) -> None:
    gw = gateway_factory(dash0_config(upstream))
    record = {"log": "dated"}
    doc = [record if date_format == "none" else dated(record, date_format, key="ts")]
    before = time.time_ns()
    status, _, answer = call(gw.url + "/v1/fluent", json.dumps(doc).encode(), {"Content-Type": "application/json"})
    assert status == 200, answer
    assert upstream.wait_for(lambda u: len(u.log_records()) == 1)
    (rec,) = upstream.log_records()
    assert rec.body.string_value == "dated"
    assert "ts" not in attrs(rec.attributes)
    if date_format == "none":
        assert rec.time_unix_nano == 0
        assert rec.observed_time_unix_nano >= before
    else:
        precision = {"epoch": 10**9, "epoch_ms": 10**6}.get(date_format, 1000)
        assert T0_NS - precision < rec.time_unix_nano <= T0_NS + 1000


def test_configured_path_header_tag_and_text(gateway_factory, upstream: Upstream) -> None:
    gw = gateway_factory(dash0_config(upstream))
    status, _, _ = call(
        gw.url + "/logs/ingest",
        json.dumps([{"date": T0, "log": "via seed uri"}]).encode(),
        {"Content-Type": "application/json", "FLUENT-TAG": "app.seed"},
    )
    assert status == 200
    status, _, _ = call(gw.url + "/v1/fluent/text.tag", b"first line\nsecond line\n", {"Content-Type": "text/plain"})
    assert status == 200
    assert upstream.wait_for(lambda u: len(u.log_records()) == 3)
    records = by_body(upstream)
    assert attrs(records["via seed uri"][0].attributes)["fluent.tag"] == "app.seed"
    assert attrs(records["second line"][0].attributes)["fluent.tag"] == "text.tag"
    assert set(records) == {"via seed uri", "first line", "second line"}


def test_bad_input_table(gateway_factory, upstream: Upstream) -> None:
    gw = gateway_factory(dash0_config(upstream, "[server]\nmax_body_bytes = 65536\n"))
    huge = gzip.compress(json.dumps([{"log": "x" * 100_000}]).encode())
    cases: list[tuple[bytes, dict[str, str], int, str]] = [
        (b'[{"log": ', {"Content-Type": "application/json"}, 400, "invalid JSON"),
        (
            msgpack.packb([int(T0), {"log": "x"}])[:-2],
            {"Content-Type": "application/msgpack"},
            400,
            "truncated msgpack",
        ),
        (b"\x1f\x8bnot gzip", {"Content-Type": "application/json", "Content-Encoding": "gzip"}, 400, "gzip"),
        (b"[]", {"Content-Type": "image/png"}, 415, "image/png"),
        (b"[]", {"Content-Type": "application/json", "Content-Encoding": "compress"}, 415, "compress"),
        (huge, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, 413, "65536"),
        (b"x" * 70_000, {"Content-Type": "text/plain"}, 413, "65536"),
    ]
    for body, headers, want, words in cases:
        status, _, answer = call(gw.url + "/v1/fluent", body, headers)
        assert (status, words in answer.decode()) == (want, True), (headers, answer)
        assert len(answer) < 600  # no echo of the body

    # A record that is not a map is refused alone; the others go through.
    status, _, answer = call(
        gw.url + "/v1/fluent/t",
        b'{"log": "good"}\nnot json at all\n[1]\n',
        {"Content-Type": "application/x-ndjson"},
    )
    assert status == 200
    doc = json.loads(answer)
    assert (doc["accepted"], doc["rejected"]) == (1, 2)
    assert "line 2 is not JSON" in doc["error"]
    assert upstream.wait_for(lambda u: len(u.log_records()) == 1)
    assert upstream.log_records()[0].body.string_value == "good"


def test_tokens_and_full_queue(gateway_factory, upstream: Upstream) -> None:
    from upstream import Reply

    upstream.default = Reply(503, {"Retry-After": "1"})
    gw = gateway_factory(
        dash0_config(upstream, '[storage]\nmax_bytes = 4000\ncompression = "none"\n'),
        env={"TRACKGATE_TOKENS": "s3cret"},
    )
    body = json.dumps([{"log": "x" * 200, "i": i} for i in range(5)]).encode()
    status, headers, _ = call(gw.url + "/v1/fluent", body, {"Content-Type": "application/json"})
    assert status == 401 and "bearer" in headers["www-authenticate"].lower()
    auth = {"Content-Type": "application/json", "Authorization": "Bearer s3cret"}
    statuses = [call(gw.url + "/v1/fluent", body, auth)[:2] for _ in range(8)]
    assert statuses[0][0] == 200
    refused = [h for s, h in statuses if s == 429]
    assert refused and int(refused[0]["retry-after"]) >= 1


FLUENT_BIT = Path(__file__).resolve().parents[2] / "shared" / "peers" / "fluent-bit"


@pytest.mark.skipif(not FLUENT_BIT.exists(), reason=f"no Fluent Bit binary at {FLUENT_BIT} (a fresh clone has none)")
@pytest.mark.parametrize("fmt", ["json", "json_lines", "msgpack"])
def test_real_fluent_bit_http_output(gateway_factory, upstream: Upstream, tmp_path: Path, fmt: str) -> None:
    gw = gateway_factory(dash0_config(upstream))
    log_file = tmp_path / "app.log"
    lines = [json.dumps({"level": "info", "message": f"line {i}", "job_id": f"job-{i}"}) for i in range(20)]
    log_file.write_text("\n".join(lines) + "\n")
    port = gw.url.rsplit(":", 1)[1]
    cmd = [
        str(FLUENT_BIT), "-q", "-f", "1",
        "-i", "tail", "-p", f"path={log_file}", "-p", "read_from_head=true", "-t", "app.log",
        "-o", "http", "-m", "*", "-p", "host=127.0.0.1", "-p", f"port={port}",
        "-p", "uri=/v1/fluent/app.log", "-p", f"format={fmt}", "-p", "compress=gzip",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        assert upstream.wait_for(lambda u: len(u.log_records()) >= 20, timeout=30), gw.log()
    finally:
        proc.terminate()
        proc.wait(10)
    records = by_body(upstream)
    assert sorted(records) == sorted(f"line {i}" for i in range(20))
    assert len(upstream.log_records()) == 20  # each line once
    rec = records["line 7"][0]
    assert rec.severity_number == 9 and rec.time_unix_nano > 0
    a = attrs(rec.attributes)
    assert a["job.id"] == "job-7" and a["fluent.tag"] == "app.log"
