"""Configuration: TOML decoded into msgspec structs, then standard environment variables on top.

Unknown keys and wrong types are errors naming the key and the file. A key for a component that
does not exist yet is an unknown key, not a silent no-op.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct, field

from trackgate.echo import shorten

DEFAULT_DASH0_ENDPOINT = "https://ingress.eu-west-1.aws.dash0.com"
MASK = "****"
# gzip level of OTLP/HTTP exporters per signal when `compression_level` is unset (benches/RESULTS.md,
# issue 11). Span batches are the costliest to deliver (ids do not compress): level 1 gives up 7 % of
# level 2's ratio for 37 % less CPU, which raised the sustained span rate 8-33 % at saturation. On
# metric batches level 2 keeps level 3's ratio within 1.5 % for half the CPU; on logs level 2 would
# give up a sixth of the ratio, and their delivery keeps up at level 3.
DEFAULT_COMPRESSION_LEVELS: dict[str, int] = {"traces": 1, "metrics": 2, "logs": 3}

Ratio = Annotated[float, Meta(ge=0.0, le=1.0)]
PositiveInt = Annotated[int, Meta(ge=1)]
Seconds = Annotated[float, Meta(ge=0.0)]
# When writes reach the disk: the queue's policy, which the file sink follows too.
Fsync = Literal["always", "interval", "never"]


class ConfigError(ValueError):
    """A configuration file or environment variable that cannot be used; the message says where."""


class _Section(Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerConfig(_Section):
    listen: str = "127.0.0.1:4318"
    workers: PositiveInt = 1
    max_body_bytes: PositiveInt = 64 * 1024 * 1024  # measured after decompression
    body_timeout_s: Annotated[float, Meta(gt=0.0)] = 30.0  # a body trickling in slower gets 408
    # A kept-alive connection with no new request for this long is closed (0: never), so that
    # clients gone without closing do not hold the `backpressure` places. nginx's default; above
    # Fluent Bit's own 30 s, so a shipper closes its idle connections first.
    idle_timeout_s: Seconds = 75.0
    # A request whose key is not in its headers or query (a Sentry envelope authenticating by its
    # header's dsn) must deliver its first line within this, else 408.
    preauth_timeout_s: Annotated[float, Meta(gt=0.0)] = 5.0
    # Such not-yet-authenticated requests at once from one client address (429 beyond).
    max_preauth_per_client: PositiveInt = 64
    # Bytes of request bodies buffered at once per worker (503 + Retry-After beyond).
    # 0: the larger of 256 MiB and max_body_bytes, so raising the body limit alone keeps working.
    max_inflight_bytes: Annotated[int, Meta(ge=0)] = 0
    # granian's backpressure: connections each worker serves at once; more wait in the listen backlog.
    backpressure: PositiveInt = 1024
    tokens: list[str] = field(default_factory=list)  # if set, "Authorization: Bearer <t>" is required
    # A listener beyond loopback with no tokens is refused unless this says it is intended.
    allow_unauthenticated: bool = False
    shutdown_grace_s: Seconds = 10.0
    # `trackgate serve`: OTLP/HTTP and Fluent posts on `listen` are answered by the core's HTTP/1.1
    # front (no Python per request); every other request goes to the app on granian behind it.
    # false: granian serves every request itself.
    otlp_front: bool = True

    def inflight_budget(self) -> int:
        """`max_inflight_bytes`, or its default when 0."""
        return self.max_inflight_bytes or max(256 * 1024 * 1024, self.max_body_bytes)


class StorageConfig(_Section):
    dir: str = "./trackgate-data"  # the queue (queue/<shard>/) and the default file sink (out/)
    queue: Literal["disk", "memory"] = "disk"  # memory: faster, but a crash loses what is queued
    max_bytes: PositiveInt = 1024 * 1024 * 1024  # queue bound; receivers answer 429 past it
    fsync: Fsync = "always"  # always: a 200 means fsynced to disk
    fsync_interval_ms: PositiveInt = 200  # with fsync = "interval"
    segment_bytes: Annotated[int, Meta(ge=4096)] = 64 * 1024 * 1024
    # Opt-in: segments written as zeros ahead of use (with fsync always/interval), so a group
    # fsync is a data overwrite without a journal commit. Off by default: on the measured disk it
    # gained no throughput and doubled p99 (the zeros double the writes; benches/RESULTS.md).
    preallocate: bool = False
    # Queue frames stored as LZ4 blocks where smaller: a few µs of CPU per request for several
    # times fewer bytes to fsync and to hold under max_bytes (benches/RESULTS.md). "none" writes
    # frames as received (and readable by builds older than this option).
    compression: Literal["lz4", "none"] = "lz4"
    orphan_scan_s: Annotated[float, Meta(gt=0.0)] = 30.0  # how often workers look for shards to adopt


class ExporterQueueConfig(_Section):
    # Opt-in per destination: drop this exporter's oldest data past these bounds (0 = no bound),
    # counted and logged, so one dead destination cannot fill the shared queue for the others.
    max_bytes: Annotated[int, Meta(ge=0)] = 0
    max_age_s: Seconds = 0.0


class SamplingConfig(_Section):
    traces: Ratio = 1.0
    logs: Ratio = 1.0
    sentry_transactions: Ratio = 1.0  # consistent by trace id; Sentry error events are always kept
    keep_errors: bool = True


class BatchConfig(_Section):
    max_records: PositiveInt = 8192
    max_bytes: PositiveInt = 4 * 1024 * 1024
    max_delay_ms: Annotated[int, Meta(ge=0)] = 200


class ResourceConfig(_Section):
    # Added to every resource that does not carry the key already (the client's value wins).
    attributes: dict[str, str] = field(default_factory=dict)


class RetryConfig(_Section):
    # The OpenTelemetry Collector's intervals: 5 s initial, x1.5, 30 s cap. Unlike the Collector,
    # no overall limit by default: data waits in the disk queue until the destination is back
    # (bound it per exporter with `queue.max_age_s` / `queue.max_bytes`, or set max_elapsed_s).
    initial_interval_s: Annotated[float, Meta(gt=0.0)] = 5.0
    max_interval_s: Annotated[float, Meta(gt=0.0)] = 30.0
    multiplier: Annotated[float, Meta(ge=1.0)] = 1.5
    max_elapsed_s: Seconds = 0.0  # 0 = retry until delivered (or until shutdown leaves it on disk)


class OtlpExporterConfig(_Section):
    # http: base URL, /v1/{logs,metrics,traces} appended. grpc: http(s)://host:port (e.g.
    # https://ingress.eu-west-1.aws.dash0.com:4317); https means TLS unless `insecure`.
    endpoint: str = ""
    protocol: Literal["http", "grpc"] = "http"
    insecure: bool | None = None  # grpc only: None = TLS for https:// endpoints, plaintext for http://
    token: str = ""  # sent as Authorization: Bearer <token>
    dataset: str = ""  # sent as Dash0-Dataset when set
    headers: dict[str, str] = field(default_factory=dict)
    compression: Literal["gzip", "none"] = "gzip"
    # gzip level of OTLP/HTTP bodies, 1 (fastest) to 9 (smallest), for every signal; unset: per
    # signal, DEFAULT_COMPRESSION_LEVELS (chosen from benches/RESULTS.md, issue 11). grpcio
    # exposes no deflate level: gRPC gzips at its own default.
    compression_level: Annotated[int, Meta(ge=1, le=9)] | None = None

    def compression_level_for(self, signal: str) -> int:
        """The gzip level of `signal`'s batches: the configured one, else the signal's default."""
        return self.compression_level or DEFAULT_COMPRESSION_LEVELS.get(signal, 3)

    def auth_headers(self) -> dict[str, str]:
        """`headers`, then the token and dataset over any header of the same name in another case
        (OTEL_EXPORTER_OTLP_HEADERS spells `authorization` in lower case): never both sent."""
        out = dict(self.headers)
        for name, value in (
            ("Authorization", f"Bearer {self.token}" if self.token else ""),
            ("Dash0-Dataset", self.dataset),
        ):
            if value:
                for key in [k for k in out if k.lower() == name.lower()]:
                    del out[key]
                out[name] = value
        return out

    timeout_s: Annotated[float, Meta(gt=0.0)] = 10.0
    # At most this many batches of logs (of traces) in flight at once, per worker (the Collector's
    # num_consumers; adaptive below it, exporters/base.py): one at a time caps delivery at one
    # batch per round trip to the backend. Metrics go one at a time, in order.
    concurrency: Annotated[int, Meta(ge=1, le=64)] = 4
    retry: RetryConfig = field(default_factory=RetryConfig)
    queue: ExporterQueueConfig = field(default_factory=ExporterQueueConfig)
    # Count records over Dash0's documented content limits (default: on for the dash0 exporter).
    check_dash0_limits: bool | None = None


class FileExporterConfig(_Section):
    dir: str = ""  # default: <storage.dir>/out
    max_file_bytes: PositiveInt = 100 * 1024 * 1024  # rotate past this size
    max_files: PositiveInt = 10  # rotated files kept per signal
    # json: OTLP/JSON lines (<signal>.jsonl); proto: 4-byte big-endian length + protobuf request
    # (<signal>.binpb), the Collector file exporter's two formats. proto skips the re-encoding.
    format: Literal["json", "proto"] = "json"
    queue: ExporterQueueConfig = field(default_factory=ExporterQueueConfig)


class SentryExporterConfig(_Section):
    dsn: str = ""  # upstream Sentry DSN (or SENTRY_DSN)
    timeout_s: Annotated[float, Meta(gt=0.0)] = 10.0
    # At most this many envelopes in flight at once, per worker (adaptive below it): Sentry takes
    # one envelope per request, so one at a time caps delivery at one envelope per round trip.
    concurrency: Annotated[int, Meta(ge=1, le=64)] = 16
    retry: RetryConfig = field(default_factory=RetryConfig)
    queue: ExporterQueueConfig = field(default_factory=ExporterQueueConfig)


class RedisRetryConfig(RetryConfig):
    # Shorter than the OTLP exporters': a Redis on the local network is back within a second or
    # two, and the events drive workflows. A partial `retry = { ... }` keeps these defaults.
    initial_interval_s: Annotated[float, Meta(gt=0.0)] = 0.5
    max_interval_s: Annotated[float, Meta(gt=0.0)] = 5.0


class RedisExporterConfig(_Section):
    # redis://[:password@]host:port/db, or rediss:// for TLS (or REDIS_URL). Empty: no event bus.
    url: str = ""
    # Events of type T go to the stream "<stream_prefix>:T" (e.g. trackgate:events:job_completed);
    # with per_type = false, every event goes to "<stream_prefix>" itself.
    stream_prefix: str = "trackgate:events"
    per_type: bool = False
    maxlen: Annotated[int, Meta(ge=0)] = 1_000_000  # XADD MAXLEN ~ (approximate trimming); 0 = no trimming
    timeout_s: Annotated[float, Meta(gt=0.0)] = 10.0
    retry: RedisRetryConfig = field(default_factory=RedisRetryConfig)


class ExportersConfig(_Section):
    dash0: OtlpExporterConfig | None = None
    otlp: OtlpExporterConfig | None = None
    file: FileExporterConfig | None = None
    sentry: SentryExporterConfig | None = None
    redis: RedisExporterConfig | None = None


class SentryReceiverConfig(_Section):
    # Accepted client keys (the DSN's public key). Empty: any key, but only on a loopback listener.
    public_keys: list[str] = field(default_factory=list)
    max_event_bytes: PositiveInt = 1024 * 1024  # per event/transaction item, after decompression
    # The older form of [scrub], still honoured: false takes "sentry" out of [scrub] tracks; the
    # key lists are added to [scrub]'s. None: as [scrub] says.
    scrub: bool | None = None
    scrub_extra_keys: list[str] = field(default_factory=list)
    scrub_safe_keys: list[str] = field(default_factory=list)


# Tracks the scrubber can run on. fluent and events name tracks that land separately; they are
# accepted here so one config serves every build.
ScrubTrack = Literal["all", "sentry", "otlp", "fluent", "events"]
SCRUB_TRACKS: tuple[str, ...] = ("sentry", "otlp", "fluent", "events")


class ScrubConfig(_Section):
    # Relay-style PII scrubbing, one set of rules for every track. Default: Sentry only (as
    # Relay does for Sentry); OTLP passes untouched unless asked, as OTLP users expect.
    tracks: list[ScrubTrack] = field(default_factory=lambda: ["sentry"])
    extra_keys: list[str] = field(default_factory=list)  # more key substrings whose values are filtered
    safe_keys: list[str] = field(default_factory=list)  # whole key names never filtered (e.g. "author")
    # Regular expressions (Rust regex syntax: linear time, no look-around or backreferences); every
    # match in any scanned string becomes "[Filtered]".
    extra_patterns: list[str] = field(default_factory=list)


class OtlpGrpcReceiverConfig(_Section):
    # OTLP/gRPC, served by the extension's network runtime beside granian (which cannot do gRPC).
    # Same tokens, body limit, sampling and queue as OTLP/HTTP. With several workers, each binds
    # the port with SO_REUSEPORT and the kernel spreads connections over them.
    enabled: bool = True
    listen: str = "127.0.0.1:4317"
    max_concurrent_streams: PositiveInt = 100  # per HTTP/2 connection
    keepalive_interval_s: Seconds = 60.0  # HTTP/2 PING to each client this often (0 = never)
    keepalive_timeout_s: Annotated[float, Meta(gt=0.0)] = 20.0  # no PING answer within this: close


class FluentReceiverConfig(_Section):
    # Fluent Bit's `http` output on the main listener: POST /v1/fluent, /v1/fluent/{tag}, and these
    # paths (the `uri` a Fluent Bit config already has). Same tokens, limits and queue as OTLP/HTTP.
    http_paths: list[str] = field(default_factory=lambda: ["/logs/ingest"])
    # The header that carries the tag (Fluent Bit's `header_tag` names it; it has no default).
    tag_header: str = "FLUENT-TAG"
    # Time fields written without an offset ("2026-11-29 07:13:07") are read at this offset from
    # UTC, "+HH:MM" or "-HH:MM" (like Fluent Bit's parser `Time_Offset`); default UTC. Text with
    # `Z` or an offset, epochs, and the event time of msgpack/forward events are never shifted.
    default_utc_offset: str = "+00:00"

    def utc_offset_seconds(self) -> int:
        return parse_utc_offset(self.default_utc_offset)


class FluentHttpReceiverConfig(_Section):
    # A drop-in for Fluent Bit's `http` input (e.g. "127.0.0.1:9880"; empty: off): the URL path is
    # the tag, answers 201. Served by the extension's network runtime; same tokens, body limit,
    # sampling and queue as OTLP/HTTP.
    listen: str = ""


class ForwardUser(_Section):
    # Fluentd's `<user>`: the PING must also carry this username and a digest of the password.
    username: str
    password: str


class ForwardReceiverConfig(_Section):
    # The Fluentd forward protocol over TCP (Fluent Bit's `forward` output), served by the
    # extension's network runtime. "HOST:PORT" (or "HOST", port 24224); empty: off.
    listen: str = ""
    max_message_bytes: PositiveInt = 64 * 1024 * 1024  # one message, and a compressed chunk inflated
    # The forward protocol's handshake (Fluent Bit's `Shared_Key`): when set, every connection must
    # prove it knows the key before anything is accepted. Beyond loopback, either this or
    # server.allow_unauthenticated is required. Also TRACKGATE_FORWARD_SHARED_KEY.
    shared_key: str | None = None
    # The name sent back in the PONG (Fluentd's `self_hostname`); empty: this machine's hostname.
    self_hostname: str = ""
    users: list[ForwardUser] = field(default_factory=list)  # optional, on top of shared_key

    def address(self) -> str:
        return self.listen if ":" in self.listen.rsplit("]", 1)[-1] else f"{self.listen}:24224"


class ReceiversConfig(_Section):
    sentry: SentryReceiverConfig = field(default_factory=SentryReceiverConfig)
    otlp_grpc: OtlpGrpcReceiverConfig = field(default_factory=OtlpGrpcReceiverConfig)
    fluent: FluentReceiverConfig = field(default_factory=FluentReceiverConfig)
    forward: ForwardReceiverConfig = field(default_factory=ForwardReceiverConfig)
    fluent_http: FluentHttpReceiverConfig = field(default_factory=FluentHttpReceiverConfig)


class HostMetricsConfig(_Section):
    # CPU, memory, disk, network (psutil) and NVIDIA GPUs (NVML), fed into the pipeline like OTLP.
    enabled: bool = False
    # Seconds, or a string such as "30s", "500ms", "1m". Unset: [metrics] interval when that
    # section exists (METRICS_COLLECTION_INTERVAL overriding it), else 30. Resolved at load.
    interval: float | str | None = None
    gpu: Literal["auto"] | bool = "auto"


DEFAULT_HOSTMETRICS_INTERVAL_S = 30.0


def parse_interval(value: float | int | str, where: str) -> float:
    """Seconds from a number or a string with a unit ("30", "30s", "500ms", "2m"); above 0."""
    seconds: float | None = None
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip().lower()
        for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0), ("", 1.0)):
            if text.endswith(suffix):
                try:
                    seconds = float(text[: len(text) - len(suffix)] if suffix else text) * scale
                except ValueError:
                    seconds = None
                break
    if seconds is None or not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise ConfigError(
            f'{where}: {shorten(str(value))!r} is not an interval (seconds, or e.g. "30s", "500ms", "1m")'
        )
    return seconds


LIFECYCLE_TYPES = ["job_received", "job_started", "job_progress", "job_completed", "job_failed"]


class EventsConfig(_Section):
    # A log record (OTLP over HTTP) whose attributes or JSON body carry an `event_type` in `types`
    # also goes to the event bus as an event (only when [exporters.redis] is set).
    from_logs: bool = True
    types: list[str] = field(default_factory=lambda: list(LIFECYCLE_TYPES))  # snake_case

    def normalized_types(self) -> list[str]:
        """`types` in the form events carry (`jobCompleted` → `job_completed`)."""
        return [re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", t.strip()).replace("-", "_").lower() for t in self.types]


class MetricsConfig(_Section):
    # Job metrics derived from lifecycle events, exported as OTLP metrics this often (seconds, or
    # "30s"); METRICS_COLLECTION_INTERVAL overrides.
    enabled: bool = True
    interval: float | str = 30.0
    job_timeout_s: Annotated[float, Meta(gt=0.0)] = 3600.0  # a started job with no end: status="timeout"
    # "cumulative" (what Dash0 expects) or "delta" (counters and histograms; jobs_active stays cumulative).
    temporality: Literal["cumulative", "delta"] = "cumulative"

    def interval_s(self) -> float:
        return parse_interval(self.interval, "metrics.interval")


class SelfMonitoringConfig(_Section):
    sentry_dsn: str = ""  # the gateway's own unexpected exceptions go here (never to itself)


class Config(_Section):
    server: ServerConfig = field(default_factory=ServerConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    resource: ResourceConfig = field(default_factory=ResourceConfig)
    receivers: ReceiversConfig = field(default_factory=ReceiversConfig)
    scrub: ScrubConfig = field(default_factory=ScrubConfig)
    exporters: ExportersConfig = field(default_factory=ExportersConfig)
    self_monitoring: SelfMonitoringConfig = field(default_factory=SelfMonitoringConfig)
    hostmetrics: HostMetricsConfig = field(default_factory=HostMetricsConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def scrubs(self, track: str) -> bool:
        """Whether `track` is scrubbed: [scrub] tracks, with [receivers.sentry] scrub on top."""
        if track == "sentry" and self.receivers.sentry.scrub is not None:
            return self.receivers.sentry.scrub
        return "all" in self.scrub.tracks or track in self.scrub.tracks

    def scrub_keys(self) -> tuple[list[str], list[str]]:
        """(extra_keys, safe_keys): [scrub]'s and [receivers.sentry]'s together."""
        rcv = self.receivers.sentry
        extra = list(dict.fromkeys([*self.scrub.extra_keys, *rcv.scrub_extra_keys]))
        safe = list(dict.fromkeys([*self.scrub.safe_keys, *rcv.scrub_safe_keys]))
        return extra, safe

    def otlp_exporters(self) -> dict[str, OtlpExporterConfig]:
        found = {"dash0": self.exporters.dash0, "otlp": self.exporters.otlp}
        return {name: cfg for name, cfg in found.items() if cfg is not None}

    def file_exporter(self) -> FileExporterConfig | None:
        """The file exporter: as configured, or the embedded default when nothing else is."""
        if self.exporters.file is not None:
            cfg = self.exporters.file
        elif not self.otlp_exporters():
            cfg = FileExporterConfig()
        else:
            return None
        if not cfg.dir:
            cfg = msgspec.structs.replace(cfg, dir=str(Path(self.storage.dir) / "out"))
        return cfg

    def exporter_queues(self) -> dict[str, ExporterQueueConfig]:
        out = {name: exp.queue for name, exp in self.otlp_exporters().items()}
        file_cfg = self.file_exporter()
        if file_cfg is not None:
            out["file"] = file_cfg.queue
        if self.exporters.sentry is not None:
            out["sentry"] = self.exporters.sentry.queue
        return out

    def exporter_names(self) -> list[str]:
        names = list(self.otlp_exporters())
        if self.file_exporter() is not None:
            names.append("file")
        return names


def parse_listen(value: str) -> tuple[str, int]:
    """Splits "HOST:PORT" (IPv6 as "[::1]:4318") and checks both parts.

    The host must be an IP address (granian binds nothing else) or `localhost`, which becomes
    127.0.0.1; an IPv4-mapped IPv6 address becomes its IPv4 form, so it is judged and bound as such.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"listen address {shorten(value)!r} must be HOST:PORT with a port between 1 and 65535")
    host = host.strip("[]") or "127.0.0.1"
    if host.lower() == "localhost":
        return "127.0.0.1", int(port)
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"listen host {shorten(host)!r} is not an IP address: use an address such as 127.0.0.1, 0.0.0.0 or [::] "
            "(or localhost)"
        ) from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr), int(port)


