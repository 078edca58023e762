"""Policies that move a function's provisioned instance count over time, as Function Compute does.

A provision config holds a static ``target``, scheduled actions that reset that target at one moment
(``at(...)``) or on a ``cron(...)`` schedule, and target-tracking policies that, while their time
window is open, size the provisioned pool from load and keep it within ``[min, max]`` capacity.
:func:`provisioned_target` is the pure decision; the reconciler carries it out.

The config is written in torpor's snake_case shape or as Function Compute's camelCase
``provision.json`` (the PutProvisionConfig body); :func:`to_fc_json` writes the camelCase form back.
Times without an offset are in the policy's ``timezone`` (FC's ``timeZone``), else UTC, as in FC.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, tzinfo
from functools import cache
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from torpor.errors import SpecError

Metric = Literal["provisioned_concurrency_utilization", "concurrency", "gpu_utilization",
                 "gpu_memory_utilization"]
_UTILISATIONS = frozenset({"provisioned_concurrency_utilization", "gpu_utilization",
                           "gpu_memory_utilization"})  # targets are fractions: 0.6 means 60 %
_SCHEDULE = re.compile(r"^\s*(at|cron)\((.*)\)\s*$")
_CEIL_SLACK = 1e-9  # 4.2 / 0.3 is 14.000000000000002 in floats; it must size to 14, not 15

# Function Compute's spelling -> torpor's, per level of the document. "Concurrency" is torpor's own
# metric (FC has none like it), spelt FC-style so that to_fc_json loses nothing.
_FC_TOP = {
    "target": "target",
    "targetTrackingPolicies": "target_tracking",
    "scheduledActions": "scheduled",
}
_FC_WINDOW = {
    "name": "name",
    "timeZone": "timezone",
    "startTime": "start_time",
    "endTime": "end_time",
}
_FC_POLICY = {
    **_FC_WINDOW,
    "metricType": "metric",
    "metricTarget": "target",
    "minCapacity": "min_capacity",
    "maxCapacity": "max_capacity",
}
_FC_ACTION = {**_FC_WINDOW, "scheduleExpression": "schedule", "target": "target"}
_FC_METRICS = {
    "ProvisionedConcurrencyUtilization": "provisioned_concurrency_utilization",
    "Concurrency": "concurrency",
    "GPUMemUtilization": "gpu_memory_utilization",  # FC's GPU metric: memory used / held
    "GPUUtilization": "gpu_utilization",  # torpor's own (SM utilisation), spelt FC-style
}


def _zone(name: str | None) -> tzinfo:
    return ZoneInfo(name) if name else UTC


def _parse_time(value: object, timezone: str | None) -> datetime:
    moment = value if isinstance(value, datetime) else None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    if moment is None:
        raise ValueError(f"must be an ISO 8601 time like 2024-07-01T16:00:00Z, got {value!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=_zone(timezone))


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


def _split_schedule(schedule: str) -> tuple[str, str]:
    match = _SCHEDULE.match(schedule)
    if match is None:
        raise ValueError(f"must be at(<ISO 8601 time>) or cron(<fields>), got {schedule!r}")
    return match.group(1), match.group(2).strip()


def _seconds_first(fields: str) -> bool:
    return len(fields.split()) == 6  # FC's cron: second minute hour day month weekday


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Windowed(_Strict):
    """A named policy that applies only between ``start_time`` (inclusive) and ``end_time``."""

    name: str = Field(min_length=1)
    timezone: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        try:
            if value is not None:
                ZoneInfo(value)
        except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
            raise ValueError(f"unknown time zone {value!r}; use an IANA name like Asia/Shanghai") from None
        return value

    @field_validator("start_time", "end_time", mode="before")
    @classmethod
    def _aware(cls, value: object, info: ValidationInfo) -> datetime | None:
        return None if value is None else _parse_time(value, info.data.get("timezone"))

    @field_validator("end_time")
    @classmethod
    def _after_start(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("start_time")
        if value is not None and start is not None and value <= start:
            raise ValueError(f"must be after the start time ({_iso(start.timestamp())})")
        return value

    def is_open(self, epoch_s: float) -> bool:
        start_ok = self.start_time is None or self.start_time.timestamp() <= epoch_s
        return start_ok and (self.end_time is None or epoch_s < self.end_time.timestamp())


class TargetTrackingPolicy(_Windowed):
    """Keep a metric at ``target`` by sizing the provisioned pool, within min/max capacity."""

    metric: Metric
    target: float = Field(gt=0)
    min_capacity: int = Field(ge=0)
    max_capacity: int = Field(ge=0)

    @field_validator("target")
    @classmethod
    def _utilisation(cls, value: float, info: ValidationInfo) -> float:
        if info.data.get("metric") in _UTILISATIONS and value > 1:
            raise ValueError(f"is a utilisation, at most 1 (0.3 means 30 %), got {value:g}")
        return value

    @field_validator("max_capacity")
    @classmethod
    def _not_below_min(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min_capacity")
        if low is not None and value < low:
            raise ValueError(f"must be at least the minimum capacity ({low}), got {value}")
        return value


class ScheduledAction(_Windowed):
    """Set the base target to ``target`` at a moment or on every cron occurrence in the window."""

    schedule: str
    target: int = Field(ge=0)

    @field_validator("schedule")
    @classmethod
    def _parsable(cls, value: str) -> str:
        kind, body = _split_schedule(value)
        if kind == "at":
            _parse_time(body, None)
        elif len(body.split()) not in (5, 6) or not croniter.is_valid(
            body, second_at_beginning=_seconds_first(body)
        ):
            raise ValueError(
                f"cron({body}) is not a valid cron expression: use Function Compute's 6 fields "
                "'second minute hour day month weekday', or 5 without the seconds"
            )
        return value.strip()

    def last_firing(self, after: float | None, upto: float) -> float | None:
        """The latest moment in (``after``, ``upto``] this action fires at, inside its window."""
        kind, body = _split_schedule(self.schedule)
        if kind == "at":
            latest: float | None = _parse_time(body, self.timezone).timestamp()
        else:
            # Occurrences are whole seconds and get_prev is strictly before its base, so a base one
            # second past the last allowed second includes that second (end_time is exclusive).
            last_s = math.floor(upto)
            if self.end_time is not None:
                last_s = min(last_s, math.ceil(self.end_time.timestamp()) - 1)
            base = datetime.fromtimestamp(last_s + 1, _zone(self.timezone))
            try:
                cron = croniter(body, base, second_at_beginning=_seconds_first(body))
                latest = float(cron.get_prev(float))
            except CroniterBadDateError:  # a date that never comes, e.g. 30 February
                latest = None
        if latest is None or latest > upto or (after is not None and latest <= after):
            return None
        return latest if self.is_open(latest) else None


_W = TypeVar("_W", bound=_Windowed)


class ProvisionConfig(_Strict):
    """A function's provisioned instances: a static count moved by schedules and target tracking."""

    target: int = Field(default=0, ge=0)
    target_tracking: list[TargetTrackingPolicy] = Field(default_factory=list)
    scheduled: list[ScheduledAction] = Field(default_factory=list)

    @field_validator("target_tracking", "scheduled")
    @classmethod
    def _unique_names(cls, value: list[_W], info: ValidationInfo) -> list[_W]:
        earlier = info.data.get("target_tracking", []) if info.field_name == "scheduled" else []
        seen = {policy.name for policy in earlier}
        for item in value:
            if item.name in seen:
                raise ValueError(f"name {item.name!r} is used twice; names must be unique")
            seen.add(item.name)
        return value


