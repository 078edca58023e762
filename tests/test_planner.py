"""The reconcile planner: a snapshot of instances and a decision in, a plan out (pure, no I/O)."""

from __future__ import annotations

from typing import Any

from torpor.autoscaling.autoscaler import ScaleDecision
from torpor.clock import FakeClock
from torpor.lifecycle.planner import (
    Drain,
    FunctionView,
    InstanceView,
    Plan,
    Start,
    keep_alive_hold,
    plan,
    plan_revisions,
)
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


class TestKeepAlive:
    """The keep-alive policy's scale-in: each instance goes once idle for its own keep-alive."""

    @staticmethod
    def keep(desired: int, provisioned: int = 0, warm: tuple[float, ...] = ()) -> ScaleDecision:
        return ScaleDecision(desired, provisioned, False, "test", keep_idle_s=0.5, keep_warm_s=warm)

    def test_only_instances_idle_for_the_keep_alive_go(self) -> None:
        """At 10: "a" idle since 9.0 (1 s) and "c" since 9.5 (0.5 s, just reached) go; "b", idle
        0.25 s, stays though the decision wants none."""
        view = make_view(make_instance("a", 0.0, idle_since=9.0),
                         make_instance("b", 1.0, idle_since=9.75),
                         make_instance("c", 2.0, idle_since=9.5))
        assert plan(view, self.keep(0), now=10.0).drain == (Drain("c", "scale in"),
                                                             Drain("a", "scale in"))

    def test_never_more_than_the_surplus(self) -> None:
        """Both idle past the keep-alive but one wanted: the newest goes."""
        view = make_view(make_instance("a", 0.0, idle_since=5.0), make_instance("b", 1.0, idle_since=5.0))
        assert plan(view, self.keep(1), now=10.0).drain == (Drain("b", "scale in"),)

    def test_provisioned_outlives_the_keep_alive(self) -> None:
        """The provisioned instance, idle longest, is no victim: only the on-demand one past its
        keep-alive is (the one idle 0.25 s stays)."""
        view = make_view(make_instance("p", 0.0, idle_since=1.0),
                         make_instance("od-1", 1.0, idle_since=9.0),
                         make_instance("od-2", 2.0, idle_since=9.75))
        result = plan(view, self.keep(1, provisioned=1), now=10.0)
        assert result.provisioned == frozenset({"p"})
        assert result.drain == (Drain("od-1", "scale in"),)

    def test_the_first_in_routing_order_keeps_the_function_warm(self) -> None:
        """Warm keep-alives (3, 1): with both idle 2 s, "b" (second in routing order) goes after
        the keep-alive; "a" (first: the oldest) stays until idle 3 s, its warm keep-alive."""
        view = make_view(make_instance("a", 0.0, idle_since=8.0), make_instance("b", 1.0, idle_since=8.0))
        assert plan(view, self.keep(0, warm=(3.0, 1.0)), now=10.0).drain == (Drain("b", "scale in"),)
        alone = make_view(make_instance("a", 0.0, idle_since=8.0))
        assert plan(alone, self.keep(0, warm=(3.0, 1.0)), now=10.0).drain == ()
        assert plan(alone, self.keep(0, warm=(3.0, 1.0)), now=11.0).drain == (Drain("a", "scale in"),)

    def test_idle_mode_freezes_after_the_keep_alive_and_drains_after_the_warm_one(self) -> None:
        """With idle mode, warm keep-alives (3, 1.5): at 10 "a" (idle 2 s, under its 3 s) and "b"
        (idle 1 s, under its 1.5 s) are frozen, past the 0.5 s keep-alive; "c" (third, past the
        tuple: the keep-alive) drains; "d" idle 0.25 s is left alone."""
        view = make_view(make_instance("a", 0.0, idle_since=8.0), make_instance("b", 1.0, idle_since=9.0),
                         make_instance("c", 2.0, idle_since=9.0), make_instance("d", 3.0, idle_since=9.75),
                         idle_mode=True)
        result = plan(view, self.keep(0, warm=(3.0, 1.5)), now=10.0)
        assert result.drain == (Drain("c", "scale in"),)
        assert result.freeze == ("a", "b")
        frozen = make_view(make_instance("a", 0.0, FROZEN, idle_since=8.0), idle_mode=True)
        assert plan(frozen, self.keep(0, warm=(3.0, 1.5)), now=11.0).drain == (Drain("a", "scale in"),)

    def test_each_rank_holds_for_its_own_keep_alive(self) -> None:
        """The rule the planner (and the simulator's pass gate) reads: keep-alive 0.5 s, warm
        (3, 1.5). Without idle mode only the first holds its warm keep-alive; with it each rank in
        the tuple holds its own, the rest the keep-alive; no warm ones: everyone the keep-alive."""
        warm = (3.0, 1.5)
        assert [keep_alive_hold(rank, 0.5, warm, False) for rank in range(3)] == [3.0, 0.5, 0.5]
        assert [keep_alive_hold(rank, 0.5, warm, True) for rank in range(3)] == [3.0, 1.5, 0.5]
        assert [keep_alive_hold(rank, 0.5, (), idle) for rank in range(2)
                for idle in (False, True)] == [0.5, 0.5, 0.5, 0.5]


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


