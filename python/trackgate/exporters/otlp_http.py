"""OTLP/HTTP exporter: Dash0 or any OTLP/HTTP backend (protobuf, gzip)."""

from __future__ import annotations

import logging
from typing import Literal

from trackgate import __version__, telemetry
from trackgate._core import Batch, gzip, parse_partial_success
from trackgate.config import OtlpExporterConfig, mask_url
from trackgate.exporters.base import Exporter, HttpDestination, Outcome, status_outcome

log = logging.getLogger("trackgate.exporter.otlp")

Format = Literal["protobuf", "json"]


class OtlpHttpExporter(Exporter):
    # A series' points go out in order: backends refuse a sample older than one they have.
    ordered = frozenset({"metrics"})

    def __init__(self, name: str, cfg: OtlpExporterConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.retry = cfg.retry
        self.base = cfg.endpoint.rstrip("/")
        self.safe_base = mask_url(self.base)  # for messages: userinfo in the URL is a secret
        self.headers = {
            "Content-Type": "application/x-protobuf",
            "User-Agent": f"trackgate/{__version__}",
            **cfg.auth_headers(),
        }
        if cfg.compression == "gzip":
            self.headers["Content-Encoding"] = "gzip"
        self.concurrency = cfg.concurrency
        # The three signals' runners share the backend's connections.
        self.http = HttpDestination(cfg.timeout_s, self.safe_base, maxsize=3 * cfg.concurrency)
        self.check_limits = cfg.check_dash0_limits if cfg.check_dash0_limits is not None else name == "dash0"
        self._warned: set[tuple[str, str]] = set()

    def url(self, signal: str) -> str:
        return f"{self.base}/v1/{signal}"

    def send(self, batch: Batch) -> Outcome:
        if self.check_limits:
            self.count_over_limits(batch)
        # In this exporter thread; the core releases the GIL while it compresses.
        body = batch.body
        if self.cfg.compression == "gzip":
            body = gzip(body, self.cfg.compression_level_for(batch.signal))
        resp = self.http.post(self.url(batch.signal), body, self.headers)
        if isinstance(resp, Outcome):
            return resp
        status = resp.status
        if 200 <= status < 300:
            rejected, message = 0, ""
            if resp.data:
                fmt: Format = "json" if "json" in (resp.headers.get("Content-Type") or "") else "protobuf"
                try:
                    rejected, message = parse_partial_success(resp.data, fmt)
                except ValueError:
                    log.warning("undecodable success response", extra={"exporter": self.name, "status": status})
            return Outcome.ok(sent_bytes=len(body), rejected=rejected, reason=message)
        detail = _short(resp.data)
        reason = f"HTTP {status} from {self.safe_base}/v1/{batch.signal}" + (f": {detail}" if detail else "")
        return status_outcome(status, reason, resp.headers.get("Retry-After"))

    def count_over_limits(self, batch: Batch) -> None:
        count_over_dash0_limits(self.name, batch, self._warned)

    def close(self) -> None:
        self.http.close()


def count_over_dash0_limits(exporter: str, batch: Batch, warned: set[tuple[str, str]]) -> None:
    """Dash0 truncates what is over its documented limits instead of refusing it: count those
    records per limit, and say so in the log once per signal and limit (`warned` remembers)."""
    try:
        # Counted at ingest and carried with the batch; only entries read back from disk are walked.
        report = batch.content_report
    except ValueError:
        return  # validated at ingest; nothing to count if it does not walk
    for limit, count in report:
        if not count:
            continue
        telemetry.OVER_LIMIT.inc(count, exporter=exporter, signal=batch.signal, limit=limit)
        if (batch.signal, limit) not in warned:
            warned.add((batch.signal, limit))
            log.warning(
                "records over Dash0's documented content limit; Dash0 truncates them",
                extra={"exporter": exporter, "signal": batch.signal, "limit": limit, "records": count},
            )


def _short(data: bytes, limit: int = 200) -> str:
    text = data[:limit].decode("utf-8", "replace").strip()
    return text.replace("\n", " ") + ("..." if len(data) > limit else "")
