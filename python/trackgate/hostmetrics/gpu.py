"""NVIDIA GPU metrics through NVML (the `pynvml` module of the `nvidia-ml-py` package).

Names follow the OpenTelemetry hardware GPU conventions (`hw.gpu.*`, status: development) where
they exist; the rest are chosen in the same namespace (see the README's metric table).

Failure handling, so one bad card or a host without a driver never costs more than a log line:
- no pynvml, no driver, `nvmlInit` failing: one log line at start, then no GPU metrics at all;
- a call a card does not support (`NVMLError_NotSupported`, `NoPermission`): that call is
  remembered and not made again for that card;
- any other error (Xid, GPU lost, reset): the card is reported once as failing and skipped; each
  pass asks it one cheap question, and when it answers it is reported once as back.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

from trackgate.hostmetrics.otlp import Attrs, Metric

log = logging.getLogger("trackgate.hostmetrics")

GpuMode = Literal["auto"] | bool

# NVML constants (stable in the C ABI), so the code does not depend on pynvml's naming of them.
TEMPERATURE_GPU = 0
CLOCK_SM = 1
CLOCK_MEM = 2
ECC_CORRECTED = 0
ECC_UNCORRECTED = 1
VOLATILE_ECC = 0  # since the driver loaded
# nvmlClocksEventReason* / nvmlClocksThrottleReason* bits.
THROTTLE_REASONS = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)
# Errors that mean "this card cannot answer this call", not "this card is in trouble".
_UNSUPPORTED = ("NVMLError_NotSupported", "NVMLError_NoPermission", "NVMLError_FunctionNotFound")


@dataclass
class Device:
    index: int
    handle: Any
    uuid: str
    name: str
    attrs: Attrs = ()
    unsupported: set[str] = field(default_factory=set)
    failing: bool = False


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _load_nvml() -> ModuleType:
    import pynvml

    module: ModuleType = pynvml
    return module


class GpuCollector:
    """Every NVIDIA GPU NVML sees; `available` is False when NVML could not start (logged once)."""

    def __init__(self, mode: GpuMode = "auto", nvml: ModuleType | None = None, process_names: bool = True) -> None:
        self.mode = mode
        self.devices: list[Device] = []
        self.available = False
        self.process_names = process_names
        self.nvml: Any = None
        if mode is False:
            return
        level = logging.WARNING if mode is True else logging.INFO
        try:
            self.nvml = nvml if nvml is not None else _load_nvml()
            self.nvml.nvmlInit()
        except Exception as exc:
            # ImportError, NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...: one line, no more.
            log.log(
                level, "no NVIDIA GPU metrics: NVML is not available", extra={"error": f"{type(exc).__name__}: {exc}"}
            )
            self.nvml = None
            return
        try:
            count = int(self.nvml.nvmlDeviceGetCount())
            for index in range(count):
                device = self._open(index)
                if device is not None:
                    self.devices.append(device)
        except Exception as exc:
            log.log(
                level, "no NVIDIA GPU metrics: GPUs cannot be listed", extra={"error": f"{type(exc).__name__}: {exc}"}
            )
            self.devices = []
            return
        self.available = True
        driver = self._maybe(self.nvml.nvmlSystemGetDriverVersion)
        log.info(
            "NVIDIA GPU metrics enabled",
            extra={"gpus": [d.name for d in self.devices], "driver": _text(driver) if driver is not None else None},
        )

    @staticmethod
    def _maybe(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception:
            return None

    def _open(self, index: int) -> Device | None:
        try:
            handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(self.nvml.nvmlDeviceGetUUID(handle))
            name = _text(self.nvml.nvmlDeviceGetName(handle))
        except Exception as exc:
            log.warning(
                "GPU cannot be opened; skipped until it recovers",
                extra={"gpu.index": index, "error": f"{type(exc).__name__}: {exc}"},
            )
            return Device(index, None, "", "", failing=True)
        attrs: Attrs = (
            ("hw.id", uuid),
            ("hw.type", "gpu"),
            ("gpu.index", index),
            ("gpu.uuid", uuid),
            ("gpu.name", name),
        )
        return Device(index, handle, uuid, name, attrs)

    def close(self) -> None:
        if self.nvml is not None:
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()
            self.nvml = None

    # -- one pass -----------------------------------------------------------------------------

    def collect(self) -> list[Metric]:
        if not self.available or not self.devices:
            return []
        m = _Metrics()
        for i, device in enumerate(self.devices):
            if device.failing:
                revived = self._revive(device)
                if revived is None:
                    continue
                device = self.devices[i] = revived
            try:
                self._collect_device(device, m)
            except _DeviceFailed as exc:
                device.failing = True
                log.warning(
                    "GPU stopped answering; skipped until it recovers",
                    extra={"gpu.index": device.index, "gpu.uuid": device.uuid, "error": str(exc)},
                )
        return m.all()

    def _revive(self, device: Device) -> Device | None:
        """One cheap question to a failing card: its handle and UUID again. Logged once when it answers."""
        try:
            handle = self.nvml.nvmlDeviceGetHandleByIndex(device.index)
            self.nvml.nvmlDeviceGetUUID(handle)
        except Exception:
            return None
        fresh = self._open(device.index)
        if fresh is None or fresh.failing:
            return None
        log.info("GPU answers again", extra={"gpu.index": fresh.index, "gpu.uuid": fresh.uuid})
        return fresh

    def _call(self, device: Device, key: str, fn: Callable[..., Any], *args: Any) -> Any:
        """One NVML call for one card: None when the card does not support it (remembered, never
        asked again); _DeviceFailed for any other error."""
        if key in device.unsupported:
            return None
        try:
            return fn(device.handle, *args)
        except Exception as exc:
            if type(exc).__name__ in _UNSUPPORTED:
                device.unsupported.add(key)
                return None
            raise _DeviceFailed(f"{key}: {type(exc).__name__}: {exc}") from exc

    def _collect_device(self, d: Device, m: _Metrics) -> None:
        nv = self.nvml
        attrs = d.attrs
        # All of one card's calls together, in one place; each at most once per pass.
        util = self._call(d, "utilization", nv.nvmlDeviceGetUtilizationRates)
        mem = self._call(d, "memory", nv.nvmlDeviceGetMemoryInfo)
        temp = self._call(d, "temperature", nv.nvmlDeviceGetTemperature, TEMPERATURE_GPU)
        power = self._call(d, "power", nv.nvmlDeviceGetPowerUsage)
        power_limit = self._call(d, "power_limit", nv.nvmlDeviceGetEnforcedPowerLimit)
        sm_clock = self._call(d, "clock_sm", nv.nvmlDeviceGetClockInfo, CLOCK_SM)
        mem_clock = self._call(d, "clock_mem", nv.nvmlDeviceGetClockInfo, CLOCK_MEM)
        fan = self._call(d, "fan", nv.nvmlDeviceGetFanSpeed)
        ecc_c = self._call(d, "ecc", nv.nvmlDeviceGetTotalEccErrors, ECC_CORRECTED, VOLATILE_ECC)
        ecc_u = self._call(d, "ecc", nv.nvmlDeviceGetTotalEccErrors, ECC_UNCORRECTED, VOLATILE_ECC)
        reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        reasons = self._call(d, "throttle", reasons_fn) if reasons_fn is not None else None
        procs = self._call(d, "processes", nv.nvmlDeviceGetComputeRunningProcesses)

        if util is not None:
            m.utilization.add(util.gpu / 100.0, attrs)
            m.memory_controller.add(util.memory / 100.0, attrs)
        if mem is not None:
            m.memory_usage.add(int(mem.used), attrs)
            m.memory_free.add(int(mem.free), attrs)
            m.memory_limit.add(int(mem.total), attrs)
            if mem.total:
                m.memory_utilization.add(mem.used / mem.total, attrs)
        if temp is not None:
            m.temperature.add(float(temp), attrs)
        if power is not None:
            m.power.add(power / 1000.0, attrs)
        if power_limit is not None:
            m.power_limit.add(power_limit / 1000.0, attrs)
        if sm_clock is not None:
            m.clock_sm.add(int(sm_clock), attrs)
        if mem_clock is not None:
            m.clock_memory.add(int(mem_clock), attrs)
        if fan is not None:
            m.fan.add(fan / 100.0, attrs)
        if ecc_c is not None:
            m.errors.add(int(ecc_c), (*attrs, ("error.type", "ecc_corrected")))
        if ecc_u is not None:
            m.errors.add(int(ecc_u), (*attrs, ("error.type", "ecc_uncorrected")))
        if reasons is not None:
            for bit, reason in THROTTLE_REASONS:
                m.throttle.add(1 if int(reasons) & bit else 0, (*attrs, ("gpu.throttle.reason", reason)))
        for proc in procs or ():
            used = getattr(proc, "usedGpuMemory", None)
            if used is None:
                continue  # NVML gives no per-process figure here (e.g. without the right permissions)
            pattrs: Attrs = (*attrs, ("process.pid", int(proc.pid)))
            name = _process_name(int(proc.pid)) if self.process_names else None
            if name:
                pattrs = (*pattrs, ("process.executable.name", name))
            m.process_memory.add(int(used), pattrs)


class _DeviceFailed(Exception):
    pass


def _process_name(pid: int) -> str | None:
    try:
        import psutil

        return str(psutil.Process(pid).name())
    except Exception:
        return None  # another PID namespace, or gone already


class _Metrics:
    def __init__(self) -> None:
        self.utilization = Metric("hw.gpu.utilization", "1", "gauge", "Fraction of time the GPU ran kernels.")
        self.memory_controller = Metric(
            "hw.gpu.memory.controller.utilization", "1", "gauge", "Fraction of time GPU memory was read or written."
        )
        self.memory_utilization = Metric("hw.gpu.memory.utilization", "1", "gauge", "Fraction of GPU memory used.")
        self.memory_usage = Metric("hw.gpu.memory.usage", "By", "updown", "GPU memory used.")
        self.memory_free = Metric("hw.gpu.memory.free", "By", "updown", "GPU memory free.")
        self.memory_limit = Metric("hw.gpu.memory.limit", "By", "updown", "GPU memory size.")
        self.temperature = Metric("hw.gpu.temperature", "Cel", "gauge", "GPU die temperature.")
        self.power = Metric("hw.gpu.power.draw", "W", "gauge", "GPU power draw.")
        self.power_limit = Metric("hw.gpu.power.limit", "W", "gauge", "GPU enforced power limit.")
        self.clock_sm = Metric("hw.gpu.clock.sm", "MHz", "gauge", "GPU SM clock.")
        self.clock_memory = Metric("hw.gpu.clock.memory", "MHz", "gauge", "GPU memory clock.")
        self.fan = Metric("hw.gpu.fan_speed", "1", "gauge", "GPU fan speed, as a fraction of its maximum.")
        self.errors = Metric("hw.errors", "{error}", "counter", "GPU ECC errors since the driver loaded.")
        self.throttle = Metric(
            "hw.gpu.clock.throttle", "1", "gauge", "1 for each reason the GPU's clocks are held back now, else 0."
        )
        self.process_memory = Metric("hw.gpu.process.memory.usage", "By", "updown", "GPU memory used by a process.")

    def all(self) -> list[Metric]:
        return [v for v in vars(self).values() if isinstance(v, Metric)]
