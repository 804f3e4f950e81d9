"""`trackgate bench`: the Rust load generator against real gateways (figures are never asserted,
only that requests were made and the counts add up)."""

from __future__ import annotations

import http.server
import re
import subprocess
import sys
import threading
from typing import Any

import orjson
import pytest

from conftest import free_port
from trackgate._core import load
from trackgate.cli import main

BENCH = [sys.executable, "-m", "trackgate", "bench", "--no-progress"]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BENCH, *args], capture_output=True, text=True, timeout=120)


def check_track(track: dict[str, Any], ok: str, records: int) -> None:
    """A track made requests, and its counts agree with each other."""
    assert track["calls"] > 0
    assert sum(track["statuses"].values()) == track["calls"]
    assert track["accepted"] == track["statuses"].get(ok, 0) > 0
    assert track["records"] == track["accepted"] * records
    assert (
        track["bytes_sent"] >= track["calls"] * track["request_bytes"] - track["request_bytes"] * track["connections"]
    )
    lat = track["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]


def test_bench_mixes_otlp_fluent_sentry_and_reports_the_gateway(gateway_factory) -> None:
    gw = gateway_factory("")
    run = bench("--url", gw.url, "--duration", "1", "--records", "10", "--connections", "4",
                "--track", "otlp:2,fluent:1,sentry:1", "--signal", "logs", "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    [result] = orjson.loads(run.stdout)
    assert result["label"] == "gateway"
    otlp, fluent, sentry = result["tracks"]
    assert (otlp["name"], otlp["connections"], fluent["name"], fluent["connections"]) == ("otlp", 2, "fluent", 1)
    assert otlp["endpoint"] == gw.url + "/v1/logs" and fluent["endpoint"] == gw.url + "/v1/fluent/bench"
    for track in (otlp, fluent):
        check_track(track, "200", 10)
    assert sentry["endpoint"] == gw.url + "/api/1/envelope/"
    check_track(sentry, "200", 1)  # one event per envelope
    # Found by its listening socket: granian's main process and its worker.
    server = result["server"]
    assert server["pid"] == gw.proc.pid and server["processes"] >= 2
    assert server["rss_peak_bytes"] >= server["rss_end_bytes"] > 0

    text = bench("--url", gw.url, "--duration", "0.5", "--signal", "traces", "--rate", "50", "--gzip",
                 "--honor-retry-after")  # fmt: skip
    assert text.returncode == 0, text.stderr
    for line in ("gateway: 0.5 s, 16 connections, 100 records/request, gzip on, target 50 requests/s",
                 "requests:", "records/s", "latency ms: p50", "server: pid",
                 "Retry-After honoured: 0 waits, 0.0 s in all"):  # fmt: skip
        assert line in text.stdout


class Busy(http.server.BaseHTTPRequestHandler):
    """Answers every POST 503 with Retry-After: 1, keeping the connection."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(503)
        self.send_header("Retry-After", "1")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_load_honours_retry_after_when_asked() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    target = ("http", "127.0.0.1", server.server_address[1], "/v1/logs", [], b"x", 1, 2, False)
    try:
        # 1.5 s on 2 connections: each calls, waits 1 s, calls again, waits out the run.
        _, [held] = load([target], 1.5, honor_retry_after=True)  # type: ignore[list-item]
        assert (held["statuses"], held["retry_waits"]) == ({"503": 4}, 4)
        assert held["retry_wait_s"] >= 2.5
        _, [eager] = load([target], 0.3)  # type: ignore[list-item]
        assert eager["calls"] > 10 and eager["retry_waits"] == 0
    finally:
        server.shutdown()


def test_bench_grpc_and_forward_tracks(gateway_factory) -> None:
    port = free_port()
    gw = gateway_factory(f'[receivers.forward]\nlisten = "127.0.0.1:{port}"\n')
    run = bench("--url", gw.url, "--grpc-url", gw.grpc_target, "--forward", f"127.0.0.1:{port}", "--gzip",
                "--track", "grpc,forward", "--signal", "logs", "--connections", "2", "--duration", "1",
                "--records", "5", "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    grpc, forward = orjson.loads(run.stdout)[0]["tracks"]
    assert grpc["endpoint"].startswith(f"grpc://{gw.grpc_target}/opentelemetry.proto.collector.logs.v1.LogsService")
    check_track(grpc, "grpc OK", 5)
    check_track(forward, "ack", 5)


def test_bench_serves_a_gateway_and_compares_it_with_the_ceiling_and_another_server() -> None:
    null_app = f"{sys.executable} -m granian --interface asgi --port {{port}} trackgate.nullapp:app"
    run = bench("--serve", "--duration", "0.5", "--connections", "2", "--ceiling", "--compare", null_app)
    assert run.returncode == 0, run.stderr
    assert "null ASGI app (1 workers):" in run.stdout and "null RSGI app (1 workers):" in run.stdout
    assert "compare:" in run.stdout
    table = run.stdout[run.stdout.index("| endpoint") :].splitlines()
    assert table[0].split("|")[1:3] == [" endpoint ", " requests/s "] and "share" in table[0]
    rows = table[2:-1]
    assert [row.split("|")[1].strip() for row in rows] == [
        "gateway",
        "null ASGI app (1 workers)",
        "null RSGI app (1 workers)",
        "compare",
    ]
    assert rows[0].split("|")[6].strip() == "1.00"  # the gateway is its own base
    assert all(row.split("|")[7].strip().endswith("%") for row in rows)  # each server's CPU was read
    # Both ceilings, named: the (ASGI) and the front server's own (RSGI).
    assert re.fullmatch(
        r"gateway share: \d+\.\d\d of the null ASGI app \(the issue's ceiling\), "
        r"\d+\.\d\d of the null RSGI app \(granian's own ceiling, .*\)",
        table[-1],
    ), table[-1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--url", "ftp://127.0.0.1:1"], "only plain http:// is supported"),
        (
            ["--url", "http://127.0.0.1:{free}"],
            "cannot connect to http://127.0.0.1:{free}/v1/traces: Connection refused",
        ),
        (["--track", "otlp,smtp"], "unknown track 'smtp'"),
        (["--track", "grpc", "--signal", "events"], "HTTP only"),
        (["--track", "forward", "--ceiling"], "--ceiling compares HTTP tracks only"),
        (["--connections", "1", "--track", "otlp,fluent"], "1 connections cannot carry 2 tracks"),
        (["--config", "trackgate.toml"], "--config applies to --serve only"),
    ],
)
def test_bench_refuses_what_it_cannot_run(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    free = str(free_port())
    argv = [a.replace("{free}", free) for a in argv]
    assert main(["bench", "--no-progress", "--duration", "0.2", *argv]) == 2
    assert message.replace("{free}", free) in capsys.readouterr().err


LISTEN = """
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
print("up", flush=True)
time.sleep(60)
"""


def test_server_pid_is_found_by_its_port_unless_unrelated_servers_share_it() -> None:
    from trackgate import procstat

    port = free_port()
    servers: list[subprocess.Popen[str]] = []
    try:
        for _ in range(2):
            servers.append(
                subprocess.Popen([sys.executable, "-c", LISTEN, str(port)], stdout=subprocess.PIPE, text=True)
            )
            assert servers[-1].stdout is not None and servers[-1].stdout.readline() == "up\n"
            if len(servers) == 1:
                assert procstat.listener_pid(port) == servers[0].pid
        # Two servers sharing the port whose parent is this test, not a supervisor: no guess.
        assert procstat.listener_pid(port) is None
        usage = procstat.usage(servers[0].pid)
        assert usage is not None and usage.processes == 1 and usage.rss_bytes > 0
    finally:
        for server in servers:
            server.kill()
            server.wait()
    assert procstat.listener_pid(port) is None
    assert procstat.usage(servers[0].pid) is None
