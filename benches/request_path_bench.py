"""Per-request Python cost of the request path's fixed parts, in process: `Request.body` (with its
deadline) for a 7,542-byte body that arrives in one piece, and sending the full-success answer.
N requests in one task, best of 7, CPU microseconds per request (process time, so that other
processes on the machine count less).

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


async def main() -> None:
    body = min([await bench_body() for _ in range(7)])
    send = min([await bench_send() for _ in range(7)])
    label = sys.argv[1] if len(sys.argv) > 1 else "this build"
    print(f"{label}: body() {body:.2f} us/request, full-success send {send:.2f} us/request")


if __name__ == "__main__":
    asyncio.run(main())