@dataclass(frozen=True, slots=True)
class PolicyInputs:
    """What the caller measured over the policy's metric window."""

    in_system: float  # average requests in the system (running + queued)
    current_provisioned: int
    concurrency: int  # requests one instance serves at once (the function's ``concurrency``)
    gpu_utilization: float | None = None  # mean SM utilisation of its GPUs, 0..1 (None: unknown)
    gpu_memory_utilization: float | None = None  # mean memory used / device memory, 0..1

    def __post_init__(self) -> None:
        if self.in_system < 0 or self.concurrency < 1 or self.current_provisioned < 0:
            raise ValueError(f"impossible policy inputs: {self}")


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What the policy remembers between ticks: when it last looked, and the last firing."""

    last_checked_at: float | None = None
    scheduled_target: int | None = None
    fired: str | None = None  # name of the scheduled action that set ``scheduled_target``
    fired_at: float | None = None


@dataclass(frozen=True, slots=True)
class ProvisionDecision:
    """The provisioned count to hold, which policy chose it, and why, in one sentence."""

    target: int
    reason: str
    source: Literal["static", "scheduled", "target_tracking"]


def provisioned_target(
    config: ProvisionConfig, inputs: PolicyInputs | None, now: float, state: PolicyState
) -> tuple[ProvisionDecision, PolicyState]:
    """How many provisioned instances the function should have at ``now`` (epoch seconds, UTC).

    Scheduled actions that fired in (last check, now] set the base target, the latest firing
    winning; it persists until another fires. An open target-tracking window overrides the base
    (the highest of several open policies wins); outside every window the base target stands.
    ``inputs`` are read by target-tracking policies only: None will do for a config without one.
    """
    state = _fire_scheduled(config, now, state)
    if config.target_tracking and inputs is None:
        raise ValueError("target-tracking policies need the policy inputs, got None")
    tracked = ([_track(p, inputs) for p in config.target_tracking if p.is_open(now)]
               if config.target_tracking and inputs is not None else None)
    if tracked:
        target, reason = max(tracked, key=lambda pair: pair[0])
        if len(tracked) > 1:
            reason += f" (highest of {len(tracked)} open policies)"
        return ProvisionDecision(target, reason, "target_tracking"), state
    if state.scheduled_target is not None:
        when = "" if state.fired_at is None else f" at {_iso(state.fired_at)}"
        reason = f"scheduled action {state.fired!r}{when} set {state.scheduled_target}"
        return ProvisionDecision(state.scheduled_target, reason, "scheduled"), state
    return _static(config.target), state


@cache
def _static(target: int) -> ProvisionDecision:
    """The static target's decision, made once per count (it is asked for on every tick)."""
    return ProvisionDecision(target, f"static target {target}", "static")


