"""Host metrics through psutil: CPU, load, memory and swap, disks, filesystems, network, processes.

Names, units and attributes follow the OpenTelemetry system semantic conventions
(https://opentelemetry.io/docs/specs/semconv/system/system-metrics/); the load average follows
the OpenTelemetry Collector's hostmetrics receiver, which the conventions do not cover.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import psutil

from trackgate.hostmetrics.otlp import Metric

log = logging.getLogger("trackgate.hostmetrics")

# psutil's cpu_times fields -> cpu.mode. irq and softirq are both "interrupt"; guest time is
# already inside user time on Linux, so it is not counted twice.
CPU_MODES = {
    "user": "user",
    "nice": "nice",
    "system": "system",
    "idle": "idle",
    "iowait": "iowait",
    "irq": "interrupt",
    "softirq": "interrupt",
    "steal": "steal",
    "interrupt": "interrupt",  # Windows
    "dpc": "interrupt",  # Windows
}
# Devices that are not disks a user cares about (snap images, RAM disks, device-mapper aliases).
SKIP_DISKS = ("loop", "ram", "zram")
# Pseudo filesystems psutil.disk_partitions(all=False) still reports in some containers.
SKIP_FSTYPES = frozenset({"squashfs", "tmpfs", "devtmpfs", "proc", "sysfs", "nsfs", "autofs"})


class HostCollector:
    """One `collect()` per interval; counters are cumulative since boot, CPU utilization is over
    the time since the previous pass (the first pass: since boot)."""

    def __init__(self) -> None:
        self._last_cpu: dict[str, float] = {}
        self._last_util: dict[str, float] = {}
        self._failed: set[str] = set()  # sections that failed, each logged once until it works again

    def collect(self) -> list[Metric]:
        out: list[Metric] = []
        sections: list[tuple[str, Callable[[], list[Metric]]]] = [
            ("cpu", self._cpu),
            ("load", self._load),
            ("memory", self._memory),
            ("disk", self._disk),
            ("filesystem", self._filesystem),
            ("network", self._network),
            ("process", self._processes),
        ]
        for name, section in sections:
            try:
                out.extend(section())
            except Exception as exc:
                if name not in self._failed:
                    self._failed.add(name)
                    log.warning(
                        "host metrics section failed; skipped until it works again",
                        extra={"section": name, "error": f"{type(exc).__name__}: {exc}"},
                    )
                continue
            if name in self._failed:
                self._failed.discard(name)
                log.info("host metrics section works again", extra={"section": name})
        return out

    def _cpu(self) -> list[Metric]:
        times: dict[str, float] = {}
        for key, value in psutil.cpu_times()._asdict().items():
            mode = CPU_MODES.get(key)
            if mode is not None:
                times[mode] = times.get(mode, 0.0) + value
        time_m = Metric("system.cpu.time", "s", "counter", "Seconds the CPUs spent in each mode, summed over CPUs.")
        for mode, value in times.items():
            time_m.add(value, (("cpu.mode", mode),))
        deltas = {mode: max(0.0, value - self._last_cpu.get(mode, 0.0)) for mode, value in times.items()}
        total = sum(deltas.values())
        if total > 0:
            self._last_cpu = times
            self._last_util = {mode: delta / total for mode, delta in deltas.items()}
        # else: passes closer together than the kernel's tick; the previous figures stand and the
        # next pass measures over the longer window.
        util = Metric("system.cpu.utilization", "1", "gauge", "Fraction of CPU time in each mode since the last pass.")
        for mode, fraction in self._last_util.items():
            util.add(fraction, (("cpu.mode", mode),))
        count = Metric("system.cpu.logical.count", "{cpu}", "updown", "Logical CPUs.")
        count.add(psutil.cpu_count() or 0)
        return [util, time_m, count]

    def _load(self) -> list[Metric]:
        if not hasattr(os, "getloadavg"):
            return []
        one, five, fifteen = os.getloadavg()
        out = []
        for name, value in (("1m", one), ("5m", five), ("15m", fifteen)):
            m = Metric(f"system.cpu.load_average.{name}", "{thread}", "gauge", f"Load average over {name}.")
            m.add(value)
            out.append(m)
        return out

    def _memory(self) -> list[Metric]:
        vm = psutil.virtual_memory()
        usage = Metric("system.memory.usage", "By", "updown", "Memory in use, by state.")
        for state in ("used", "free", "buffers", "cached"):
            value = getattr(vm, state, None)
            if value is not None:
                usage.add(int(value), (("system.memory.state", state),))
        limit = Metric("system.memory.limit", "By", "updown", "Total memory.")
        limit.add(int(vm.total))
        util = Metric("system.memory.utilization", "1", "gauge", "Fraction of memory in use, by state.")
        if vm.total:
            util.add(vm.used / vm.total, (("system.memory.state", "used"),))
        available = Metric("system.memory.available", "By", "updown", "Memory available to start new programs.")
        available.add(int(vm.available))
        swap = psutil.swap_memory()
        paging = Metric("system.paging.usage", "By", "updown", "Swap space in use, by state.")
        paging.add(int(swap.used), (("system.paging.state", "used"),))
        paging.add(int(swap.free), (("system.paging.state", "free"),))
        paging_util = Metric("system.paging.utilization", "1", "gauge", "Fraction of swap space in use.")
        if swap.total:
            paging_util.add(swap.used / swap.total, (("system.paging.state", "used"),))
        return [usage, limit, util, available, paging, paging_util]

    def _disk(self) -> list[Metric]:
        counters: dict[str, Any] = psutil.disk_io_counters(perdisk=True) or {}
        io = Metric("system.disk.io", "By", "counter", "Disk bytes transferred.")
        ops = Metric("system.disk.operations", "{operation}", "counter", "Disk operations.")
        for device, c in sorted(counters.items()):
            if device.startswith(SKIP_DISKS):
                continue
            for direction, nbytes, count in (
                ("read", c.read_bytes, c.read_count),
                ("write", c.write_bytes, c.write_count),
            ):
                attrs = (("system.device", device), ("disk.io.direction", direction))
                io.add(int(nbytes), attrs)
                ops.add(int(count), attrs)
        return [io, ops]

    def _filesystem(self) -> list[Metric]:
        usage = Metric("system.filesystem.usage", "By", "updown", "Filesystem space, by state.")
        util = Metric("system.filesystem.utilization", "1", "gauge", "Fraction of filesystem space in use.")
        seen: set[str] = set()
        for part in psutil.disk_partitions(all=False):
            if part.mountpoint in seen or part.fstype in SKIP_FSTYPES or part.device.startswith("/dev/loop"):
                continue
            seen.add(part.mountpoint)
            try:
                du = psutil.disk_usage(part.mountpoint)
            except OSError:
                continue  # unreadable mount (permissions, a stale network share): not this pass
            base = (
                ("system.device", part.device),
                ("system.filesystem.mountpoint", part.mountpoint),
                ("system.filesystem.type", part.fstype),
            )
            reserved = max(0, du.total - du.used - du.free)
            for state, value in (("used", du.used), ("free", du.free), ("reserved", reserved)):
                usage.add(int(value), (*base, ("system.filesystem.state", state)))
            if du.total:
                util.add(du.used / du.total, base)
        return [usage, util]

    def _network(self) -> list[Metric]:
        counters = psutil.net_io_counters(pernic=True) or {}
        io = Metric("system.network.io", "By", "counter", "Network bytes transferred.")
        packets = Metric("system.network.packet.count", "{packet}", "counter", "Network packets transferred.")
        errors = Metric("system.network.errors", "{error}", "counter", "Network errors.")
        dropped = Metric("system.network.packet.dropped", "{packet}", "counter", "Network packets dropped.")
        for nic, c in sorted(counters.items()):
            if nic == "lo":
                continue
            for direction, nbytes, npackets, nerrors, ndropped in (
                ("transmit", c.bytes_sent, c.packets_sent, c.errout, c.dropout),
                ("receive", c.bytes_recv, c.packets_recv, c.errin, c.dropin),
            ):
                attrs = (("network.interface.name", nic), ("network.io.direction", direction))
                io.add(int(nbytes), attrs)
                packets.add(int(npackets), attrs)
                errors.add(int(nerrors), attrs)
                dropped.add(int(ndropped), attrs)
        return [io, packets, errors, dropped]

    def _processes(self) -> list[Metric]:
        count = Metric("system.process.count", "{process}", "updown", "Processes on the host.")
        count.add(len(psutil.pids()))
        return [count]
