"""Type stub for the compiled data plane, `trackgate._core` (built from `rust/`)."""

import os
from collections.abc import Callable
from typing import Literal, Self, TypeAlias, TypedDict, final

__all__ = [
    "EVENTS_CONTENT_TYPES",
    "Batch",
    "Core",
    "DecodeError",
    "DurableNotifier",
    "EventsResult",
    "InflightBudget",
    "IngestResult",
    "JobMetrics",
    "JsonLine",
    "Listeners",
    "PayloadTooLarge",
    "PipelineClosed",
    "QueueFull",
    "QueueLocked",
    "SentryProcessor",
    "SentryRateLimits",
    "SentryResult",
    "StatePending",
    "UnsupportedMedia",
    "__version__",
    "_deflate_miniz",
    "dash0_content_report",
    "decode_events",
    "envelope_categories",
    "export_response",
    "grpc_retry_delay",
    "gzip",
    "load",
    "pack_bus_entries",
    "parse_partial_success",
    "parse_rate_limits",
    "parse_state_reply",
    "scrub_pattern_error",
    "status_body",
    "to_json",
    "to_json_line",
    "to_protobuf",
]

__version__: str
EVENTS_CONTENT_TYPES: list[str]  # media types `/v1/events` takes ("": none given)

_Signal: TypeAlias = Literal["logs", "traces", "metrics"]
_Format: TypeAlias = Literal["protobuf", "json"]
_Fsync: TypeAlias = Literal["always", "interval", "never"]

class DecodeError(ValueError):
    """The body is not valid OTLP. HTTP 400."""

class PayloadTooLarge(ValueError):
    """The body is over the limit after decompression. HTTP 413."""

class UnsupportedMedia(ValueError):
    """Unknown Content-Encoding or content format. HTTP 415."""

class QueueFull(Exception):
    """The queue is at its byte limit. HTTP 429 with Retry-After."""

class PipelineClosed(Exception):
    """The pipeline was closed (shutting down). HTTP 503."""

class QueueLocked(Exception):
    """The queue directory is held by another process; each process needs its own."""

