"""`trackgate bench`: load a gateway (or any OTLP / Fluent endpoint) and report what it takes.

The bodies are built here once; the load itself runs in the extension (`_core.load`, Rust on
tokio, the GIL released): keep-alive connections, one call at a time each (no pipelining), for
`duration` seconds or at a target `rate`. Tracks: `otlp` (OTLP/HTTP protobuf), `grpc` (OTLP/gRPC
unary), `fluent` (Fluent Bit http output, json_lines, to /v1/fluent/{tag}), `forward` (Fluent
forward PackedForward over TCP with `chunk`/ack), `events` (NDJSON to /v1/events) and `sentry`
(envelopes of one error event), alone or mixed by weight. `--ceiling` runs the same load on the
do-nothing apps (`trackgate.nullapp`) on granian with the gateway's worker count, over ASGI (the
issue's ceiling) and RSGI (the interface `trackgate serve` uses: the front server's own ceiling),
and prints the gateway's share of each; `--compare` on another endpoint.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

import msgspec
import orjson

from trackgate import procstat
from trackgate._core import gzip, load, to_protobuf

TRACKS = ("otlp", "grpc", "fluent", "forward", "events", "sentry")
SIGNALS = ("traces", "logs", "metrics", "events")
GRPC_METHODS = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
}


class BenchError(Exception):
    """A bench that cannot run as asked (bad URL, unreachable target, contradicting options)."""


def events_body(records: int) -> bytes:
    """NDJSON of `records` job lifecycle events (POST /v1/events)."""
    now = time.time_ns()
    kinds = ("job_received", "job_started", "job_progress", "job_completed")
    lines = [
        orjson.dumps(
            {
                "event_type": kinds[i % 4],
                "job_id": f"job-{i // 4}",
                "service": "bench",
                "worker_id": "w-1",
                "timestamp": now + i,
                "data": {"progress": i % 100, "duration_ms": 1200, "output_size": 4096},
            }
        )
        for i in range(records)
    ]
    return b"\n".join(lines) + b"\n"


def request_body(signal: str, records: int) -> bytes:
    """An OTLP protobuf request of `records` spans, log records or data points, as a job worker
    would send (events: the NDJSON of `events_body`)."""
    if signal == "events":
        return events_body(records)
    now = time.time_ns()
    common = [{"key": "job.id", "value": {"stringValue": "job-1"}}, {"key": "gpu.index", "value": {"intValue": "0"}}]
    resource = {"attributes": [{"key": "service.name", "value": {"stringValue": "bench"}}]}
    scope = {"name": "trackgate-bench"}
    doc: dict[str, object]
    if signal == "traces":
        spans = [
            {
                "traceId": os.urandom(16).hex(),
                "spanId": os.urandom(8).hex(),
                "name": f"node.execute.{i % 17}",
                "kind": 1,
                "startTimeUnixNano": str(now),
                "endTimeUnixNano": str(now + 5_000_000),
                "attributes": common,
            }
            for i in range(records)
        ]
        doc = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"scope": scope, "spans": spans}]}]}
    elif signal == "metrics":
        metrics = [
            {
                "name": f"bench.gpu.utilization.{i % 17}",
                "unit": "1",
                "gauge": {"dataPoints": [{"timeUnixNano": str(now), "asDouble": i / 100, "attributes": common}]},
            }
            for i in range(records)
        ]
        doc = {"resourceMetrics": [{"resource": resource, "scopeMetrics": [{"scope": scope, "metrics": metrics}]}]}
    else:
        logs = [
            {
                "timeUnixNano": str(now),
                "severityNumber": 9,
                "body": {"stringValue": f"job job-1 step {i} done"},
                "attributes": common,
            }
            for i in range(records)
        ]
        doc = {"resourceLogs": [{"resource": resource, "scopeLogs": [{"scope": scope, "logRecords": logs}]}]}
    return to_protobuf(signal, orjson.dumps(doc))  # type: ignore[arg-type]


def _fluent_record(i: int) -> dict[str, object]:
    return {"log": f"job job-1 step {i} done", "level": "info", "job_id": "job-1", "stream": "stdout"}


def fluent_body(records: int) -> bytes:
    """Fluent Bit's http output with `format json_lines`: one record a line, its time in `date`."""
    now = time.time()
    return b"".join(orjson.dumps({"date": now, **_fluent_record(i)}) + b"\n" for i in range(records))


