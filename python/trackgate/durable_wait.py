"""Awaiting the fsync that makes a request durable, without a thread per request.

Under `fsync = "always"` the core appends a request's frames without syncing and returns; its
syncer thread fsyncs every append waiting at once (group commit) and wakes the event loop once
per group: it leaves the outcomes in the notifier and writes a byte to a socket the loop watches
(`loop.add_reader`), so the syncer never takes the GIL away from the loop. A loop without
`add_reader` gets them through `loop.call_soon_threadsafe` from the syncer thread instead. Each
request awaits a future keyed by a token it chose before the ingest call, so an fsync that
completes before the call returns is never missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from trackgate._core import DurableNotifier

# Waits per event loop: a worker has one; tests may run several loops one after another.
_BY_LOOP: dict[asyncio.AbstractEventLoop, LoopWaits] = {}


class LoopWaits:
    """The futures of one event loop's requests waiting for fsync, and the notifier the core
    tells about them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.futures: dict[int, asyncio.Future[None]] = {}
        self.tokens = itertools.count(1)
        self.notifier = DurableNotifier()
        try:
            loop.add_reader(self.notifier.fileno(), self._drain)
        except NotImplementedError:
            self.notifier = DurableNotifier(self._notify)

    def _drain(self) -> None:
        """On the loop: the outcomes of the group commits since the last wakeup."""
        done, failed = self.notifier.drain()
        self._settle(done, failed)

    def _notify(self, done: list[int], failed: list[tuple[int, BaseException]]) -> None:
        """On the core's syncer thread: one hand-over to the loop per group commit."""
        # A closed loop raises RuntimeError: its requests are gone.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._settle, done, failed)

    def _settle(self, done: list[int], failed: list[tuple[int, BaseException]]) -> None:
        futures = self.futures
        for token in done:
            future = futures.pop(token, None)
            if future is not None and not future.done():
                future.set_result(None)
        for token, exc in failed:
            future = futures.pop(token, None)
            if future is not None and not future.done():
                future.set_exception(exc)


def loop_waits() -> LoopWaits:
    """The running loop's waits."""
    loop = asyncio.get_running_loop()
    waits = _BY_LOOP.get(loop)
    if waits is None:
        for stale in [lp for lp in _BY_LOOP if lp.is_closed()]:
            del _BY_LOOP[stale]
        waits = _BY_LOOP[loop] = LoopWaits(loop)
    return waits


class DurableWait:
    """One request's wait for the fsyncs covering what it queued (one per ingest call).

    `token()` (on the loop's thread) before each ingest call, `keep(token, waiting)` with what the
    call returned (from any thread), then `await wait()`: it returns once every fsync ran, or
    raises the first failure (OSError for a failed fsync, PipelineClosed at shutdown).
    """

    __slots__ = ("_pending", "_waits", "notifier")

    def __init__(self) -> None:
        self._waits = loop_waits()
        self.notifier = self._waits.notifier
        self._pending: dict[int, asyncio.Future[None]] = {}

    def token(self) -> int:
        waits = self._waits
        token = next(waits.tokens)
        future = waits.loop.create_future()
        waits.futures[token] = future
        self._pending[token] = future
        return token

    def keep(self, token: int, waiting: bool) -> None:
        if not waiting:
            self._pending.pop(token, None)
            self._waits.futures.pop(token, None)

    async def wait(self) -> None:
        try:
            for future in self._pending.values():
                await future
        finally:
            self.close()

    def close(self) -> None:
        """Forgets the tokens (also for a request that failed or was cancelled before `wait`)."""
        futures = self._waits.futures
        for token, future in self._pending.items():
            futures.pop(token, None)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: a second failure after the first is not logged
        self._pending = {}
