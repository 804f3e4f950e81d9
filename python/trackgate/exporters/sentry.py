"""Sentry exporter: forwards envelopes to the upstream Sentry, honouring its rate limits."""

from __future__ import annotations

import logging
import time

import orjson

from trackgate import __version__
from trackgate._core import Batch, Core, PipelineClosed, QueueFull, envelope_categories, gzip
from trackgate.config import SentryExporterConfig
from trackgate.dsn import Dsn, parse_dsn
from trackgate.exporters.base import Exporter, HttpDestination, Outcome, parse_retry_after, status_outcome
from trackgate.ratelimits import RateLimits

log = logging.getLogger("trackgate.exporter.sentry")

# How long a rate-limited envelope waits before it is looked at again (it is put back in the
# queue behind the others, so envelopes of other categories keep flowing meanwhile).
PARK_S = 1.0


def rewrite_dsn(envelope: bytes, dsn: Dsn) -> bytes:
    """Points the envelope header's `dsn` at the upstream project (the client's key stays here)."""
    header, sep, rest = envelope.partition(b"\n")
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError:
        return envelope
    if not isinstance(doc, dict) or "dsn" not in doc:
        return envelope
    doc["dsn"] = str(dsn)
    return orjson.dumps(doc) + sep + rest


class SentryExporter(Exporter):
    def __init__(self, cfg: SentryExporterConfig, limits: RateLimits, name: str = "sentry") -> None:
        self.name = name
        self.cfg = cfg
        self.retry = cfg.retry
        self.dsn = parse_dsn(cfg.dsn)
        self.limits = limits
        self.core: Core | None = None  # set by the pipeline that owns the queue, for parking
        self.headers = {
            "Content-Type": "application/x-sentry-envelope",
            "Content-Encoding": "gzip",
            "User-Agent": f"trackgate/{__version__}",
            "X-Sentry-Auth": (
                f"Sentry sentry_key={self.dsn.public_key}, sentry_version=7, sentry_client=trackgate/{__version__}"
            ),
        }
        self.concurrency = cfg.concurrency
        self.http = HttpDestination(cfg.timeout_s, self.dsn.masked, pools=2, maxsize=cfg.concurrency)

    def send(self, batch: Batch) -> Outcome:
        envelope = batch.body
        try:
            categories = envelope_categories(envelope)
        except ValueError as exc:  # cannot happen for what the receiver queued; never retry it
            return Outcome.drop("malformed", f"queued envelope does not parse: {exc}")
        limited = self.limits.limited(categories)
        if limited and self.core is not None:
            # Hold it until the limit passes without blocking the envelopes queued behind it.
            if not self.core.closed:
                time.sleep(min(PARK_S, max(limited.values())))
            return self._park(batch, f"categories {sorted(limited)} rate limited")
        body = gzip(rewrite_dsn(envelope, self.dsn))
        resp = self.http.post(self.dsn.envelope_url, body, self.headers)
        if isinstance(resp, Outcome):
            return resp
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        rate_header = resp.headers.get("X-Sentry-Rate-Limits")
        if rate_header or resp.status == 429:
            self.limits.update(rate_header, retry_after, resp.status)
        if 200 <= resp.status < 300:
            return Outcome.ok(sent_bytes=len(body))
        reason = f"HTTP {resp.status} from {self.dsn.masked}"
        if resp.status == 429 and self.core is not None:
            # Rate limited: park it like above, so it goes out once the limit has passed.
            log.info("upstream rate limit; envelope held", extra={"categories": categories})
            return self._park(batch, "upstream answered 429")
        return status_outcome(resp.status, reason, resp.headers.get("Retry-After"))

    def _park(self, batch: Batch, reason: str) -> Outcome:
        """Puts the envelope back at the end of the queue. When the queue takes nothing more (closed
        while shutting down, full, its disk failing), it is held and retried in place instead: it
        stays queued, on disk, rather than being acknowledged and lost."""
        assert self.core is not None
        try:
            self.core.enqueue("logs", batch.body, batch.records)
        except PipelineClosed:
            return Outcome.retry("rate_limited", f"{reason}; shutting down", retry_after=PARK_S)
        except (QueueFull, OSError) as exc:
            # Parking again after the wait lets other categories flow once the queue has room.
            detail = f"{reason}; cannot requeue ({type(exc).__name__}: {exc}), held"
            return Outcome.retry("requeue_failed", detail, retry_after=PARK_S)
        return Outcome.requeued(reason)

    def close(self) -> None:
        self.http.close()