_UTC_OFFSET = re.compile(r"([+-])([01][0-9]|2[0-3]):?([0-5][0-9])")


def parse_utc_offset(value: str) -> int:
    """ "+HH:MM" / "-HHMM" as seconds east of UTC."""
    match = _UTC_OFFSET.fullmatch(value.strip())
    if match is None:
        raise ConfigError(f'{shorten(value)!r} is not a UTC offset such as "+01:00" or "-0530"')
    sign, hours, minutes = match.groups()
    seconds = int(hours) * 3600 + int(minutes) * 60
    return -seconds if sign == "-" else seconds


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def parse_key_values(value: str, what: str, secret: bool = False) -> dict[str, str]:
    """Parses the W3C-baggage-like "k1=v1,k2=v2" of OTEL_RESOURCE_ATTRIBUTES / OTEL_EXPORTER_OTLP_HEADERS.

    With `secret` (header values hold credentials) a bad entry is named by its position only.
    """
    out: dict[str, str] = {}
    for index, item in enumerate(value.split(","), 1):
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            shown = f"entry {index}" if secret else f"entry {index} ({shorten(item.strip())!r})"
            raise ConfigError(f"{what}: {shown} is not key=value")
        out[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(val.strip())
    return out


def _check_url(url: str, where: str) -> None:
    try:
        parsed = urllib.parse.urlsplit(url)
        parsed.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"{where}: endpoint {shorten(mask_url(url))!r} must be an http:// or https:// URL")