class TestSplit:
    """Several revisions take traffic: each scales on its own, the rest drain (plan_revisions)."""

    def test_each_routed_revision_scales_on_its_own_decision(self) -> None:
        """80/20 under load: revision 3 wants 4 and has 1, revision 4 wants 1 and has 0."""
        instances = (make_instance("a", 0.0, revision=3),)
        views = [make_view(*instances, revision=3), make_view(*instances, revision=4)]
        plans = plan_revisions(views, [decision(4), decision(1)], now=1.0)
        assert [len(p.start) for p in plans] == [3, 1]
        assert all(p.drain == () for p in plans)

    def test_a_revision_at_zero_percent_scales_to_zero(self) -> None:
        """A timeline: traffic moves from 3 to 4; 3 keeps serving until 4 serves, then drains."""
        clock = FakeClock(100.0)
        old = make_instance("r3", 0.0, revision=3)
        # t=100: traffic 4=100; revision 4 has nothing yet and wants one instance
        views = [make_view(old, revision=4)]
        result = plan_revisions(views, [decision(1)], clock.now())[0]
        assert result.start == (Start(False),) and result.drain == ()
        clock.advance(0.5)  # revision 4 starting: revision 3 still holds its instance
        starting = make_instance("r4", 100.0, STARTING, revision=4)
        assert plan_revisions([make_view(old, starting, revision=4)], [decision(1)],
                              clock.now())[0].drain == ()
        clock.advance(0.5)  # revision 4 serves: revision 3 (0 %, untagged) drains
        serving = make_instance("r4", 100.0, revision=4)
        assert plan_revisions([make_view(old, serving, revision=4)], [decision(1)],
                              clock.now())[0].drain == (Drain("r3", "replaced by revision 4"),)

    def test_unrouted_waits_for_every_routed_revision(self) -> None:
        """Split 4/5 with 5 still starting: revision 3 stays; once 5 serves too, it drains."""
        old = make_instance("r3", 0.0, revision=3)
        four = make_instance("r4", 1.0, revision=4)
        five = make_instance("r5", 1.0, STARTING, revision=5)
        views = [make_view(old, four, five, revision=4), make_view(old, four, five, revision=5)]
        assert all(p.drain == () for p in plan_revisions(views, [decision(1), decision(1)], 2.0))
        five = make_instance("r5", 1.0, revision=5)
        views = [make_view(old, four, five, revision=4), make_view(old, four, five, revision=5)]
        first, second = plan_revisions(views, [decision(1), decision(1)], 3.0)
        assert first.drain == (Drain("r3", "its revision takes no traffic"),)
        assert second.drain == ()

    def test_a_routed_revision_never_drains_another_routed_one(self) -> None:
        """Instances of a revision that takes traffic are only scaled by its own plan."""
        three = make_instance("r3", 0.0, revision=3)
        four = make_instance("r4", 0.0, revision=4)
        views = [make_view(three, four, revision=3), make_view(three, four, revision=4)]
        plans = plan_revisions(views, [decision(1), decision(1)], now=5.0)
        assert plans == [Plan(), Plan()]
