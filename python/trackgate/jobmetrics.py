"""Job metrics derived from lifecycle events (the seed system's Track 4), exported as OTLP metrics.

Every `[metrics] interval` (METRICS_COLLECTION_INTERVAL overrides), each gateway process sends
its own series (cumulative, or delta with `[metrics] temporality = "delta"`) to the OTLP
exporters, through its main pipeline, with its own `service.instance.id` on the resource: the
backend sums the instances. An event is counted by
the one process that accepted it, so totals count each event once whichever worker or replica
received it; a restarted process is a new instance whose series start again at 0 (the old
instance's last values stay in the backend).

The counting is the data plane's (`_core.JobMetrics`, rust/events/metrics.rs): one call per
accepted request reads its events, updates the counters and histograms and builds the export.
This module is the control: the export thread, the Redis script calls, the fallback.

What one process cannot know alone lives in Redis next to the stream, when the event bus is
configured (else in the process, which is then exact for one process only):
- `<prefix>:jobs:received` (sorted set, job id → received time): for the queue wait, whichever
  process sees `job_started`;
- `<prefix>:jobs:active` (sorted set, job id → started time) and `<prefix>:jobs:service` (hash):
  the active jobs. The process that removes a job from the set (ZREM answers 1) counts its end:
  `job_completed`/`job_failed`, or, once it is older than `job_timeout_s`, a timeout
  (`jobs_processed_total{status="timeout"}`), so `jobs_active` cannot stay up forever and each
  end is counted once;
- `<prefix>:jobs:done:<job id>` (expiring key): an end seen before its start (two workers racing)
  keeps the late start from counting the job as active.

Metrics: `jobs_processed_total{status,service}`, `errors_total{error_type,service}`,
`jobs_active{service}` (up/down counter), `job_duration_seconds{service}` (histogram, bounds
0.1 … 300, from the end event's `duration_ms`/`duration`, else end - start),
`job_queue_wait_seconds{service}` (received → started), `job_input_bytes_total{service}`,
`job_output_bytes_total{service}` (from `input_size`/`output_size`).
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Protocol

from trackgate import _core

log = logging.getLogger("trackgate.jobmetrics")

DURATION_BOUNDS = [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0]


class Ingest(Protocol):
    def ingest(self, signal: Any, body: bytes, format: Any = ..., content_encoding: str | None = ...) -> Any: ...


# KEYS: received, active, service. ARGV: done prefix, keep seconds, then (op, job, service, ts)...
# ("r" received, "s" started, "f" finished). Received times older than 10 x keep are trimmed as
# they go (jobs never started). Returns one string, a `counted|time` per op joined by `,`, that
# the core reads (`parse_state_reply`).
STATE_SCRIPT = """
local out = {}
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 10 * tonumber(ARGV[2]))
for i = 3, #ARGV, 4 do
  local op, job, svc, ts = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if op == 'r' then
    redis.call('ZADD', KEYS[1], ts, job)
    out[#out + 1] = '0|'
  elseif op == 's' then
    local rec = redis.call('ZSCORE', KEYS[1], job)
    redis.call('ZREM', KEYS[1], job)
    local counted = 0
    if redis.call('EXISTS', ARGV[1] .. job) == 0 then
      counted = redis.call('ZADD', KEYS[2], 'NX', ts, job)
      if counted == 1 then redis.call('HSET', KEYS[3], job, svc) end
    end
    out[#out + 1] = counted .. '|' .. (rec or '')
  else
    local started = redis.call('ZSCORE', KEYS[2], job)
    if redis.call('ZREM', KEYS[2], job) == 1 then
      redis.call('HDEL', KEYS[3], job)
      out[#out + 1] = '1|' .. (started or '')
    else
      redis.call('SET', ARGV[1] .. job, 1, 'EX', ARGV[2])
      out[#out + 1] = '0|'
    end
  end
end
return table.concat(out, ',')
"""

# KEYS: active, service. ARGV: before (Unix s), most jobs. Ends the jobs started before `before`;
# the process whose ZREM answers 1 counts each (once). Returns their services, `<len>:<name>` each.
SWEEP_SCRIPT = """
local out = {}
local found = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, job in ipairs(found) do
  if redis.call('ZREM', KEYS[1], job) == 1 then
    local svc = redis.call('HGET', KEYS[2], job) or ''
    redis.call('HDEL', KEYS[2], job)
    out[#out + 1] = #svc .. ':' .. svc
  end
end
return table.concat(out)
"""


def state_key_base(prefix: str) -> str:
    """The shared-state keys' common part, a Redis Cluster hash tag: the script touches the
    received, active and service keys and the `done:<job>` keys in one call, which Cluster allows
    only within one hash slot. `trackgate:events` → `{trackgate:events}` (so
    `{trackgate:events}:jobs:active`); a prefix that already holds a tag (`{bus}:events`) is kept."""
    opening = prefix.find("{")
    if opening >= 0 and prefix.find("}", opening + 2) > opening:  # a non-empty tag, as Cluster reads it
        return prefix
    return "{" + prefix + "}"


class RedisState:
    """Job state shared by every process and replica, in Redis next to the stream."""

    def __init__(self, url: str, prefix: str, timeout_s: float) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        base = state_key_base(prefix)
        self.received_key = f"{base}:jobs:received"
        self.active_key = f"{base}:jobs:active"
        self.service_key = f"{base}:jobs:service"
        self.done_prefix = f"{base}:jobs:done:"
        self.keep_s = max(int(timeout_s * 2), 60)
        self.script = self.client.register_script(STATE_SCRIPT)
        self.sweep_script = self.client.register_script(SWEEP_SCRIPT)

    def call(self, argv: list[bytes]) -> bytes:
        """One request's operations (ARGV as the core built it) in one round trip (atomic, in order)."""
        reply: Any = self.script(keys=[self.received_key, self.active_key, self.service_key], args=argv)
        return bytes(reply)

    def run(self, ops: list[tuple[str, str, str, float]]) -> list[tuple[bool, float | None]]:
        """The script on (op, job, service, time) tuples, its reply read by the core: for checks
        and tools (the request path hands the core's ARGV to `call`)."""
        args: list[bytes] = [self.done_prefix.encode(), str(self.keep_s).encode()]
        for op in ops:
            args += [op[0].encode(), op[1].encode(), op[2].encode(), repr(op[3]).encode()]
        return _core.parse_state_reply(self.call(args) if ops else b"", len(ops))

    def sweep(self, before: float, limit: int = 1000) -> bytes:
        """Ends the jobs started before `before` (one script call): their services, for the core."""
        reply: Any = self.sweep_script(keys=[self.active_key, self.service_key], args=[repr(before), limit])
        return bytes(reply)


class JobMetrics:
    def __init__(
        self,
        pipeline: Ingest,
        interval_s: float,
        job_timeout_s: float,
        state: RedisState | None = None,
        resource: dict[str, str] | None = None,
        temporality: str = "cumulative",
    ) -> None:
        self.pipeline = pipeline
        self.interval_s = interval_s
        self.job_timeout_s = job_timeout_s
        self.redis = state  # None: the job state stays in this process, in the core
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.resource = {"service.name": "trackgate", **(resource or {}), "service.instance.id": self.instance_id}
        if temporality not in ("cumulative", "delta"):
            raise ValueError(f"temporality must be 'cumulative' or 'delta' (got {temporality!r})")
        self.core = _core.JobMetrics(
            time.time_ns(),
            list(self.resource.items()),
            delta=temporality == "delta",
            shared_state=(self.redis.done_prefix, self.redis.keep_s) if self.redis is not None else None,
        )
        self.start_ns = self.core.start_ns
        # Blocking I/O per request (Redis): the receiver calls `offer` in a thread.
        self.blocking = self.redis is not None
        self.state_failures = 0  # requests counted without the shared state
        self._failures_lock = threading.Lock()  # `offer` runs in several threads
        self._export_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> collections.Counter[str]:
        return collections.Counter(self.core.active())

    @property
    def processed(self) -> collections.Counter[tuple[str, str]]:
        return collections.Counter(self.core.processed())

    # -- intake (request threads) ---------------------------------------------------------------

    def offer(self, events: _core.EventsResult | bytes) -> None:
        """Counts accepted events (as decoded, or normalized NDJSON from the logs) before the
        request is answered: one core
        call, and with the shared state one Redis round trip between it and a second one. With
        the shared state unreachable, the events are counted without it (no queue wait, and the
        end of a job started elsewhere leaves that worker's `jobs_active` up until the timeout)."""
        pending = self.core.count(events)
        if pending is not None:
            self.settle(pending)

    def settle(self, pending: _core.StatePending) -> None:
        """Asks the shared state about a request's counted events and finishes counting them
        (`offer`'s second half; the OTLP/HTTP front calls it on a blocking thread)."""
        assert self.redis is not None
        reply: bytes | None
        try:
            reply = self.redis.call(pending.argv)
        except Exception as exc:
            log.warning("job metrics: shared state unavailable", extra={"error": str(exc)})
            self._failed()
            reply = None
        try:
            self.core.finish(pending, reply)
        except ValueError as exc:  # counted without the state
            log.warning("job metrics: shared state reply unreadable", extra={"error": str(exc)})
            self._failed()

    def _failed(self) -> None:
        with self._failures_lock:
            self.state_failures += 1

    # -- the metrics thread ---------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> None:
        before = (time.time() if now is None else now) - self.job_timeout_s
        if self.redis is None:
            self.core.expire(before)
        else:
            self.core.expired(self.redis.sweep(before))

    def tick(self) -> None:
        try:
            self.sweep()
        except Exception as exc:
            log.warning("job metrics: timeout sweep failed", extra={"error": str(exc)})

    def export(self) -> None:
        with self._export_lock:
            body = self.core.export(time.time_ns())
            if body is not None:
                try:
                    self.pipeline.ingest("metrics", body, "json")
                except Exception as exc:  # a full queue or shutdown: the next export carries it
                    log.warning("job metrics export skipped", extra={"error": str(exc)})
                    return
            self.core.exported()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> JobMetrics:
        self._thread = threading.Thread(target=self._run, name="trackgate-jobmetrics", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        next_export = time.monotonic() + self.interval_s
        while not self._stop.wait(min(1.0, self.interval_s)):
            self.tick()
            if time.monotonic() >= next_export:
                self.export()
                next_export = time.monotonic() + self.interval_s

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.tick()
        self.export()  # the last totals before the pipeline drains