# RFC 9110's token characters: what a header (or gRPC metadata) name may hold.
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _check_header_values(exp: OtlpExporterConfig, where: str) -> None:
    """A control character (a secret file's trailing newline) in a header makes every send raise
    inside the HTTP client, with the value in the error: refused here, named by key only. HTTP/1.1
    carries Latin-1 values; gRPC metadata printable ASCII only."""
    fields = [("token", exp.token), ("dataset", exp.dataset)]
    fields += [(f"headers[{shorten(key)!r}]", value) for key, value in exp.headers.items()]
    for key in exp.headers:
        if not HEADER_NAME.fullmatch(key):
            raise ConfigError(f"{where}.headers: name {shorten(key)!r} is not a valid HTTP header name")
    charset = "ascii" if exp.protocol == "grpc" else "latin-1"
    for what, value in fields:
        if value != value.strip() or any(not ch.isprintable() for ch in value):
            raise ConfigError(
                f"{where}.{what} has leading or trailing whitespace or a control character (a trailing newline?)"
            )
        try:
            value.encode(charset)
        except UnicodeEncodeError:
            carrier = "gRPC metadata (ASCII)" if charset == "ascii" else "an HTTP header (Latin-1)"
            raise ConfigError(f"{where}.{what} has a character {carrier} cannot carry") from None


