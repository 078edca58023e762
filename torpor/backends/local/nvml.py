"""This node's GPUs through NVML (``nvidia-ml-py``, ``pip install 'torpor[gpu]'``): the inventory
placement uses, and the utilisation and memory samples ``/metrics`` exports.

Without the package or the driver, :func:`discover_gpus` finds none and :class:`NvmlSource`
samples nothing: the rest of torpor works as before. Tests use :class:`FakeGpuSource`.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from torpor.placement.gpus import GpuDevice, GpuSample, GpuSource, InstanceGpuUsage

__all__ = ["FakeGpuSource", "GpuSample", "GpuSource", "InstanceGpuUsage", "NvmlSource",
           "discover_gpus"]

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
    """Samples every device through NVML (nothing when NVML is not there).

    ``pids`` maps each local instance's pid to its id; a process on a GPU belongs to the instance
    whose pid is its session id (every instance leads a session of its own, so a command
    function's worker processes count for it too).
    """

    def __init__(self, pids: Callable[[], Mapping[int, str]] | None = None) -> None:
        self._pynvml = _nvml()
        self._pids = pids
        self._last_seen_us = 0  # NVML returns process samples newer than this

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

    def instance_usage(self) -> dict[str, InstanceGpuUsage]:
        pynvml = self._pynvml
        if pynvml is None or self._pids is None:
            return {}
        owners = self._pids()
        memory: dict[str, int] = {}
        utilization: dict[str, float] = {}
        try:
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    owner = _owner(process.pid, owners)
                    if owner is not None:
                        used = process.usedGpuMemory or 0  # None where the driver hides it
                        memory[owner] = memory.get(owner, 0) + int(used // MIB)
                try:
                    rates = pynvml.nvmlDeviceGetProcessUtilization(handle, self._last_seen_us)
                except pynvml.NVMLError:  # no sample since the last call
                    rates = []
                for rate in rates:
                    owner = _owner(rate.pid, owners)
                    if owner is not None:
                        utilization[owner] = utilization.get(owner, 0.0) + float(rate.smUtil)
                    self._last_seen_us = max(self._last_seen_us, int(rate.timeStamp))
        except Exception as exc:
            log.warning("NVML per-process sample failed: %s", exc)
        return {owner: InstanceGpuUsage(utilization.get(owner, 0.0), memory.get(owner, 0))
                for owner in set(memory) | set(utilization)}


def _owner(pid: int, owners: Mapping[int, str]) -> str | None:
    """The instance a process belongs to: by its pid, else by its session's leader."""
    if pid in owners:
        return owners[pid]
    try:
        return owners.get(os.getsid(pid))
    except OSError:  # gone, or in another pid namespace
        return None


class FakeGpuSource:
    """A settable source for tests (and machines without NVML): ``set(index, pct, used_mb)``,
    ``set_instance(instance_id, pct, used_mb)``."""

    def __init__(self) -> None:
        self.samples: dict[int, GpuSample] = {}
        self.instances: dict[str, InstanceGpuUsage] = {}

    def set(self, index: int, utilization_pct: float, memory_used_mb: int = 0) -> None:
        self.samples[index] = GpuSample(index, utilization_pct, memory_used_mb)

    def set_instance(self, instance_id: str, utilization_pct: float, memory_used_mb: int) -> None:
        self.instances[instance_id] = InstanceGpuUsage(utilization_pct, memory_used_mb)

    def instance_usage(self) -> dict[str, InstanceGpuUsage]:
        return dict(self.instances)

    def sample(self) -> list[GpuSample]:
        return [self.samples[i] for i in sorted(self.samples)]
