"""A stand-in NVML: pynvml's functions patched to answer for scripted GPUs, with no driver needed."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest


@dataclass
class FakeGpu:
    uuid: str
    name: str = "NVIDIA H200"
    util_gpu: int = 50
    util_mem: int = 20
    mem_used: int = 4 * 2**30
    mem_total: int = 141 * 2**30
    temperature: int = 61
    power_mw: int = 250_000
    power_limit_mw: int = 700_000
    sm_clock: int = 1980
    mem_clock: int = 2619
    fan: int | None = 35  # None: the card has no fan (NotSupported)
    ecc: tuple[int, int] | None = (3, 0)  # corrected, uncorrected; None: ECC off (NotSupported)
    reasons: int = 0x1 | 0x4  # gpu_idle + sw_power_cap
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    error: int | None = None  # an NVML error code every call on this card raises (Xid, lost)


def _nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


class FakeNvml:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, gpus: list[FakeGpu], init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.calls: dict[str, int] = {}
        functions = {
            "nvmlInit": self.init,
            "nvmlShutdown": lambda: None,
            "nvmlSystemGetDriverVersion": lambda: "570.86.15",
            "nvmlDeviceGetCount": lambda: len(self.gpus),
            "nvmlDeviceGetHandleByIndex": self.handle,
            "nvmlDeviceGetUUID": lambda h: self._gpu(h, "uuid").uuid,
            "nvmlDeviceGetName": lambda h: self._gpu(h, "name").name,
            "nvmlDeviceGetUtilizationRates": lambda h: SimpleNamespace(
                gpu=self._gpu(h, "util").util_gpu, memory=self._gpu(h, "util").util_mem
            ),
            "nvmlDeviceGetMemoryInfo": self.memory,
            "nvmlDeviceGetTemperature": lambda h, sensor: self._gpu(h, "temp").temperature,
            "nvmlDeviceGetPowerUsage": lambda h: self._gpu(h, "power").power_mw,
            "nvmlDeviceGetEnforcedPowerLimit": lambda h: self._gpu(h, "limit").power_limit_mw,
            "nvmlDeviceGetClockInfo": lambda h, clock: (
                self._gpu(h, "clock").sm_clock if clock == pynvml.NVML_CLOCK_SM else self._gpu(h, "clock").mem_clock
            ),
            "nvmlDeviceGetFanSpeed": self.fan,
            "nvmlDeviceGetTotalEccErrors": self.ecc,
            "nvmlDeviceGetCurrentClocksEventReasons": lambda h: self._gpu(h, "reasons").reasons,
            "nvmlDeviceGetComputeRunningProcesses": lambda h: [
                SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self._gpu(h, "procs").processes
            ],
        }
        for name, fn in functions.items():
            monkeypatch.setattr(pynvml, name, fn)

    def init(self) -> None:
        if self.init_error is not None:
            raise _nvml_error(self.init_error)

    def handle(self, index: int) -> Any:
        if index >= len(self.gpus):
            raise _nvml_error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index]
        if gpu.error is not None:
            raise _nvml_error(gpu.error)
        return ("handle", index)

    def _gpu(self, handle: Any, what: str) -> FakeGpu:
        self.calls[what] = self.calls.get(what, 0) + 1
        gpu = self.gpus[handle[1]]
        if gpu.error is not None:
            raise _nvml_error(gpu.error)
        return gpu

    def memory(self, h: Any) -> Any:
        g = self._gpu(h, "memory")
        return SimpleNamespace(used=g.mem_used, free=g.mem_total - g.mem_used, total=g.mem_total)

    def fan(self, h: Any) -> int:
        g = self._gpu(h, "fan")
        if g.fan is None:
            raise _nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return g.fan

    def ecc(self, h: Any, kind: int, counter: int) -> int:
        g = self._gpu(h, "ecc")
        if g.ecc is None:
            raise _nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return g.ecc[kind]
