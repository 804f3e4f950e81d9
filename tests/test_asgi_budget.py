"""The request body reader's bookkeeping, in process: what a body reserves of the worker's budget,
when it is refused, and that it is all given back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from trackgate.asgi import (
    RESERVE_STEP,
    BodyBudget,
    BodyTooLarge,
    BudgetSpent,
    ClientDisconnected,
    ClientSlots,
    Request,
)


def request(chunks: list[bytes], budget: BodyBudget, content_length: int | None = None, ends: bool = True) -> Request:
    """A request whose body arrives as `chunks` (unless `ends`, the client leaves after them)."""
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": c, "more_body": i + 1 < len(chunks) or not ends} for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    return Request({"method": "POST", "path": "/", "headers": headers}, receive, budget)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_declared_length_is_reserved_up_front_and_released() -> None:
    budget = BodyBudget(1000)
    req = request([b"a" * 300, b"b" * 300], budget, content_length=600)
    assert run(req.body(10_000)) == b"a" * 300 + b"b" * 300
    assert budget.used == 600
    req.release()
    assert budget.used == 0
    req.release()  # twice is harmless
    assert budget.used == 0


def test_declared_length_over_what_is_left_is_refused_before_reading() -> None:
    budget = BodyBudget(1000)
    assert budget.reserve(900)
    big = request([b"x" * 200_000], budget, content_length=200_000)
    with pytest.raises(BudgetSpent) as err:
        run(big.body(1_000_000))
    assert not err.value.drained and "max_inflight_bytes" in str(err.value)
    assert big.received == 0 and budget.used == 900
    # A small refused body is read and dropped, so the connection can carry the answer.
    small = request([b"y" * 200], budget, content_length=200)
    with pytest.raises(BudgetSpent) as err:
        run(small.body(1_000_000))
    assert err.value.drained
    big.release()
    small.release()
    assert budget.used == 900


def test_chunked_body_reserves_as_it_grows() -> None:
    budget = BodyBudget(3 * RESERVE_STEP)
    req = request([b"a" * 10, b"b" * RESERVE_STEP], budget)
    assert run(req.body(10 * RESERVE_STEP)) == b"a" * 10 + b"b" * RESERVE_STEP
    assert RESERVE_STEP + 10 <= budget.used <= 2 * RESERVE_STEP + 10
    req.release()
    over = request([b"c" * RESERVE_STEP] * 4, budget)
    with pytest.raises(BudgetSpent):
        run(over.body(10 * RESERVE_STEP))
    over.release()
    assert budget.used == 0


def test_reading_piece_by_piece_reserves_only_what_arrived() -> None:
    budget = BodyBudget(10 * RESERVE_STEP)
    rest = b"r" * (5 * RESERVE_STEP - 8)
    req = request([b"{", b'"a":1}\n', rest], budget, content_length=5 * RESERVE_STEP)
    run(req.read_chunk(10 * RESERVE_STEP))
    assert req.buffered() == b"{" and not req.complete
    assert budget.used == RESERVE_STEP  # not the declared 5 steps
    run(req.read_chunk(10 * RESERVE_STEP))
    assert req.buffered() == b'{"a":1}\n' and req.received == 8
    # The rest continues where the pieces stopped (and now reserves the declared length).
    assert run(req.body(10 * RESERVE_STEP)) == b'{"a":1}\n' + rest
    assert budget.used == 5 * RESERVE_STEP
    req.release()
    assert budget.used == 0


def test_disconnect_while_reading() -> None:
    budget = BodyBudget(10_000)
    req = request([b"x" * 100], budget, content_length=1000, ends=False)
    with pytest.raises(ClientDisconnected):
        run(req.body(10_000))
    req.release()
    assert budget.used == 0


def test_over_the_limit_while_reading_piece_by_piece() -> None:
    req = request([b"x" * 100, b"y" * 100], BodyBudget(10_000))
    run(req.read_chunk(150))
    with pytest.raises(BodyTooLarge):
        run(req.read_chunk(150))
    declared = request([b"x"], BodyBudget(10_000), content_length=1000)
    with pytest.raises(BodyTooLarge):
        run(declared.read_chunk(150))


def test_client_slots() -> None:
    slots = ClientSlots(2)
    assert slots.enter("a") and slots.enter("a") and not slots.enter("a")
    assert slots.enter("b")
    slots.leave("a")
    assert slots.enter("a") and not slots.enter("a")
    for _ in range(3):
        slots.leave("a")
    slots.leave("b")
    assert slots.held == {}


def test_headers_are_read_by_lower_case_name_with_repeats_folded() -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    raw = [(b"Content-Type", b"application/json"), (b"x-tag", b"a"), (b"X-Tag", b"b"), (b"host", b"h\xe9")]
    req = Request({"method": "POST", "path": "/", "headers": raw}, receive)
    assert req.header("content-type") == "application/json"
    assert req.header("x-tag") == "a, b"
    assert req.header("host") == "h\xe9"  # latin-1, as HTTP header bytes
    assert req.header("content-encoding") == "" and req.header("content-encoding", "none") == "none"
    assert req.headers == {"content-type": "application/json", "x-tag": "a, b", "host": "h\xe9"}


class WholeReader:
    """An interface that hands a declared body over in one call (as granian's RSGI does)."""

    collects = True
    client_host = query_string = ""

    def __init__(self, body: bytes, declared: int) -> None:
        self.body, self.declared = body, declared

    def header(self, name: str) -> str | None:
        return str(self.declared) if name == "content-length" else None

    def header_map(self) -> dict[str, str]:
        return {"content-length": str(self.declared)}

    async def whole(self) -> bytes:
        return self.body

    async def piece(self) -> tuple[bytes, bool]:
        raise AssertionError("a declared body within budget is read in one call")


def test_a_body_read_in_one_call_is_reserved_first_and_must_be_whole() -> None:
    budget = BodyBudget(1000)
    req = Request.over("POST", "/", WholeReader(b"x" * 600, 600), budget)
    assert run(req.body(10_000)) == b"x" * 600 and req.complete
    assert budget.used == 600
    req.release()
    short = Request.over("POST", "/", WholeReader(b"x" * 4, 600), budget)  # a stream cancelled mid-body
    with pytest.raises(ClientDisconnected):
        run(short.body(10_000))
    short.release()
    assert budget.used == 0
    with pytest.raises(BudgetSpent):  # over what is left: refused before the one call
        run(Request.over("POST", "/", WholeReader(b"x" * 200_000, 200_000), budget).body(1_000_000))
