"""fdatasync of a 7,600-byte write: wall time and the whole machine's CPU (/proc/stat) per call,
into a file that grows, one preallocated with zeros (written and synced) and one
`posix_fallocate`d, twice each, in a temp dir under the current directory (the queue's disk).

    .venv/bin/python benches/fdatasync_cpu.py [CALLS]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

WRITE = 7600


def busy_jiffies() -> int:
    """The machine's non-idle CPU time so far (user, nice, system, irq, softirq), in jiffies."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return fields[0] + fields[1] + fields[2] + fields[5] + fields[6]


def prepare(fd: int, kind: str, size: int) -> None:
    if kind == "preallocated":
        zeros = bytes(1 << 20)
        for at in range(0, size, len(zeros)):
            os.pwrite(fd, zeros, at)
        os.fdatasync(fd)
    elif kind == "fallocated":
        os.posix_fallocate(fd, 0, size)
        os.fsync(fd)


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    block = os.urandom(WRITE)
    hz = os.sysconf("SC_CLK_TCK")
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        for i, kind in enumerate(("grows", "preallocated", "fallocated") * 2):
            fd = os.open(Path(tmp) / f"{kind}-{i}", os.O_RDWR | os.O_CREAT)
            prepare(fd, kind, calls * WRITE + (1 << 20))
            cpu0, wall0 = busy_jiffies(), time.perf_counter()
            for n in range(calls):
                os.pwrite(fd, block, n * WRITE)
                os.fdatasync(fd)
            wall, cpu = time.perf_counter() - wall0, (busy_jiffies() - cpu0) / hz
            print(f"{kind:>12}: {wall / calls * 1e6:.0f} µs wall, {cpu / calls * 1e6:.0f} µs machine CPU per fdatasync")
            os.close(fd)


if __name__ == "__main__":
    main()
