"""GPU placement, pure: which node and GPU(s) an instance gets, or why it must wait.

An instance asks for ``gpus: N`` whole devices or a ``gpu_memory_mb`` slice of one device (seed
001: slices of at least 1 GB). The rules:

- **Slices** are packed best-fit: the device with the *least* free memory that still holds the slice
  (ties: lowest node, then lowest index), so big holes stay free for big slices.
- **Whole GPUs** are given only when completely free (no slice on them), lowest indices first, all
  on one node; a whole GPU holds all its memory, so no slice lands on it afterwards.
- **Nothing is over-committed**: the sum of what is held on a device never passes its memory.
- **Quota** (``limits.gpus``): all instances together hold at most that many GPUs, a slice counting
  as its share of its device (``6144 / 16384 = 0.375`` of a GPU).

:func:`place` answers :class:`Placed` or :class:`Waiting` (its reason is what ``torpor get`` shows);
:func:`unplaceable` says at deploy time when no node could *ever* hold a request. The caller keeps
the allocations (a mapping of instance id → :class:`Placement`) and passes them in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

QUOTA_EPSILON = 1e-9  # slice shares are floats: 0.375 × 8 must fit a quota of 3 exactly


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str
    memory_mb: int


@dataclass(frozen=True)
class NodeGpus:
    """One node's GPUs (an empty tuple for a node without any)."""

    node: str
    devices: tuple[GpuDevice, ...]


@dataclass(frozen=True)
class GpuRequest:
    """What one instance asks for: ``gpus`` whole devices, or a ``gpu_memory_mb`` slice (not both)."""

    gpus: int = 0
    gpu_memory_mb: int = 0

    @property
    def empty(self) -> bool:
        return self.gpus == 0 and self.gpu_memory_mb == 0


@dataclass(frozen=True)
class Placement:
    """Where an instance runs: ``gpu_memory_mb`` is its slice, or the memory of its whole GPUs."""

    node: str
    gpus: tuple[int, ...] = ()
    gpu_memory_mb: int = 0
    whole: bool = False

    def to_api(self) -> dict[str, object]:
        return {"node": self.node, "gpus": list(self.gpus), "gpu_memory_mb": self.gpu_memory_mb}


@dataclass(frozen=True)
class Placed:
    placement: Placement
    reason: str


@dataclass(frozen=True)
class Waiting:
    reason: str


Decision = Placed | Waiting
Allocations = Mapping[str, Placement]


def held_mb(node: str, device: GpuDevice, allocations: Allocations) -> int:
    """Memory held on one device by every placed instance (a whole-GPU placement holds all of it)."""
    total = 0
    for placement in allocations.values():
        if placement.node == node and device.index in placement.gpus:
            total += device.memory_mb if placement.whole else placement.gpu_memory_mb
    return total


def free_mb(nodes: Iterable[NodeGpus], allocations: Allocations) -> dict[tuple[str, int], int]:
    """Free memory per (node, index)."""
    return {(n.node, d.index): d.memory_mb - held_mb(n.node, d, allocations)
            for n in nodes for d in n.devices}


def gpus_held(nodes: Iterable[NodeGpus], allocations: Allocations) -> float:
    """GPUs held for the quota: a whole GPU counts 1, a slice its share of its device."""
    sizes = {(n.node, d.index): d.memory_mb for n in nodes for d in n.devices}
    return sum(_share(p, sizes) for p in allocations.values())


def _share(placement: Placement, sizes: Mapping[tuple[str, int], int]) -> float:
    if placement.whole:
        return float(len(placement.gpus))
    if not placement.gpus:
        return 0.0
    size = sizes.get((placement.node, placement.gpus[0]))
    return placement.gpu_memory_mb / size if size else 0.0


def place(nodes: tuple[NodeGpus, ...], allocations: Allocations, request: GpuRequest,
          quota_gpus: float | None = None) -> Decision:
    """Where an instance asking ``request`` goes now, given what ``allocations`` already hold."""
    if request.empty:
        return Placed(Placement(node=nodes[0].node if nodes else ""), "no GPU asked")
    held = gpus_held(nodes, allocations)
    if request.gpus:
        return _place_whole(nodes, allocations, request.gpus, quota_gpus, held)
    return _place_slice(nodes, allocations, request.gpu_memory_mb, quota_gpus, held)


def _quota_reason(quota_gpus: float | None, held: float, share: float) -> str | None:
    if quota_gpus is not None and held + share > quota_gpus + QUOTA_EPSILON:
        return (f"waiting for GPU quota: need {share:g} GPU, {held:g} of limits.gpus "
                f"{quota_gpus:g} held")
    return None


def _place_slice(nodes: tuple[NodeGpus, ...], allocations: Allocations, need_mb: int,
                 quota_gpus: float | None, held: float) -> Decision:
    free = free_mb(nodes, allocations)
    fits = [(free[(n.node, d.index)], order, n.node, d) for order, n in enumerate(nodes)
            for d in n.devices if free[(n.node, d.index)] >= need_mb]
    if not fits:
        return Waiting(_memory_reason(need_mb, free))
    left, _, node, device = min(fits, key=lambda f: (f[0], f[1], f[3].index))
    quota = _quota_reason(quota_gpus, held, need_mb / device.memory_mb)
    if quota is not None:
        return Waiting(quota)
    return Placed(Placement(node=node, gpus=(device.index,), gpu_memory_mb=need_mb),
                  f"{need_mb} MB on gpu {device.index} of {node} (best fit: {left} MB free)")


