"""Redis Streams exporter: the event bus (track 1).

A batch is normalized events, one JSON object per line (written by the data plane). Each event
becomes one stream entry, appended with `XADD` in one pipelined round trip per batch, in queue
order, so events of one job reach the stream in the order they were accepted. Delivery is at least
once: after a failure mid-batch (or a crash before the ack) the batch is sent again, and the
repeated entries carry the same `event_id` for consumers to drop.

Entry fields: `event_id`, `event_type`, `time_unix_nano`, the ids present (`service`, `job_id`,
`worker_id`, `machine_id`, `session_id`, `request_id`, `trace_id`), and `data` (JSON).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
import redis
import redis.exceptions

from trackgate._core import Batch
from trackgate.config import RedisExporterConfig, mask_url
from trackgate.exporters.base import Exporter, Outcome

log = logging.getLogger("trackgate.exporter.redis")

# Redis error replies that pass (a loading replica, a full memory, a failover): retried.
TRANSIENT_REPLIES = ("OOM", "LOADING", "BUSY", "TRYAGAIN", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "NOREPLICAS")
ID_KEYS = ("service", "job_id", "worker_id", "machine_id", "session_id", "request_id", "trace_id")


def entry_fields(event: dict[str, Any]) -> dict[str, str]:
    """One normalized event as stream entry fields (flat strings; `data` as JSON)."""
    fields = {
        "event_id": str(event["event_id"]),
        "event_type": str(event["event_type"]),
        "time_unix_nano": str(event["time_unix_nano"]),
    }
    for key in ID_KEYS:
        if key in event:
            fields[key] = str(event[key])
    fields["data"] = orjson.dumps(event.get("data") or {}).decode()
    return fields


class RedisExporter(Exporter):
    def __init__(self, cfg: RedisExporterConfig, name: str = "redis") -> None:
        self.name = name
        self.cfg = cfg
        self.retry = cfg.retry
        self.where = mask_url(cfg.url)
        # Password, database and TLS (rediss://) come from the URL. No client-side retries: the
        # runner retries with the batch still queued on disk.
        self.client: redis.Redis = redis.Redis.from_url(
            cfg.url,
            socket_timeout=cfg.timeout_s,
            socket_connect_timeout=min(cfg.timeout_s, 5.0),
            health_check_interval=30,
        )

    def stream(self, event_type: str) -> str:
        return f"{self.cfg.stream_prefix}:{event_type}" if self.cfg.per_type else self.cfg.stream_prefix

    def send(self, batch: Batch) -> Outcome:
        body = batch.body
        pipe = self.client.pipeline(transaction=False)
        count = 0
        for line in body.split(b"\n"):
            if not line.strip():
                continue
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError as exc:  # cannot happen for what the receiver queued
                log.error("queued event does not parse; skipped", extra={"error": str(exc)})
                continue
            fields = entry_fields(event)
            maxlen = self.cfg.maxlen or None
            pipe.xadd(self.stream(fields["event_type"]), fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
            count += 1
        if not count:
            return Outcome.ok()
        try:
            pipe.execute()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            self._reset()
            return Outcome.retry("connection", f"redis at {self.where}: {type(exc).__name__}: {exc}")
        except redis.exceptions.ResponseError as exc:
            message = str(exc)
            if message.startswith(TRANSIENT_REPLIES):
                return Outcome.retry("redis_busy", f"redis at {self.where}: {message}")
            return Outcome.drop("redis_error", f"redis at {self.where} refused the batch: {message}")
        except redis.exceptions.RedisError as exc:
            self._reset()
            return Outcome.retry("redis_error", f"redis at {self.where}: {type(exc).__name__}: {exc}")
        return Outcome.ok(sent_bytes=len(body))

    def _reset(self) -> None:
        """Drops pooled connections after a failure, so the next attempt connects afresh."""
        try:
            self.client.connection_pool.disconnect()
        except Exception:  # best effort
            log.debug("disconnect failed", exc_info=True)

    def close(self) -> None:
        self.client.close()