def _check_tokens(cfg: Config, source: str) -> None:
    """A blank token would let `Authorization: Bearer` with nothing after it in."""
    for index, token in enumerate(cfg.server.tokens):
        if not token.strip():
            raise ConfigError(f"{source}: server.tokens[{index}] is blank; remove it or set a real token")
        if token != token.strip() or any(ch.isspace() or not ch.isprintable() for ch in token):
            raise ConfigError(f"{source}: server.tokens[{index}] contains whitespace or control characters")
    for index, key in enumerate(cfg.receivers.sentry.public_keys):
        if not key.strip():
            raise ConfigError(f"{source}: receivers.sentry.public_keys[{index}] is blank")
    forward = cfg.receivers.forward
    if forward.shared_key is not None and not forward.shared_key.strip():
        raise ConfigError(f"{source}: receivers.forward.shared_key is blank; remove it or set a real key")
    if forward.users and forward.shared_key is None:
        raise ConfigError(f"{source}: receivers.forward.users need receivers.forward.shared_key (the handshake)")
    for index, user in enumerate(forward.users):
        if not user.username.strip() or not user.password:
            raise ConfigError(f"{source}: receivers.forward.users[{index}] needs a username and a password")


def points_at(url: str, listen: str) -> bool:
    """Whether `url` reaches the listener `listen` on this machine (same port; same host, or both
    loopback, or a wildcard listener reached through loopback)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host, listen_port = parse_listen(listen)
    except (ValueError, ConfigError):
        return False
    target = parts.hostname or ""
    if port != listen_port:
        return False
    wildcard = host.strip("[]") in ("0.0.0.0", "::")
    return target == host.strip("[]") or (is_loopback(target) and (is_loopback(host) or wildcard))


def check_loops(cfg: Config, source: str = "<config>") -> None:
    """Refuses an exporter that sends to this gateway's own listener: every batch would come back
    in and go out again, forever. The usual cause is the SDKs' OTEL_EXPORTER_OTLP_ENDPOINT (or
    SENTRY_DSN) set in the gateway's own environment too."""
    grpc_listen = cfg.receivers.otlp_grpc.listen if cfg.receivers.otlp_grpc.enabled else ""
    for name, exp in cfg.otlp_exporters().items():
        listen = grpc_listen if exp.protocol == "grpc" else cfg.server.listen
        if listen and points_at(exp.endpoint, listen):
            raise ConfigError(
                f"{source}: exporters.{name}.endpoint {mask_url(exp.endpoint)!r} is this gateway's own listener "
                f"({listen}): batches would loop. If it comes from OTEL_EXPORTER_OTLP_ENDPOINT meant for the SDKs, "
                "unset it in the gateway's environment, or point it at the backend"
            )
    sentry = cfg.exporters.sentry
    if sentry is not None and sentry.dsn:
        from trackgate.dsn import DsnError, parse_dsn

        try:
            dsn = parse_dsn(sentry.dsn)
        except DsnError:
            return  # _validate names it
        if points_at(f"{dsn.scheme}://{dsn.host}", cfg.server.listen):
            raise ConfigError(
                f"{source}: exporters.sentry.dsn ({dsn.masked}) is this gateway's own listener "
                f"({cfg.server.listen}): envelopes would loop. If it comes from SENTRY_DSN meant for the SDKs, "
                "unset it in the gateway's environment, or point it at the upstream Sentry"
            )


