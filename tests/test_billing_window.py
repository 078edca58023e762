"""The always-on comparison covers only the time a function existed; views agree (issue 16 #14)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest

from torpor.clock import FakeClock
from torpor.errors import BadRequest
from torpor.lifecycle.state import InstanceState as S
from torpor.metering.billing import InstanceInfo, LedgerInterval, bill
from torpor.metering.prices import PriceTable
from torpor.platform import Platform

DAY_S = 86_400.0
NOW = 1_800_000_000.0
CPU = PriceTable.model_validate({"cpu_per_vcpu_s": "0.00001", "memory_per_gb_s": "0",
                                 "cpu_idle_per_vcpu_s": "0", "memory_idle_per_gb_s": "0"})


def cpu_info(function: str = "fn", instance_id: str = "i1") -> InstanceInfo:
    return InstanceInfo(instance_id=instance_id, function=function, revision="1", pool="local",
                        device="cpu", gpu_memory_mb=0, cpus=1.0, memory_mb=1024)


class TestLifetimes:
    def test_always_on_starts_at_deploy(self) -> None:
        """A function 120 s old in a 7-day window: always-on covers 120 s, not 7 days."""
        ran = LedgerInterval.of(cpu_info(), S.READY, NOW - 60, NOW - 30)
        result = bill([ran], CPU, since=NOW - 7 * DAY_S, until=NOW,
                      lifetimes={"fn": (NOW - 120, None)})
        line = result.line("fn")
        assert (line.always_on_seconds, line.always_on_cost, line.cost) == (
            D(120), D("0.00120"), D("0.00030"))  # 1 vCPU × 120 s × 0.00001; 30 s of use
        assert (line.saving_pct, line.always_on_basis) == (D("75.00"), "cpu")

    def test_deleted_function_ends_at_delete(self) -> None:
        """A function deleted within the window stops counting then."""
        ran = LedgerInterval.of(cpu_info(), S.READY, 100, 110)
        line = bill([ran], CPU, since=0, until=1000, lifetimes={"fn": (50, 200)}).line("fn")
        assert line.always_on_seconds == 150

    def test_unknown_function_spans_its_intervals(self) -> None:
        """Without a lifetime (deleted and forgotten), its own intervals bound the comparison."""
        ran = [LedgerInterval.of(cpu_info(), S.READY, 100, 110),
               LedgerInterval.of(cpu_info(instance_id="i2"), S.READY, 300, 400)]
        line = bill(ran, CPU, since=0, until=1000, lifetimes={}).line("fn")
        assert line.always_on_seconds == 300

    def test_gpu_basis_named(self) -> None:
        """A GPU function says it is compared with dedicated GPU servers."""
        info = InstanceInfo(instance_id="g", function="fn", revision="1", pool="local", device="gpu",
                            gpu_memory_mb=4096, cpus=1.0, memory_mb=1024)
        line = bill([LedgerInterval.of(info, S.READY, 0, 3600)], PriceTable(), since=0,
                    until=3600).line("fn")
        assert (line.always_on_basis, line.always_on_cost) == ("gpu", 2)


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    (tmp_path / "data").mkdir()
    platform = Platform(tmp_path / "data", clock=FakeClock(NOW))
    yield platform
    platform.store.close()


def record(platform: Platform, name: str, created_at: float, start: float, end: float | None) -> None:
    store = platform.store
    store.put_function(name, {"name": name}, "/tmp", "torpor.yaml", created_at)
    info: dict[str, Any] = {"instance_id": f"{name}-1", "function": name, "revision": 1,
                            "pool": "local", "device": "cpu", "gpu_memory_mb": 0, "cpus": 1.0,
                            "memory_mb": 1024}
    store.ledger_transition(info, "ready", start)
    if end is not None:
        store.ledger_transition(info, None, end)


class TestPlatformBill:
    async def test_seven_days_for_a_two_minute_old_function(self, platform: Platform) -> None:
        """`torpor bill --since 7d` compares 120 s of always-on, and both views agree."""
        record(platform, "old", NOW - 3 * DAY_S, NOW - 3 * DAY_S, NOW - 2 * DAY_S)
        record(platform, "new", NOW - 120, NOW - 100, None)
        full = await platform.bill(NOW - 7 * DAY_S, None, None)
        only = await platform.bill(NOW - 7 * DAY_S, None, "new")
        line = next(f for f in full["functions"] if f["function"] == "new")
        assert line["always_on_seconds"] == "120"
        assert only["functions"] == [line]
        assert (only["cost"], only["always_on_cost"]) == (line["cost"], line["always_on_cost"])

    async def test_default_window_agrees_with_function_view(self, platform: Platform) -> None:
        """Without --since, the full bill's line and the --function view are the same."""
        record(platform, "old", NOW - 3 * DAY_S, NOW - 3 * DAY_S, NOW - 2 * DAY_S)
        record(platform, "new", NOW - 120, NOW - 100, None)
        full = await platform.bill(None, None, None)
        only = await platform.bill(None, None, "new")
        assert only["functions"] == [f for f in full["functions"] if f["function"] == "new"]

    @pytest.mark.parametrize(("since", "until"), [(NOW - 99_999_999_999 * DAY_S, None),
                                                  (-1.0, None), (None, NOW + 10 * 366 * DAY_S)])
    async def test_absurd_window_refused(self, platform: Platform, since: float | None,
                                         until: float | None) -> None:
        """A window before 1970 or years ahead is a 400, not an always-on of 397 billion."""
        with pytest.raises(BadRequest, match="is not a time between 1970"):
            await platform.bill(since, until, None)
