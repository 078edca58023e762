"""Gradual rollout decisions as timelines: steps on time, automatic rollback on errors (pure)."""

from __future__ import annotations

import pytest

from torpor.clock import FakeClock
from torpor.errors import BadRequest
from torpor.lifecycle.rollout import Action, Counts, RolloutConfig, decide, start

CONFIG = RolloutConfig.parse([10, 50, 100], every_s=60, max_error_margin=0.05, min_requests=10)


class TestSteps:
    def test_steps_on_time_then_done(self) -> None:
        """10 % now, 50 % at 60 s, 100 % at 120 s, done at 180 s: no errors, no rollback."""
        clock = FakeClock(1000.0)
        rollout = start(CONFIG, new=2, old=1, counts={}, now=clock.now())
        state = rollout.state
        clock.advance(59)
        action, state = decide(CONFIG, state, {1: Counts(90, 0), 2: Counts(10, 0)}, clock.now())
        assert action == Action("wait")
        clock.advance(1)  # the first step's 60 s are up
        action, state = decide(CONFIG, state, {1: Counts(90, 0), 2: Counts(10, 0)}, clock.now())
        assert action == Action("weights", percent=50) and state.step == 1
        clock.advance(60)
        action, state = decide(CONFIG, state, {1: Counts(140, 0), 2: Counts(60, 0)}, clock.now())
        assert action == Action("weights", percent=100)
        clock.advance(60)
        action, state = decide(CONFIG, state, {1: Counts(140, 0), 2: Counts(160, 1)}, clock.now())
        assert action.kind == "done" and state.status == "done"
        assert decide(CONFIG, state, {}, clock.now())[0] == Action("wait")  # over: nothing more


class TestAutomaticRollback:
    def test_a_revision_failing_half_its_requests_is_rolled_back(self) -> None:
        """New: 6 errors in 12 (50 %); old: 1 in 100 (1 %): above the 5-point margin → rollback."""
        rollout = start(CONFIG, new=2, old=1, counts={1: Counts(500, 3)}, now=0.0)
        action, state = decide(CONFIG, rollout.state, {1: Counts(600, 4), 2: Counts(12, 6)},
                               now=5.0)
        assert action.kind == "rollback" and state.status == "rolled_back"
        assert action.reason == ("error rate 50% (6/12) on revision 2 against 1% (1/100) on "
                                 "revision 1, above the margin of 5%")

    def test_too_few_requests_are_not_judged(self) -> None:
        """5 errors in 9 requests: below min_requests, the rollout waits."""
        rollout = start(CONFIG, new=2, old=1, counts={}, now=0.0)
        assert decide(CONFIG, rollout.state, {1: Counts(80, 0), 2: Counts(9, 5)}, 1.0)[0] == Action(
            "wait")

    def test_within_the_margin_goes_on(self) -> None:
        """New 6 %, old 2 %: within 5 points, the step goes on when its time is up."""
        rollout = start(CONFIG, new=2, old=1, counts={}, now=0.0)
        action, _ = decide(CONFIG, rollout.state, {1: Counts(100, 2), 2: Counts(50, 3)}, 60.0)
        assert action == Action("weights", percent=50)

    def test_counts_start_at_the_rollout(self) -> None:
        """Errors of the old revision before the rollout do not excuse the new one."""
        rollout = start(CONFIG, new=2, old=1, counts={1: Counts(100, 50)}, now=0.0)
        action, _ = decide(CONFIG, rollout.state, {1: Counts(200, 50), 2: Counts(20, 10)}, 1.0)
        assert action.kind == "rollback"


class TestConfig:
    @pytest.mark.parametrize(("steps", "every_s", "message"), [
        ([10, 50], 60, "rollout.steps: the last step must be 100, not 50"),
        ([50, 10, 100], 60, "rollout.steps: the steps must increase, not [50, 10, 100]"),
        ([0, 100], 60, "rollout.steps: every step must be between 1 and 100, not [0, 100]"),
        ([], 60, "rollout.steps: give 1 to 20 percents, e.g. 10,50,100"),
        ([10, 100], 0, "rollout.every_s: must be above 0, not 0"),
    ])
    def test_bad_rollouts_name_the_field(self, steps: list[int], every_s: float,
                                         message: str) -> None:
        """Every bad rollout is rejected with a sentence naming its field."""
        with pytest.raises(BadRequest) as caught:
            RolloutConfig.parse(steps, every_s)
        assert str(caught.value) == message

    def test_checks_a_few_times_per_step(self) -> None:
        """A check at most every second, four per step for short steps."""
        assert CONFIG.check_s == 1.0
        assert RolloutConfig.parse([50, 100], every_s=2).check_s == 0.5