def check_exposure(cfg: Config, source: str = "<config>") -> None:
    """Refuses a listener beyond loopback that anyone could write to, unless explicitly allowed,
    and an exporter that points back at a listener (both need the final listen addresses)."""
    check_loops(cfg, source)
    listeners = [("server.listen", cfg.server.listen)]
    if cfg.receivers.otlp_grpc.enabled:
        listeners.append(("receivers.otlp_grpc.listen", cfg.receivers.otlp_grpc.listen))
    if cfg.receivers.fluent_http.listen:
        listeners.append(("receivers.fluent_http.listen", cfg.receivers.fluent_http.listen))
    forward = cfg.receivers.forward
    if forward.listen:
        host, _ = parse_listen(forward.address())
        if not is_loopback(host) and forward.shared_key is None and not cfg.server.allow_unauthenticated:
            raise ConfigError(
                f"{source}: receivers.forward.listen {shorten(forward.listen)!r} is reachable beyond this machine "
                "and no receivers.forward.shared_key is set; set it (or TRACKGATE_FORWARD_SHARED_KEY), "
                "listen on loopback, or set server.allow_unauthenticated = true"
            )
    for key, listen in listeners:
        host, _ = parse_listen(listen)
        if not is_loopback(host) and not cfg.server.tokens and not cfg.server.allow_unauthenticated:
            raise ConfigError(
                f"{source}: {key} {shorten(listen)!r} is reachable beyond this machine and no "
                "server.tokens are set; set tokens (or TRACKGATE_TOKENS), or server.allow_unauthenticated = true"
            )


