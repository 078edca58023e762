"""``/metrics`` in the Prometheus text format.

Everything is read at scrape time from state the platform keeps anyway (no work on the request path
beyond the gateway's :class:`~torpor.gateway.request_stats.RequestStats` increments):

======================================  =========  ===================================================
series                                  type       labels
======================================  =========  ===================================================
torpor_requests_total                   counter    function (received by the gateway)
torpor_responses_total                  counter    function, code (499: the client left first)
torpor_request_duration_seconds         histogram  function, start (cold, warm, thawed; none: the
                                                   gateway answered itself, e.g. 503/504)
torpor_queued_requests                  gauge      function (queue depth now)
torpor_queue_wait_seconds               histogram  function (requests that had to wait)
torpor_in_flight_requests               gauge      function
torpor_instances                        gauge      function, state
torpor_desired_instances                gauge      function (the autoscaler's decision)
torpor_ready_instances                  gauge      function (ready or busy)
torpor_provisioned_target               gauge      function
torpor_panic_mode                       gauge      function (1 while the KPA is in panic mode)
torpor_cold_start_seconds               histogram  function, phase (spawn or fork, load, setup,
                                                   warmup, initialize, first_response, total)
torpor_thaw_seconds                     histogram  function
torpor_billed_seconds_total             counter    function, state (instance-seconds in the ledger)
torpor_cost_total                       counter    function, state, currency
torpor_gpu_memory_reserved_bytes        gauge      function (GPU functions only)
======================================  =========  ===================================================

Names and labels follow the Prometheus conventions (base units, ``_total`` counters);
``promtool check metrics`` reports nothing (tests/test_observability_live.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from torpor.clock import Clock
from torpor.gateway import request_stats
from torpor.gateway.llm_stats import TTFT_BUCKETS_S, LlmStats
from torpor.gateway.request_stats import RequestStats
from torpor.lifecycle.instance import FunctionRuntime, Instance
from torpor.lifecycle.state import InstanceState
from torpor.metering.prices import PriceTable
from torpor.metering.usage import UsageMeter


class Platform(Protocol):
    """What the metrics read of the platform (a protocol: the platform owns its metrics)."""

    @property
    def functions(self) -> Mapping[str, FunctionRuntime]: ...

    @property
    def prices(self) -> PriceTable: ...

    @property
    def clock(self) -> Clock: ...

    def template_memory(self) -> Mapping[str, int]:
        """function → bytes its template holds."""

COLD_START_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
THAW_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
MB = 1024 * 1024
_SERVING = (InstanceState.READY, InstanceState.BUSY)


def histogram_family(name: str, documentation: str, labels: list[str],
                     series: Iterator[tuple[list[str], request_stats.Histogram]]) -> Metric:
    """Our bucket counts as a Prometheus histogram (cumulative buckets, ``le`` in seconds)."""
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, histogram in series:
        cumulative, buckets = 0, []
        for bound, count in zip([*histogram.bounds, float("inf")], histogram.counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        family.add_metric(values, buckets, histogram.sum_s)
    return family


class PlatformCollector(Collector):
    def __init__(self, platform: Platform, requests: RequestStats, usage: UsageMeter) -> None:
        self.platform = platform
        self.requests = requests
        self.usage = usage

    def collect(self) -> Iterator[Metric]:
        fn_label = ["function"]
        instances = GaugeMetricFamily("torpor_instances", "Instances by function and state.",
                                      labels=["function", "state"])
        in_flight = GaugeMetricFamily("torpor_in_flight_requests", "Requests being served.",
                                      labels=fn_label)
        queued = GaugeMetricFamily("torpor_queued_requests", "Requests waiting for an instance.",
                                   labels=fn_label)
        desired = GaugeMetricFamily("torpor_desired_instances", "The autoscaler's desired count.",
                                    labels=fn_label)
        ready = GaugeMetricFamily("torpor_ready_instances", "Instances ready or busy.",
                                  labels=fn_label)
        provisioned = GaugeMetricFamily("torpor_provisioned_target", "Provisioned target.",
                                        labels=fn_label)
        panic = GaugeMetricFamily("torpor_panic_mode", "1 while the autoscaler is in panic mode.",
                                  labels=fn_label)
        received = CounterMetricFamily("torpor_requests", "Requests received by the gateway.",
                                       labels=fn_label)
        gpu = GaugeMetricFamily("torpor_gpu_memory_reserved_bytes",
                                "GPU memory reserved by live instances (GPU functions only).",
                                labels=fn_label)
        functions = self.platform.functions
        for name, fn in functions.items():
            counts = dict.fromkeys(InstanceState, 0)
            for instance in fn.instances.values():
                counts[instance.state] += 1
            for state, count in counts.items():
                instances.add_metric([name, state.value], count)
            in_flight.add_metric([name], fn.route.in_flight)
            queued.add_metric([name], fn.route.queued)
            desired.add_metric([name], fn.decision.desired)
            ready.add_metric([name], sum(counts[state] for state in _SERVING))
            provisioned.add_metric([name], fn.decision.provisioned)
            panic.add_metric([name], 1 if fn.decision.panic else 0)
            received.add_metric([name], fn.route.requests)
            if fn.spec.resources.gpu_memory_mb > 0:
                live = len(fn.live(current_only=False))
                gpu.add_metric([name], live * fn.spec.resources.gpu_memory_mb * MB)
        held = GaugeMetricFamily(
            "torpor_template_memory_bytes",
            "Memory held by a function's template and its spare (proportional set size).",
            labels=["function"])
        for name, size in self.platform.template_memory().items():
            held.add_metric([name], size)
        yield from (instances, in_flight, queued, desired, ready, provisioned, panic, received, gpu,
                    held)
        yield from self._requests()
        yield from self._usage()

    def _requests(self) -> Iterator[Metric]:
        responses = CounterMetricFamily("torpor_responses", "Responses by function and HTTP status.",
                                        labels=["function", "code"])
        for name, stats in sorted(self.requests.functions.items()):
            for code, count in sorted(stats.statuses.items()):
                responses.add_metric([name, str(code)], count)
        yield responses
        yield histogram_family(
            "torpor_request_duration_seconds",
            "Time from a request's arrival at the gateway to the end of its response, by start kind.",
            ["function", "start"],
            (([name, kind], histogram) for name, stats in sorted(self.requests.functions.items())
             for kind, histogram in stats.latency.items()),
        )
        yield histogram_family(
            "torpor_queue_wait_seconds", "Time requests waited in the queue for an instance.",
            ["function"],
            (([name], fn.route.queue_wait) for name, fn in sorted(self.platform.functions.items())),
        )

    def _usage(self) -> Iterator[Metric]:
        seconds = CounterMetricFamily("torpor_billed_seconds",
                                      "Instance-seconds recorded in the ledger, by state.",
                                      labels=["function", "state"])
        cost = CounterMetricFamily("torpor_cost", "Cost of those seconds at the price table.",
                                   labels=["function", "state", "currency"])
        currency = self.usage.prices.currency
        for (function, state), (billed_s, amount) in sorted(
                self.usage.totals(self.platform.clock.now()).items()):
            seconds.add_metric([function, state], billed_s)
            cost.add_metric([function, state, currency], float(amount))
        yield from (seconds, cost)


class Metrics:
    def __init__(self, platform: Platform) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestStats()
        self.usage = UsageMeter(platform.prices)
        self.registry.register(PlatformCollector(platform, self.requests, self.usage))
        self.cold_start = Histogram(
            "torpor_cold_start_seconds",
            "Cold start seconds by function and phase: spawn or fork (start to listening), load, "
            "setup, warmup (as the runtime measured them), initialize (listening to ready), "
            "total (start to ready).",
            ["function", "phase"],
            buckets=COLD_START_BUCKETS_S,
            registry=self.registry,
        )
        self.thaw = Histogram("torpor_thaw_seconds", "Time to thaw a frozen instance.", ["function"],
                              buckets=THAW_BUCKETS_S, registry=self.registry)

    def observe_cold_start(self, instance: Instance) -> None:
        for phase, seconds in instance.cold_start().items():
            if isinstance(seconds, float):
                self.cold_start.labels(instance.function, phase.removesuffix("_s")).observe(seconds)

    def observe_thaw(self, instance: Instance, seconds: float) -> None:
        self.thaw.labels(instance.function).observe(seconds)

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
