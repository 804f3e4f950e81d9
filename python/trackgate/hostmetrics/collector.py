"""The collector: host (psutil) and GPU (NVML) samples as one OTLP metrics request, and the
gateway's background thread that feeds them into the pipeline."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from trackgate.hostmetrics.gpu import GpuCollector, GpuMode
from trackgate.hostmetrics.host import HostCollector
from trackgate.hostmetrics.otlp import Attrs, Metric, encode_request

if TYPE_CHECKING:
    from trackgate.pipeline import Pipeline

log = logging.getLogger("trackgate.hostmetrics")

SCOPE_NAME = "trackgate.hostmetrics"


def resource_attributes(env: Mapping[str, str], service_name: str = "trackgate") -> Attrs:
    """host.name, machine.id (MACHINE_ID), worker.id (WORKER_ID), service.name (OTEL_SERVICE_NAME),
    and OTEL_RESOURCE_ATTRIBUTES underneath them."""
    from trackgate.config import parse_key_values

    attrs: dict[str, str] = {}
    if env.get("OTEL_RESOURCE_ATTRIBUTES"):
        attrs.update(parse_key_values(env["OTEL_RESOURCE_ATTRIBUTES"], "OTEL_RESOURCE_ATTRIBUTES"))
    attrs.setdefault("service.name", env.get("OTEL_SERVICE_NAME") or service_name)
    attrs["host.name"] = socket.gethostname()
    if env.get("MACHINE_ID"):
        attrs["machine.id"] = env["MACHINE_ID"]
    if env.get("WORKER_ID"):
        attrs["worker.id"] = env["WORKER_ID"]
    return tuple(sorted(attrs.items()))


class Collector:
    """`request()` makes one pass over the host and its GPUs and returns the encoded
    ExportMetricsServiceRequest."""

    def __init__(
        self,
        gpu: GpuMode = "auto",
        env: Mapping[str, str] | None = None,
        service_name: str = "trackgate",
        nvml: Any = None,
    ) -> None:
        import psutil

        from trackgate import __version__

        self.resource = resource_attributes(os.environ if env is None else env, service_name)
        self.scope = (SCOPE_NAME, __version__)
        self.host = HostCollector()
        self.gpu = GpuCollector(gpu, nvml=nvml)
        self.start_ns = int(psutil.boot_time() * 1e9)  # cumulative counters count from boot

    def collect(self) -> list[Metric]:
        return self.host.collect() + self.gpu.collect()

    def request(self) -> bytes:
        metrics = self.collect()
        return encode_request(self.resource, self.scope, metrics, time.time_ns(), self.start_ns)

    def close(self) -> None:
        self.gpu.close()


class HostLock:
    """One reporter per host and storage dir, whatever the number of worker processes: the worker
    that holds an exclusive flock on `<storage.dir>/hostmetrics.lock` reports; the others try again
    every interval, so another takes over when the holder exits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None

    def acquire(self) -> bool:
        if self._fh is not None:
            return True
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "ab")  # noqa: SIM115 - held while this process reports
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return False
        self._fh = fh
        return True

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the flock
            self._fh = None


class GatewayReporter(threading.Thread):
    """In the gateway: every `interval` seconds one collection pass, ingested into the pipeline's
    core and queue exactly as an OTLP/HTTP metrics request would be."""

    def __init__(self, pipeline: Pipeline, interval: float, gpu: GpuMode, lock_path: Path) -> None:
        super().__init__(name="trackgate-hostmetrics", daemon=True)
        self.pipeline = pipeline
        self.interval = interval
        self.gpu_mode = gpu
        self.lock = HostLock(lock_path)
        self.stopping = threading.Event()
        self.collector: Collector | None = None
        self.samples = 0
        self._ingest_failing = False

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stopping.is_set():
            if self.lock.acquire():
                self._pass()
            next_at += self.interval
            now = time.monotonic()
            if next_at < now:  # a slow pass or a suspended process: no burst to catch up
                next_at = now + self.interval
            self.stopping.wait(next_at - now)
        if self.collector is not None:
            self.collector.close()
        self.lock.release()

    def _pass(self) -> None:
        if self.collector is None:
            self.collector = Collector(self.gpu_mode)
            log.info(
                "host metrics reporting from this process", extra={"pid": os.getpid(), "interval_s": self.interval}
            )
        try:
            body = self.collector.request()
            self.pipeline.ingest("metrics", body, "protobuf")
        except Exception as exc:  # QueueFull, shutting down, ...: this sample is lost, said once
            if not self._ingest_failing:
                self._ingest_failing = True
                log.warning("host metrics sample not queued", extra={"error": f"{type(exc).__name__}: {exc}"})
            return
        self.samples += 1
        if self._ingest_failing:
            self._ingest_failing = False
            log.info("host metrics samples queued again")

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        with contextlib.suppress(RuntimeError):
            self.join(timeout)
