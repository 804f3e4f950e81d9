"""The pipeline as a library: the data-plane core, its exporters and their delivery threads.

The gateway's app, `trackgate replay` and tests all run this same object.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Literal

from trackgate import durable, shards, telemetry
from trackgate._core import Core, DurableNotifier, IngestResult, QueueFull
from trackgate.config import Config
from trackgate.durable_wait import DurableWait
from trackgate.exporters.base import SIGNALS, Exporter, Runner
from trackgate.exporters.file import FileExporter
from trackgate.exporters.otlp_grpc import OtlpGrpcExporter
from trackgate.exporters.otlp_http import OtlpHttpExporter

log = logging.getLogger("trackgate.pipeline")

Signal = Literal["logs", "traces", "metrics"]
# /readyz turns 503 once the queue is this full, and for a while after a request was refused as
# queue-full, so a load balancer moves traffic before clients see 429s.
READY_MAX_FILL = 0.9
NOT_READY_AFTER_FULL_S = 1.0
Format = Literal["protobuf", "json"]
# Recovery report items that mean the queue found damage (logged as a warning): the rest count
# what was found.
RECOVERY_DAMAGE = frozenset(
    {
        "skipped_bytes",
        "skipped_regions",
        "skipped_frames",
        "lost_frames",
        "cut_bytes",
        "cut_segments",
        "bad_headers",
        "ledger_corrupt",
        "ledger_missing",
        "ledger_ahead",
        "ledger_torn",
        "no_active_segment",
        "unreadable_segments",
        "ledger_unreadable",
    }
)


def build_exporters(cfg: Config) -> list[Exporter]:
    exporters: list[Exporter] = [
        OtlpGrpcExporter(name, exp) if exp.protocol == "grpc" else OtlpHttpExporter(name, exp)
        for name, exp in cfg.otlp_exporters().items()
    ]
    file_cfg = cfg.file_exporter()
    if file_cfg is not None:
        storage = cfg.storage
        exporters.append(FileExporter(file_cfg, fsync=storage.fsync, fsync_interval_ms=storage.fsync_interval_ms))
    return exporters


class Pipeline:
    """Ingest OTLP payloads; deliver them to every configured exporter.

    `start()` launches one delivery thread per exporter and signal; `close()` stops intake, drains
    what is queued within the grace period and stops the threads. Usable as a context manager.
    """

    def __init__(
        self,
        config: Config | None = None,
        exporters: Iterable[Exporter] | None = None,
        *,
        queue_dir: str | Path | None = None,
        queue_name: str = "queue",
        secondary: bool = False,
        register_metrics: bool = True,
    ) -> None:
        """`queue_dir` pins the queue directory (default: a free shard under
        `<storage.dir>/<queue_name>/`); `secondary` marks a pipeline that only drains a shard: it
        shares the caller's exporters and metrics instead of owning them."""
        self.config = config or Config()
        self.exporters = list(exporters) if exporters is not None else build_exporters(self.config)
        if not self.exporters:
            raise ValueError("a pipeline needs at least one exporter")
        self.secondary = secondary
        self.queue_name = queue_name
        self.queue_dir: Path | None = None
        if self.config.storage.queue == "memory":
            self.core = self._open_core(None)
        elif queue_dir is not None:
            self.queue_dir, self.core = Path(queue_dir), self._open_core(Path(queue_dir))
        else:
            self.queue_dir, self.core = shards.claim(self.shard_root, self._open_core, self.durable_dirs)
        self._flushing = threading.Event()
        self._stop_retrying = threading.Event()
        self._runners: list[Runner] = []
        self._last_full = -1e9
        self._refusals_seen = 0
        self._adopter: shards.Adopter | None = None
        if register_metrics and not secondary:
            self._register_gauges()

    @property
    def shard_root(self) -> Path:
        return shards.shard_root(self.config.storage.dir, self.queue_name)

    @property
    def durable_dirs(self) -> bool:
        """Whether directories created for the queue are fsynced (so a new shard survives a power cut)."""
        return self.config.storage.fsync != "never"

    def _open_core(self, queue_dir: Path | None) -> Core:
        cfg = self.config
        limits = {
            name: (q.max_bytes, q.max_age_s)
            for name, q in cfg.exporter_queues().items()
            if (q.max_bytes or q.max_age_s) and name in {e.name for e in self.exporters}
        }
        if queue_dir is not None:
            durable.make_dirs(queue_dir, self.durable_dirs)
        core = Core(
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
            storage_dir=str(queue_dir) if queue_dir is not None else None,
            fsync=cfg.storage.fsync,
            fsync_interval_ms=cfg.storage.fsync_interval_ms,
            segment_bytes=cfg.storage.segment_bytes,
            preallocate=cfg.storage.preallocate,
            compression=cfg.storage.compression,
            exporter_limits=limits or None,
            scrub_otlp=cfg.scrubs("otlp"),
            scrub_fluent=cfg.scrubs("fluent"),
            scrub_extra_keys=cfg.scrub_keys()[0],
            scrub_safe_keys=cfg.scrub_keys()[1],
            scrub_patterns=cfg.scrub.extra_patterns,
            fluent_utc_offset_s=cfg.receivers.fluent.utc_offset_seconds(),
            # Dash0 content counts in the ingest walk only when an exporter reports them.
            content_counts=any(getattr(e, "check_limits", False) for e in self.exporters),
        )
        if queue_dir is not None:
            report = core.recovery()
            damage = any(report.get(k) for k in RECOVERY_DAMAGE)
            level = logging.WARNING if damage else logging.INFO
            log.log(level, "queue opened", extra={"queue_dir": str(queue_dir), **report})
        return core

    def _register_gauges(self) -> None:
        def records() -> list[tuple[tuple[str, ...], float]]:
            stats = self.core.stats()
            return [
                ((s, outcome), stats.get(f"{s}_{outcome}_records", 0))
                for s in SIGNALS
                for outcome in ("received", "accepted", "rejected", "sampled_out")
            ]

        def scrubbed() -> list[tuple[tuple[str, ...], float]]:
            stats = self.core.stats()
            otlp = sum(stats.get(f"{s}_scrubbed_records", 0) for s in SIGNALS)
            return [
                (("otlp",), otlp),
                (("sentry",), telemetry.SENTRY_SCRUBBED.value()),
                (("events",), telemetry.EVENTS_SCRUBBED.value()),
            ]

        def received_bytes() -> list[tuple[tuple[str, ...], float]]:
            stats = self.core.stats()
            return [((s,), stats.get(f"{s}_received_bytes", 0)) for s in SIGNALS]

        def queued() -> list[tuple[tuple[str, ...], float]]:
            stats = self.core.stats()
            return [((s,), stats.get(f"{s}_queued_records", 0)) for s in SIGNALS]

        def dropped() -> list[tuple[tuple[str, ...], float]]:
            stats = self.core.stats()
            return [
                ((e.name, s), stats[key])
                for e in self.exporters
                for s in SIGNALS
                if (key := f"{e.name}_{s}_dropped_records") in stats
            ]

        def queue_bytes() -> list[tuple[tuple[str, ...], float]]:
            stats = self.core.stats()
            return [(("used",), stats.get("queue_bytes", 0)), (("limit",), stats.get("queue_max_bytes", 0))]

        def core_counter(key: str) -> Callable[[], list[tuple[tuple[str, ...], float]]]:
            return lambda: [((), self.core.stats().get(key, 0))]

        reg = telemetry.REGISTRY
        reg.observed(
            "trackgate_receiver_records_total",
            "Records received, by signal and outcome (received, accepted, rejected, sampled_out).",
            ("signal", "outcome"),
            records,
            kind="counter",
        )
        reg.observed(
            "trackgate_scrubbed_records_total",
            "Records in which scrubbing filtered something, by track (otlp: log records and spans, Fluent "
            "records included; sentry: envelope items; events: job events). The values are never logged.",
            ("track",),
            scrubbed,
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
        reg.observed(
            "trackgate_exporter_dropped_records_total",
            "Records dropped for one exporter by its queue.max_bytes / queue.max_age_s bound.",
            ("exporter", "signal"),
            dropped,
            kind="counter",
        )
        reg.observed("trackgate_queue_bytes", "Queue bytes in use and the limit.", ("kind",), queue_bytes)
        reg.observed(
            "trackgate_queue_read_errors_total",
            "Reads of queued entries the disk failed (delivery waits and retries; /readyz is 503 meanwhile).",
            (),
            core_counter("queue_read_errors"),
            kind="counter",
        )
        reg.observed(
            "trackgate_queue_storage_errors_total",
            "Queue writes, fsyncs and ledger updates that failed.",
            (),
            core_counter("queue_storage_errors"),
            kind="counter",
        )
        reg.observed(
            "trackgate_queue_damaged_entries_total",
            "Queued entries that read back damaged, or unreadable and never acknowledged, and were skipped.",
            (),
            core_counter("queue_damaged_entries"),
            kind="counter",
        )
        reg.observed(
            "trackgate_queue_fsyncs_total",
            "Queue segment fdatasyncs (group commits under fsync always, ticks under interval).",
            (),
            core_counter("queue_data_syncs"),
            kind="counter",
        )
        reg.observed(
            "trackgate_queue_fsync_seconds_total",
            "Time spent in those fdatasyncs (divided by trackgate_queue_fsyncs_total: their mean latency).",
            (),
            lambda: [((), self.core.stats().get("queue_data_sync_us", 0) / 1e6)],
            kind="counter",
        )
        reg.observed(
            "trackgate_queue_synced_appends_total",
            "Appends whose fsync the group-commit syncer awaited (divided by fsyncs: the group size).",
            (),
            core_counter("queue_synced_appends"),
            kind="counter",
        )
        reg.observed(
            "trackgate_queue_ledger_writes_total",
            "Delivery-ledger writes (fsynced unless fsync is never; in place, but for the first at open).",
            (),
            core_counter("queue_ledger_writes"),
            kind="counter",
        )
        reg.observed(
            "trackgate_queue_segments_preallocated_total",
            "Queue segments that started preallocated (written as zeros ahead of use, storage.preallocate).",
            (),
            core_counter("queue_segments_preallocated"),
            kind="counter",
        )
        reg.observed(
            "trackgate_queue_prealloc_errors_total",
            "Segments that could not be preallocated (the next segment then grows as written).",
            (),
            core_counter("queue_prealloc_errors"),
            kind="counter",
        )

    # -- intake ---------------------------------------------------------------------------------

    def ingest(
        self,
        signal: Signal,
        body: bytes,
        format: Format = "protobuf",
        content_encoding: str | None = None,
        *,
        scrub: bool = True,
        wait: DurableWait | None = None,
    ) -> IngestResult:
        """Decode, filter and queue one OTLP export request. Raises trackgate.exceptions errors.

        `scrub=False`: no OTLP scrubbing, for records converted from a track that scrubbed already.
        `wait`: do not wait for fsync here; the request is durable once `wait.wait()` returns.
        """
        return self._queued(lambda n, t: self.core.ingest(signal, body, format, content_encoding, scrub, n, t), wait)

    def ingest_built(
        self, signal: Signal, body: bytes, *, scrub: bool = True, wait: DurableWait | None = None
    ) -> IngestResult:
        """Queue an OTLP request built here (the events' log records, Sentry's events and spans):
        walked as `ingest` walks a client's, without the schema check or the body limit (it may
        outgrow the body it came from). `scrub=False` as for `ingest`."""
        return self._queued(lambda n, t: self.core.ingest_built(signal, body, n, t, scrub), wait)

    def ingest_fluent(
        self,
        body: bytes,
        media_type: str,
        tag: str,
        content_encoding: str | None = None,
        *,
        wait: DurableWait | None = None,
    ) -> IngestResult:
        """Convert a Fluent body (JSON, NDJSON, msgpack, text) to OTLP logs and queue them."""
        return self._queued(lambda n, t: self.core.ingest_fluent(body, media_type, tag, content_encoding, n, t), wait)

    def _queued(
        self, call: Callable[[DurableNotifier | None, int], IngestResult], wait: DurableWait | None
    ) -> IngestResult:
        """One ingest call: with `wait`, told the notifier and a token, and kept in the wait; a
        refusal for a full queue restarts the not-ready window."""
        try:
            if wait is None:
                return call(None, 0)
            token = wait.token()
            result = call(wait.notifier, token)
            wait.keep(token, result.waiting)
            return result
        except QueueFull:
            self._last_full = time.monotonic()
            raise

    def enqueue(self, signal: Signal, payload: bytes, records: int, *, wait: DurableWait | None = None) -> None:
        """Queue a payload as is (a Sentry envelope, event lines); `wait` as for `ingest`."""
        if wait is None:
            self.core.enqueue(signal, payload, records)
            return
        token = wait.token()
        wait.keep(token, self.core.enqueue(signal, payload, records, wait.notifier, token))

    @property
    def defers_sync(self) -> bool:
        """Whether ingest given a DurableWait leaves the fsync to await (`fsync = "always"`)."""
        return self.queue_dir is not None and self.config.storage.fsync == "always"

    @property
    def blocking_ingest(self) -> bool:
        """Whether ingest may wait for the disk even when given a DurableWait: callers on an event
        loop should then run it in a thread. Under `fsync = "always"` the append does not sync
        (the wait does); under `"interval"` an append that rolls a segment syncs it first."""
        return self.queue_dir is not None and self.config.storage.fsync == "interval"

    @property
    def ready(self) -> bool:
        """False while shutting down, (nearly) full, or waiting on a queue entry the disk does not return."""
        stats = self.core.stats()
        # Refusals the core counted, including those of the gRPC listener (which never passes
        # through `ingest` here), restart the not-ready window too.
        refusals = stats.get("queue_full_refusals", 0)
        if refusals != self._refusals_seen:
            self._refusals_seen = refusals
            self._last_full = time.monotonic()
        if self.core.closed or time.monotonic() - self._last_full < NOT_READY_AFTER_FULL_S:
            return False
        if stats.get("queue_read_stalled", 0) or self.delivery_failed:
            return False
        return stats.get("queue_bytes", 0) < READY_MAX_FILL * stats.get("queue_max_bytes", 1)

    @property
    def delivery_failed(self) -> bool:
        """Whether a runner's lanes stopped on a bug of their own: that delivery waits for a restart."""
        return any(r.failed for r in self._runners)

    # -- delivery -------------------------------------------------------------------------------

    def start(self, adopt_orphans: bool = False) -> Pipeline:
        """Starts delivery; with `adopt_orphans`, also drains shards that no live process owns."""
        if self._runners:
            return self
        if adopt_orphans and self.queue_dir is not None and not self.secondary:
            self._adopter = shards.Adopter(self)
            self._adopter.start()
        for exporter in self.exporters:
            for signal in SIGNALS:
                runner = Runner(self.core, exporter, signal, self._flushing, self._stop_retrying)
                runner.start()
                self._runners.append(runner)
        if not self.secondary:
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
        close_together([self], time.monotonic() + grace)

    def _stop_intake(self) -> list[Pipeline]:
        """Stops intake and adoption; returns this pipeline and its adopted shards' drains, which
        all deliver what they hold from now on."""
        self.core.close()
        drains = self._adopter.stop_adopting() if self._adopter is not None else []
        for drain in drains:
            drain.core.close()
        return [self, *drains]

    def _join_runners(self, until: float) -> None:
        for runner in self._runners:
            runner.join(max(0.0, until - time.monotonic()))

    def _finish(self) -> None:
        """After the runners: reports what is left, closes the exporters."""
        left = self.pending()
        if left and self.queue_dir is not None:
            log.info("undelivered records stay on disk for the next start", extra={"records": left})
        elif left:
            log.warning("shut down with undelivered records (memory queue: lost)", extra={"records": left})
        if not self.secondary:
            for exporter in self.exporters:
                exporter.close()
        self._runners.clear()

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def close_together(pipelines: Iterable[Pipeline], deadline: float) -> None:
    """Shuts pipelines down side by side: intake (and adoption) stops everywhere first, all of
    them deliver until `deadline` (monotonic), then retries are abandoned everywhere at once and
    the sends still in flight get 2 s in all (granian kills a worker `shutdown_grace_s` + 5 s
    after asking it to stop)."""
    everything = [p for pipeline in pipelines for p in pipeline._stop_intake()]
    for p in everything:
        p._join_runners(deadline)
    for p in everything:
        p._stop_retrying.set()
    end = time.monotonic() + 2.0
    for p in everything:
        p._join_runners(end)
    for p in everything:
        p._finish()
