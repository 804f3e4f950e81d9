"""The application: routing, auth, self-telemetry endpoints, and the pipeline's lifespan.

`trackgate serve` runs it over granian's RSGI interface (`__rsgi__`, cheaper per request); it is
an ASGI app as well (`__call__`, `create_app` as an ASGI factory). Both build the same `Request`
and take one path through `_respond`."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from trackgate import __version__, rsgi, telemetry
from trackgate import config as config_mod
from trackgate._core import InflightBudget, Listeners
from trackgate.asgi import ClientDisconnected, Receive, Request, Response, Scope, Send
from trackgate.config import Config
from trackgate.echo import shorten
from trackgate.jobmetrics import JobMetrics, RedisState
from trackgate.pipeline import Format, Pipeline, close_together
from trackgate.ratelimits import RateLimits
from trackgate.receivers import fluent as fluent_receiver
from trackgate.receivers import sentry as sentry_receiver
from trackgate.receivers.events import EVENTS, EventsReceiver
from trackgate.receivers.otlp_http import CODE_UNAUTHENTICATED, OtlpHttpReceiver, status_response

if TYPE_CHECKING:
    from granian._granian import RSGIHTTPProtocol as HTTPProtocol
    from granian.rsgi import Scope as RsgiScope

    from trackgate.hostmetrics.collector import GatewayReporter

log = logging.getLogger("trackgate.app")

# The effective config travels to granian's worker processes in this variable (see cli.serve).
CONFIG_ENV = "TRACKGATE_EFFECTIVE_CONFIG"
# Set by `trackgate serve` when granian serves the app on this Unix socket behind the OTLP/HTTP
# front: each worker then serves `server.listen` with the front (start_front).
APP_SOCKET_ENV = "TRACKGATE_APP_SOCKET"

Handler = Callable[[Request], Awaitable[Response]]

# Granian reports a body it could not read (bad chunked framing, a client gone) as a disconnect.
# Answer 400 anyway: if the client is still there it learns why, and granian does not substitute
# a 500 for the missing answer.
UNREADABLE = Response(400, b"request body could not be read (malformed framing or client gone)\n")
INTERNAL_ERROR = Response(500, b"internal error\n")


class App:
    def __init__(self, cfg: Config) -> None:
        self.config = cfg
        self.pipeline: Pipeline | None = None
        self.forward: Pipeline | None = None  # Sentry envelopes on their way upstream
        self.bus: Pipeline | None = None  # operational events on their way to the Redis event bus
        self.jobmetrics: JobMetrics | None = None  # job metrics derived from the events
        self.peers: telemetry.PeerSnapshots | None = None
        self.listeners: Listeners | None = None  # the extension's network runtime (OTLP/gRPC)
        self.hostmetrics: GatewayReporter | None = None
        self.tokens = [t.encode() for t in cfg.server.tokens]
        # Request bodies buffered at once in this worker; every request reserves before it buffers
        # (in the core: the OTLP/HTTP front takes from the same budget).
        self.budget = InflightBudget(cfg.server.inflight_budget())
        telemetry.REGISTRY.observed(
            "trackgate_http_inflight_bytes",
            "Bytes of request bodies reserved (being received or processed) now, of server.max_inflight_bytes.",
            (),
            lambda: [((), float(self.budget.used))],
        )
        # The Sentry forwarder's and the event bus's own queues (the main one is trackgate_queue_*):
        # a backlog there is an upstream that does not keep up.
        telemetry.REGISTRY.observed(
            "trackgate_side_queue_records",
            "Entries queued for the upstream Sentry (queue=sentry: envelopes) and the Redis event bus "
            "(queue=events: events), not yet delivered.",
            ("queue",),
            self._side_queues,
        )
        self.routes: dict[str, tuple[str, Handler]] = {
            "/v1/traces": ("POST", self._otlp("traces")),
            "/v1/logs": ("POST", self._otlp("logs")),
            "/v1/metrics": ("POST", self._otlp("metrics")),
            "/v1/events": ("POST", self._events),
            "/healthz": ("GET", self._healthz),
            "/readyz": ("GET", self._readyz),
            "/metrics": ("GET", self._metrics),
            fluent_receiver.ROUTE_PREFIX: ("POST", self._fluent_route),
        }
        for path in cfg.receivers.fluent.http_paths:
            self.routes.setdefault(path, ("POST", self._fluent_route))

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Pipeline:
        if self.pipeline is None:
            self.pipeline = Pipeline(self.config).start(adopt_orphans=True)
            server = self.config.server
            self.otlp = OtlpHttpReceiver(self.pipeline, server.max_body_bytes, server.body_timeout_s)
            self.fluent = fluent_receiver.FluentHttpReceiver(
                self.pipeline, server.max_body_bytes, server.body_timeout_s, self.config.receivers.fluent.tag_header
            )
            limits = RateLimits()
            self.forward = build_forward_pipeline(self.config, limits)
            self.sentry = sentry_receiver.SentryReceiver(self.config, self.pipeline, self.forward, limits)
            self.bus = build_events_pipeline(self.config)
            events_cfg = self.config.events
            self.events = EventsReceiver(
                self.pipeline,
                self.bus,
                server.max_body_bytes,
                server.body_timeout_s,
                events_cfg.normalized_types(),
                (*self.config.scrub_keys(), self.config.scrub.extra_patterns) if self.config.scrubs("events") else None,
            )
            if self.bus is not None and events_cfg.from_logs:
                self.otlp.use_pipeline(self.bus)
            self.jobmetrics = build_job_metrics(self.config, self.pipeline)
            if self.jobmetrics is not None:
                self.events.on_accepted = self.jobmetrics.offer
                self.events.on_accepted_blocks = self.jobmetrics.blocking
            # Logs carrying events reach the bus in the ingest call (the core's events tap).
            tapped = events_cfg.from_logs and (self.bus is not None or self.jobmetrics is not None)
            if tapped:
                self.events.install_tap(self.pipeline.core)
            # An ingest that passes the tap may wait for the bus's fsync or the job metrics' Redis
            # call: on the app path, one that may carry events then runs off the event loop.
            tap_blocks = tapped and (self.bus is not None or (self.jobmetrics is not None and self.jobmetrics.blocking))
            self.otlp.taps_events = self.fluent.taps_events = self.sentry.taps_events = tap_blocks
            receivers = self.config.receivers
            behind = os.environ.get(APP_SOCKET_ENV) if server.otlp_front else None
            if behind or receivers.otlp_grpc.enabled or receivers.forward.listen or receivers.fluent_http.listen:
                try:
                    self.listeners = start_listeners(self.config, self.pipeline)
                    if behind:
                        start_front(
                            self.listeners,
                            self.config,
                            self.pipeline,
                            behind,
                            self.otlp.blocking or tapped or (self.bus is not None and self.bus.blocking_ingest),
                            self.budget,
                            [p for p, (_, h) in self.routes.items() if h == self._fluent_route],
                            self.events,
                            self.jobmetrics,
                            self.sentry,
                        )
                except OSError:
                    for pipeline in (self.bus, self.forward, self.pipeline):
                        if pipeline is not None:
                            pipeline.close(0.0)  # release the queue shards for the next start
                    self.pipeline = self.forward = self.bus = None
                    raise
            if self.config.hostmetrics.enabled:
                self.hostmetrics = start_hostmetrics(self.config, self.pipeline)
            if self.config.server.workers > 1:
                # Each worker process counts for itself; /metrics adds the others' figures in.
                self.peers = telemetry.PeerSnapshots(Path(self.config.storage.dir) / "metrics", telemetry.REGISTRY)
                self.peers.start()
            log.info("gateway ready", extra={"pid": os.getpid(), "exporters": self.config.exporter_names()})
        return self.pipeline

    async def stop(self) -> None:
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Stops intake and drains: the listeners, then the queues (exporters flush within
        `server.shutdown_grace_s`). Blocks: from the event loop, `stop`."""
        grace = self.config.server.shutdown_grace_s
        # One deadline for all of it: granian kills the worker `grace` + 5 s after asking it to stop.
        deadline = time.monotonic() + grace
        if self.hostmetrics is not None:
            self.hostmetrics.stop()
        if self.peers is not None:
            self.peers.close()
        if self.listeners is not None:
            # First stop intake over gRPC and the front (requests in flight finish), then drain
            # the queue.
            self.listeners.close(grace)
        if self.jobmetrics is not None:
            # After the listeners: the events they accepted last are in the final export.
            self.jobmetrics.close()
        close_together([p for p in (self.bus, self.forward, self.pipeline) if p is not None], deadline)
        if self.pipeline is not None:
            # The tap holds the events receiver (and through it this pipeline): drop the cycle
            # once the pipeline takes nothing more.
            self.pipeline.core.set_events_tap(None, [])

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """RSGI: the worker starts (its loop not running yet)."""
        try:
            self.start()
        except Exception:
            log.exception("startup failed")
            raise SystemExit(1) from None

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        """RSGI: the worker stops serving."""
        self.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.start()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- requests -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI."""
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        request = Request(scope, receive, self.budget)
        response = await self._respond(request)
        if response is UNREADABLE:
            with contextlib.suppress(Exception):
                await response.send(send)
        else:
            await response.send(send)
        self._count(request.path, response, started)

    async def __rsgi__(self, scope: RsgiScope, protocol: HTTPProtocol) -> None:
        """RSGI (granian is started without WebSockets: every call is HTTP)."""
        started = time.perf_counter()
        request = rsgi.request(scope, protocol, self.budget)
        response = await self._respond(request)
        response.answer(protocol)
        self._count(request.path, response, started)

    async def _respond(self, request: Request) -> Response:
        try:
            return await self._dispatch(request)
        except ClientDisconnected:
            return UNREADABLE
        except Exception:
            log.exception("unhandled error", extra={"path": shorten(request.path)})
            return INTERNAL_ERROR
        finally:
            request.release()  # the body's budget, whatever happened

    def _count(self, path: str, response: Response, started: float) -> None:
        route = path if path in self.routes else route_label(path)
        if response is UNREADABLE:
            telemetry.HTTP_REQUESTS.inc(route=route, code="400")
            return
        telemetry.HTTP_REQUESTS.inc_key((route, str(response.status)))
        telemetry.HTTP_LATENCY.observe_key(time.perf_counter() - started, (route,))

    async def _dispatch(self, request: Request) -> Response:
        entry = self.routes.get(request.path)
        if entry is None and fluent_receiver.path_tag(request.path) is not None:
            entry = ("POST", self._fluent_route)
        if entry is None:
            if sentry_receiver.ROUTE.match(request.path):
                self.start()
                response = await self.sentry.handle(request)
                if response is not None:
                    return response
            return Response(404, f"no route for {shorten(request.path)}\n".encode())
        method, handler = entry
        if request.method != method:
            return Response(405, f"{request.path} accepts {method} only\n".encode(), headers=[("Allow", method)])
        self.start()
        return await handler(request)

    def _authorized(self, request: Request) -> bool:
        if not self.tokens:
            return True
        scheme, _, token = request.header("authorization").partition(" ")
        if scheme.lower() != "bearer":
            return False
        given = token.strip().encode()
        if not given:
            return False
        # Compare against every token so the time taken does not reveal which one nearly matched.
        return sum(hmac.compare_digest(given, t) for t in self.tokens) > 0

    def _side_queues(self) -> list[tuple[tuple[str, ...], float]]:
        queues = (("sentry", self.forward), ("events", self.bus))
        return [((name,), float(p.pending())) for name, p in queues if p is not None]

    def _otlp(self, signal: str) -> Handler:
        async def handle(request: Request) -> Response:
            if not self._authorized(request):
                fmt: Format = "json" if "json" in request.header("content-type") else "protobuf"
                return status_response(
                    401,
                    CODE_UNAUTHENTICATED,
                    "missing or invalid bearer token",
                    fmt,
                    [("WWW-Authenticate", 'Bearer realm="trackgate"')],
                )
            return await self.otlp.handle(request, signal)  # type: ignore[arg-type]

        return handle

    async def _fluent_route(self, request: Request) -> Response:
        if not self._authorized(request):
            return fluent_receiver.error(
                401, "missing or invalid bearer token", [("WWW-Authenticate", 'Bearer realm="trackgate"')]
            )
        return await self.fluent.handle(request, fluent_receiver.path_tag(request.path) or "")

    async def _events(self, request: Request) -> Response:
        if not self._authorized(request):
            return Response(
                401,
                b'{"error":"missing or invalid bearer token"}',
                "application/json",
                [("WWW-Authenticate", 'Bearer realm="trackgate"')],
            )
        return await self.events.handle(request)

    async def _healthz(self, request: Request) -> Response:
        return Response(200, b"ok\n")

    async def _readyz(self, request: Request) -> Response:
        if self.pipeline is not None and self.pipeline.ready:
            return Response(200, b"ready\n")
        if self.pipeline is not None and self.pipeline.delivery_failed:
            reason = b"not ready: delivery stopped on an internal error (see the logs); restart the gateway\n"
        else:
            reason = b"not ready: queue full or unreadable, or shutting down\n"
        return Response(503, reason, headers=[("Retry-After", "1")])

    async def _metrics(self, request: Request) -> Response:
        peers = await asyncio.to_thread(self.peers.peers) if self.peers is not None else []
        return Response(200, telemetry.REGISTRY.render(peers).encode(), "text/plain; version=0.0.4; charset=utf-8")


def route_label(path: str) -> str:
    """A bounded set of metric labels: Sentry paths without their project id, the rest as "other"."""
    match = sentry_receiver.ROUTE.match(path)
    if match:
        return f"/api/:project/{match.group('kind')}/"
    return "/v1/fluent/:tag" if fluent_receiver.path_tag(path) is not None else "other"


def start_listeners(cfg: Config, pipeline: Pipeline) -> Listeners:
    """The OTLP/gRPC and forward listeners, on the extension's network runtime, ingesting straight
    into the pipeline's core (no Python per call). Each worker binds the ports with SO_REUSEPORT."""
    listeners = Listeners()
    if cfg.receivers.otlp_grpc.enabled:
        add_otlp_grpc(listeners, cfg, pipeline)
    fluent_http = cfg.receivers.fluent_http
    if fluent_http.listen:
        host, port = config_mod.parse_listen(fluent_http.listen)
        try:
            bound = listeners.add_fluent_http(
                pipeline.core,
                host,
                port,
                tokens=cfg.server.tokens,
                max_body_bytes=cfg.server.max_body_bytes,
                body_timeout_s=cfg.server.body_timeout_s,
                idle_timeout_s=cfg.server.idle_timeout_s,
                reuse_port=cfg.server.workers > 1,
            )
        except OSError as exc:
            listeners.close(0.0)
            raise OSError(f"cannot listen on {fluent_http.listen} (receivers.fluent_http.listen): {exc}") from exc
        log.info("Fluent http input listening", extra={"listen": f"{host}:{bound}", "pid": os.getpid()})
    forward = cfg.receivers.forward
    if forward.listen:
        host, port = config_mod.parse_listen(forward.address())
        try:
            bound = listeners.add_forward(
                pipeline.core,
                host,
                port,
                max_message_bytes=forward.max_message_bytes,
                reuse_port=cfg.server.workers > 1,
                shared_key=forward.shared_key,
                self_hostname=forward.self_hostname or socket.gethostname(),
                users=[(u.username, u.password) for u in forward.users],
            )
        except OSError as exc:
            listeners.close(0.0)
            raise OSError(f"cannot listen for forward on {forward.listen} (receivers.forward.listen): {exc}") from exc
        telemetry.REGISTRY.observed(
            "trackgate_forward_events_total",
            "Fluentd forward protocol: messages, records, rejected entries, acks, malformed frames, "
            "queue-full waits, failed handshakes (auth_failed).",
            ("kind",),
            lambda: [((name,), float(n)) for name, n in listeners.forward_stats()],
            kind="counter",
        )
        log.info(
            "forward listening",
            extra={"listen": f"{host}:{bound}", "pid": os.getpid(), "shared_key": forward.shared_key is not None},
        )
    return listeners


