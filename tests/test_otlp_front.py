"""The OTLP/HTTP front (rust/net/otlp_http.rs): `trackgate serve` answers OTLP, Fluent and events
posts in the core and hands every other request to the app on granian behind it.

The same requests go to a gateway with the front and to one without it (`server.otlp_front =
false`); each answer must match in status, content type, Retry-After and body. Granian marks its
own answers with `server: granian`, which tells who answered."""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from conftest import Gateway
from sentry_upstream import envelope

LIMIT = 64 * 1024
TOKEN = "front-token"
SENTRY_KEY = "sentrykey"
CONFIG = f"""
[server]
max_body_bytes = {LIMIT}
body_timeout_s = 0.5
tokens = ["{TOKEN}"]
otlp_front = {{front}}

[storage]
dir = "{{dir}}"

[receivers.fluent]
http_paths = ["/logs/ingest", "/v1/logs"]

[receivers.sentry]
public_keys = ["{SENTRY_KEY}"]
max_event_bytes = 2048
"""


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Gateway]]:
    gateways = []
    for name, front in (("front", "true"), ("app", "false")):
        tmp = tmp_path_factory.mktemp(name)
        gateways.append(Gateway(tmp, CONFIG.format(front=front, dir=tmp / "data"), workers=1))
    yield gateways[0], gateways[1]
    for gw in gateways:
        gw.stop()


def logs_body(text: str = "hello", count: int = 1) -> bytes:
    msg = ExportLogsServiceRequest()
    records = msg.resource_logs.add().scope_logs.add()
    for i in range(count):
        records.log_records.add().body.string_value = f"{text}-{i}"
    return msg.SerializeToString()


