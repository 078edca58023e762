"""On a real GPU only (skipped elsewhere): NVML's inventory and torch capped to a slice."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from torpor.backends.local.nvml import NvmlSource, discover_gpus

needs_nvml = pytest.mark.skipif(not discover_gpus(), reason="needs NVML and a GPU")


@needs_nvml
def test_nvml_inventory_and_sample() -> None:
    """NVML lists each GPU with its memory, and samples utilisation and memory used."""
    devices = discover_gpus()
    assert [d.index for d in devices] == list(range(len(devices)))
    assert all(d.memory_mb >= 1024 and d.name for d in devices)
    samples = NvmlSource().sample()
    assert [s.index for s in samples] == [d.index for d in devices]
    assert all(0 <= s.utilization_pct <= 100 for s in samples)


@needs_nvml
def test_torch_allocation_past_the_slice_fails() -> None:
    """In a 2048 MB slice, torch can allocate 1 GB but not 3 GB (its allocator is capped)."""
    pytest.importorskip("torch")
    script = textwrap.dedent("""
        import torch
        from torpor.runtime.gpu_slice import apply_memory_fraction
        print("fraction", apply_memory_fraction())
        small = torch.empty(1024 * 2**20, dtype=torch.uint8, device="cuda")
        try:
            torch.empty(3072 * 2**20, dtype=torch.uint8, device="cuda")
            print("big allocation succeeded")
        except torch.OutOfMemoryError:
            print("big allocation refused")
    """)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0", "TORPOR_GPU_MEMORY_MB": "2048"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=120)
    assert "big allocation refused" in out.stdout, out.stdout + out.stderr
