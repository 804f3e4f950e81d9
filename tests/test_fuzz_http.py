"""Hostile input at the HTTP layer: generated bodies, content types and encodings against a real gateway.

Whatever arrives, the answer is 200, 400, 413 or 415 with a readable body, and the gateway keeps
serving. Hypothesis runs derandomized (the same examples every run) and bounded; the Rust decoders
get the long fuzzing (`rust/fuzz_tests.rs`, `fuzz/`).
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import zstandard
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import status_pb2
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

pytestmark = pytest.mark.slow

PB = "application/x-protobuf"
JSON = "application/json"
LIMIT = 1024 * 1024
ALLOWED = {200, 400, 413, 415}
RESPONSES: dict[str, type[Message]] = {
    "/v1/traces": ExportTraceServiceResponse,
    "/v1/logs": ExportLogsServiceResponse,
    "/v1/metrics": ExportMetricsServiceResponse,
}
PATHS = sorted(RESPONSES)
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from conftest import Gateway

    gateway = Gateway(tmp_path_factory.mktemp("fuzz"), f"[server]\nmax_body_bytes = {LIMIT}\n")
    yield gateway
    gateway.stop()


# ---- talking to the gateway ------------------------------------------------------------------


def post(gw: Any, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection (a hostile request must not share one with the next)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def check_answer(path: str, status: int, headers: dict[str, str], body: bytes, sent: str) -> None:
    assert status in ALLOWED, f"{status} for {sent}: {body[:300]!r}"
    media = headers.get("content-type", "")
    if status == 200:
        if media == JSON:
            doc = json.loads(body)
            assert isinstance(doc, dict) and set(doc) <= {"partialSuccess"}, doc
        else:
            assert media == PB, media
            RESPONSES[path]().ParseFromString(body)
        return
    if media == JSON:
        message = json.loads(body)["message"]
    else:
        assert media == PB, media
        st_msg = status_pb2.Status()
        st_msg.ParseFromString(body)
        message = st_msg.message
    assert isinstance(message, str) and message.strip(), f"{status} without a message for {sent}"


def good_traces() -> bytes:
    msg = ExportTraceServiceRequest()
    span = msg.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 8, "ok"
    return msg.SerializeToString()


def assert_serving(gw: Any) -> None:
    assert gw.proc.poll() is None, gw.log()
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    status, _, _ = post(gw, "/v1/traces", good_traces(), {"Content-Type": PB})
    assert status == 200


# ---- generated requests ----------------------------------------------------------------------

ids = st.one_of(st.binary(min_size=16, max_size=16), st.binary(min_size=8, max_size=8), st.binary(max_size=20))
texts = st.text(max_size=24)


@st.composite
def any_values(draw: st.DrawFn, value: AnyValue, depth: int = 0) -> None:
    kind = draw(st.integers(0, 6 if depth < 3 else 4))
    if kind == 0:
        value.string_value = draw(texts)
    elif kind == 1:
        value.int_value = draw(st.integers(-(2**63), 2**63 - 1))
    elif kind == 2:
        value.double_value = draw(st.floats())
    elif kind == 3:
        value.bytes_value = draw(st.binary(max_size=16))
    elif kind == 4:
        value.bool_value = draw(st.booleans())
    elif kind == 5:
        for _ in range(draw(st.integers(0, 3))):
            draw(any_values(value.array_value.values.add(), depth + 1))
    else:
        for _ in range(draw(st.integers(0, 3))):
            kv = value.kvlist_value.values.add()
            kv.key = draw(texts)
            draw(any_values(kv.value, depth + 1))


@st.composite
def requests(draw: st.DrawFn, path: str) -> Message:
    """A valid request for `path`, with random content (ids of any length, odd strings, extremes)."""
    msg: Message
    if path == "/v1/traces":
        msg = ExportTraceServiceRequest()
        for _ in range(draw(st.integers(0, 2))):
            rs = msg.resource_spans.add()
            for _ in range(draw(st.integers(0, 2))):
                kv = rs.resource.attributes.add()
                kv.key = draw(texts)
                draw(any_values(kv.value))
            ss = rs.scope_spans.add()
            ss.scope.name = draw(texts)
            for _ in range(draw(st.integers(0, 3))):
                span = ss.spans.add()
                span.trace_id, span.span_id, span.parent_span_id = draw(ids), draw(ids), draw(ids)
                span.name = draw(texts)
                span.kind = draw(st.integers(-3, 9))
                span.start_time_unix_nano = draw(st.integers(0, 2**64 - 1))
                span.status.code = draw(st.integers(0, 3))
                kv = span.attributes.add()
                kv.key = draw(texts)
                draw(any_values(kv.value))
    elif path == "/v1/logs":
        msg = ExportLogsServiceRequest()
        for _ in range(draw(st.integers(0, 2))):
            sl = msg.resource_logs.add().scope_logs.add()
            for _ in range(draw(st.integers(0, 3))):
                rec = sl.log_records.add()
                rec.severity_number = draw(st.integers(-2, 30))
                rec.trace_id, rec.span_id = draw(ids), draw(ids)
                rec.time_unix_nano = draw(st.integers(0, 2**64 - 1))
                draw(any_values(rec.body))
    else:
        msg = ExportMetricsServiceRequest()
        for _ in range(draw(st.integers(0, 2))):
            sm = msg.resource_metrics.add().scope_metrics.add()
            for _ in range(draw(st.integers(0, 3))):
                metric = sm.metrics.add()
                metric.name = draw(texts)
                kind = draw(st.integers(0, 3))
                if kind == 0:
                    metric.gauge.data_points.add().as_double = draw(st.floats())
                elif kind == 1:
                    metric.sum.data_points.add().as_int = draw(st.integers(-(2**63), 2**63 - 1))
                    metric.sum.aggregation_temporality = draw(st.integers(-1, 5))
                elif kind == 2:
                    point = metric.histogram.data_points.add()
                    point.bucket_counts.extend(draw(st.lists(st.integers(0, 2**64 - 1), max_size=4)))
                    point.explicit_bounds.extend(draw(st.lists(st.floats(), max_size=3)))
                else:
                    point = metric.exponential_histogram.data_points.add()
                    point.scale = draw(st.integers(-(2**31), 2**31 - 1))
                    point.positive.bucket_counts.extend(draw(st.lists(st.integers(0, 2**64 - 1), max_size=4)))
    return msg


@st.composite
def byte_damage(draw: st.DrawFn, data: bytes) -> bytes:
    """A few flips, cuts, insertions and copied runs."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.integers(0, 4))
        at = draw(st.integers(0, len(buf)))
        if op == 0 and buf:
            buf[min(at, len(buf) - 1)] = draw(st.integers(0, 255))
        elif op == 1:
            del buf[at:]
        elif op == 2:
            buf[at:at] = draw(
                st.sampled_from([b"\x00", b"\xff", b"\x0a", b"\x12\xff\xff\xff\xff\x0f", b"{", b'"', b"\\"])
            )
        elif op == 3 and buf:
            start = draw(st.integers(0, len(buf) - 1))
            buf[at:at] = buf[start : start + draw(st.integers(1, 64))]
        elif buf:
            del buf[min(at, len(buf) - 1)]
    return bytes(buf)


