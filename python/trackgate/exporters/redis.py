"""Redis Streams exporter: the event bus (track 1).

A batch is normalized events, one JSON object per line (written by the data plane). Each event
becomes one stream entry. The core packs the batch's entries into one blob (`pack_bus_entries`,
GIL released) and one Lua script call appends them all with `XADD`, in queue order, so events of
one job reach the stream in the order they were accepted: one round trip and one reply per batch,
no Python per event. Delivery is at least once: after a failure mid-batch (or a crash before the
ack) the batch is sent again, and the repeated entries carry the same `event_id` for consumers to
drop. The streams are the script's KEYS: with `per_type` on a Redis Cluster, give the prefix a hash
tag (`{bus}:events`) so they share a slot.

Entry fields: `event_id`, `event_type`, `time_unix_nano`, the ids present (`service`, `job_id`,
`worker_id`, `machine_id`, `session_id`, `request_id`, `trace_id`), and `data` (JSON).
"""

from __future__ import annotations

import logging

import redis
import redis.exceptions

from trackgate import _core
from trackgate._core import Batch
from trackgate.config import RedisExporterConfig, mask_url
from trackgate.exporters.base import Exporter, Outcome

log = logging.getLogger("trackgate.exporter.redis")

# Redis error replies that pass (a loading replica, a full memory, a failover): retried.
TRANSIENT_REPLIES = frozenset(
    {"OOM", "LOADING", "BUSY", "TRYAGAIN", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "NOREPLICAS"}
)


def reply_code(exc: redis.exceptions.ResponseError) -> str:
    """The error reply's code (`OOM`, `READONLY`, ...). redis-py takes the codes it knows off the
    message (raising OutOfMemoryError, ReadOnlyError, ...) and keeps them in `status_code`."""
    code = getattr(exc, "status_code", None)
    if isinstance(code, str) and code:
        return code
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return "OOM"
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return "READONLY"
    if isinstance(exc, redis.exceptions.TryAgainError):
        return "TRYAGAIN"
    if isinstance(exc, redis.exceptions.ClusterDownError):
        return "CLUSTERDOWN"
    return str(exc).split(" ", 1)[0]


# KEYS: the streams. ARGV: maxlen (0: none), the packed entries (`events::bus` in the core: per
# entry the stream's index in KEYS and the pair count as u16, then each field and value as a u32
# length and its bytes, big-endian). Returns how many entries it appended.
XADD_SCRIPT = """
local maxlen = tonumber(ARGV[1])
local blob = ARGV[2]
local pos, n = 1, 0
while pos <= #blob do
  local key, count
  key, count, pos = struct.unpack('>HH', blob, pos)
  local args = {}
  for i = 1, count * 2 do
    local len
    len, pos = struct.unpack('>I4', blob, pos)
    args[i] = string.sub(blob, pos, pos + len - 1)
    pos = pos + len
  end
  if maxlen > 0 then
    redis.call('XADD', KEYS[key], 'MAXLEN', '~', maxlen, '*', unpack(args))
  else
    redis.call('XADD', KEYS[key], '*', unpack(args))
  end
  n = n + 1
end
return n
"""


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
        # redis-py sends EVALSHA and loads the script once when Redis answers NOSCRIPT.
        self.script = self.client.register_script(XADD_SCRIPT)

    def send(self, batch: Batch) -> Outcome:
        body = batch.body
        streams, blob, count, skipped = _core.pack_bus_entries(body, self.cfg.stream_prefix, self.cfg.per_type)
        if skipped:  # cannot happen for what the receiver queued
            log.error("queued events do not parse; skipped", extra={"lines": skipped})
        if not count:
            return Outcome.ok()
        try:
            self.script(keys=streams, args=[self.cfg.maxlen or 0, blob])
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            self._reset()
            return Outcome.retry("connection", f"redis at {self.where}: {type(exc).__name__}: {exc}")
        except redis.exceptions.ResponseError as exc:
            code, message = reply_code(exc), str(exc)
            if not message.startswith(code):
                message = f"{code} {message}"
            if code in TRANSIENT_REPLIES:
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
