"""The body deadline, in process: one timer per event loop cuts off only the requests whose body
is late, and a cancellation from elsewhere stays a cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from trackgate.asgi import BodyTimeout, Request, body_deadlines


def request(body: bytes | None) -> Request:
    """A request whose body arrives at once (`body`), or never (None)."""

    async def receive() -> dict[str, Any]:
        if body is None:
            await asyncio.Event().wait()
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"method": "POST", "path": "/", "headers": []}, receive)


def test_a_late_body_times_out_and_the_others_are_read() -> None:
    async def main() -> list[Any]:
        late = asyncio.create_task(request(None).body(1000, timeout_s=0.05))
        # A later, longer deadline: the timer sets itself again for it once the first passed.
        later = asyncio.create_task(request(None).body(1000, timeout_s=0.2))
        prompt = [asyncio.create_task(request(b"x" * n).body(1000, timeout_s=0.05)) for n in (1, 2, 3)]
        results = await asyncio.gather(late, later, *prompt, return_exceptions=True)
        assert not body_deadlines().deadlines, "every request left the deadlines"
        return results

    results = asyncio.run(main())
    assert isinstance(results[0], BodyTimeout) and results[0].timeout_s == 0.05
    assert isinstance(results[1], BodyTimeout) and results[1].timeout_s == 0.2
    assert results[2:] == [b"x", b"xx", b"xxx"]


def test_a_cancellation_from_elsewhere_is_not_a_timeout() -> None:
    async def main() -> None:
        task = asyncio.create_task(request(None).body(1000, timeout_s=30.0))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not body_deadlines().deadlines

    asyncio.run(main())


def test_each_event_loop_has_its_own_deadlines() -> None:
    # Tests (and a worker restarted in process) run loops one after another: a deadline of a
    # closed loop must not leak into the next.
    for _ in range(2):
        with pytest.raises(BodyTimeout):
            asyncio.run(request(None).body(1000, timeout_s=0.01))
