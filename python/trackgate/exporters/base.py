"""What every exporter shares: the outcome of one send, and the runner that drives it.

The runner is the Collector's exporter-helper chain for one (exporter, signal) pair: take a batch
from the queue, send it with retry and backoff, then acknowledge it. Only retryable outcomes are
retried; each exporter has its own cursor, so a slow destination holds back only itself.

An acknowledgement lets the queue forget the batch, so a batch is acknowledged only once its
exporter settled it: delivered (and, for a sink that syncs later, synced), given up on as
permanent, or put back in the queue. Anything else, an exporter that raises included, is retried.
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

Signal = Literal["logs", "traces", "metrics"]
SIGNALS: tuple[Signal, ...] = ("logs", "traces", "metrics")


@dataclass(frozen=True)
class Outcome:
    """What one send attempt achieved."""

    kind: Literal["ok", "retry", "drop", "requeued"]
    reason: str = ""
    retry_after: float | None = None  # seconds the destination asked us to wait
    cause: str = ""  # short label for metrics: "status_503", "connection", "timeout"...
    rejected: int = 0  # records refused in an OTLP partial success (kind "ok")
    sent_bytes: int = 0
    unsynced: bool = False  # kind "ok": written, but durable only once the exporter's `sync` succeeds

    @classmethod
    def ok(cls, sent_bytes: int = 0, rejected: int = 0, reason: str = "", unsynced: bool = False) -> Outcome:
        return cls("ok", reason=reason, rejected=rejected, sent_bytes=sent_bytes, unsynced=unsynced)

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
    # For an exporter whose `send` may answer ok(unsynced=True): the runner holds the ack of such
    # batches until `sync` succeeds, and calls it at most this often (seconds).
    sync_interval_s: float = 0.0

    @abstractmethod
    def send(self, batch: Batch) -> Outcome: ...

    def sync(self, signal: Signal) -> None:  # noqa: B027 - optional hook
        """Makes every unsynced write of `signal` durable; raises OSError when it cannot. After a
        failure the next call must still cover those writes (by writing them again if need be)."""

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
    # Written-but-unsynced data past this is synced early, whatever the interval: the exporter
    # keeps it in memory to write again should the sync fail.
    MAX_HELD_BYTES = 64 << 20
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
        # The newest batch written but not yet synced: acks are cumulative, so its ack (after the
        # sync) covers the held batches before it.
        self.held: Batch | None = None
        self.held_since = 0.0
        self.held_bytes = 0
        self.read_failing = False

    def run(self) -> None:
        while True:
            flush = self.flushing.is_set() or self.core.closed
            if self.held is not None and (flush or self._sync_due()) and not self._commit():
                return  # shutting down while the sync fails: the held batches stay queued
            try:
                batch = self.core.next_batch(self.exporter.name, self.signal, self._poll_s(), flush)
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
                if self.core.closed and self.held is None:
                    return
                continue
            self.busy = True
            try:
                done = self._settle_with_retry(batch)
            finally:
                self.busy = False
            if not done:
                return  # shutting down mid-retry: the batch stays queued (on disk) for the next start

    def _settle_with_retry(self, batch: Batch) -> bool:
        backoff = Backoff(self.exporter.retry)
        while True:
            try:
                return self._settle(batch)
            except Exception:  # a bug of the runner's own: never ack what was not settled
                log.exception("delivery failed unexpectedly; batch stays queued, will retry", extra=self.labels)
                if self.stop_retrying.wait(backoff.delay(None)):
                    return False

    def _settle(self, batch: Batch) -> bool:
        """Delivers `batch`, then acknowledges it, or holds the ack until the exporter syncs.
        False when shutdown interrupted the retries: leave it queued."""
        outcome = self.deliver(batch)
        if outcome is None:
            return False
        if outcome.kind == "ok" and outcome.unsynced:
            if self.held is None:
                self.held_since = time.monotonic()
            self.held = batch
            self.held_bytes += outcome.sent_bytes
            return True
        # An ack covers every batch before it, so whatever is held must be synced first.
        if self.held is not None and not self._commit():
            return False
        self.core.ack(batch)
        return True

    def _sync_due(self) -> bool:
        elapsed = time.monotonic() - self.held_since
        return elapsed >= self.exporter.sync_interval_s or self.held_bytes >= self.MAX_HELD_BYTES

    def _poll_s(self) -> float:
        if self.held is None:
            return self.POLL_S
        left = self.held_since + self.exporter.sync_interval_s - time.monotonic()
        return min(self.POLL_S, max(left, 0.001))

    def _commit(self) -> bool:
        """Syncs the held batches, then acknowledges them. A failing sync is retried with backoff
        until it succeeds (never given up on: that would ack data that is not on disk); False when
        shutdown interrupted the retries."""
        assert self.held is not None
        backoff = Backoff(self.exporter.retry)
        while True:
            try:
                self.exporter.sync(self.signal)
                break
            except Exception as exc:
                delay = backoff.delay(None)
                telemetry.EXPORT_RETRIES.inc(1, cause="sync_error", **self.labels)
                log.warning(
                    "sync failed; batches stay queued, will retry",
                    extra={**self.labels, "reason": f"{type(exc).__name__}: {exc}", "retry_in_s": round(delay, 3)},
                )
                if self.stop_retrying.wait(delay):
                    return False
        self.core.ack(self.held)
        self.held = None
        self.held_bytes = 0
        return True

    def deliver(self, batch: Batch) -> Outcome | None:
        """Sends with retry. Returns the outcome that settles the batch (ok; drop, when given up
        on; requeued), or None when shutdown interrupted the retries. An exporter that raises is
        retried like a retryable failure: the batch was not delivered."""
        backoff = Backoff(self.exporter.retry)
        started = time.monotonic()
        limit = self.exporter.retry.max_elapsed_s
        raised = False
        while True:
            t0 = time.monotonic()
            try:
                outcome = self.exporter.send(batch)
            except Exception as exc:
                if not raised:  # the traceback once per batch; the retries are logged below
                    log.exception("exporter failed unexpectedly; batch stays queued", extra=self.labels)
                raised = True
                outcome = Outcome.retry("internal_error", f"exporter raised {type(exc).__name__}: {exc}")
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
                return outcome
            if outcome.kind == "drop":
                self._give_up(batch, "permanent_error", outcome.reason)
                return outcome
            if outcome.kind == "requeued":
                return outcome
            delay = backoff.delay(outcome.retry_after)
            elapsed = time.monotonic() - started
            if limit and elapsed + delay > limit:
                self._give_up(batch, "retries_exhausted", f"{outcome.reason}; gave up after {elapsed:.0f}s")
                return Outcome.drop("retries_exhausted", outcome.reason)
            telemetry.EXPORT_RETRIES.inc(1, cause=outcome.cause or "other", **self.labels)
            log.info(
                "send failed, will retry",
                extra={**self.labels, "reason": outcome.reason, "retry_in_s": round(delay, 3)},
            )
            if self.stop_retrying.wait(delay):
                log.info(
                    "shutdown interrupted retries; batch stays queued", extra={**self.labels, "records": batch.records}
                )
                return None

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