def front_log(level: str, message: str, fields: dict[str, str | int]) -> None:
    """The front's log lines, under the logger of the receiver the app would answer with (the
    `receiver` field names it; OTLP's when none does)."""
    receiver = fields.pop("receiver", "otlp")
    logging.getLogger(f"trackgate.receiver.{receiver}").log(logging.getLevelName(level.upper()), message, extra=fields)


def start_front(
    listeners: Listeners,
    cfg: Config,
    pipeline: Pipeline,
    app_socket: str,
    blocking: bool,
    budget: InflightBudget,
    fluent_paths: list[str],
    events: EventsReceiver,
    jobmetrics: JobMetrics | None,
    sentry: sentry_receiver.SentryReceiver,
) -> None:
    """The OTLP/HTTP front on `server.listen`: OTLP posts, Fluent posts (on `fluent_paths`
    and /v1/fluent/{tag}), events (/v1/events) and Sentry envelopes with an accepted key answered
    by the core, the rest relayed to the app on `app_socket` (granian). Its counts join the app's
    `trackgate_http_*`, `trackgate_events_*` and `trackgate_sentry_*` series."""
    server = cfg.server
    host, port = config_mod.parse_listen(server.listen)
    try:
        listeners.add_otlp_http(
            pipeline.core,
            host,
            port,
            backend_uds=app_socket,
            tokens=server.tokens,
            max_body_bytes=server.max_body_bytes,
            body_timeout_s=server.body_timeout_s,
            idle_timeout_s=server.idle_timeout_s,
            max_connections=server.backpressure,
            blocking=blocking,
            latency_buckets=list(telemetry.HTTP_LATENCY.buckets),
            log=front_log,
            budget=budget,
            reuse_port=server.workers > 1,
            fluent_paths=fluent_paths,
            fluent_tag_header=cfg.receivers.fluent.tag_header,
            events=True,
            events_bus=events.bus.core if events.bus is not None else None,
            events_scrub=events.scrub,
            job_metrics=jobmetrics.core if jobmetrics is not None else None,
            job_state=jobmetrics.settle if jobmetrics is not None and jobmetrics.redis is not None else None,
            sentry=sentry.processor,
            sentry_keys=cfg.receivers.sentry.public_keys,
            sentry_any_key=sentry.any_key,
            sentry_forward=sentry.forward.core if sentry.forward is not None else None,
            sentry_limits=sentry.limits,
        )
    except OSError as exc:
        listeners.close(0.0)
        raise OSError(f"cannot listen on {server.listen} (server.listen): {exc}") from exc
    telemetry.HTTP_REQUESTS.add_source(
        lambda: [((route, str(code)), float(n)) for route, code, n in listeners.http_answered()]
    )
    telemetry.HTTP_LATENCY.add_source(listeners.http_latency)
    telemetry.HTTP_REFUSED.add_source(lambda: [(("inflight_bytes",), float(listeners.http_refused()))])

    def events_by_outcome() -> list[tuple[tuple[str, ...], float]]:
        accepted, rejected, _ = listeners.events_counts()
        return [(("accepted",), float(accepted)), (("rejected",), float(rejected))]

    EVENTS.add_source(events_by_outcome)
    telemetry.EVENTS_SCRUBBED.add_source(lambda: [((), float(listeners.events_counts()[2]))])
    add_sentry_sources(listeners)
    telemetry.REGISTRY.observed(
        "trackgate_http_relayed_total",
        "Connections the OTLP/HTTP front handed to the app behind it (every request but OTLP and Fluent posts).",
        (),
        lambda: [((), float(listeners.http_relayed()))],
        kind="counter",
    )
    log.info("OTLP/HTTP front listening", extra={"listen": server.listen, "pid": os.getpid()})


