"""A scaling policy for millisecond cold starts: instances per request in the system, each kept
warm for a keep-alive sized from the function's own cold-start time (``scaling.policy: keepalive``).

Knative's KPA averages a 60 s window because its cold starts cost seconds; torpor's cost ~12 ms, so
the windows mostly buy idle instance-seconds (issue 18: instances busy 31 % of the time they
existed on an Azure LLM trace window). This policy instead asks for what is in the system *now*
(one instance per ``concurrency`` requests in flight or queued: a queued request starts an instance
at once, without waiting for an average to move) and keeps that many for the keep-alive after the
peak has passed.

The keep-alive is the ski-rental break-even. Keeping an idle instance costs 1 instance-second per
second ("rent"); letting it go and paying a cold start later costs the start itself plus the wait of
the request that triggers it ("buy"), priced at ``COLD_START_PRICE`` instance-seconds per second of
cold start. Keeping an idle instance until the rent paid equals the buy price,

    keep_alive_s = COLD_START_PRICE × cold_start_s      e.g. 200 × 0.012 s = 2.4 s,

never costs more than twice the best choice made with hindsight (the deterministic ski-rental
bound), whatever the arrival pattern. It is clamped to [KEEP_ALIVE_MIN_S, KEEP_ALIVE_MAX_S] and,
before any cold start was measured, is KEEP_ALIVE_UNMEASURED_S; ``scaling.keep_alive_s`` fixes it.

Pure: the caller passes the peak of the window, ``now`` and the measured cold start; nothing here
reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from torpor.spec import ScalingSpec

COLD_START_PRICE = 200.0  # instance-seconds one second of cold start is worth (start + the wait)
KEEP_ALIVE_MIN_S = 1.0  # the recorder's resolution: one 1 s bucket
KEEP_ALIVE_MAX_S = 600.0  # the industry's fixed 10 minutes is the most it ever keeps (+1 s bucket)
KEEP_ALIVE_UNMEASURED_S = 10.0  # before the first cold start of this function was measured
COLD_START_WEIGHT = 0.2  # each new cold start's weight in the running mean (the last ~5 count)


class PeakWindow(Protocol):
    """What the policy reads; ``metrics.ConcurrencyRecorder`` implements it."""

    def window_peak(self, now: float, window_s: float) -> int: ...


@dataclass(frozen=True)
class KeepAliveConfig:
    concurrency: int  # requests one instance takes at a time
    min_instances: int
    max_instances: int
    keep_alive_s: float | None = None  # None: from the measured cold start

    @classmethod
    def from_spec(cls, scaling: ScalingSpec, concurrency: int) -> KeepAliveConfig | None:
        """The policy's knobs, or None when the spec asks for another policy."""
        if scaling.policy != "keepalive":
            return None
        return cls(concurrency, scaling.min_instances, scaling.max_instances, scaling.keep_alive_s)

    def __post_init__(self) -> None:
        checks = {
            "concurrency": self.concurrency >= 1,
            "min_instances": 0 <= self.min_instances <= self.max_instances,
            "max_instances": self.max_instances >= 1,
            "keep_alive_s": self.keep_alive_s is None or self.keep_alive_s >= KEEP_ALIVE_MIN_S,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid keep-alive config: {', '.join(bad)} ({self})")


@dataclass(frozen=True)
class KeepAliveDecision:
    desired: int
    keep_alive_s: float
    reason: str


def keep_alive_for(config: KeepAliveConfig, cold_start_s: float | None) -> tuple[float, str]:
    """The keep-alive and where it came from: e.g. 0.012 s cold starts → 200 × 0.012 = 2.4 s."""
    if config.keep_alive_s is not None:
        return config.keep_alive_s, "scaling.keep_alive_s"
    if cold_start_s is None:
        return KEEP_ALIVE_UNMEASURED_S, "no cold start measured yet"
    raw = COLD_START_PRICE * cold_start_s
    keep = min(max(raw, KEEP_ALIVE_MIN_S), KEEP_ALIVE_MAX_S)
    return keep, f"{COLD_START_PRICE:g} × {cold_start_s * 1000:.0f} ms cold start"


def mean_cold_start(previous_s: float | None, observed_s: float) -> float:
    """Running mean of a function's cold starts: e.g. 0.8 × 12 ms + 0.2 × 22 ms = 14 ms."""
    if previous_s is None:
        return observed_s
    return (1 - COLD_START_WEIGHT) * previous_s + COLD_START_WEIGHT * observed_s


def instances_for(in_system: int, config: KeepAliveConfig) -> int:
    """One instance per ``concurrency`` requests in the system: e.g. 5 at concurrency 2 → 3."""
    return math.ceil(in_system / config.concurrency) if in_system > 0 else 0


def decide(
    config: KeepAliveConfig, window: PeakWindow, now: float, cold_start_s: float | None
) -> KeepAliveDecision:
    """Instances for the most requests in the system within the last keep-alive, within bounds.

    The recorder's window is whole seconds back from the current one, so it looks back between
    n − 1 and n seconds for n buckets; asking for keep_s + 1 looks back at least keep_s (e.g. 2.4 s:
    4 buckets, 3 to 4 s)."""
    keep_s, source = keep_alive_for(config, cold_start_s)
    peak = window.window_peak(now, keep_s + 1)
    needed = instances_for(peak, config)
    desired = min(max(needed, config.min_instances), config.max_instances)
    reason = f"keepalive, peak {peak} in system over the last {keep_s:.1f} s ({source})"
    if desired != needed:
        edge = "min_instances" if desired > needed else "max_instances"
        reason += f"; {edge} {desired}"
    return KeepAliveDecision(desired, keep_s, reason)
