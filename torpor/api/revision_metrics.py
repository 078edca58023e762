"""Per-revision series for ``/metrics``: traffic share, instances, requests and errors.

Kept apart from the per-function collector in ``metrics.py``; both read the same functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from torpor.lifecycle.instance import FunctionRuntime


class RevisionCollector(Collector):
    def __init__(self, functions: Callable[[], Mapping[str, FunctionRuntime]]) -> None:
        self.functions = functions

    def collect(self) -> Iterator[Metric]:
        labels = ["function", "revision"]
        percent = GaugeMetricFamily("torpor_revision_traffic_percent",
                                    "Share of the function's untagged traffic.", labels=labels)
        instances = GaugeMetricFamily("torpor_revision_instances",
                                      "Live instances (starting, serving or frozen).", labels=labels)
        requests = CounterMetricFamily("torpor_revision_requests",
                                       "Requests routed to the revision.", labels=labels)
        errors = CounterMetricFamily("torpor_revision_errors",
                                     "Requests the revision answered with a 5xx (it or the gateway).",
                                     labels=labels)
        for name, fn in self.functions().items():
            weights = fn.config.weights
            for number, rev in sorted(fn.revisions.items()):
                values = [name, str(number)]
                percent.add_metric(values, weights.get(number, 0))
                instances.add_metric(values, len(fn.live(number)))
                requests.add_metric(values, rev.route.requests)
                errors.add_metric(values, rev.route.errors)
        yield from (percent, instances, requests, errors)
