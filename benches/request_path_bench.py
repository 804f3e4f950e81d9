"""Per-request Python cost of the request path's fixed parts, in process: `Request.body` (with its
deadline) for a 7,542-byte body that arrives in one piece, and sending the full-success answer,
over ASGI and over RSGI (stand-ins for granian's scope, headers and protocol: what is measured is
trackgate's Python, not granian's). N requests in one task, best of 7, CPU microseconds per
request (process time, so that other processes on the machine count less).

    .venv/bin/python benches/request_path_bench.py LABEL
    PYTHONPATH=/copy/of/other/build/python .venv/bin/python benches/request_path_bench.py base
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

from trackgate import asgi
from trackgate.receivers import otlp_http

try:
    from trackgate import rsgi
except ImportError:  # a build from before RSGI
    rsgi = None  # type: ignore[assignment]

N = 20000
BODY = b"x" * 7542


async def one() -> None:
    messages = [{"type": "http.request", "body": BODY, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop()

    headers = [(b"content-length", b"7542")]
    request = asgi.Request({"method": "POST", "path": "/v1/logs", "headers": headers}, receive)
    await request.body(1 << 20, 30.0)


async def discard(message: Any) -> None:
    pass


async def bench_body() -> float:
    t = time.process_time()
    for _ in range(N):
        await one()
    return (time.process_time() - t) / N * 1e6


async def bench_send() -> float:
    full: Any = otlp_http.FULL_SUCCESS["logs", "protobuf"]
    make: Callable[[], asgi.Response]
    if isinstance(full, bytes):  # builds before the prebuilt answer: a Response per request

        def make() -> asgi.Response:
            return asgi.Response(200, full, "application/x-protobuf")
    else:

        def make() -> asgi.Response:
            return full  # type: ignore[no-any-return]

    t = time.process_time()
    for _ in range(N):
        await make().send(discard)
    return (time.process_time() - t) / N * 1e6


class Headers:
    """granian's RSGIHeaders, as far as the request path uses them."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self._items if k == name]

    def items(self) -> list[tuple[str, str]]:
        return self._items


class Scope:
    method = "POST"
    path = "/v1/logs"
    client = "127.0.0.1:5000"
    query_string = ""
    http_version = "1.1"
    headers = Headers([("host", "x"), ("content-type", "application/x-protobuf"), ("content-length", "7542")])


class Protocol:
    async def __call__(self) -> bytes:
        return BODY

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        pass


async def bench_rsgi() -> float:
    """An RSGI request's Request, body() and answer (what replaces the ASGI body and send)."""
    full: Any = otlp_http.FULL_SUCCESS["logs", "protobuf"]
    scope, protocol = Scope(), Protocol()
    t = time.process_time()
    for _ in range(N):
        request = rsgi.request(scope, protocol)  # type: ignore[arg-type]
        request.header("content-type")
        await request.body(1 << 20, 30.0)
        request.header("content-encoding")
        full.answer(protocol)
    return (time.process_time() - t) / N * 1e6


async def main() -> None:
    body = min([await bench_body() for _ in range(7)])
    send = min([await bench_send() for _ in range(7)])
    label = sys.argv[1] if len(sys.argv) > 1 else "this build"
    print(f"{label}: ASGI body() {body:.2f} us/request, full-success send {send:.2f} us/request")
    if rsgi is not None:
        whole = min([await bench_rsgi() for _ in range(7)])
        print(f"{label}: RSGI request, two headers, body() and answer {whole:.2f} us/request")


if __name__ == "__main__":
    asyncio.run(main())
