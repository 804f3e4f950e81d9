"""Sentry receiver: `/api/{project_id}/envelope/` and the legacy `/api/{project_id}/store/`.

sentry-sdk talks to it unchanged (DSN `http://<key>@<gateway>:4318/<project_id>`). Envelopes are
scrubbed and sampled in the data plane, queued durably for the upstream Sentry, and their error
events and log items also flow to the OTLP exporters as log records.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import urllib.parse

import orjson

from trackgate import telemetry
from trackgate._core import SentryProcessor, SentryResult
from trackgate.asgi import BodyTimeout, BodyTooLarge, BudgetSpent, Request, Response
from trackgate.config import Config, is_loopback, parse_listen
from trackgate.dsn import DsnError, parse_dsn
from trackgate.exceptions import DecodeError, PayloadTooLarge, PipelineClosed, QueueFull, UnsupportedMedia
from trackgate.pipeline import Pipeline
from trackgate.ratelimits import RateLimits

log = logging.getLogger("trackgate.receiver.sentry")

ROUTE = re.compile(r"^/api/(?P<project>\d+)/(?P<kind>envelope|store)/?$")
INLINE_LIMIT = 256 * 1024
RETRY_AFTER_BUSY_S = "1"
_KEY = re.compile(r"sentry_key\s*=\s*([^,\s]+)")

ENVELOPES = telemetry.REGISTRY.counter(
    "trackgate_sentry_envelopes_total",
    "Sentry envelopes received, by outcome (accepted, rate_limited, rejected, unauthorized).",
    ("outcome",),
)
SENTRY_ITEMS = telemetry.REGISTRY.counter(
    "trackgate_sentry_items_total",
    "Sentry envelope items, by what happened (received, forwarded, scrubbed, sampled_out).",
    ("outcome",),
)


def json_response(status: int, doc: object, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, orjson.dumps(doc), "application/json", headers or [])


def error(status: int, detail: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """Sentry answers errors as {"detail": ...}."""
    return json_response(status, {"detail": detail}, headers)


def client_key(request: Request) -> str | None:
    """The public key from whichever of the auth forms the client used (envelope `dsn` aside)."""
    for header in ("x-sentry-auth", "authorization"):
        value = request.header(header)
        if value.lower().startswith("sentry "):
            match = _KEY.search(value)
            if match:
                return match.group(1)
    query = urllib.parse.parse_qs(request.scope.get("query_string", b"").decode("latin-1"))
    keys = query.get("sentry_key")
    return keys[0] if keys else None


class SentryReceiver:
    def __init__(self, cfg: Config, pipeline: Pipeline, forward: Pipeline | None, limits: RateLimits) -> None:
        self.cfg = cfg
        rcv = cfg.receivers.sentry
        self.keys = [k.encode() for k in rcv.public_keys]
        host, _ = parse_listen(cfg.server.listen)
        self.any_key = not self.keys and is_loopback(host)
        self.pipeline = pipeline  # OTLP logs made from events go here
        self.forward = forward  # envelopes for the upstream Sentry (or the file sink)
        self.limits = limits
        self.processor = SentryProcessor(
            scrub=rcv.scrub,
            scrub_extra_keys=rcv.scrub_extra_keys,
            scrub_safe_keys=rcv.scrub_safe_keys,
            transaction_sample_rate=cfg.sampling.sentry_transactions,
            max_envelope_bytes=cfg.server.max_body_bytes,
            max_event_bytes=rcv.max_event_bytes,
        )

    def _unknown_key_message(self) -> str:
        if not self.keys and not self.any_key:
            return (
                "invalid or unknown sentry_key: no [receivers.sentry] public_keys are configured, and keys are "
                "accepted without configuration only on a loopback listener"
            )
        return "invalid or unknown sentry_key"

    def _key_ok(self, key: str | None) -> bool:
        if key is None:
            return False
        if self.any_key:
            return True
        given = key.encode()
        return sum(hmac.compare_digest(given, k) for k in self.keys) > 0

    async def handle(self, request: Request) -> Response | None:
        """The response for a Sentry route, or None when the path is not one."""
        match = ROUTE.match(request.path)
        if match is None:
            return None
        if request.method != "POST":
            return error(405, "method not allowed")
        project, store = match.group("project"), match.group("kind") == "store"
        key = client_key(request)
        if key is not None and not self._key_ok(key):
            ENVELOPES.inc(outcome="unauthorized")
            return error(401, self._unknown_key_message())
        try:
            body = await request.body(self.cfg.server.max_body_bytes, self.cfg.server.body_timeout_s)
        except BodyTooLarge as exc:
            ENVELOPES.inc(outcome="rejected")
            return error(413, str(exc))
        except BodyTimeout as exc:
            ENVELOPES.inc(outcome="rejected")
            return error(408, str(exc), [("Connection", "close")])
        except BudgetSpent as exc:
            return self._budget_spent(exc)
        encoding = request.header("content-encoding").strip()
        if encoding.lower() in ("", "utf-8", "identity"):  # sentry-sdk may say UTF-8: not an encoding
            encoding = ""
        try:
            # An encoded body can inflate to far more work than its size shows: always off the loop.
            if encoding or len(body) > INLINE_LIMIT:
                result = await asyncio.to_thread(self.processor.process, body, project, encoding or None, store)
            else:
                result = self.processor.process(body, project, encoding or None, store)
        except DecodeError as exc:
            ENVELOPES.inc(outcome="rejected")
            detail = str(exc)  # the data plane's messages mostly say "invalid envelope: ..." already
            if not detail.startswith("invalid "):
                detail = f"invalid {'event' if store else 'envelope'}: {detail}"
            return error(400, detail)
        except PayloadTooLarge as exc:
            ENVELOPES.inc(outcome="rejected")
            return error(413, str(exc))
        except UnsupportedMedia as exc:
            ENVELOPES.inc(outcome="rejected")
            return error(415, str(exc))
        if key is None:
            refused = self._dsn_refusal(result)
            if refused:
                ENVELOPES.inc(outcome="unauthorized")
                return error(401, refused)
        limited = self.limits.limited(result.categories)
        if limited:
            ENVELOPES.inc(outcome="rate_limited")
            header, retry_after = self.limits.header(limited)
            return error(
                429,
                f"rate limited upstream: {', '.join(sorted(limited))}",
                [("X-Sentry-Rate-Limits", header), ("Retry-After", retry_after)],
            )
        try:
            if self.pipeline.blocking_ingest:
                await asyncio.to_thread(self.queue, result)
            else:
                self.queue(result)
        except QueueFull as exc:
            return error(429, f"{exc}; retry later", [("Retry-After", "1")])
        except PipelineClosed:
            return error(503, "gateway is shutting down", [("Retry-After", "5")])
        except OSError as exc:  # the queue's disk failed (full, read-only): nothing was accepted
            log.error("queue storage failed", extra={"error": str(exc)})
            return error(503, "queue storage unavailable; retry later", [("Retry-After", "5")])
        ENVELOPES.inc(outcome="accepted")
        SENTRY_ITEMS.inc(result.items, outcome="received")
        SENTRY_ITEMS.inc(result.items_scrubbed, outcome="scrubbed")
        SENTRY_ITEMS.inc(result.transactions_sampled_out, outcome="sampled_out")
        return json_response(200, {"id": result.event_id} if result.event_id else {})

    def _budget_spent(self, exc: BudgetSpent) -> Response:
        telemetry.HTTP_REFUSED.inc(reason="inflight_bytes")
        ENVELOPES.inc(outcome="rejected")
        headers = [("Retry-After", RETRY_AFTER_BUSY_S)] + ([] if exc.drained else [("Connection", "close")])
        return error(503, str(exc), headers)

    def _dsn_refusal(self, result: SentryResult) -> str | None:
        """Why the envelope header's `dsn` does not authenticate the request (None: it does)."""
        if result.dsn is None:
            return "missing authentication: no sentry_key in X-Sentry-Auth, Authorization, query or dsn"
        try:
            key = parse_dsn(result.dsn).public_key
        except DsnError as exc:
            return f"invalid dsn in the envelope header: {exc}"
        return None if self._key_ok(key) else self._unknown_key_message()

    def queue(self, result: SentryResult) -> None:
        if self.forward is not None and result.items_forwarded:
            self.forward.core.enqueue("logs", result.envelope, result.items_forwarded)
            SENTRY_ITEMS.inc(result.items_forwarded, outcome="forwarded")
        if result.otlp_logs:
            self.pipeline.ingest("logs", result.otlp_logs, "protobuf")
