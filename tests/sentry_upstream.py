"""A stand-in for Sentry: receives `POST /api/<project>/envelope/`, decompresses and parses the
envelope with its own small parser (independent of the gateway's), records what came, and can be
scripted to answer e.g. 429 with `X-Sentry-Rate-Limits`."""

from __future__ import annotations

import gzip
import json
import re
import time
import urllib.parse
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from upstream import Reply, StandIn

ROUTE = re.compile(r"^/api/(?P<project>\d+)/(?P<kind>envelope|store)/$")


class EnvelopeError(ValueError):
    pass


@dataclass
class Item:
    headers: dict[str, Any]
    payload: bytes

    @property
    def type(self) -> str:
        return str(self.headers.get("type"))

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Envelope:
    headers: dict[str, Any]
    items: list[Item]

    def of_type(self, ty: str) -> list[Item]:
        return [i for i in self.items if i.type == ty]


def envelope(header: dict[str, Any], *items: tuple[str, Any]) -> bytes:
    """An envelope as SDKs write it: the header line, then each item's header (with `length`) and
    payload: JSON, or bytes as they are (an attachment)."""
    out = [json.dumps(header).encode()]
    for ty, payload in items:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        out += [json.dumps({"type": ty, "length": len(data)}).encode(), data]
    return b"\n".join(out) + b"\n"


def parse_envelope(body: bytes) -> Envelope:
    """Header line, then items: an item header line and a payload of `length` bytes followed by a
    newline or the end, or (without `length`) the rest of the line."""
    header_line, _, rest = body.partition(b"\n")
    headers = json.loads(header_line) if header_line.strip() else {}
    if not isinstance(headers, dict):
        raise EnvelopeError("envelope header is not an object")
    items: list[Item] = []
    pos = 0
    while pos < len(rest):
        end = rest.find(b"\n", pos)
        end = len(rest) if end < 0 else end
        line = rest[pos:end]
        pos = end + 1
        if not line.strip():
            continue
        item_headers = json.loads(line)
        if not isinstance(item_headers, dict) or "type" not in item_headers:
            raise EnvelopeError(f"bad item header {line!r}")
        length = item_headers.get("length")
        if length is None:
            end = rest.find(b"\n", pos)
            end = len(rest) if end < 0 else end
            payload = rest[pos:end]
            pos = end + 1
        else:
            payload = rest[pos : pos + length]
            if len(payload) != length:
                raise EnvelopeError(f"item payload shorter than its length {length}")
            pos += length
            if pos < len(rest) and rest[pos : pos + 1] != b"\n":
                raise EnvelopeError("sized payload not followed by a newline")
            pos += 1
        items.append(Item(item_headers, payload))
    return Envelope(headers, items)


def decompress(raw: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return gzip.decompress(raw)
    if encoding == "deflate":
        try:
            return zlib.decompress(raw)
        except zlib.error:
            return zlib.decompress(raw, -zlib.MAX_WBITS)
    if encoding == "br":
        import brotli

        return brotli.decompress(raw)
    if encoding == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    return raw


@dataclass
class Received:
    path: str
    project: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    raw: bytes
    body: bytes  # decompressed
    envelope: Envelope | None
    status: int

    @property
    def auth(self) -> dict[str, str]:
        """The X-Sentry-Auth fields: `Sentry sentry_key=k, sentry_version=7` → {sentry_key: k, ...}."""
        value = self.headers.get("x-sentry-auth", "")
        scheme, _, rest = value.partition(" ")
        assert scheme.lower() == "sentry", value
        return dict(part.strip().split("=", 1) for part in rest.split(",") if "=" in part)


class SentryUpstream(StandIn):
    """`script` answers requests in order; `responder` (if set) may answer first, given the request."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.responder: Callable[[Received], Reply | None] | None = None
        self.received: list[Received] = []
        self.errors: list[str] = []
        self.default = Reply(200, body=b"{}")
        super().__init__()

    def dsn(self, key: str = "upstreamkey", project: str = "99") -> str:
        return f"http://{key}@127.0.0.1:{self.port}/{project}"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        raw = h.rfile.read(int(h.headers.get("Content-Length", "0")))
        url = urllib.parse.urlsplit(h.path)
        match = ROUTE.match(url.path)
        headers = {k.lower(): v for k, v in h.headers.items()}
        envelope: Envelope | None = None
        body = raw
        try:
            body = decompress(raw, headers.get("content-encoding", ""))
            if match and match.group("kind") == "envelope":
                envelope = parse_envelope(body)
        except Exception as exc:  # recorded, and the test's assertions on `errors` fail
            self.errors.append(f"{url.path}: {type(exc).__name__}: {exc}")
        record = Received(
            url.path, match.group("project") if match else "", urllib.parse.parse_qs(url.query),
            headers, raw, body, envelope, 0,
        )  # fmt: skip
        reply = self.responder(record) if self.responder else None
        with self.lock:
            if reply is None:
                reply = self.script.pop(0) if self.script else self.default
            if match is None or (envelope is None and match.group("kind") == "envelope"):
                reply = Reply(404 if match is None else 400, body=b'{"detail":"bad request"}')
            record.status = reply.status
        if reply.delay_s:
            time.sleep(reply.delay_s)
        self._notify(self.received, record)
        self._answer(h, reply, "application/json")

    def requests(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def delivered(self) -> list[Envelope]:
        """Envelopes answered with 2xx."""
        with self.lock:
            return [r.envelope for r in self.received if r.envelope is not None and 200 <= r.status < 300]

    def items(self, ty: str) -> list[Item]:
        return [item for env in self.delivered() for item in env.of_type(ty)]
