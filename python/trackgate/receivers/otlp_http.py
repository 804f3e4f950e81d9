"""OTLP/HTTP receiver: /v1/logs, /v1/traces, /v1/metrics (protobuf and JSON)."""

from __future__ import annotations

import asyncio
import logging

from trackgate._core import IngestResult, export_response, status_body
from trackgate.asgi import BodyRefused, FixedResponse, Request, Response
from trackgate.durable_wait import DurableWait
from trackgate.echo import shorten
from trackgate.exceptions import DecodeError, PayloadTooLarge, PipelineClosed, QueueFull, UnsupportedMedia
from trackgate.pipeline import Format, Pipeline, Signal
from trackgate.receivers.events import may_carry_events

log = logging.getLogger("trackgate.receiver.otlp")

CONTENT_TYPES: dict[str, Format] = {
    "application/x-protobuf": "protobuf",
    "application/protobuf": "protobuf",
    "application/json": "json",
}
MEDIA_TYPE: dict[Format, str] = {"protobuf": "application/x-protobuf", "json": "application/json"}
# google.rpc.Code values for the Status body.
CODE_INVALID_ARGUMENT, CODE_UNAUTHENTICATED, CODE_RESOURCE_EXHAUSTED, CODE_UNAVAILABLE = 3, 16, 8, 14
CODE_OUT_OF_RANGE, CODE_UNIMPLEMENTED, CODE_DEADLINE_EXCEEDED = 11, 12, 4
# The Status code beside each HTTP status a refused body gets (asgi.BodyRefused).
BODY_REFUSED_CODES = {408: CODE_DEADLINE_EXCEEDED, 413: CODE_OUT_OF_RANGE, 503: CODE_UNAVAILABLE}
# Bodies above this size and encoded bodies (whatever they inflate to) are ingested off the event
# loop, so that other connections keep flowing. Waiting for fsync is not: the request awaits the
# group commit that covers it (durable_wait).
INLINE_LIMIT = 256 * 1024
# The answer to a request with nothing rejected, built once per signal and format.
FULL_SUCCESS: dict[tuple[str, Format], Response] = {
    (signal, fmt): FixedResponse(200, export_response(signal, 0, "", fmt), MEDIA_TYPE[fmt])
    for signal in ("logs", "traces", "metrics")
    for fmt in ("protobuf", "json")
}
RETRY_AFTER_FULL_S = "1"
RETRY_AFTER_CLOSED_S = "5"


def status_response(
    http: int, code: int, message: str, fmt: Format, headers: list[tuple[str, str]] | None = None
) -> Response:
    return Response(http, status_body(code, message, fmt), MEDIA_TYPE[fmt], headers or [])


def is_encoded(encoding: str | None) -> bool:
    """Whether a Content-Encoding compresses: the body's compressed size says nothing about the
    work it costs (64 KB of gzip can hold 33 million empty log records)."""
    return encoding is not None and encoding.strip().lower() not in ("", "identity")


class OtlpHttpReceiver:
    def __init__(self, pipeline: Pipeline, max_body_bytes: int, body_timeout_s: float = 30.0) -> None:
        self.pipeline = pipeline
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        # Whether an ingest may block on the disk (then it runs in a thread), and whether it
        # leaves an fsync to await; `use_pipeline` says it again for a pipeline added later.
        self.blocking = False
        self.defers = False
        # Set when the core's events tap is installed: a logs ingest carrying events then queues
        # them on the bus and waits for its fsync (and the job metrics' Redis call) in the call.
        self.taps_events = False
        self.use_pipeline(pipeline)

    def use_pipeline(self, pipeline: Pipeline) -> None:
        """Takes into account one more pipeline a request may queue into (the event bus)."""
        self.blocking = self.blocking or pipeline.blocking_ingest
        self.defers = self.defers or pipeline.defers_sync

    def ingest(
        self, signal: Signal, body: bytes, fmt: Format, encoding: str | None, wait: DurableWait | None
    ) -> IngestResult:
        # Events carried by log records reach the event bus inside this call (the core's events tap).
        return self.pipeline.ingest(signal, body, fmt, encoding, wait=wait)

    async def handle(self, request: Request, signal: Signal) -> Response:
        media = request.header("content-type").split(";", 1)[0].strip().lower()
        fmt = CONTENT_TYPES.get(media)
        if fmt is None:
            supported = ", ".join(CONTENT_TYPES)
            got = shorten(media) if media else "none"
            return status_response(
                415, CODE_UNIMPLEMENTED, f"unsupported content type {got!r} (supported: {supported})", "json"
            )
        try:
            body = await request.body(self.max_body_bytes, self.body_timeout_s)
        except BodyRefused as exc:
            return status_response(exc.status, BODY_REFUSED_CODES[exc.status], str(exc), fmt, exc.headers)
        encoding = request.header("content-encoding") or None
        wait = DurableWait() if self.defers else None
        try:
            tapped = self.taps_events and signal == "logs" and may_carry_events(body)
            if self.blocking or tapped or len(body) > INLINE_LIMIT or is_encoded(encoding):
                result = await asyncio.to_thread(self.ingest, signal, body, fmt, encoding, wait)
            else:
                result = self.ingest(signal, body, fmt, encoding, wait)
            if wait is not None:
                await wait.wait()
        except DecodeError as exc:
            return status_response(400, CODE_INVALID_ARGUMENT, f"cannot decode OTLP {fmt} {signal}: {exc}", fmt)
        except PayloadTooLarge as exc:
            return status_response(413, CODE_OUT_OF_RANGE, str(exc), fmt)
        except UnsupportedMedia as exc:
            return status_response(415, CODE_UNIMPLEMENTED, str(exc), fmt)
        except QueueFull as exc:
            return status_response(
                429, CODE_RESOURCE_EXHAUSTED, f"{exc}; retry later", fmt, [("Retry-After", RETRY_AFTER_FULL_S)]
            )
        except PipelineClosed:
            return status_response(
                503, CODE_UNAVAILABLE, "gateway is shutting down", fmt, [("Retry-After", RETRY_AFTER_CLOSED_S)]
            )
        except OSError as exc:  # the queue's disk failed (full, read-only): nothing was accepted
            log.error("queue storage failed", extra={"signal": signal, "error": str(exc)})
            return status_response(
                503, CODE_UNAVAILABLE, "queue storage unavailable; retry later", fmt, [("Retry-After", "5")]
            )
        finally:
            if wait is not None:
                wait.close()
        if not result.rejected:
            return FULL_SUCCESS[signal, fmt]
        log.info(
            "partial success",
            extra={"signal": signal, "rejected": result.rejected, "reason": result.error_message},
        )
        body_out = export_response(signal, result.rejected, result.error_message, fmt)
        return Response(200, body_out, MEDIA_TYPE[fmt])