def _validate(cfg: Config, source: str) -> None:
    try:
        parse_listen(cfg.server.listen)
    except ConfigError as exc:
        raise ConfigError(f"{source}: server.listen: {exc}") from None
    try:
        parse_listen(cfg.receivers.otlp_grpc.listen)
    except ConfigError as exc:
        raise ConfigError(f"{source}: receivers.otlp_grpc.listen: {exc}") from None
    if cfg.receivers.fluent_http.listen:
        try:
            parse_listen(cfg.receivers.fluent_http.listen)
        except ConfigError as exc:
            raise ConfigError(f"{source}: receivers.fluent_http.listen: {exc}") from None
    if cfg.receivers.forward.listen:
        try:
            parse_listen(cfg.receivers.forward.address())
        except ConfigError as exc:
            raise ConfigError(f"{source}: receivers.forward.listen: {exc}") from None
    _check_tokens(cfg, source)
    from trackgate._core import scrub_pattern_error

    for index, pattern in enumerate(cfg.scrub.extra_patterns):
        why = scrub_pattern_error(pattern)
        if why is not None:
            raise ConfigError(f"{source}: scrub.extra_patterns[{index}] is not usable: {shorten(why)}")
    try:
        cfg.receivers.fluent.utc_offset_seconds()
    except ConfigError as exc:
        raise ConfigError(f"{source}: receivers.fluent.default_utc_offset: {exc}") from None
    for index, path in enumerate(cfg.receivers.fluent.http_paths):
        if not path.startswith("/") or any(ch.isspace() or ch in "?#" for ch in path):
            raise ConfigError(
                f"{source}: receivers.fluent.http_paths[{index}] {shorten(path)!r} must be a path starting with '/'"
            )
    if 0 < cfg.server.max_inflight_bytes < cfg.server.max_body_bytes:
        raise ConfigError(
            f"{source}: server.max_inflight_bytes ({cfg.server.max_inflight_bytes}) is below server.max_body_bytes "
            f"({cfg.server.max_body_bytes}): a body of the largest allowed size could never be accepted"
        )
    for name, exp in cfg.otlp_exporters().items():
        if not exp.endpoint:
            raise ConfigError(f"{source}: exporters.{name}.endpoint is required")
        _check_header_values(exp, f"{source}: exporters.{name}")
        _check_url(exp.endpoint, f"{source}: exporters.{name}")
        if exp.protocol == "grpc" and urllib.parse.urlsplit(exp.endpoint).path.strip("/"):
            raise ConfigError(
                f"{source}: exporters.{name}.endpoint: a grpc endpoint is scheme://host:port, without a path"
            )
        if exp.protocol != "grpc" and exp.insecure is not None:
            raise ConfigError(f'{source}: exporters.{name}.insecure applies to protocol = "grpc" only')
        if exp.retry.max_interval_s < exp.retry.initial_interval_s:
            raise ConfigError(f"{source}: exporters.{name}.retry.max_interval_s is below initial_interval_s")
        if name == "dash0" and not exp.token and not any(k.lower() == "authorization" for k in exp.headers):
            # Dash0 answers 401 to every batch without one, and a 401 drops the batch.
            raise ConfigError(f"{source}: exporters.dash0.token is required (or DASH0_AUTH_TOKEN)")
    try:
        cfg.metrics.interval_s()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    redis = cfg.exporters.redis
    if redis is not None and redis.url:
        scheme = urllib.parse.urlsplit(redis.url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"{source}: exporters.redis.url must be a redis://, rediss:// or unix:// URL")
        if not redis.stream_prefix.strip():
            raise ConfigError(f"{source}: exporters.redis.stream_prefix is empty")
        if redis.retry.max_interval_s < redis.retry.initial_interval_s:
            raise ConfigError(f"{source}: exporters.redis.retry.max_interval_s is below initial_interval_s")
    from trackgate.dsn import DsnError, parse_dsn

    for where, value in (
        ("exporters.sentry.dsn", cfg.exporters.sentry.dsn if cfg.exporters.sentry else ""),
        ("self_monitoring.sentry_dsn", cfg.self_monitoring.sentry_dsn),
    ):
        if value:
            try:
                parse_dsn(value)
            except DsnError as exc:  # the message never repeats the DSN: it holds a key
                raise ConfigError(f"{source}: {where}: {exc}") from None


