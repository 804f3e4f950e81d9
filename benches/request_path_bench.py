"""Per-request cost of Request.body (deadline included) and the full-success Response.send, in
process: N requests in one task, best of 5, microseconds per request."""
import asyncio, sys, time
from trackgate import asgi
from trackgate.receivers import otlp_http

N = 20000
BODY = b"x" * 7542

async def one() -> None:
    msgs = [{"type": "http.request", "body": BODY, "more_body": False}]
    async def receive():
        return msgs.pop()
    req = asgi.Request({"method": "POST", "path": "/v1/logs", "headers": [(b"content-length", b"7542")]}, receive)
    await req.body(1 << 20, 30.0)

async def send(message) -> None:
    pass

async def bench_body() -> float:
    t = time.process_time()
    for _ in range(N):
        await one()
    return (time.process_time() - t) / N * 1e6

async def bench_send() -> float:
    full = otlp_http.FULL_SUCCESS["logs", "protobuf"]
    if isinstance(full, bytes):  # before: a Response per request
        make = lambda: asgi.Response(200, full, "application/x-protobuf")
    else:
        make = lambda: full
    t = time.process_time()
    for _ in range(N):
        await make().send(send)
    return (time.process_time() - t) / N * 1e6

async def main() -> None:
    body = min([await bench_body() for _ in range(7)])
    snd = min([await bench_send() for _ in range(7)])
    print(f"{sys.argv[1]}: body() {body:.2f} us/request, full-success send {snd:.2f} us/request")

asyncio.run(main())