def _fire_scheduled(config: ProvisionConfig, now: float, state: PolicyState) -> PolicyState:
    """The state after firing the scheduled actions due in (last check, now]. Without scheduled
    actions (the usual case, on every tick) there is nothing to check and the state stays as it
    is: only the actions read the time of the last check, and a function given new ones starts
    from a new state (``Reconciler.set_provision``)."""
    if not config.scheduled:
        return state
    after = state.last_checked_at
    checked = now if after is None else max(after, now)  # a clock stepping back never refires
    firings = [
        (at, index, action)
        for index, action in enumerate(config.scheduled)
        if (at := action.last_firing(after, now)) is not None
    ]
    if not firings:
        return replace(state, last_checked_at=checked)
    at, _, action = max(firings, key=lambda f: (f[0], f[1]))  # same moment: the later-listed wins
    return PolicyState(checked, action.target, action.name, at)


def _track_gpu(policy: TargetTrackingPolicy, inputs: PolicyInputs) -> tuple[int, str]:
    """Size the provisioned pool on a GPU utilisation (HPA's rule):
    ``ceil(provisioned × utilisation / target)``, e.g. 2 at 0.9 for 0.6 → 3."""
    observed = (inputs.gpu_utilization if policy.metric == "gpu_utilization"
                else inputs.gpu_memory_utilization)
    current = inputs.current_provisioned
    if observed is None or current == 0:  # nothing measured yet: hold the pool as it is
        wanted = current
        formula = f"no {policy.metric} sample yet, holding {current}"
    else:
        exact = current * observed / policy.target
        wanted = max(0, math.ceil(exact - _CEIL_SLACK * max(1.0, exact)))
        formula = f"{current} × {observed:g} {policy.metric} ÷ {policy.target:g}"
    return wanted, formula


def _track(policy: TargetTrackingPolicy, inputs: PolicyInputs) -> tuple[int, str]:
    if policy.metric in ("gpu_utilization", "gpu_memory_utilization"):
        wanted, formula = _track_gpu(policy, inputs)
        target = min(max(wanted, policy.min_capacity), policy.max_capacity)
        return target, _tracking_reason(policy, formula, wanted, target)
    if policy.metric == "provisioned_concurrency_utilization":
        # utilisation = in_system / (provisioned × concurrency); holding it at the target needs
        # provisioned = in_system / (concurrency × target), e.g. 4.2 / (1 × 0.3) = 14
        per_instance = inputs.concurrency * policy.target
        formula = f"{inputs.in_system:g} in system ÷ ({inputs.concurrency} × {policy.target:g})"
    else:  # target = requests in the system per instance: 9 / 2 = 4.5 -> 5
        per_instance = policy.target
        formula = f"{inputs.in_system:g} in system ÷ {policy.target:g} per instance"
    exact = inputs.in_system / per_instance
    wanted = max(0, math.ceil(exact - _CEIL_SLACK * max(1.0, exact)))
    target = min(max(wanted, policy.min_capacity), policy.max_capacity)
    return target, _tracking_reason(policy, formula, wanted, target)


