"""Test function: sleeps for payload["sleep_s"], then answers with the GPUs it was given."""

from __future__ import annotations

import os
import time
from typing import Any

import torpor


class GpuEnv(torpor.Model):
    def predict(self, payload: Any) -> dict[str, Any]:
        time.sleep(float((payload or {}).get("sleep_s", 0)))
        return {"instance": os.environ["TORPOR_INSTANCE"],
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "gpu_memory_mb": os.environ.get("TORPOR_GPU_MEMORY_MB"),
                "gpu_memory_fraction": os.environ.get("TORPOR_GPU_MEMORY_FRACTION")}
