"""Failed instances are history: not listed as live, not "stopped" again at shutdown (#16 item 12)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from torpor.clock import FakeClock
from torpor.lifecycle.instance import Instance
from torpor.lifecycle.state import InstanceFacts
from torpor.platform import Platform
from torpor.spec import parse_spec

NOW = 1_800_000_000.0


class ExitedProcess:
    """The handle of a process that is long gone."""

    pid = 999_999_999
    returncode: int | None = 3

    async def wait(self) -> int:
        return 3

    def signal_group(self, sig: signal.Signals) -> None:
        raise AssertionError("a process that exited is never signalled")


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    (tmp_path / "data").mkdir()
    platform = Platform(tmp_path / "data", clock=FakeClock(NOW))
    spec = parse_spec({"name": "fn", "runtime": {"command": ["true"]}}, source="t", base_dir=tmp_path)
    fn = platform.reconciler.apply(spec, 1, tmp_path, "t", NOW, NOW)
    for n, exited_at in enumerate([NOW - 600, None]):
        facts = InstanceFacts(started_at=NOW - 700, exited_at=exited_at)
        if exited_at is not None:
            facts.failure, facts.exit_code = "process exited with code 3 before listening", 3
        instance = Instance(id=f"fn-1-{n}", function="fn", revision=1, facts=facts,
                            stdout_path=tmp_path / "o", stderr_path=tmp_path / "e")
        instance.handle = ExitedProcess() if exited_at is not None else None
        fn.instances[instance.id] = instance
    yield platform
    platform.store.close()


async def test_live_listing_leaves_failed_out(platform: Platform) -> None:
    """`torpor instances` without --all shows only instances that have not exited."""
    assert [row["id"] for row in await platform.instances(None, include_ended=False)] == ["fn-1-1"]
    assert [row["id"] for row in await platform.instances("fn", include_ended=False)] == ["fn-1-1"]


async def test_shutdown_leaves_failed_instances_alone(platform: Platform) -> None:
    """At shutdown a long-failed instance is not drained: no draining_at after its exited_at."""
    failed = platform.functions["fn"].instances["fn-1-0"]
    await platform.reconciler.shutdown()
    assert failed.facts.draining_at is None
    assert failed.facts.exited_at == NOW - 600
