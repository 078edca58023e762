"""Keep a Model inside its GPU-memory slice: cap torch's CUDA allocator before ``setup()``.

The server gives an instance ``TORPOR_GPU_MEMORY_MB`` (its slice) and ``CUDA_VISIBLE_DEVICES`` (its
device). With torch installed and CUDA available, the process's memory fraction becomes
``slice / device total`` (``6144 MB / 16384 MB = 0.375``), so an allocation past the slice raises
torch's out-of-memory error in this instance instead of starving its neighbours on the device.
Without torch, or without CUDA, nothing happens (and torch is not imported for a CPU function).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

MIB = 1024 * 1024


def _torch() -> Any | None:
    torch = sys.modules.get("torch")
    if torch is None and importlib.util.find_spec("torch") is not None:
        torch = importlib.import_module("torch")
    return torch


def apply_memory_fraction() -> float | None:
    """Cap each visible device to the slice; the fraction applied (None when nothing was capped)."""
    slice_mb = int(os.environ.get("TORPOR_GPU_MEMORY_MB", "0") or 0)
    if slice_mb <= 0 or not os.environ.get("CUDA_VISIBLE_DEVICES"):
        return None
    torch = _torch()
    if torch is None or not torch.cuda.is_available():
        return None
    fraction = None
    for device in range(torch.cuda.device_count()):
        total = torch.cuda.get_device_properties(device).total_memory
        fraction = min(1.0, slice_mb * MIB / total)
        if fraction < 1.0:
            torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction
