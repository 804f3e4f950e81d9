"""`trackgate agent`: the collector alone, sending OTLP/HTTP protobuf to a gateway or any OTLP
endpoint. Small on purpose: one thread, no queue on disk, a bounded buffer in memory.

While the target is unreachable, samples wait in a buffer of `buffer` requests; when it is full
the oldest is dropped, counted, and logged once per outage. Only network errors and
429/502/503/504 are retried (with `Retry-After` honoured); any other answer is permanent and drops
that one sample.
"""

from __future__ import annotations

import collections
import gzip
import logging
import threading
import time
from dataclasses import dataclass

import urllib3

from trackgate.hostmetrics.collector import Collector
from trackgate.hostmetrics.gpu import GpuMode

log = logging.getLogger("trackgate.agent")

RETRYABLE = frozenset({429, 502, 503, 504})
DEFAULT_BUFFER = 120  # an hour of samples at the 30 s default; ~10 KiB each


def metrics_url(to: str) -> str:
    """`--to` is a base URL (`/v1/metrics` appended) or already the full metrics URL."""
    base = to.rstrip("/")
    return base if base.endswith("/v1/metrics") else f"{base}/v1/metrics"


@dataclass
class Stats:
    samples: int = 0
    sent: int = 0
    dropped_full: int = 0  # oldest dropped from a full buffer
    dropped_rejected: int = 0  # refused permanently by the target


class Agent:
    def __init__(
        self,
        to: str,
        *,
        token: str = "",
        headers: dict[str, str] | None = None,
        interval: float = 30.0,
        gpu: GpuMode = "auto",
        buffer: int = DEFAULT_BUFFER,
        timeout_s: float = 10.0,
        collector: Collector | None = None,
    ) -> None:
        from trackgate import __version__

        self.url = metrics_url(to)
        self.interval = interval
        self.collector = collector or Collector(gpu, service_name="trackgate-agent")
        self.buffer: collections.deque[bytes] = collections.deque()
        self.capacity = max(1, buffer)
        self.headers = {
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "gzip",
            "User-Agent": f"trackgate-agent/{__version__}",
        }
        self.headers.update(headers or {})
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.http = urllib3.PoolManager(
            num_pools=1, maxsize=1, retries=False, timeout=urllib3.Timeout(connect=min(5.0, timeout_s), read=timeout_s)
        )
        self.stats = Stats()
        self.stopping = threading.Event()
        self._down = False  # in an outage: logged at its start and end only
        self._full_logged = False
        self._retry_at = 0.0
        self._backoff = 1.0

    # -- one sample and delivery --------------------------------------------------------------

    def sample(self) -> None:
        body = gzip.compress(self.collector.request(), compresslevel=6)
        self.stats.samples += 1
        if len(self.buffer) >= self.capacity:
            self.buffer.popleft()
            self.stats.dropped_full += 1
            if not self._full_logged:
                self._full_logged = True
                log.warning(
                    "agent buffer full: dropping the oldest samples until the target answers",
                    extra={"buffer": self.capacity, "url": self.url},
                )
        self.buffer.append(body)

    def deliver(self, ignore_backoff: bool = False) -> None:
        """Sends what is buffered, oldest first, until it is empty or the target fails."""
        if not ignore_backoff and time.monotonic() < self._retry_at:
            return
        while self.buffer and not self.stopping.is_set():
            status, retry_after, error = self._post(self.buffer[0])
            if status is not None and 200 <= status < 300:
                self.buffer.popleft()
                self.stats.sent += 1
                self._recovered()
                continue
            if status is not None and status not in RETRYABLE:
                self.buffer.popleft()
                self.stats.dropped_rejected += 1
                log.warning("target refused a sample; dropped", extra={"status": status, "url": self.url})
                continue
            self._failed(error or f"HTTP {status}", retry_after)
            return

    def _post(self, body: bytes) -> tuple[int | None, float | None, str | None]:
        try:
            resp = self.http.request("POST", self.url, body=body, headers=self.headers, preload_content=True)
        except urllib3.exceptions.HTTPError as exc:
            return None, None, f"{type(exc).__name__}: {exc}"
        retry_after: float | None = None
        value = resp.headers.get("Retry-After")
        if value:
            try:
                retry_after = max(0.0, float(value))
            except ValueError:
                retry_after = None
        return resp.status, retry_after, None

    def _failed(self, reason: str, retry_after: float | None) -> None:
        if not self._down:
            self._down = True
            log.warning(
                "target unreachable or refusing; buffering samples and retrying",
                extra={"url": self.url, "error": reason, "buffer": self.capacity},
            )
        delay = retry_after if retry_after is not None else self._backoff
        self._retry_at = time.monotonic() + min(delay, max(self.interval, 1.0) * 4)
        self._backoff = min(self._backoff * 2, max(self.interval, 1.0))

    def _recovered(self) -> None:
        self._backoff = 1.0
        self._retry_at = 0.0
        if self._down:
            self._down = False
            self._full_logged = False
            log.info(
                "target answers again",
                extra={"url": self.url, "buffered": len(self.buffer), "dropped_total": self.stats.dropped_full},
            )

    # -- the loop -----------------------------------------------------------------------------

    def run(self, samples: int | None = None) -> Stats:
        """Samples every interval (delivery retried in between) until stopped, or `samples` taken."""
        log.info(
            "agent started",
            extra={"url": self.url, "interval_s": self.interval, "gpus": len(self.collector.gpu.devices)},
        )
        next_sample = time.monotonic()
        try:
            while not self.stopping.is_set():
                now = time.monotonic()
                if now >= next_sample:
                    self.sample()
                    next_sample += self.interval
                    if next_sample < now:
                        next_sample = now + self.interval
                self.deliver()
                if samples is not None and self.stats.samples >= samples:
                    break
                wake = next_sample
                if self.buffer and self._retry_at:
                    wake = min(wake, self._retry_at)
                self.stopping.wait(max(0.0, wake - time.monotonic()))
        finally:
            self.close()
        return self.stats

    def stop(self) -> None:
        self.stopping.set()

    def close(self) -> None:
        self.collector.close()
        self.http.clear()
        if self.buffer:
            log.warning("agent stopped with undelivered samples", extra={"samples": len(self.buffer)})
