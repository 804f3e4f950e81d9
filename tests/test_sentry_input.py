"""Malformed Sentry envelopes and auth failures each get a precise status and Sentry-style
`{"detail": ...}` message, every auth form and encoding the SDKs use is accepted, and the gateway
keeps serving."""

from __future__ import annotations

import gzip
import json
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Iterator

import brotli
import pytest
import zstandard

from http_client import call
from sentry_upstream import parse_envelope

pytestmark = pytest.mark.slow

KEY = "pubkey123"
PROJECT = "42"
EVENT_ID = "9ec79c33ec9942ab8353589fcb2e04dc"
AUTH = f"Sentry sentry_key={KEY}, sentry_version=7, sentry_client=test/1.0"
MIB = 1024 * 1024


def envelope(header: dict[str, object], *items: tuple[str, bytes], sized: bool = True) -> bytes:
    out = [json.dumps(header).encode()]
    for ty, payload in items:
        out += [json.dumps({"type": ty, **({"length": len(payload)} if sized else {})}).encode(), payload]
    return b"\n".join(out) + b"\n"


def event(event_id: str = EVENT_ID, **fields: object) -> bytes:
    return json.dumps({"event_id": event_id, "message": "boom", **fields}).encode()


GOOD = envelope({"event_id": EVENT_ID}, ("event", event()))