def add_sentry_sources(listeners: Listeners) -> None:
    """The front's Sentry counts, added to the app's series on every scrape."""
    envelopes = ("accepted", "rate_limited", "rejected")
    items = {
        "items_received": "received",
        "items_forwarded": "forwarded",
        "items_scrubbed": "scrubbed",
        "items_sampled_out": "sampled_out",
        "items_rate_limited": "rate_limited",
    }

    def envelopes_by_outcome() -> list[tuple[tuple[str, ...], float]]:
        return [((name,), float(n)) for name, n in listeners.sentry_counts() if name in envelopes]

    def items_by_outcome() -> list[tuple[tuple[str, ...], float]]:
        return [((items[name],), float(n)) for name, n in listeners.sentry_counts() if name in items]

    def scrubbed() -> list[tuple[tuple[str, ...], float]]:
        return [((), float(n)) for name, n in listeners.sentry_counts() if name == "items_scrubbed"]

    sentry_receiver.ENVELOPES.add_source(envelopes_by_outcome)
    sentry_receiver.SENTRY_ITEMS.add_source(items_by_outcome)
    telemetry.SENTRY_SCRUBBED.add_source(scrubbed)


def add_otlp_grpc(listeners: Listeners, cfg: Config, pipeline: Pipeline) -> None:
    grpc = cfg.receivers.otlp_grpc
    host, port = config_mod.parse_listen(grpc.listen)
    try:
        bound = listeners.add_otlp_grpc(
            pipeline.core,
            host,
            port,
            tokens=cfg.server.tokens,
            max_body_bytes=cfg.server.max_body_bytes,
            max_concurrent_streams=grpc.max_concurrent_streams,
            keepalive_interval_s=grpc.keepalive_interval_s,
            keepalive_timeout_s=grpc.keepalive_timeout_s,
            body_timeout_s=cfg.server.body_timeout_s,
            max_inflight_bytes=cfg.server.inflight_budget(),
            reuse_port=cfg.server.workers > 1,
        )
    except OSError as exc:
        listeners.close(0.0)
        raise OSError(f"cannot listen for OTLP/gRPC on {grpc.listen} (receivers.otlp_grpc.listen): {exc}") from exc
    telemetry.REGISTRY.observed(
        "trackgate_grpc_requests_total",
        "OTLP/gRPC calls answered, by method and status code.",
        ("method", "code"),
        lambda: [((method, code), float(n)) for method, code, n in listeners.stats()],
        kind="counter",
    )
    log.info("OTLP/gRPC listening", extra={"listen": f"{host}:{bound}", "pid": os.getpid()})