def hex_ids(node: Any) -> Any:
    """protobuf's JSON writes bytes as base64; OTLP/JSON writes trace and span ids in hex."""
    if isinstance(node, dict):
        return {
            k: base64.b64decode(v).hex() if k in {"traceId", "spanId", "parentSpanId"} else hex_ids(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [hex_ids(v) for v in node]
    return node


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["NaN", "Infinity", "1e3", "0x10", "", "SEVERITY_NUMBER_ERROR", "zz", "AAECAw"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["stringValue", "intValue", "arrayValue", "values", "key", "value", "traceId", "x"]),
            inner,
            max_size=3,
        )
    ),
    max_leaves=8,
)


def json_slots(node: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """(container, key) of every value inside a JSON document."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        out.append((node, key))
        json_slots(child, out)
    return out


@st.composite
def json_damage(draw: st.DrawFn, doc: Any) -> Any:
    """Replaces a few nodes of a JSON document with values of any type."""
    for _ in range(draw(st.integers(1, 3))):
        slots = json_slots(doc, [])
        if not slots:
            return draw(json_values)
        parent, key = draw(st.sampled_from(slots))
        parent[key] = draw(json_values)
    return doc


def nested(depth: int, shape: str) -> bytes:
    if shape == "array":
        return b"[" * depth + b"]" * depth
    if shape == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    body = b'{"arrayValue":{"values":[' * depth + b'{"stringValue":"x"}' + b"]}}" * depth
    return b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":' + body + b"}]}]}]}"


def compress(body: bytes, encoding: str) -> bytes:
    if encoding in ("gzip", "x-gzip"):
        return gzip.compress(body)
    if encoding == "deflate":
        return zlib.compress(body)
    if encoding == "raw-deflate":
        packer = zlib.compressobj(wbits=-15)
        return packer.compress(body) + packer.flush()
    if encoding == "zstd":
        return zstandard.ZstdCompressor().compress(body)
    return body


content_types = st.one_of(
    st.sampled_from(
        [PB, JSON, "application/protobuf", "application/json; charset=utf-8", "APPLICATION/JSON", " application/json",
         "application/x-protobuf;;;", "text/plain", "", "multipart/form-data; boundary=x", "application/grpc"]
    ),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
)  # fmt: skip
encodings = st.one_of(
    st.none(),
    st.sampled_from(["identity", "gzip", "x-gzip", "deflate", "zstd", "br", "gzip, gzip", "GZIP", "", "compress"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=12),
)


@st.composite
def hostile_requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers): random bytes, damaged OTLP in either format, compressed or not,
    labelled right or wrong, deeply nested JSON."""
    path = draw(st.sampled_from(PATHS))
    kind = draw(st.sampled_from(["bytes", "protobuf", "json", "gzip-random", "nested"]))
    encoding: str | None = None
    if kind == "bytes":
        body, ctype, encoding = draw(st.binary(max_size=2048)), draw(content_types), draw(encodings)
    elif kind == "protobuf":
        body = draw(byte_damage(draw(requests(path)).SerializeToString()))
        ctype = draw(st.sampled_from([PB, "application/protobuf", JSON]))
    elif kind == "json":
        doc = hex_ids(json_format.MessageToDict(draw(requests(path))))
        if draw(st.booleans()):
            doc = draw(json_damage(doc))
        text = json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()
        body = draw(byte_damage(text)) if draw(st.booleans()) else text
        ctype = draw(st.sampled_from([JSON, "application/json; charset=utf-8", PB]))
    elif kind == "gzip-random":
        # Random data, or a bomb that inflates past the limit.
        plain = (
            draw(st.binary(max_size=4096)) if draw(st.booleans()) else bytes(draw(st.sampled_from([LIMIT, 2 * LIMIT])))
        )
        body, ctype, encoding = gzip.compress(plain), draw(st.sampled_from([PB, JSON])), "gzip"
    else:
        depth = draw(st.sampled_from([50, 101, 129, 1000, 10_000]))
        body, ctype = nested(depth, draw(st.sampled_from(["array", "object", "anyvalue"]))), JSON
    if kind in ("protobuf", "json") and draw(st.booleans()):
        packing = draw(st.sampled_from(["gzip", "x-gzip", "deflate", "raw-deflate", "zstd"]))
        body = compress(body, packing)
        # Sometimes labelled as something else, or damaged after compression.
        encoding = "deflate" if packing == "raw-deflate" else packing
        encoding = draw(st.sampled_from([encoding, encoding, encoding, "gzip", "zstd", "identity"]))
        if draw(st.integers(0, 3)) == 0:
            body = draw(byte_damage(body))
    headers = {"Content-Type": ctype} if ctype or draw(st.booleans()) else {}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return path, body, headers


# ---- the properties --------------------------------------------------------------------------


@FUZZ
@given(case=hostile_requests())
def test_any_request_gets_a_4xx_or_200_with_a_body(gw: Any, case: tuple[str, bytes, dict[str, str]]) -> None:
    path, body, headers = case
    status, resp_headers, resp_body = post(gw, path, body, headers)
    event(f"HTTP {status}")
    check_answer(path, status, resp_headers, resp_body, f"{path} {headers} {body[:200]!r}")


@FUZZ
@given(data=st.data())
def test_valid_requests_are_accepted(gw: Any, data: st.DataObject) -> None:
    """Undamaged requests, in either format and any encoding, are 200 (with partial success at most)."""
    path = data.draw(st.sampled_from(PATHS))
    msg = data.draw(requests(path))
    as_json = data.draw(st.booleans())
    body = json.dumps(hex_ids(json_format.MessageToDict(msg))).encode() if as_json else msg.SerializeToString()
    encoding = data.draw(st.sampled_from([None, "identity", "gzip", "deflate", "raw-deflate", "zstd"]))
    headers = {"Content-Type": JSON if as_json else PB}
    if encoding is not None:
        body = compress(body, encoding)
        headers["Content-Encoding"] = "deflate" if encoding == "raw-deflate" else encoding
    status, resp_headers, resp_body = post(gw, path, body, headers)
    event(f"HTTP {status}")
    sent = f"{path} {headers} {msg}"
    if len(body) > LIMIT:
        assert status in (200, 413), sent
    else:
        assert status == 200 or (status == 413 and encoding), f"{status} {resp_body[:300]!r} for {sent}"
    check_answer(path, status, resp_headers, resp_body, sent)
    if status == 200 and not as_json:
        resp = RESPONSES[path]()
        resp.ParseFromString(resp_body)


def test_json_nested_ten_thousand_levels_is_a_fast_400(gw: Any) -> None:
    for shape in ("array", "object", "anyvalue"):
        started = time.monotonic()
        status, headers, body = post(gw, "/v1/logs", nested(10_000, shape), {"Content-Type": JSON})
        assert status == 400, body[:300]
        assert time.monotonic() - started < 10, shape
        check_answer("/v1/logs", status, headers, body, shape)
    assert_serving(gw)


def test_deepest_valid_json_is_accepted(gw: Any) -> None:
    """The most stack a JSON body can take: AnyValue nested to the depth limit, and an unknown value
    nested to its own limit at the bottom. It must decode on the server's threads, not overflow them."""
    levels = (100 - 4) // 2
    leaf = b'{"stringValue":"x","unknown":' + b"[" * 128 + b"]" * 128 + b"}"
    body = b'{"arrayValue":{"values":[' * levels + leaf + b"]}}" * levels
    doc = b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":' + body + b"}]}]}]}"
    status, _, resp = post(gw, "/v1/logs", doc, {"Content-Type": JSON})
    assert status == 200, resp[:300]
    # One level deeper is refused.
    deeper = b'{"arrayValue":{"values":[' + body + b"]}}"
    doc = b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":' + deeper + b"}]}]}]}"
    status, _, resp = post(gw, "/v1/logs", doc, {"Content-Type": JSON})
    assert status == 400 and b"nested deeper" in resp, resp[:300]
    assert_serving(gw)


