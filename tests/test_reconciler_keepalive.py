"""The reconciler passes when an instance's keep-alive ends, however the passes fell before it.

A pass sets its next wake-up only for instances idle at that pass; one that went idle just after a
pass was kept until the next (up to RECONCILE_INTERVAL_S later): idle 0.25-0.5 s under a 0.25 s
keep-alive, and 10 % fewer cold starts on an Azure LLM trace than the policy (and the simulator)
gives. The gateway now tells the reconciler when an endpoint goes idle, and it times a pass for
that endpoint's keep-alive end. The timer is asyncio's (real, at most 0.3 s here); the clock is a
FakeClock, so ``idle_since`` and the keep-alive's end are exact.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from torpor.autoscaling.autoscaler import ScaleDecision
from torpor.backends import CodeRef, RevisionPlan
from torpor.clock import FakeClock
from torpor.gateway.route import Endpoint
from torpor.lifecycle.instance import RevisionRuntime
from torpor.lifecycle.reconciler import Reconciler
from torpor.spec import parse_spec
from torpor.store import Store


class _Backend:
    """Only what installing a revision asks of a backend (no instance is started here)."""

    name = "stub"

    def __init__(self) -> None:
        self.pool_priorities = {"local": 0}

    def prepare(self, plan: RevisionPlan) -> None:
        return None


def _revision(tmp_path: Path, clock: FakeClock) -> tuple[Reconciler, RevisionRuntime, Store]:
    store = Store(tmp_path / "torpor.db")
    reconciler = Reconciler(store, clock, _Backend())  # type: ignore[arg-type]
    spec = parse_spec({"name": "fn", "runtime": {"command": ["true"]}}, source="t",
                      base_dir=tmp_path)
    fn = reconciler.apply(spec, 1, CodeRef("0" * 64, tmp_path), "t", 1000.0, 1000.0)
    reconciler._wake.clear()  # the deploy's own poke: the loop is not running here
    return reconciler, fn.revisions[1], store


def _keep_alive(seconds: float | None) -> ScaleDecision:
    return ScaleDecision(1, 0, False, "test", keep_idle_s=seconds, keep_warm_s=(60.0,))


async def _woken_within(reconciler: Reconciler, seconds: float) -> bool:
    try:
        await asyncio.wait_for(reconciler._wake.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def test_a_pass_when_the_keep_alive_of_an_instance_idle_since_the_last_pass_ends(
        tmp_path: Path) -> None:
    """Timeline (FakeClock at 1000): the loop sleeps until 1000.5; an endpoint goes idle at 1000.0
    with a 0.25 s keep-alive: a pass is timed for 1000.25 (not 1000.5), and comes then, not before."""
    clock = FakeClock(1000.0)
    reconciler, rev, store = _revision(tmp_path, clock)
    reconciler._sleep_until = 1000.5
    rev.decision = _keep_alive(0.25)
    endpoint = Endpoint("fn-1-a", 1, client=None, ready_at=clock.now())  # type: ignore[arg-type]
    rev.route.add_endpoint(endpoint)  # ready with nothing to do: idle from 1000.0
    assert reconciler._keep_alive_timer_at == 1000.25
    assert not await _woken_within(reconciler, 0.15)
    assert await _woken_within(reconciler, 0.3)
    assert reconciler._keep_alive_timer_at == float("inf")  # spent
    store.close()


async def test_no_pass_timed_when_one_comes_by_then_or_under_the_kpa(tmp_path: Path) -> None:
    """The loop already passes by the keep-alive's end, or an earlier timer is set (the pass it
    brings times the later ends), or the KPA decides (no keep-alive): nothing is timed."""
    clock = FakeClock(1000.0)
    reconciler, rev, store = _revision(tmp_path, clock)
    cases: list[tuple[float, ScaleDecision, float]] = [
        (1000.2, _keep_alive(0.25), float("inf")),  # the loop wakes at 1000.2 anyway
        (1000.5, _keep_alive(None), float("inf")),  # the KPA: no keep-alive to time
    ]
    for n, (sleep_until, decision, expected) in enumerate(cases):
        reconciler._sleep_until = sleep_until
        rev.decision = decision
        rev.route.add_endpoint(Endpoint(f"fn-1-{n}", 1, client=None,  # type: ignore[arg-type]
                                        ready_at=clock.now()))
        assert reconciler._keep_alive_timer_at == expected, n
    reconciler._sleep_until = 1000.5
    rev.decision = _keep_alive(0.25)
    rev.route.add_endpoint(Endpoint("fn-1-x", 1, client=None, ready_at=1000.0))  # type: ignore[arg-type]
    clock.advance(0.1)
    rev.route.add_endpoint(Endpoint("fn-1-y", 1, client=None, ready_at=1000.1))  # type: ignore[arg-type]
    assert reconciler._keep_alive_timer_at == 1000.25  # the earlier end kept
    assert reconciler._keep_alive_timer is not None
    reconciler._keep_alive_timer.cancel()
    store.close()