# OTEL_EXPORTER_OTLP_PROTOCOL values: the exporter always sends protobuf over HTTP.
OTLP_PROTOCOLS: dict[str, Literal["http", "grpc"]] = {"grpc": "grpc", "http/protobuf": "http", "http/json": "http"}


LOG_LEVELS = ("debug", "info", "warning", "error")


def log_level(env: Mapping[str, str]) -> str:
    """TRACKGATE_LOG_LEVEL (default info), checked: a typo fails at the start, named."""
    level = env.get("TRACKGATE_LOG_LEVEL", "").strip().lower() or "info"
    if level not in LOG_LEVELS:
        raise ConfigError(
            f"TRACKGATE_LOG_LEVEL {shorten(env['TRACKGATE_LOG_LEVEL'])!r}: expected one of " + ", ".join(LOG_LEVELS)
        )
    return level


def apply_env(cfg: Config, env: Mapping[str, str]) -> Config:
    """Standard variables override the file: the same variables the SDKs and Dash0's docs use."""
    exporters = cfg.exporters
    if env.get("DASH0_AUTH_TOKEN") or env.get("DASH0_DATASET"):
        dash0 = exporters.dash0 or OtlpExporterConfig(endpoint=DEFAULT_DASH0_ENDPOINT)
        dash0 = msgspec.structs.replace(
            dash0,
            # Stripped: a secret mounted from a file often ends in a newline.
            token=env.get("DASH0_AUTH_TOKEN", "").strip() or dash0.token,
            dataset=env.get("DASH0_DATASET", "").strip() or dash0.dataset,
        )
        exporters = msgspec.structs.replace(exporters, dash0=dash0)
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        otlp = exporters.otlp or OtlpExporterConfig()
        otlp = msgspec.structs.replace(otlp, endpoint=env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        exporters = msgspec.structs.replace(exporters, otlp=otlp)
    if env.get("OTEL_EXPORTER_OTLP_PROTOCOL") and exporters.otlp is not None:
        protocol = OTLP_PROTOCOLS.get(env["OTEL_EXPORTER_OTLP_PROTOCOL"].strip())
        if protocol is None:
            raise ConfigError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL {env['OTEL_EXPORTER_OTLP_PROTOCOL']!r}: expected one of "
                + ", ".join(OTLP_PROTOCOLS)
            )
        exporters = msgspec.structs.replace(exporters, otlp=msgspec.structs.replace(exporters.otlp, protocol=protocol))
    if env.get("OTEL_EXPORTER_OTLP_HEADERS"):
        extra = parse_key_values(env["OTEL_EXPORTER_OTLP_HEADERS"], "OTEL_EXPORTER_OTLP_HEADERS", secret=True)
        for name in ("dash0", "otlp"):
            exp: OtlpExporterConfig | None = getattr(exporters, name)
            if exp is not None:
                merged = {**exp.headers, **extra}
                exporters = msgspec.structs.replace(exporters, **{name: msgspec.structs.replace(exp, headers=merged)})
    if env.get("REDIS_URL"):
        redis = exporters.redis or RedisExporterConfig()
        exporters = msgspec.structs.replace(exporters, redis=msgspec.structs.replace(redis, url=env["REDIS_URL"]))
    if env.get("SENTRY_DSN"):
        sentry = exporters.sentry or SentryExporterConfig()
        exporters = msgspec.structs.replace(exporters, sentry=msgspec.structs.replace(sentry, dsn=env["SENTRY_DSN"]))
    server = cfg.server
    receivers = cfg.receivers
    if "TRACKGATE_FORWARD_SHARED_KEY" in env:
        key = env["TRACKGATE_FORWARD_SHARED_KEY"]
        if not key.strip():  # set but blank: never silently "no auth"
            raise ConfigError("TRACKGATE_FORWARD_SHARED_KEY is set but blank")
        forward = msgspec.structs.replace(receivers.forward, shared_key=key)
        receivers = msgspec.structs.replace(receivers, forward=forward)
    if env.get("TRACKGATE_TOKENS"):
        tokens = [t.strip() for t in env["TRACKGATE_TOKENS"].split(",") if t.strip()]
        if not tokens:  # set but blank: never silently "no auth"
            raise ConfigError("TRACKGATE_TOKENS is set but holds no token (only blanks and commas)")
        server = msgspec.structs.replace(server, tokens=tokens)
    metrics = cfg.metrics
    if env.get("METRICS_COLLECTION_INTERVAL"):
        parse_interval(env["METRICS_COLLECTION_INTERVAL"], "METRICS_COLLECTION_INTERVAL")
        metrics = msgspec.structs.replace(metrics, interval=env["METRICS_COLLECTION_INTERVAL"])
    attrs = dict(cfg.resource.attributes)
    if env.get("OTEL_RESOURCE_ATTRIBUTES"):
        attrs.update(parse_key_values(env["OTEL_RESOURCE_ATTRIBUTES"], "OTEL_RESOURCE_ATTRIBUTES"))
    if env.get("MACHINE_ID"):
        attrs["machine.id"] = env["MACHINE_ID"]
    if env.get("WORKER_ID"):
        attrs["worker.id"] = env["WORKER_ID"]
    return msgspec.structs.replace(
        cfg,
        server=server,
        receivers=receivers,
        exporters=exporters,
        metrics=metrics,
        resource=msgspec.structs.replace(cfg.resource, attributes=attrs),
        hostmetrics=_resolve_hostmetrics(cfg, env),
    )