# ---- raw HTTP: header floods, broken framing, slow clients -----------------------------------


def raw_exchange(gw: Any, data: bytes, half_close: bool = False, timeout: float = 10.0) -> bytes:
    """Sends raw bytes and reads until the server closes. `half_close` ends the request early (a body
    shorter than its Content-Length), which the server reads as the client going away."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # The server may refuse before reading it all.
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
        return b"".join(chunks)


def status_of(answer: bytes) -> int | None:
    """The status of a raw answer; None when the server closed without one."""
    if not answer:
        return None
    line = answer.split(b"\r\n", 1)[0]
    assert line.startswith(b"HTTP/1.1 "), line[:100]
    return int(line.split()[1])


def assert_refused_or_closed(answer: bytes) -> None:
    """A 4xx status, or no answer at all (the server closed the connection)."""
    status = status_of(answer)
    assert status is None or 400 <= status < 500, answer[:300]


def request_head(*headers: bytes, path: bytes = b"/v1/traces") -> bytes:
    head = b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    return head + b"".join(h + b"\r\n" for h in headers)


def test_header_floods(gw: Any) -> None:
    many = [b"X-Fuzz-%d: %d" % (i, i) for i in range(5000)]
    head = request_head(*many, b"Content-Type: application/x-protobuf", b"Content-Length: 0")
    assert_refused_or_closed(raw_exchange(gw, head + b"\r\n"))
    for name, size in ((b"X-Long", 1 << 20), (b"Content-Type", 1 << 20), (b"Content-Encoding", 64 * 1024)):
        head = request_head(name + b": " + b"a" * size, b"Content-Type: application/x-protobuf", b"Content-Length: 0")
        # Refused by the server (431), or read and refused by the gateway (415): never 5xx.
        assert_refused_or_closed(raw_exchange(gw, head + b"\r\n"))
    assert_serving(gw)


JSON_HEAD = (b"Content-Type: application/json",)
CHUNKED = (*JSON_HEAD, b"Transfer-Encoding: chunked")


# Bodies granian cannot read (broken chunked framing, a body cut short) reach the app as a disconnect;
# the app answers 400 so that granian does not answer 500 on its behalf (regressions found here).
@pytest.mark.parametrize(
    ("raw", "half_close"),
    [
        pytest.param(request_head(*CHUNKED) + b"\r\n2\r\n{}\r\n0\r\n\r\n", False, id="chunked-ok"),
        pytest.param(request_head(*CHUNKED) + b"\r\nzzzz\r\n{}\r\n0\r\n\r\n", False, id="bad-chunk-size"),
        pytest.param(request_head(*CHUNKED) + b"\r\nffffffffffffffffff\r\n{}\r\n", False, id="huge-chunk-size"),
        pytest.param(request_head(*CHUNKED) + b"\r\n2;" + b"x" * 100_000 + b"\r\n{}\r\n0\r\n\r\n", False,
                     id="huge-chunk-extension"),
        pytest.param(request_head(*CHUNKED) + b"\r\n2\r\n{}\r\n0\r\n" + b"T: x\r\n" * 5000 + b"\r\n", False,
                     id="trailer-flood"),
        pytest.param(request_head(*JSON_HEAD, b"Content-Length: 10") + b"\r\n{}", True, id="body-cut-short"),
        pytest.param(request_head(*JSON_HEAD, b"Content-Length: -1") + b"\r\n{}", False, id="negative-length"),
        pytest.param(request_head(*JSON_HEAD, b"Content-Length: 1e3") + b"\r\n{}", False, id="float-length"),
        pytest.param(request_head(*JSON_HEAD, b"Content-Length: 2", b"Content-Length: 3") + b"\r\n{}", False,
                     id="two-lengths"),
        pytest.param(request_head(*CHUNKED, b"Content-Length: 2") + b"\r\n2\r\n{}\r\n0\r\n\r\n", False,
                     id="length-and-chunked"),
        pytest.param(request_head(*JSON_HEAD, b"Content-Length: 99999999999999999999") + b"\r\n{}", False,
                     id="huge-length"),
        pytest.param(request_head(b"Bad Header Name: x") + b"\r\n", False, id="bad-header-name"),
        pytest.param(request_head(b"Content-Type: application/json\x00", b"Content-Length: 2") + b"\r\n{}", False,
                     id="nul-in-header"),
        pytest.param(b"POST /v1/traces HTTP/9.9\r\nHost: x\r\n\r\n", False, id="bad-version"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, False, id="tls-hello"),
    ],
)  # fmt: skip
def test_broken_framing(gw: Any, raw: bytes, half_close: bool) -> None:
    answer = raw_exchange(gw, raw, half_close)
    if status_of(answer) == 200:
        # Only where the framing still delimits a body (chunked wins over Content-Length).
        assert b"Transfer-Encoding: chunked" in raw, answer[:300]
    else:
        assert_refused_or_closed(answer)
    assert_serving(gw)


def test_slow_clients_do_not_stall_others(gw: Any) -> None:
    """Slowloris: clients that send a body a byte at a time, or stop half way, hold only their own
    connections; everyone else is served meanwhile, and the slow ones are answered when done."""
    body = good_traces()
    answers: list[bytes] = []
    failed = threading.Event()

    def slow_client(give_up: bool) -> None:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as sock:
            sock.sendall(request_head(b"Content-Type: application/x-protobuf", b"Content-Length: %d" % len(body)))
            sock.sendall(b"\r\n")
            for i, byte in enumerate(body):
                if failed.is_set() or (give_up and i == len(body) // 2):
                    return  # Closes with the body half sent.
                sock.sendall(bytes([byte]))
                time.sleep(0.05)
            answers.append(sock.recv(65536))

    slow = [threading.Thread(target=slow_client, args=(i % 3 == 0,), daemon=True) for i in range(12)]
    for thread in slow:
        thread.start()
    try:
        time.sleep(0.3)  # The slow clients are mid-body.
        for i in range(30):
            status, _, resp = post(gw, PATHS[i % 3], b"", {"Content-Type": PB})
            assert status == 200, resp
        assert_serving(gw)
        assert any(thread.is_alive() for thread in slow), "the slow clients finished too early to test anything"
    except BaseException:
        failed.set()
        raise
    finally:
        for thread in slow:
            thread.join(30)
    assert len(answers) == 8 and all(a.startswith(b"HTTP/1.1 200") for a in answers), answers
    assert_serving(gw)


FLUENT_TYPES = [
    "application/json", "application/x-ndjson", "application/msgpack", "text/plain",
    "application/x-www-form-urlencoded", "", "application/json; charset=utf-8",
]  # fmt: skip


@st.composite
def maybe_encoded(draw: st.DrawFn, body: bytes, headers: dict[str, str], also: tuple[str, ...] = ()) -> bytes:
    """`body`, or compressed with `Content-Encoding` set in `headers`: mostly the encoding used,
    sometimes a wrong one (`gzip`, `br`, or one of `also`)."""
    if not draw(st.booleans()):
        return body
    encoding = draw(st.sampled_from(["gzip", "zstd", "deflate"]))
    headers["Content-Encoding"] = draw(st.sampled_from([encoding, encoding, "gzip", "br", *also]))
    return compress(body, encoding)


def post_json(gw: Any, case: tuple[str, bytes, dict[str, str]]) -> tuple[int, dict[str, str], Any, str]:
    """Posts a generated case; checks the status is an allowed one and the answer JSON. Returns
    (status, headers, decoded body, a description of what was sent)."""
    path, body, headers = case
    status, resp_headers, resp_body = post(gw, path, body, headers)
    event(f"HTTP {status}")
    sent = f"{path} {headers} {body[:200]!r}"
    assert status in ALLOWED, f"{status} for {sent}: {resp_body[:300]!r}"
    assert resp_headers.get("content-type") == JSON, sent
    return status, resp_headers, json.loads(resp_body), sent


@st.composite
def fluent_requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """Fluent Bit `http` output posts (answered by the core's front): records in some framing,
    damaged or not, or random bytes, under any of the content types and encodings it reads."""
    records = draw(
        st.lists(st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=20), st.integers())), max_size=5)
    )
    framing = draw(st.sampled_from(["array", "lines", "bytes", "values"]))
    if framing == "array":
        body = json.dumps(records).encode()
    elif framing == "lines":
        body = b"".join(json.dumps(r).encode() + b"\n" for r in records)
    elif framing == "values":  # JSON that is not records
        body = json.dumps(draw(st.lists(st.one_of(st.integers(), st.text(max_size=5), st.none()), max_size=4))).encode()
    else:
        body = draw(st.binary(max_size=1024))
    body = draw(byte_damage(body)) if draw(st.booleans()) else body
    headers = {"Content-Type": draw(st.sampled_from(FLUENT_TYPES))}
    body = draw(maybe_encoded(body, headers))
    tag = draw(st.text(alphabet="abcxyz.-_", max_size=12))
    return f"/v1/fluent/{tag}" if tag or draw(st.booleans()) else "/v1/fluent", body, headers


@FUZZ
@given(case=fluent_requests())
def test_any_fluent_post_gets_a_json_answer(gw: Any, case: tuple[str, bytes, dict[str, str]]) -> None:
    status, _, doc, sent = post_json(gw, case)
    if status == 200:
        assert set(doc) <= {"accepted", "rejected", "error"} and doc["accepted"] + doc["rejected"] >= 0, doc
    else:
        assert isinstance(doc["error"], str) and doc["error"].strip(), f"{status} without a message for {sent}"


SENTRY_ITEM_TYPES = ["event", "transaction", "attachment", "session", "log", "check_in", "made_up"]
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def sentry_requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """Sentry envelopes (answered by the core's front: the key is in X-Sentry-Auth, and a loopback
    gateway takes any): a header line and items with or without `length`, damaged or not,
    encoded or not; or a bare event for the store endpoint."""
    event_id = draw(st.one_of(st.just("9ec79c33ec9942ab8353589fcb2e04dc"), st.text(max_size=10), st.none()))
    store = draw(st.integers(0, 5)) == 0
    if store:
        doc = draw(st.dictionaries(st.sampled_from(["event_id", "message", "level", "x"]), JSON_VALUES, max_size=4))
        body = json.dumps(doc).encode()
    else:
        lines = [json.dumps({} if event_id is None else {"event_id": event_id}).encode()]
        for _ in range(draw(st.integers(0, 3))):
            ty = draw(st.sampled_from(SENTRY_ITEM_TYPES))
            payload = json.dumps(draw(JSON_VALUES)).encode() if draw(st.booleans()) else draw(st.binary(max_size=64))
            header: dict[str, object] = {"type": ty}
            if draw(st.booleans()):
                header["length"] = draw(st.sampled_from([len(payload), len(payload) + 3, 0]))
            lines += [json.dumps(header).encode(), payload]
        body = b"\n".join(lines) + (b"\n" if draw(st.booleans()) else b"")
    body = draw(byte_damage(body)) if draw(st.booleans()) else body
    headers = {
        "Content-Type": "application/x-sentry-envelope",
        "X-Sentry-Auth": "Sentry sentry_version=7, sentry_key=fuzz, sentry_client=fuzz/1.0",
    }
    body = draw(maybe_encoded(body, headers, also=("UTF-8",)))
    return f"/api/{draw(st.integers(1, 999))}/{'store' if store else 'envelope'}/", body, headers


@FUZZ
@given(case=sentry_requests())
def test_any_sentry_post_gets_sentrys_json_answer(gw: Any, case: tuple[str, bytes, dict[str, str]]) -> None:
    status, resp_headers, doc, sent = post_json(gw, case)
    assert resp_headers.get("server") != "granian", f"relayed to the app: {sent}"
    if status == 200:
        assert set(doc) <= {"id"} and all(isinstance(v, str) and len(v) == 32 for v in doc.values()), doc
    else:
        assert set(doc) == {"detail"} and doc["detail"].strip(), f"{status} without a message for {sent}"


def test_still_serving_after_fuzzing(gw: Any) -> None:
    assert_serving(gw)
    log = gw.log()
    assert "unhandled error" not in log and "Traceback" not in log and "panicked" not in log, log[-3000:]
