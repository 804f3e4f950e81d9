"""Shared fixtures: a stand-in OTLP upstream, and the gateway started through its CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from sentry_upstream import SentryUpstream
from upstream import Upstream


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[object]:
    """A real redis-server (Debian's package, installed by `make test`), stopped after the test."""
    from redis_server import RedisServer

    try:
        server = RedisServer(tmp_path, free_port())
    except FileNotFoundError:
        pytest.skip("redis-server is not installed and could not be installed (make redis-server)")
    yield server
    server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process pipelines keep their queue under ./trackgate-data: make that the test's own dir."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.close()


@pytest.fixture
def sentry_upstream() -> Iterator[SentryUpstream]:
    stand_in = SentryUpstream()
    yield stand_in
    stand_in.close()
    assert not stand_in.errors  # everything the gateway sent parsed as an envelope


class Gateway:
    """`trackgate serve` in a subprocess (its own process group: granian runs worker processes)."""

    def __init__(self, tmp: Path, config: str, env: dict[str, str] | None = None, workers: int = 1) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_port = free_port()  # never the default 4317: tests run beside each other
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.config_path = tmp / "trackgate.toml"
        self.config_path.write_text(config)
        self.log_path = tmp / "gateway.log"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("OTEL_", "DASH0_", "TRACKGATE_", "REDIS_URL", "METRICS_COLLECTION_INTERVAL"))
        }
        self.env.update(env or {})
        self.env["NO_PROXY"] = "*"
        self.workers = workers
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the gateway
        self.start()

    def start(self, workers: int | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trackgate", "serve", "--config", str(self.config_path),
             "--listen", f"127.0.0.1:{self.port}", "--grpc-listen", self.grpc_target,
             "--workers", str(workers or self.workers)],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.tmp, start_new_session=True,
        )  # fmt: skip
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"gateway did not become healthy:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL to every process of the gateway: no shutdown code runs."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # no worker outlives the test
        return self.proc.returncode

    def close(self) -> None:
        self.stop()
        self._log.close()


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[type[Gateway]]:
    started: list[Gateway] = []

    class Factory(Gateway):
        def __init__(self, config: str = "", env: dict[str, str] | None = None, workers: int = 1) -> None:
            super().__init__(tmp_path, config, env, workers)
            started.append(self)

    yield Factory
    for gw in started:
        gw.close()


def dash0_config(upstream: Upstream, extra: str = "", batch: str = "", **retry: float) -> str:
    """A config exporting to the stand-in as the Dash0 exporter, with fast batching and retries."""
    retry_cfg = {"initial_interval_s": 0.2, "max_interval_s": 1.0, "max_elapsed_s": 30.0, **retry}
    retry_line = ", ".join(f"{k} = {v}" for k, v in retry_cfg.items())
    return f"""
[batch]
max_delay_ms = 50
{batch}

[exporters.dash0]
endpoint = "{upstream.url}"
token = "test-token-123"
dataset = "jobs"
timeout_s = 2.0
retry = {{ {retry_line} }}
{extra}
"""
