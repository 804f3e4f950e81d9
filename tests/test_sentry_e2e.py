"""End to end: the real sentry-sdk → `trackgate serve` → a stand-in Sentry (and the OTLP stand-in)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk import logger as sentry_logger
from sentry_sdk.scrubber import EventScrubber

from conftest import dash0_config
from http_client import call
from otel_clients import attrs
from sentry_upstream import SentryUpstream, envelope, parse_envelope
from trackgate.dsn import parse_dsn
from upstream import Reply, Upstream

pytestmark = pytest.mark.slow

CLIENT_KEY = "pubkey123"
UPSTREAM_KEY = "upstreamkey"
CARD = "4111 1111 1111 1111"  # Luhn-valid
SECRET = "hunter2-very-secret"


def gateway_config(upstream: Upstream, sentry: SentryUpstream) -> str:
    sentry_config = f"""
[server]
shutdown_grace_s = 1.0

[receivers.sentry]
public_keys = ["{CLIENT_KEY}"]

[exporters.sentry]
dsn = "{sentry.dsn(UPSTREAM_KEY, "99")}"
timeout_s = 2.0
retry = {{ initial_interval_s = 0.2, max_interval_s = 1.0 }}
"""
    return dash0_config(upstream) + sentry_config


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """`sdk(gateway, **options)`: a fresh sentry-sdk client pointed at the gateway, in its own
    isolation scope; closed (and unset) after the test so nothing leaks into the next one."""
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "")
    monkeypatch.setenv("NO_PROXY", "*")

    def connect(gw: Any, **options: Any) -> sentry_sdk.Client:
        sentry_sdk.init(
            dsn=f"http://{CLIENT_KEY}@127.0.0.1:{gw.port}/42",
            default_integrations=False,
            auto_enabling_integrations=False,
            release="worker@1.2.3",
            environment="test",
            **options,
        )
        return sentry_sdk.get_client()  # type: ignore[return-value]

    with sentry_sdk.isolation_scope():
        yield connect
    sentry_sdk.get_client().close(timeout=2)
    sentry_sdk.get_global_scope().set_client(None)


def charge_card() -> None:
    password = SECRET  # noqa: F841 - a local the event's frame vars carry
    card_number = CARD
    raise ValueError(f"charge failed for card {card_number}")


def post_envelope(url: str, body: bytes, **headers: str) -> tuple[int, dict[str, str], bytes]:
    return call(url, body, {"Content-Type": "application/x-sentry-envelope", **headers})


def auth(key: str = CLIENT_KEY) -> dict[str, str]:
    return {"X-Sentry-Auth": f"Sentry sentry_key={key}, sentry_version=7, sentry_client=test/1.0"}


@pytest.mark.parametrize("compression", ["br", "gzip"])
def test_error_is_scrubbed_and_reaches_sentry_and_otlp(
    gateway_factory, upstream: Upstream, sentry_upstream: SentryUpstream, sdk, compression: str
) -> None:
    gw = gateway_factory(gateway_config(upstream, sentry_upstream))
    experiments = {} if compression == "br" else {"transport_compression_algo": "gzip"}
    # The SDK's own scrubber is emptied, so `password` reaches the gateway and must be filtered there.
    client = sdk(
        gw, traces_sample_rate=1.0, _experiments=experiments, event_scrubber=EventScrubber(denylist=[], pii_denylist=[])
    )
    assert client.transport._compression_algo == compression  # type: ignore[union-attr]
    sentry_sdk.set_tag("job.id", "job-42")
    with sentry_sdk.start_transaction(name="job.run", op="job"), sentry_sdk.start_span(op="charge") as span:
        try:
            charge_card()
        except ValueError:
            event_id = sentry_sdk.capture_exception()
        trace_id, span_id = span.trace_id, span.span_id
    sentry_sdk.flush(timeout=5)
    assert event_id

    assert sentry_upstream.wait_for(lambda s: s.items("event"))
    request = next(r for r in sentry_upstream.requests() if r.envelope and r.envelope.of_type("event"))
    assert request.path == "/api/99/envelope/"  # the upstream DSN's project, not the client's 42
    assert request.auth["sentry_key"] == UPSTREAM_KEY
    assert CLIENT_KEY not in request.headers["x-sentry-auth"]
    assert request.headers["content-encoding"] == "gzip"
    assert request.envelope is not None and request.envelope.headers["event_id"] == event_id
    assert "dsn" not in request.envelope.headers or request.envelope.headers["dsn"] == sentry_upstream.dsn()
    assert SECRET.encode() not in request.body and CARD.encode() not in request.body
    (event,) = (item.json() for item in request.envelope.of_type("event"))
    frame = next(f for f in event["exception"]["values"][-1]["stacktrace"]["frames"] if f["function"] == "charge_card")
    assert frame["vars"]["password"] == "[Filtered]"
    assert "[Filtered]" in frame["vars"]["card_number"]
    assert event["exception"]["values"][-1]["value"] == "charge failed for card [Filtered]"
    assert event["tags"]["job.id"] == "job-42"

    # The same error, as an OTLP log record.
    assert upstream.wait_for(lambda u: u.log_records())
    (record,) = upstream.log_records()
    a = attrs(record.attributes)
    assert a["exception.type"] == "ValueError"
    assert a["exception.message"] == "charge failed for card [Filtered]"
    assert "charge_card" in str(a["exception.stacktrace"])
    assert a["job.id"] == "job-42"
    assert a["sentry.event_id"] == event_id
    assert record.severity_number == 17  # ERROR
    assert record.trace_id.hex() == trace_id
    assert record.span_id.hex() == span_id
    resource = attrs(upstream.delivered("/v1/logs")[0].message.resource_logs[0].resource.attributes)
    assert resource["service.version"] == "worker@1.2.3"
    assert resource["sentry.project_id"] == "42"


def test_message_transaction_and_logs_arrive(
    gateway_factory, upstream: Upstream, sentry_upstream: SentryUpstream, sdk
) -> None:
    gw = gateway_factory(gateway_config(upstream, sentry_upstream))
    sdk(gw, traces_sample_rate=1.0, enable_logs=True)
    message_id = sentry_sdk.capture_message("queue is backing up", level="warning")
    with sentry_sdk.start_transaction(name="job.run", op="job") as tx:
        with sentry_sdk.start_span(op="comfy.render", name="render frames"):
            sentry_logger.info("rendered {frames} frames", frames=24, attributes={"job.id": "job-7"})
        with sentry_sdk.start_span(op="upload", name="upload result"):
            pass
    sentry_sdk.flush(timeout=5)

    assert sentry_upstream.wait_for(lambda s: s.items("event") and s.items("transaction") and s.items("log"))
    (message,) = (i.json() for i in sentry_upstream.items("event"))
    assert message["event_id"] == message_id
    assert message["message"] == "queue is backing up" and message["level"] == "warning"
    (transaction,) = (i.json() for i in sentry_upstream.items("transaction"))
    assert transaction["transaction"] == "job.run"
    assert transaction["contexts"]["trace"]["trace_id"] == tx.trace_id
    assert sorted(s["op"] for s in transaction["spans"]) == ["comfy.render", "upload"]
    (log_item,) = sentry_upstream.items("log")
    assert log_item.headers.get("content_type") == "application/vnd.sentry.items.log+json"
    (log,) = log_item.json()["items"]
    assert log["body"] == "rendered 24 frames"
    assert log["trace_id"] == tx.trace_id

    # Events and Sentry logs also become OTLP log records; the transaction becomes spans.
    assert upstream.wait_for(lambda u: len(u.log_records()) == 2)
    records = {r.body.string_value: r for r in upstream.log_records()}
    assert set(records) == {"queue is backing up", "rendered 24 frames"}
    assert records["queue is backing up"].severity_number == 13  # WARN
    rendered = records["rendered 24 frames"]
    assert rendered.severity_number == 9  # INFO
    assert rendered.trace_id.hex() == tx.trace_id
    assert attrs(rendered.attributes)["job.id"] == "job-7"
    assert upstream.wait_for(lambda u: len(u.spans()) == 3)
    assert {s.name for s in upstream.spans()} == {"job.run", "render frames", "upload result"}


def test_envelope_dsn_auth_is_rewritten_for_upstream(
    gateway_factory, upstream: Upstream, sentry_upstream: SentryUpstream
) -> None:
    """A client authenticating with the envelope header `dsn`: upstream sees the upstream DSN."""
    gw = gateway_factory(gateway_config(upstream, sentry_upstream))
    event_id = uuid.uuid4().hex
    body = envelope(
        {"event_id": event_id, "dsn": f"http://{CLIENT_KEY}@127.0.0.1:{gw.port}/42", "custom_key": 1},
        ("event", {"event_id": event_id, "message": "via dsn header", "extra": {"api_token": "t0ps3cret"}}),
        ("something_new", {"kept": True}),
    )
    status, _, reply = post_envelope(f"{gw.url}/api/42/envelope/", body)
    assert status == 200 and json.loads(reply) == {"id": event_id}
    assert sentry_upstream.wait_for(lambda s: s.delivered())
    (request,) = sentry_upstream.requests()
    assert request.envelope is not None
    assert request.envelope.headers["dsn"] == sentry_upstream.dsn(UPSTREAM_KEY, "99")
    assert request.envelope.headers["custom_key"] == 1  # unknown header keys pass through
    assert [i.type for i in request.envelope.items] == ["event", "something_new"]
    assert request.envelope.items[1].json() == {"kept": True}
    assert request.envelope.items[0].json()["extra"]["api_token"] == "[Filtered]"
    assert request.auth["sentry_key"] == UPSTREAM_KEY
    assert CLIENT_KEY.encode() not in request.body


@pytest.mark.parametrize("dsn", ["http://k-SECRET@h:abc/42", "http://k-SECRET@[x/42", "http://k-SECRET@h:99999/42"])
def test_an_envelope_dsn_that_is_no_url_is_refused_with_401(
    gateway_factory, upstream: Upstream, sentry_upstream: SentryUpstream, dsn: str
) -> None:
    """A bad port or host in the header's dsn is the client's error (401, named), not a 500."""
    gw = gateway_factory(gateway_config(upstream, sentry_upstream))
    body = envelope({"event_id": uuid.uuid4().hex, "dsn": dsn}, ("event", {"message": "x"}))
    status, _, reply = post_envelope(f"{gw.url}/api/42/envelope/", body)
    assert status == 401, reply
    assert b"invalid dsn" in reply and b"SECRET" not in reply
    assert "Traceback" not in gw.log()


def test_an_ipv6_dsn_keeps_its_brackets() -> None:
    dsn = parse_dsn("https://key@[2001:db8::1]:9000/sentry/5")
    assert dsn.envelope_url == "https://[2001:db8::1]:9000/sentry/api/5/envelope/"
    assert str(dsn) == "https://key@[2001:db8::1]:9000/sentry/5"


def test_upstream_rate_limit_is_passed_to_clients(
    gateway_factory, upstream: Upstream, sentry_upstream: SentryUpstream, sdk
) -> None:
    sentry_upstream.script = [Reply(429, {"X-Sentry-Rate-Limits": "60:error:key", "Retry-After": "60"}, b"{}")]
    gw = gateway_factory(gateway_config(upstream, sentry_upstream))
    sdk(gw)
    first_id = sentry_sdk.capture_message("first error", level="error")
    sentry_sdk.flush(timeout=5)
    assert sentry_upstream.wait_for(lambda s: any(r.status == 429 for r in s.requests()))
    # The exporter records the limit once it has read the answer, then logs that it holds the envelope.
    assert sentry_upstream.wait_for(lambda s: "upstream rate limit; envelope held" in gw.log())
    # /metrics shows the backlog: the held envelope is queued for the upstream.
    assert sentry_upstream.wait_for(lambda s: side_queue(gw.url) == 1)

    # An error while errors are limited: not sent upstream, but its log record is queued, so the
    # answer is 200 with the limits (the SDK backs off all the same).
    error_id = uuid.uuid4().hex
    status, headers, body = post_envelope(
        f"{gw.url}/api/42/envelope/",
        envelope({"event_id": error_id}, ("event", {"event_id": error_id, "message": "second error"})),
        **auth(),
    )
    assert status == 200 and json.loads(body) == {"id": error_id}, body
    assert headers.get("server") != "granian"  # the front's answer: it reads the exporter's limits
    assert headers["x-sentry-rate-limits"].split(":")[1:] == ["error", "key"]
    assert 50 <= int(headers["x-sentry-rate-limits"].split(":")[0]) <= 61
    assert upstream.wait_for(lambda u: any(r.body.string_value == "second error" for r in u.log_records()))

    tx_id = uuid.uuid4().hex
    transaction = {
        "event_id": tx_id, "type": "transaction", "transaction": "job.run", "start_timestamp": 1714564800.0,
        "timestamp": 1714564801.0, "contexts": {"trace": {"trace_id": uuid.uuid4().hex, "span_id": "b0e6f15b45c36b12"}},
        "spans": [],
    }  # fmt: skip
    status, _, body = post_envelope(
        f"{gw.url}/api/42/envelope/", envelope({"event_id": tx_id}, ("transaction", transaction)), **auth()
    )
    assert status == 200 and json.loads(body) == {"id": tx_id}
    assert sentry_upstream.wait_for(lambda s: s.items("transaction"))
    # The held error is not sent again while the limit lasts; the 429'd one never left the gateway.
    assert [r.status for r in sentry_upstream.requests()] == [429, 200]

    # The held envelope stays queued across a restart (a fresh process has no limits in force).
    gw.stop()
    gw.start()
    assert sentry_upstream.wait_for(lambda s: s.items("event"))
    events = [i.json() for i in sentry_upstream.items("event")]
    assert [e["event_id"] for e in events] == [first_id]
    assert sentry_upstream.wait_for(lambda s: side_queue(gw.url) == 0)


@pytest.mark.parametrize("front", [True, False])
def test_a_limited_category_is_left_out_and_the_rest_of_the_envelope_goes(
    gateway_factory, upstream: Upstream, sentry_upstream: SentryUpstream, sdk, front: bool
) -> None:
    """The upstream limits attachments: sentry-sdk's error with an attachment is answered 200,
    the error goes upstream without it (Relay's way: a 429 would lose the error too, SDKs do not
    send a 429'd envelope again), and an envelope holding only an attachment is refused."""
    sentry_upstream.script = [Reply(429, {"X-Sentry-Rate-Limits": "60:attachment:key", "Retry-After": "60"}, b"{}")]
    cfg = gateway_config(upstream, sentry_upstream)
    gw = gateway_factory(cfg if front else cfg.replace("[server]\n", "[server]\notlp_front = false\n", 1))
    sdk(gw)
    sentry_sdk.get_isolation_scope().add_attachment(bytes=b"first tail", filename="tail.log")
    sentry_sdk.capture_message("first error", level="error")
    sentry_sdk.flush(timeout=5)
    # The upstream refuses it with the limit; the exporter records it and holds the envelope.
    assert sentry_upstream.wait_for(lambda s: "upstream rate limit; envelope held" in gw.log())

    error_id = uuid.uuid4().hex
    body = envelope(
        {"event_id": error_id},
        ("event", {"event_id": error_id, "message": "second error", "level": "error"}),
        ("attachment", b"second tail"),
    )
    status, headers, answer = post_envelope(f"{gw.url}/api/42/envelope/", body, **auth())
    assert status == 200 and json.loads(answer) == {"id": error_id}, answer
    assert headers["x-sentry-rate-limits"].split(":")[1:] == ["attachment", "key"]
    assert (headers.get("server") != "granian") is front
    assert sentry_upstream.wait_for(lambda s: any(i.json().get("event_id") == error_id for i in s.items("event")))
    (second,) = [r for r in sentry_upstream.requests() if error_id.encode() in r.body]
    assert second.envelope is not None and [i.type for i in second.envelope.items] == ["event"]

    only_id = uuid.uuid4().hex
    body = envelope({"event_id": only_id}, ("attachment", b"an attachment alone"))
    status, headers, answer = post_envelope(f"{gw.url}/api/42/envelope/", body, **auth())
    assert status == 429, answer
    assert headers["x-sentry-rate-limits"].split(":")[1:] == ["attachment", "key"]
    assert 50 <= int(headers["retry-after"]) <= 61
    text = call(gw.url + "/metrics", timeout=5)[2].decode()
    assert 'trackgate_sentry_items_total{outcome="rate_limited"} 1' in text, [
        line for line in text.splitlines() if "sentry_items" in line
    ]
    assert all(b"an attachment alone" not in r.body for r in sentry_upstream.requests())


def side_queue(url: str) -> float:
    """trackgate_side_queue_records{queue="sentry"}: envelopes queued for the upstream Sentry."""
    _, _, body = call(f"{url}/metrics", timeout=5)
    for line in body.decode().splitlines():
        if line.startswith('trackgate_side_queue_records{queue="sentry"} '):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError('trackgate_side_queue_records{queue="sentry"} not in /metrics')


def test_envelopes_land_in_the_embedded_file_sink(gateway_factory, sdk, tmp_path: Path) -> None:
    """No exporter configured at all: envelopes are written one per file, as they would be forwarded."""
    gw = gateway_factory("")
    sdk(gw, _experiments={"transport_compression_algo": "gzip"})
    try:
        charge_card()
    except ValueError:
        event_id = sentry_sdk.capture_exception()
    sentry_sdk.flush(timeout=5)
    assert gw.stop() == 0  # SIGTERM drains the queues into the sinks

    files = sorted((tmp_path / "trackgate-data" / "out" / "sentry").glob("*.envelope"))
    assert len(files) == 1 and event_id in files[0].name
    env = parse_envelope(files[0].read_bytes())
    assert env.headers["event_id"] == event_id
    (event,) = (i.json() for i in env.of_type("event"))
    assert event["exception"]["values"][-1]["value"] == "charge failed for card [Filtered]"
    assert CARD.encode() not in files[0].read_bytes()
    # Its OTLP log record goes to the file sink's logs.jsonl.
    lines = (tmp_path / "trackgate-data" / "out" / "logs.jsonl").read_text().splitlines()
    records = [
        r
        for line in lines
        for rl in json.loads(line)["resourceLogs"]
        for sl in rl["scopeLogs"]
        for r in sl["logRecords"]
    ]
    assert len(records) == 1
    assert {a["key"]: a["value"] for a in records[0]["attributes"]}["exception.type"] == {"stringValue": "ValueError"}
