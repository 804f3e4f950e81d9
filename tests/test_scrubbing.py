"""PII scrubbing through the real gateway: each row sends one envelope to `trackgate serve` and
checks what the stand-in Sentry received: the secret never arrives, `[Filtered]` does where it
stood, and safe data arrives byte for byte."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from http_client import call
from sentry_upstream import Item, SentryUpstream

pytestmark = pytest.mark.slow

KEY = "pubkey123"
F = "[Filtered]"
PGP = "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: x\n\nlQOYBFpgp-secret-body\n-----END PGP PRIVATE KEY BLOCK-----"


@pytest.fixture(scope="module")
def sentry() -> Iterator[SentryUpstream]:
    stand_in = SentryUpstream()
    yield stand_in
    stand_in.close()
    assert not stand_in.errors  # everything the gateway sent parsed as an envelope


@pytest.fixture(scope="module")
def gw(tmp_path_factory, sentry: SentryUpstream) -> Iterator[Any]:
    from conftest import Gateway

    config = f"""
[receivers.sentry]
public_keys = ["{KEY}"]
scrub_safe_keys = ["author"]

[exporters.sentry]
dsn = "{sentry.dsn()}"
timeout_s = 2.0
retry = {{ initial_interval_s = 0.2, max_interval_s = 1.0 }}
"""
    gateway = Gateway(tmp_path_factory.mktemp("scrubbing"), config)
    yield gateway
    gateway.close()


def forward(gw: Any, sentry: SentryUpstream, ty: str, payload: bytes) -> Item:
    """Sends one item through the gateway; the item as the stand-in Sentry received it."""
    event_id = uuid.uuid4().hex
    body = b"\n".join(
        [
            json.dumps({"event_id": event_id}).encode(),
            json.dumps({"type": ty, "length": len(payload)}).encode(),
            payload,
        ]
    )
    headers = {"Content-Type": "application/x-sentry-envelope", "X-Sentry-Auth": f"Sentry sentry_key={KEY}"}
    status, _, answer = call(f"{gw.url}/api/42/envelope/", body + b"\n", headers)
    assert status == 200, answer

    def arrived(s: SentryUpstream) -> list[Item]:
        return [i for env in s.delivered() if env.headers.get("event_id") == event_id for i in env.items]

    assert sentry.wait_for(arrived), gw.log()
    (item,) = arrived(sentry)
    assert item.type == ty
    return item


def at(doc: Any, path: str) -> Any:
    """`a/b/0/c` into nested objects and lists (keys may hold dots)."""
    for part in path.split("/"):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


# One row per gap: (id, item type, payload, secrets that must not arrive, {path: what arrives}).
GAPS = [
    ("query-string", "event", {"request": {"query_string": "page=2&password=qs-secret-1&q=shoes"}},
     ["qs-secret-1"], {"request/query_string": f"page=2&password={F}&q=shoes"}),
    ("query-string-pairs", "event", {"request": {"query_string": [["page", "2"], ["password", "qs-secret-2"]]}},
     ["qs-secret-2"], {"request/query_string": [["page", "2"], ["password", F]]}),
    ("url-query-token", "event", {"request": {"url": "https://shop.example/cart?token=url-secret-3&item=7"}},
     ["url-secret-3"], {"request/url": f"https://shop.example/cart?token={F}&item=7"}),
    ("form-body", "event", {"request": {"data": "username=ann&password=form-secret-4&remember=1"}},
     ["form-secret-4"], {"request/data": f"username=ann&password={F}&remember=1"}),
    ("json-in-string", "event", {"extra": {"body": json.dumps({"user": "ann", "password": "json-secret-5"})}},
     ["json-secret-5"], {"extra/body": f'{{"user":"ann","password":"{F}"}}'}),
    ("x-api-key-header", "event",
     {"request": {"headers": {"X-Api-Key": "hdr-secret-6", "Api-Key": "hdr-secret-7", "Accept": "*/*"}}},
     ["hdr-secret-6", "hdr-secret-7"], {"request/headers": {"X-Api-Key": F, "Api-Key": F, "Accept": "*/*"}}),
    ("bearer-in-text", "event",
     {"message": "retry with Authorization: Bearer eyJhbGci.Bearer-secret8",
      "breadcrumbs": {"values": [{"message": "curl -H 'Authorization: Bearer Tok9sEcret'"}]}},
     ["Bearer-secret8", "Tok9sEcret"],
     {"message": f"retry with Authorization: Bearer {F}",
      "breadcrumbs/values/0/message": f"curl -H 'Authorization: Bearer {F}'"}),
    ("url-password-with-slash", "event", {"extra": {"db": "postgres://app:pw/slash-secret@db.example:5432/x"}},
     ["slash-secret"], {"extra/db": f"postgres://app:{F}@db.example:5432/x"}),
    ("header-list-with-non-pair", "event",
     {"request": {"headers": [["Authorization", "Basic cGFpci1zZWNyZXQ="], ["X-Broken"],
                              ["Cookie", "sessionid=pair-secret"]]}},
     ["cGFpci1zZWNyZXQ=", "pair-secret"], {"request/headers": [["Authorization", F], ["X-Broken"], ["Cookie", F]]}),
    ("card-separators-and-number", "event",
     {"extra": {"dots": "4111.1111.1111.1111", "spaces": "4111  1111  1111  1111", "slashes": "5555/5555/5555/4444",
                "number": 4111111111111111}},
     ["4111.1111", "4111  1111", "5555/5555", "4111111111111111"],
     {"extra/dots": F, "extra/spaces": F, "extra/slashes": F, "extra/number": F}),
    ("pgp-private-key", "event", {"extra": {"key": PGP}},
     ["pgp-secret-body"],
     {"extra/key": f"-----BEGIN PGP PRIVATE KEY BLOCK-----{F}-----END PGP PRIVATE KEY BLOCK-----"}),
    ("span-item", "span", {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "data": {"db.password": "span-secret"}},
     ["span-secret"], {"data/db.password": F, "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}),
    ("span-v2-typed-attributes", "span",
     {"items": [{"attributes": {"db.password": {"type": "string", "value": "v2-secret"},
                                "n": {"type": "integer", "value": 3}}}]},
     ["v2-secret"],
     {"items/0/attributes": {"db.password": {"type": "string", "value": F}, "n": {"type": "integer", "value": 3}}}),
    ("feedback-item", "feedback",
     {"contexts": {"feedback": {"message": "my token is Bearer fb9Secret", "contact_email": "a@b.example"}}},
     ["fb9Secret"], {"contexts/feedback/message": f"my token is Bearer {F}"}),
    ("user-report-item", "user_report",
     {"event_id": "9ec79c33ec9942ab8353589fcb2e04dc", "name": "ann", "comments": "card 4111 1111 1111 1111 declined"},
     ["4111 1111"], {"comments": f"card {F} declined", "name": "ann"}),
    ("raw-security-item", "raw_security",
     {"csp-report": {"document-uri": "https://app.example/?token=csp-secret", "blocked-uri": "https://cdn.example/x.js"}},
     ["csp-secret"], {"csp-report/document-uri": f"https://app.example/?token={F}"}),
    ("check-in-item", "check_in",
     {"check_in_id": "83a7c03ed0a04e1b97e2e3b18d38f244", "monitor_slug": "nightly", "status": "ok",
      "contexts": {"db": {"password": "ci-secret"}}},
     ["ci-secret"], {"contexts/db/password": F, "monitor_slug": "nightly"}),
    ("unknown-json-item", "brand_new_type", {"extra": {"api_key": "new-secret"}},
     ["new-secret"], {"extra/api_key": F}),
]  # fmt: skip


@pytest.mark.parametrize(("ty", "payload", "secrets", "expected"), [g[1:] for g in GAPS], ids=[g[0] for g in GAPS])
def test_gap_is_filtered(gw, sentry, ty: str, payload: dict[str, Any], secrets: list[str], expected: dict) -> None:
    item = forward(gw, sentry, ty, json.dumps(payload).encode())
    for secret in secrets:
        assert secret.encode() not in item.payload, item.payload
    doc = item.json()
    for path, want in expected.items():
        assert at(doc, path) == want, (path, doc)


# Safe data: arrives byte for byte (nothing matched, so the item is not even re-serialized).
SAFE = {
    "event_id": "9ec79c33ec9942ab8353589fcb2e04dc",
    "timestamp": 1714564800.123,
    "start_timestamp": "2024-05-01T12:00:00.123456Z",
    "contexts": {"trace": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}},
    "extra": {
        "uuid": "550e8400-e29b-41d4-a716-446655440000",
        "digits_uuid": "12345678-1234-1234-1234-123456789012",
        "not_luhn": 1234567890123,
        "not_luhn_text": "4111 1111 1111 1112",
        "decimal": "0.4111111111111111",
        "dates": "2024/05/01 2024/05/02 12.30.45.123",
        "ip": "10.0.0.1:8080",
        "query": "https://shop.example/tokens/list?page=2&sort=desc",
        "form": "page=2&sort=desc",
        "json": '{"user": "ann",  "n": 1.50}',
        "prose": "the bearer of bad news; SELECT * WHERE password = ?",
        "mastodon": "http://localhost:8080/users/@ann",
        "base64": "dG9rZW4=",
    },
    "tags": [["author", "ann"], ["release", "1.2.3"]],
    "user": {"author": "ann"},
}
UNSCRUBBED = {"extra": {"password": "stays-in-attachment"}}


@pytest.mark.parametrize(
    ("ty", "payload"),
    [
        pytest.param("event", json.dumps(SAFE, indent=1).encode(), id="safe-event"),
        pytest.param("span", json.dumps({"data": SAFE["extra"]}).encode(), id="safe-span"),
        pytest.param("attachment", json.dumps(UNSCRUBBED).encode(), id="attachment-not-scrubbed"),
        pytest.param("client_report", json.dumps(UNSCRUBBED).encode(), id="client-report-not-scrubbed"),
        pytest.param("user_report", b"not json, password=kept", id="non-json-passes"),
    ],
)
def test_safe_data_arrives_untouched(gw, sentry, ty: str, payload: bytes) -> None:
    item = forward(gw, sentry, ty, payload)
    assert item.payload == payload
