"""The few ASGI pieces the app needs: a request with a bounded body reader, and responses."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# How much of a refused body is read and thrown away before answering 413 (see Request.body).
DRAIN_LIMIT = 8 * 1024 * 1024


class BodyTimeout(Exception):
    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"request body not received within {timeout_s:g}s")
        self.timeout_s = timeout_s


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"body exceeds the limit of {limit} bytes")
        self.limit = limit


class ClientDisconnected(Exception):
    pass


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    async def send(self, send: Send) -> None:
        headers = [(b"content-type", self.content_type.encode()), (b"content-length", str(len(self.body)).encode())]
        headers.extend((k.lower().encode(), v.encode()) for k, v in self.headers)
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


class Request:
    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self._receive = receive
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers: dict[str, str] = {}
        for key, value in scope.get("headers", []):
            name = key.decode("latin-1").lower()
            text = value.decode("latin-1")
            # Repeated headers fold into one comma-separated value, as HTTP allows.
            self.headers[name] = f"{self.headers[name]}, {text}" if name in self.headers else text

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)

    async def body(self, limit: int, timeout_s: float = 30.0) -> bytes:
        """The whole body within `timeout_s` (a client trickling it slower is cut off: BodyTimeout)."""
        try:
            return await asyncio.wait_for(self._body(limit), timeout_s)
        except TimeoutError:
            raise BodyTimeout(timeout_s) from None

    async def _body(self, limit: int) -> bytes:
        """Reads the whole body, refusing (before reading) a declared or (while reading) an actual excess.

        A refused body of modest size is read and discarded first, so the client gets to read
        the 413 instead of a reset connection while it is still sending.
        """
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            if int(declared) <= limit + DRAIN_LIMIT:
                await self._discard(DRAIN_LIMIT + limit)
            raise BodyTooLarge(limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected()
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    chunks.clear()
                    if message.get("more_body", False):
                        await self._discard(DRAIN_LIMIT)
                    raise BodyTooLarge(limit)
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _discard(self, budget: int) -> None:
        while budget > 0:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return
            budget -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return
