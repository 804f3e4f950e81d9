"""`trackgate` command line: serve, check-config, replay, bench, agent, events tail."""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import msgspec
import orjson

from trackgate import __version__, telemetry
from trackgate import config as config_mod
from trackgate.config import Config, ConfigError


def _load(args: argparse.Namespace, serving: bool = False) -> Config:
    cfg = config_mod.load(args.config)
    server = cfg.server
    if getattr(args, "listen", None):
        config_mod.parse_listen(args.listen)
        server = msgspec.structs.replace(server, listen=args.listen)
    if getattr(args, "grpc_listen", None):
        config_mod.parse_listen(args.grpc_listen)
        grpc = msgspec.structs.replace(cfg.receivers.otlp_grpc, listen=args.grpc_listen)
        cfg = msgspec.structs.replace(cfg, receivers=msgspec.structs.replace(cfg.receivers, otlp_grpc=grpc))
    if getattr(args, "workers", None) is not None:
        if args.workers < 1:
            raise ConfigError("--workers must be at least 1")
        server = msgspec.structs.replace(server, workers=args.workers)
    cfg = msgspec.structs.replace(cfg, server=server)
    if serving:
        given = [f for f in ("listen", "grpc_listen") if getattr(args, f, None)]
        source = "/".join("--" + f.replace("_", "-") for f in given) if given else (args.config or "<defaults>")
        config_mod.check_exposure(cfg, source)
    return cfg


def cmd_serve(args: argparse.Namespace) -> int:
    from granian import Granian
    from granian.constants import Interfaces

    from trackgate.app import APP_SOCKET_ENV, CONFIG_ENV

    cfg = _load(args, serving=True)
    host, port = config_mod.parse_listen(cfg.server.listen)
    os.environ[CONFIG_ENV] = config_mod.to_json(cfg).decode()
    telemetry.setup_logging(config_mod.log_level(os.environ))
    import logging

    logging.getLogger("trackgate").info(
        "starting",
        extra={
            "listen": cfg.server.listen,
            "grpc_listen": cfg.receivers.otlp_grpc.listen if cfg.receivers.otlp_grpc.enabled else None,
            "workers": cfg.server.workers,
            "exporters": cfg.exporter_names(),
        },
    )
    # With the OTLP/HTTP front, the workers' core serves `listen` and granian serves the app on
    # a private Unix socket behind it (app.start_front).
    backend = _app_socket() if cfg.server.otlp_front else None
    if backend is not None:
        os.environ[APP_SOCKET_ENV] = str(backend)
    Granian(
        "trackgate.app:create_app",
        address=host,
        port=port,
        uds=backend,
        uds_permissions=0o600 if backend is not None else None,
        # RSGI: granian's native interface, about 60 µs of CPU less per request than ASGI.
        interface=Interfaces.RSGI,
        workers=cfg.server.workers,
        # Connections each worker serves at once (granian's default would be 1024 / workers);
        # more wait in the listen backlog. Set explicitly so it does not shrink with --workers.
        backpressure=cfg.server.backpressure,
        factory=True,
        # No WebSocket routes: leave granian's upgrade handling out of the request path.
        websockets=False,
        log_access=False,
        workers_kill_timeout=int(cfg.server.shutdown_grace_s) + 5,
    ).serve()
    return 0


