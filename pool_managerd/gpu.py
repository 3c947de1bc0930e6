"""The host's GPUs as NVML reports them (memory, utilisation), for agent heartbeats.

NVML comes with the NVIDIA driver; where it is absent (no GPU, no driver) this reports
nothing rather than failing: an agent may run CPU engines.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pynvml  # PyPI nvidia-ml-py: ctypes bindings over the driver's libnvidia-ml


@dataclass(frozen=True, slots=True)
class GpuReading:
    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    #: Percent of the last sample period in which a kernel ran.
    utilization_percent: int


@lru_cache(maxsize=1)
def nvml_available() -> bool:
    """Whether NVML could be initialised (once per process; it stays initialised)."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    return True


def _memory(handle: Any) -> Any:
    """Memory as nvidia-smi shows it: v2 counts the driver's reservation apart from `used`
    (v1 counts it in: 480 MiB `used` on an idle H100 that nvidia-smi shows at 0 MiB)."""
    try:
        return pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
    except pynvml.NVMLError_FunctionNotFound:  # drivers before r510
        return pynvml.nvmlDeviceGetMemoryInfo(handle)


def read_gpus() -> list[GpuReading]:
    """Every GPU on this host, now; [] without NVML. Blocking (microseconds per device):
    call it off the event loop."""
    if not nvml_available():
        return []
    readings = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = _memory(handle)
            utilization = pynvml.nvmlDeviceGetUtilizationRates(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            readings.append(GpuReading(
                index, name.decode() if isinstance(name, bytes) else str(name),
                int(memory.used), int(memory.total), int(utilization.gpu),
            ))  # fmt: skip
    except pynvml.NVMLError:  # a GPU fell off the bus mid-read: report what was read
        pass
    return readings
