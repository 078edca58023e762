"""GPU series on /metrics from a fake NVML source and the reconciler's placements."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from torpor.api.gpu_metrics import GpuCollector
from torpor.backends.local import LocalBackend
from torpor.backends.local.freezer import SignalFreezer
from torpor.backends.local.limits import NoLimits
from torpor.backends.local.nvml import FakeGpuSource
from torpor.clock import SystemClock
from torpor.placement.gpus import GpuDevice, Placement
from torpor.platform import Platform


def test_device_series(tmp_path: Path) -> None:
    """Utilisation and memory used come from the source; total and allocated from placement."""
    source = FakeGpuSource()
    source.set(0, 62.5, 9000)
    gpus = (GpuDevice(0, "T4", 16384), GpuDevice(1, "T4", 16384))
    backend = LocalBackend(tmp_path, SystemClock(), templates=False, freezer=SignalFreezer(),
                           gpus=gpus, limits=NoLimits())
    platform = Platform(tmp_path, backend=backend, gpu_source=source)
    try:
        platform.reconciler.placements["fn-1-a"] = Placement("local", (0,), 6144)
        registry = CollectorRegistry()
        registry.register(GpuCollector(platform))
        text = generate_latest(registry).decode()
    finally:
        platform.store.close()
    assert 'torpor_gpu_utilization_percent{gpu="0",node="local"} 62.5' in text
    assert 'torpor_gpu_memory_used_mb{gpu="0",node="local"} 9000.0' in text
    assert 'torpor_gpu_memory_allocated_mb{gpu="0",node="local"} 6144.0' in text
    assert 'torpor_gpu_memory_total_mb{gpu="1",node="local"} 16384.0' in text
    assert 'torpor_gpu_utilization_percent{gpu="1"' not in text  # no sample for gpu 1
