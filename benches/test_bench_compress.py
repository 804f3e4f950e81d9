"""Exporter compression: gzip of realistic OTLP batches by backend and level (issue 11).

Rows, all in one run: `_core.gzip` (flate2 on zlib-rs, what the exporters use), the previous
backend (miniz_oxide, kept only as `_core._deflate_miniz` for this comparison: raw deflate, so
it skips the gzip header and CRC the new rows pay for) and CPython's C zlib as a reference.
Each row records in `extra_info` the compression ratio, MB/s of input and CPU ms per MB of input
(thread CPU time over a fixed number of runs, so other processes' load does not count).
Run with `make bench PYTEST_ARGS="-k compress"`; figures go to benches/RESULTS.md.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable

import pytest

from test_bench_core import make_logs_with_attributes, make_traces
from trackgate import _core

LEVELS = (1, 3, 6, 9)
CPU_RUNS = 20

Compress = Callable[[bytes, int], bytes]


def _stdlib_gzip(data: bytes, level: int) -> bytes:
    # wbits 31: a gzip member, as `_core.gzip` writes.
    c = zlib.compressobj(level, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


BACKENDS: dict[str, Compress] = {
    "zlib-rs": lambda data, level: _core.gzip(data, level),
    "miniz": lambda data, level: _core._deflate_miniz(data, level),
    "c-zlib": _stdlib_gzip,
}


@pytest.fixture(scope="module")
def batches() -> dict[str, bytes]:
    return {"traces-2000": make_traces(), "logs-2000": make_logs_with_attributes()}


def _cpu_ms_per_mb(fn: Compress, data: bytes, level: int) -> float:
    start = time.thread_time()
    for _ in range(CPU_RUNS):
        fn(data, level)
    spent = time.thread_time() - start
    return spent * 1000 / (CPU_RUNS * len(data) / 1e6)


@pytest.mark.parametrize("payload", ["traces-2000", "logs-2000"])
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("backend", list(BACKENDS))
def test_gzip_level(benchmark, batches: dict[str, bytes], payload: str, level: int, backend: str) -> None:
    benchmark.group = f"compress-{payload}"
    data = batches[payload]
    fn = BACKENDS[backend]
    out = fn(data, level)
    if backend != "miniz":
        assert zlib.decompress(out, 31) == data
    else:
        assert zlib.decompress(out, -15) == data
    benchmark.extra_info["ratio"] = round(len(data) / len(out), 2)
    benchmark.extra_info["compressed_bytes"] = len(out)
    benchmark.extra_info["cpu_ms_per_mb"] = round(_cpu_ms_per_mb(fn, data, level), 2)
    benchmark(fn, data, level)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["mb_per_s"] = round(len(data) / 1e6 / benchmark.stats.stats.median, 1)
