"""The HTTP pieces the app needs, whatever the server interface: a request with a bounded body
reader, responses, the worker's body budget and deadlines. The request gets its headers and body
through a small per-interface `Reader` (`AsgiReader` here, `rsgi.RsgiReader` for granian's RSGI),
and a response can be sent either way, so the receivers have one code path."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from trackgate import telemetry

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# How much of a refused body is read and thrown away before answering 413 (see Request.body).
DRAIN_LIMIT = 8 * 1024 * 1024
# A body refused for want of budget is read and thrown away only when this small (else the
# connection is closed): a cheap way to let the client read the 503.
BUDGET_DRAIN_LIMIT = 64 * 1024
# A body of undeclared length (chunked) reserves budget in steps of at least this.
RESERVE_STEP = 64 * 1024
# Seconds a client refused for want of budget is asked to wait.
RETRY_AFTER_BUSY_S = "1"


class BodyRefused(Exception):
    """A request body the worker will not take: the HTTP status and headers of the answer, the
    same for every receiver (each words the body of its answer in its own protocol)."""

    status = 400

    @property
    def headers(self) -> list[tuple[str, str]]:
        return []


class BodyTimeout(BodyRefused):
    status = 408

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"request body not received within {timeout_s:g}s")
        self.timeout_s = timeout_s

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("Connection", "close")]


class BodyTooLarge(BodyRefused):
    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"body exceeds the limit of {limit} bytes")
        self.limit = limit


class ClientDisconnected(Exception):
    pass


class BudgetSpent(BodyRefused):
    """The worker's budget for buffered request bodies is spent. `drained`: the body was read and
    dropped, so the connection may stay open; else the answer must close it."""

    status = 503

    def __init__(self, limit: int, drained: bool) -> None:
        super().__init__(
            f"request bodies in flight use this worker's budget of {limit} bytes (server.max_inflight_bytes); "
            "retry later"
        )
        self.limit = limit
        self.drained = drained

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", RETRY_AFTER_BUSY_S)] + ([] if self.drained else [("Connection", "close")])


class Budget(Protocol):
    """What a request needs of the worker's budget: `BodyBudget`, or the core's `InflightBudget`
    (shared with the OTLP/HTTP front under `trackgate serve`)."""

    @property
    def limit(self) -> int: ...

    def reserve(self, size: int) -> bool: ...

    def release(self, size: int) -> None: ...


class BodyBudget:
    """Bytes of request bodies buffered at once in one worker (`server.max_inflight_bytes`).

    Requests reserve before they buffer (a declared Content-Length at once, a chunked body as it
    grows) and release when they are done. Only the event loop's thread touches it: no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
        self.used -= size


