"""GPU series on /metrics from a fake source and the reconciler's placements; the NVML source and
inventory against a fake pynvml module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from torpor.api.gpu_metrics import GpuCollector
from torpor.backends import CodeRef
from torpor.backends.local import LocalBackend
from torpor.backends.local.freezer import SignalFreezer
from torpor.backends.local.limits import NoLimits
from torpor.backends.local.nvml import FakeGpuSource, NvmlSource, discover_gpus
from torpor.clock import SystemClock
from torpor.lifecycle.instance import Instance
from torpor.lifecycle.state import InstanceFacts
from torpor.placement.gpus import GpuDevice, GpuSample, InstanceGpuUsage, Placement
from torpor.platform import Platform
from torpor.spec import FunctionSpec

MIB = 1024 * 1024


def values(text: str) -> dict[tuple[str, str], float]:
    """``(series, label values joined by "," in label-name order)`` → value, from the text."""
    return {(sample.name, ",".join(v for _, v in sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def scrape(tmp_path: Path, source: FakeGpuSource) -> str:
    """/metrics' GPU part with one instance of ``fn`` holding 6144 MB of gpu 0."""
    gpus = (GpuDevice(0, "T4", 16384), GpuDevice(1, "T4", 16384))
    backend = LocalBackend(tmp_path, SystemClock(), templates=False, freezer=SignalFreezer(),
                           gpus=gpus, limits=NoLimits())
    platform = Platform(tmp_path, backend=backend, gpu_source=source)
    try:
        spec = FunctionSpec.model_validate({"name": "fn", "runtime": {"command": ["true"]},
                                            "resources": {"gpu_memory_mb": 6144}})
        fn = platform.reconciler.apply(spec, 1, CodeRef("d", tmp_path), "src", 0.0, 0.0)
        placement = Placement("local", (0,), 6144)
        fn.instances["fn-1-a"] = Instance("fn-1-a", "fn", 1, InstanceFacts(started_at=1.0),
                                          placement=placement)
        platform.reconciler.placements["fn-1-a"] = placement
        registry = CollectorRegistry()
        registry.register(GpuCollector(platform))
        return generate_latest(registry).decode()
    finally:
        platform.store.close()


class TestGpuCollector:
    def test_device_series(self, tmp_path: Path) -> None:
        """Utilisation and memory used come from the source; total and allocated from placement."""
        source = FakeGpuSource()
        source.set(0, 62.5, 9000)
        got = values(scrape(tmp_path, source))
        assert got[("torpor_gpu_utilization_ratio", "0,local")] == 0.625
        assert got[("torpor_gpu_memory_used_bytes", "0,local")] == 9000 * MIB
        assert got[("torpor_gpu_memory_allocated_bytes", "0,local")] == 6144 * MIB
        assert got[("torpor_gpu_memory_allocated_bytes", "1,local")] == 0
        assert got[("torpor_gpu_memory_total_bytes", "1,local")] == 16384 * MIB
        assert ("torpor_gpu_utilization_ratio", "1,local") not in got  # no sample for gpu 1

    def test_instance_series_fall_back_to_its_device(self, tmp_path: Path) -> None:
        """Without per-process numbers an instance shows its GPU's utilisation."""
        source = FakeGpuSource()
        source.set(0, 62.5, 9000)
        got = values(scrape(tmp_path, source))
        assert got[("torpor_instance_gpu_utilization_ratio", "fn,fn-1-a")] == 0.625
        assert got[("torpor_instance_gpu_memory_allocated_bytes", "fn,fn-1-a")] == 6144 * MIB

    def test_instance_series_from_its_processes(self, tmp_path: Path) -> None:
        """With per-process numbers an instance shows its own SM share and memory used."""
        source = FakeGpuSource()
        source.set(0, 62.5, 9000)
        source.set_instance("fn-1-a", 20.0, 5000)
        got = values(scrape(tmp_path, source))
        assert got[("torpor_instance_gpu_utilization_ratio", "fn,fn-1-a")] == 0.2
        assert got[("torpor_instance_gpu_memory_used_bytes", "fn,fn-1-a")] == 5000 * MIB

    def test_promtool_finds_nothing(self, tmp_path: Path) -> None:
        """The series follow Prometheus' conventions (base units, no abbreviations)."""
        promtool = shutil.which("promtool")
        if promtool is None:
            pytest.skip("promtool is not installed")
        source = FakeGpuSource()
        source.set(0, 62.5, 9000)
        source.set_instance("fn-1-a", 20.0, 5000)
        checked = subprocess.run([promtool, "check", "metrics"], input=scrape(tmp_path, source),
                                 capture_output=True, text=True, timeout=30)
        assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def fake_pynvml() -> types.ModuleType:
    """Two 16 GiB T4s; gpu 0 at 70 % with our own process (pid = os.getpid()) on it."""
    module: Any = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    module.NVMLError = NVMLError
    module.nvmlInit = lambda: None
    module.nvmlDeviceGetCount = lambda: 2
    module.nvmlDeviceGetHandleByIndex = lambda index: index
    module.nvmlDeviceGetName = lambda handle: b"Tesla T4"
    module.nvmlDeviceGetMemoryInfo = lambda handle: types.SimpleNamespace(
        total=16384 * MIB, used=(3000 if handle == 0 else 0) * MIB)
    module.nvmlDeviceGetUtilizationRates = lambda handle: types.SimpleNamespace(
        gpu=70 if handle == 0 else 0)
    module.nvmlDeviceGetComputeRunningProcesses = lambda handle: (
        [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=2048 * MIB)] if handle == 0 else [])

    def process_utilization(handle: int, since: int) -> list[Any]:
        if handle != 0:
            raise NVMLError("not found")
        return [types.SimpleNamespace(pid=os.getpid(), smUtil=40, timeStamp=since + 1)]

    module.nvmlDeviceGetProcessUtilization = process_utilization
    return module


class TestNvml:
    def test_inventory(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """NVML's devices become the node's GPUs, memory in MB."""
        monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
        assert discover_gpus() == (GpuDevice(0, "Tesla T4", 16384), GpuDevice(1, "Tesla T4", 16384))

    def test_device_and_process_samples(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Per device from the rates; per instance from its processes, found by session."""
        monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
        source = NvmlSource(pids=lambda: {os.getsid(0): "fn-1-a"})
        assert source.sample() == [GpuSample(0, 70.0, 3000), GpuSample(1, 0.0, 0)]
        assert source.instance_usage() == {"fn-1-a": InstanceGpuUsage(40.0, 2048)}

    def test_without_nvml(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """No pynvml: no GPU, no samples, and nothing breaks."""
        monkeypatch.setitem(sys.modules, "pynvml", None)
        assert discover_gpus() == ()
        assert NvmlSource().sample() == []
        assert NvmlSource(pids=dict).instance_usage() == {}
