"""Provisioned-instance policies: target tracking, scheduled actions, Function Compute's JSON."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest

from torpor.autoscaling.scaling_policies import (
    PolicyInputs,
    PolicyState,
    ProvisionConfig,
    ProvisionDecision,
    parse_provision_config,
    provisioned_target,
    to_fc_json,
)
from torpor.clock import FakeClock
from torpor.errors import SpecError

# The provision.json of seed 000 ("Configure auto scaling in real-time inference scenarios").
SEED_PROVISION_JSON: dict[str, Any] = {
    "targetTrackingPolicies": [
        {
            "name": "scaling-policy-demo",
            "startTime": "2024-07-01T16:00:00.000Z",
            "endTime": "2024-07-30T16:00:00.000Z",
            "metricType": "ProvisionedConcurrencyUtilization",
            "metricTarget": 0.3,
            "minCapacity": 2,
            "maxCapacity": 30,
        }
    ]
}

# Shaped like the PutProvisionConfig body in FC's API reference (ScheduledAction and
# TargetTrackingPolicy structs, FC 3.0 API 2023-03-30).
FC_DOC: dict[str, Any] = {
    "target": 5,
    "scheduledActions": [
        {
            "name": "test_1",
            "startTime": "2023-03-10T10:10:10Z",
            "endTime": "2024-03-10T10:10:10Z",
            "target": 50,
            "scheduleExpression": "cron(0 0 22 * * *)",
        }
    ],
    "targetTrackingPolicies": [
        {
            "name": "test_2",
            "startTime": "2023-03-10T10:10:10Z",
            "endTime": "2024-03-10T10:10:10Z",
            "metricType": "ProvisionedConcurrencyUtilization",
            "metricTarget": 0.6,
            "minCapacity": 1,
            "maxCapacity": 10,
        }
    ],
}


def ts(text: str) -> float:
    """Epoch seconds of an ISO 8601 time with an offset."""
    return datetime.fromisoformat(text).timestamp()


def make_policy(**overrides: Any) -> dict[str, Any]:
    """A torpor-shaped target-tracking policy; an override of None removes the field."""
    policy: dict[str, Any] = {
        "name": "day",
        "metric": "provisioned_concurrency_utilization",
        "target": 0.3,
        "min_capacity": 2,
        "max_capacity": 30,
        "start_time": "2024-07-01T16:00:00Z",
        "end_time": "2024-07-30T16:00:00Z",
    }
    policy.update(overrides)
    return {key: value for key, value in policy.items() if value is not None}


def make_config(**overrides: Any) -> ProvisionConfig:
    return parse_provision_config({"target": 1, **overrides}, "test")


def decide(
    config: ProvisionConfig,
    now: float,
    state: PolicyState | None = None,
    *,
    in_system: float = 0.0,
    concurrency: int = 1,
) -> tuple[ProvisionDecision, PolicyState]:
    inputs = PolicyInputs(in_system=in_system, current_provisioned=1, concurrency=concurrency)
    return provisioned_target(config, inputs, now, state or PolicyState())


def errors_of(data: Any) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_provision_config(data, "provision.json")
    assert caught.value.source == "provision.json"
    return caught.value.errors


class TestTargetTracking:
    """A target-tracking policy sizes the pool while its window is open, and only then."""

    def test_inside_window_holds_utilisation_at_target(self) -> None:
        config = make_config(target_tracking=[make_policy()])
        decision, _ = decide(config, ts("2024-07-10T12:00:00Z"), in_system=4.2)
        # 4.2 / (1 × 0.3) = 14 exactly, not 15 from 14.000000000000002 in floats
        assert decision == ProvisionDecision(
            14, "target tracking 'day': 4.2 in system ÷ (1 × 0.3) → 14", "target_tracking"
        )

    def test_instance_concurrency_divides_the_load(self) -> None:
        config = make_config(target_tracking=[make_policy(target=0.5)])
        decision, _ = decide(config, ts("2024-07-10T12:00:00Z"), in_system=9, concurrency=4)
        assert decision.target == 5  # 9 / (4 × 0.5) = 4.5 → 5
        assert decision.reason == "target tracking 'day': 9 in system ÷ (4 × 0.5) → 5"

    def test_concurrency_metric_targets_requests_per_instance(self) -> None:
        policy = make_policy(metric="concurrency", target=2)
        config = make_config(target_tracking=[policy])
        decision, _ = decide(config, ts("2024-07-10T12:00:00Z"), in_system=9, concurrency=8)
        # 9 / 2 = 4.5 → 5; the instance concurrency plays no part in this metric
        assert decision.target == 5
        assert decision.reason == "target tracking 'day': 9 in system ÷ 2 per instance → 5"

    def test_before_the_window_the_static_target_stands(self) -> None:
        config = make_config(target_tracking=[make_policy()])
        decision, _ = decide(config, ts("2024-07-01T15:59:59Z"), in_system=4.2)
        assert decision == ProvisionDecision(1, "static target 1", "static")

    def test_window_start_is_inclusive(self) -> None:
        config = make_config(target_tracking=[make_policy()])
        decision, _ = decide(config, ts("2024-07-01T16:00:00Z"), in_system=4.2)
        assert (decision.target, decision.source) == (14, "target_tracking")

    def test_window_end_is_exclusive(self) -> None:
        config = make_config(target_tracking=[make_policy()])
        decision, _ = decide(config, ts("2024-07-30T16:00:00Z"), in_system=4.2)
        assert (decision.target, decision.source) == (1, "static")

    def test_no_window_means_always(self) -> None:
        config = make_config(target_tracking=[make_policy(start_time=None, end_time=None)])
        decision, _ = decide(config, ts("2031-01-01T00:00:00Z"), in_system=1.5)
        assert decision.target == 5  # 1.5 / 0.3 = 5

    def test_after_the_window_the_scheduled_base_stands(self) -> None:
        action = {"name": "boost", "schedule": "at(2024-07-01T00:00:00Z)", "target": 7}
        config = make_config(target_tracking=[make_policy()], scheduled=[action])
        state = PolicyState()
        inside, state = decide(config, ts("2024-07-10T00:00:00Z"), state, in_system=4.2)
        after, state = decide(config, ts("2024-08-01T00:00:00Z"), state, in_system=4.2)
        assert inside.target == 14  # tracking overrides the base while open
        assert after == ProvisionDecision(
            7, "scheduled action 'boost' at 2024-07-01T00:00:00Z set 7", "scheduled"
        )

    def test_several_open_policies_take_the_highest(self) -> None:
        floor = make_policy(name="floor", metric="concurrency", target=1, min_capacity=20)
        config = make_config(target_tracking=[make_policy(), floor])
        decision, _ = decide(config, ts("2024-07-10T12:00:00Z"), in_system=4.2)
        # day: 4.2 / 0.3 = 14; floor: 4.2 / 1 = 4.2 → 5, raised to 20; max(14, 20) = 20
        assert decision.target == 20
        assert decision.reason == (
            "target tracking 'floor': 4.2 in system ÷ 1 per instance → 5, raised to min 20"
            " (highest of 2 open policies)"
        )

    def test_inputs_are_needed_only_by_target_tracking(self) -> None:
        """A config without a target-tracking policy never reads the inputs (None will do: the
        autoscaler then skips measuring its window); one with a policy refuses to go without."""
        scheduled = make_config(scheduled=[{"name": "boost", "schedule": "at(2024-07-01T00:00:00Z)",
                                             "target": 7}])
        decision, state = provisioned_target(scheduled, None, ts("2024-07-10T00:00:00Z"), PolicyState())
        assert (decision.target, decision.source, state.fired) == (7, "scheduled", "boost")
        tracking = make_config(target_tracking=[make_policy()])
        with pytest.raises(ValueError, match="target-tracking policies need the policy inputs"):
            provisioned_target(tracking, None, ts("2024-07-10T12:00:00Z"), PolicyState())

    def test_impossible_inputs_are_refused(self) -> None:
        with pytest.raises(ValueError):
            PolicyInputs(in_system=-1, current_provisioned=0, concurrency=1)
        with pytest.raises(ValueError):
            PolicyInputs(in_system=1, current_provisioned=0, concurrency=0)


class TestClamping:
    """Tracked targets stay within [min_capacity, max_capacity]."""

    def test_capped_at_max(self) -> None:
        config = make_config(target_tracking=[make_policy(max_capacity=10)])
        decision, _ = decide(config, ts("2024-07-10T12:00:00Z"), in_system=4.2)
        assert decision.target == 10  # 4.2 / 0.3 = 14 > 10
        assert decision.reason == ("target tracking 'day': 4.2 in system ÷ (1 × 0.3) → 14, capped at max 10")

    def test_raised_to_min(self) -> None:
        config = make_config(target_tracking=[make_policy()])
        decision, _ = decide(config, ts("2024-07-10T12:00:00Z"), in_system=0.1)
        assert decision.target == 2  # 0.1 / 0.3 = 0.33 → 1 < 2
        assert decision.reason == ("target tracking 'day': 0.1 in system ÷ (1 × 0.3) → 1, raised to min 2")

    def test_no_load_with_min_zero_gives_zero(self) -> None:
        config = make_config(target_tracking=[make_policy(min_capacity=0)])
        decision, _ = decide(config, ts("2024-07-10T12:00:00Z"), in_system=0)
        assert decision.target == 0
        assert decision.reason == "target tracking 'day': 0 in system ÷ (1 × 0.3) → 0"

    def test_min_equal_to_max_pins_the_count(self) -> None:
        config = make_config(target_tracking=[make_policy(min_capacity=3, max_capacity=3)])
        low, _ = decide(config, ts("2024-07-10T12:00:00Z"), in_system=0)
        high, _ = decide(config, ts("2024-07-10T12:00:00Z"), in_system=100)
        assert (low.target, high.target) == (3, 3)


class TestScheduledAt:
    """An at(...) action fires once, when its moment passes, and its target persists."""

    def test_fires_exactly_once(self) -> None:
        launch = {"name": "launch", "schedule": "at(2024-01-01T08:00:00Z)", "target": 5}
        # fires 08:00:30 each day, but only inside its window: once, on the first day
        reset = {
            "name": "reset",
            "schedule": "cron(30 0 8 * * *)",
            "target": 2,
            "start_time": "2024-01-01T00:00:00Z",
            "end_time": "2024-01-01T09:00:00Z",
        }
        config = make_config(scheduled=[launch, reset])
        clock = FakeClock(ts("2024-01-01T07:59:00Z"))
        decision, state = decide(config, clock.now())
        assert decision == ProvisionDecision(1, "static target 1", "static")  # nothing yet

        clock.advance(60)  # 08:00:00, exactly the at() moment
        decision, state = decide(config, clock.now(), state)
        assert decision == ProvisionDecision(
            5, "scheduled action 'launch' at 2024-01-01T08:00:00Z set 5", "scheduled"
        )
        assert state == PolicyState(clock.now(), 5, "launch", ts("2024-01-01T08:00:00Z"))

        clock.advance(30)  # 08:00:30: reset fires and replaces the base
        decision, state = decide(config, clock.now(), state)
        assert (decision.target, state.fired) == (2, "reset")

        clock.advance(24 * 3600)  # a day later: launch does not fire again, reset's window closed
        decision, state = decide(config, clock.now(), state)
        assert (decision.target, state.fired) == (2, "reset")
        assert state.fired_at == ts("2024-01-01T08:00:30Z")

    def test_a_fresh_state_catches_up_with_a_past_firing(self) -> None:
        launch = {"name": "launch", "schedule": "at(2024-01-01T16:00:00+08:00)", "target": 5}
        config = make_config(scheduled=[launch])
        decision, state = decide(config, ts("2024-01-01T09:00:00Z"))
        assert decision.target == 5  # 16:00+08:00 is 08:00Z, before 09:00Z
        assert state.fired_at == ts("2024-01-01T08:00:00Z")

    def test_outside_its_window_never_fires(self) -> None:
        launch = {
            "name": "launch",
            "schedule": "at(2024-01-01T08:00:00Z)",
            "target": 5,
            "start_time": "2024-01-02T00:00:00Z",
        }
        config = make_config(scheduled=[launch])
        decision, state = decide(config, ts("2024-06-01T00:00:00Z"))
        assert (decision.target, decision.source, state.fired) == (1, "static", None)

    def test_a_clock_stepping_back_does_not_refire(self) -> None:
        launch = {"name": "launch", "schedule": "at(2024-01-01T08:00:00Z)", "target": 5}
        later = {"name": "later", "schedule": "at(2024-01-01T08:30:00Z)", "target": 3}
        config = make_config(scheduled=[launch, later])
        _, state = decide(config, ts("2024-01-01T09:00:00Z"))
        assert state.fired == "later"
        _, state = decide(config, ts("2024-01-01T08:10:00Z"), state)  # back in time
        assert (state.fired, state.last_checked_at) == ("later", ts("2024-01-01T09:00:00Z"))


class TestScheduledCron:
    """A cron(...) action fires at every occurrence inside its window."""

    DAY_NIGHT: ClassVar[dict[str, Any]] = {
        "target": 1,
        "scheduled": [
            {
                "name": "morning",
                "schedule": "cron(0 0 8 * * *)",
                "target": 10,
                "start_time": "2024-08-01T00:00:00Z",
                "end_time": "2024-08-04T00:00:00Z",
            },
            {
                "name": "evening",
                "schedule": "cron(0 0 20 * * *)",
                "target": 2,
                "start_time": "2024-08-01T00:00:00Z",
                "end_time": "2024-08-04T00:00:00Z",
            },
        ],
    }

    def test_fires_each_day_at_its_time(self) -> None:
        config = parse_provision_config(self.DAY_NIGHT, "test")
        clock = FakeClock(ts("2024-07-31T23:00:00Z"))
        state = PolicyState()
        fired: list[tuple[str | None, str]] = []
        targets: dict[str, int] = {}
        while clock.now() <= ts("2024-08-05T00:00:00Z"):
            before = state.fired_at
            decision, state = decide(config, clock.now(), state)
            if state.fired_at != before:
                fired.append((state.fired, _utc(state.fired_at)))
            targets[_utc(clock.now())] = decision.target
            clock.advance(1800)  # a tick every 30 minutes
        assert fired == [
            ("morning", "2024-08-01T08:00:00Z"),
            ("evening", "2024-08-01T20:00:00Z"),
            ("morning", "2024-08-02T08:00:00Z"),
            ("evening", "2024-08-02T20:00:00Z"),
            ("morning", "2024-08-03T08:00:00Z"),
            ("evening", "2024-08-03T20:00:00Z"),
        ]  # nothing on 08-04: both windows ended at 08-04T00:00Z
        assert targets["2024-08-01T07:30:00Z"] == 1  # static until the first firing
        assert targets["2024-08-01T08:00:00Z"] == 10  # fires at the tick that lands on 08:00
        assert targets["2024-08-02T19:30:00Z"] == 10
        assert targets["2024-08-02T20:00:00Z"] == 2
        assert targets["2024-08-04T12:00:00Z"] == 2  # the last firing persists after the window

    def test_five_field_cron_has_no_seconds(self) -> None:
        action = {"name": "morning", "schedule": "cron(0 8 * * *)", "target": 10}
        config = make_config(scheduled=[action])
        _, state = decide(config, ts("2024-08-02T07:59:59Z"), PolicyState(ts("2024-08-01T09:00Z")))
        assert state.fired is None  # (09:00 day 1, 07:59:59 day 2] holds no 08:00
        _, state = decide(config, ts("2024-08-02T08:00:00Z"), state)
        assert state.fired_at == ts("2024-08-02T08:00:00Z")

    def test_a_long_gap_applies_only_the_latest_firing(self) -> None:
        config = parse_provision_config(self.DAY_NIGHT, "test")
        state = PolicyState(last_checked_at=ts("2024-08-01T07:00:00Z"))
        decision, state = decide(config, ts("2024-08-03T09:00:00Z"), state)
        assert decision.target == 10  # 08-03 08:00 morning is later than 08-02 20:00 evening
        assert state.fired_at == ts("2024-08-03T08:00:00Z")

    def test_time_zone_from_fc_docs(self) -> None:
        # FC's scheduled-scaling example: 50 at 20:00 and 10 at 22:00, Asia/Shanghai (UTC+8)
        window = {
            "startTime": "2024-08-01T10:00:00",
            "endTime": "2024-08-30T10:00:00",
            "timeZone": "Asia/Shanghai",
        }
        config = parse_provision_config(
            {
                "target": 1,
                "scheduledActions": [
                    {
                        "name": "scale_up_action",
                        "target": 50,
                        "scheduleExpression": "cron(0 0 20 * * *)",
                        **window,
                    },
                    {
                        "name": "scale_down_action",
                        "target": 10,
                        "scheduleExpression": "cron(0 0 22 * * *)",
                        **window,
                    },
                ],
            },
            "test",
        )
        up, state = decide(config, ts("2024-08-01T12:00:00Z"))  # 20:00 in Shanghai
        down, state = decide(config, ts("2024-08-01T14:00:00Z"), state)  # 22:00 in Shanghai
        assert (up.target, down.target) == (50, 10)
        # the window opened at 10:00 Shanghai = 02:00Z, so 08-01 is its first day
        before, _ = decide(config, ts("2024-08-01T01:59:59Z"))
        assert before.target == 1


class TestFcJson:
    """Function Compute's camelCase provision.json is accepted and written back."""

    def test_seed_provision_json_matches_torpor_shape(self) -> None:
        from_fc = parse_provision_config(SEED_PROVISION_JSON, "provision.json")
        ours = parse_provision_config(
            {"target_tracking": [make_policy(name="scaling-policy-demo")]}, "torpor.yaml"
        )
        assert from_fc == ours
        assert from_fc.target == 0  # provision.json leaves target to `s provision put --target`

    def test_fc_doc_round_trips(self) -> None:
        config = parse_provision_config(FC_DOC, "provision.json")
        assert to_fc_json(config) == FC_DOC
        assert parse_provision_config(to_fc_json(config), "again") == config

    def test_times_are_normalised_to_utc(self) -> None:
        config = parse_provision_config(SEED_PROVISION_JSON, "provision.json")
        policy = to_fc_json(config)["targetTrackingPolicies"][0]
        assert (policy["startTime"], policy["endTime"]) == (
            "2024-07-01T16:00:00Z",
            "2024-07-30T16:00:00Z",
        )

    def test_time_zone_keeps_local_times(self) -> None:
        action = {
            "name": "up",
            "startTime": "2024-08-01T10:00:00",
            "target": 50,
            "scheduleExpression": "cron(0 0 20 * * *)",
            "timeZone": "Asia/Shanghai",
        }
        config = parse_provision_config({"target": 1, "scheduledActions": [action]}, "p")
        start = config.scheduled[0].start_time
        assert start is not None and start == datetime(2024, 8, 1, 2, 0, tzinfo=UTC)
        assert to_fc_json(config)["scheduledActions"] == [
            {
                "name": "up",
                "timeZone": "Asia/Shanghai",
                "startTime": "2024-08-01T10:00:00",
                "scheduleExpression": "cron(0 0 20 * * *)",
                "target": 50,
            }
        ]

    def test_times_without_offset_are_utc(self) -> None:
        aware = make_config(target_tracking=[make_policy()])
        naive = make_config(target_tracking=[make_policy(start_time="2024-07-01T16:00:00")])
        as_yaml_gives = datetime(2024, 7, 1, 16, 0)  # yaml.safe_load's naive datetime
        from_yaml = make_config(target_tracking=[make_policy(start_time=as_yaml_gives)])
        assert aware == naive == from_yaml

    def test_torpor_concurrency_metric_survives_the_trip(self) -> None:
        config = make_config(target_tracking=[make_policy(metric="concurrency", target=4)])
        fc = to_fc_json(config)
        assert fc["targetTrackingPolicies"][0]["metricType"] == "Concurrency"
        assert parse_provision_config(fc, "p") == config


