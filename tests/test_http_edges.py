"""The request path's edges over `trackgate serve` (granian's RSGI interface): chunked bodies cut at
the limit, a trickling chunked body cut off, bodies granian cannot read answered 400 with the
reason, repeated headers folded, trailers. (Declared lengths, Content-Length trickles and the
budget are in test_bad_input, test_preauth and test_fuzz_http, which run through serve too.)"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

LIMIT = 64 * 1024
PB = b"Content-Type: application/x-protobuf"
CHUNKED = b"Transfer-Encoding: chunked"
UNREADABLE = b"request body could not be read"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from conftest import Gateway

    gateway = Gateway(tmp_path_factory.mktemp("edges"), f"[server]\nmax_body_bytes = {LIMIT}\nbody_timeout_s = 1.0\n")
    yield gateway
    gateway.stop()


def logs_body(text: str = "hello") -> bytes:
    msg = ExportLogsServiceRequest()
    msg.resource_logs.add().scope_logs.add().log_records.add().body.string_value = text
    return msg.SerializeToString()


def head(*headers: bytes, path: bytes = b"/v1/logs") -> bytes:
    lines = [b"POST " + path + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def exchange(gw: Any, data: bytes, half_close: bool = False) -> bytes:
    """Sends `data` (then, with `half_close`, ends the request side) and reads until the server closes."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # refused before all of it was read
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    out = b""
    try:
        while piece := sock.recv(65536):
            out += piece
    except ConnectionResetError:
        pass
    return out


def status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def test_chunked_body_over_the_limit_gets_413(gw: Any) -> None:
    # Counted as the pieces arrive: 6 x 16 KiB passes the 64 KiB limit at the fifth.
    body = b"".join(chunk(b"\x00" * 16384) for _ in range(6)) + b"0\r\n\r\n"
    answer = exchange(gw, head(PB, CHUNKED) + body)
    assert status(answer) == 413 and str(LIMIT).encode() in answer, answer[:300]


def test_chunked_body_within_the_limit_is_accepted_in_pieces(gw: Any) -> None:
    body = logs_body("x" * 40_000)
    pieces = [body[i : i + 7000] for i in range(0, len(body), 7000)]
    answer = exchange(gw, head(PB, CHUNKED) + b"".join(chunk(p) for p in pieces) + b"0\r\n\r\n")
    assert status(answer) == 200, answer[:300]


def test_trickling_chunked_body_gets_408_and_the_connection_closes(gw: Any) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(head(PB, CHUNKED).replace(b"Connection: close\r\n", b"") + chunk(b"\x0a"))
        started = time.monotonic()
        answer = read_all(sock)  # the server closes after its answer (keep-alive was asked for)
    assert status(answer) == 408, answer[:300]
    assert b"not received within 1s" in answer and b"connection: close" in answer.lower()
    assert time.monotonic() - started < 8


@pytest.mark.parametrize(
    ("data", "half_close"),
    [
        pytest.param(head(PB, CHUNKED) + chunk(b"\x0a\x00") + b"zz\r\n{}\r\n0\r\n\r\n", False, id="bad-chunk-size"),
        pytest.param(head(PB, CHUNKED) + chunk(b"\x0a\x00") + b"20\r\nabc", True, id="chunked-cut-short"),
        pytest.param(head(PB, b"Content-Length: 100") + b"\x0a\x00", True, id="length-cut-short"),
        # A keyless Sentry envelope is read piece by piece before it authenticates.
        pytest.param(head(CHUNKED, path=b"/api/1/envelope/") + chunk(b"{") + b"zz\r\n", False,
                     id="keyless-envelope-bad-chunk"),
    ],
)  # fmt: skip
def test_a_body_granian_cannot_read_gets_400(gw: Any, data: bytes, half_close: bool) -> None:
    answer = exchange(gw, data, half_close)
    assert status(answer) == 400 and UNREADABLE in answer, answer[:300]


def test_repeated_headers_fold_into_one_value(gw: Any) -> None:
    answer = exchange(gw, head(b"Content-Type: application/json", b"content-type: text/csv", b"Content-Length: 0"))
    assert status(answer) == 415, answer[:300]
    assert b"'application/json, text/csv'" in answer, answer[:300]


def test_chunked_body_with_announced_trailers_is_accepted(gw: Any) -> None:
    body = chunk(logs_body()) + b"0\r\nX-Checksum: 1\r\n\r\n"
    answer = exchange(gw, head(PB, CHUNKED, b"Trailer: X-Checksum") + body)
    assert status(answer) == 200, answer[:300]


def test_still_serving(gw: Any) -> None:
    answer = exchange(gw, head(PB, b"Content-Length: %d" % len(logs_body())) + logs_body())
    assert status(answer) == 200, answer[:300]
    log = gw.log()
    assert "unhandled error" not in log and "Traceback" not in log, log[-3000:]
