"""A scaling policy for millisecond cold starts: one instance per request in the system *now*, and a
keep-alive per instance sized from the function's own cold-start time (``scaling.policy:
keepalive``; ``auto``, the default, runs it while the function's cold starts are fast).

Knative's KPA averages a 60 s window because its cold starts cost seconds; torpor's cost ~12 ms, so
the windows mostly buy idle instance-seconds (issue 18: instances busy 31 % of the time they
existed on an Azure LLM trace window). This policy asks for what is in the system now (one instance
per ``concurrency`` requests in flight or queued: a queued request starts an instance at once,
without waiting for an average to move) and lets each instance go once it has been idle for the
keep-alive, on its own clock: the planner drains only instances idle that long
(``ScaleDecision.keep_idle_s``), and the gateway's routing (ties to the earliest endpoint) packs
requests onto the same instances, so the surplus ones really go idle.

The keep-alive is the ski-rental break-even. Keeping an idle instance costs 1 instance-second per
second ("rent"); letting it go and paying a cold start later costs the start itself plus the wait of
the request that triggers it ("buy"), priced at ``COLD_START_PRICE`` instance-seconds per second of
cold start. Keeping an idle instance until the rent paid equals the buy price,

    keep_alive_s = COLD_START_PRICE × cold_start_s      e.g. 10 × 0.040 s = 0.4 s,

never costs more than twice the best choice made with hindsight (the deterministic ski-rental
bound), whatever the arrival pattern. It is clamped to [KEEP_ALIVE_MIN_S, KEEP_ALIVE_MAX_S] and,
before any cold start was measured, is KEEP_ALIVE_UNMEASURED_S; ``scaling.keep_alive_s`` fixes it.

Starts are bounded: an instance starts only for a request that found no free slot, and lives at
least its cold start plus the keep-alive before it may be drained, so one function starts at most
``max_instances × 60 / (cold_start_s + keep_alive_s)`` instances a minute (:func:`starts_bound`).

Pure: the caller passes the requests in the system and the measured cold start; nothing here reads
a clock.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

from torpor.autoscaling.metrics import SPELL_LEVELS
from torpor.spec import ScalingSpec

COLD_START_PRICE = 10.0  # instance-seconds one second of cold start is worth (start + the wait)
KEEP_ALIVE_MIN_S = 0.25  # no shorter: the reconciler's passes and a stop take tens of ms
KEEP_ALIVE_MAX_S = 600.0  # the industry's fixed 10 minutes is the most it ever keeps
KEEP_ALIVE_UNMEASURED_S = 2.0  # before the first cold start of this function was measured
COLD_STARTS_KEPT = 9  # the cold starts whose median is the function's typical one
AUTO_KPA_ABOVE_S = 1.0  # policy auto: the KPA once the function's typical cold start is longer
WARM_QUANTILE = 0.99  # the last instance outlives this share of the function's idle spells
WARM_MIN_GAPS = 10  # idle spells seen before their quantile is trusted


class InSystem(Protocol):
    """What the policy reads; ``metrics.ConcurrencyRecorder`` implements it."""

    @property
    def current(self) -> int: ...

    def idle_spells(self, level: int) -> Sequence[float]: ...

    def idle_spell_quantiles(self, levels: range, q: float, at_least: int) -> tuple[float | None, ...]: ...


@dataclass(frozen=True)
class KeepAliveConfig:
    concurrency: int  # requests one instance takes at a time
    min_instances: int
    max_instances: int
    keep_alive_s: float | None = None  # None: from the measured cold start
    auto: bool = False  # scaling.policy auto: the KPA decides while cold starts are slow
    # the last instance's keep-alive until WARM_MIN_GAPS idle spells were seen: the KPA's stable
    # window (scaling.stable_window_s), so a function's first calls behave as they would there
    warm_unmeasured_s: float = 60.0
    # the idle-spell level of each instance rank that has a warm keep-alive: k × concurrency + 1
    warm_levels: range = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    @classmethod
    def from_spec(cls, scaling: ScalingSpec, concurrency: int) -> KeepAliveConfig | None:
        """The policy's knobs, or None when the spec asks for the KPA."""
        if scaling.policy == "kpa":
            return None
        return cls(concurrency, scaling.min_instances, scaling.max_instances, scaling.keep_alive_s,
                   auto=scaling.policy == "auto", warm_unmeasured_s=scaling.stable_window_s)

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
        ranks = min(self.max_instances, SPELL_LEVELS // self.concurrency)
        object.__setattr__(self, "warm_levels",
                           range(1, ranks * self.concurrency + 1, self.concurrency))
        object.__setattr__(self, "_hash", hash((
            self.concurrency, self.min_instances, self.max_instances, self.keep_alive_s, self.auto,
            self.warm_unmeasured_s)))

    def __hash__(self) -> int:  # the fields' hash, worked out once (decide's cache key)
        return self._hash


@dataclass(frozen=True)
class KeepAliveDecision:
    desired: int
    keep_alive_s: float  # each instance's: drained once idle this long
    # per instance in routing order (the first is the function's last instance): its warm
    # keep-alive, from its own idle spells (those past the tuple: keep_alive_s)
    keep_warm_s: tuple[float, ...]
    reason: str


def _quantiles(config: KeepAliveConfig, window: InSystem) -> tuple[float | None, ...]:
    """The WARM_QUANTILE of each rank's idle spells (None: too few seen yet): in routing order the
    k-th instance is idle exactly while fewer than (k − 1) × concurrency + 1 requests are in the
    system, so its idle spells are that level's."""
    return window.idle_spell_quantiles(config.warm_levels, WARM_QUANTILE, WARM_MIN_GAPS)


@lru_cache(maxsize=1024)
def _warm_from(quantiles: tuple[float | None, ...], keep_alive_s: float,
               unmeasured_s: float) -> tuple[float, ...]:
    """Each instance's warm keep-alive in routing order, from its rank's quantile. Until its spells
    are known the first keeps ``unmeasured_s``, the others the keep-alive."""
    return tuple(warm_keep_alive(q, keep_alive_s, unmeasured_s if k == 0 else keep_alive_s)
                 for k, q in enumerate(quantiles))


def warm_keep_alive(quantile: float | None, keep_alive_s: float, unmeasured_s: float) -> float:
    """How long an instance stays once idle, from its own idle spells: their WARM_QUANTILE
    (Shahrad et al.'s histogram keep-alive), so that few requests find it gone, e.g. 30 spells of
    1-30 s → 30 s. Never under the keep-alive (nor above KEEP_ALIVE_MAX_S); ``quantile`` None
    (fewer than WARM_MIN_GAPS spells seen): ``unmeasured_s``."""
    if quantile is None:
        return max(keep_alive_s, unmeasured_s)
    return min(max(quantile, keep_alive_s), KEEP_ALIVE_MAX_S)


def cold_starts_fast(cold_start_s: float | None) -> bool:
    """Whether ``auto`` runs the keep-alive policy: no cold start measured yet (torpor's own take
    milliseconds), or the typical one at most AUTO_KPA_ABOVE_S."""
    return cold_start_s is None or cold_start_s <= AUTO_KPA_ABOVE_S


def resolve(policy: str, cold_start_s: float | None) -> tuple[str, str]:
    """The policy that runs and why: ``auto`` is ``keepalive`` while the function's typical cold
    start (the median of its last ones) is at most AUTO_KPA_ABOVE_S (or none was measured yet:
    torpor's own take milliseconds), the KPA above it (its windows suit slow starts). E.g.
    ("auto", 0.015) → keepalive."""
    if policy != "auto":
        return policy, "scaling.policy in the spec"
    if cold_start_s is None:
        return "keepalive", "the default auto: no cold start measured yet"
    fast = cold_starts_fast(cold_start_s)
    return ("keepalive" if fast else "kpa",
            f"the default auto: cold starts take {_ms(cold_start_s)}, "
            f"{'at most' if fast else 'over'} {AUTO_KPA_ABOVE_S:g} s")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def keep_alive_for(config: KeepAliveConfig, cold_start_s: float | None) -> tuple[float, str]:
    """The keep-alive and where it came from: e.g. 0.040 s cold starts → 10 × 0.040 = 0.4 s."""
    if config.keep_alive_s is not None:
        return config.keep_alive_s, "scaling.keep_alive_s"
    if cold_start_s is None:
        return KEEP_ALIVE_UNMEASURED_S, "no cold start measured yet"
    raw = COLD_START_PRICE * cold_start_s
    keep = min(max(raw, KEEP_ALIVE_MIN_S), KEEP_ALIVE_MAX_S)
    return keep, f"{COLD_START_PRICE:g} × {_ms(cold_start_s)} cold start"


def starts_bound(config: KeepAliveConfig, keep_alive_s: float, cold_start_s: float | None) -> float:
    """Most starts a minute: each instance lives its cold start plus the keep-alive at least, e.g.
    10 instances, 20 ms starts, 0.5 s keep-alive → 10 × 60 / 0.52 ≈ 1154 (traffic sets far fewer)."""
    return config.max_instances * 60 / ((cold_start_s or 0.0) + keep_alive_s)


class ColdStarts:
    """A revision's last COLD_STARTS_KEPT cold starts (start → ready); :attr:`typical` is their
    median, so one slow start (the first one spawns and loads what later forks share; a busy
    machine's outlier) does not move the keep-alive: e.g. 0.8, 0.02, 0.03 s → 0.03 s."""

    def __init__(self) -> None:
        self._recent: deque[float] = deque(maxlen=COLD_STARTS_KEPT)
        self._typical: float | None = None

    def observe(self, seconds: float) -> float:
        """Record one cold start; returns the new typical one."""
        recent = self._recent
        if (len(recent) == COLD_STARTS_KEPT and recent[0] == seconds and seconds != 0
                and self._typical is not None):
            recent.append(seconds)  # it replaces an equal one: the same median
            return self._typical
        recent.append(seconds)
        typical = self._typical = statistics.median(recent)
        return typical

    @property
    def typical(self) -> float | None:
        return self._typical


def instances_for(in_system: int, config: KeepAliveConfig) -> int:
    """One instance per ``concurrency`` requests in the system: e.g. 5 at concurrency 2 → 3."""
    return math.ceil(in_system / config.concurrency) if in_system > 0 else 0


def decide(config: KeepAliveConfig, window: InSystem, cold_start_s: float | None) -> KeepAliveDecision:
    """Instances for the requests in the system now, within bounds; more stay while idle for less
    than the keep-alive (the planner drains only instances idle that long).

    The decision is a function of what it reads (the requests in the system, the cold start, the
    idle spells' quantiles and count), so the same reads give the same decision, made once: the
    reconciler asks on every pass, and most passes read what the last one did."""
    if config.keep_alive_s is not None:
        return _decide(config, window.current, cold_start_s, (), 0)
    return _decide(config, window.current, cold_start_s, _quantiles(config, window),
                   len(window.idle_spells(1)))


@lru_cache(maxsize=4096)
def _decide(config: KeepAliveConfig, in_system: int, cold_start_s: float | None,
            quantiles: tuple[float | None, ...], spells: int) -> KeepAliveDecision:
    keep_s, source = keep_alive_for(config, cold_start_s)
    warm = _warm_from(quantiles, keep_s, config.warm_unmeasured_s) if quantiles else ()
    needed = instances_for(in_system, config)
    desired = min(max(needed, config.min_instances), config.max_instances)
    reason = f"keepalive, {in_system} in system; idle instances kept {keep_s:.2f} s ({source})"
    if warm:
        why = (f"p{WARM_QUANTILE * 100:g} of its last {spells} idle spells" if spells >= WARM_MIN_GAPS
               else f"{spells} idle spells seen, fewer than {WARM_MIN_GAPS}")
        reason += f", the last to go {warm[0]:.2f} s ({why})"
    if desired != needed:
        edge = "min_instances" if desired > needed else "max_instances"
        reason += f"; {edge} {desired}"
    return KeepAliveDecision(desired, keep_s, warm, reason)