@final
class IngestResult:
    @property
    def signal(self) -> _Signal: ...
    @property
    def received(self) -> int: ...
    @property
    def accepted(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def sampled_out(self) -> int: ...
    @property
    def error_message(self) -> str: ...
    @property
    def waiting(self) -> bool:
        """The notifier passed to the call will be told (with its token) once the fsync covering
        the request ran or failed: until then it is not durable."""
    @property
    def decoded_bytes(self) -> int: ...

@final
class Batch:
    @property
    def signal(self) -> _Signal: ...
    @property
    def exporter(self) -> str: ...
    @property
    def records(self) -> int: ...
    @property
    def body(self) -> bytes: ...
    @property
    def content_report(self) -> list[tuple[str, int]]:
        """Records over Dash0's content limits by limit, as `dash0_content_report(signal, body)`
        says, from counts kept at ingest (only entries read back from disk are walked)."""

@final
class DurableNotifier:
    """Tells about deferred ingests: the tokens whose fsync ran and `(token, exception)` for those
    it failed or shutdown cut off, once per group commit. With `callback(done, failed)`, called on
    the queue's syncer thread; without, they wait for `drain()` and `fileno()` turns readable."""

    def __new__(
        cls, callback: Callable[[list[int], list[tuple[int, BaseException]]], object] | None = None
    ) -> Self: ...
    def fileno(self) -> int:
        """The descriptor to watch for outcomes waiting (no callback), else -1."""
    def drain(self) -> tuple[list[int], list[tuple[int, BaseException]]]:
        """The outcomes waiting since the last call (no callback): `(done, failed)`."""

@final
class Core:
    def __new__(
        cls,
        *,
        exporters: list[str],
        sampling_traces: float = 1.0,
        sampling_logs: float = 1.0,
        keep_errors: bool = True,
        resource_attributes: list[tuple[str, str]] = ...,
        queue_max_bytes: int = 268435456,
        batch_max_records: int = 8192,
        batch_max_bytes: int = 4194304,
        batch_max_delay_ms: int = 200,
        max_body_bytes: int = 67108864,
        storage_dir: str | None = None,
        fsync: _Fsync = "always",
        fsync_interval_ms: int = 200,
        segment_bytes: int = 67108864,
        preallocate: bool = False,
        compression: Literal["lz4", "none"] = "lz4",
        exporter_limits: dict[str, tuple[int, float]] | None = None,
        scrub_otlp: bool = False,
        scrub_fluent: bool = False,
        scrub_extra_keys: list[str] = ...,
        scrub_safe_keys: list[str] = ...,
        scrub_patterns: list[str] = ...,
        fluent_utc_offset_s: int = 0,
        content_counts: bool = True,
    ) -> Self:
        """A pipeline over a durable queue in `storage_dir` (in memory when None).

        `exporter_limits` maps an exporter to `(max_bytes, max_age_s)`, 0 meaning no bound: past
        either, that exporter's oldest undelivered data is dropped for it alone, counted in
        `stats()` as `<exporter>_<signal>_dropped_records` / `_dropped_entries`. Raises
        `QueueLocked` when another process holds `storage_dir`, `OSError` when it cannot be used.
        """
    def ingest(
        self,
        signal: _Signal,
        body: bytes,
        format: _Format,
        content_encoding: str | None = None,
        scrub: bool = True,
        notify: DurableNotifier | None = None,
        token: int = 0,
    ) -> IngestResult: ...
    def ingest_built(
        self,
        signal: _Signal,
        body: bytes,
        notify: DurableNotifier | None = None,
        token: int = 0,
        scrub: bool = True,
    ) -> IngestResult:
        """Queues a protobuf request the gateway built (events as log records, Sentry's events and
        spans) as `ingest` does, without the schema check or the body limit; `scrub=False` skips
        the OTLP scrubbing (records a track scrubbed already)."""
    def ingest_fluent(
        self,
        body: bytes,
        media_type: str,
        tag: str,
        content_encoding: str | None = None,
        notify: DurableNotifier | None = None,
        token: int = 0,
    ) -> IngestResult: ...
    def ingest_forward(self, message: bytes) -> IngestResult:
        """Converts one whole forward-protocol message (Message, Forward, PackedForward or
        CompressedPackedForward mode) to OTLP logs and queues them; its `chunk` option is ignored."""
    def set_events_tap(
        self,
        bus: Core | None,
        types: list[str],
        on_events: Callable[[bytes, int, int], object] | None = None,
        *,
        scrub: bool = False,
        scrub_extra_keys: list[str] = ...,
        scrub_safe_keys: list[str] = ...,
        scrub_patterns: list[str] = ...,
    ) -> None:
        """Events in every logs request this core ingests go to `bus`, then `on_events(ndjson, accepted, scrubbed)`."""
    def enqueue(
        self, signal: _Signal, payload: bytes, records: int, notify: DurableNotifier | None = None, token: int = 0
    ) -> bool: ...
    def next_batch(self, exporter: str, signal: _Signal, timeout: float, flush: bool = False) -> Batch | None: ...
    def ack(self, batch: Batch) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def recovery(self) -> dict[str, int]:
        """What opening the disk queue found and repaired (frames, cut_bytes, skipped_bytes, ...); {} in memory."""
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...

@final
class InflightBudget:
    """Bytes of request bodies buffered at once in one worker, shared by the app and the front."""

    def __new__(cls, limit: int) -> Self: ...
    def reserve(self, size: int) -> bool:
        """Takes `size` bytes if they fit."""
    def release(self, size: int) -> None: ...
    @property
    def used(self) -> int: ...
    @property
    def limit(self) -> int: ...

@final
class Listeners:
    """The extension's network runtime: listeners granian cannot host (OTLP/gRPC), one shutdown."""

    def __new__(cls, threads: int = 2) -> Self: ...
    def add_otlp_grpc(
        self,
        core: Core,
        host: str,
        port: int,
        *,
        tokens: list[str] = ...,
        max_body_bytes: int = 67108864,
        max_concurrent_streams: int = 100,
        keepalive_interval_s: float = 60.0,
        keepalive_timeout_s: float = 20.0,
        body_timeout_s: float = 30.0,
        max_inflight_bytes: int = 268435456,
        reuse_port: bool = False,
    ) -> int:
        """Serves OTLP/gRPC Export calls into `core`; returns the bound port (0 picks one).
        Raises OSError when the address cannot be bound."""
    def add_forward(
        self,
        core: Core,
        host: str,
        port: int,
        *,
        max_message_bytes: int = 67108864,
        reuse_port: bool = False,
        shared_key: str | None = None,
        self_hostname: str = ...,
        users: list[tuple[str, str]] = ...,
    ) -> int:
        """Serves the Fluentd forward protocol into `core`; returns the bound port (0 picks one).
        With `shared_key`, every connection must pass the HELO/PING/PONG handshake first (and name
        one of `users`, (username, password), when given). Raises OSError when the address cannot
        be bound, ValueError for an empty key or users without a key."""
    def add_fluent_http(
        self,
        core: Core,
        host: str,
        port: int,
        *,
        tokens: list[str] = ...,
        max_body_bytes: int = 67108864,
        body_timeout_s: float = 30.0,
        idle_timeout_s: float = 0.0,
        reuse_port: bool = False,
    ) -> int:
        """Serves a drop-in for Fluent Bit's `http` input (path = tag, answers 201) into `core`;
        returns the bound port (0 picks one). Raises OSError when the address cannot be bound."""
    def add_otlp_http(
        self,
        core: Core,
        host: str,
        port: int,
        *,
        backend_uds: str | None = None,
        backend_tcp: str | None = None,
        tokens: list[str] = ...,
        max_body_bytes: int = 67108864,
        body_timeout_s: float = 30.0,
        idle_timeout_s: float = 0.0,
        max_inflight_bytes: int = 268435456,
        max_connections: int = 1024,
        blocking: bool = False,
        latency_buckets: list[float] = ...,
        log: Callable[[str, str, dict[str, str | int]], object] | None = None,
        budget: InflightBudget | None = None,
        reuse_port: bool = False,
        fluent_paths: list[str] = ...,
        fluent_tag_header: str = ...,
        events: bool = False,
        events_bus: Core | None = None,
        events_scrub: tuple[list[str], list[str], list[str]] | None = None,
        job_metrics: JobMetrics | None = None,
        job_state: Callable[[StatePending], object] | None = None,
        sentry: SentryProcessor | None = None,
        sentry_keys: list[str] = ...,
        sentry_any_key: bool = False,
        sentry_forward: Core | None = None,
        sentry_limits: SentryRateLimits | None = None,
    ) -> int:
        """Serves OTLP/HTTP on host:port (the front): OTLP posts, Fluent posts on
        /v1/fluent[/{tag}] and `fluent_paths` (tag from `fluent_tag_header` when the path has none)
        and, with `events`, /v1/events (queued on `core` as OTLP logs and on `events_bus`, `data`
        scrubbed with `events_scrub` (extra keys, safe keys, patterns), counted by `job_metrics`;
        `job_state(pending)` finishes a count that needs the shared state) and, with `sentry` (the
        receiver's processor), Sentry's envelope and store endpoints for requests whose key is in
        `sentry_keys` (any key with `sentry_any_key`; envelopes forwarded on `sentry_forward`,
        held back by `sentry_limits`) are answered by the core, every other request relayed to
        the app at `backend_uds` or `backend_tcp`. Returns the bound port."""
    def events_counts(self) -> tuple[int, int, int]:
        """Events the front answered on /v1/events: (accepted, rejected, scrubbed)."""
    def sentry_counts(self) -> list[tuple[str, int]]:
        """Sentry envelopes (accepted, rate_limited, rejected) and items (items_received,
        items_forwarded, items_scrubbed, items_sampled_out) the front answered: (name, count)."""
    def http_answered(self) -> list[tuple[str, int, int]]:
        """Requests the front answered: (route, status, count)."""
    def http_latency(self) -> list[tuple[str, list[int], float]]:
        """The front's latencies: (route, count per bucket with +Inf last, sum of seconds)."""
    def http_relayed(self) -> int:
        """Connections the front handed to the app."""
    def http_refused(self) -> int:
        """Requests the front refused because the body budget was spent."""
    def forward_stats(self) -> list[tuple[str, int]]:
        """Forward-protocol counters: (name, count)."""
    def stats(self) -> list[tuple[str, str, int]]:
        """Calls answered: (method, gRPC code name, count)."""
    def close(self, grace_s: float = 5.0) -> None:
        """Stops accepting; calls in flight finish within `grace_s`. Idempotent."""

def scrub_pattern_error(pattern: str) -> str | None:
    """Why `pattern` cannot be a `[scrub] extra_patterns` entry, or None when it can."""

def grpc_retry_delay(status_details: bytes) -> float | None:
    """The google.rpc.RetryInfo delay in seconds in a `grpc-status-details-bin` value, or None."""

def to_json(signal: _Signal, body: bytes) -> bytes: ...
def to_json_line(signal: _Signal, body: bytes) -> JsonLine: ...

@final
class JsonLine:
    """A batch as one OTLP/JSON line (newline included), held in the core."""

    def __len__(self) -> int: ...
    def write_to(self, path: str | os.PathLike[str]) -> None: ...

def to_protobuf(signal: _Signal, body: bytes) -> bytes: ...
def export_response(signal: _Signal, rejected: int, error_message: str, format: _Format) -> bytes: ...
def status_body(code: int, message: str, format: _Format) -> bytes: ...
def gzip(data: bytes, level: int = 6) -> bytes: ...
def _deflate_miniz(data: bytes, level: int) -> bytes:
    """Raw deflate with the previous backend (miniz_oxide), for the compression benchmark only."""

def decode_events(
    body: bytes,
    content_encoding: str | None = None,
    max_body_bytes: int = 67108864,
    *,
    scrub: bool = False,
    scrub_extra_keys: list[str] = ...,
    scrub_safe_keys: list[str] = ...,
    scrub_patterns: list[str] = ...,
) -> EventsResult:
    """Decodes a `/v1/events` body; with `scrub`, each event's `data` goes through the PII rules."""

@final
class EventsResult:
    @property
    def accepted(self) -> int: ...
    @property
    def rejected(self) -> int: ...
    @property
    def errors(self) -> list[tuple[int, str]]: ...
    @property
    def error_message(self) -> str: ...
    @property
    def event_ids(self) -> list[str]: ...
    @property
    def scrubbed(self) -> int: ...
    @property
    def ndjson(self) -> bytes: ...
    @property
    def otlp_logs(self) -> bytes: ...

@final
class StatePending:
    """A request's lifecycle events waiting for the shared job state's reply."""

    @property
    def argv(self) -> list[bytes]:
        """The state script's ARGV: done prefix, keep seconds, then (op, job, service, time) per op."""
    def __len__(self) -> int: ...

@final
class JobMetrics:
    """Job metrics derived from lifecycle events: counters, histograms, the local job state
    (`shared_state` None) and the OTLP/JSON export."""

    def __new__(
        cls,
        start_ns: int,
        resource: list[tuple[str, str]],
        *,
        delta: bool = False,
        shared_state: tuple[str, int] | None = None,
    ) -> Self: ...
    def count(self, events: EventsResult | bytes) -> StatePending | None:
        """Counts one request's accepted events (as decoded, or the bus NDJSON); with the shared
        state, what to ask Redis first."""
    def finish(self, pending: StatePending, reply: bytes | None) -> None:
        """Finishes counting `pending` with the state script's reply (None: without the state)."""
    def expire(self, before: float) -> int: ...
    def expired(self, reply: bytes) -> int: ...
    def export(self, now_ns: int) -> bytes | None: ...
    def exported(self) -> None: ...
    @property
    def start_ns(self) -> int: ...
    def processed(self) -> dict[tuple[str, str], int]: ...
    def active(self) -> dict[str, int]: ...

def parse_state_reply(reply: bytes, ops: int) -> list[tuple[bool, float | None]]: ...
def pack_bus_entries(body: bytes, prefix: str, per_type: bool) -> tuple[list[str], bytes, int, int]: ...
def parse_partial_success(body: bytes, format: _Format) -> tuple[int, str]: ...
def parse_rate_limits(header: str) -> list[tuple[int, list[str]]]: ...
def envelope_categories(envelope: bytes) -> list[str]: ...
def dash0_content_report(signal: _Signal, body: bytes) -> list[tuple[str, int]]: ...

@final
class SentryResult:
    @property
    def envelope(self) -> bytes: ...
    @property
    def otlp_logs(self) -> bytes: ...
    @property
    def otlp_traces(self) -> bytes: ...
    @property
    def event_id(self) -> str | None: ...
    @property
    def dsn(self) -> str | None: ...
    @property
    def categories(self) -> list[str]: ...
    @property
    def items(self) -> int: ...
    @property
    def items_forwarded(self) -> int: ...
    @property
    def items_scrubbed(self) -> int: ...
    @property
    def events_converted(self) -> int: ...
    @property
    def log_records(self) -> int: ...
    @property
    def transactions_sampled_out(self) -> int: ...
    @property
    def transactions_converted(self) -> int: ...
    @property
    def spans(self) -> int: ...
    @property
    def items_rate_limited(self) -> int: ...
    @property
    def held(self) -> list[str]: ...

@final
class SentryProcessor:
    def __new__(
        cls,
        *,
        scrub: bool = True,
        scrub_extra_keys: list[str] = ...,
        scrub_safe_keys: list[str] = ...,
        scrub_patterns: list[str] = ...,
        transaction_sample_rate: float = 1.0,
        to_otlp: bool = True,
        max_envelope_bytes: int = ...,
        max_event_bytes: int = ...,
    ) -> Self: ...
    def process(
        self,
        body: bytes,
        project_id: str,
        content_encoding: str | None = None,
        store: bool = False,
        limits: SentryRateLimits | None = None,
    ) -> SentryResult: ...
    def header_dsn(
        self, prefix: bytes, content_encoding: str | None = None, complete: bool = True
    ) -> tuple[bool, str | None]: ...

@final
class SentryRateLimits:
    """The upstream Sentry's rate limits by data category, shared by the Sentry exporter and
    receivers (the front's included)."""

    def __new__(cls) -> Self: ...
    def update(self, header: str | None, retry_after: float | None, status: int) -> None:
        """Records the limits of one upstream answer (a 429, or a 200 carrying limits)."""
    def limited(self, categories: list[str]) -> dict[str, float]:
        """The categories among `categories` still limited, with the seconds left."""
    @staticmethod
    def header(limited: dict[str, float]) -> tuple[str, str]:
        """(X-Sentry-Rate-Limits, Retry-After) values describing `limited` to a client."""

# (kind, host, port, path / gRPC method / forward tag, headers, body, records per call, connections, gzip)
_LoadTarget: TypeAlias = tuple[
    Literal["http", "grpc", "forward"], str, int, str, list[tuple[str, str]], bytes, int, int, bool
]

class _LoadOutcome(TypedDict):
    statuses: dict[str, int]  # "200", "grpc OK", "ack", "error: connection refused", ...
    latency_ms: dict[str, float]  # p50, p90, p99, p99.9, max
    calls: int
    accepted: int
    records: int
    bytes_sent: int
    bytes_received: int
    retry_waits: int  # Retry-After waits honoured
    retry_wait_s: float

def load(
    targets: list[_LoadTarget],
    duration_s: float,
    rate: float = 0.0,
    threads: int = 2,
    timeout_s: float = 30.0,
    progress: Callable[[float, int, int, int], object] | None = None,
    interval_s: float = 0.25,
    honor_retry_after: bool = False,
) -> tuple[float, list[_LoadOutcome]]:
    """Drives `trackgate bench`'s load (rust/loadgen) with the GIL released; returns (seconds, outcome per target).
    With `honor_retry_after`, a connection waits out a 429/503's `Retry-After` before its next call."""
