"""Requests await the group fsync that covers them on the event loop, without a thread per
request. (A failed fsync answering 503 is in test_disk_faults; kill/restart in test_durability.)"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from trackgate import Pipeline
from trackgate.asgi import Request
from trackgate.config import Config, StorageConfig
from trackgate.durable_wait import DurableWait, loop_waits
from trackgate.receivers.otlp_http import OtlpHttpReceiver

# A guard against hanging, not a timing check.
HANG_S = 30.0


def logs(text: str) -> bytes:
    msg = ExportLogsServiceRequest()
    msg.resource_logs.add().scope_logs.add().log_records.add().body.string_value = text
    return msg.SerializeToString()


def pipeline(tmp_path: Path, **storage: Any) -> Pipeline:
    return Pipeline(Config(storage=StorageConfig(dir=str(tmp_path), **storage)))


async def ingest_and_wait(p: Pipeline, text: str) -> bool:
    wait = DurableWait()
    try:
        result = p.ingest("logs", logs(text), wait=wait)
        await asyncio.wait_for(wait.wait(), HANG_S)
    finally:
        wait.close()
    return result.waiting


def test_concurrent_requests_each_await_the_fsync_that_covers_them(tmp_path: Path) -> None:
    p = pipeline(tmp_path)
    try:
        assert p.defers_sync and not p.blocking_ingest

        async def main() -> list[bool]:
            waiting = await asyncio.gather(*(ingest_and_wait(p, f"r{i}") for i in range(64)))
            assert loop_waits().futures == {}, "every settled wait was forgotten"
            return waiting

        assert asyncio.run(main()) == [True] * 64
        assert p.core.stats()["logs_accepted_records"] == 64
    finally:
        p.close(0.0)


@pytest.mark.parametrize("storage", [{"fsync": "never"}, {"queue": "memory"}])
def test_without_an_fsync_per_request_nothing_is_awaited(tmp_path: Path, storage: dict[str, str]) -> None:
    p = pipeline(tmp_path, **storage)
    try:
        assert not p.defers_sync
        assert asyncio.run(ingest_and_wait(p, "x")) is False
    finally:
        p.close(0.0)


def test_the_otlp_receiver_waits_for_fsync_without_a_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_thread(*args: object, **kwargs: object) -> None:
        raise AssertionError("a small plain body must not be ingested in a thread")

    monkeypatch.setattr(asyncio, "to_thread", no_thread)
    p = pipeline(tmp_path)
    body = logs("hello")
    try:
        receiver = OtlpHttpReceiver(p, max_body_bytes=1 << 20)

        async def main() -> int:
            sent = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive() -> dict[str, Any]:
                return sent.pop(0)

            headers = [(b"content-type", b"application/x-protobuf"), (b"content-length", str(len(body)).encode())]
            request = Request({"method": "POST", "path": "/v1/logs", "headers": headers}, receive)
            response = await asyncio.wait_for(receiver.handle(request, "logs"), HANG_S)
            return response.status

        assert asyncio.run(main()) == 200
        assert p.core.stats()["logs_accepted_records"] == 1
    finally:
        p.close(0.0)


def test_a_request_gone_before_its_fsync_leaves_nothing_behind(tmp_path: Path) -> None:
    p = pipeline(tmp_path)
    try:

        async def main() -> None:
            wait = DurableWait()
            assert p.ingest("logs", logs("gone"), wait=wait).waiting
            wait.close()  # the client left: its future is dropped before the group lands
            # A later request still gets its answer once its own group lands.
            assert await ingest_and_wait(p, "next")
            assert loop_waits().futures == {}

        asyncio.run(main())
    finally:
        p.close(0.0)


class NoReaderLoop(asyncio.SelectorEventLoop):
    """A loop that cannot watch descriptors (as some asyncio-compatible loops cannot)."""

    def add_reader(self, *args: Any) -> None:
        raise NotImplementedError


@pytest.mark.parametrize("watches", [True, False], ids=["socket_wakeup", "threadsafe_callback"])
def test_both_wakeups_settle_every_request(tmp_path: Path, watches: bool) -> None:
    p = pipeline(tmp_path)
    loop = asyncio.SelectorEventLoop() if watches else NoReaderLoop()
    try:

        async def main() -> list[bool]:
            waiting = await asyncio.gather(*(ingest_and_wait(p, f"r{i}") for i in range(16)))
            # The socket wakeup is chosen where the loop can watch it; else the syncer's callback.
            assert (loop_waits().notifier.fileno() >= 0) is watches
            assert loop_waits().futures == {}
            return waiting

        assert loop.run_until_complete(main()) == [True] * 16
    finally:
        loop.close()
        p.close(0.0)
