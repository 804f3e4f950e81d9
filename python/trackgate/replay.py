"""Offline replay: captured files pushed through the same pipeline as live traffic.

Reads the file exporter's formats, as the OpenTelemetry Collector's file exporter writes them too:
one OTLP/JSON `Export*ServiceRequest` per line, or (`format = "proto"`) protobuf requests each after
a 4-byte big-endian length, told apart from a raw OTLP protobuf request file by their framing. Also
raw protobuf request files, and Sentry envelope files (`*.envelope`, as the file sink writes them),
which take the Sentry track.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson

from trackgate.config import Config
from trackgate.exceptions import QueueFull
from trackgate.pipeline import Format, Pipeline, Signal

_JSON_KEYS: dict[bytes, Signal] = {
    b'"resourceSpans"': "traces",
    b'"resourceLogs"': "logs",
    b'"resourceMetrics"': "metrics",
    b'"resource_spans"': "traces",
    b'"resource_logs"': "logs",
    b'"resource_metrics"': "metrics",
}


class ReplayError(ValueError):
    pass


@dataclass
class ReplayReport:
    files: int = 0
    requests: int = 0
    accepted: int = 0
    rejected: int = 0
    sampled_out: int = 0
    errors: list[str] = field(default_factory=list)


def signal_of_json(line: bytes) -> Signal | None:
    """The signal of one OTLP/JSON request, from its top-level key (read without parsing the records)."""
    head = line[:64]
    for key, signal in _JSON_KEYS.items():
        if key in head:
            return signal
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if isinstance(doc, dict):
        for key, signal in _JSON_KEYS.items():
            if key.strip(b'"').decode() in doc:
                return signal
    return None


def signal_of_path(path: Path) -> Signal | None:
    name = path.name.lower()
    for word, signal in (("trace", "traces"), ("span", "traces"), ("log", "logs"), ("metric", "metrics")):
        if word in name:
            return signal  # type: ignore[return-value]
    return None


JSON_SUFFIXES = {".json", ".jsonl", ".ndjson"}
PROTOBUF_SUFFIXES = {".pb", ".bin", ".binpb", ".protobuf"}


def _is_json_lines(path: Path) -> bool:
    """By extension, else by whether the first line is a JSON object (protobuf never is)."""
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES or suffix in PROTOBUF_SUFFIXES:
        return suffix in JSON_SUFFIXES
    with open(path, "rb") as fh:
        first = fh.readline(1 << 20).strip()
    try:
        return isinstance(orjson.loads(first), dict)
    except orjson.JSONDecodeError:
        return False


def _framed(path: Path) -> bool:
    """Whether the file starts as the Collector's proto framing does: a 4-byte big-endian length
    that fits the file, then a request whose first field is field 1, length-delimited (0x0a). A raw
    request starts with 0x0a itself, which as a length would need a file of 167 MB or more."""
    with open(path, "rb") as fh:
        head = fh.read(5)
    if len(head) < 4:
        return False
    length = int.from_bytes(head[:4], "big")
    if 4 + length > path.stat().st_size:
        return False
    return length == 0 or head[4:5] == b"\x0a"


def _frames(path: Path) -> Iterator[tuple[bytes, int]]:
    """Yields (request, bytes consumed) for each frame; a torn last frame is an error."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        at = 0
        while at < size:
            head = fh.read(4)
            length = int.from_bytes(head, "big") if len(head) == 4 else -1
            body = fh.read(length) if length >= 0 else b""
            if length < 0 or len(body) != length:
                raise ReplayError(
                    f"{path}: torn frame at byte {at} (a length of {length} runs past the end of the file)"
                    if length >= 0
                    else f"{path}: torn frame at byte {at} (fewer than 4 bytes of length)"
                )
            at += 4 + length
            yield body, 4 + length


def _requests(path: Path, signal: Signal | None) -> Iterator[tuple[Signal, bytes, Format, int]]:
    """Yields (signal, body, format, bytes consumed) for each request in one file; blank lines as b""."""
    if _is_json_lines(path):
        with open(path, "rb") as fh:
            for number, line in enumerate(fh, 1):
                stripped = line.strip()
                if not stripped:
                    yield "logs", b"", "json", len(line)
                    continue
                found = signal_of_json(stripped)
                if found is None:
                    raise ReplayError(f"{path}:{number}: not an OTLP/JSON export request")
                yield found, stripped, "json", len(line)
        return
    found = signal or signal_of_path(path)
    if found is None:
        raise ReplayError(f"{path}: protobuf file; name its signal with --signal (traces, logs or metrics)")
    if _framed(path):
        for body, consumed in _frames(path):
            yield found, body, "protobuf", consumed
        return
    data = path.read_bytes()
    yield found, data, "protobuf", len(data)