def start_hostmetrics(cfg: Config, pipeline: Pipeline) -> GatewayReporter:
    """Host and GPU metrics into this pipeline. Every worker starts the thread, but only the one
    holding `<storage.dir>/hostmetrics.lock` collects, so the host is reported once however many
    workers run; if that worker exits, another takes the lock within one interval."""
    from trackgate.hostmetrics.collector import GatewayReporter

    hm = cfg.hostmetrics
    interval = (
        float(hm.interval) if isinstance(hm.interval, (int, float)) else config_mod.DEFAULT_HOSTMETRICS_INTERVAL_S
    )
    reporter = GatewayReporter(pipeline, interval, hm.gpu, Path(cfg.storage.dir) / "hostmetrics.lock")
    reporter.start()
    return reporter


def build_forward_pipeline(cfg: Config, limits: RateLimits) -> Pipeline | None:
    """Sentry envelopes go upstream when a DSN is set, to the file sink when that is active, else
    nowhere (their errors still reach the OTLP exporters as log records)."""
    import msgspec

    from trackgate.config import BatchConfig
    from trackgate.exporters.base import Exporter
    from trackgate.exporters.file import EnvelopeFileExporter
    from trackgate.exporters.sentry import SentryExporter

    exporter: Exporter
    if cfg.exporters.sentry is not None and cfg.exporters.sentry.dsn:
        exporter = SentryExporter(cfg.exporters.sentry, limits)
    elif (file_cfg := cfg.file_exporter()) is not None:
        exporter = EnvelopeFileExporter(
            file_cfg, fsync=cfg.storage.fsync, fsync_interval_ms=cfg.storage.fsync_interval_ms
        )
    else:
        return None
    # One envelope per request upstream: a batch is one queued envelope.
    one_each = msgspec.structs.replace(cfg, batch=BatchConfig(max_records=1, max_delay_ms=0))
    forward = Pipeline(one_each, [exporter], queue_name="sentry-queue", register_metrics=False)
    if isinstance(exporter, SentryExporter):
        exporter.core = forward.core
    return forward.start(adopt_orphans=True)


