"""Job metrics derived from lifecycle events (the seed system's Track 4), exported as OTLP metrics.

Every `[metrics] interval` (METRICS_COLLECTION_INTERVAL overrides), each gateway process sends
its own series (cumulative, or delta with `[metrics] temporality = "delta"`) to the OTLP
exporters, through its main pipeline, with its own `service.instance.id` on the resource: the
backend sums the instances. An event is counted by
the one process that accepted it, so totals count each event once whichever worker or replica
received it; a restarted process is a new instance whose series start again at 0 (the old
instance's last values stay in the backend).

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
import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Protocol

import orjson

log = logging.getLogger("trackgate.jobmetrics")

DURATION_BOUNDS = [0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0]
END_TYPES = {"job_completed": "completed", "job_failed": "failed"}
MAX_LOCAL_JOBS = 100_000


class Ingest(Protocol):
    def ingest(self, signal: Any, body: bytes, format: Any = ..., content_encoding: str | None = ...) -> Any: ...


# AggregationTemporality in the OTLP metrics proto.
DELTA, CUMULATIVE = 1, 2


class Histogram:
    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        index = next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))
        self.counts[index] += 1
        self.sum += value
        self.count += 1

    def copy(self) -> Histogram:
        h = Histogram(self.bounds)
        h.counts, h.sum, h.count = list(self.counts), self.sum, self.count
        return h

    def minus(self, earlier: Histogram | None) -> Histogram:
        if earlier is None:
            return self.copy()
        h = Histogram(self.bounds)
        h.counts = [a - b for a, b in zip(self.counts, earlier.counts, strict=True)]
        h.sum, h.count = self.sum - earlier.sum, self.count - earlier.count
        return h


def _changed(now: collections.Counter[Any], before: collections.Counter[Any]) -> collections.Counter[Any]:
    return collections.Counter({k: n - before.get(k, 0) for k, n in now.items() if n != before.get(k, 0)})


@dataclasses.dataclass
class Totals:
    """The monotonic series at one moment (what a delta export subtracts)."""

    processed: collections.Counter[tuple[str, str]] = dataclasses.field(default_factory=collections.Counter)
    errors: collections.Counter[tuple[str, str]] = dataclasses.field(default_factory=collections.Counter)
    active: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    input_bytes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    output_bytes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    duration: dict[str, Histogram] = dataclasses.field(default_factory=dict)
    queue_wait: dict[str, Histogram] = dataclasses.field(default_factory=dict)

    def minus(self, earlier: Totals) -> Totals:
        """What changed since `earlier` (series without change left out; `active` as it is)."""

        def hists(now: dict[str, Histogram], before: dict[str, Histogram]) -> dict[str, Histogram]:
            out = {k: h.minus(before.get(k)) for k, h in now.items()}
            return {k: h for k, h in out.items() if h.count}

        return Totals(
            processed=_changed(self.processed, earlier.processed),
            errors=_changed(self.errors, earlier.errors),
            active=self.active,
            input_bytes=_changed(self.input_bytes, earlier.input_bytes),
            output_bytes=_changed(self.output_bytes, earlier.output_bytes),
            duration=hists(self.duration, earlier.duration),
            queue_wait=hists(self.queue_wait, earlier.queue_wait),
        )


# One state operation: ("r" received | "s" started | "f" finished, job id, service, event time).
Op = tuple[str, str, str, float]
# Its result: (counted: the start made the job active / the end removed an active job, a time:
# received time for "s", started time for "f").
OpResult = tuple[bool, float | None]


class JobState(Protocol):
    def run(self, ops: list[Op]) -> list[OpResult]: ...
    def expired(self, before: float) -> list[tuple[str, str]]: ...


class LocalState:
    """Job state in this process (no event bus configured)."""

    def __init__(self) -> None:
        self.received_at: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.active: dict[str, tuple[str, float]] = {}
        self.done: collections.OrderedDict[str, None] = collections.OrderedDict()

    def run(self, ops: list[Op]) -> list[OpResult]:
        out: list[OpResult] = []
        for op, job, service, ts in ops:
            if op == "r":
                self.received(job, ts)
                out.append((False, None))
            elif op == "s":
                out.append(self.start(job, service, ts))
            else:
                out.append(self.finish(job))
        return out

    def received(self, job: str, ts: float) -> None:
        self.received_at[job] = ts
        while len(self.received_at) > MAX_LOCAL_JOBS:
            self.received_at.popitem(last=False)

    def start(self, job: str, service: str, ts: float) -> tuple[bool, float | None]:
        """(counted as active, received time)."""
        received = self.received_at.pop(job, None)
        if job in self.done or job in self.active:
            return False, received
        self.active[job] = (service, ts)
        return True, received

    def finish(self, job: str) -> tuple[bool, float | None]:
        """(was active, started time)."""
        entry = self.active.pop(job, None)
        if entry is None:
            self.done[job] = None
            while len(self.done) > MAX_LOCAL_JOBS:
                self.done.popitem(last=False)
            return False, None
        return True, entry[1]

    def expired(self, before: float) -> list[tuple[str, str]]:
        out = [(job, svc) for job, (svc, ts) in self.active.items() if ts < before]
        for job, _ in out:
            del self.active[job]
        return out


# KEYS: received, active, service. ARGV: done prefix, keep seconds, then (op, job, service, ts)...
# Received times older than 10 x keep are trimmed as they go (jobs never started).
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
return out
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

    def run(self, ops: list[Op]) -> list[OpResult]:
        """Every operation of one request in one round trip (a Lua script: atomic, in order)."""
        if not ops:
            return []
        args: list[str | float] = [self.done_prefix, self.keep_s]
        for op, job, service, ts in ops:
            args.extend((op, job, service, repr(ts)))
        keys = [self.received_key, self.active_key, self.service_key]
        replies: Any = self.script(keys=keys, args=args)
        out: list[OpResult] = []
        for reply in replies:
            text = reply.decode() if isinstance(reply, bytes) else str(reply)
            flag, _, when = text.partition("|")
            out.append((flag == "1", float(when) if when else None))
        return out

    def expired(self, before: float) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        found: Any = self.client.zrangebyscore(self.active_key, "-inf", before, start=0, num=1000)
        for raw in found:
            if self.client.zrem(self.active_key, raw):  # this process ends it: counted once
                job = raw.decode() if isinstance(raw, bytes) else str(raw)
                service = self.client.hget(self.service_key, job)
                self.client.hdel(self.service_key, job)
                out.append((job, service.decode() if isinstance(service, bytes) else "unknown_service"))
        return out


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class JobMetrics:
    def __init__(
        self,
        pipeline: Ingest,
        interval_s: float,
        job_timeout_s: float,
        state: JobState | None = None,
        resource: dict[str, str] | None = None,
        temporality: str = "cumulative",
    ) -> None:
        self.pipeline = pipeline
        self.interval_s = interval_s
        self.job_timeout_s = job_timeout_s
        self.state: JobState = state or LocalState()
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.resource = {"service.name": "trackgate", **(resource or {}), "service.instance.id": self.instance_id}
        self.start_ns = time.time_ns()
        if temporality not in ("cumulative", "delta"):
            raise ValueError(f"temporality must be 'cumulative' or 'delta' (got {temporality!r})")
        self.delta = temporality == "delta"
        # Delta: what the last export that reached the queue reported, and when (the next
        # points' start time).
        self.reported: Totals = Totals()
        self.reported_ns = self.start_ns
        self.state_failures = 0
        self.lock = threading.Lock()
        self.processed: collections.Counter[tuple[str, str]] = collections.Counter()
        self.errors: collections.Counter[tuple[str, str]] = collections.Counter()
        self.active: collections.Counter[str] = collections.Counter()
        self.input_bytes: collections.Counter[str] = collections.Counter()
        self.output_bytes: collections.Counter[str] = collections.Counter()
        self.duration: dict[str, Histogram] = {}
        self.queue_wait: dict[str, Histogram] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- intake (request threads) ---------------------------------------------------------------

    def offer(self, ndjson: bytes) -> None:
        """Counts accepted events (normalized NDJSON) before the request is answered, so that the
        shared state sees one client's events in the order it sent them, whichever worker took
        each. With the shared state unreachable, the events are counted without it (no queue
        wait, and the end of a job started elsewhere leaves that worker's `jobs_active` up until
        the timeout)."""
        events = [orjson.loads(line) for line in ndjson.splitlines() if line.strip()]
        with self.lock:
            try:
                self.apply(events)
            except Exception as exc:
                log.warning("job metrics: shared state unavailable", extra={"error": str(exc)})
                self.state_failures += 1
                self.apply(events, use_state=False)

    # -- the metrics thread ---------------------------------------------------------------------

    def apply(self, events: list[dict[str, Any]], use_state: bool = True) -> None:
        """Counts `events`; their shared-state operations go in one batch (`use_state` False:
        counted without the shared state)."""
        ops: list[Op] = []
        for e in events:
            kind, job = e.get("event_type"), e.get("job_id")
            if job and (kind in ("job_received", "job_started") or kind in END_TYPES):
                op = "r" if kind == "job_received" else "s" if kind == "job_started" else "f"
                ops.append((op, str(job), str(e.get("service") or "unknown_service"), e.get("time_unix_nano", 0) / 1e9))
        results = iter(self.state.run(ops) if use_state else [(False, None)] * len(ops))
        for e in events:
            kind = e.get("event_type")
            job = e.get("job_id")
            service = str(e.get("service") or "unknown_service")
            data = e.get("data") or {}
            ts = e.get("time_unix_nano", 0) / 1e9
            if kind == "job_received":
                if job:
                    next(results)
                size = _float(data.get("input_size"))
                if size is not None:
                    self.input_bytes[service] += int(size)
            elif kind == "job_started" and job:
                counted, received = next(results)
                if counted:
                    self.active[service] += 1
                if received is not None and ts >= received:
                    self.queue_wait.setdefault(service, Histogram(DURATION_BOUNDS)).observe(ts - received)
            elif kind in END_TYPES:
                status = END_TYPES[kind]
                started: float | None = None
                if job:
                    was_active, started = next(results)
                    if was_active:
                        self.active[service] -= 1
                self.processed[(status, service)] += 1
                duration = self._duration(data, started, ts)
                if duration is not None:
                    self.duration.setdefault(service, Histogram(DURATION_BOUNDS)).observe(duration)
                if status == "failed":
                    self.errors[(str(data.get("error_type") or "unknown"), service)] += 1
                size = _float(data.get("output_size"))
                if size is not None:
                    self.output_bytes[service] += int(size)

    @staticmethod
    def _duration(data: dict[str, Any], started: float | None, ts: float) -> float | None:
        for key, scale in (("duration_ms", 1e-3), ("duration", 1e-3), ("duration_s", 1.0)):
            value = _float(data.get(key))
            if value is not None and value >= 0:
                return value * scale
        if started is not None and ts >= started:
            return ts - started
        return None

    def sweep(self, now: float | None = None) -> None:
        before = (time.time() if now is None else now) - self.job_timeout_s
        for _job, service in self.state.expired(before):
            self.active[service] -= 1
            self.processed[("timeout", service)] += 1

    def tick(self) -> None:
        with self.lock:
            try:
                self.sweep()
            except Exception as exc:
                log.warning("job metrics: timeout sweep failed", extra={"error": str(exc)})

    def export(self) -> None:
        with self.lock:
            now_ns = time.time_ns()
            totals = self.totals()
            body = self.otlp_json(now_ns, totals)
        if body is not None:
            try:
                self.pipeline.ingest("metrics", body, "json")
            except Exception as exc:  # a full queue or shutdown: the next export carries it
                log.warning("job metrics export skipped", extra={"error": str(exc)})
                return
        if self.delta:
            with self.lock:
                self.reported, self.reported_ns = totals, now_ns

    def totals(self) -> Totals:
        """A copy of the running totals (cumulative since this process started)."""
        return Totals(
            processed=collections.Counter(self.processed),
            errors=collections.Counter(self.errors),
            active=collections.Counter(self.active),
            input_bytes=collections.Counter(self.input_bytes),
            output_bytes=collections.Counter(self.output_bytes),
            duration={k: h.copy() for k, h in self.duration.items()},
            queue_wait={k: h.copy() for k, h in self.queue_wait.items()},
        )

    def otlp_json(self, now_ns: int | None = None, totals: Totals | None = None) -> bytes | None:
        """The metrics as an OTLP/JSON request. Cumulative: every series, from the process start.
        Delta (the OTel SDK's `delta` preference): counters and histograms carry what changed
        since the last export that was queued (series without change are left out), from that
        export's time; `jobs_active`, an up/down counter, stays cumulative."""
        now = str(time.time_ns() if now_ns is None else now_ns)
        t = self.totals() if totals is None else totals
        if self.delta:
            t = t.minus(self.reported)
        start = str(self.reported_ns if self.delta else self.start_ns)
        temporality = DELTA if self.delta else CUMULATIVE

        def attrs(**kv: str) -> list[dict[str, Any]]:
            return [{"key": k, "value": {"stringValue": v}} for k, v in kv.items()]

        def point(attributes: list[dict[str, Any]], value: int, since: str | None = None) -> dict[str, Any]:
            return {
                "attributes": attributes,
                "startTimeUnixNano": since or start,
                "timeUnixNano": now,
                "asInt": str(value),
            }

        def sum_metric(
            name: str, unit: str, monotonic: bool, points: list[dict[str, Any]], kind: int = temporality
        ) -> dict[str, Any]:
            return {
                "name": name,
                "unit": unit,
                "sum": {"aggregationTemporality": kind, "isMonotonic": monotonic, "dataPoints": points},
            }

        def hist_metric(name: str, hists: dict[str, Histogram]) -> dict[str, Any]:
            points = [
                {
                    "attributes": attrs(service=svc),
                    "startTimeUnixNano": start,
                    "timeUnixNano": now,
                    "count": str(h.count),
                    "sum": h.sum,
                    "bucketCounts": [str(c) for c in h.counts],
                    "explicitBounds": h.bounds,
                }
                for svc, h in sorted(hists.items())
            ]
            return {
                "name": name,
                "unit": "s",
                "histogram": {"aggregationTemporality": temporality, "dataPoints": points},
            }

        metrics = []
        if t.processed:
            points = [point(attrs(status=st, service=svc), n) for (st, svc), n in sorted(t.processed.items())]
            metrics.append(sum_metric("jobs_processed_total", "1", True, points))
        if t.errors:
            points = [point(attrs(error_type=et, service=svc), n) for (et, svc), n in sorted(t.errors.items())]
            metrics.append(sum_metric("errors_total", "1", True, points))
        if t.active:
            # Always cumulative (a gauge-like sum): the current count, from the process start.
            since = str(self.start_ns)
            points = [point(attrs(service=svc), n, since) for svc, n in sorted(t.active.items())]
            metrics.append(sum_metric("jobs_active", "1", False, points, CUMULATIVE))
        for name, counter in (
            ("job_input_bytes_total", t.input_bytes),
            ("job_output_bytes_total", t.output_bytes),
        ):
            if counter:
                points = [point(attrs(service=svc), n) for svc, n in sorted(counter.items())]
                metrics.append(sum_metric(name, "By", True, points))
        if t.duration:
            metrics.append(hist_metric("job_duration_seconds", t.duration))
        if t.queue_wait:
            metrics.append(hist_metric("job_queue_wait_seconds", t.queue_wait))
        if not metrics:
            return None
        doc = {
            "resourceMetrics": [
                {
                    "resource": {"attributes": attrs(**self.resource)},
                    "scopeMetrics": [{"scope": {"name": "trackgate.jobmetrics"}, "metrics": metrics}],
                }
            ]
        }
        return orjson.dumps(doc)

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
