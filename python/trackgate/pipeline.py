"""The pipeline as a library: the data-plane core, its exporters and their delivery threads.

The gateway's ASGI app, `trackgate replay` and tests all run this same object.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Literal

from trackgate import telemetry
from trackgate._core import Core, IngestResult, QueueFull
from trackgate.config import Config
from trackgate.exporters.base import SIGNALS, Exporter, Runner
from trackgate.exporters.file import FileExporter
from trackgate.exporters.otlp_http import OtlpHttpExporter

log = logging.getLogger("trackgate.pipeline")

Signal = Literal["logs", "traces", "metrics"]
# /readyz turns 503 once the queue is this full, and for a while after a request was refused as
# queue-full, so a load balancer moves traffic before clients see 429s.
READY_MAX_FILL = 0.9
NOT_READY_AFTER_FULL_S = 1.0
Format = Literal["protobuf", "json"]


def build_exporters(cfg: Config) -> list[Exporter]:
    exporters: list[Exporter] = [OtlpHttpExporter(name, exp) for name, exp in cfg.otlp_exporters().items()]
    file_cfg = cfg.file_exporter()
    if file_cfg is not None:
        exporters.append(FileExporter(file_cfg))
    return exporters


class Pipeline:
    """Ingest OTLP payloads; deliver them to every configured exporter.

    `start()` launches one delivery thread per exporter and signal; `close()` stops intake, drains
    what is queued within the grace period and stops the threads. Usable as a context manager.
    """

    def __init__(self, config: Config | None = None, exporters: Iterable[Exporter] | None = None) -> None:
        self.config = config or Config()
        self.exporters = list(exporters) if exporters is not None else build_exporters(self.config)
        if not self.exporters:
            raise ValueError("a pipeline needs at least one exporter")
        cfg = self.config
        self.core = Core(
            exporters=[e.name for e in self.exporters],
            sampling_traces=cfg.sampling.traces,
            sampling_logs=cfg.sampling.logs,
            keep_errors=cfg.sampling.keep_errors,
            resource_attributes=sorted(cfg.resource.attributes.items()),
            queue_max_bytes=cfg.storage.max_bytes,
            batch_max_records=cfg.batch.max_records,
            batch_max_bytes=cfg.batch.max_bytes,
            batch_max_delay_ms=cfg.batch.max_delay_ms,
            max_body_bytes=cfg.server.max_body_bytes,
        )
        self._flushing = threading.Event()
        self._stop_retrying = threading.Event()
        self._runners: list[Runner] = []
        self._last_full = -1e9
        self._register_gauges()

    def _register_gauges(self) -> None:
        def records() -> list[tuple[tuple[str, ...], float]]:
            stats = self.core.stats()
            return [
                ((s, outcome), stats.get(f"{s}_{outcome}_records", 0))
                for s in SIGNALS
                for outcome in ("received", "accepted", "rejected", "sampled_out")
            ]

        def received_bytes() -> list[tuple[tuple[str, ...], float]]:
            stats = self.core.stats()
            return [((s,), stats.get(f"{s}_received_bytes", 0)) for s in SIGNALS]

        def queued() -> list[tuple[tuple[str, ...], float]]:
            stats = self.core.stats()
            return [((s,), stats.get(f"{s}_queued_records", 0)) for s in SIGNALS]

        def queue_bytes() -> list[tuple[tuple[str, ...], float]]:
            stats = self.core.stats()
            return [(("used",), stats.get("queue_bytes", 0)), (("limit",), stats.get("queue_max_bytes", 0))]

        reg = telemetry.REGISTRY
        reg.observed(
            "trackgate_receiver_records_total",
            "Records received, by signal and outcome (received, accepted, rejected, sampled_out).",
            ("signal", "outcome"),
            records,
            kind="counter",
        )
        reg.observed(
            "trackgate_receiver_bytes_total",
            "Request body bytes accepted, as they arrived on the wire.",
            ("signal",),
            received_bytes,
            kind="counter",
        )
        reg.observed("trackgate_queue_records", "Records queued and not yet delivered everywhere.", ("signal",), queued)
        reg.observed("trackgate_queue_bytes", "Queue bytes in use and the limit.", ("kind",), queue_bytes)

    # -- intake ---------------------------------------------------------------------------------

    def ingest(
        self, signal: Signal, body: bytes, format: Format = "protobuf", content_encoding: str | None = None
    ) -> IngestResult:
        """Decode, filter and queue one OTLP export request. Raises trackgate.exceptions errors."""
        try:
            return self.core.ingest(signal, body, format, content_encoding)
        except QueueFull:
            self._last_full = time.monotonic()
            raise

    @property
    def ready(self) -> bool:
        if self.core.closed or time.monotonic() - self._last_full < NOT_READY_AFTER_FULL_S:
            return False
        stats = self.core.stats()
        return stats.get("queue_bytes", 0) < READY_MAX_FILL * stats.get("queue_max_bytes", 1)

    # -- delivery -------------------------------------------------------------------------------

    def start(self) -> Pipeline:
        if self._runners:
            return self
        for exporter in self.exporters:
            for signal in SIGNALS:
                runner = Runner(self.core, exporter, signal, self._flushing, self._stop_retrying)
                runner.start()
                self._runners.append(runner)
        log.info("pipeline started", extra={"exporters": [e.name for e in self.exporters]})
        return self

    def pending(self) -> int:
        stats = self.core.stats()
        return sum(stats.get(f"{s}_queued_records", 0) for s in SIGNALS)

    def flush(self, timeout: float = 30.0) -> bool:
        """Sends everything queued now, without waiting for batch delays. True when all was delivered."""
        deadline = time.monotonic() + timeout
        self._flushing.set()
        try:
            while time.monotonic() < deadline:
                if self.pending() == 0 and not any(r.busy for r in self._runners):
                    return True
                time.sleep(0.01)
            return self.pending() == 0
        finally:
            self._flushing.clear()

    def close(self, grace_s: float | None = None) -> None:
        """Stops intake, delivers what is queued within the grace period, stops the threads."""
        grace = self.config.server.shutdown_grace_s if grace_s is None else grace_s
        self.core.close()
        deadline = time.monotonic() + grace
        for runner in self._runners:
            runner.join(max(0.0, deadline - time.monotonic()))
        self._stop_retrying.set()  # past the grace period: abandon retries
        for runner in self._runners:
            runner.join(2.0)
        left = self.pending()
        if left:
            log.warning("shut down with undelivered records", extra={"records": left})
        for exporter in self.exporters:
            exporter.close()
        self._runners.clear()

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
