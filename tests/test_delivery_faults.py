"""A batch stays queued unless its exporter settled it: an exporter that raises, a Sentry envelope
that cannot be parked again (full queue, failing disk)."""

from __future__ import annotations

import errno
import threading
import uuid
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from sentry_upstream import SentryUpstream
from sentry_upstream import envelope as sentry_envelope
from trackgate import Pipeline, telemetry
from trackgate._core import Batch, QueueFull
from trackgate.config import BatchConfig, Config, RetryConfig, SentryExporterConfig
from trackgate.exporters import sentry as sentry_exporter
from trackgate.exporters.base import Exporter, Outcome
from trackgate.exporters.sentry import SentryExporter
from trackgate.ratelimits import RateLimits
from upstream import Reply

FAST_RETRY = RetryConfig(initial_interval_s=0.02, max_interval_s=0.1)


def logs(text: str, n: int = 1) -> bytes:
    msg = ExportLogsServiceRequest()
    records = msg.resource_logs.add().scope_logs.add()
    for i in range(n):
        records.log_records.add().body.string_value = f"{text}-{i}"
    return msg.SerializeToString()


class Flaky(Exporter):
    """Raises (an exporter bug, an unexpected error) the first `failures` times, then delivers."""

    def __init__(self, failures: int) -> None:
        self.name = "flaky"
        self.retry = FAST_RETRY
        self.failures = failures
        self.delivered: list[int] = []

    def send(self, batch: Batch) -> Outcome:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("exporter bug")
        self.delivered.append(batch.records)
        return Outcome.ok()


def test_an_exporter_that_raises_is_retried_not_acknowledged() -> None:
    flaky = Flaky(failures=3)
    labels = {"exporter": "flaky", "signal": "logs"}
    dropped_before = sum(
        telemetry.FAILED_RECORDS.value(reason=r, **labels) for r in ("internal_error", "permanent_error")
    )
    retried_before = telemetry.EXPORT_RETRIES.value(cause="internal_error", **labels)
    with Pipeline(Config(), [flaky]) as p:
        p.ingest("logs", logs("job", 5))
        assert p.flush(10)
        assert p.pending() == 0
    assert flaky.delivered == [5]
    assert telemetry.EXPORT_RETRIES.value(cause="internal_error", **labels) - retried_before == 3
    dropped = sum(telemetry.FAILED_RECORDS.value(reason=r, **labels) for r in ("internal_error", "permanent_error"))
    assert dropped == dropped_before


# -- Sentry parking ------------------------------------------------------------------------------


@pytest.fixture
def sentry(sentry_upstream: SentryUpstream) -> SentryUpstream:
    return sentry_upstream


@pytest.fixture
def fast_park(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sentry_exporter, "PARK_S", 0.2)


def envelope(event_id: str) -> bytes:
    return sentry_envelope(
        {"event_id": event_id}, ("event", {"event_id": event_id, "message": "job failed", "level": "error"})
    )


def forward_pipeline(sentry: SentryUpstream, max_bytes: int = 1 << 30) -> tuple[Pipeline, SentryExporter]:
    """The gateway's Sentry forwarding pipeline (app.build_forward_pipeline), not started yet."""
    cfg = Config(batch=BatchConfig(max_records=1, max_delay_ms=0))
    cfg.storage.max_bytes = max_bytes
    exporter = SentryExporter(SentryExporterConfig(dsn=sentry.dsn(), timeout_s=2.0, retry=FAST_RETRY), RateLimits())
    forward = Pipeline(cfg, [exporter], queue_name="sentry-queue", register_metrics=False)
    exporter.core = forward.core
    return forward, exporter


def arrived(sentry: SentryUpstream) -> list[str]:
    return [env.headers["event_id"] for env in sentry.delivered()]


def rate_limited_once(sentry: SentryUpstream) -> None:
    sentry.script = [Reply(429, {"X-Sentry-Rate-Limits": "1:error:key", "Retry-After": "1"}, b"{}")]


def requeue_failures() -> float:
    return telemetry.EXPORT_RETRIES.value(exporter="sentry", signal="logs", cause="requeue_failed")


def test_parking_into_a_full_queue_keeps_every_envelope(sentry: SentryUpstream, fast_park: None) -> None:
    forward, _ = forward_pipeline(sentry, max_bytes=2048)
    accepted: list[str] = []
    while True:  # fill the queue, as clients would while the upstream is slow
        event_id = uuid.uuid4().hex
        try:
            forward.core.enqueue("logs", envelope(event_id), 1)
        except QueueFull:
            break
        accepted.append(event_id)
    assert len(accepted) >= 3
    rate_limited_once(sentry)  # the first envelope is answered 429: parking it finds the queue full
    failures_before = requeue_failures()
    with forward:
        assert sentry.wait_for(lambda s: set(accepted) <= set(arrived(s)), timeout=30), (
            f"lost {sorted(set(accepted) - set(arrived(sentry)))} of {len(accepted)} accepted envelopes"
        )
    assert requeue_failures() > failures_before  # the full queue was met, not dodged
    assert sentry.requests()[0].status == 429


class FailingRequeue:
    """The forwarding queue as the exporter sees it, with its disk failing for the next re-queues."""

    def __init__(self, core: Any, failures: int) -> None:
        self.core = core
        self.failures = failures
        self.lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return bool(self.core.closed)

    def enqueue(self, signal: str, payload: bytes, records: int) -> None:
        with self.lock:
            if self.failures:
                self.failures -= 1
                raise OSError(errno.EIO, "queue storage failed: Input/output error")
        self.core.enqueue(signal, payload, records)


def test_parking_when_the_queue_disk_fails_keeps_every_envelope(sentry: SentryUpstream, fast_park: None) -> None:
    forward, exporter = forward_pipeline(sentry)
    failing = FailingRequeue(forward.core, failures=2)
    exporter.core = failing  # type: ignore[assignment]
    accepted = [uuid.uuid4().hex for _ in range(5)]
    for event_id in accepted:
        forward.core.enqueue("logs", envelope(event_id), 1)
    rate_limited_once(sentry)
    failures_before = requeue_failures()
    with forward:
        assert sentry.wait_for(lambda s: set(accepted) <= set(arrived(s)), timeout=30), (
            f"lost {sorted(set(accepted) - set(arrived(sentry)))} of {len(accepted)} accepted envelopes"
        )
    assert failing.failures == 0
    assert requeue_failures() - failures_before >= 2