def post(
    url: str, body: bytes, encoding: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    hdrs = {"Content-Type": "application/x-sentry-envelope", **(headers or {})}
    if encoding:
        hdrs["Content-Encoding"] = encoding
    return call(url, body, hdrs)


@pytest.fixture(scope="module")
def gw(tmp_path_factory) -> Iterator[object]:
    from conftest import Gateway

    gateway = Gateway(tmp_path_factory.mktemp("sentry-input"), f'[receivers.sentry]\npublic_keys = ["{KEY}"]\n')
    yield gateway
    gateway.close()


def url(gw: object, kind: str = "envelope", query: str = "") -> str:
    return f"{gw.url}/api/{PROJECT}/{kind}/{query}"  # type: ignore[attr-defined]


A = {"X-Sentry-Auth": AUTH}
NO_ID = envelope({}, ("event", event()))
BIG_EVENT = envelope({"event_id": EVENT_ID}, ("event", event(padding="x" * MIB)))

BAD = [
    # (id, body, encoding, headers, status, words the detail must contain)
    ("bad-json-header", b'{"event_id": oops}\n' + GOOD.split(b"\n", 1)[1], None, A, 400, ["envelope header"]),
    ("header-not-object", b"[1, 2]\n", None, A, 400, ["envelope header"]),
    ("length-past-end", b'{"event_id":"%s"}\n{"type":"event","length":500}\n{"a":1}\n' % EVENT_ID.encode(),
     None, A, 400, ["runs past the end"]),
    ("no-newline-after-sized-payload", b'{}\n{"type":"attachment","length":3}\nabcX\n', None, A, 400,
     ["instead of a newline"]),
    ("item-header-not-object", b'{}\n["event"]\n{}\n', None, A, 400, ["item 0", "item header"]),
    ("item-header-without-type", b'{}\n{"length":2}\n{}\n', None, A, 400, ["no type"]),
    ("event-without-event-id", NO_ID, None, A, 400, ["event_id"]),
    ("event-payload-not-json", envelope({"event_id": EVENT_ID}, ("event", b"not json")), None, A, 400, ["json"]),
    ("two-sent-at", b'{"sent_at":"2024-05-01T12:00:00Z","sent_at":"2024-05-01T12:00:01Z"}\n', None, A, 400,
     ["sent_at"]),
    ("empty-body", b"", None, A, 400, ["empty"]),
    ("event-over-1mib", BIG_EVENT, None, A, 413, ["event", str(MIB)]),
    ("event-over-1mib-gzip", gzip.compress(BIG_EVENT), "gzip", A, 413, [str(MIB)]),
    ("unknown-encoding", GOOD, "lz4", A, 415, ["lz4"]),
    ("corrupt-gzip", b"\x1f\x8b\x08\x00garbage", "gzip", A, 400, ["gzip"]),
    ("unknown-key-header", GOOD, None, {"X-Sentry-Auth": "Sentry sentry_key=nope, sentry_version=7"}, 401,
     ["sentry_key"]),
    ("unknown-key-authorization", GOOD, None, {"Authorization": "Sentry sentry_key=nope"}, 401, ["sentry_key"]),
    ("unknown-key-dsn", envelope({"event_id": EVENT_ID, "dsn": "http://nope@127.0.0.1/42"}, ("event", event())),
     None, {}, 401, ["invalid or unknown sentry_key"]),
    ("dsn-not-a-dsn", envelope({"event_id": EVENT_ID, "dsn": "nope"}, ("event", event())), None, {}, 401, ["dsn"]),
    ("no-auth", GOOD, None, {}, 401, ["authentication"]),
]  # fmt: skip


def detail(headers: dict[str, str], body: bytes) -> str:
    assert headers["content-type"] == "application/json", (headers, body)
    doc = json.loads(body)
    assert set(doc) == {"detail"}, doc  # Sentry's error shape
    return str(doc["detail"])


def assert_still_serving(gw: object) -> None:
    status, _, body = post(url(gw), GOOD, headers=A)
    assert status == 200 and json.loads(body) == {"id": EVENT_ID}


@pytest.mark.parametrize(
    ("body", "encoding", "headers", "status", "words"), [c[1:] for c in BAD], ids=[c[0] for c in BAD]
)
def test_bad_envelopes(gw, body, encoding, headers, status, words) -> None:
    got, resp_headers, payload = post(url(gw), body, encoding, headers)
    assert got == status, payload
    text = detail(resp_headers, payload).lower()
    for word in words:
        assert word.lower() in text, text
    assert "invalid envelope: invalid" not in text, text  # one prefix, not two
    assert_still_serving(gw)


def test_unknown_key_in_query(gw) -> None:
    status, headers, body = post(url(gw, query="?sentry_key=nope&sentry_version=7"), GOOD)
    assert status == 401 and "sentry_key" in detail(headers, body)


# Each accepted request: (id, url suffix, body, encoding, headers).
DSN_HEADER = envelope({"event_id": EVENT_ID, "dsn": f"http://{KEY}@127.0.0.1:4318/{PROJECT}"}, ("event", event()))
GOOD_CASES = [
    ("x-sentry-auth", "", GOOD, None, A),
    ("authorization-sentry", "", GOOD, None, {"Authorization": AUTH}),
    ("query-sentry-key", f"?sentry_key={KEY}&sentry_version=7", GOOD, None, {}),
    ("envelope-dsn", "", DSN_HEADER, None, {}),
    ("encoding-utf-8", "", GOOD, "UTF-8", A),
    ("gzip", "", gzip.compress(GOOD), "gzip", A),
    ("x-gzip", "", gzip.compress(GOOD), "x-gzip", A),
    ("deflate", "", zlib.compress(GOOD), "deflate", A),
    ("br", "", brotli.compress(GOOD, quality=4), "br", A),
    ("zstd", "", zstandard.ZstdCompressor().compress(GOOD), "zstd", A),
    ("unsized-items", "", envelope({"event_id": EVENT_ID}, ("event", event()), sized=False), None, A),
    ("no-final-newline", "", GOOD.rstrip(b"\n"), None, A),
]  # fmt: skip


@pytest.mark.parametrize(
    ("suffix", "body", "encoding", "headers"), [c[1:] for c in GOOD_CASES], ids=[c[0] for c in GOOD_CASES]
)
def test_accepted(gw, suffix, body, encoding, headers) -> None:
    status, resp_headers, payload = post(url(gw, query=suffix), body, encoding, headers)
    assert status == 200, payload
    assert resp_headers["content-type"] == "application/json"
    assert json.loads(payload) == {"id": EVENT_ID}


def test_envelope_without_event_answers_empty_object(gw) -> None:
    log = json.dumps({"items": [{"timestamp": 1714564800.0, "level": "info", "body": "hello"}]}).encode()
    status, _, payload = post(url(gw), envelope({}, ("log", log)), headers=A)
    assert status == 200 and json.loads(payload) == {}


def test_store_endpoint(gw) -> None:
    event_id = uuid.uuid4().hex
    status, headers, body = post(url(gw, "store"), event(event_id), headers={**A, "Content-Type": "application/json"})
    assert status == 200 and json.loads(body) == {"id": event_id}
    # Without an event_id the gateway makes one.
    status, _, body = post(url(gw, "store"), json.dumps({"message": "no id"}).encode(), headers=A)
    new_id = json.loads(body)["id"]
    assert status == 200 and len(new_id) == 32 and new_id != event_id
    status, headers, body = post(url(gw, "store"), b"{not json", headers=A)
    text = detail(headers, body)
    assert status == 400 and text.startswith("invalid store request:"), text


def test_wrong_method_and_route(gw) -> None:
    req = urllib.request.Request(url(gw), method="GET")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5)
    assert err.value.code == 405
    assert post(f"{gw.url}/api/not-a-number/envelope/", GOOD, headers=A)[0] == 404


def test_accepted_envelopes_are_written_as_received(gw) -> None:
    """What was accepted above ends up in the embedded sink, parseable, with the event scrubbed."""
    event_id = uuid.uuid4().hex
    body = envelope({"event_id": event_id}, ("event", event(event_id, extra={"db_password": "pw123"})))
    assert post(url(gw), body, headers=A)[0] == 200
    sink = gw.tmp / "trackgate-data" / "out" / "sentry"
    deadline = time.monotonic() + 10
    while not (found := list(sink.glob(f"*{event_id}.envelope"))) and time.monotonic() < deadline:
        time.sleep(0.05)  # polls the sink directory; there is no stand-in to wait on
    (path,) = found
    env = parse_envelope(path.read_bytes())
    (item,) = env.of_type("event")
    assert item.json()["extra"]["db_password"] == "[Filtered]"
    assert_still_serving(gw)
