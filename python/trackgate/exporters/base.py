"""What every exporter shares: the outcome of one send, and the runner that drives it.

The runner is the Collector's exporter-helper chain for one (exporter, signal) pair: take a batch
from the queue, send it with retry and backoff, then acknowledge it. Only retryable outcomes are
retried; each exporter has its own cursor, so a slow destination holds back only itself.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import urllib3

from trackgate import telemetry
from trackgate._core import Batch, Core
from trackgate.config import RetryConfig

log = logging.getLogger("trackgate.exporter")

# The OTLP specification's retryable statuses (Sentry follows the same rule); every other failure
# is permanent.
RETRYABLE = frozenset({429, 502, 503, 504})

SIGNALS: tuple[Literal["logs", "traces", "metrics"], ...] = ("logs", "traces", "metrics")


@dataclass(frozen=True)
class Outcome:
    """What one send attempt achieved."""

    kind: Literal["ok", "retry", "drop", "requeued"]
    reason: str = ""
    retry_after: float | None = None  # seconds the destination asked us to wait
    cause: str = ""  # short label for metrics: "status_503", "connection", "timeout"...
    rejected: int = 0  # records refused in an OTLP partial success (kind "ok")
    sent_bytes: int = 0

    @classmethod
    def ok(cls, sent_bytes: int = 0, rejected: int = 0, reason: str = "") -> Outcome:
        return cls("ok", reason=reason, rejected=rejected, sent_bytes=sent_bytes)

    @classmethod
    def retry(cls, cause: str, reason: str, retry_after: float | None = None) -> Outcome:
        return cls("retry", reason=reason, retry_after=retry_after, cause=cause)

    @classmethod
    def drop(cls, cause: str, reason: str) -> Outcome:
        return cls("drop", reason=reason, cause=cause)

    @classmethod
    def requeued(cls, reason: str) -> Outcome:
        """The exporter put the batch back at the end of its queue (a rate limit is in force)."""
        return cls("requeued", reason=reason)


class Exporter(ABC):
    """One destination. `send` is called from the exporter's own threads, one batch at a time per signal."""

    name: str
    retry: RetryConfig = RetryConfig()

    @abstractmethod
    def send(self, batch: Batch) -> Outcome: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or files."""


class Backoff:
    """Capped exponential backoff with +-20% jitter; a destination's Retry-After takes precedence."""

    def __init__(self, cfg: RetryConfig) -> None:
        self.cfg = cfg
        self.next_interval = cfg.initial_interval_s

    def delay(self, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), max(self.cfg.max_interval_s, retry_after))
        interval = self.next_interval
        self.next_interval = min(self.next_interval * self.cfg.multiplier, self.cfg.max_interval_s)
        return interval * random.uniform(0.8, 1.2)


