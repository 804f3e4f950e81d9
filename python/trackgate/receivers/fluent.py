"""Fluent Bit's `http` output on the main listener: POST /v1/fluent[/{tag}] and `receivers.fluent.http_paths`.

Bodies in every format that output writes (json, json_lines, json_stream, msgpack) plus NDJSON,
text/plain and form bodies, gzip or zstd. Decoding and conversion to OTLP logs happen in the
extension, off the event loop for large or encoded bodies; the records then take the OTLP logs path
(sampling, enrichment, queue, exporters).

Fluent Bit counts 200-205 as delivered, drops a chunk on any other 4xx except 408/429 and retries
the rest, so backpressure is 429/503 with Retry-After and 400 is kept for data that can never pass.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse

from trackgate.asgi import BodyRefused, Request, Response
from trackgate.durable_wait import DurableWait
from trackgate.echo import shorten
from trackgate.exceptions import DecodeError, PayloadTooLarge, PipelineClosed, QueueFull, UnsupportedMedia
from trackgate.pipeline import Pipeline
from trackgate.receivers.events import may_carry_events
from trackgate.receivers.otlp_http import (
    INLINE_LIMIT,
    RETRY_AFTER_CLOSED_S,
    RETRY_AFTER_FULL_S,
    is_encoded,
)

log = logging.getLogger("trackgate.receiver.fluent")

ROUTE_PREFIX = "/v1/fluent"
MAX_TAG_CHARS = 256


def json_response(status: int, doc: dict[str, object], headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, json.dumps(doc).encode() + b"\n", "application/json", headers or [])


def error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    return json_response(status, {"error": message}, headers)


def path_tag(path: str) -> str | None:
    """The tag in /v1/fluent/{tag} ("" for /v1/fluent); None when the path is not that route."""
    if path == ROUTE_PREFIX or path == ROUTE_PREFIX + "/":
        return ""
    if path.startswith(ROUTE_PREFIX + "/"):
        return urllib.parse.unquote(path[len(ROUTE_PREFIX) + 1 :])
    return None


class FluentHttpReceiver:
    def __init__(self, pipeline: Pipeline, max_body_bytes: int, body_timeout_s: float, tag_header: str) -> None:
        self.pipeline = pipeline
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.tag_header = tag_header.lower()
        # Set when the core's events tap is installed (see OtlpHttpReceiver.taps_events).
        self.taps_events = False

    async def handle(self, request: Request, tag: str) -> Response:
        if not tag and self.tag_header:
            tag = request.header(self.tag_header).strip()
        if len(tag) > MAX_TAG_CHARS:
            return error(400, f"tag {shorten(tag)!r} is longer than {MAX_TAG_CHARS} characters")
        media = request.header("content-type").split(";", 1)[0].strip().lower()
        try:
            body = await request.body(self.max_body_bytes, self.body_timeout_s)
        except BodyRefused as exc:
            return error(exc.status, str(exc), exc.headers)
        encoding = request.header("content-encoding") or None
        pipeline = self.pipeline
        wait = DurableWait() if pipeline.defers_sync else None
        try:
            tapped = self.taps_events and may_carry_events(body)
            if pipeline.blocking_ingest or tapped or len(body) > INLINE_LIMIT or is_encoded(encoding):
                result = await asyncio.to_thread(pipeline.ingest_fluent, body, media, tag, encoding, wait=wait)
            else:
                result = pipeline.ingest_fluent(body, media, tag, encoding, wait=wait)
            if wait is not None:
                await wait.wait()
        except DecodeError as exc:
            return error(400, f"cannot decode Fluent logs: {exc}")
        except PayloadTooLarge as exc:
            return error(413, str(exc))
        except UnsupportedMedia as exc:
            return error(415, str(exc))
        except QueueFull as exc:
            return error(429, f"{exc}; retry later", [("Retry-After", RETRY_AFTER_FULL_S)])
        except PipelineClosed:
            return error(503, "gateway is shutting down", [("Retry-After", RETRY_AFTER_CLOSED_S)])
        except OSError as exc:  # the queue's disk failed: nothing was accepted
            log.error("queue storage failed", extra={"signal": "logs", "error": str(exc)})
            return error(503, "queue storage unavailable; retry later", [("Retry-After", "5")])
        finally:
            if wait is not None:
                wait.close()
        if result.rejected:
            log.info(
                "partial success", extra={"signal": "logs", "rejected": result.rejected, "reason": result.error_message}
            )
        doc: dict[str, object] = {"accepted": result.accepted, "rejected": result.rejected}
        if result.error_message:
            doc["error"] = result.error_message
        return json_response(200, doc)