def build_events_pipeline(cfg: Config) -> Pipeline | None:
    """Events for the Redis event bus, in their own durable queue (`<storage.dir>/events-queue/`),
    when `[exporters.redis] url` (or REDIS_URL) is set; without it, events reach the OTLP and file
    exporters only (as log records, through the main pipeline)."""
    redis_cfg = cfg.exporters.redis
    if redis_cfg is None or not redis_cfg.url:
        return None
    from trackgate.exporters.redis import RedisExporter

    return Pipeline(cfg, [RedisExporter(redis_cfg)], queue_name="events-queue", register_metrics=False).start(
        adopt_orphans=True
    )


def build_job_metrics(cfg: Config, pipeline: Pipeline) -> JobMetrics | None:
    """Job metrics from the events, with their shared state in Redis when the event bus is set."""
    if not cfg.metrics.enabled:
        return None
    redis_cfg = cfg.exporters.redis
    # Without the bus the job state stays in this process (in the core's `JobMetrics`).
    state = (
        RedisState(redis_cfg.url, redis_cfg.stream_prefix, cfg.metrics.job_timeout_s)
        if redis_cfg is not None and redis_cfg.url
        else None
    )
    return JobMetrics(
        pipeline, cfg.metrics.interval_s(), cfg.metrics.job_timeout_s, state, temporality=cfg.metrics.temporality
    ).start()


