"""GPU series on ``/metrics``: per device and per instance, in Prometheus' base units.

======================================  =========  ===================================================
series                                  type       labels
======================================  =========  ===================================================
torpor_gpu_utilization_ratio            gauge      node, gpu (SM utilisation 0..1, NVML)
torpor_gpu_memory_used_bytes            gauge      node, gpu (NVML)
torpor_gpu_memory_total_bytes           gauge      node, gpu
torpor_gpu_memory_allocated_bytes       gauge      node, gpu (what placed instances hold)
torpor_instance_gpu_utilization_ratio   gauge      function, instance (its processes' SM share;
                                                   without per-process samples, its GPUs' mean)
torpor_instance_gpu_memory_allocated_bytes gauge   function, instance (its placement)
torpor_instance_gpu_memory_used_bytes   gauge      function, instance (its processes, NVML)
======================================  =========  ===================================================

Read at scrape time from the platform's GPU source (NVML, or a fake in tests) and the reconciler's
placements; nothing is collected between scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from torpor.lifecycle.instance import FunctionRuntime
from torpor.placement.gpus import GpuSource

MIB = 1024 * 1024


class GpuPlatform(Protocol):
    """What the GPU series read of the platform (a protocol: the platform owns its metrics)."""

    @property
    def functions(self) -> Mapping[str, FunctionRuntime]: ...

    @property
    def gpu_source(self) -> GpuSource | None: ...

    def nodes(self) -> list[dict[str, Any]]: ...


class GpuCollector(Collector):
    def __init__(self, platform: GpuPlatform) -> None:
        self.platform = platform

    def collect(self) -> Iterator[Metric]:
        device = ["node", "gpu"]
        owner = ["function", "instance"]
        utilization = GaugeMetricFamily("torpor_gpu_utilization_ratio",
                                        "SM utilisation of a GPU, 0..1 (NVML).", labels=device)
        used = GaugeMetricFamily("torpor_gpu_memory_used_bytes", "GPU memory in use (NVML).",
                                 labels=device)
        total = GaugeMetricFamily("torpor_gpu_memory_total_bytes", "GPU memory of a device.",
                                  labels=device)
        allocated = GaugeMetricFamily("torpor_gpu_memory_allocated_bytes",
                                      "GPU memory placed instances hold on a device.", labels=device)
        instance_util = GaugeMetricFamily(
            "torpor_instance_gpu_utilization_ratio",
            "SM utilisation of an instance's processes, 0..1 (else its GPUs' mean).", labels=owner)
        instance_memory = GaugeMetricFamily("torpor_instance_gpu_memory_allocated_bytes",
                                            "GPU memory an instance's placement holds.",
                                            labels=owner)
        instance_used = GaugeMetricFamily("torpor_instance_gpu_memory_used_bytes",
                                          "GPU memory an instance's processes use (NVML).",
                                          labels=owner)
        source = self.platform.gpu_source
        samples = {s.index: s for s in (source.sample() if source is not None else [])}
        usage = source.instance_usage() if source is not None else {}
        gpu_info = {n["id"]: n["gpus"] for n in self.platform.nodes()}
        local = next(iter(gpu_info), None)  # the source samples this machine's devices
        for node, gpus in gpu_info.items():
            for gpu in gpus:
                key = [node, str(gpu["index"])]
                total.add_metric(key, gpu["memory_mb"] * MIB)
                allocated.add_metric(key, gpu["allocated_mb"] * MIB)
                sample = samples.get(gpu["index"]) if node == local else None
                if sample is not None:
                    utilization.add_metric(key, sample.utilization_pct / 100)
                    used.add_metric(key, sample.memory_used_mb * MIB)
        for fn in self.platform.functions.values():
            for instance in fn.live(current_only=False):
                placement = instance.placement
                if placement is None or not placement.gpus:
                    continue
                key = [fn.name, instance.id]
                instance_memory.add_metric(key, placement.gpu_memory_mb * MIB)
                own = usage.get(instance.id)
                if own is not None:
                    instance_util.add_metric(key, own.utilization_pct / 100)
                    instance_used.add_metric(key, own.memory_used_mb * MIB)
                    continue
                rates = [samples[i].utilization_pct for i in placement.gpus
                         if placement.node == local and i in samples]
                if rates:
                    instance_util.add_metric(key, sum(rates) / len(rates) / 100)
        yield from (utilization, used, total, allocated, instance_util, instance_memory,
                    instance_used)
