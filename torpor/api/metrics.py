"""``/metrics`` in the Prometheus text format.

Gauges are read from the platform's in-memory state at scrape time (no work on the request path);
the cold-start histogram is observed when an instance becomes ready.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from torpor.gateway.llm_stats import TTFT_BUCKETS_S, LlmStats
from torpor.lifecycle.instance import FunctionRuntime, Instance
from torpor.states import InstanceState

Functions = Callable[[], Mapping[str, FunctionRuntime]]

COLD_START_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class PlatformCollector(Collector):
    def __init__(self, functions: Functions) -> None:
        self.functions = functions

    def collect(self) -> Iterator[Metric]:
        instances = GaugeMetricFamily("torpor_instances", "Instances by function and state.",
                                      labels=["function", "state"])
        in_flight = GaugeMetricFamily("torpor_in_flight_requests", "Requests being served.",
                                      labels=["function"])
        queued = GaugeMetricFamily("torpor_queued_requests", "Requests waiting for an instance.",
                                   labels=["function"])
        desired = GaugeMetricFamily("torpor_desired_instances", "The autoscaler's desired count.",
                                    labels=["function"])
        provisioned = GaugeMetricFamily("torpor_provisioned_target", "Provisioned target.",
                                        labels=["function"])
        requests = CounterMetricFamily("torpor_requests", "Requests received by the gateway.",
                                       labels=["function"])
        for name, fn in self.functions().items():
            counts = dict.fromkeys(InstanceState, 0)
            for instance in fn.instances.values():
                counts[instance.state] += 1
            for state, count in counts.items():
                instances.add_metric([name, state.value], count)
            in_flight.add_metric([name], fn.route.in_flight)
            queued.add_metric([name], fn.route.queued)
            desired.add_metric([name], fn.decision.desired)
            provisioned.add_metric([name], fn.decision.provisioned)
            requests.add_metric([name], fn.route.requests)
        yield from (instances, in_flight, queued, desired, provisioned, requests)


class Metrics:
    def __init__(self, functions: Functions, llm_stats: LlmStats | None = None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(PlatformCollector(functions))
        if llm_stats is not None:  # counted by the OpenAI front door
            self.registry.register(LlmCollector(llm_stats))
        self.cold_start = Histogram(
            "torpor_cold_start_seconds",
            "Time from starting an instance to ready, by phase (spawn, initialize, total).",
            ["function", "phase"],
            buckets=COLD_START_BUCKETS_S,
            registry=self.registry,
        )

    def observe_cold_start(self, instance: Instance) -> None:
        for phase, seconds in instance.cold_start().items():
            if isinstance(seconds, float):
                self.cold_start.labels(instance.function, phase.removesuffix("_s")).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LlmCollector(Collector):
    """Tokens generated and time to first token per function (counted by the OpenAI front door)."""

    def __init__(self, stats: LlmStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        tokens = CounterMetricFamily("torpor_generated_tokens", "Tokens generated, by function.",
                                     labels=["function"])
        ttft = HistogramMetricFamily("torpor_time_to_first_token_seconds",
                                     "From the request's arrival to its first generated token.",
                                     labels=["function"])
        for name, stats in sorted(self.stats.by_function.items()):
            tokens.add_metric([name], stats.tokens)
            cumulative, buckets = 0, []
            for bound, count in zip((*TTFT_BUCKETS_S, float("inf")), stats.ttft_buckets, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            ttft.add_metric([name], buckets, stats.ttft_sum_s)
        yield from (tokens, ttft)