def _memory_reason(need_mb: int, free: Mapping[tuple[str, int], int]) -> str:
    if not free:
        return f"waiting for GPU memory: need {need_mb} MB, no GPU on any node"
    (node, index), largest = max(free.items(), key=lambda kv: (kv[1], -kv[0][1]))
    where = f"gpu {index}" if len({key[0] for key in free}) == 1 else f"gpu {index} of {node}"
    return f"waiting for GPU memory: need {need_mb} MB, largest free {largest} MB ({where})"


def _place_whole(nodes: tuple[NodeGpus, ...], allocations: Allocations, count: int,
                 quota_gpus: float | None, held: float) -> Decision:
    free = free_mb(nodes, allocations)
    best: tuple[NodeGpus, list[GpuDevice]] | None = None
    most_idle = 0
    for n in nodes:
        idle = [d for d in n.devices if free[(n.node, d.index)] == d.memory_mb]
        most_idle = max(most_idle, len(idle))
        if len(idle) >= count and best is None:
            best = (n, sorted(idle, key=lambda d: d.index)[:count])
    if best is None:
        return Waiting(f"waiting for {count} whole GPU(s): at most {most_idle} free of slices on "
                       "one node")
    quota = _quota_reason(quota_gpus, held, float(count))
    if quota is not None:
        return Waiting(quota)
    node, devices = best
    placement = Placement(node=node.node, gpus=tuple(d.index for d in devices),
                          gpu_memory_mb=sum(d.memory_mb for d in devices), whole=True)
    return Placed(placement, f"gpus {list(placement.gpus)} of {node.node}")


def unplaceable(nodes: tuple[NodeGpus, ...], request: GpuRequest,
                quota_gpus: float | None = None) -> tuple[str, str] | None:
    """``(field, message)`` when no node could ever hold ``request``, even with every GPU free."""
    if request.empty:
        return None
    devices = [d for n in nodes for d in n.devices]
    if not devices:
        field = "resources.gpus" if request.gpus else "resources.gpu_memory_mb"
        return field, "asks for a GPU but no node has one (declare them under gpus: in the " \
                      "server config, or install the NVIDIA driver)"
    if request.gpus:
        most = max(len(n.devices) for n in nodes)
        if request.gpus > most:
            return "resources.gpus", f"{request.gpus} GPUs, but the largest node has {most}"
        if quota_gpus is not None and request.gpus > quota_gpus + QUOTA_EPSILON:
            return "resources.gpus", f"{request.gpus} GPUs is more than limits.gpus {quota_gpus:g}"
        return None
    largest = max(devices, key=lambda d: (d.memory_mb, -d.index))
    if request.gpu_memory_mb > largest.memory_mb:
        return "resources.gpu_memory_mb", (
            f"{request.gpu_memory_mb} MB is larger than every GPU (largest: gpu {largest.index}, "
            f"{largest.name}, {largest.memory_mb} MB)")
    if quota_gpus is not None:
        smallest_share = min(request.gpu_memory_mb / d.memory_mb for d in devices
                             if d.memory_mb >= request.gpu_memory_mb)
        if smallest_share > quota_gpus + QUOTA_EPSILON:
            return "resources.gpu_memory_mb", (
                f"{request.gpu_memory_mb} MB is {smallest_share:g} GPU, more than limits.gpus "
                f"{quota_gpus:g}")
    return None


# what the devices report -------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuSample:
    """One device right now: SM utilisation (percent over NVML's last sample period) and memory."""

    index: int
    utilization_pct: float
    memory_used_mb: int


@dataclass(frozen=True)
class InstanceGpuUsage:
    """What one instance's processes use of the GPUs now: SM utilisation (summed over its processes
    and devices, percent of one device) and device memory."""

    utilization_pct: float
    memory_used_mb: int


class GpuSource(Protocol):
    """This machine's devices sampled now (NVML; a fake in tests)."""

    def sample(self) -> list[GpuSample]: ...

    def instance_usage(self) -> dict[str, InstanceGpuUsage]:
        """Per instance id, for the instances whose processes hold a GPU context."""


@dataclass(frozen=True)
class GpuLoad:
    """A function's GPUs on average: SM utilisation in percent, memory used as a fraction."""

    utilization_pct: float
    memory_fraction: float
    devices: int


def function_load(placements: Iterable[Placement], samples: Mapping[int, GpuSample],
                  sizes_mb: Mapping[int, int]) -> GpuLoad | None:
    """The mean over the devices a function's instances are placed on (each device once; a
    device shared by two of its slices counts once). None when no device was sampled."""
    devices = sorted({i for p in placements for i in p.gpus if i in samples and sizes_mb.get(i)})
    if not devices:
        return None
    utilization = sum(samples[i].utilization_pct for i in devices) / len(devices)
    memory = sum(samples[i].memory_used_mb / sizes_mb[i] for i in devices) / len(devices)
    return GpuLoad(utilization, min(memory, 1.0), len(devices))
