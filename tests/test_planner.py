"""The reconcile planner: a snapshot of instances and a decision in, a plan out (pure, no I/O)."""

from __future__ import annotations

from typing import Any

from torpor.autoscaling.autoscaler import ScaleDecision
from torpor.clock import FakeClock
from torpor.lifecycle.planner import Drain, FunctionView, InstanceView, Plan, Start, plan
from torpor.lifecycle.state import InstanceState

READY, BUSY, STARTING, FROZEN = (InstanceState.READY, InstanceState.BUSY, InstanceState.STARTING,
                                 InstanceState.FROZEN)


def make_instance(id: str, started_at: float, state: InstanceState = READY, **overrides: Any
                  ) -> InstanceView:
    values: dict[str, Any] = {"revision": 1, "ready_at": started_at + 0.01, "idle_since": started_at}
    if state == STARTING:
        values.update(ready_at=None, idle_since=None)
    return InstanceView(id=id, state=state, started_at=started_at, **{**values, **overrides})


def make_view(*instances: InstanceView, **overrides: Any) -> FunctionView:
    return FunctionView(**{"revision": 1, "instances": tuple(instances), **overrides})


def decision(desired: int, provisioned: int = 0) -> ScaleDecision:
    return ScaleDecision(desired=desired, provisioned=provisioned, panic=False, reason="test")


class TestScaleOut:
    def test_from_zero(self) -> None:
        """Nothing live and 2 wanted: two starts, none provisioned."""
        assert plan(make_view(), decision(2), now=0.0) == Plan(start=(Start(False), Start(False)))

    def test_first_starts_are_provisioned_until_the_count(self) -> None:
        """One provisioned instance exists, 2 of 4 are provisioned: the first new one is too."""
        view = make_view(make_instance("a", 0.0))
        result = plan(view, decision(4, provisioned=2), now=1.0)
        assert result.provisioned == frozenset({"a"})
        assert result.start == (Start(True), Start(False), Start(False))

    def test_backoff_starts_nothing(self) -> None:
        """In a cold-start backoff the plan waits."""
        assert plan(make_view(in_backoff=True), decision(3), now=0.0).start == ()

    def test_starts_carry_the_pools_in_order(self) -> None:
        """Each start names the function's acceptable pools, best first."""
        view = make_view(pools=("onprem", "cloud"))
        assert plan(view, decision(1), now=0.0).start == (Start(False, ("onprem", "cloud")),)


class TestScaleIn:
    def test_newest_idle_goes_first(self) -> None:
        """3 ready, 1 wanted: the two newest drain, the oldest stays."""
        clock = FakeClock()
        view = make_view(make_instance("old", clock.now()), make_instance("mid", clock.now() + 1),
                         make_instance("new", clock.now() + 2))
        clock.advance(10)
        assert plan(view, decision(1), clock.now()).drain == (Drain("new", "scale in"),
                                                              Drain("mid", "scale in"))

    def test_busy_and_starting_are_never_victims(self) -> None:
        """Only idle (READY or FROZEN) instances are drained, even if fewer than the surplus."""
        view = make_view(make_instance("busy", 0.0, BUSY, in_flight=1),
                         make_instance("starting", 1.0, STARTING),
                         make_instance("idle", 2.0))
        assert plan(view, decision(0), now=5.0).drain == (Drain("idle", "scale in"),)

    def test_on_demand_before_provisioned(self) -> None:
        """An on-demand instance drains before the provisioned one."""
        view = make_view(make_instance("p", 0.0), make_instance("od", 1.0))
        result = plan(view, decision(1, provisioned=1), now=5.0)
        assert result.provisioned == frozenset({"p"})
        assert result.drain == (Drain("od", "scale in"),)

    def test_lowest_priority_pool_first_then_newest(self) -> None:
        """Seed 004: cloud (priority 1) instances go before on-prem (10) ones, newest first."""
        view = make_view(make_instance("onprem-1", 0.0, pool_priority=10),
                         make_instance("onprem-2", 1.0, pool_priority=10),
                         make_instance("cloud-1", 2.0, pool_priority=1),
                         make_instance("cloud-2", 3.0, pool_priority=1))
        assert [d.instance_id for d in plan(view, decision(1), now=9.0).drain] == [
            "cloud-2", "cloud-1", "onprem-2"]

    def test_instances_mid_freeze_are_left_alone(self) -> None:
        """An instance freezing or thawing is not picked as a victim."""
        view = make_view(make_instance("a", 0.0), make_instance("b", 1.0, idle_transition=True))
        assert plan(view, decision(1), now=5.0).drain == (Drain("a", "scale in"),)


class TestIdleMode:
    def test_timeline(self) -> None:
        """A provisioned instance freezes once idle for idle_after_s, not a moment before."""
        clock = FakeClock(100.0)
        instance = make_instance("p", 0.0, idle_since=clock.now())
        view = make_view(instance, idle_mode=True, idle_after_s=30.0)
        clock.advance(29.9)
        assert plan(view, decision(1, provisioned=1), clock.now()).freeze == ()
        clock.advance(0.1)
        assert plan(view, decision(1, provisioned=1), clock.now()).freeze == ("p",)

    def test_on_demand_and_busy_never_freeze(self) -> None:
        """Only provisioned, READY, idle instances freeze; idle mode off freezes nothing."""
        view = make_view(make_instance("p", 0.0, BUSY, in_flight=1), make_instance("od", 1.0),
                         idle_mode=True, idle_after_s=0.0)
        assert plan(view, decision(2, provisioned=1), now=50.0).freeze == ()
        off = make_view(make_instance("p", 0.0))
        assert plan(off, decision(1, provisioned=1), now=50.0).freeze == ()


class TestRevisions:
    def test_old_revision_drains_once_the_new_one_serves(self) -> None:
        """Revision 2 starting: revision 1 keeps serving; revision 2 ready: revision 1 drains."""
        old = make_instance("r1", 0.0, revision=1)
        starting = make_view(old, make_instance("r2", 5.0, STARTING, revision=2), revision=2)
        assert plan(starting, decision(1), now=5.1).drain == ()
        serving = make_view(old, make_instance("r2", 5.0, revision=2), revision=2)
        assert plan(serving, decision(1), now=6.0).drain == (Drain("r1", "replaced by revision 2"),)

    def test_old_revision_drains_when_nothing_is_wanted(self) -> None:
        """At desired 0 nothing of an old revision stays around waiting for a new one."""
        view = make_view(make_instance("r1", 0.0, revision=1), revision=2)
        assert plan(view, decision(0), now=1.0) == Plan(
            drain=(Drain("r1", "replaced by revision 2"),))
