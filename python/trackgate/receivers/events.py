"""Events receiver: `POST /v1/events` (track 1, operational events).

A body is one JSON event, a JSON array of events, or NDJSON, optionally gzip/zstd/deflate/br.
The data plane decodes and validates it (`decode_events`): invalid events are refused one by one
with their index and reason, the valid ones go on. Before the answer, the accepted events are
queued durably twice: as OTLP log records in the main pipeline (never sampled: they carry
`event_name`), and, when an event bus is configured, as normalized events in the events pipeline
that feeds the Redis exporter. The events queue is written last: a failure before it makes the
client retry, and only the OTLP copy can repeat.

Answer (JSON): `{"accepted": n, "event_ids": [...]}` plus, when events were refused,
`"partialSuccess": {"rejectedEvents": m, "errorMessage": "...", "errors": [{"index": i, "reason": r}]}`.
200 when at least one event was accepted (or the body held none), 400 when every event was refused.

Under `trackgate serve` the OTLP/HTTP front answers these posts in the core, the same way
(rust/net/events_route.rs); this receiver answers what the front hands over, and everything
with `server.otlp_front = false`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import orjson

from trackgate import telemetry
from trackgate._core import EVENTS_CONTENT_TYPES, Core, EventsResult, decode_events
from trackgate.asgi import BodyRefused, Request, Response
from trackgate.durable_wait import DurableWait
from trackgate.echo import shorten
from trackgate.exceptions import DecodeError, PayloadTooLarge, PipelineClosed, QueueFull, UnsupportedMedia
from trackgate.pipeline import Pipeline

log = logging.getLogger("trackgate.receiver.events")

CONTENT_TYPES = frozenset(EVENTS_CONTENT_TYPES)  # the front takes the same (rust/net/events_route.rs)
INLINE_LIMIT = 256 * 1024

EVENTS = telemetry.REGISTRY.counter(
    "trackgate_events_total",
    "Operational events received, by outcome (accepted, rejected on /v1/events; from_logs: found in OTLP logs).",
    ("outcome",),
)


def may_carry_events(body: bytes) -> bool:
    """The events tap's own first look (`events::from_logs::may_carry_events`): logs without
    these bytes carry no event, so their ingest cannot wait on the bus or the job metrics."""
    return b"event_type" in body or b"event.name" in body


def json_response(status: int, doc: object, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, orjson.dumps(doc), "application/json", headers or [])


def error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return json_response(status, {"error": message}, headers)


def answer(result: EventsResult) -> Response:
    doc: dict[str, object] = {"accepted": result.accepted, "event_ids": result.event_ids}
    if result.rejected:
        doc["partialSuccess"] = {
            "rejectedEvents": result.rejected,
            "errorMessage": result.error_message,
            "errors": [{"index": i, "reason": r} for i, r in result.errors],
        }
    status = 400 if result.rejected and not result.accepted else 200
    return json_response(status, doc)


class EventsReceiver:
    def __init__(
        self,
        pipeline: Pipeline,
        bus: Pipeline | None,
        max_body_bytes: int,
        body_timeout_s: float = 30.0,
        from_logs_types: list[str] | None = None,
        scrub: tuple[list[str], list[str], list[str]] | None = None,
    ) -> None:
        self.pipeline = pipeline  # events as OTLP log records, for the OTLP/file exporters
        self.bus = bus  # normalized events for the Redis exporter (None: no event bus configured)
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.from_logs_types = from_logs_types or []
        # (extra keys, safe keys, patterns) when `[scrub] tracks` covers events; None: untouched.
        self.scrub = scrub
        self.on_accepted: Callable[[EventsResult | bytes], None] | None = None  # the job metrics' intake
        self.on_accepted_blocks = True  # it waits on I/O (Redis): called in a thread

    async def handle(self, request: Request) -> Response:
        media = request.header("content-type").split(";", 1)[0].strip().lower()
        if media not in CONTENT_TYPES:
            return error(
                415, f"unsupported content type {shorten(media)!r} (send application/json or application/x-ndjson)"
            )
        try:
            body = await request.body(self.max_body_bytes, self.body_timeout_s)
        except BodyRefused as exc:
            return error(exc.status, str(exc), exc.headers)
        encoding = request.header("content-encoding") or None
        offload = (encoding is not None and encoding.strip().lower() not in ("", "identity")) or len(
            body
        ) > INLINE_LIMIT
        try:
            if offload:
                result = await asyncio.to_thread(self._decode, body, encoding)
            else:
                result = self._decode(body, encoding)
        except DecodeError as exc:
            return error(400, f"cannot decode events: {exc}")
        except PayloadTooLarge as exc:
            return error(413, str(exc))
        except UnsupportedMedia as exc:
            return error(415, str(exc))
        EVENTS.inc(result.rejected, outcome="rejected")
        if result.accepted:
            pipelines = [self.pipeline] if self.bus is None else [self.pipeline, self.bus]
            wait = DurableWait() if any(p.defers_sync for p in pipelines) else None
            try:
                if any(p.blocking_ingest for p in pipelines):
                    await asyncio.to_thread(self.queue, result, wait)
                else:
                    self.queue(result, wait)
                if wait is not None:
                    await wait.wait()
            except QueueFull as exc:
                return error(429, f"{exc}; retry later", [("Retry-After", "1")])
            except PipelineClosed:
                return error(503, "gateway is shutting down", [("Retry-After", "5")])
            except OSError as exc:  # the queue's disk failed: nothing was acknowledged
                log.error("queue storage failed", extra={"error": str(exc)})
                return error(503, "queue storage unavailable; retry later", [("Retry-After", "5")])
            finally:
                if wait is not None:
                    wait.close()
            # Counted once durable (a request answered 503 is sent again and counted then); in a
            # thread when the job metrics update their shared state in Redis, else inline (one
            # core call that releases the GIL).
            if self.on_accepted is not None:
                try:
                    if self.on_accepted_blocks:
                        await asyncio.to_thread(self.on_accepted, result)
                    else:
                        self.on_accepted(result)
                except Exception:  # the events are durable: a failed count must not fail them
                    log.exception("job metrics intake failed")
            EVENTS.inc(result.accepted, outcome="accepted")
        if result.rejected:
            log.info("events refused", extra={"rejected": result.rejected, "reason": result.error_message})
        return answer(result)

    def queue(self, result: EventsResult, wait: DurableWait | None = None) -> None:
        self.pipeline.ingest_built("logs", result.otlp_logs, wait=wait)
        if self.bus is not None:
            self.bus.enqueue("logs", result.ndjson, result.accepted, wait=wait)

    def _decode(self, body: bytes, encoding: str | None) -> EventsResult:
        extra, safe, patterns = self.scrub or ([], [], [])
        result = decode_events(
            body,
            encoding,
            self.max_body_bytes,
            scrub=self.scrub is not None,
            scrub_extra_keys=extra,
            scrub_safe_keys=safe,
            scrub_patterns=patterns,
        )
        telemetry.EVENTS_SCRUBBED.inc(result.scrubbed)
        return result

    def install_tap(self, core: Core) -> None:
        """Events inside logs (`[events] from_logs`): every log path of `core` (OTLP/HTTP and gRPC,
        Fluent http, the Fluent http input, forward) hands the records carrying an `event_type` of
        `from_logs_types` to the event bus in the data plane, before the logs are acknowledged;
        Python only sees each request's found events (for the counters and the job metrics)."""
        extra, safe, patterns = self.scrub or ([], [], [])
        core.set_events_tap(
            self.bus.core if self.bus is not None else None,
            self.from_logs_types,
            self._found_in_logs,
            scrub=self.scrub is not None,
            scrub_extra_keys=extra,
            scrub_safe_keys=safe,
            scrub_patterns=patterns,
        )

    def _found_in_logs(self, ndjson: bytes, accepted: int, scrubbed: int) -> None:
        telemetry.EVENTS_SCRUBBED.inc(scrubbed)
        EVENTS.inc(accepted, outcome="from_logs")
        if self.on_accepted is not None:
            try:
                self.on_accepted(ndjson)
            except Exception:  # the events are queued; the metrics' intake must not fail the logs
                log.exception("job metrics intake failed")