def _without(field: str) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["targetTrackingPolicies"][0].pop(field)


def _policy(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["targetTrackingPolicies"][0].update(fields)


def _action(**fields: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc["scheduledActions"][0].update(fields)


CRON_HINT = (
    "is not a valid cron expression: use Function Compute's 6 fields "
    "'second minute hour day month weekday', or 5 without the seconds"
)
TIME_HINT = "must be an ISO 8601 time like 2024-07-01T16:00:00Z, got"


class TestRejected:
    """A malformed config fails with one line per problem, naming the field as the user spelt it."""

    @pytest.mark.parametrize(
        ("mutate", "expected"),
        [
            (_without("metricTarget"), "targetTrackingPolicies.0.metricTarget: Field required"),
            (
                _policy(minCapacity=5, maxCapacity=3),
                "targetTrackingPolicies.0.maxCapacity: must be at least the minimum capacity (5), got 3",
            ),
            (
                _policy(metricType="CPUUtilization"),
                "targetTrackingPolicies.0.metricType: unknown metric 'CPUUtilization'; valid:"
                " ProvisionedConcurrencyUtilization, Concurrency, GPUMemUtilization, GPUUtilization",
            ),
            (
                _policy(metricTarget=30),
                "targetTrackingPolicies.0.metricTarget: is a utilisation, at most 1 (0.3 means 30 %), got 30",
            ),
            (
                _policy(startTime="2024-07-32T00:00:00Z"),
                f"targetTrackingPolicies.0.startTime: {TIME_HINT} '2024-07-32T00:00:00Z'",
            ),
            (
                _policy(endTime="2023-01-01T00:00:00Z"),
                "targetTrackingPolicies.0.endTime: must be after the start time (2023-03-10T10:10:10Z)",
            ),
            (
                _action(scheduleExpression="cron(0 0 25 * * *)"),
                f"scheduledActions.0.scheduleExpression: cron(0 0 25 * * *) {CRON_HINT}",
            ),
            (
                _action(scheduleExpression="cron(every day)"),
                f"scheduledActions.0.scheduleExpression: cron(every day) {CRON_HINT}",
            ),
            (
                _action(scheduleExpression="rate(5 minutes)"),
                "scheduledActions.0.scheduleExpression: must be at(<ISO 8601 time>) or"
                " cron(<fields>), got 'rate(5 minutes)'",
            ),
            (
                _action(scheduleExpression="at(tomorrow)"),
                f"scheduledActions.0.scheduleExpression: {TIME_HINT} 'tomorrow'",
            ),
            (
                _action(timeZone="Mars/Olympus"),
                "scheduledActions.0.timeZone: unknown time zone 'Mars/Olympus'; use an IANA name"
                " like Asia/Shanghai",
            ),
            (
                _action(target=-1),
                "scheduledActions.0.target: Input should be greater than or equal to 0",
            ),
            (
                _action(name="test_2"),
                "scheduledActions: name 'test_2' is used twice; names must be unique",
            ),
        ],
    )
    def test_malformed_fc_json_names_the_field(
        self, mutate: Callable[[dict[str, Any]], None], expected: str
    ) -> None:
        doc = copy.deepcopy(FC_DOC)
        mutate(doc)
        assert errors_of(doc) == [expected]

    def test_every_problem_is_reported_at_once(self) -> None:
        doc = copy.deepcopy(FC_DOC)
        _without("metricTarget")(doc)
        _action(target=-1)(doc)
        assert errors_of(doc) == [
            "targetTrackingPolicies.0.metricTarget: Field required",
            "scheduledActions.0.target: Input should be greater than or equal to 0",
        ]

    def test_unknown_fc_fields(self) -> None:
        doc = copy.deepcopy(FC_DOC)
        doc["region"] = "cn-shanghai"
        _policy(cooldown=60)(doc)
        assert errors_of(doc) == [
            "targetTrackingPolicies.0.cooldown: unknown field",
            "region: unknown field",
        ]

    def test_unknown_torpor_fields(self) -> None:
        data = {"target": 1, "target_tracking": [make_policy(cooldown_s=60)]}
        assert errors_of(data) == ["target_tracking.0.cooldown_s: unknown field"]

    def test_torpor_shape_names_its_own_fields(self) -> None:
        data = {"target_tracking": [make_policy(metric="gpu", min_capacity=4, max_capacity=1)]}
        assert errors_of(data) == [
            "target_tracking.0.metric: Input should be 'provisioned_concurrency_utilization',"
            " 'concurrency', 'gpu_utilization' or 'gpu_memory_utilization'",
            "target_tracking.0.max_capacity: must be at least the minimum capacity (4), got 1",
        ]

    def test_mixed_shapes(self) -> None:
        data: dict[str, Any] = {"targetTrackingPolicies": [], "scheduled": []}
        assert errors_of(data) == [
            "(top level): mixes Function Compute's camelCase fields with torpor's snake_case ones"
        ]

    def test_not_a_mapping(self) -> None:
        assert errors_of([]) == ["(top level): must be a mapping of fields"]

    def test_the_message_names_the_file(self) -> None:
        with pytest.raises(SpecError, match=r"^provision\.json: targetTrackingPolicies\.0\."):
            parse_provision_config({"targetTrackingPolicies": [{}]}, "provision.json")


def _utc(epoch_s: float | None) -> str:
    assert epoch_s is not None
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")
