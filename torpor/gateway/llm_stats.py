"""LLM signals per function, counted by the OpenAI front door: tokens generated, time to first token.

Plain counters and fixed histogram buckets, updated on the event loop with no allocation per token;
``/metrics`` reads them at scrape time (:class:`torpor.api.metrics.LlmCollector`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class FunctionLlmStats:
    tokens: int = 0
    ttft_count: int = 0
    ttft_sum_s: float = 0.0
    ttft_buckets: list[int] = field(default_factory=lambda: [0] * (len(TTFT_BUCKETS_S) + 1))


class LlmStats:
    def __init__(self) -> None:
        self.by_function: dict[str, FunctionLlmStats] = {}

    def record(self, function: str, tokens: int, ttft_s: float | None) -> None:
        stats = self.by_function.get(function)
        if stats is None:
            stats = self.by_function[function] = FunctionLlmStats()
        stats.tokens += tokens
        if ttft_s is not None:
            stats.ttft_count += 1
            stats.ttft_sum_s += ttft_s
            stats.ttft_buckets[bisect.bisect_left(TTFT_BUCKETS_S, ttft_s)] += 1
