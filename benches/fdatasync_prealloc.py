"""fdatasync latency of a queue-like append: into a file that grows (the old segments) against into a
preallocated, zero-filled and synced file (the segments with `preallocate`), interleaved.

    .venv/bin/python benches/fdatasync_prealloc.py [--dir DIR] [--writes 400] [--bytes 7600]

DIR defaults to a temp dir under the current directory (the disk the queue would use)."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path.cwd())
    parser.add_argument("--writes", type=int, default=400)
    parser.add_argument("--bytes", type=int, default=7600, help="bytes per append (one 100-record request)")
    args = parser.parse_args()
    block = os.urandom(args.bytes)
    size = args.writes * args.bytes + (1 << 20)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        grow = os.open(Path(tmp) / "grow", os.O_RDWR | os.O_CREAT)
        pre = os.open(Path(tmp) / "pre", os.O_RDWR | os.O_CREAT)
        zeros = bytes(1 << 20)
        for at in range(0, size, len(zeros)):
            os.pwrite(pre, zeros, at)
        os.fdatasync(pre)
        os.fsync(os.open(tmp, os.O_RDONLY))
        times: dict[str, list[float]] = {"grow": [], "preallocated": []}
        for i in range(args.writes):
            for name, fd in (("grow", grow), ("preallocated", pre)):
                os.pwrite(fd, block, i * args.bytes)
                start = time.perf_counter()
                os.fdatasync(fd)
                times[name].append((time.perf_counter() - start) * 1000)
        for name, ms in times.items():
            print(
                f"{name:>12}: p50 {statistics.median(ms):.2f} ms  p90 {percentile(ms, 90):.2f} ms"
                f"  p99 {percentile(ms, 99):.2f} ms  ({len(ms)} fdatasyncs)"
            )


if __name__ == "__main__":
    main()
