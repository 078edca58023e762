"""Local instances' limits and GPU view: cgroup files written, OOM kills read, the GPU env, and the
torch memory fraction applied before setup()."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from torpor.backends.local.launch import placement_env
from torpor.backends.local.limits import CgroupV1Limits, NoLimits
from torpor.placement.gpus import GpuDevice, Placement
from torpor.runtime.gpu_slice import apply_memory_fraction

T4S = (GpuDevice(0, "T4", 16384), GpuDevice(1, "T4", 16384))


class TestCgroupV1Limits:
    def test_limits_written(self, tmp_path: Path) -> None:
        """memory_mb becomes the memory limit in bytes; cpus a quota per 100 ms period."""
        limits = CgroupV1Limits(tmp_path / "memory", tmp_path / "cpu")
        procs = limits.prepare("fn-1-abc", 256, 0.5)
        assert procs == (str(tmp_path / "memory/fn-1-abc/cgroup.procs"),
                         str(tmp_path / "cpu/fn-1-abc/cgroup.procs"))
        assert (tmp_path / "memory/fn-1-abc/memory.limit_in_bytes").read_text() == "268435456"
        assert (tmp_path / "cpu/fn-1-abc/cpu.cfs_quota_us").read_text() == "50000"
        assert (tmp_path / "cpu/fn-1-abc/cpu.cfs_period_us").read_text() == "100000"

    def test_oom_kill_counter(self, tmp_path: Path) -> None:
        """An oom_kill count above 0 in memory.oom_control means the kernel killed it."""
        limits = CgroupV1Limits(tmp_path / "memory", tmp_path / "cpu")
        limits.prepare("i", 256, 1.0)
        control = tmp_path / "memory/i/memory.oom_control"
        control.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
        assert not limits.oom_killed("i")
        control.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
        assert limits.oom_killed("i")

    def test_spare_cgroup_renamed_onto_the_instance(self, tmp_path: Path) -> None:
        """A spare's prepared cgroups become the instance's by renaming (limits kept, no process
        moved); a failed rename leaves nothing half-renamed and says so with ()."""
        limits = CgroupV1Limits(tmp_path / "memory", tmp_path / "cpu")
        limits.prepare("spare-fn-1-aa", 256, 0.5)
        assert limits.rename("spare-fn-1-aa", "fn-1-abc") == (
            str(tmp_path / "memory/fn-1-abc/cgroup.procs"), str(tmp_path / "cpu/fn-1-abc/cgroup.procs"))
        assert (tmp_path / "memory/fn-1-abc/memory.limit_in_bytes").read_text() == "268435456"
        assert not (tmp_path / "memory/spare-fn-1-aa").exists()
        (tmp_path / "cpu/taken").mkdir()
        limits.prepare("spare-2", 256, 0.5)
        (tmp_path / "cpu/taken/x").mkdir()  # the cpu rename cannot replace a non-empty folder
        assert limits.rename("spare-2", "taken") == ()
        assert (tmp_path / "memory/spare-2").is_dir() and (tmp_path / "cpu/spare-2").is_dir()
        assert NoLimits().rename("a", "b") == ()

    def test_join_skips_a_cgroup_it_is_in(self, tmp_path: Path) -> None:
        """A forked instance already in its cgroup (inherited from the spare) does not move."""
        from torpor.runtime.cgroups import join

        inside, outside = tmp_path / "inside.procs", tmp_path / "outside.procs"
        inside.write_text(f"1\n{os.getpid()}\n")
        outside.write_text("1\n")
        join([str(inside), str(outside)])
        assert inside.read_text() == f"1\n{os.getpid()}\n"  # untouched
        assert outside.read_text() == str(os.getpid())  # written (as cgroupfs would take it)

    def test_no_limits(self) -> None:
        """Without writable cgroups nothing is joined and nothing is ever an OOM kill."""
        assert NoLimits().prepare("i", 256, 1.0) == ()
        assert not NoLimits().oom_killed("i")


class TestPlacementEnv:
    def test_slice(self) -> None:
        """A slice sees its one device, its size, and its share of the device."""
        env = placement_env(Placement("local", (1,), 6144), T4S)
        assert env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1",
                       "TORPOR_GPU_MEMORY_MB": "6144", "TORPOR_GPU_MEMORY_FRACTION": "0.3750"}

    def test_whole_gpus(self) -> None:
        """Whole GPUs see all their devices and all their memory."""
        env = placement_env(Placement("local", (0, 1), 32768, whole=True), T4S)
        assert (env["CUDA_VISIBLE_DEVICES"], env["TORPOR_GPU_MEMORY_MB"],
                env["TORPOR_GPU_MEMORY_FRACTION"]) == ("0,1", "32768", "1.0000")

    def test_cpu_instance_sees_no_gpu(self) -> None:
        """On a machine with GPUs, an instance that asked for none sees none; elsewhere, no change."""
        assert placement_env(None, T4S) == {"CUDA_VISIBLE_DEVICES": ""}
        assert placement_env(None, ()) == {}


class _FakeCuda:
    def __init__(self) -> None:
        self.fractions: list[tuple[float, int]] = []

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return 1

    def get_device_properties(self, device: int) -> Any:
        return types.SimpleNamespace(total_memory=16384 * 1024 * 1024)

    def set_per_process_memory_fraction(self, fraction: float, device: int) -> None:
        self.fractions.append((fraction, device))


class TestMemoryFraction:
    def test_fraction_is_slice_over_device(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """6144 MB of a 16384 MB device caps torch's allocator at 0.375 before setup()."""
        cuda = _FakeCuda()
        monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
        monkeypatch.setenv("TORPOR_GPU_MEMORY_MB", "6144")
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
        assert apply_memory_fraction() == 0.375
        assert cuda.fractions == [(0.375, 0)]

    def test_nothing_without_a_slice(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A CPU instance (no slice, no device) leaves torch alone."""
        cuda = _FakeCuda()
        monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
        monkeypatch.delenv("TORPOR_GPU_MEMORY_MB", raising=False)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        assert apply_memory_fraction() is None
        assert cuda.fractions == []
