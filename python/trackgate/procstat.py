"""CPU time and memory of a server and its worker processes, read from /proc (Linux only).

`trackgate bench` reports the gateway's CPU and RSS: given a pid, or found as the processes that
hold the listening socket of the port under load (granian's main process and its workers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            kids.setdefault(int(fields[1]), []).append(int(entry.name))
    return kids


def tree(pid: int) -> list[int]:
    """`pid` and every process below it."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            # local_address is HEX_IP:HEX_PORT; state 0A is LISTEN.
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    return inodes


def listener_pid(port: int) -> int | None:
    """The topmost process holding a socket listening on `port` (readable ones only), if any."""
    inodes = {f"socket:[{i}]" for i in _listening_inodes(port)}
    if not inodes:
        return None
    holders = set()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    holders.add(int(entry.name))
                    break
            except OSError:
                continue
    parents = {}
    for pid in holders:
        if fields := _stat(pid):
            parents[pid] = int(fields[1])
    roots = [pid for pid, parent in parents.items() if parent not in holders]
    # Worker processes bind the port (SO_REUSEPORT), their supervisor (granian's main process)
    # need not: a worker's parent running the same program stands for it.
    tops = set()
    for pid in roots:
        parent = parents[pid]
        same = parent not in (0, 1, os.getpid()) and _exe(parent) == _exe(pid) is not None
        tops.add(parent if same else pid)
    # Unrelated servers sharing the port through SO_REUSEPORT: which one is meant is unknown.
    return tops.pop() if len(tops) == 1 else None


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(PROC / str(pid) / "exe")
    except OSError:
        return None


@dataclass
class Usage:
    processes: int
    cpu_s: float  # user + system time of the processes alive now
    rss_bytes: int


def usage(pid: int) -> Usage | None:
    """CPU seconds and resident memory of `pid` and its descendants; None once it is gone."""
    pids = tree(pid)
    cpu = 0.0
    rss = 0
    seen = 0
    for p in pids:
        fields = _stat(p)
        if fields is None:
            continue
        seen += 1
        cpu += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
        try:
            for line in (PROC / str(p) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return Usage(seen, cpu, rss) if seen else None
