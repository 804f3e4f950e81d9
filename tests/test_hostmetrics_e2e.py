"""End to end: the gateway with [hostmetrics] enabled delivers host metrics to the OTLP stand-in."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Gateway, dash0_config
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
    # No NVIDIA driver here: said once, whatever the number of passes.
    assert log.count("no NVIDIA GPU metrics") <= 1
    assert "Traceback" not in log


def test_gateway_with_workers_reports_the_host_from_one_process(
    gateway_factory: type[Gateway], upstream: Upstream
) -> None:
    gw = gateway_factory(dash0_config(upstream) + HOSTMETRICS, workers=2)
    assert upstream.wait_for(lambda u: host_samples(u) >= 3), gw.log()
    assert gw.log().count("host metrics reporting from this process") == 1, gw.log()
