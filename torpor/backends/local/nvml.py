"""This node's GPUs through NVML (``nvidia-ml-py``, ``pip install 'torpor[gpu]'``): the inventory
placement uses, and the utilisation and memory samples ``/metrics`` exports.

Without the package or the driver, :func:`discover_gpus` finds none and :class:`NvmlSource`
samples nothing: the rest of torpor works as before. Tests use :class:`FakeGpuSource`.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from torpor.placement.gpus import GpuDevice, GpuSample, GpuSource

__all__ = ["FakeGpuSource", "GpuSample", "GpuSource", "NvmlSource", "discover_gpus"]

log = logging.getLogger(__name__)
MIB = 1024 * 1024


def _nvml() -> Any | None:
    """pynvml, initialised; None without the package or the driver."""
    try:
        pynvml = importlib.import_module("pynvml")
        pynvml.nvmlInit()
    except Exception:  # ImportError, or NVMLError (no driver / no device)
        return None
    return pynvml


def discover_gpus() -> tuple[GpuDevice, ...]:
    """This machine's GPUs in NVML's order (= CUDA's with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``)."""
    pynvml = _nvml()
    if pynvml is None:
        return ()
    devices = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        devices.append(GpuDevice(index, name.decode() if isinstance(name, bytes) else str(name),
                                 int(memory.total // MIB)))
    return tuple(devices)


class NvmlSource:
    """Samples every device through NVML (nothing when NVML is not there)."""

    def __init__(self) -> None:
        self._pynvml = _nvml()

    def sample(self) -> list[GpuSample]:
        pynvml = self._pynvml
        if pynvml is None:
            return []
        samples = []
        try:
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                samples.append(GpuSample(index, float(rates.gpu), int(memory.used // MIB)))
        except Exception as exc:  # a driver hiccup must not break /metrics
            log.warning("NVML sample failed: %s", exc)
        return samples


class FakeGpuSource:
    """A settable source for tests (and machines without NVML): ``set(index, pct, used_mb)``."""

    def __init__(self) -> None:
        self.samples: dict[int, GpuSample] = {}

    def set(self, index: int, utilization_pct: float, memory_used_mb: int = 0) -> None:
        self.samples[index] = GpuSample(index, utilization_pct, memory_used_mb)

    def sample(self) -> list[GpuSample]:
        return [self.samples[i] for i in sorted(self.samples)]
