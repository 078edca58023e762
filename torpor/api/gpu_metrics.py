"""GPU series on ``/metrics``: per device (utilisation, memory used, total, allocated) and per
instance (its GPUs' utilisation, the memory its placement holds).

Read at scrape time from the platform's GPU source (NVML, or a fake in tests) and the reconciler's
placements; nothing is collected between scrapes. A slice's utilisation is its device's: NVML
reports SM utilisation per device, and instances sharing a device share its number.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from torpor.platform import Platform


class GpuCollector(Collector):
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    def collect(self) -> Iterator[Metric]:
        labels = ["node", "gpu"]
        utilization = GaugeMetricFamily("torpor_gpu_utilization_percent",
                                        "SM utilisation of a GPU (NVML).", labels=labels)
        used = GaugeMetricFamily("torpor_gpu_memory_used_mb", "GPU memory in use (NVML).",
                                 labels=labels)
        total = GaugeMetricFamily("torpor_gpu_memory_total_mb", "GPU memory of a device.",
                                  labels=labels)
        allocated = GaugeMetricFamily("torpor_gpu_memory_allocated_mb",
                                      "GPU memory placed instances hold on a device.", labels=labels)
        instance_util = GaugeMetricFamily(
            "torpor_instance_gpu_utilization_percent",
            "SM utilisation of an instance's processes (NVML per process; else its GPUs' mean).",
            labels=["function", "instance"])
        instance_memory = GaugeMetricFamily("torpor_instance_gpu_memory_mb",
                                            "GPU memory an instance's placement holds.",
                                            labels=["function", "instance"])
        instance_used = GaugeMetricFamily("torpor_instance_gpu_memory_used_mb",
                                          "GPU memory an instance's processes use (NVML).",
                                          labels=["function", "instance"])
        source = self.platform.gpu_source
        samples = {s.index: s for s in (source.sample() if source is not None else [])}
        usage = source.instance_usage() if source is not None else {}
        gpu_info = {n["id"]: n["gpus"] for n in self.platform.nodes()}
        local = next(iter(gpu_info), None)  # the source samples this machine's devices
        for node, gpus in gpu_info.items():
            for gpu in gpus:
                key = [node, str(gpu["index"])]
                total.add_metric(key, gpu["memory_mb"])
                allocated.add_metric(key, gpu["allocated_mb"])
                sample = samples.get(gpu["index"]) if node == local else None
                if sample is not None:
                    utilization.add_metric(key, sample.utilization_pct)
                    used.add_metric(key, sample.memory_used_mb)
        for fn in self.platform.functions.values():
            for instance in fn.live(current_only=False):
                placement = instance.placement
                if placement is None or not placement.gpus:
                    continue
                key = [fn.name, instance.id]
                instance_memory.add_metric(key, placement.gpu_memory_mb)
                own = usage.get(instance.id)
                if own is not None:
                    instance_util.add_metric(key, own.utilization_pct)
                    instance_used.add_metric(key, own.memory_used_mb)
                    continue
                rates = [samples[i].utilization_pct for i in placement.gpus
                         if placement.node == local and i in samples]
                if rates:
                    instance_util.add_metric(key, sum(rates) / len(rates))
        yield from (utilization, used, total, allocated, instance_util, instance_memory,
                    instance_used)
