"""Gradual rollouts in progress: one task per function asks the pure :func:`torpor.lifecycle.rollout.
decide` every ``check_s`` and moves the traffic through the platform. It only acts.

A deploy, a split set by hand or a rollback cancels the rollout in progress; the last rollout of
each function (with its timeline: time, split, requests and errors per revision) stays readable
until the server stops. A rollout does not survive a restart: the split it reached stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

from torpor.clock import Clock
from torpor.errors import NotFound
from torpor.gateway.traffic import TrafficConfig
from torpor.lifecycle import rollout
from torpor.lifecycle.instance import FunctionRuntime
from torpor.lifecycle.rollout import Counts, Rollout, RolloutConfig
from torpor.store import Store

log = logging.getLogger(__name__)


class TrafficMover(Protocol):
    """What a rollout needs of the platform."""

    clock: Clock
    store: Store

    @property
    def functions(self) -> Mapping[str, FunctionRuntime]: ...

    async def move(self, fn: FunctionRuntime, config: TrafficConfig, why: str) -> dict[str, Any]: ...


def counts(fn: FunctionRuntime) -> dict[int, Counts]:
    """Requests and 5xx answers so far, per revision held in memory."""
    return {n: Counts(r.route.requests, r.route.errors) for n, r in fn.revisions.items()}


class Rollouts:
    def __init__(self, platform: TrafficMover) -> None:
        self.platform = platform
        self.last: dict[str, Rollout] = {}  # each function's last rollout
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # the last counts seen per revision: a revision that scaled to zero and was forgotten
        # (the old one at 100 %) keeps its numbers
        self._seen: dict[str, dict[int, Counts]] = {}

    def _counts(self, fn: FunctionRuntime) -> dict[int, Counts]:
        seen = self._seen.setdefault(fn.name, {})
        seen.update(counts(fn))
        return dict(seen)

    def start(self, fn: FunctionRuntime, config: RolloutConfig, new: int, old: int) -> None:
        """The first step is already in place (the deploy set it); step on from here."""
        self._seen[fn.name] = {}
        started = rollout.start(config, new, old, self._counts(fn), self.platform.clock.now())
        self.last[fn.name] = self._with_entry(fn, started, "started")
        task = asyncio.create_task(self._run(fn.name), name=f"rollout {fn.name}")
        self._tasks[fn.name] = task
        task.add_done_callback(lambda t: self._tasks.pop(fn.name, None)
                               if self._tasks.get(fn.name) is t else None)

    def cancel(self, name: str) -> None:
        """A deploy, a hand-set split or a rollback ends a rollout in progress."""
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            current = self.last.get(name)
            if current is not None and current.state.status == "running":
                self.last[name] = replace(current, state=replace(
                    current.state, status="done", reason="cancelled by a deploy or a traffic change"))

    def cancel_all(self) -> None:
        for name in list(self._tasks):
            self.cancel(name)

    def describe(self, name: str) -> dict[str, Any]:
        current = self.last.get(name)
        if current is None:
            raise NotFound(f"function {name!r} has no rollout since the server started")
        return current.to_api()

    def _with_entry(self, fn: FunctionRuntime, current: Rollout, what: str) -> Rollout:
        """``current`` with one more timeline entry: when, the split, and requests and errors per
        revision since the rollout began."""
        state = current.state
        now_counts = self._counts(fn)
        entry: dict[str, object] = {
            "t_s": round(self.platform.clock.now() - state.started_at, 3), "event": what,
            "weights": fn.config.to_json()["weights"],
        }
        for number in (state.old, state.new):
            since = now_counts.get(number, Counts()).since(state.baseline.get(number, Counts()))
            entry[f"revision_{number}"] = {"requests": since.requests, "errors": since.errors}
        return replace(current, timeline=(*current.timeline, entry))

    async def _run(self, name: str) -> None:
        try:
            await self._loop(name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the rollout of %s failed", name)

    async def _loop(self, name: str) -> None:
        platform, clock = self.platform, self.platform.clock
        while True:
            current = self.last[name]
            await clock.sleep(current.config.check_s)
            fn = platform.functions.get(name)
            if fn is None:
                return
            state = current.state
            action, new_state = rollout.decide(current.config, state, self._counts(fn),
                                               clock.now())
            current = replace(current, state=new_state)
            tags = dict(fn.config.tags)
            if action.kind == "weights":
                weights = {state.old: 100 - action.percent, state.new: action.percent}
                await platform.move(fn, TrafficConfig(weights, tags),
                                    f"rollout of revision {state.new} at {action.percent}%")
            elif action.kind == "rollback":
                await platform.move(fn, TrafficConfig.only(state.old, tags),
                                    f"rollout of revision {state.new} rolled back automatically: "
                                    f"{action.reason}")
            elif action.kind == "done":
                await platform.store.run(platform.store.add_event, name, clock.now(), "rollout",
                                         f"rollout of revision {state.new} done: {action.reason}")
            if action.kind != "wait":
                current = self._with_entry(fn, current, action.kind)
            self.last[name] = current
            if new_state.status != "running":
                return
