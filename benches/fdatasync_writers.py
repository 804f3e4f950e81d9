"""How many fdatasyncs the disk does when several writers sync at once: each of WRITERS processes
appends BYTES to its own file and fdatasyncs, in a loop, for SECONDS; per writer the count and
the latency (p50, p90, mean), then the total per second. With one writer per gateway worker
already syncing, this says whether more fsyncs in flight would shorten the wait.

    .venv/bin/python benches/fdatasync_writers.py [--dir DIR] [--writers 1 2 4] [--bytes 25000] [--seconds 3]

DIR defaults to a temp dir under the current directory (the disk the queue would use)."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path


def writer(path: str, size: int, seconds: float, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    data, offset, took = os.urandom(size), 0, []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        os.pwrite(fd, data, offset)
        offset += size
        began = time.perf_counter()
        os.fdatasync(fd)
        took.append(time.perf_counter() - began)
    os.close(fd)
    os.unlink(path)
    out.put(sorted(took))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", default=None)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--bytes", type=int, default=25_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir or Path.cwd()) as tmp:
        for n in args.writers:
            out: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
            procs = [
                multiprocessing.Process(target=writer, args=(f"{tmp}/w{i}", args.bytes, args.seconds, out))
                for i in range(n)
            ]
            for p in procs:
                p.start()
            results = [out.get() for _ in procs]
            for p in procs:
                p.join()
            total = sum(len(r) for r in results)
            for took in results:
                ms = [t * 1000 for t in took]
                print(
                    f"{n} writer(s): {len(ms)} fdatasyncs, p50 {ms[len(ms) // 2]:.3f} ms, "
                    f"p90 {ms[int(len(ms) * 0.9)]:.3f} ms, mean {sum(ms) / len(ms):.3f} ms"
                )
            print(f"{n} writer(s): {total / args.seconds:.0f} fdatasyncs per second in all")


if __name__ == "__main__":
    main()