def setup_self_monitoring(cfg: Config) -> None:
    """The gateway's own unexpected exceptions go to Sentry, unless that Sentry is this gateway."""
    dsn_value = cfg.self_monitoring.sentry_dsn
    if not dsn_value:
        return
    from trackgate.dsn import parse_dsn

    dsn = parse_dsn(dsn_value)
    if config_mod.points_at(f"{dsn.scheme}://{dsn.host}", cfg.server.listen):
        log.error("self_monitoring.sentry_dsn points at this gateway; not enabled (it would loop)")
        return
    import sentry_sdk

    # No local variables or request bodies: a frame of a receiver holds client data (send_default_pii
    # is off by default; naming it is deprecated in newer SDKs).
    sentry_sdk.init(
        dsn=dsn_value,
        release=f"trackgate@{__version__}",
        include_local_variables=False,
        max_request_body_size="never",
    )
    log.info("self-monitoring enabled", extra={"sentry": dsn.masked})


def create_app(cfg: Config | None = None) -> App:
    """App factory (granian `--factory`, RSGI or ASGI): the config comes from the serving CLI, else
    from file/env."""
    telemetry.setup_logging(config_mod.log_level(os.environ))
    if cfg is None:
        raw = os.environ.get(CONFIG_ENV)
        cfg = config_mod.from_json(raw) if raw else config_mod.load()
    setup_self_monitoring(cfg)
    return App(cfg)
