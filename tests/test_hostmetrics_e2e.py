"""End to end: the gateway with [hostmetrics] enabled, and `trackgate agent` pointed at a gateway
(and at a target that is down at first), deliver host metrics to the OTLP stand-in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import Gateway, dash0_config, free_port
from upstream import Upstream

pytestmark = pytest.mark.slow

# name -> (unit, data field, monotonic for sums)
EXPECTED = {
    "system.cpu.utilization": ("1", "gauge", None),
    "system.cpu.time": ("s", "sum", True),
    "system.memory.usage": ("By", "sum", False),
    "system.memory.limit": ("By", "sum", False),
    "system.paging.usage": ("By", "sum", False),
    "system.filesystem.usage": ("By", "sum", False),
    "system.process.count": ("{process}", "sum", False),
    "system.cpu.load_average.1m": ("{thread}", "gauge", None),
}


def resources(upstream: Upstream) -> list[dict[str, str]]:
    return [
        {kv.key: kv.value.string_value for kv in rm.resource.attributes}
        for r in upstream.delivered("/v1/metrics")
        for rm in r.message.resource_metrics  # type: ignore[union-attr]
    ]


def host_samples(upstream: Upstream) -> int:
    return sum(1 for r in resources(upstream) if "host.name" in r)


def check_metrics(upstream: Upstream) -> None:
    metrics: dict[str, Any] = {m.name: m for m in upstream.metrics()}
    for name, (unit, field, monotonic) in EXPECTED.items():
        assert name in metrics, f"{name} missing; got {sorted(metrics)}"
        m = metrics[name]
        assert m.unit == unit, name
        assert m.WhichOneof("data") == field, name
        if field == "sum":
            assert m.sum.is_monotonic is monotonic and m.sum.aggregation_temporality == 2, name
    modes = {
        kv.value.string_value
        for p in metrics["system.cpu.utilization"].gauge.data_points
        for kv in p.attributes
        if kv.key == "cpu.mode"
    }
    assert {"user", "system", "idle"} <= modes
    states = {
        kv.value.string_value
        for p in metrics["system.memory.usage"].sum.data_points
        for kv in p.attributes
        if kv.key == "system.memory.state"
    }
    assert {"used", "free"} <= states


HOSTMETRICS = """
[hostmetrics]
enabled = true
interval = "0.3s"
gpu = "auto"
"""


def test_gateway_hostmetrics_reach_the_exporter(gateway_factory: type[Gateway], upstream: Upstream) -> None:
    gw = gateway_factory(dash0_config(upstream) + HOSTMETRICS, env={"MACHINE_ID": "m-1", "WORKER_ID": "w-7"})
    assert upstream.wait_for(lambda u: host_samples(u) >= 2), gw.log()
    check_metrics(upstream)
    res = next(r for r in resources(upstream) if "host.name" in r)
    assert res["machine.id"] == "m-1" and res["worker.id"] == "w-7" and res["service.name"] == "trackgate"
    log = gw.log()
    # Without an NVIDIA driver: said once, whatever the number of passes.
    assert log.count("no NVIDIA GPU metrics") == 1 or "NVIDIA GPU metrics enabled" in log, log
    assert "Traceback" not in log


def test_gateway_with_workers_reports_the_host_from_one_process(
    gateway_factory: type[Gateway], upstream: Upstream
) -> None:
    gw = gateway_factory(dash0_config(upstream) + HOSTMETRICS, workers=2)
    assert upstream.wait_for(lambda u: host_samples(u) >= 3), gw.log()
    assert gw.log().count("host metrics reporting from this process") == 1, gw.log()


def agent(to: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACKGATE_"))}
    full_env.update(env or {}, NO_PROXY="*")
    return subprocess.Popen(
        [sys.executable, "-m", "trackgate", "agent", "--to", to, *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env,
    )  # fmt: skip


def test_agent_into_a_gateway_with_a_token(gateway_factory: type[Gateway], upstream: Upstream) -> None:
    gw = gateway_factory(dash0_config(upstream) + '[server]\ntokens = ["agent-secret"]\n')
    proc = agent(gw.url, "--token", "agent-secret", "--interval", "0.2", "--gpu", "auto", "--samples", "3",
                 env={"MACHINE_ID": "gpu-box-1", "WORKER_ID": "comfy-3"})  # fmt: skip
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()
    assert b"3 samples, 3 sent" in out, out.decode()
    assert upstream.wait_for(lambda u: host_samples(u) >= 3), gw.log()
    check_metrics(upstream)
    res = next(r for r in resources(upstream) if "host.name" in r)
    assert res["machine.id"] == "gpu-box-1" and res["worker.id"] == "comfy-3"
    assert res["service.name"] == "trackgate-agent"


def test_agent_sends_its_headers(upstream: Upstream) -> None:
    proc = agent(upstream.url, "--header", "Dash0-Dataset=fleet", "--interval", "0.2", "--gpu", "off", "--samples", "1",
                 env={"OTEL_EXPORTER_OTLP_HEADERS": "x-from-env=1"})  # fmt: skip
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"1 sent" in out, out.decode()
    [got] = upstream.delivered("/v1/metrics")
    assert got.headers["dash0-dataset"] == "fleet" and got.headers["x-from-env"] == "1"
    assert got.headers["content-encoding"] == "gzip" and got.headers["content-type"] == "application/x-protobuf"


def test_agent_without_token_is_refused_and_says_so(gateway_factory: type[Gateway], upstream: Upstream) -> None:
    gw = gateway_factory(dash0_config(upstream) + '[server]\ntokens = ["agent-secret"]\n')
    proc = agent(gw.url, "--interval", "0.2", "--gpu", "off", "--samples", "1")
    out, _ = proc.communicate(timeout=60)
    assert b"refused" in out and b"0 sent" in out, out.decode()


def test_agent_buffers_while_the_target_is_down_then_delivers(tmp_path: Path) -> None:
    port = free_port()
    proc = agent(f"http://127.0.0.1:{port}", "--interval", "0.2", "--gpu", "off", "--buffer", "4")
    up: Upstream | None = None
    try:
        assert proc.stdout is not None
        seen = b""
        while b"buffer full" not in seen:  # wait until samples were dropped from the full buffer
            line = proc.stdout.readline()
            assert line, seen.decode()
            seen += line
        up = Upstream(port)
        assert up.wait_for(lambda u: len(u.delivered("/v1/metrics")) >= 6, timeout=30)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        if up is not None:
            up.close()
    log = seen + out
    assert log.count(b"unreachable") == 1, log.decode()
    assert log.count(b"agent buffer full") == 1, log.decode()
    assert b"0 dropped (buffer full)" not in log, log.decode()
    assert b"answers again" in log, log.decode()