class Progress:
    """A one-line progress bar on stderr (bytes read of bytes total)."""

    def __init__(self, total: int, stream: IO[str] | None, width: int = 30) -> None:
        self.total = max(total, 1)
        self.stream = stream
        self.width = width
        self.done = 0
        self.last = 0.0

    def advance(self, n: int, report: ReplayReport, final: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if self.stream is None or (not final and now - self.last < 0.1):
            return
        self.last = now
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * self.width)
        self.stream.write(
            f"\r[{bar:<{self.width}}] {frac:6.1%} {self.done / 1e6:8.1f} MB  "
            f"{report.requests} requests {report.accepted} records"
        )
        if final:
            self.stream.write("\n")
        self.stream.flush()


class SentryReplay:
    """The Sentry track for replay: envelopes scrubbed, sampled, converted and forwarded as live."""

    def __init__(self, pipeline: Pipeline) -> None:
        from trackgate.app import build_forward_pipeline
        from trackgate.ratelimits import RateLimits
        from trackgate.receivers.sentry import SentryReceiver

        self.forward = build_forward_pipeline(pipeline.config, RateLimits())
        self.receiver = SentryReceiver(pipeline.config, pipeline, self.forward, RateLimits())

    def replay(self, path: Path, report: ReplayReport) -> None:
        body = path.read_bytes()
        try:
            header = orjson.loads(body.split(b"\n", 1)[0] or b"{}")
            dsn = header.get("dsn") if isinstance(header, dict) else None
            project = str(dsn).rstrip("/").rsplit("/", 1)[-1] if dsn else "0"
            result = self.receiver.processor.process(body, project if project.isdigit() else "0")
        except (ValueError, orjson.JSONDecodeError) as exc:
            report.errors.append(f"{path}: {exc}")
            return
        while True:
            try:
                self.receiver.queue(result)
                break
            except QueueFull:
                time.sleep(0.05)
        report.requests += 1
        report.accepted += result.items_forwarded

    def close(self) -> None:
        if self.forward is not None:
            self.forward.flush(timeout=30.0)
            self.forward.close()


def replay_into(
    pipeline: Pipeline,
    paths: Sequence[str | os.PathLike[str]],
    *,
    signal: Signal | None = None,
    progress: IO[str] | None = None,
    sentry: SentryReplay | None = None,
) -> ReplayReport:
    """Pushes every request of `paths` into a running pipeline; waits on a full queue, never drops."""
    files = [Path(p) for p in paths]
    for path in files:
        if not path.is_file():
            raise ReplayError(f"{path}: no such file")
    report = ReplayReport()
    bar = Progress(sum(p.stat().st_size for p in files), progress)
    for path in files:
        report.files += 1
        if path.suffix == ".envelope":
            if sentry is None:
                raise ReplayError(f"{path}: Sentry envelope files need the Sentry track (use trackgate.replay)")
            sentry.replay(path, report)
            bar.advance(path.stat().st_size, report)
            continue
        for sig, body, fmt, consumed in _requests(path, signal):
            if body:
                _ingest_waiting(pipeline, sig, body, fmt, report, path)
            bar.advance(consumed, report)
    bar.advance(0, report, final=True)
    return report


def _ingest_waiting(
    pipeline: Pipeline, signal: Signal, body: bytes, fmt: Format, report: ReplayReport, path: Path
) -> None:
    while True:
        try:
            result = pipeline.ingest(signal, body, fmt)
        except QueueFull:
            time.sleep(0.05)  # the exporters are draining; replay is offline, so waiting is right
            continue
        except ValueError as exc:  # DecodeError and friends: report and go on with the next request
            report.errors.append(f"{path}: {exc}")
            return
        report.requests += 1
        report.accepted += result.accepted
        report.rejected += result.rejected
        report.sampled_out += result.sampled_out
        return


def replay(
    paths: Sequence[str | os.PathLike[str]],
    config: Config | None = None,
    *,
    signal: Signal | None = None,
    progress: bool = False,
) -> ReplayReport:
    """Replays files through a new pipeline built from `config`, then delivers everything and closes it."""
    pipeline = Pipeline(config or Config()).start()
    sentry = SentryReplay(pipeline) if any(Path(p).suffix == ".envelope" for p in paths) else None
    try:
        report = replay_into(pipeline, paths, signal=signal, progress=sys.stderr if progress else None, sentry=sentry)
        if sentry is not None:
            sentry.close()
        if not pipeline.flush(timeout=max(30.0, pipeline.config.server.shutdown_grace_s)):
            report.errors.append(f"{pipeline.pending()} records were still undelivered when replay ended")
    finally:
        pipeline.close()
    return report