def _app_socket() -> Path:
    """A Unix socket path in a private directory, removed when `serve` exits."""
    folder = Path(tempfile.mkdtemp(prefix="trackgate-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder / "app.sock"


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args, serving=True)
    doc = config_mod.masked(cfg)
    doc["effective_exporters"] = cfg.exporter_names()
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from trackgate.replay import ReplayError, replay

    cfg = _load(args)
    telemetry.setup_logging("warning")
    try:
        report = replay(args.files, cfg, signal=args.signal, progress=not args.quiet)
    except ReplayError as exc:
        print(f"trackgate replay: {exc}", file=sys.stderr)
        return 2
    for error in report.errors:
        print(f"trackgate replay: {error}", file=sys.stderr)
    print(
        f"replayed {report.requests} requests from {report.files} files: {report.accepted} records accepted, "
        f"{report.rejected} rejected, {report.sampled_out} sampled out"
    )
    return 1 if report.errors else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from trackgate.loadgen import BenchError, Plan, Session, parse_tracks

    track = args.track or ("grpc" if args.protocol == "grpc" else "otlp")
    try:
        plan = Plan(
            url=args.url or "http://127.0.0.1:4318",
            signal=args.signal,
            records=args.records,
            connections=args.connections,
            duration=args.duration,
            gzip=args.gzip,
            token=args.token or os.environ.get("TRACKGATE_BENCH_TOKEN", ""),
            rate=args.rate or 0.0,
            threads=args.threads,
            timeout=args.timeout,
            tracks=parse_tracks(track),
            # The older `--protocol grpc --url HOST:4317` form: the URL is the gRPC target.
            grpc_url=args.grpc_url or (args.url if args.protocol == "grpc" and args.url else ""),
            forward_addr=args.forward or "",
            tag=args.tag,
            honor_retry_after=args.honor_retry_after,
        )
        if args.config and not args.serve:
            raise BenchError("--config applies to --serve only")
        if args.workers is not None and args.workers < 1:
            raise BenchError("--workers must be at least 1")
        if plan.duration <= 0 or plan.connections < 1 or plan.threads < 1:
            raise BenchError("--duration must be positive, --connections and --threads at least 1")
        session = Session(
            plan,
            pid=args.gateway_pid,
            ceiling=args.ceiling,
            workers=args.workers,
            compare=args.compare,
            compare_url=args.compare_url,
            progress=not args.no_progress,
            serve=args.serve,
            config=args.config,
        )
        results = session.run((lambda _: None) if args.json else print)
    except BenchError as exc:
        print(f"trackgate bench: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(orjson.dumps([r.to_dict() for r in results], option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if results[0].accepted else 1


def cmd_agent(args: argparse.Namespace) -> int:
    import signal

    from trackgate.hostmetrics.agent import Agent

    interval = config_mod.parse_interval(args.interval, "--interval")
    if not args.to.startswith(("http://", "https://")):
        raise ConfigError(f"--to {args.to!r} must be an http:// or https:// URL")
    gpu = {"auto": "auto", "on": True, "off": False}[args.gpu]
    telemetry.setup_logging(config_mod.log_level(os.environ))
    token = args.token or os.environ.get("TRACKGATE_AGENT_TOKEN", "")
    headers: dict[str, str] = {}
    if os.environ.get("OTEL_EXPORTER_OTLP_HEADERS"):
        headers.update(
            config_mod.parse_key_values(os.environ["OTEL_EXPORTER_OTLP_HEADERS"], "OTEL_EXPORTER_OTLP_HEADERS", True)
        )
    for item in args.header or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError("--header: expected NAME=VALUE")
        headers[name.strip()] = value.strip()
    agent = Agent(args.to, token=token, headers=headers, interval=interval, gpu=gpu, buffer=args.buffer)  # type: ignore[arg-type]
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: agent.stop())
    stats = agent.run(samples=args.samples)
    print(
        f"trackgate agent: {stats.samples} samples, {stats.sent} sent, {stats.dropped_full} dropped (buffer full), "
        f"{stats.dropped_rejected} refused by the target",
        file=sys.stderr,
    )
    return 0


def cmd_events_tail(args: argparse.Namespace) -> int:
    import redis

    from trackgate.events_tail import GROUP_WITH_JOB, tail

    if args.group and args.job is not None:
        print(f"trackgate events tail: {GROUP_WITH_JOB}", file=sys.stderr)
        return 2
    cfg = config_mod.load(args.config)
    redis_cfg = cfg.exporters.redis
    url = args.url or (redis_cfg.url if redis_cfg is not None else "")
    if not url:
        raise ConfigError("no event bus: set [exporters.redis] url, REDIS_URL or --url")
    prefix = redis_cfg.stream_prefix if redis_cfg is not None else "trackgate:events"
    # per_type: the events are in "<prefix>:<event_type>", nothing in "<prefix>": read them all.
    per_type = not args.stream and redis_cfg is not None and redis_cfg.per_type
    stream = args.stream or prefix
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        tail(
            client,
            stream,
            per_type=per_type,
            group=args.group,
            job=args.job,
            from_start=args.from_start,
            count=args.count,
        )
    except redis.exceptions.ConnectionError as exc:
        print(f"trackgate: cannot reach the event bus at {config_mod.mask_url(url)}: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trackgate", description="Telemetry ingestion gateway.")
    p.add_argument("--version", action="version", version=f"trackgate {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="TOML config file (default: $TRACKGATE_CONFIG, else built-in defaults)")
    serve.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:4318)")
    serve.add_argument("--grpc-listen", help="HOST:PORT for OTLP/gRPC (default 127.0.0.1:4317)")
    serve.add_argument("--workers", type=int, help="worker processes")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config and print the effective settings, secrets masked")
    check.add_argument("config", nargs="?", help="TOML config file")
    check.set_defaults(func=cmd_check_config)

    rep = sub.add_parser("replay", help="push captured OTLP files through the pipeline, offline")
    rep.add_argument(
        "files",
        nargs="+",
        help="file sink output (OTLP/JSON lines, or length-framed protobuf), OTLP protobuf request files, "
        "Sentry envelopes",
    )
    rep.add_argument("--config", help="TOML config file")
    rep.add_argument("--signal", choices=["traces", "logs", "metrics"], help="signal of protobuf files")
    rep.add_argument("--quiet", action="store_true", help="no progress bar")
    rep.set_defaults(func=cmd_replay)

    agent = sub.add_parser("agent", help="send this host's CPU, memory, disk, network and GPU metrics over OTLP/HTTP")
    agent.add_argument("--to", required=True, help="gateway or OTLP/HTTP base URL (/v1/metrics appended)")
    agent.add_argument("--token", help="bearer token (or TRACKGATE_AGENT_TOKEN)")
    agent.add_argument(
        "--header",
        action="append",
        help="extra request header NAME=VALUE, repeatable (also OTEL_EXPORTER_OTLP_HEADERS)",
    )
    agent.add_argument("--interval", default="30", help='seconds between samples, or e.g. "30s" (default 30)')
    agent.add_argument("--gpu", choices=["auto", "on", "off"], default="auto", help="NVIDIA GPU metrics (default auto)")
    agent.add_argument("--buffer", type=int, default=120, help="samples kept while the target is down (default 120)")
    agent.add_argument("--samples", type=int, help=argparse.SUPPRESS)  # stop after this many (tests, measurements)
    agent.set_defaults(func=cmd_agent)

    bench = sub.add_parser(
        "bench",
        help="load a gateway from Rust (keep-alive connections) and report requests/s, records/s, latency, CPU, RSS",
    )
    bench.add_argument("--url", help="gateway base URL (default http://127.0.0.1:4318)")
    bench.add_argument(
        "--track",
        help="otlp (OTLP/HTTP protobuf), grpc, fluent (json_lines to /v1/fluent/TAG), forward, events, "
        "sentry (envelopes of one error event); "
        "or a weighted mix such as otlp:3,fluent:1 (default otlp)",
    )
    bench.add_argument("--protocol", choices=["http", "grpc"], default="http", help="same as --track otlp / grpc")
    bench.add_argument("--signal", choices=["traces", "logs", "metrics", "events"], default="traces")
    bench.add_argument("--records", type=int, default=100, help="spans, log records, data points or events per request")
    bench.add_argument(
        "--connections", "--concurrency", type=int, default=16, help="keep-alive connections (default 16)"
    )
    bench.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    bench.add_argument(
        "--rate", type=float, help="target requests/s over all connections (default: as fast as answered)"
    )
    bench.add_argument("--gzip", action="store_true", help="send gzip bodies (HTTP and gRPC tracks)")
    bench.add_argument("--token", help="bearer token (or TRACKGATE_BENCH_TOKEN)")
    bench.add_argument("--grpc-url", help="OTLP/gRPC HOST:PORT (default: --url's host, port 4317)")
    bench.add_argument("--forward", help="forward-protocol HOST:PORT (default: --url's host, port 24224)")
    bench.add_argument("--tag", default="bench", help="Fluent tag of the fluent and forward tracks (default bench)")
    bench.add_argument("--threads", type=int, default=2, help="load generator threads (default 2)")
    bench.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as timed out")
    bench.add_argument(
        "--honor-retry-after",
        action="store_true",
        help="after a 429/503 with Retry-After (seconds), a connection waits that long before its next request, "
        "as OpenTelemetry SDKs do (HTTP tracks)",
    )
    bench.add_argument(
        "--gateway-pid",
        "--pid",
        type=int,
        help="process to report CPU and RSS of (default: the one listening on --url)",
    )
    bench.add_argument(
        "--ceiling",
        action="store_true",
        help="also load do-nothing ASGI and RSGI apps on granian and print the gateway's share of each",
    )
    bench.add_argument(
        "--serve", action="store_true", help="start `trackgate serve` on free ports in a temp dir and load it"
    )
    bench.add_argument("--config", help="with --serve: the gateway's TOML config")
    bench.add_argument(
        "--workers", type=int, help="--serve's gateway workers, and the null app's (default: the gateway's)"
    )
    bench.add_argument(
        "--compare", metavar="CMD", help="also start CMD ({port} = a free port) and load it the same way"
    )
    bench.add_argument("--compare-url", help="where --compare's server listens (default http://127.0.0.1:{port})")
    bench.add_argument("--json", action="store_true", help="print the results as JSON instead of the report")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    bench.set_defaults(func=cmd_bench)

    events = sub.add_parser("events", help="the operational event bus (Redis Streams)")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    etail = events_sub.add_parser("tail", help="watch the event bus live, one JSON line per event")
    etail.add_argument("--config", help="TOML config file (for [exporters.redis])")
    etail.add_argument("--url", help="Redis URL (default: [exporters.redis] url or REDIS_URL)")
    etail.add_argument(
        "--stream",
        help="stream key (default: exporters.redis.stream_prefix; with per_type = true, every <prefix>:<type> stream)",
    )
    etail.add_argument(
        "--group", help="read as a member of this consumer group (created if missing), acking; not with --job"
    )
    etail.add_argument("--job", help="only events of this job_id (without --group)")
    etail.add_argument("--from-start", action="store_true", help="from the start of the stream, not its end")
    etail.add_argument("--count", type=int, default=0, help="exit after this many events (0: run until ^C)")
    etail.set_defaults(func=cmd_events_tail)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"trackgate: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