def _tracking_reason(policy: TargetTrackingPolicy, formula: str, wanted: int, target: int) -> str:
    reason = f"target tracking {policy.name!r}: {formula} → {wanted}"
    if target > wanted:
        reason += f", raised to min {policy.min_capacity}"
    elif target < wanted:
        reason += f", capped at max {policy.max_capacity}"
    return reason


def parse_provision_config(data: dict[str, Any], source: str) -> ProvisionConfig:
    """Validate a provision config in torpor's snake_case shape or Function Compute's camelCase.

    The shape is told by the top-level keys; every error names its field as the user spelt it.
    """
    if not isinstance(data, dict):
        raise SpecError(source, ["(top level): must be a mapping of fields"])
    fc = bool(data.keys() & {"targetTrackingPolicies", "scheduledActions"})
    if fc and data.keys() & {"target_tracking", "scheduled"}:
        mixed = "mixes Function Compute's camelCase fields with torpor's snake_case ones"
        raise SpecError(source, [f"(top level): {mixed}"])
    problems: dict[str, str] = {}
    document = _from_fc(data, problems) if fc else data
    try:
        config = ProvisionConfig.model_validate(document)
    except ValidationError as exc:
        for err in exc.errors():
            field = _spelling(err["loc"], fc)
            if field not in problems:
                unknown = err["type"] == "extra_forbidden"
                problems[field] = "unknown field" if unknown else err["msg"].removeprefix("Value error, ")
    if problems:
        raise SpecError(source, [f"{field}: {message}" for field, message in problems.items()])
    return config


def _from_fc(data: dict[str, Any], problems: dict[str, str]) -> dict[str, Any]:
    """FC's camelCase document in torpor's names; unknown keys pass through to be caught."""
    document = {_FC_TOP.get(key, key): value for key, value in data.items()}
    for key, names in (("target_tracking", _FC_POLICY), ("scheduled", _FC_ACTION)):
        items = document.get(key)
        if not isinstance(items, list):
            continue
        renamed = [
            {names.get(k, k): v for k, v in item.items()} if isinstance(item, dict) else item
            for item in items
        ]
        for index, item in enumerate(renamed):
            metric = item.get("metric") if isinstance(item, dict) else None
            if key == "target_tracking" and metric is not None:
                if metric in _FC_METRICS:
                    item["metric"] = _FC_METRICS[metric]
                else:
                    problems[f"targetTrackingPolicies.{index}.metricType"] = (
                        f"unknown metric {metric!r}; valid: {', '.join(_FC_METRICS)}"
                    )
        document[key] = renamed
    return document


def _spelling(loc: tuple[int | str, ...], fc: bool) -> str:
    """A pydantic error location as the user spelt it: ``targetTrackingPolicies.0.metricTarget``."""
    if not fc:
        return ".".join(str(part) for part in loc) or "(top level)"
    levels = {"target_tracking": _FC_POLICY, "scheduled": _FC_ACTION}
    names: dict[str, str] = _FC_TOP
    parts = []
    for part in loc:
        if isinstance(part, str):
            parts.append(next((theirs for theirs, ours in names.items() if ours == part), part))
            names = levels.get(part, {})
        else:
            parts.append(str(part))
    return ".".join(parts) or "(top level)"


def to_fc_json(config: ProvisionConfig) -> dict[str, Any]:
    """The config as Function Compute's camelCase PutProvisionConfig body."""
    return {
        "target": config.target,
        "targetTrackingPolicies": [_fc_item(p, _FC_POLICY) for p in config.target_tracking],
        "scheduledActions": [_fc_item(a, _FC_ACTION) for a in config.scheduled],
    }


def _fc_item(item: _Windowed, names: dict[str, str]) -> dict[str, Any]:
    metric_names = {ours: fc for fc, ours in _FC_METRICS.items()}
    out: dict[str, Any] = {}
    for theirs, ours in names.items():
        value = getattr(item, ours)
        if isinstance(value, datetime) and item.timezone:  # FC writes local times with timeZone
            value = value.astimezone(ZoneInfo(item.timezone)).replace(tzinfo=None).isoformat()
        elif isinstance(value, datetime):
            value = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        elif ours == "metric":
            value = metric_names[value]
        if value is not None:
            out[theirs] = value
    return out
