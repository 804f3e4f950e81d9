"""The app stays an ASGI app (`trackgate serve` uses RSGI): the same routes, limits and answers
through `App.__call__`, in process and on granian's ASGI interface (`create_app` as a factory)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from conftest import free_port
from trackgate import config as config_mod
from trackgate.app import App

CONFIG = '[receivers.otlp_grpc]\nenabled = false\n[server]\nmax_body_bytes = 1000\n[storage]\ndir = "{dir}"\n'


def logs_body(text: str = "hello") -> bytes:
    msg = ExportLogsServiceRequest()
    msg.resource_logs.add().scope_logs.add().log_records.add().body.string_value = text
    return msg.SerializeToString()


async def call(
    app: App, method: str, path: str, pieces: list[bytes], headers: list[tuple[bytes, bytes]], leaves: bool = False
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One ASGI HTTP call; the body arrives as `pieces` (then, with `leaves`, the client goes)."""
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": p, "more_body": i + 1 < len(pieces) or leaves} for i, p in enumerate(pieces)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": headers, "query_string": b""}
    await app(scope, receive, send)
    start, body = sent
    return start["status"], dict(start["headers"]), body["body"]


def test_the_asgi_entry_serves_requests_in_process(tmp_path: Path) -> None:
    path = tmp_path / "trackgate.toml"
    path.write_text(CONFIG.format(dir=tmp_path / "data"))
    app = App(config_mod.load(path, env={}))
    body = logs_body()
    pb = [(b"content-type", b"application/x-protobuf")]

    async def main() -> None:
        status, headers, answer = await call(app, "POST", "/v1/logs", [body[:3], body[3:]], pb)
        assert status == 200 and headers[b"content-type"] == b"application/x-protobuf", answer
        status, headers, _ = await call(app, "GET", "/v1/logs", [b""], [])
        assert status == 405 and headers[b"allow"] == b"POST"
        status, _, answer = await call(app, "POST", "/v1/logs", [b"\x00" * 600, b"\x00" * 600], pb)
        assert status == 413 and b"1000" in answer
        status, _, answer = await call(app, "POST", "/v1/logs", [b"\x0a"], pb, leaves=True)
        assert status == 400 and b"could not be read" in answer
        status, _, answer = await call(app, "GET", "/healthz", [b""], [])
        assert (status, answer) == (200, b"ok\n")
        await app.stop()

    try:
        asyncio.run(main())
    finally:
        app.close()  # twice is harmless: what is closed stays closed
    assert app.pipeline is not None and app.pipeline.core.stats()["logs_accepted_records"] == 1
    assert app.budget.used == 0


def test_create_app_is_an_asgi_factory_for_granian(tmp_path: Path) -> None:
    config = tmp_path / "trackgate.toml"
    config.write_text(CONFIG.format(dir=tmp_path / "data"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACKGATE_", "OTEL_", "DASH0_"))}
    env["TRACKGATE_CONFIG"] = str(config)
    argv = [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--port", str(port), "--no-ws",
            "trackgate.app:create_app"]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.communicate()[0].decode(errors="replace")[-3000:]
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                    break
            except OSError:
                assert time.monotonic() < deadline, "granian did not serve the ASGI app"
                time.sleep(0.05)
        request = urllib.request.Request(
            url + "/v1/logs", data=logs_body(), headers={"Content-Type": "application/x-protobuf"}
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-protobuf\r\n"
                b"Transfer-Encoding: chunked\r\n\r\nzz\r\n"
            )
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 400") and b"could not be read" in answer, answer[:300]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out, out[-3000:]


def test_logs_carrying_events_are_ingested_off_the_event_loop(tmp_path: Path, redis_server: Any) -> None:
    """With the events tap on, a logs ingest queues the events on the bus and waits for its fsync
    inside the call: the app path runs it in a thread, even for a small plain body."""
    path = tmp_path / "trackgate.toml"
    path.write_text(
        CONFIG.format(dir=tmp_path / "data").replace("max_body_bytes = 1000", "max_body_bytes = 100000")
        + f'[exporters.redis]\nurl = "{redis_server.url}"\n'
    )
    app = App(config_mod.load(path, env={}))
    app.start()
    assert app.otlp.taps_events and app.fluent.taps_events and app.sentry.taps_events
    threads: list[bool] = []
    real_ingest = app.otlp.ingest

    def ingest(*args: Any) -> Any:
        threads.append(threading.current_thread() is threading.main_thread())
        return real_ingest(*args)

    app.otlp.ingest = ingest  # type: ignore[method-assign]
    msg = ExportLogsServiceRequest()
    record = msg.resource_logs.add().scope_logs.add().log_records.add()
    record.body.string_value = "job done"
    for key, value in (("event_type", "job_completed"), ("job_id", "j-loop")):
        attr = record.attributes.add()
        attr.key, attr.value.string_value = key, value
    pb = [(b"content-type", b"application/x-protobuf")]

    plain = ExportLogsServiceRequest()
    plain.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "an ordinary line"

    async def main() -> None:
        status, _, answer = await call(app, "POST", "/v1/logs", [msg.SerializeToString()], pb)
        assert status == 200, answer
        # Logs that cannot carry an event stay on the loop: nothing of the tap can block them.
        status, _, answer = await call(app, "POST", "/v1/logs", [plain.SerializeToString()], pb)
        assert status == 200, answer
        await app.stop()

    try:
        asyncio.run(main())
    finally:
        app.close()
    assert threads == [False, True]  # asyncio.run's loop is on the main thread
    entries = redis_server.client().xrange("trackgate:events")
    assert [fields["job_id"] for _, fields in entries] == ["j-loop"]
