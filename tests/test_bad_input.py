"""Every bad request gets a precise status and message, and the gateway keeps serving."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from http_client import call

pytestmark = pytest.mark.slow

PB = "application/x-protobuf"
JSON = "application/json"
LIMIT = 1024 * 1024


def good_traces(n: int = 1, trace_id: bytes = b"\x01" * 16, span_id: bytes = b"\x02" * 8) -> bytes:
    msg = ExportTraceServiceRequest()
    spans = msg.resource_spans.add().scope_spans.add()
    for i in range(n):
        span = spans.spans.add()
        span.trace_id, span.span_id, span.name = trace_id, span_id, f"s{i}"
    return msg.SerializeToString()


def post(url: str, body: bytes, content_type: str | None, encoding: str | None = None, **headers: str):
    hdrs = dict(headers)
    if content_type:
        hdrs["Content-Type"] = content_type
    if encoding:
        hdrs["Content-Encoding"] = encoding
    return call(url, body, hdrs)


def message(status: int, headers: dict[str, str], body: bytes) -> str:
    if "json" in headers.get("content-type", ""):
        return json.loads(body)["message"]
    st = status_pb2.Status()
    st.ParseFromString(body)
    return st.message


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Iterator[object]:
    from conftest import Gateway

    gateway = Gateway(tmp_path_factory.mktemp("bad"), f"[server]\nmax_body_bytes = {LIMIT}\n")
    yield gateway
    gateway.close()


BOMB = gzip.compress(b"\x00" * (20 * LIMIT))

CASES = [
    # (id, path, body, content type, encoding, status, words the message must contain)
    ("truncated-protobuf", "/v1/traces", good_traces()[:-5], PB, None, 400, ["truncated"]),
    ("invalid-json", "/v1/traces", b'{"resourceSpans": [', JSON, None, 400, ["json"]),
    ("json-wrong-type", "/v1/logs", b'{"resourceLogs": {"a": 1}}', JSON, None, 400, ["resourceLogs"]),
    ("json-bad-hex-id", "/v1/traces",
     b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"0102030405060708"}]}]}]}',
     JSON, None, 400, ["traceId"]),
    ("wrong-content-type", "/v1/traces", good_traces(), "text/plain", None, 415, ["text/plain"]),
    ("no-content-type", "/v1/traces", good_traces(), None, None, 415, ["content type"]),
    ("unknown-encoding", "/v1/traces", good_traces(), PB, "lz4", 415, ["lz4"]),
    ("corrupt-gzip", "/v1/traces", b"\x1f\x8b\x08\x00garbage", PB, "gzip", 400, ["gzip"]),
    ("gzip-bomb", "/v1/traces", BOMB, PB, "gzip", 413, [str(LIMIT)]),
    ("raw-over-limit", "/v1/traces", b"\x00" * (LIMIT + 1), PB, None, 413, [str(LIMIT)]),
    ("empty-json", "/v1/metrics", b"", JSON, None, 400, ["empty"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "body", "ctype", "encoding", "status", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_table(gw, path, body, ctype, encoding, status, words) -> None:
    got, headers, payload = post(gw.url + path, body, ctype, encoding)
    assert got == status, payload
    text = message(got, headers, payload).lower()
    for word in words:
        assert word.lower() in text, text
    # The server is unharmed: the next good request is accepted.
    ok, _, _ = post(gw.url + "/v1/traces", good_traces(), PB)
    assert ok == 200


def test_error_body_follows_request_encoding(gw) -> None:
    status, headers, body = post(gw.url + "/v1/traces", b"\x0a\xff", PB)
    assert status == 400 and headers["content-type"] == PB
    st = status_pb2.Status()
    st.ParseFromString(body)
    assert st.code == 3 and "truncated" in st.message
    status, headers, body = post(gw.url + "/v1/traces", b"[1,2", JSON)
    assert status == 400 and headers["content-type"] == JSON
    assert json.loads(body)["code"] == 3


def test_wrong_length_ids_get_partial_success(gw) -> None:
    msg = ExportTraceServiceRequest()
    spans = msg.resource_spans.add().scope_spans.add()
    for i, (tid, sid) in enumerate([(b"\x01" * 16, b"\x02" * 8), (b"\x01" * 8, b"\x02" * 8), (b"\x01" * 16, b"")]):
        span = spans.spans.add()
        span.trace_id, span.span_id, span.name = tid, sid, f"s{i}"
    status, headers, body = post(gw.url + "/v1/traces", msg.SerializeToString(), PB)
    assert status == 200 and headers["content-type"] == PB
    resp = ExportTraceServiceResponse()
    resp.ParseFromString(body)
    assert resp.partial_success.rejected_spans == 2
    assert "trace_id" in resp.partial_success.error_message
    assert "span_id" in resp.partial_success.error_message


def test_partial_success_json(gw) -> None:
    doc = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "x"}, "traceId": "0102"}]}]}]}
    status, _, body = post(gw.url + "/v1/logs", json.dumps(doc).encode(), JSON)
    assert status == 200
    partial = json.loads(body)["partialSuccess"]
    assert partial["rejectedLogRecords"] in ("1", 1)
    assert "trace_id" in partial["errorMessage"]


def test_empty_protobuf_is_an_empty_request(gw) -> None:
    status, _, body = post(gw.url + "/v1/logs", b"", PB)
    assert status == 200 and body == b""


def test_unknown_route_and_method(gw) -> None:
    assert post(gw.url + "/v1/profiles", good_traces(), PB)[0] == 404
    req = urllib.request.Request(gw.url + "/v1/traces", method="GET")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 405


def test_bearer_tokens(gateway_factory) -> None:
    gw = gateway_factory('[server]\ntokens = ["s3cret-token"]\n')
    status, headers, body = post(gw.url + "/v1/traces", good_traces(), PB)
    assert status == 401 and "bearer" in message(status, headers, body)
    assert post(gw.url + "/v1/traces", good_traces(), PB, Authorization="Bearer wrong")[0] == 401
    assert post(gw.url + "/v1/traces", good_traces(), PB, Authorization="Bearer s3cret-token")[0] == 200
    assert "s3cret-token" not in gw.log()


def test_logs_accept_records_without_trace(gw) -> None:
    msg = ExportLogsServiceRequest()
    msg.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "plain"
    assert post(gw.url + "/v1/logs", msg.SerializeToString(), PB)[0] == 200


def test_trickling_body_is_cut_off_with_408(gateway_factory) -> None:
    """Slowloris: a body that does not arrive within server.body_timeout_s gets 408, and the
    gateway keeps serving others meanwhile."""
    import socket
    import time

    gw = gateway_factory("[server]\nbody_timeout_s = 1.0\n")
    body = good_traces()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        head = (
            f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: {PB}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        sock.sendall(head + body[:5])
        started = time.monotonic()
        assert post(gw.url + "/v1/traces", body, PB)[0] == 200  # others are served meanwhile
        answer = sock.recv(65536)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"not received within 1s" in answer
    assert waited < 5
