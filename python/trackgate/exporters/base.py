"""What every exporter shares: the outcome of one send, and the runner that drives it.

The runner is the Collector's exporter-helper chain for one (exporter, signal) pair: take a batch
from the queue, send it with retry and backoff, then acknowledge it. Only retryable outcomes are
retried; each exporter has its own cursor, so a slow destination holds back only itself.

An acknowledgement lets the queue forget the batch, so a batch is acknowledged only once its
exporter settled it: delivered (and, for a sink that syncs later, synced), given up on as
permanent, or put back in the queue. Anything else, an exporter that raises included, is retried.

A network exporter with `concurrency` > 1 has up to that many batches of a signal in flight at
once (the Collector's `sending_queue.num_consumers`): a destination 100 ms away otherwise caps
delivery at ten batches a second per worker. How many may be in flight adapts, as Vector's adaptive
request concurrency does: one more after a send made at the full allowance whose wait for the
destination stayed near the quickest seen, half as many when the wait doubles (the destination, or
the cores it shares with the gateway, is saturated) or when the gateway's own work or retries took
most of a send. Batches are taken from the queue in order and acknowledged in order, since an ack
covers every batch before it: a batch that settles early waits for the ones taken before it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
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


# Seconds the calling thread spent waiting on a destination (`waiting_on_destination`), read by
# the runner around each send.
_network = threading.local()


@contextmanager
def waiting_on_destination() -> Iterator[None]:
    """Marks a send's network round trip: the time a runner's lanes can overlap."""
    started = time.monotonic()
    try:
        yield
    finally:
        _network.waited = getattr(_network, "waited", 0.0) + time.monotonic() - started


class Exporter(ABC):
    """One destination. `send` is called from the exporter's own threads: one batch at a time per
    signal, or up to `concurrency` at once."""

    name: str
    retry: RetryConfig = RetryConfig()
    # For an exporter whose `send` may answer ok(unsynced=True): the runner holds the ack of such
    # batches until `sync` succeeds, and calls it at most this often (seconds).
    sync_interval_s: float = 0.0
    # Batches of one signal sent at once, at most. Above 1, `send` runs on several threads at a
    # time and must never answer ok(unsynced=True); sinks whose order matters keep 1, and so do
    # the signals in `ordered`.
    concurrency: int = 1
    ordered: frozenset[str] = frozenset()

    def concurrency_for(self, signal: Signal) -> int:
        return 1 if signal in self.ordered else self.concurrency

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
    # With concurrency > 1, batches taken and not yet acknowledged, at most, per concurrency: a
    # head batch that keeps failing holds back every ack behind it, and the batches sent meanwhile
    # wait in memory (decompressed) until it settles.
    WINDOW_PER_LANE = 4

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
        # Above 1: `_lane`. A sink that syncs later acks after its sync, one batch at a time.
        self.concurrency = exporter.concurrency_for(signal)
        if self.concurrency > 1 and exporter.sync_interval_s:
            raise ValueError(f"exporter {exporter.name}: concurrency > 1 with acks held for a sync")
        # With concurrency > 1: the batches taken and not yet acknowledged, oldest first.
        self.window: deque[_Slot] = deque()
        self.window_lock = threading.Lock()
        self.settled = threading.Condition(self.window_lock)  # a send ended: `delivering` fell
        self.take_lock = threading.Lock()
        self.lanes: list[threading.Thread] = []
        self.delivering = 0
        self.stopped = False
        self.failed = False  # a lane failed: this signal's delivery stopped until the next start
        # Sends allowed in flight now (1 to the concurrency, see `_adapt`); the quickest wait for
        # the destination seen lately (seconds; None before the first send); batches taken so
        # far, and how many had been taken at the last decrease (one decrease per round trip).
        self.allowed = 1
        self.quickest: float | None = None
        self.taken = 0
        self.cut_at = 0

    def run(self) -> None:
        if self.concurrency > 1:
            self._lane()
            joined = 0
            while joined < len(self.lanes):  # lanes only grow, and before the lane that grew them ends
                self.lanes[joined].join()
                joined += 1
            return
        while True:
            try:
                if not self._step():
                    return
            # A bug of the runner's own, before a batch was taken (`_settle_with_retry` keeps and
            # retries a batch taken): nothing taken is skipped.
            except Exception:
                log.exception("delivery loop failed unexpectedly; will retry", extra=self.labels)
                if self.stop_retrying.wait(self.READ_RETRY_S):
                    return

    def _step(self) -> bool:
        """One batch taken and settled, one at a time; False when the runner is done."""
        flush = self.flushing.is_set() or self.core.closed
        if self.held is not None and (flush or self._sync_due()) and not self._commit():
            return False  # shutting down while the sync fails: the held batches stay queued
        batch = self._take(flush, self._poll_s())
        if self.stopped:
            return False  # shutting down while reading failed: the entry stays on disk for the next start
        if batch is None:
            return not (self.core.closed and self.held is None)
        self.busy = True
        try:
            # False: shutting down mid-retry, the batch stays queued (on disk) for the next start.
            return self._settle_with_retry(batch)
        finally:
            self.busy = False

    # -- concurrency > 1: every lane (this thread and the ones it starts) takes, sends, acks ------

    def _lane(self) -> None:
        """Takes the next batch (one lane at a time, so the window stays in queue order), sends
        it, then acknowledges the settled batches at the window's head. Starts another lane when
        every lane is sending and more may be in flight (`allowed`). Should anything here raise,
        the runner stops acknowledging: what it took stays queued for the next start."""
        try:
            while not self.stopped:
                slot = self._next_slot()
                if slot is not None and not self._send(slot):
                    return
        except Exception:  # a bug of the runner's own
            with self.settled:
                self.stopped = True
                self.failed = True
                self.settled.notify_all()
            log.exception("delivery stopped: a lane failed; what it took stays queued", extra=self.labels)

    def _next_slot(self) -> _Slot | None:
        """The next batch, placed in the window; None when there is none now (or, with `stopped`
        set, ever)."""
        flush = self.flushing.is_set() or self.core.closed
        with self.take_lock:
            window_limit = self.WINDOW_PER_LANE * self.concurrency
            with self.settled:
                while (self.delivering >= self.allowed or len(self.window) >= window_limit) and not self.stopped:
                    self.settled.wait(self.POLL_S)
            if self.stopped:
                return None
            batch = self._take(flush)
            if batch is None:
                with self.settled:
                    if self.core.closed:
                        if not self.window:
                            self.stopped = True  # closed and drained: every lane ends
                            self.settled.notify_all()
                        else:  # others still sending; next_batch returns at once now
                            self.settled.wait(self.POLL_S)
                return None
            with self.window_lock:
                self.delivering += 1
                self.taken += 1
                slot = _Slot(batch, alongside=self.delivering, number=self.taken)
                self.window.append(slot)
                self.busy = True
                grow = self.delivering > len(self.lanes) and len(self.lanes) + 1 < self.allowed
            if grow:
                lane = threading.Thread(target=self._lane, name=f"{self.name}-{len(self.lanes) + 1}", daemon=True)
                try:
                    lane.start()
                except RuntimeError:  # no thread to be had: the lanes there are go on
                    log.warning("could not start another delivery lane", extra=self.labels)
                else:
                    self.lanes.append(lane)
            return slot

    def _send(self, slot: _Slot) -> bool:
        """Sends the slot's batch, then acknowledges the window's settled head. False when the
        runner stops (shutdown)."""
        outcome, waited, took = self._deliver_guarded(slot.batch)
        with self.settled:
            self.delivering -= 1
            self.settled.notify()
            if outcome is None:
                # Shutdown interrupted it: it stays queued, and so does every batch after it
                # (nothing past it is acknowledged from now on).
                self.stopped = True
                self.settled.notify_all()
                return False
            if outcome.kind != "requeued":  # a parked batch says nothing of the destination
                self._adapt(slot, waited, took)
            slot.done = True
            acked = None
            while self.window and self.window[0].done:
                acked = self.window.popleft().batch
        if acked is not None and not self._ack(acked):
            return False
        with self.window_lock:
            self.busy = bool(self.window)
        return True

    def _adapt(self, slot: _Slot, waited: float, took: float) -> None:
        """After the slot's send, which waited `waited` s for the destination and took `took` s
        in all: one more may be in flight, or half as many (additive increase, multiplicative
        decrease; at most one decrease per round trip: the sends taken before the last decrease
        tell nothing new)."""
        if waited > took / 2:
            # The quickest wait, rising slowly so that a destination that became slower for good
            # becomes the norm.
            self.quickest = waited if self.quickest is None else min(waited, self.quickest * 1.01)
            if waited <= 2 * self.quickest:
                if slot.alongside >= self.allowed:
                    self.allowed = min(self.concurrency, self.allowed + 1)
                return
        # Here the wait doubled (the destination, or the cores it shares with the gateway, is
        # saturated), or compression, encoding or retries' backoff made most of the send (more
        # at once would not overlap waits, only compete for the cores).
        if slot.number > self.cut_at:
            self.allowed = max(1, self.allowed // 2)
            self.cut_at = self.taken

    def _take(self, flush: bool, poll_s: float | None = None) -> Batch | None:
        """The next batch, or None (none ready, or the queue could not read it back: then
        `stopped` is set when shutdown came meanwhile)."""
        poll = self.POLL_S if poll_s is None else poll_s
        try:
            batch = self.core.next_batch(self.exporter.name, self.signal, poll, flush)
        except Exception as exc:  # the queue could not read the next entry back; its cursor stays
            if not self.read_failing:
                if isinstance(exc, OSError):
                    log.error("reading the queue failed; delivery paused", extra={**self.labels, "error": str(exc)})
                else:  # not the disk: a bug, worth its traceback (once)
                    log.exception("taking the next batch failed; delivery paused", extra=self.labels)
            self.read_failing = True
            if self.stop_retrying.wait(self.READ_RETRY_S):
                self.stopped = True
            return None
        if self.read_failing:
            log.info("reading the queue works again; delivery resumed", extra=self.labels)
            self.read_failing = False
        return batch

    def _deliver_guarded(self, batch: Batch) -> tuple[Outcome | None, float, float]:
        """`deliver`, retried should the runner's own code raise (never ack what was not
        settled); with the seconds it waited for the destination and took in all."""
        backoff = Backoff(self.exporter.retry)
        _network.waited = 0.0
        started = time.monotonic()
        while True:
            try:
                outcome = self.deliver(batch)
            except Exception:
                log.exception("delivery failed unexpectedly; batch stays queued, will retry", extra=self.labels)
                if self.stop_retrying.wait(backoff.delay(None)):
                    return None, 0.0, 0.0
                continue
            if outcome is not None and outcome.unsynced:  # its ack would come before its sync
                raise RuntimeError(f"exporter {self.exporter.name} answered unsynced with concurrency > 1")
            return outcome, _network.waited, time.monotonic() - started

    def _ack(self, batch: Batch) -> bool:
        """Acknowledges up to `batch` (acks are cumulative, so a later one covers an earlier one
        that failed). False when shutdown came while acking failed."""
        backoff = Backoff(self.exporter.retry)
        while True:
            try:
                # Lanes may ack at once: the queue takes its own lock, and an ack older than
                # one already made changes nothing.
                self.core.ack(batch)
                return True
            except Exception:
                log.exception("acknowledging a delivered batch failed; will retry", extra=self.labels)
                if self.stop_retrying.wait(backoff.delay(None)):
                    self.stopped = True
                    return False

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
                # The type only: the message of an unexpected error may quote a header (a secret).
                outcome = Outcome.retry("internal_error", f"exporter raised {type(exc).__name__}")
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


@dataclass
class _Slot:
    """A batch in a concurrent runner's window: done once its exporter settled it."""

    batch: Batch
    alongside: int  # sends in flight when it was taken, itself included
    number: int  # its place among the batches the runner took
    done: bool = False


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

    def __init__(self, timeout_s: float, where: str, pools: int = 4, maxsize: int = 3) -> None:
        self.timeout_s = timeout_s
        self.where = where  # a secret-free name of the destination for messages
        self.http = urllib3.PoolManager(
            num_pools=pools,
            # Connections per host: as many as requests in flight to it. `block` makes that a
            # bound: pipelines sharing this exporter (an adopted shard's) wait for a connection
            # rather than open extra ones, which urllib3 would close after each request.
            maxsize=maxsize,
            block=True,
            retries=False,
            timeout=urllib3.Timeout(connect=min(timeout_s, 5.0), read=timeout_s),
        )

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> urllib3.BaseHTTPResponse | Outcome:
        try:
            with waiting_on_destination():
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
