"""Self-telemetry: Prometheus metrics and structured (JSON) logs.

Counters are touched once per request or per batch, never per record: record counts come from the
data plane as integers.
"""

from __future__ import annotations

import bisect
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

LabelValues = tuple[str, ...]

# Request latency buckets (seconds): sub-millisecond ingest up to slow multi-MiB bodies.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"metric {self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labelnames)
        self._values: dict[LabelValues, float] = {}
        self._sources: list[Callable[[], Iterable[tuple[LabelValues, float]]]] = []

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def inc_key(self, key: LabelValues, amount: float = 1) -> None:
        """`inc` with the label values already in label order (the per-request path: no checks)."""
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def value(self, **labels: str) -> float:
        """The count for `labels`, with what the sources add."""
        key = self._key(labels)
        with self._lock:
            value = self._values.get(key, 0)
            sources = list(self._sources)
        return value + sum(amount for read in sources for k, amount in read() if k == key)

    def add_source(self, read: Callable[[], Iterable[tuple[LabelValues, float]]]) -> None:
        """Counts kept elsewhere (the core's HTTP front), added to this counter's on every scrape."""
        with self._lock:
            self._sources.append(read)

    def samples(self) -> list[str]:
        with self._lock:
            values = dict(self._values)
            sources = list(self._sources)
        for read in sources:
            for key, amount in read():
                values[key] = values.get(key, 0) + amount
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in sorted(values.items())]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._counts: dict[LabelValues, list[int]] = {}
        self._sums: dict[LabelValues, float] = {}
        self._sources: list[Callable[[], Iterable[tuple[str, Sequence[int], float]]]] = []

    def observe(self, value: float, **labels: str) -> None:
        self.observe_key(value, self._key(labels))

    def observe_key(self, value: float, key: LabelValues) -> None:
        """`observe` with the label values already in label order (the per-request path)."""
        with self._lock:
            counts = self._counts.get(key)
            if counts is None:
                counts = self._counts[key] = [0] * (len(self.buckets) + 1)
            counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def add_source(self, read: Callable[[], Iterable[tuple[str, Sequence[int], float]]]) -> None:
        """Observations kept elsewhere, added in on every scrape: (the one label's value, counts
        per bucket with +Inf last, sum), over the same buckets."""
        with self._lock:
            self._sources.append(read)

    def samples(self) -> list[str]:
        out: list[str] = []
        with self._lock:
            counts_by = {k: list(v) for k, v in self._counts.items()}
            sums = dict(self._sums)
            sources = list(self._sources)
        for read in sources:
            for label, counts, total in read():
                mine = counts_by.setdefault((label,), [0] * (len(self.buckets) + 1))
                for i, n in enumerate(counts[: len(mine)]):
                    mine[i] += n
                sums[(label,)] = sums.get((label,), 0.0) + total
        items = sorted((k, v, sums.get(k, 0.0)) for k, v in counts_by.items())
        for key, counts, total in items:
            running = 0
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                labels = _labels(self.labelnames, key, 'le="' + le + '"')
                out.append(f"{self.name}_bucket{labels} {running}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(total)}")
            out.append(f"{self.name}_count{_labels(self.labelnames, key)} {running}")
        return out