def request(
    body: bytes,
    *headers: str,
    path: str = "/v1/logs",
    method: str = "POST",
    token: str | None = TOKEN,
    length: int | None = None,
    keep_alive: bool = False,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines.append(f"Content-Length: {len(body) if length is None else length}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def key(self) -> tuple[int, str | None, str | None, str | None, bytes]:
        """What must match between the front and the app."""
        h = self.headers
        return self.status, h.get("content-type"), h.get("retry-after"), h.get("www-authenticate"), self.body

    @property
    def by_app(self) -> bool:
        return self.headers.get("server") == "granian"


def read_answer(sock: socket.socket, buf: bytearray) -> Answer:
    """One response from `sock` (Content-Length framed), leaving what follows in `buf`."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before a response head: {bytes(buf)!r}")
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            break
        rest += data
    buf[:] = rest[length:]
    return Answer(int(status_line.split()[1]), headers, rest[:length])


def exchange(gw: Gateway, data: bytes) -> Answer:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(data)
        return read_answer(sock, bytearray())


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


PARTIAL = json.dumps(
    {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "abcd", "body": {"stringValue": "x"}}, {}]}]}]}
).encode()
TRACES_BAD_SPAN = json.dumps(
    {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "0" * 31 + "1", "spanId": "00", "name": "s"}]}]}]}
).encode()
PB, JS = "Content-Type: application/x-protobuf", "Content-Type: application/json"
CASES: dict[str, bytes] = {
    "protobuf logs": request(logs_body(), PB),
    "protobuf with parameters": request(logs_body(), "Content-Type: application/x-protobuf; proto=x"),
    "json logs": request(b'{"resourceLogs":[]}', JS),
    "empty body": request(b"", PB),
    "gzip": request(gzip.compress(logs_body(count=50)), PB, "Content-Encoding: gzip"),
    "partial success": request(PARTIAL, JS),
    "partial success, traces": request(TRACES_BAD_SPAN, JS, path="/v1/traces"),
    "bad protobuf": request(b"\xff\xff\xff", PB),
    "bad json": request(b'{"resourceLogs": [', JS),
    "bad json metrics": request(b"[]", JS, path="/v1/metrics"),
    "unknown encoding": request(logs_body(), PB, "Content-Encoding: compress"),
    "gzip over the limit inflated": request(gzip.compress(b"\0" * (LIMIT * 4)), PB, "Content-Encoding: gzip"),
    # Left to the app by the front:
    "declared over the limit": request(b"", PB, length=LIMIT + 1),
    "unknown content type": request(b"x", "Content-Type: text/plain"),
    "no token": request(logs_body(), PB, token=None),
    "wrong token": request(logs_body(), PB, token="nope"),
    "GET": request(b"", method="GET"),
    "unknown path": request(logs_body(), PB, path="/v1/logz"),
}
ND, FLUENT = "Content-Type: application/x-ndjson", "/v1/fluent/app.web"
FLUENT_CASES: dict[str, bytes] = {
    "fluent json_lines": request(b'{"log":"a"}\n{"log":"b"}\n', ND, path=FLUENT),
    "fluent json, tag header": request(b'[{"log":"a"}]', JS, "FLUENT-TAG: from.header", path="/v1/fluent"),
    "fluent configured path": request(b'{"log":"x"}', JS, path="/logs/ingest"),
    "fluent no content type": request(b'{"log":"x"}', path="/v1/fluent/t"),
    "fluent text": request(b"one\ntwo\n", "Content-Type: text/plain", path=FLUENT),
    "fluent gzip": request(gzip.compress(b'{"log":"z"}\n' * 50), ND, "Content-Encoding: gzip", path=FLUENT),
    "fluent partial": request(b'[{"log":"a"}, 5, "x"]', JS, path=FLUENT),
    "fluent bad json": request(b'{"log": ', JS, path=FLUENT),
    "fluent bad json, not ASCII": request('{"log": "é" ]'.encode(), JS, path=FLUENT),
    "fluent over the limit inflated": request(
        gzip.compress(b" " * LIMIT * 4), ND, "Content-Encoding: gzip", path=FLUENT
    ),
    "fluent unknown encoding": request(b"{}", JS, "Content-Encoding: compress", path=FLUENT),
    # Left to the app by the front:
    "fluent unknown content type": request(b"x", "Content-Type: image/png", path=FLUENT),
    "fluent escaped tag": request(b"{}", JS, path="/v1/fluent/a%20b"),
    "fluent tag too long": request(b"{}", JS, path="/v1/fluent/" + "t" * 300),
    "fluent no token": request(b"{}", JS, path=FLUENT, token=None),
    "fluent GET": request(b"", method="GET", path=FLUENT),
    "fluent fragment in the path": request(b"{}", JS, path="/v1/fluent/a#b"),
}
FLUENT_BY_APP = {
    "fluent unknown content type", "fluent escaped tag", "fluent tag too long", "fluent no token", "fluent GET",
    "fluent fragment in the path",
}  # fmt: skip
CASES.update(FLUENT_CASES)


def event(i: int, **extra: object) -> dict[str, object]:
    """An event with its id given (a generated one differs between the two gateways)."""
    return {"event_type": "job_started", "event_id": f"ev-{i}", "job_id": f"j-{i}", **extra}


EV = "/v1/events"
NDJSON_EVENTS = b"".join(json.dumps(event(i)).encode() + b"\n" for i in range(20))
EVENTS_CASES: dict[str, bytes] = {
    "events one": request(json.dumps(event(1)).encode(), JS, path=EV),
    "events array": request(json.dumps([event(1), event(2, data={"k": "v"})]).encode(), JS, path=EV),
    "events ndjson": request(NDJSON_EVENTS, ND, path=EV),
    "events no content type": request(json.dumps(event(3)).encode(), path=EV),
    "events text/plain, parameters": request(NDJSON_EVENTS, "Content-Type: text/plain; charset=utf-8", path=EV),
    "events gzip": request(gzip.compress(NDJSON_EVENTS), ND, "Content-Encoding: gzip", path=EV),
    "events partial": request(
        json.dumps([event(1), 5, {"event_type": ""}, event(2, event_id='é\u0001\b\f\u2028"q')]).encode(), JS, path=EV
    ),
    "events all refused": request(b'[5, {"event_type": "x y"}]', JS, path=EV),
    "events empty array": request(b"[]", JS, path=EV),
    "events empty body": request(b"", JS, path=EV),
    "events bad json": request(b'{"event_type": ', JS, path=EV),
    "events over the limit inflated": request(gzip.compress(b" " * LIMIT * 4), JS, "Content-Encoding: gzip", path=EV),
    "events unknown encoding": request(b"{}", JS, "Content-Encoding: compress", path=EV),
    # Their log records outgrow the body limit: still accepted.
    "events outgrowing the limit as records": request(
        b"".join(b'{"event_type":"job_started","event_id":"e%d"}\n' % i for i in range(1300)), ND, path=EV
    ),
    # Left to the app by the front:
    "events unknown content type": request(b"{}", PB, path=EV),
    "events no token": request(json.dumps(event(1)).encode(), JS, path=EV, token=None),
    "events GET": request(b"", method="GET", path=EV),
    "events declared over the limit": request(b"", JS, path=EV, length=LIMIT + 1),
    "events content type not ASCII": request(json.dumps(event(1)).encode(), JS + "\u00a0", path=EV),
}
EVENTS_BY_APP = {
    "events unknown content type", "events no token", "events GET", "events declared over the limit",
    "events content type not ASCII",
}  # fmt: skip
CASES.update(EVENTS_CASES)


EVENT_ID = "9ec79c33ec9942ab8353589fcb2e04dc"
ERROR = envelope(
    {"event_id": EVENT_ID, "sent_at": "2026-11-30T08:00:00Z"},
    ("event", {"event_id": EVENT_ID, "level": "error", "message": "boom", "extra": {"password": "hunter2"}}),
)
TRANSACTION = envelope(
    {"event_id": "a" * 32},
    (
        "transaction",
        {
            "event_id": "a" * 32, "type": "transaction", "transaction": "job.run", "start_timestamp": 1714564800.0,
            "timestamp": 1714564801.0, "spans": [],
            "contexts": {"trace": {"trace_id": "b" * 32, "span_id": "c" * 16}},
        },
    ),
)  # fmt: skip
SESSION = envelope({}, ("session", {"sid": "d" * 32, "status": "ok", "started": "2026-11-30T08:00:00Z"}))
SENTRY_AUTH = f"X-Sentry-Auth: Sentry sentry_version=7, sentry_key={SENTRY_KEY}, sentry_client=test/1.0"
SENTRY_PATH, SENTRY_TYPE = "/api/42/envelope/", "Content-Type: application/x-sentry-envelope"


def sentry(body: bytes, *headers: str, path: str = SENTRY_PATH, auth: str | None = SENTRY_AUTH) -> bytes:
    return request(body, SENTRY_TYPE, *headers, *([auth] if auth else []), path=path, token=None)


STORE_EVENT = json.dumps({"event_id": "e" * 32, "message": "stored", "level": "error"}).encode()
SENTRY_CASES: dict[str, bytes] = {
    "sentry envelope": sentry(ERROR),
    "sentry Authorization header": sentry(ERROR, auth=f"Authorization: sentry sentry_key = {SENTRY_KEY}, x=1"),
    "sentry key in the query": sentry(ERROR, path=f"{SENTRY_PATH}?sentry_version=7&sentry_key={SENTRY_KEY}", auth=None),
    "sentry no trailing slash": sentry(ERROR, path="/api/42/envelope"),
    "sentry with a bearer token too": sentry(ERROR, f"Authorization: Bearer {TOKEN}"),
    "sentry gzip": sentry(gzip.compress(ERROR), "Content-Encoding: gzip"),
    "sentry UTF-8 is no encoding": sentry(ERROR, "Content-Encoding:  UTF-8"),
    "sentry transaction": sentry(TRANSACTION),
    "sentry no event id": sentry(SESSION),
    "sentry store": sentry(STORE_EVENT, path="/api/42/store/"),
    "sentry bad envelope": sentry(b'{"event_id": "x"}\n{"type": "event", "length": 99}\n{}'),
    "sentry not JSON": sentry(b"\xff\xfe"),
    "sentry empty body": sentry(b""),
    "sentry bad store event": sentry(b"[1, 2]", path="/api/42/store/"),
    "sentry event over its limit": sentry(
        envelope({"event_id": EVENT_ID}, ("event", {"event_id": EVENT_ID, "message": "x" * 4096}))
    ),
    "sentry over the limit inflated": sentry(gzip.compress(b" " * LIMIT * 4), "Content-Encoding: gzip"),
    "sentry unknown encoding": sentry(ERROR, "Content-Encoding: compress"),
    # Left to the app by the front:
    "sentry unknown key": sentry(ERROR, auth="X-Sentry-Auth: Sentry sentry_key=nope"),
    "sentry no key": sentry(ERROR, auth=None),
    "sentry no key, dsn in the envelope": sentry(
        envelope({"event_id": EVENT_ID, "dsn": f"http://{SENTRY_KEY}@gateway/42"}, ("event", {"event_id": EVENT_ID})),
        auth=None,
    ),
    "sentry store without a key": sentry(STORE_EVENT, path="/api/42/store/", auth=None),
    "sentry escaped key in the query": sentry(ERROR, path=f"{SENTRY_PATH}?sentry_key=sentry%6Bey", auth=None),
    "sentry auth header twice": sentry(ERROR, SENTRY_AUTH),
    "sentry GET": request(b"", SENTRY_AUTH, method="GET", path=SENTRY_PATH, token=None),
    "sentry declared over the limit": request(b"", SENTRY_AUTH, path=SENTRY_PATH, token=None, length=LIMIT + 1),
}
SENTRY_BY_APP = {
    "sentry unknown key", "sentry no key", "sentry no key, dsn in the envelope", "sentry store without a key",
    "sentry escaped key in the query", "sentry auth header twice", "sentry GET", "sentry declared over the limit",
}  # fmt: skip
CASES.update(SENTRY_CASES)
ANSWERED_BY_FRONT = {
    "protobuf logs", "protobuf with parameters", "json logs", "empty body", "gzip", "partial success",
    "partial success, traces", "bad protobuf", "bad json", "bad json metrics", "unknown encoding",
    "gzip over the limit inflated",
    *FLUENT_CASES.keys() - FLUENT_BY_APP,
    *EVENTS_CASES.keys() - EVENTS_BY_APP,
    *SENTRY_CASES.keys() - SENTRY_BY_APP,
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_the_front_answers_as_the_app_does(pair: tuple[Gateway, Gateway], case: str) -> None:
    front, app = pair
    got, want = exchange(front, CASES[case]), exchange(app, CASES[case])
    assert got.key() == want.key()
    assert got.by_app == (case not in ANSWERED_BY_FRONT), got.headers
    assert want.by_app


@pytest.mark.parametrize("path", ["/v1/logs?a<b", '/v1/fluent/x?q="y"'])
def test_targets_the_apps_http_parser_refuses_are_left_to_it(pair: tuple[Gateway, Gateway], path: str) -> None:
    """Granian's parser answers these itself (400, no `server` header): so must the front."""
    front, app = pair
    data = request(b"{}", JS, path=path)
    got, want = exchange(front, data), exchange(app, data)
    assert got.key() == want.key()
    assert got.status == 400


@pytest.mark.parametrize("headers", [(f"{SENTRY_AUTH}\x0c",), (SENTRY_AUTH, "X-Note: a\x01b")])
def test_heads_the_apps_http_parser_refuses_are_left_to_it(
    pair: tuple[Gateway, Gateway], headers: tuple[str, ...]
) -> None:
    """A control character in a header value: granian's parser refuses the request (400), so the
    front must not answer it (it would have read the Sentry key with the form feed trimmed off)."""
    front, app = pair
    data = request(ERROR, SENTRY_TYPE, *headers, path=SENTRY_PATH, token=None)
    got, want = exchange(front, data), exchange(app, data)
    assert got.key() == want.key()
    assert got.status == 400


def test_a_slow_body_gets_the_apps_408_and_the_connection_closes(pair: tuple[Gateway, Gateway]) -> None:
    answers = []
    for gw in pair:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(request(b"", PB, length=100, keep_alive=True) + b"x" * 10)
            answer = read_answer(sock, bytearray())
            assert closed(sock)
        answers.append(answer)
    front, app = answers
    assert front.status == 408 and not front.by_app
    assert front.key() == app.key()
    assert b"request body not received within 0.5s" in front.body


def test_keep_alive_requests_then_one_for_the_app_on_the_same_connection(pair: tuple[Gateway, Gateway]) -> None:
    front, _ = pair
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
        buf = bytearray()
        for i in range(3):
            sock.sendall(request(logs_body(f"keep-{i}"), PB, keep_alive=True))
            answer = read_answer(sock, buf)
            assert (answer.status, answer.by_app, answer.headers.get("connection")) == (200, False, None)
        # Two requests in one write: both answered, in order.
        sock.sendall(request(logs_body("p1"), PB, keep_alive=True) + request(b"[", JS, keep_alive=True))
        assert [read_answer(sock, buf).status for _ in range(2)] == [200, 400]
        # The next request is the app's: the rest of the connection goes to it, kept alive, so
        # an OTLP post after it is the app's to answer too (answers keep their order).
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_answer(sock, buf)
        assert (answer.status, answer.body, answer.by_app) == (200, b"ok\n", True)
        assert answer.headers.get("connection") != "close"
        sock.sendall(request(logs_body("after"), PB, keep_alive=True) + request(b"[", JS, keep_alive=True))
        answers = [read_answer(sock, buf) for _ in range(2)]
        assert [(a.status, a.by_app) for a in answers] == [(200, True), (400, True)]
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_answer(sock, buf).status == 200
        assert closed(sock)


@pytest.mark.parametrize("framing", ["Transfer-Encoding: chunked", "Expect: 100-continue"])
def test_chunked_and_expect_bodies_are_served_by_the_app(pair: tuple[Gateway, Gateway], framing: str) -> None:
    front, _ = pair
    body = logs_body("framed")
    with socket.create_connection(("127.0.0.1", front.port), timeout=10) as sock:
        if framing.startswith("Transfer"):
            head = f"POST /v1/logs HTTP/1.1\r\nHost: x\r\n{PB}\r\nAuthorization: Bearer {TOKEN}\r\n{framing}\r\n\r\n"
            sock.sendall(head.encode() + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
            answer = read_answer(sock, bytearray())
        else:
            sock.sendall(request(b"", PB, framing, length=len(body)))
            buf = bytearray()
            interim = read_answer(sock, buf)
            assert interim.status == 100
            sock.sendall(body)
            answer = read_answer(sock, buf)
    assert (answer.status, answer.by_app) == (200, True)


def scrape(gw: Gateway, names: tuple[str, ...]) -> list[float]:
    """The sum of each series of /metrics that starts with one of `names`, in order."""
    lines = exchange(gw, request(b"", method="GET", path="/metrics")).body.decode().splitlines()
    return [sum(float(line.rpartition(" ")[2]) for line in lines if line.startswith(name)) for name in names]


def test_the_fronts_requests_are_counted_in_metrics(pair: tuple[Gateway, Gateway]) -> None:
    front, _ = pair
    names = (
        'trackgate_http_requests_total{route="/v1/logs",code="200"}',
        'trackgate_http_request_duration_seconds_count{route="/v1/logs"}',
        "trackgate_http_relayed_total",
    )
    before = scrape(front, names)
    for _ in range(5):
        assert exchange(front, CASES["protobuf logs"]).status == 200
    after = scrape(front, names)
    assert after[0] - before[0] == 5
    assert after[1] - before[1] == 5
    assert after[2] - before[2] == 1  # the second scrape


def test_fluent_posts_are_counted_under_the_apps_route_labels(pair: tuple[Gateway, Gateway]) -> None:
    front, _ = pair
    series = {
        "/v1/fluent/:tag": ("fluent json_lines", 3),
        "/v1/fluent": ("fluent json, tag header", 2),
        "/logs/ingest": ("fluent configured path", 1),
    }

    def scrape() -> dict[str, float]:
        lines = exchange(front, request(b"", method="GET", path="/metrics")).body.decode().splitlines()
        return {
            route: sum(
                float(line.rpartition(" ")[2])
                for line in lines
                if line.startswith(f'trackgate_http_requests_total{{route="{route}",code="200"}}')
            )
            for route in series
        }

    before = scrape()
    for case, times in series.values():
        for _ in range(times):
            assert exchange(front, CASES[case]).status == 200
    after = scrape()
    assert {route: after[route] - before[route] for route in series} == {r: n for r, (_, n) in series.items()}


@pytest.mark.parametrize("case", ["partial success", "fluent partial", "events partial"])
def test_partial_successes_are_logged_as_the_app_logs_them(pair: tuple[Gateway, Gateway], case: str) -> None:
    def logged(gw: Gateway) -> dict[str, Any]:
        assert exchange(gw, CASES[case]).status == 200
        lines = [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]
        last = [line for line in lines if line["msg"] in ("partial success", "events refused")][-1]
        return {k: v for k, v in last.items() if k not in ("ts", "taskName")}

    front, app = logged(pair[0]), logged(pair[1])
    assert front == app
    assert isinstance(front["rejected"], int)


def test_events_the_front_answers_are_counted(pair: tuple[Gateway, Gateway]) -> None:
    front, _ = pair
    names = (
        'trackgate_events_total{outcome="accepted"}',
        'trackgate_events_total{outcome="rejected"}',
        'trackgate_http_requests_total{route="/v1/events",code="200"}',
        'trackgate_http_requests_total{route="/v1/events",code="400"}',
    )
    before = scrape(front, names)
    for case in ("events ndjson", "events partial", "events all refused"):
        answer = exchange(front, CASES[case])
        assert not answer.by_app
    after = scrape(front, names)
    # 20 + 2 accepted; 2 + 2 refused; two answered 200, one 400.
    assert [b - a for a, b in zip(before, after, strict=True)] == [22, 4, 2, 1]


def test_sentry_envelopes_the_front_answers_are_counted_as_the_app_counts_them(pair: tuple[Gateway, Gateway]) -> None:
    names = (
        'trackgate_sentry_envelopes_total{outcome="accepted"}',
        'trackgate_sentry_envelopes_total{outcome="rejected"}',
        'trackgate_sentry_items_total{outcome="received"}',
        'trackgate_sentry_items_total{outcome="forwarded"}',
        'trackgate_sentry_items_total{outcome="scrubbed"}',
        'trackgate_scrubbed_records_total{track="sentry"}',
        'trackgate_http_requests_total{route="/api/:project/envelope/",code="200"}',
        'trackgate_http_requests_total{route="/api/:project/envelope/",code="400"}',
    )

    def counted(gw: Gateway) -> list[float]:
        before = scrape(gw, names)
        for case in ("sentry envelope", "sentry transaction", "sentry bad envelope"):
            exchange(gw, CASES[case])
        return [b - a for a, b in zip(before, scrape(gw, names), strict=True)]

    front, app = counted(pair[0]), counted(pair[1])
    assert front == app
    # Two envelopes of one item each, forwarded to the file sink; the error's password scrubbed.
    assert front == [2, 1, 2, 2, 1, 1, 2, 1], front


def test_records_the_front_accepted_are_delivered(tmp_path: Path, upstream: Any) -> None:
    from conftest import dash0_config

    gw = Gateway(tmp_path, dash0_config(upstream), workers=2)
    try:
        for i in range(20):
            answer = exchange(gw, request(logs_body(f"front-{i}", count=5), PB, token=None))
            assert (answer.status, answer.by_app) == (200, False)
        want = {f"front-{i}-{j}" for i in range(20) for j in range(5)}

        def bodies(up: Any) -> set[str]:
            return {r.body.string_value for r in up.log_records()}

        assert upstream.wait_for(lambda up: bodies(up) >= want, timeout=20)
    finally:
        gw.stop()


def test_the_app_learns_the_client_address_from_the_front() -> None:
    from trackgate.rsgi import RsgiReader

    class Headers(dict[str, str]):
        def get_all(self, name: str) -> list[str]:
            return [self[name]] if name in self else []

    class Scope:
        def __init__(self, client: str, headers: dict[str, str], http_version: str) -> None:
            self.client, self.headers, self.http_version = client, Headers(headers), http_version

    def host(client: str, headers: dict[str, str], http_version: str = "1.1") -> str:
        return RsgiReader(Scope(client, headers, http_version), None).client_host  # type: ignore[arg-type]

    assert host("", {"x-trackgate-peer": "10.0.0.7"}) == "10.0.0.7"  # over the front's Unix socket
    assert host("192.0.2.1:5555", {"x-trackgate-peer": "10.0.0.7"}) == "192.0.2.1"  # a client's own header
    assert host("[::1]:80", {}) == "::1"
    assert host("", {}) == ""
    assert host("", {"x-trackgate-peer": "10.0.0.7"}, "2") == ""  # HTTP/2 passes the front as it came


def test_the_front_can_be_turned_off(tmp_path: Path) -> None:
    gw = Gateway(tmp_path, "[server]\notlp_front = false\n")
    try:
        answer = exchange(gw, request(logs_body(), PB, token=None))
        assert (answer.status, answer.by_app) == (200, True)
    finally:
        gw.stop()
    assert "OTLP/HTTP front listening" not in gw.log()


TIGHT = """
[server]
max_body_bytes = 100000
max_inflight_bytes = 100000
body_timeout_s = 5

[storage]
dir = "{dir}"
"""


@pytest.mark.parametrize("front", ["true", "false"])
def test_a_small_body_refused_for_the_spent_budget_keeps_its_connection(tmp_path: Path, front: str) -> None:
    """One body in flight holds the worker's whole budget: another client's small body gets 503 +
    Retry-After, is read and dropped, and its connection stays open for the retry, with the front
    as with the app."""
    config = TIGHT.format(dir=tmp_path / "data").replace("[server]", f"[server]\notlp_front = {front}")
    gw = Gateway(tmp_path, config, workers=1)
    try:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as holder:
            # Declares the whole budget and sends a little of it: the rest is awaited.
            holder.sendall(request(b"x" * 10, PB, token=None, length=100000, keep_alive=True))
            time.sleep(0.3)
            with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
                buf = bytearray()
                for _ in range(2):
                    sock.sendall(request(logs_body(count=20), PB, token=None, keep_alive=True))
                    answer = read_answer(sock, buf)
                    assert (answer.status, answer.headers.get("retry-after")) == (503, "1"), answer.body
                    assert b"max_inflight_bytes" in answer.body
                    assert answer.headers.get("connection") != "close"
                    assert answer.by_app == (front == "false")
                assert not buf
    finally:
        gw.stop()
