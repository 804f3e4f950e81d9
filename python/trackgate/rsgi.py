"""granian's RSGI interface for `asgi.Request`: headers from the scope, the body from the protocol.

The whole body comes in one `await protocol()` (collected in Rust) when its length was declared
and reserved; otherwise piece by piece (`async for`), counted against the limit as it arrives.
"""

from __future__ import annotations

from typing import Any

from granian._granian import RSGIHTTPProtocol as HTTPProtocol
from granian._granian import RSGIProtocolClosed as ProtocolClosed
from granian._granian import RSGIProtocolError as ProtocolError
from granian.rsgi import Scope

from trackgate.asgi import Budget, ClientDisconnected, Request

# The client's address on requests the OTLP/HTTP front relays (rust/net/otlp_http.rs).
PEER_HEADER = "x-trackgate-peer"


class RsgiReader:
    """One RSGI HTTP request: `scope.headers` and the protocol's body."""

    __slots__ = ("_declared", "_headers", "_iter", "_received", "protocol", "scope")

    def __init__(self, scope: Scope, protocol: HTTPProtocol) -> None:
        self.scope = scope
        self.protocol = protocol
        self._headers = scope.headers
        self._iter: Any = None  # set once the body is read piece by piece
        self._received = 0  # bytes read piece by piece
        self._declared: str | None = None

    def header(self, name: str) -> str | None:
        values: list[str] = self._headers.get_all(name)  # type: ignore[attr-defined]
        if not values:
            return None
        return values[0] if len(values) == 1 else ", ".join(values)

    def header_map(self) -> dict[str, str]:
        folded: dict[str, str] = {}
        for name, value in self._headers.items():
            folded[name] = folded[name] + ", " + value if name in folded else value
        return folded

    @property
    def client_host(self) -> str:
        client = self.scope.client
        if not client:
            # Over the private Unix socket behind the OTLP/HTTP front, which names the client on
            # HTTP/1.x heads (dropping any such header the client sent); HTTP/2 passes through as
            # it came, so its header is not trusted.
            if self.scope.http_version.startswith("1"):
                return self.header(PEER_HEADER) or ""
            return ""
        # "ip:port", an IPv6 address in brackets
        return client.rpartition(":")[0].strip("[]")

    @property
    def query_string(self) -> str:
        return self.scope.query_string

    @property
    def collects(self) -> bool:
        return self._iter is None

    async def whole(self) -> bytes:
        try:
            return await self.protocol()
        except (ProtocolClosed, ProtocolError):
            # granian could not read the body: the client left, or the body was cut short
            raise ClientDisconnected() from None

    async def piece(self) -> tuple[bytes, bool]:
        if self._iter is None:
            self._iter = self.protocol.__aiter__()
            self._declared = self.header("content-length")
        try:
            chunk: bytes = await self._iter.__anext__()
        except StopAsyncIteration:
            return b"", False
        except (ProtocolClosed, ProtocolError):
            raise ClientDisconnected() from None
        if chunk:
            self._received += len(chunk)
            return chunk, True
        # granian yields b"" once at the end of the body, and also where it could not read it
        # (a client gone, broken chunked framing: then a second b"" follows before the end).
        if await self._ended_cleanly():
            return b"", False
        raise ClientDisconnected()

    async def _ended_cleanly(self) -> bool:
        assert self._iter is not None
        try:
            await self._iter.__anext__()
            clean = False  # a second b"": the read failed, or trailers followed
        except StopAsyncIteration:
            clean = True
        except (ProtocolClosed, ProtocolError):
            return False
        if self._declared is not None and self._declared.isdigit():
            return self._received == int(self._declared)  # a length-delimited body is whole, or cut short
        # A chunked body with trailers (announced in `Trailer`) looks like a failed read; so may an
        # HTTP/2 body ending in an empty DATA frame: both count as whole.
        return clean or self.header("trailer") is not None or self.scope.http_version == "2"


def request(scope: Scope, protocol: HTTPProtocol, budget: Budget | None = None) -> Request:
    """The `Request` of one RSGI HTTP call."""
    return Request.over(scope.method, scope.path, RsgiReader(scope, protocol), budget)
