"""Gradual rollout: pure. ``(config, state, counts, now) → (action, new state)``.

``torpor deploy --rollout 10,50,100 --every 60s`` gives the new revision 10 % of the traffic, then
50 % after 60 s, then 100 %. At every check the new revision's error rate since the rollout began
is compared with the old revision's over the same time: once the new one has answered
``min_requests`` and its rate exceeds the old one's by more than ``max_error_margin``, all traffic
goes back to the old revision at once (an automatic rollback) and the rollout ends.

An error is a 5xx answer, whether the instance or the gateway gave it (a failed cold start, a crash,
a timeout). The platform reads the counters of each revision's route and carries the actions out.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from torpor.errors import BadRequest

MAX_STEPS = 20


@dataclass(frozen=True)
class RolloutConfig:
    steps: tuple[int, ...]  # the new revision's percent at each step; the last is 100
    every_s: float  # time between two steps
    max_error_margin: float = 0.05  # the new error rate may exceed the old one by this much (0-1)
    min_requests: int = 10  # the new revision must have answered this many before it is judged

    @classmethod
    def parse(cls, steps: list[int], every_s: float, max_error_margin: float = 0.05,
              min_requests: int = 10) -> RolloutConfig:
        """Checked, with each error naming its field (``rollout.steps``, ...)."""
        if not steps or len(steps) > MAX_STEPS:
            raise BadRequest(f"rollout.steps: give 1 to {MAX_STEPS} percents, e.g. 10,50,100")
        if any(not 0 < s <= 100 for s in steps):
            raise BadRequest(f"rollout.steps: every step must be between 1 and 100, not {steps}")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise BadRequest(f"rollout.steps: the steps must increase, not {steps}")
        if steps[-1] != 100:
            raise BadRequest(f"rollout.steps: the last step must be 100, not {steps[-1]}")
        if not every_s > 0:
            raise BadRequest(f"rollout.every_s: must be above 0, not {every_s:g}")
        if not 0 <= max_error_margin <= 1:
            raise BadRequest(f"rollout.max_error_margin: must be between 0 and 1, not "
                             f"{max_error_margin:g}")
        if min_requests < 1:
            raise BadRequest(f"rollout.min_requests: must be at least 1, not {min_requests}")
        return cls(tuple(steps), every_s, max_error_margin, min_requests)

    @property
    def check_s(self) -> float:
        """How often the platform asks :func:`decide` (a few times per step, at least every 1 s)."""
        return min(1.0, self.every_s / 4)


@dataclass(frozen=True)
class Counts:
    requests: int = 0
    errors: int = 0

    def since(self, start: Counts) -> Counts:
        return Counts(max(0, self.requests - start.requests), max(0, self.errors - start.errors))

    @property
    def rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


Status = Literal["running", "done", "rolled_back"]


@dataclass(frozen=True)
class RolloutState:
    new: int  # the revision being rolled out
    old: int  # the revision it replaces (where an automatic rollback goes)
    started_at: float
    baseline: Mapping[int, Counts]  # each revision's counters when the rollout began
    step: int = 0
    step_started_at: float = 0.0
    status: Status = "running"
    reason: str = ""


@dataclass(frozen=True)
class Action:
    """What to do now: ``weights`` (the new revision's percent), ``rollback``, or nothing."""

    kind: Literal["wait", "weights", "rollback", "done"]
    percent: int = 0
    reason: str = ""


@dataclass(frozen=True)
class Rollout:
    """A rollout in progress: its config and state (and the timeline the platform records)."""

    config: RolloutConfig
    state: RolloutState
    timeline: tuple[dict[str, object], ...] = field(default=())

    @property
    def percent(self) -> int:
        """The new revision's share now."""
        if self.state.status == "rolled_back":
            return 0
        return self.config.steps[self.state.step]

    def to_api(self) -> dict[str, object]:
        c, s = self.config, self.state
        return {"new": s.new, "old": s.old, "status": s.status, "reason": s.reason,
                "percent": self.percent, "step": s.step, "steps": list(c.steps),
                "every_s": c.every_s, "max_error_margin": c.max_error_margin,
                "min_requests": c.min_requests, "started_at": s.started_at,
                "timeline": list(self.timeline)}


def start(config: RolloutConfig, new: int, old: int, counts: Mapping[int, Counts],
          now: float) -> Rollout:
    """The first step is applied at deploy; the clock of the first step starts now."""
    state = RolloutState(new=new, old=old, started_at=now, baseline=dict(counts),
                         step_started_at=now)
    return Rollout(config, state)


def decide(config: RolloutConfig, state: RolloutState, counts: Mapping[int, Counts],
           now: float) -> tuple[Action, RolloutState]:
    """One check: roll back on too many errors, else step on when the step's time is up."""
    if state.status != "running":
        return Action("wait"), state
    new = counts.get(state.new, Counts()).since(state.baseline.get(state.new, Counts()))
    old = counts.get(state.old, Counts()).since(state.baseline.get(state.old, Counts()))
    # e.g. new 12 errors / 24 = 50 %, old 0 / 80 = 0 %: 50 % > 0 % + 5 % → roll back
    if new.requests >= config.min_requests and new.rate > old.rate + config.max_error_margin:
        reason = (f"error rate {new.rate:.0%} ({new.errors}/{new.requests}) on revision "
                  f"{state.new} against {old.rate:.0%} ({old.errors}/{old.requests}) on revision "
                  f"{state.old}, above the margin of {config.max_error_margin:.0%}")
        return Action("rollback", reason=reason), replace(state, status="rolled_back",
                                                          reason=reason)
    if now - state.step_started_at < config.every_s:
        return Action("wait"), state
    if state.step + 1 >= len(config.steps):
        reason = (f"revision {state.new} took every step: error rate {new.rate:.0%} against "
                  f"{old.rate:.0%}")
        return Action("done", reason=reason), replace(state, status="done", reason=reason)
    step = state.step + 1
    return (Action("weights", percent=config.steps[step]),
            replace(state, step=step, step_started_at=now))


__all__ = ["Action", "Counts", "Rollout", "RolloutConfig", "RolloutState", "decide", "start"]