class Observed(_Metric):
    """Values read when scraped: the data plane's own counters and gauges (records, queue depth)."""

    def __init__(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str],
        read: Callable[[], Iterable[tuple[LabelValues, float]]],
        kind: str = "gauge",
    ) -> None:
        super().__init__(name, help_text, labelnames)
        self._read = read
        self.kind = kind

    def samples(self) -> list[str]:
        return [f"{self.name}{_labels(self.labelnames, k)} {_number(v)}" for k, v in self._read()]


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def _add(self, metric: _Metric) -> Any:
        with self._lock:
            existing = self._metrics.get(metric.name)
            if existing is not None:
                if type(existing) is not type(metric) or existing.labelnames != metric.labelnames:
                    raise ValueError(f"metric {metric.name} registered twice with different shapes")
                if isinstance(metric, Observed):
                    self._metrics[metric.name] = metric  # a new pipeline replaces the reader
                    return metric
                return existing
            self._metrics[metric.name] = metric
            return metric

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        metric: Counter = self._add(Counter(name, help_text, labelnames))
        return metric

    def histogram(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Histogram:
        metric: Histogram = self._add(Histogram(name, help_text, labelnames))
        return metric

    def observed(
        self,
        name: str,
        help_text: str,
        labelnames: Sequence[str],
        read: Callable[[], Iterable[tuple[LabelValues, float]]],
        kind: str = "gauge",
    ) -> Observed:
        metric: Observed = self._add(Observed(name, help_text, labelnames, read, kind))
        return metric

    def render(self, peers: Iterable[dict[str, float]] = ()) -> str:
        """Prometheus text; `peers` are other worker processes' `values()`, added in (every
        sample here is a count or a sum, so adding workers' values gives the gateway's)."""
        with self._lock:
            metrics = sorted(self._metrics.values(), key=lambda m: m.name)
        peer_list = list(peers)
        lines: list[str] = []
        for metric in metrics:
            lines.extend(metric.header())
            if not peer_list:
                lines.extend(metric.samples())
                continue
            merged: dict[str, float] = {}
            for values in (_parse(metric.samples()), *(_of_metric(metric.name, p) for p in peer_list)):
                for key, value in values.items():
                    merged[key] = merged.get(key, 0.0) + value
            lines.extend(f"{key} {_number(value)}" for key, value in merged.items())
        return "\n".join(lines) + "\n"

    def values(self) -> dict[str, float]:
        """Every sample as {"name{labels}": value}, for a peer worker to merge."""
        with self._lock:
            metrics = list(self._metrics.values())
        out: dict[str, float] = {}
        for metric in metrics:
            out.update(_parse(metric.samples()))
        return out


def _parse(samples: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in samples:
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out


def _of_metric(name: str, values: dict[str, float]) -> dict[str, float]:
    names = {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {k: v for k, v in values.items() if k.partition("{")[0] in names}


class PeerSnapshots(threading.Thread):
    """With several worker processes each keeps its own counters; each writes them to a shared
    directory every `interval_s`, and a scrape answered by any worker adds up the live ones."""

    def __init__(self, directory: str | os.PathLike[str], registry: Registry, interval_s: float = 1.0) -> None:
        super().__init__(name="trackgate-metrics-snapshots", daemon=True)
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.registry = registry
        self.interval_s = interval_s
        self.pid = os.getpid()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            self.write()

    def write(self) -> None:
        tmp = self.dir / f".{self.pid}.tmp"
        tmp.write_bytes(orjson.dumps(self.registry.values()))
        tmp.rename(self.dir / f"{self.pid}.json")

    def peers(self) -> list[dict[str, float]]:
        out = []
        for path in self.dir.glob("*.json"):
            pid = int(path.stem) if path.stem.isdigit() else 0
            if pid == self.pid or not _alive(pid):
                continue
            try:
                out.append(orjson.loads(path.read_bytes()))
            except (OSError, orjson.JSONDecodeError):
                continue  # being replaced right now, or a leftover: skip this scrape
        return out

    def close(self) -> None:
        self.stop.set()
        (self.dir / f"{self.pid}.json").unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


REGISTRY = Registry()

# Metrics the control plane records. Data-plane counters (records received, accepted, rejected,
# sampled out, queued) are read from the core at scrape time; see `pipeline.Pipeline`.
HTTP_REQUESTS = REGISTRY.counter(
    "trackgate_http_requests_total", "HTTP requests answered, by route and status code.", ("route", "code")
)
HTTP_REFUSED = REGISTRY.counter(
    "trackgate_http_refused_total",
    "Requests refused before their body was buffered, by reason (inflight_bytes: the worker's budget for "
    "request bodies was spent, 503; preauth_per_client: too many unauthenticated requests from one address, 429).",
    ("reason",),
)
HTTP_LATENCY = REGISTRY.histogram(
    "trackgate_http_request_duration_seconds", "Time from request start to response, by route.", ("route",)
)
EXPORTED_RECORDS = REGISTRY.counter(
    "trackgate_exporter_sent_records_total",
    "Records delivered to an exporter's destination.",
    ("exporter", "signal"),
)
EXPORTED_BYTES = REGISTRY.counter(
    "trackgate_exporter_sent_bytes_total",
    "Bytes sent to an exporter's destination (after compression).",
    ("exporter", "signal"),
)
FAILED_RECORDS = REGISTRY.counter(
    "trackgate_exporter_failed_records_total",
    "Records an exporter gave up on, by reason (permanent error, retries exhausted, shutdown).",
    ("exporter", "signal", "reason"),
)
UPSTREAM_REJECTED = REGISTRY.counter(
    "trackgate_exporter_partial_rejected_records_total",
    "Records the destination refused in an OTLP partial-success answer.",
    ("exporter", "signal"),
)
EXPORT_RETRIES = REGISTRY.counter(
    "trackgate_exporter_retries_total", "Send attempts that will be retried, by cause.", ("exporter", "signal", "cause")
)
OVER_LIMIT = REGISTRY.counter(
    "trackgate_exporter_over_limit_records_total",
    "Records sent over a destination's documented content limits (Dash0 truncates them), by limit.",
    ("exporter", "signal", "limit"),
)
# Sentry items scrubbing changed; read into trackgate_scrubbed_records_total{track="sentry"} beside
# the core's OTLP count (not registered itself: one metric, two sources).
SENTRY_SCRUBBED = Counter("trackgate_sentry_scrubbed_items", "Sentry items scrubbing changed.")
EVENTS_SCRUBBED = Counter("trackgate_events_scrubbed", "Job events whose data scrubbing changed.")
EXPORT_LATENCY = REGISTRY.histogram(
    "trackgate_exporter_send_duration_seconds", "Duration of one send attempt.", ("exporter", "signal")
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what log shippers (and trackgate itself) parse without rules."""

    _skip = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._skip and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(level: str = "info") -> None:
    """Route trackgate's logs to stderr as JSON lines (idempotent)."""
    logger = logging.getLogger("trackgate")
    logger.setLevel(level.upper())
    if not any(getattr(h, "_trackgate", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._trackgate = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
