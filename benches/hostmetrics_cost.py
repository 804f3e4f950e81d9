"""Costs of host metrics: one collection pass in-process, and the agent's RSS and CPU per sample.

    .venv/bin/python benches/hostmetrics_cost.py

One pass: CPU time of `Collector.request()` (psutil + GPUs through NVML + encoding), mean over
200 passes; also with 8 stand-in GPUs (pynvml patched, so it shows our side of the GPU cost, not
the driver's). Agent: `trackgate agent` against a local OTLP sink at 0.5 s, peak VmRSS, and CPU
per sample from the difference between a 1-sample and a 61-sample run (start-up excluded).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def pass_cost(n: int = 200) -> None:
    from trackgate.hostmetrics import Collector

    c = Collector("auto")
    c.request()
    start = time.process_time()
    for _ in range(n):
        body = c.request()
    cpu = (time.process_time() - start) / n
    points = sum(len(m.points) for m in c.collect())
    gpus = len(c.gpu.devices)
    print(f"one pass (GPUs seen: {gpus}): {cpu * 1e3:.2f} ms CPU, {points} points, {len(body)} B protobuf")


def pass_cost_fake_gpus(n: int = 200) -> None:
    import pynvml
    import pytest

    from fake_nvml import FakeGpu, FakeNvml
    from trackgate.hostmetrics import GpuCollector

    with pytest.MonkeyPatch.context() as mp:
        FakeNvml(mp, [FakeGpu(f"GPU-{i}", processes=[(1, 2**30)]) for i in range(8)])
        gpus = GpuCollector("auto", nvml=pynvml, process_names=False)
        start = time.process_time()
        for _ in range(n):
            gpus.collect()
        cpu = (time.process_time() - start) / n
    print(f"GPU part with 8 stand-in GPUs (our side only): {cpu * 1e3:.2f} ms CPU per pass")


def agent_run(samples: int, url: str) -> tuple[float, int]:
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/trackgate"), "agent", "--to", url, "--interval", "0.5", "--samples", str(samples)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rss_kb, cpu_s = 0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            rss_kb = max(rss_kb, *(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")))
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu_s = (int(fields[11]) + int(fields[12])) / tick
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    return cpu_s, rss_kb


def agent_cost() -> None:
    from upstream import Upstream

    up = Upstream()
    try:
        cpu1, _ = agent_run(1, up.url)
        cpu61, rss = agent_run(61, up.url)
    finally:
        up.close()
    per_sample_ms = (cpu61 - cpu1) / 60 * 1e3
    print(f"agent: peak RSS {rss / 1024:.1f} MiB, {per_sample_ms:.1f} ms CPU per sample, start-up {cpu1:.2f} s CPU")


if __name__ == "__main__":
    pass_cost()
    pass_cost_fake_gpus()
    agent_cost()