def _resolve_hostmetrics(cfg: Config, env: Mapping[str, str]) -> HostMetricsConfig:
    """The interval in seconds: its own, else METRICS_COLLECTION_INTERVAL, else [metrics] interval."""
    hm = cfg.hostmetrics
    if hm.interval is not None:
        seconds = parse_interval(hm.interval, "hostmetrics.interval")
    elif env.get("METRICS_COLLECTION_INTERVAL"):
        seconds = parse_interval(env["METRICS_COLLECTION_INTERVAL"], "METRICS_COLLECTION_INTERVAL")
    else:
        seconds = parse_interval(cfg.metrics.interval, "metrics.interval")  # 30 s unless set
    return msgspec.structs.replace(hm, interval=seconds)


def _convert(data: Any, source: str) -> Config:
    try:
        return msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        # msgspec says e.g. "Object contains unknown field `foo` - at `$.server`".
        raise ConfigError(f"{source}: {exc}") from None


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Reads the file (or defaults when `path` is None), applies `env` and validates the result."""
    env = os.environ if env is None else env
    if path is None and env.get("TRACKGATE_CONFIG"):
        path = env["TRACKGATE_CONFIG"]
    source = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    cfg = apply_env(_convert(data, source), env)
    _validate(cfg, source)
    return cfg


def to_json(cfg: Config) -> bytes:
    return msgspec.json.encode(cfg)


def from_json(data: bytes | str) -> Config:
    cfg = msgspec.json.decode(data, type=Config)
    _validate(cfg, "<effective config>")
    return cfg


def masked(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data with every secret replaced: safe to print or log."""
    doc: dict[str, Any] = msgspec.to_builtins(cfg)
    doc["server"]["tokens"] = [MASK for _ in cfg.server.tokens]
    doc["server"]["max_inflight_bytes"] = cfg.server.inflight_budget()  # the effective value, not 0
    for name in ("dash0", "otlp"):
        exp = doc["exporters"].get(name)
        if exp:
            if exp["token"]:
                exp["token"] = MASK
            exp["headers"] = {k: MASK for k in exp["headers"]}
            exp["endpoint"] = mask_url(exp["endpoint"])
    if doc["exporters"].get("sentry") and doc["exporters"]["sentry"]["dsn"]:
        doc["exporters"]["sentry"]["dsn"] = mask_url(doc["exporters"]["sentry"]["dsn"])
    if doc["self_monitoring"]["sentry_dsn"]:
        doc["self_monitoring"]["sentry_dsn"] = mask_url(doc["self_monitoring"]["sentry_dsn"])
    if doc["exporters"].get("redis") and doc["exporters"]["redis"]["url"]:
        doc["exporters"]["redis"]["url"] = mask_url(doc["exporters"]["redis"]["url"])
    doc["receivers"]["sentry"]["public_keys"] = [MASK for _ in cfg.receivers.sentry.public_keys]
    forward = doc["receivers"]["forward"]
    if forward["shared_key"] is not None:
        forward["shared_key"] = MASK
    for user in forward["users"]:
        user["password"] = MASK
    return doc


def mask_url(url: str) -> str:
    """The URL with its userinfo and every query value replaced: safe to print or log.

    Works on malformed URLs too (an error message about one must not leak what it holds)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    # Userinfo ends at the last "@" before any query or fragment, even when a password holds "/".
    end = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@", 0, end)
    if at >= 0:
        rest = f"{MASK}@{rest[at + 1 :]}"
    netloc, slash, path = rest.partition("/")
    path, qmark, query = path.partition("?")
    query, hashmark, _fragment = query.partition("#")
    if qmark:
        pairs = [p.partition("=") for p in query.split("&")]
        query = "&".join(f"{k}={MASK}" if eq else MASK for k, eq, _v in pairs if k or eq)
    masked = f"{scheme}{sep}{netloc}{slash}{path}{qmark}{query}"
    return masked + (f"#{MASK}" if hashmark else "")
