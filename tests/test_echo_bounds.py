"""Input repeated in an error answer is cut to a short prefix: a 5 MB event_id, item type,
`length`, number or path never comes back whole, and the answer still says what is wrong."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from http_client import call

pytestmark = pytest.mark.slow

KEY = "pubkey123"
EVENT_ID = "9ec79c33ec9942ab8353589fcb2e04dc"
HUGE = "z" * (5 * 1024 * 1024)
DIGITS = "9" * (5 * 1024 * 1024)
SHORT = 1024  # bytes an error answer may take
# Header lines are capped at 64 KiB (413 before parsing): echoes from inside them are tested just under.
LONG = "z" * 60_000
LONG_DIGITS = "9" * 60_000


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Iterator[object]:
    from conftest import Gateway

    gateway = Gateway(tmp_path_factory.mktemp("echo"), f'[receivers.sentry]\npublic_keys = ["{KEY}"]\n')
    yield gateway
    gateway.close()


def sentry_post(gw: object, body: bytes) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/x-sentry-envelope", "X-Sentry-Auth": f"Sentry sentry_key={KEY}"}
    status, _, answer = call(f"{gw.url}/api/42/envelope/", body, headers)  # type: ignore[attr-defined]
    return status, answer


def span_json(start: str) -> bytes:
    return f'{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"startTimeUnixNano":{start}}}]}}]}}]}}'.encode()


SENTRY_CASES = [
    # (id, envelope, words the detail must contain)
    ("event-id", f'{{"event_id":"{LONG}"}}\n'.encode(), ["event_id", "not a uuid", "zzz…"]),
    ("item-type", f'{{}}\n{{"type":"{LONG}","length":99}}\nab\n'.encode(), ["item 0 (zzz", "runs past the end"]),
    ("item-type-and-bad-length", f'{{}}\n{{"type":"{LONG}","length":1}}\nabc\n'.encode(),
     ["item 0 (zzz", "instead of a newline"]),
    ("length-string", f'{{}}\n{{"type":"a","length":"{LONG}"}}\nab\n'.encode(),
     ["length", "not a non-negative integer"]),
    ("length-number", f'{{}}\n{{"type":"a","length":1{LONG_DIGITS}}}\nab\n'.encode(),
     ["item 0", "number out of range"]),
    ("item-header-string", f'{{}}\n"{LONG}"\n'.encode(), ["item header is not a json object"]),
    ("event-payload", f'{{"event_id":"{EVENT_ID}"}}\n{{"type":"event"}}\n"{HUGE[:900_000]}"\n'.encode(),
     ["item 0 (event)", "not a json object"]),
]  # fmt: skip


@pytest.mark.parametrize(("body", "words"), [c[1:] for c in SENTRY_CASES], ids=[c[0] for c in SENTRY_CASES])
def test_sentry_errors_echo_a_short_prefix(gw, body: bytes, words: list[str]) -> None:
    status, answer = sentry_post(gw, body)
    assert len(answer) < SHORT, answer[:SHORT]
    assert status == 400, answer
    detail = json.loads(answer)["detail"].lower()
    for word in words:
        assert word in detail, detail


@pytest.mark.parametrize(
    "body",
    [f'{{"event_id":"{HUGE}"}}\n'.encode(), f'{{}}\n{{"type":"{HUGE}","length":99}}\nab\n'.encode()],
    ids=["envelope-header", "item-header"],
)
def test_header_lines_over_the_cap_are_refused_briefly(gw, body: bytes) -> None:
    status, answer = sentry_post(gw, body)
    assert status == 413 and len(answer) < SHORT, answer[:SHORT]
    assert "header line is longer than the limit of 65536 bytes" in json.loads(answer)["detail"]


def test_store_event_id_is_cut_short(gw) -> None:
    headers = {"Content-Type": "application/json", "X-Sentry-Auth": f"Sentry sentry_key={KEY}"}
    body = json.dumps({"event_id": HUGE[:900_000], "message": "x"}).encode()  # under the 1 MiB event limit
    status, _, answer = call(f"{gw.url}/api/42/store/", body, headers)  # type: ignore[attr-defined]
    assert status == 400 and len(answer) < SHORT, answer[:SHORT]
    detail = json.loads(answer)["detail"]
    assert "event_id" in detail and "not a UUID" in detail and "…" in detail, detail


@pytest.mark.parametrize(
    ("start", "words"),
    [
        pytest.param(DIGITS, ["startTimeUnixNano", "out of range for fixed64", "999…"], id="out-of-range"),
        pytest.param(f'"{DIGITS}"', ["startTimeUnixNano", "out of range for fixed64"], id="out-of-range-string"),
        pytest.param(f"-{DIGITS}", ["startTimeUnixNano", "out of range"], id="negative"),
        pytest.param(f"1.{DIGITS}", ["startTimeUnixNano", "expected an integer"], id="fraction"),
    ],
)
def test_otlp_json_numbers_echo_a_short_prefix(gw, start: str, words: list[str]) -> None:
    status, _, answer = call(f"{gw.url}/v1/traces", span_json(start), {"Content-Type": "application/json"})  # type: ignore[attr-defined]
    assert status == 400 and len(answer) < SHORT, answer[:SHORT]
    message = json.loads(answer)["message"]
    for word in words:
        assert word in message, message


def test_otlp_content_type_and_encoding_echo_a_short_prefix(gw) -> None:
    status, _, answer = call(f"{gw.url}/v1/traces", b"{}", {"Content-Type": "text/" + "x" * 60_000})  # type: ignore[attr-defined]
    assert status == 415 and len(answer) < SHORT and b"text/xxx" in answer, answer[:SHORT]
    status, _, answer = call(  # type: ignore[attr-defined]
        f"{gw.url}/v1/traces", b"{}", {"Content-Type": "application/json", "Content-Encoding": "y" * 60_000}
    )
    assert status == 415 and len(answer) < SHORT and b"Content-Encoding" in answer, answer[:SHORT]


def raw_get(gw: object, path: str) -> tuple[int, bytes]:
    """A GET over a plain socket: urllib would refuse nothing, but quotes the path its own way."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:  # type: ignore[attr-defined]
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_long_404_path_is_cut_short(gw) -> None:
    path = "/nothing-here/" + "p" * 60_000
    status, body = raw_get(gw, path)
    assert status == 404, body[:SHORT]
    assert len(body) < SHORT and body.startswith(b"no route for /nothing-here/ppp") and "…".encode() in body, body
    status, body = raw_get(gw, "/short")
    assert status == 404 and body == b"no route for /short\n", body