class Runner(threading.Thread):
    """Delivers one signal's batches to one exporter until the core is closed and drained."""

    # How long one wait for a batch lasts; bounds how fast a flush request is noticed.
    POLL_S = 0.1
    # How often a queue entry the disk failed to return is tried again.
    READ_RETRY_S = 1.0

    def __init__(
        self,
        core: Core,
        exporter: Exporter,
        signal: Literal["logs", "traces", "metrics"],
        flushing: threading.Event,
        stop_retrying: threading.Event,
    ) -> None:
        super().__init__(name=f"trackgate-{exporter.name}-{signal}", daemon=True)
        self.core = core
        self.exporter = exporter
        self.signal = signal
        self.flushing = flushing
        self.stop_retrying = stop_retrying
        self.labels = {"exporter": exporter.name, "signal": signal}
        self.busy = False
        self.read_failing = False

    def run(self) -> None:
        while True:
            flush = self.flushing.is_set() or self.core.closed
            try:
                batch = self.core.next_batch(self.exporter.name, self.signal, self.POLL_S, flush)
            except OSError as exc:  # the queue could not read the next entry back; its cursor stays
                if not self.read_failing:
                    log.error("reading the queue failed; delivery paused", extra={**self.labels, "error": str(exc)})
                self.read_failing = True
                if self.stop_retrying.wait(self.READ_RETRY_S):
                    return  # shutting down: the entry stays on disk for the next start
                continue
            if self.read_failing:
                log.info("reading the queue works again; delivery resumed", extra=self.labels)
                self.read_failing = False
            if batch is None:
                if self.core.closed:
                    return
                continue
            self.busy = True
            settled = True
            try:
                settled = self.deliver(batch)
            except Exception:  # an exporter bug must not kill the thread and stall the cursor
                log.exception("exporter failed unexpectedly; batch dropped", extra=self.labels)
                telemetry.FAILED_RECORDS.inc(batch.records, reason="internal_error", **self.labels)
            finally:
                if settled:
                    self.core.ack(batch)
                self.busy = False
            if not settled:
                return  # shutting down mid-retry: the batch stays queued (on disk) for the next start

    def deliver(self, batch: Batch) -> bool:
        """Sends with retry. True when the batch is settled (delivered or given up on): ack it.
        False when shutdown interrupted the retries: leave it queued."""
        backoff = Backoff(self.exporter.retry)
        started = time.monotonic()
        limit = self.exporter.retry.max_elapsed_s
        while True:
            t0 = time.monotonic()
            outcome = self.exporter.send(batch)
            telemetry.EXPORT_LATENCY.observe(time.monotonic() - t0, **self.labels)
            if outcome.kind == "ok":
                telemetry.EXPORTED_RECORDS.inc(batch.records - outcome.rejected, **self.labels)
                telemetry.EXPORTED_BYTES.inc(outcome.sent_bytes, **self.labels)
                if outcome.rejected or outcome.reason:
                    telemetry.UPSTREAM_REJECTED.inc(outcome.rejected, **self.labels)
                    log.warning(
                        "destination accepted the batch partially",
                        extra={**self.labels, "rejected": outcome.rejected, "reason": outcome.reason},
                    )
                return True
            if outcome.kind == "drop":
                self._give_up(batch, "permanent_error", outcome.reason)
                return True
            if outcome.kind == "requeued":
                return True
            delay = backoff.delay(outcome.retry_after)
            elapsed = time.monotonic() - started
            if limit and elapsed + delay > limit:
                self._give_up(batch, "retries_exhausted", f"{outcome.reason}; gave up after {elapsed:.0f}s")
                return True
            telemetry.EXPORT_RETRIES.inc(1, cause=outcome.cause or "other", **self.labels)
            log.info(
                "send failed, will retry",
                extra={**self.labels, "reason": outcome.reason, "retry_in_s": round(delay, 3)},
            )
            if self.stop_retrying.wait(delay):
                log.info(
                    "shutdown interrupted retries; batch stays queued", extra={**self.labels, "records": batch.records}
                )
                return False

    def _give_up(self, batch: Batch, reason: str, detail: str) -> None:
        telemetry.FAILED_RECORDS.inc(batch.records, reason=reason, **self.labels)
        log.error("batch dropped", extra={**self.labels, "records": batch.records, "reason": reason, "detail": detail})


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After in either form the HTTP spec allows: delay seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        from email.utils import parsedate_to_datetime

        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HttpDestination:
    """A pooled HTTP client whose failures come back as Outcomes.

    Retries are the runner's (with the queue behind them), never urllib3's.
    """

    def __init__(self, timeout_s: float, where: str, pools: int = 4) -> None:
        self.timeout_s = timeout_s
        self.where = where  # a secret-free name of the destination for messages
        self.http = urllib3.PoolManager(
            num_pools=pools,
            maxsize=3,
            retries=False,
            timeout=urllib3.Timeout(connect=min(timeout_s, 5.0), read=timeout_s),
        )

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> urllib3.BaseHTTPResponse | Outcome:
        try:
            return self.http.request("POST", url, body=body, headers=headers, preload_content=True)
        except urllib3.exceptions.NewConnectionError as exc:  # a subclass of TimeoutError in urllib3 2.x
            return Outcome.retry("connection", f"connection to {self.where} failed: {type(exc).__name__}")
        except urllib3.exceptions.TimeoutError as exc:
            return Outcome.retry(
                "timeout", f"no answer from {self.where} within {self.timeout_s}s ({type(exc).__name__})"
            )
        except urllib3.exceptions.HTTPError as exc:
            return Outcome.retry("connection", f"connection to {self.where} failed: {type(exc).__name__}")

    def close(self) -> None:
        self.http.clear()


def status_outcome(status: int, reason: str, retry_after: str | None) -> Outcome:
    """A non-2xx answer: retry what is retryable (honouring Retry-After), drop the rest."""
    if status in RETRYABLE:
        return Outcome.retry(f"status_{status}", reason, parse_retry_after(retry_after))
    return Outcome.drop(f"status_{status}", reason)
