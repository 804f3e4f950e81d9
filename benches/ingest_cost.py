"""CPU per record of `Core.ingest` alone (memory queue, drained between rounds), on the bodies
`trackgate bench` posts: 1,000 spans gzipped (level 6) and plain, 100 log records.

    .venv/bin/python benches/ingest_cost.py [TAG]
    .venv/bin/python benches/ingest_cost.py --levels


The figure is the calling thread's CPU time (`time.thread_time`: the core runs on it with the
GIL released), best of 7 rounds, so other processes on a shared machine move it less than wall
time. To compare with another build, run it again with that build first on `PYTHONPATH`
(a wheel unpacked in a directory), alternating. `--levels`: the exporters' gzip (`_core.gzip`) at
levels 1, 2, 3 and 6 on eight 1,000-span bodies, eighty 100-record logs bodies and eight
1,000-point metrics bodies back to back (what an exporter batch of them is): ratio and CPU ms
per MiB, best of 5.
"""

from __future__ import annotations

import sys
import time

from trackgate import _core
from trackgate.loadgen import request_body

ROUNDS = 7


def per_record_ns(signal: str, body: bytes, encoding: str | None, records: int, calls: int) -> float:
    core = _core.Core(exporters=["bench"], batch_max_delay_ms=0, queue_max_bytes=1 << 34)
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.thread_time()
        for _ in range(calls):
            core.ingest(signal, body, "protobuf", encoding)  # type: ignore[arg-type]
        best = min(best, time.thread_time() - started)
        while (batch := core.next_batch("bench", signal, 0.0, True)) is not None:  # type: ignore[arg-type]
            core.ack(batch)
    return best / calls / records * 1e9


def levels() -> None:
    batches = {
        "1,000 spans x8": request_body("traces", 1000) * 8,
        "100 log records x80": request_body("logs", 100) * 80,
        "1,000 data points x8": request_body("metrics", 1000) * 8,
    }
    for name, body in batches.items():
        for level in (1, 2, 3, 6):
            best = float("inf")
            for _ in range(5):
                started = time.thread_time()
                for _ in range(5):
                    out = _core.gzip(body, level)
                best = min(best, (time.thread_time() - started) / 5)
            ms_per_mib = best * 1e3 / (len(body) / (1 << 20))
            print(f"{name} ({len(body):,} B)\tlevel {level}\tratio {len(body) / len(out):.2f}\t{ms_per_mib:.2f} ms/MiB")


def main() -> None:
    if sys.argv[1:] == ["--levels"]:
        levels()
        return
    tag = sys.argv[1] if len(sys.argv) > 1 else "this build"
    traces = request_body("traces", 1000)
    cases = [
        ("1,000 spans, gzip", "traces", _core.gzip(traces, 6), "gzip", 1000, 40),
        ("1,000 spans, plain", "traces", traces, None, 1000, 40),
        ("100 log records, plain", "logs", request_body("logs", 100), None, 100, 400),
    ]
    for name, signal, body, encoding, records, calls in cases:
        ns = per_record_ns(signal, body, encoding, records, calls)
        print(f"{tag}\t{name} ({len(body):,} B)\t{ns:.0f} ns/record", flush=True)


if __name__ == "__main__":
    main()