def forward_entries(records: int) -> bytes:
    """The entries of a PackedForward message: `[EventTime, record]` back to back."""
    now = time.time_ns()
    stamp = msgspec.msgpack.Ext(0, struct.pack(">II", now // 1_000_000_000, now % 1_000_000_000))
    return b"".join(msgspec.msgpack.encode([stamp, _fluent_record(i)]) for i in range(records))


def sentry_envelope(dsn: str) -> bytes:
    """A Sentry envelope of one error event, as sentry-sdk sends it (one event per envelope)."""
    event_id = os.urandom(16).hex()
    event = orjson.dumps(
        {
            "event_id": event_id,
            "timestamp": time.time(),
            "platform": "python",
            "level": "error",
            "logger": "bench",
            "release": "bench@1.0",
            "environment": "bench",
            "tags": {"job.id": "job-1"},
            "exception": {
                "values": [
                    {
                        "type": "ValueError",
                        "value": "bench: step 7 failed",
                        "stacktrace": {
                            "frames": [
                                {"filename": "worker.py", "function": "run", "lineno": 10 + i, "in_app": True}
                                for i in range(8)
                            ]
                        },
                    }
                ]
            },
        }
    )
    header = orjson.dumps({"event_id": event_id, "dsn": dsn, "sent_at": "2026-01-01T00:00:00Z"})
    item = orjson.dumps({"type": "event", "length": len(event)})
    return b"\n".join([header, item, event]) + b"\n"


@dataclass(frozen=True)
class Plan:
    """What load to make: the same for the gateway, the ceiling and a comparison."""

    url: str = "http://127.0.0.1:4318"
    signal: str = "traces"
    records: int = 100
    connections: int = 16
    duration: float = 10.0
    gzip: bool = False
    token: str = ""
    rate: float = 0.0  # requests/s over all connections; 0 = as fast as answered
    threads: int = 2
    timeout: float = 30.0
    tracks: tuple[tuple[str, int], ...] = (("otlp", 1),)  # (track, weight)
    grpc_url: str = ""  # default: the host of `url`, port 4317
    forward_addr: str = ""  # default: the host of `url`, port 24224
    tag: str = "bench"
    honor_retry_after: bool = False  # wait out a 429/503's Retry-After, as SDKs do


def parse_tracks(text: str) -> tuple[tuple[str, int], ...]:
    """`otlp`, or a weighted mix such as `otlp:3,fluent:1`."""
    out = []
    for item in text.split(","):
        name, _, weight = item.strip().partition(":")
        if name not in TRACKS:
            raise BenchError(f"unknown track {name!r} in --track (one of {', '.join(TRACKS)})")
        try:
            w = int(weight) if weight else 1
        except ValueError:
            raise BenchError(f"bad weight {weight!r} for track {name} (a whole number)") from None
        if w < 1:
            raise BenchError(f"weight of track {name} must be at least 1")
        out.append((name, w))
    if len({n for n, _ in out}) != len(out):
        raise BenchError("a track appears twice in --track")
    return tuple(out)


def _split(connections: int, weights: list[int]) -> list[int]:
    """Connections per track in proportion to the weights, each at least one."""
    if connections < len(weights):
        raise BenchError(f"{connections} connections cannot carry {len(weights)} tracks (one each at least)")
    total = sum(weights)
    shares = [max(1, connections * w // total) for w in weights]
    i = 0
    while sum(shares) < connections:
        shares[i % len(shares)] += 1
        i += 1
    while sum(shares) > connections:
        j = max(range(len(shares)), key=lambda k: shares[k])
        shares[j] -= 1
    return shares


def _host_port(text: str, default_port: int, what: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(text if "//" in text else f"//{text}")
    if parsed.scheme not in ("", "http"):
        raise BenchError(f"{what} {text!r}: only plain http:// is supported by the load generator")
    try:
        port = parsed.port or default_port
    except ValueError:
        raise BenchError(f"{what} {text!r} has an invalid port") from None
    if not parsed.hostname:
        raise BenchError(f"{what} {text!r} names no host")
    return parsed.hostname, port


@dataclass
class Track:
    """One track of a plan as the extension gets it."""

    name: str
    endpoint: str  # shown in the report
    kind: Literal["http", "grpc", "forward"]
    host: str
    port: int
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    records: int
    connections: int
    gzip: bool

    def spec(
        self,
    ) -> tuple[Literal["http", "grpc", "forward"], str, int, str, list[tuple[str, str]], bytes, int, int, bool]:
        return (self.kind, self.host, self.port, self.path, self.headers, self.body, self.records,
                self.connections, self.gzip)  # fmt: skip


def tracks(plan: Plan) -> list[Track]:
    host, port = _host_port(plan.url, 4318, "--url")
    base = urllib.parse.urlsplit(plan.url if "//" in plan.url else f"//{plan.url}").path.rstrip("/")
    if plan.records < 1:
        raise BenchError("--records must be at least 1")
    names = [n for n, _ in plan.tracks]
    if plan.signal == "events" and any(n in ("grpc", "forward", "fluent", "sentry") for n in names):
        raise BenchError("--signal events is posted over HTTP only (/v1/events): use --track otlp or events")
    auth = [("Authorization", f"Bearer {plan.token}")] if plan.token else []
    out = []
    for (name, _), conns in zip(plan.tracks, _split(plan.connections, [w for _, w in plan.tracks]), strict=True):
        signal_ = "events" if name == "events" else plan.signal
        if name == "sentry":
            # One event per envelope (as sentry-sdk sends): `--records` does not apply.
            path = f"{base}/api/1/envelope/"
            body = sentry_envelope(f"http://bench@{host}:{port}/1")
            auth_header = "Sentry sentry_version=7, sentry_key=bench, sentry_client=trackgate-bench"
            headers = [("Content-Type", "application/x-sentry-envelope"), ("X-Sentry-Auth", auth_header)]
            if plan.gzip:
                body = gzip(body)
                headers.append(("Content-Encoding", "gzip"))
            out.append(
                Track(name, f"http://{host}:{port}{path}", "http", host, port, path, headers, body, 1, conns, False)
            )
        elif name in ("otlp", "events", "fluent"):
            if name == "fluent":
                body, path, ctype = fluent_body(plan.records), f"{base}/v1/fluent/{plan.tag}", "application/x-ndjson"
            elif signal_ == "events":
                body, path, ctype = events_body(plan.records), f"{base}/v1/events", "application/x-ndjson"
            else:
                body, path, ctype = (
                    request_body(signal_, plan.records),
                    f"{base}/v1/{signal_}",
                    "application/x-protobuf",
                )
            headers = [("Content-Type", ctype), *auth]
            if plan.gzip:
                body = gzip(body)
                headers.append(("Content-Encoding", "gzip"))
            endpoint = f"http://{host}:{port}{path}"
            out.append(Track(name, endpoint, "http", host, port, path, headers, body, plan.records, conns, False))
        elif name == "grpc":
            ghost, gport = _host_port(plan.grpc_url, 4317, "--grpc-url") if plan.grpc_url else (host, 4317)
            body = request_body(signal_, plan.records)
            if plan.gzip:
                body = gzip(body)
            method = GRPC_METHODS[signal_]
            headers = [("authorization", f"Bearer {plan.token}")] if plan.token else []
            endpoint = f"grpc://{ghost}:{gport}{method}"
            out.append(
                Track(name, endpoint, "grpc", ghost, gport, method, headers, body, plan.records, conns, plan.gzip)
            )
        else:
            fhost, fport = _host_port(plan.forward_addr, 24224, "--forward") if plan.forward_addr else (host, 24224)
            body = forward_entries(plan.records)
            endpoint = f"forward://{fhost}:{fport} tag {plan.tag}"
            out.append(Track(name, endpoint, "forward", fhost, fport, plan.tag, [], body, plan.records, conns, False))
    return out


def probe(track: Track, timeout: float = 3.0) -> None:
    """Fails at once, naming the endpoint, when nothing accepts connections there."""
    try:
        socket.create_connection((track.host, track.port), timeout=timeout).close()
    except OSError as exc:
        raise BenchError(f"cannot connect to {track.endpoint}: {exc.strerror or exc}") from None


@dataclass
class TrackResult:
    name: str
    endpoint: str
    records_per_request: int
    connections: int
    request_bytes: int
    calls: int
    accepted: int
    records: int
    statuses: dict[str, int]
    latency_ms: dict[str, float]
    bytes_sent: int
    bytes_received: int
    retry_waits: int = 0  # Retry-After waits honoured (`--honor-retry-after`)
    retry_wait_s: float = 0.0


@dataclass
class ServerUsage:
    """CPU and memory of the server under load over the run (its process tree)."""

    pid: int
    processes: int
    cpu_percent: float  # of one core: 200 = two cores busy
    rss_end_bytes: int
    rss_peak_bytes: int


@dataclass
class BenchResult:
    label: str
    seconds: float
    tracks: list[TrackResult]
    server: ServerUsage | None = None

    @property
    def calls(self) -> int:
        return sum(t.calls for t in self.tracks)

    @property
    def accepted(self) -> int:
        return sum(t.accepted for t in self.tracks)

    @property
    def requests_per_s(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    @property
    def records_per_s(self) -> float:
        return sum(t.records for t in self.tracks) / self.seconds if self.seconds else 0.0

    @property
    def p99_ms(self) -> float:
        """The worst track's p99 (one track: its p99)."""
        return max((t.latency_ms["p99"] for t in self.tracks), default=0.0)

    def to_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "seconds": round(self.seconds, 3),
            "requests_per_s": round(self.requests_per_s, 1),
            "records_per_s": round(self.records_per_s, 1),
            "tracks": [t.__dict__ for t in self.tracks],
            "server": self.server.__dict__ if self.server else None,
        }


class Monitor:
    """Samples a server's process tree: CPU time at the start and end, RSS throughout."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        first = procstat.usage(pid) if pid else None
        self.cpu0 = first.cpu_s if first else 0.0
        self.t0 = time.monotonic()
        self.peak = first.rss_bytes if first else 0
        self.last = first

    def sample(self) -> None:
        if self.pid and (now := procstat.usage(self.pid)):
            self.last = now
            self.peak = max(self.peak, now.rss_bytes)

    def finish(self) -> ServerUsage | None:
        self.sample()
        if not self.pid or self.last is None:
            return None
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        cpu = 100 * (self.last.cpu_s - self.cpu0) / elapsed
        return ServerUsage(self.pid, self.last.processes, round(cpu, 1), self.last.rss_bytes, self.peak)


def _progress_bar(label: str, duration: float, monitor: Monitor) -> Callable[[float, int, int, int], None]:
    tty = sys.stderr.isatty()

    def show(elapsed: float, calls: int, accepted: int, failed: int) -> None:
        monitor.sample()
        if not tty:
            return
        width = 30
        done = min(width, int(width * elapsed / duration)) if duration else width
        sys.stderr.write(
            f"\r{label}: [{'#' * done}{'.' * (width - done)}] {min(elapsed, duration):4.1f}/{duration:g}s "
            f"{calls:,} requests, {accepted:,} accepted, {failed:,} failed "
        )
        sys.stderr.flush()

    return show


def run(plan: Plan, label: str = "target", pid: int | None = None, progress: bool = False) -> BenchResult:
    """Runs `plan` once and returns its figures; `pid` is the server to watch (CPU, RSS)."""
    built = tracks(plan)
    for track in built:
        probe(track)
    monitor = Monitor(pid)
    show = _progress_bar(label, plan.duration, monitor)
    try:
        seconds, outcomes = load(
            [t.spec() for t in built],
            plan.duration,
            rate=plan.rate,
            threads=plan.threads,
            timeout_s=plan.timeout,
            progress=show,
            interval_s=0.25,
            honor_retry_after=plan.honor_retry_after,
        )
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    finally:
        if progress and sys.stderr.isatty():
            sys.stderr.write("\r\x1b[K")
    results = [
        TrackResult(
            name=t.name,
            endpoint=t.endpoint,
            records_per_request=t.records,
            connections=t.connections,
            request_bytes=len(t.body),
            calls=int(o["calls"]),
            accepted=int(o["accepted"]),
            records=int(o["records"]),
            statuses=dict(o["statuses"]),
            latency_ms=dict(o["latency_ms"]),
            bytes_sent=int(o["bytes_sent"]),
            bytes_received=int(o["bytes_received"]),
            retry_waits=int(o["retry_waits"]),
            retry_wait_s=float(o["retry_wait_s"]),
        )
        for t, o in zip(built, outcomes, strict=True)
    ]
    return BenchResult(label, seconds, results, monitor.finish())


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def report(result: BenchResult, plan: Plan) -> str:
    rate = f", target {plan.rate:,.0f} requests/s" if plan.rate else ""
    lines = [
        f"{result.label}: {plan.duration:g} s, {plan.connections} connections, "
        f"{plan.records} records/request, gzip {'on' if plan.gzip else 'off'}{rate}"
    ]
    for t in result.tracks:
        lat = t.latency_ms
        lines += [
            f"  {t.name} → {t.endpoint} ({t.connections} connections, {t.request_bytes:,} B/request)",
            f"    requests: {t.calls:,} in {result.seconds:.2f}s, statuses {t.statuses}",
            f"    accepted: {t.accepted / result.seconds:,.0f} requests/s, "
            f"{t.records / result.seconds:,.0f} records/s; "
            f"sent {_mib(t.bytes_sent)}, received {_mib(t.bytes_received)}",
            f"    latency ms: p50 {lat['p50']:.2f}, p90 {lat['p90']:.2f}, p99 {lat['p99']:.2f}, "
            f"p99.9 {lat['p99.9']:.2f}, max {lat['max']:.2f}",
        ]
        if plan.honor_retry_after:
            lines.append(f"    Retry-After honoured: {t.retry_waits:,} waits, {t.retry_wait_s:,.1f} s in all")
    if len(result.tracks) > 1:
        lines.append(f"  total: {result.requests_per_s:,.0f} requests/s, {result.records_per_s:,.0f} records/s")
    if s := result.server:
        lines.append(
            f"  server: pid {s.pid} ({s.processes} processes), CPU {s.cpu_percent:.0f}% of a core, "
            f"RSS {_mib(s.rss_end_bytes)} (peak {_mib(s.rss_peak_bytes)})"
        )
    return "\n".join(lines)


def table(results: list[BenchResult]) -> str:
    """Side by side, with each run's share of the first one's requests/s."""
    head = "| endpoint | requests/s | records/s | p50 ms | p99 ms | share | server CPU | server RSS |"
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base = results[0].requests_per_s or 1.0
    for r in results:
        p50 = max((t.latency_ms["p50"] for t in r.tracks), default=0.0)
        cpu = f"{r.server.cpu_percent:.0f}%" if r.server else "-"
        rss = _mib(r.server.rss_peak_bytes) if r.server else "-"
        rows.append(
            f"| {r.label} | {r.requests_per_s:,.0f} | {r.records_per_s:,.0f} | {p50:.2f} | {r.p99_ms:.2f} | "
            f"{r.requests_per_s / base:.2f} | {cpu} | {rss} |"
        )
    return "\n".join(rows)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} before accepting connections")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{what} did not accept connections on {host}:{port} within {timeout:g} s")


@contextlib.contextmanager
def started(
    argv: list[str] | str, what: str, host: str, port: int, shell: bool = False, cwd: str | None = None
) -> Iterator[int]:
    """Runs a server in its own process group until the block ends; yields its pid."""
    proc = subprocess.Popen(
        argv, shell=shell, cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(host, port, proc, 30.0, what)
        yield proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# The do-nothing apps by granian interface.
NULL_APPS = {"asgi": "trackgate.nullapp:app", "rsgi": "trackgate.nullapp:rsgi_app"}


def null_app(workers: int, interface: Literal["asgi", "rsgi"] = "asgi") -> tuple[list[str], int]:
    """The command line of a do-nothing app on granian, and its port."""
    from trackgate.config import ServerConfig

    port = free_port()
    argv = [sys.executable, "-m", "granian", "--interface", interface, "--workers", str(workers),
            "--host", "127.0.0.1", "--port", str(port), "--no-ws", "--log-level", "warning",
            "--backpressure", str(ServerConfig().backpressure), NULL_APPS[interface]]  # fmt: skip
    return argv, port


def null_label(interface: str, workers: int) -> str:
    return f"null {interface.upper()} app ({workers} workers)"


def ceiling_shares(results: list[BenchResult], workers: int) -> str:
    """The gateway's (first run's) requests/s as a share of each null app's."""
    by_label = {r.label: r.requests_per_s for r in results}
    gateway = results[0].requests_per_s
    asgi = by_label.get(null_label("asgi", workers)) or 1.0
    rsgi = by_label.get(null_label("rsgi", workers)) or 1.0
    return (
        f"gateway share: {gateway / asgi:.2f} of the null ASGI app (the issue's ceiling), "
        f"{gateway / rsgi:.2f} of the null RSGI app (granian's own ceiling, the interface trackgate serve uses)"
    )


def worker_count(pid: int | None) -> int:
    """granian's workers are the children of its main process."""
    if pid is None:
        return 1
    return max(1, len(procstat.tree(pid)) - 1)


def with_endpoint(plan: Plan, url: str) -> Plan:
    """The same load aimed at another server: every track at `url`'s host and port."""
    return replace(plan, url=url, grpc_url=url, forward_addr=url)


def compare_command(command: str, url: str | None) -> tuple[str, str]:
    """`{port}` in the command gets a free port; the URL defaults to http://127.0.0.1:{port}."""
    port = free_port()
    cmd = command.replace("{port}", str(port))
    if url is None:
        if "{port}" not in command:
            raise BenchError("--compare: put {port} in the command or give --compare-url")
        url = f"http://127.0.0.1:{port}"
    return cmd, url.replace("{port}", str(port))


@dataclass
class Session:
    """Every run of one `trackgate bench`: the gateway, then the ceiling and/or a comparison."""

    plan: Plan
    pid: int | None = None
    ceiling: bool = False
    workers: int | None = None
    compare: str | None = None
    compare_url: str | None = None
    progress: bool = True
    serve: bool = False  # start `trackgate serve` (`config`, `workers`) in a temp dir and load it
    config: str | None = None
    results: list[BenchResult] = field(default_factory=list)

    def run(self, emit: Callable[[str], None]) -> list[BenchResult]:
        with contextlib.ExitStack() as stack:
            plan, pid = self._serve(stack) if self.serve else (self.plan, self.pid)
            return self._run(plan, pid, emit)

    def _serve(self, stack: contextlib.ExitStack) -> tuple[Plan, int]:
        """The gateway on free ports, its queue and file sink in a temp dir removed afterwards."""
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="trackgate-bench-"))
        port, grpc_port = free_port(), free_port()
        argv = [sys.executable, "-m", "trackgate", "serve", "--listen", f"127.0.0.1:{port}",
                "--grpc-listen", f"127.0.0.1:{grpc_port}"]  # fmt: skip
        if self.workers:
            argv += ["--workers", str(self.workers)]
        if self.config:
            argv += ["--config", os.path.abspath(self.config)]
        pid = stack.enter_context(started(argv, "trackgate serve", "127.0.0.1", port, cwd=tmp))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:  # the port opens before the app has started: wait for /healthz
            with contextlib.suppress(OSError), urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    break
            if time.monotonic() > deadline:
                raise BenchError(f"trackgate serve on {url} did not become healthy within 30 s")
            time.sleep(0.05)
        return replace(self.plan, url=url, grpc_url=self.plan.grpc_url or f"127.0.0.1:{grpc_port}"), pid

    def _run(self, plan: Plan, pid: int | None, emit: Callable[[str], None]) -> list[BenchResult]:
        first = tracks(plan)[0]
        if pid is None and first.host in ("127.0.0.1", "localhost", "::1"):
            pid = procstat.listener_pid(first.port)
        if self.ceiling and any(n in ("grpc", "forward") for n, _ in plan.tracks):
            raise BenchError("--ceiling compares HTTP tracks only (otlp, fluent, events): the null app speaks HTTP/1.1")
        self.results.append(run(plan, "gateway", pid, self.progress))
        emit(report(self.results[-1], plan))
        workers = (self.workers or worker_count(pid)) if self.ceiling else 0
        interfaces: tuple[Literal["asgi", "rsgi"], ...] = ("asgi", "rsgi") if self.ceiling else ()
        for interface in interfaces:
            argv, port = null_app(workers, interface)
            with started(argv, f"the null {interface.upper()} app (granian)", "127.0.0.1", port) as null_pid:
                label = null_label(interface, workers)
                self.results.append(
                    run(with_endpoint(plan, f"http://127.0.0.1:{port}"), label, null_pid, self.progress)
                )
            emit(report(self.results[-1], plan))
        if self.compare or self.compare_url:
            if self.compare:
                cmd, url = compare_command(self.compare, self.compare_url)
                host, port = _host_port(url, 80, "--compare-url")
                with started(cmd, f"--compare {shlex.quote(cmd)}", host, port, shell=True) as cpid:
                    self.results.append(run(with_endpoint(plan, url), "compare", cpid, self.progress))
            else:
                url = self.compare_url or ""
                self.results.append(run(with_endpoint(plan, url), "compare", None, self.progress))
            emit(report(self.results[-1], plan))
        if len(self.results) > 1:
            emit("\n" + table(self.results))
        if self.ceiling:
            emit(ceiling_shares(self.results, workers))
        return self.results
