"""Sentry receiver: `/api/{project_id}/envelope/` and the legacy `/api/{project_id}/store/`.

sentry-sdk talks to it unchanged (DSN `http://<key>@<gateway>:4318/<project_id>`). Envelopes are
scrubbed and sampled in the data plane, queued durably for the upstream Sentry, and their error
events and log items also flow to the OTLP exporters as log records.

Authentication comes first. A key in X-Sentry-Auth, Authorization or the query is checked before
the body is read. A request without one (an envelope whose header line carries the `dsn`) gets a
bounded read of that first line only: within `server.preauth_timeout_s`, at most
`server.max_preauth_per_client` such requests per client address, decoded no further than the
first newline (64 KiB at most); the rest is read, inflated and parsed once the key checks out.
The legacy store endpoint's body is a bare event with no header line: it needs the key in the
headers or query (sentry-sdk always sends X-Sentry-Auth), else 401 before the body is read.
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
from trackgate.asgi import RETRY_AFTER_BUSY_S, BodyRefused, BodyTooLarge, BudgetSpent, ClientSlots, Request, Response
from trackgate.config import Config, is_loopback, parse_listen
from trackgate.dsn import DsnError, parse_dsn
from trackgate.durable_wait import DurableWait
from trackgate.exceptions import DecodeError, PayloadTooLarge, PipelineClosed, QueueFull, UnsupportedMedia
from trackgate.pipeline import Pipeline
from trackgate.ratelimits import RateLimits
from trackgate.receivers.events import may_carry_events

log = logging.getLogger("trackgate.receiver.sentry")

ROUTE = re.compile(r"^/api/(?P<project>\d+)/(?P<kind>envelope|store)/?$")
INLINE_LIMIT = 256 * 1024
# Raw bytes, at most, read before the envelope header line must be complete (it inflates to at
# most 64 KiB; any encoder emits that within this).
PREAUTH_MAX_BYTES = 256 * 1024
CLOSE = ("Connection", "close")  # the body was not read: the connection cannot carry another request
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
    query = urllib.parse.parse_qs(request.query_string)
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
        # Set when the core's events tap is installed: the OTLP logs made from events pass it,
        # which may wait for the bus's fsync and the job metrics' Redis call (off the loop then).
        self.taps_events = False
        # Requests authenticating by their envelope header, at once per client address.
        self.preauth = ClientSlots(cfg.server.max_preauth_per_client)
        telemetry.REGISTRY.observed(
            "trackgate_sentry_preauth_requests",
            "Requests reading their envelope header line to authenticate by its dsn, now.",
            (),
            lambda: [((), float(sum(self.preauth.held.values())))],
        )
        self.processor = SentryProcessor(
            scrub=cfg.scrubs("sentry"),
            scrub_extra_keys=cfg.scrub_keys()[0],
            scrub_safe_keys=cfg.scrub_keys()[1],
            scrub_patterns=cfg.scrub.extra_patterns,
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
        encoding = request.header("content-encoding").strip()
        if encoding.lower() in ("", "utf-8", "identity"):  # sentry-sdk may say UTF-8: not an encoding
            encoding = ""
        if key is None:
            if store:
                ENVELOPES.inc(outcome="unauthorized")
                return error(
                    401,
                    "missing authentication: the store endpoint needs a sentry_key in X-Sentry-Auth, "
                    "Authorization or the query",
                    [CLOSE],
                )
            refused = await self._authenticate_by_header(request, encoding)
            if refused is not None:
                return refused
        try:
            body = await request.body(self.cfg.server.max_body_bytes, self.cfg.server.body_timeout_s)
        except BodyRefused as exc:
            ENVELOPES.inc(outcome="rejected")
            return error(exc.status, str(exc), exc.headers)
        try:
            # An encoded body can inflate to far more work than its size shows: always off the loop.
            if encoding or len(body) > INLINE_LIMIT:
                result = await asyncio.to_thread(
                    self.processor.process, body, project, encoding or None, store, self.limits
                )
            else:
                result = self.processor.process(body, project, encoding or None, store, self.limits)
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
        # Items the upstream limits now were left out; only an envelope of which nothing is left
        # is refused (as Relay does: an SDK does not send a 429'd envelope again).
        nothing_left = not (result.items_forwarded or result.otlp_logs or result.otlp_traces)
        if result.items_rate_limited and nothing_left:
            # A limit that ran out since the items were held still answers 429 (for a second).
            limited = self.limits.limited(result.held) or dict.fromkeys(result.held, 1.0)
        else:
            limited = {}
        if limited:
            ENVELOPES.inc(outcome="rate_limited")
            header, retry_after = self.limits.header(limited)
            return error(
                429,
                f"rate limited upstream: {', '.join(sorted(limited))}",
                [("X-Sentry-Rate-Limits", header), ("Retry-After", retry_after)],
            )
        pipelines = [self.pipeline] if self.forward is None else [self.pipeline, self.forward]
        wait = DurableWait() if any(p.defers_sync for p in pipelines) else None
        try:
            tapped = self.taps_events and may_carry_events(result.otlp_logs)
            if tapped or any(p.blocking_ingest for p in pipelines):
                await asyncio.to_thread(self.queue, result, wait)
            else:
                self.queue(result, wait)
            if wait is not None:
                await wait.wait()
        except QueueFull as exc:
            return error(429, f"{exc}; retry later", [("Retry-After", "1")])
        except PipelineClosed:
            return error(503, "gateway is shutting down", [("Retry-After", "5")])
        except OSError as exc:  # the queue's disk failed (full, read-only): nothing was accepted
            log.error("queue storage failed", extra={"error": str(exc)})
            return error(503, "queue storage unavailable; retry later", [("Retry-After", "5")])
        finally:
            if wait is not None:
                wait.close()
        ENVELOPES.inc(outcome="accepted")
        SENTRY_ITEMS.inc(result.items, outcome="received")
        SENTRY_ITEMS.inc(result.items_scrubbed, outcome="scrubbed")
        telemetry.SENTRY_SCRUBBED.inc(result.items_scrubbed)
        SENTRY_ITEMS.inc(result.transactions_sampled_out, outcome="sampled_out")
        SENTRY_ITEMS.inc(result.items_rate_limited, outcome="rate_limited")
        held = self.limits.limited(result.held) if result.items_rate_limited else {}
        headers = [("X-Sentry-Rate-Limits", self.limits.header(held)[0])] if held else []
        return json_response(200, {"id": result.event_id} if result.event_id else {}, headers)

    async def _authenticate_by_header(self, request: Request, encoding: str) -> Response | None:
        """For a request with no key in its headers or query: reads the body only as far as the
        envelope header line and checks its `dsn` (None: it authenticates the request)."""
        server = self.cfg.server
        client = request.client_host
        if not self.preauth.enter(client):
            telemetry.HTTP_REFUSED.inc(reason="preauth_per_client")
            ENVELOPES.inc(outcome="rejected")
            return error(
                429,
                f"too many requests from this address awaiting authentication (server.max_preauth_per_client = "
                f"{server.max_preauth_per_client}); send the key in X-Sentry-Auth, or retry later",
                [("Retry-After", RETRY_AFTER_BUSY_S), CLOSE],
            )
        timeout_s = min(server.preauth_timeout_s, server.body_timeout_s)
        try:
            dsn = await asyncio.wait_for(self._header_dsn(request, encoding), timeout_s)
        except TimeoutError:
            ENVELOPES.inc(outcome="rejected")
            return error(
                408,
                f"envelope header not received within {timeout_s:g}s (server.preauth_timeout_s: the request has "
                "no sentry_key in its headers or query)",
                [CLOSE],
            )
        except BodyTooLarge as exc:
            ENVELOPES.inc(outcome="rejected")
            return error(413, str(exc), [CLOSE])
        except BudgetSpent as exc:
            ENVELOPES.inc(outcome="rejected")
            return error(exc.status, str(exc), exc.headers)
        except DecodeError as exc:
            ENVELOPES.inc(outcome="rejected")
            return error(400, str(exc), [CLOSE])
        except PayloadTooLarge as exc:
            ENVELOPES.inc(outcome="rejected")
            return error(413, str(exc), [CLOSE])
        except UnsupportedMedia as exc:
            ENVELOPES.inc(outcome="rejected")
            return error(415, str(exc), [CLOSE])
        finally:
            self.preauth.leave(client)
        refused = self._dsn_refusal(dsn)
        if refused:
            ENVELOPES.inc(outcome="unauthorized")
            return error(401, refused, [CLOSE])
        return None

    async def _header_dsn(self, request: Request, encoding: str) -> str | None:
        """Reads the body piece by piece until its first line decodes, and returns the `dsn` in it."""
        probe_at = 0  # decode again once this much has arrived (doubling: linear cost overall)
        while True:
            await request.read_chunk(self.cfg.server.max_body_bytes)
            size = request.received
            if request.complete or size >= probe_at or size > PREAUTH_MAX_BYTES:
                done, dsn = self.processor.header_dsn(request.buffered(), encoding or None, request.complete)
                if done:
                    return dsn
                if size > PREAUTH_MAX_BYTES:
                    raise PayloadTooLarge(
                        f"the envelope header line is not complete within the first {PREAUTH_MAX_BYTES} bytes "
                        "of the body"
                    )
                probe_at = 2 * size

    def _dsn_refusal(self, dsn: str | None) -> str | None:
        """Why the envelope header's `dsn` does not authenticate the request (None: it does)."""
        if dsn is None:
            return "missing authentication: no sentry_key in X-Sentry-Auth, Authorization, query or dsn"
        try:
            key = parse_dsn(dsn).public_key
        except DsnError as exc:
            return f"invalid dsn in the envelope header: {exc}"
        return None if self._key_ok(key) else self._unknown_key_message()

    def queue(self, result: SentryResult, wait: DurableWait | None = None) -> None:
        if self.forward is not None and result.items_forwarded:
            self.forward.enqueue("logs", result.envelope, result.items_forwarded, wait=wait)
            SENTRY_ITEMS.inc(result.items_forwarded, outcome="forwarded")
        # Converted from the scrubbed items (or from unscrubbed ones when the sentry track is
        # off): the OTLP track's scrubbing does not run on them again.
        # Built by the core from checked items: not held to the schema check or the body limit
        # again (an envelope near the limit can convert to a larger request).
        if result.otlp_logs:
            self.pipeline.ingest_built("logs", result.otlp_logs, scrub=False, wait=wait)
        if result.otlp_traces:
            self.pipeline.ingest_built("traces", result.otlp_traces, scrub=False, wait=wait)
