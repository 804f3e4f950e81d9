"""OTLP/HTTP exporter: Dash0 or any OTLP/HTTP backend (protobuf, gzip)."""

from __future__ import annotations

import logging
from typing import Literal

import urllib3

from trackgate import __version__
from trackgate._core import Batch, gzip, parse_partial_success
from trackgate.config import OtlpExporterConfig, mask_url
from trackgate.exporters.base import Exporter, Outcome, parse_retry_after

log = logging.getLogger("trackgate.exporter.otlp")

# The OTLP specification's retryable statuses; every other failure is permanent.
Format = Literal["protobuf", "json"]
RETRYABLE = frozenset({429, 502, 503, 504})


class OtlpHttpExporter(Exporter):
    def __init__(self, name: str, cfg: OtlpExporterConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.retry = cfg.retry
        self.base = cfg.endpoint.rstrip("/")
        self.safe_base = mask_url(self.base)  # for messages: userinfo in the URL is a secret
        self.headers = {
            "Content-Type": "application/x-protobuf",
            "User-Agent": f"trackgate/{__version__}",
            **cfg.headers,
        }
        if cfg.token:
            self.headers["Authorization"] = f"Bearer {cfg.token}"
        if cfg.dataset:
            self.headers["Dash0-Dataset"] = cfg.dataset
        if cfg.compression == "gzip":
            self.headers["Content-Encoding"] = "gzip"
        # Retries are ours (with the queue behind them), never urllib3's.
        self.http = urllib3.PoolManager(
            num_pools=4,
            maxsize=3,
            retries=False,
            timeout=urllib3.Timeout(connect=min(cfg.timeout_s, 5.0), read=cfg.timeout_s),
        )

    def url(self, signal: str) -> str:
        return f"{self.base}/v1/{signal}"

    def send(self, batch: Batch) -> Outcome:
        body = gzip(batch.body) if self.cfg.compression == "gzip" else batch.body
        try:
            resp = self.http.request(
                "POST", self.url(batch.signal), body=body, headers=self.headers, preload_content=True
            )
        except urllib3.exceptions.NewConnectionError as exc:  # a subclass of TimeoutError in urllib3 2.x
            return Outcome.retry("connection", f"connection failed: {type(exc).__name__}")
        except urllib3.exceptions.TimeoutError as exc:
            return Outcome.retry("timeout", f"no answer within {self.cfg.timeout_s}s ({type(exc).__name__})")
        except urllib3.exceptions.HTTPError as exc:
            return Outcome.retry("connection", f"connection failed: {type(exc).__name__}")
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
        if status in RETRYABLE:
            return Outcome.retry(f"status_{status}", reason, parse_retry_after(resp.headers.get("Retry-After")))
        return Outcome.drop(f"status_{status}", reason)

    def close(self) -> None:
        self.http.clear()


def _short(data: bytes, limit: int = 200) -> str:
    text = data[:limit].decode("utf-8", "replace").strip()
    return text.replace("\n", " ") + ("..." if len(data) > limit else "")
