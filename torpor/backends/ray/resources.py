"""What an instance asks of Ray: its spec's resources in Ray's names, plus its pool's resource.

Pure arithmetic, no Ray import, so the mapping is unit-tested without a cluster.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torpor.backends.ray.config import DEFAULT_GPU_MEMORY_MB
from torpor.placement.pools import Pool
from torpor.spec import ResourcesSpec

MB = 2**20
POOL_UNIT = 0.001  # of a node's ``pool:P`` (e.g. 1000): a marker, not a limit
RAY_PRECISION = 10_000  # Ray keeps resource amounts to 4 decimal places
_INTERNAL = ("node:", "bundle_group_", "accelerator_type:")


def ray_demand(resources: ResourcesSpec, gpu_memory_mb_per_gpu: int = DEFAULT_GPU_MEMORY_MB,
               ask_memory: bool = True) -> dict[str, float]:
    """``cpus`` → CPU, ``memory_mb`` → memory (bytes), ``gpus`` → GPU, and a ``gpu_memory_mb``
    slice → that fraction of one GPU, rounded up to Ray's precision (8192 of 81920 MB → 0.1)."""
    demand = {"CPU": float(resources.cpus)}
    if ask_memory:
        demand["memory"] = float(resources.memory_mb * MB)
    if resources.gpus:
        demand["GPU"] = float(resources.gpus)
    elif resources.gpu_memory_mb:
        fraction = resources.gpu_memory_mb / gpu_memory_mb_per_gpu
        demand["GPU"] = min(1.0, math.ceil(fraction * RAY_PRECISION) / RAY_PRECISION)
    return demand


def bundle(demand: Mapping[str, float], pool: Pool) -> dict[str, float]:
    """The placement-group bundle reserving ``demand`` on one node of ``pool``."""
    marker = {pool.resource: POOL_UNIT} if pool.resource is not None else {}
    return {**{k: v for k, v in demand.items() if v > 0}, **marker}


def for_display(resources: Mapping[str, float]) -> dict[str, float]:
    """A node's resources without Ray's internal entries, memory in MB (``memory_mb``)."""
    shown: dict[str, float] = {}
    for key, amount in resources.items():
        if key.startswith(_INTERNAL) or "_group_" in key:
            continue
        if key in ("memory", "object_store_memory"):
            shown[f"{key}_mb"] = round(amount / MB, 1)
        else:
            shown[key] = amount
    return shown