class ClientSlots:
    """Requests at once per client address, up to `limit` each (for requests not yet authenticated)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held: dict[str, int] = {}

    def enter(self, client: str) -> bool:
        count = self.held.get(client, 0)
        if count >= self.limit:
            return False
        self.held[client] = count + 1
        return True

    def leave(self, client: str) -> None:
        count = self.held.get(client, 0) - 1
        if count > 0:
            self.held[client] = count
        else:
            self.held.pop(client, None)


# The content types answers use, encoded once.
_CONTENT_TYPES = {
    t: t.encode()
    for t in ("application/x-protobuf", "application/json", "text/plain; charset=utf-8", "text/plain; version=0.0.4")
}


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def start_message(self) -> Message:
        content_type = _CONTENT_TYPES.get(self.content_type)
        if content_type is None:
            content_type = self.content_type.encode()
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(self.body))]
        if self.headers:
            headers.extend((k.lower().encode(), v.encode()) for k, v in self.headers)
        return {"type": "http.response.start", "status": self.status, "headers": headers}

    async def send(self, send: Send) -> None:
        """Sends it over ASGI."""
        await send(self.start_message())
        await send({"type": "http.response.body", "body": self.body})

    def rsgi_headers(self) -> list[tuple[str, str]]:
        # No content-length: granian sets it from the body.
        if self.headers:
            return [("content-type", self.content_type), *self.headers]
        return [("content-type", self.content_type)]

    def answer(self, protocol: Answerable) -> None:
        """Sends it over RSGI (one synchronous call: granian writes it)."""
        protocol.response_bytes(self.status, self.rsgi_headers(), self.body)


class Answerable(Protocol):
    """What `Response.answer` needs of an RSGI HTTP protocol object."""

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None: ...


class FixedResponse(Response):
    """A response sent unchanged many times (the full-success answer): its ASGI messages and
    RSGI header list are built once (the server only reads them)."""

    def __init__(self, status: int, body: bytes, content_type: str) -> None:
        super().__init__(status, body, content_type)
        self._start = self.start_message()
        self._body = {"type": "http.response.body", "body": body}
        self._rsgi_headers = self.rsgi_headers()

    async def send(self, send: Send) -> None:
        await send(self._start)
        await send(self._body)

    def answer(self, protocol: Answerable) -> None:
        protocol.response_bytes(self.status, self._rsgi_headers, self.body)


class BodyDeadlines:
    """The body deadlines of one event loop's requests, kept by one timer.

    A `loop.call_at` per request costs a heap push and a cancel (whose handle stays in the heap)
    for a deadline that almost never passes. Here a request adds itself to a dict and removes
    itself when its body is in; the one timer fires at the earliest deadline it knows of, cancels
    the tasks whose deadline passed, and sets itself again for the earliest left. All requests
    of a loop share one timeout, so a new deadline is never earlier than the timer's.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.deadlines: dict[asyncio.Task[Any], float] = {}
        self.cut: set[asyncio.Task[Any]] = set()  # tasks cancelled because their deadline passed
        self.timer: asyncio.TimerHandle | None = None
        self.due = 0.0  # when the timer fires

    def add(self, task: asyncio.Task[Any], timeout_s: float) -> None:
        deadline = self.loop.time() + timeout_s
        self.deadlines[task] = deadline
        if self.timer is None or deadline < self.due:
            self._arm(deadline)

    def remove(self, task: asyncio.Task[Any]) -> None:
        self.deadlines.pop(task, None)
        self.cut.discard(task)

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """Whether `task` was cancelled because its deadline passed."""
        return task in self.cut

    def _arm(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_at(when, self._sweep)
        self.due = when

    def _sweep(self) -> None:
        self.timer = None
        now = self.loop.time()
        for task, deadline in list(self.deadlines.items()):
            if deadline <= now:
                del self.deadlines[task]
                self.cut.add(task)
                task.cancel()
        if self.deadlines:
            self._arm(min(self.deadlines.values()))


# Deadlines per event loop: a worker has one; tests may run several loops one after another.
_DEADLINES: dict[asyncio.AbstractEventLoop, BodyDeadlines] = {}


def body_deadlines() -> BodyDeadlines:
    """The running loop's body deadlines."""
    loop = asyncio.get_running_loop()
    deadlines = _DEADLINES.get(loop)
    if deadlines is None:
        for stale in [lp for lp in _DEADLINES if lp.is_closed()]:
            del _DEADLINES[stale]
        deadlines = _DEADLINES[loop] = BodyDeadlines(loop)
    return deadlines


class Reader(Protocol):
    """One request as a server interface gives it: headers, peer, query, and the body."""

    def header(self, name: str) -> str | None:
        """A header by lower-case name, repeats folded into one comma-separated value."""
        ...

    def header_map(self) -> dict[str, str]:
        """Every header by lower-case name, repeats folded."""
        ...

    @property
    def client_host(self) -> str: ...

    @property
    def query_string(self) -> str: ...

    @property
    def collects(self) -> bool:
        """Whether `whole` can be called: the server reads the whole body in one call (only
        before any `piece`)."""
        ...

    async def piece(self) -> tuple[bytes, bool]:
        """The next piece of the body and whether more follows; ClientDisconnected when the body
        cannot be read (the client left, or broken framing)."""
        ...

    async def whole(self) -> bytes:
        """The whole body, read by the server (only when its length was declared and reserved)."""
        ...


class AsgiReader:
    """An ASGI request: the scope's header list and `receive` messages."""

    __slots__ = ("_raw", "receive", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        self._raw: dict[bytes, bytes] | None = None  # headers by lower-case name, as received

    def header(self, name: str) -> str | None:
        value = (self._raw or self._raw_headers()).get(name.encode("latin-1"))
        return None if value is None else value.decode("latin-1")

    def header_map(self) -> dict[str, str]:
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in self._raw_headers().items()}

    def _raw_headers(self) -> dict[bytes, bytes]:
        """The headers as bytes by lower-case name, in one pass over the scope's list (a request
        reads three or four of them). Repeated headers fold into one comma-separated value, as
        HTTP allows."""
        if self._raw is None:
            raw: dict[bytes, bytes] = {}
            for key, value in self.scope.get("headers", ()):
                name = key.lower()
                raw[name] = raw[name] + b", " + value if name in raw else value
            self._raw = raw
        return self._raw

    @property
    def client_host(self) -> str:
        client = self.scope.get("client")
        return str(client[0]) if client else ""

    @property
    def query_string(self) -> str:
        return bytes(self.scope.get("query_string", b"")).decode("latin-1")

    @property
    def collects(self) -> bool:
        return False

    async def piece(self) -> tuple[bytes, bool]:
        message = await self.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        return message.get("body", b""), message.get("more_body", False)

    async def whole(self) -> bytes:
        raise NotImplementedError("ASGI bodies arrive as messages: read them with piece()")


class Request:
    """One HTTP request: its headers, and its body read within the limit, the deadline and the
    worker's budget. `Request(scope, receive, budget)` is an ASGI request; `Request.over` takes
    any interface's `Reader`."""

    __slots__ = ("_budget", "_chunks", "_complete", "_declared_length", "_headers", "_reader", "_received",
                 "_reserved", "method", "path")  # fmt: skip

    def __init__(self, scope: Scope, receive: Receive, budget: Budget | None = None) -> None:
        self._setup(scope["method"], scope["path"], AsgiReader(scope, receive), budget)

    @classmethod
    def over(cls, method: str, path: str, reader: Reader, budget: Budget | None = None) -> Request:
        request = cls.__new__(cls)
        request._setup(method, path, reader, budget)
        return request

    def _setup(self, method: str, path: str, reader: Reader, budget: Budget | None) -> None:
        self.method = method
        self.path = path
        self._reader = reader
        self._headers: dict[str, str] | None = None
        self._declared_length: int | None = -1  # -1: not looked up yet
        self._budget = budget
        self._reserved = 0  # bytes of the budget this request holds
        self._chunks: list[bytes] = []  # the body received so far
        self._received = 0
        self._complete = False

    @property
    def headers(self) -> dict[str, str]:
        """Every header by lower-case name (built on first use: a request reads only a few)."""
        if self._headers is None:
            self._headers = self._reader.header_map()
        return self._headers

    def header(self, name: str, default: str = "") -> str:
        """One header (`name` in lower case)."""
        value = self._reader.header(name)
        return default if value is None else value

    @property
    def client_host(self) -> str:
        """The peer's address (no proxy header is trusted: behind a proxy, the proxy's)."""
        return self._reader.client_host

    @property
    def query_string(self) -> str:
        """The URL's query, undecoded (without the `?`)."""
        return self._reader.query_string

    @property
    def received(self) -> int:
        """Bytes of the body received so far."""
        return self._received

    @property
    def complete(self) -> bool:
        """Whether the whole body has been received."""
        return self._complete

    def buffered(self) -> bytes:
        """The body received so far."""
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""

    def release(self) -> None:
        """Drops the buffered body and gives its budget back (when the request is done)."""
        self._chunks = []
        if self._budget is not None and self._reserved:
            self._budget.release(self._reserved)
            self._reserved = 0

    async def read_chunk(self, limit: int) -> None:
        """Receives the next piece of the body into the buffer, reserving budget only for what
        arrived (for a request not authenticated yet, which must not claim its declared size)."""
        if self._complete:
            return
        declared = self._declared()
        if declared is not None and declared > limit:
            raise BodyTooLarge(limit)
        chunk, more = await self._reader.piece()
        self._take(chunk, more, limit)

    async def body(self, limit: int, timeout_s: float = 30.0) -> bytes:
        """The whole body within `timeout_s` (a client trickling it slower is cut off: BodyTimeout).

        The deadline is kept by the loop's `BodyDeadlines`, whose one timer cancels this task when
        it passes (no task per body, as `asyncio.wait_for` would create, and no timer per body);
        a body already received needs no deadline at all.
        """
        if self._complete:
            return self.buffered()
        task = asyncio.current_task()
        if task is None:  # not run as an asyncio task: no task to cancel
            try:
                return await asyncio.wait_for(self._body(limit), timeout_s)
            except TimeoutError:
                raise BodyTimeout(timeout_s) from None
        deadlines = body_deadlines()
        deadlines.add(task, timeout_s)
        try:
            return await self._body(limit)
        except asyncio.CancelledError:
            if deadlines.expired(task) and task.uncancel() == 0:
                raise BodyTimeout(timeout_s) from None
            raise
        finally:
            deadlines.remove(task)

    async def _body(self, limit: int) -> bytes:
        """Reads the rest of the body, refusing (before reading) a declared or (while reading) an
        actual excess, or a body the worker's budget has no room for (BudgetSpent).

        A refused body of modest size is read and discarded first, so the client gets to read
        the 413 (or 503) instead of a reset connection while it is still sending.
        """
        declared = self._declared()
        if declared is not None and declared > limit:
            if declared <= limit + DRAIN_LIMIT:
                await self._discard(DRAIN_LIMIT + limit)
            raise BodyTooLarge(limit)
        if declared is not None and not self._complete:
            try:
                self._reserve_up_to(declared)
            except BudgetSpent as exc:
                if declared - self._received > BUDGET_DRAIN_LIMIT:
                    raise
                await self._discard(BUDGET_DRAIN_LIMIT)
                raise BudgetSpent(exc.limit, drained=True) from None
            if not self._received and self._reader.collects:
                # Declared, within the limit and reserved: the server reads it all in one call.
                body = await self._reader.whole()
                if len(body) != declared:  # an HTTP/2 stream the client cancelled mid-body ends short
                    raise ClientDisconnected()
                self._chunks.append(body)
                self._received = len(body)
                self._complete = True
                return body
        while not self._complete:
            chunk, more = await self._reader.piece()
            try:
                self._take(chunk, more, limit)
            except BodyTooLarge:
                self._chunks = []
                if more:
                    await self._discard(DRAIN_LIMIT)
                raise
        return self.buffered()

    def _declared(self) -> int | None:
        if self._declared_length == -1:
            declared = self.header("content-length")
            self._declared_length = int(declared) if declared.isdigit() else None
        return self._declared_length

    def _take(self, chunk: bytes, more: bool, limit: int) -> None:
        if chunk:
            size = self._received + len(chunk)
            if size > limit:
                raise BodyTooLarge(limit)
            if size > self._reserved:
                self._reserve_up_to(min(max(size, self._reserved + RESERVE_STEP), limit))
            self._chunks.append(chunk)
            self._received = size
        if not more:
            self._complete = True

    def _reserve_up_to(self, size: int) -> None:
        if self._budget is None or size <= self._reserved:
            return
        if not self._budget.reserve(size - self._reserved):
            telemetry.HTTP_REFUSED.inc(reason="inflight_bytes")
            raise BudgetSpent(self._budget.limit, drained=False)
        self._reserved = size

    async def _discard(self, budget: int) -> None:
        while budget > 0:
            try:
                chunk, more = await self._reader.piece()
            except ClientDisconnected:
                return
            budget -= len(chunk)
            if not more:
                return
