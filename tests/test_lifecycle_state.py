"""Instance state derived from recorded facts."""

from __future__ import annotations

from typing import Any

import pytest

from torpor.lifecycle.state import LIVE_STATES, InstanceFacts, InstanceState, derive_state


def make_facts(**overrides: Any) -> InstanceFacts:
    """Facts of an instance started at t=10, with ``overrides`` recorded on top."""
    return InstanceFacts(**{"started_at": 10.0, **overrides})


class TestDeriveState:
    def test_starting(self) -> None:
        """A process that has not passed /initialize is starting."""
        assert derive_state(make_facts(), in_flight=0) is InstanceState.STARTING

    def test_listening_is_still_starting(self) -> None:
        """Accepting connections is not enough: warmup must have succeeded."""
        assert derive_state(make_facts(listening_at=11.0), in_flight=0) is InstanceState.STARTING

    def test_ready(self) -> None:
        """Initialized and idle is ready."""
        assert derive_state(make_facts(ready_at=12.0), in_flight=0) is InstanceState.READY

    def test_busy(self) -> None:
        """Initialized with a request in flight is busy."""
        assert derive_state(make_facts(ready_at=12.0), in_flight=1) is InstanceState.BUSY

    def test_frozen(self) -> None:
        """A ready instance frozen in idle mode is frozen."""
        assert derive_state(make_facts(ready_at=12.0, frozen_at=40.0), in_flight=0) is InstanceState.FROZEN

    def test_thawed_is_ready_again(self) -> None:
        """Thawing clears frozen_at, and the instance is ready again."""
        facts = make_facts(ready_at=12.0, frozen_at=40.0)
        facts.frozen_at = None
        assert derive_state(facts, in_flight=0) is InstanceState.READY

    def test_draining(self) -> None:
        """An instance torpor asked to stop is draining until it exits, even with requests in flight."""
        facts = make_facts(ready_at=12.0, draining_at=50.0)
        assert derive_state(facts, in_flight=2) is InstanceState.DRAINING

    def test_draining_before_ready(self) -> None:
        """Stopping a still-starting instance shows it draining, not starting."""
        assert derive_state(make_facts(draining_at=11.0), in_flight=0) is InstanceState.DRAINING

    def test_stopped_after_requested_stop(self) -> None:
        """An exit torpor asked for is a clean stop, whatever the exit code."""
        facts = make_facts(ready_at=12.0, draining_at=50.0, exited_at=51.0, exit_code=-15)
        assert derive_state(facts, in_flight=0) is InstanceState.STOPPED

    @pytest.mark.parametrize("exit_code", [0, 1, -9])
    def test_failed_on_unexpected_exit(self, exit_code: int) -> None:
        """An exit nobody asked for is a failure, even with exit code 0."""
        facts = make_facts(ready_at=12.0, exited_at=30.0, exit_code=exit_code)
        assert derive_state(facts, in_flight=0) is InstanceState.FAILED

    def test_failed_on_exit_while_starting(self) -> None:
        """A process that dies before it is ready has failed."""
        facts = make_facts(exited_at=11.0, exit_code=1)
        assert derive_state(facts, in_flight=0) is InstanceState.FAILED

    def test_failed_on_recorded_failure(self) -> None:
        """A recorded failure (e.g. warmup raised) is failed while the process still runs."""
        facts = make_facts(listening_at=11.0, failure="warmup raised RuntimeError")
        assert derive_state(facts, in_flight=0) is InstanceState.FAILED

    def test_failure_wins_over_requested_stop(self) -> None:
        """A failed instance that torpor then drained and stopped stays failed."""
        facts = make_facts(listening_at=11.0, failure="initialize timed out", draining_at=70.0,
                           exited_at=71.0, exit_code=-15)
        assert derive_state(facts, in_flight=0) is InstanceState.FAILED

    def test_live_states(self) -> None:
        """Starting, ready, busy and frozen instances count as live; the rest are gone or going."""
        live = {InstanceState.STARTING, InstanceState.READY, InstanceState.BUSY, InstanceState.FROZEN}
        assert live == LIVE_STATES

    def test_state_values(self) -> None:
        """States show to users (and in the store) as lowercase words."""
        assert [s.value for s in InstanceState] == [
            "starting", "ready", "busy", "frozen", "draining", "stopped", "failed"]

