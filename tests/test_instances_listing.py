"""Failed instances are history: not listed as live, not "stopped" again at shutdown (#16 item 12)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from torpor.address import Address
from torpor.backends import CodeRef, StartedInstance
from torpor.clock import FakeClock
from torpor.lifecycle.instance import Instance
from torpor.lifecycle.state import InstanceFacts
from torpor.platform import Platform
from torpor.spec import parse_spec

NOW = 1_800_000_000.0


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    (tmp_path / "data").mkdir()
    platform = Platform(tmp_path / "data", clock=FakeClock(NOW))
    spec = parse_spec({"name": "fn", "runtime": {"command": ["true"]}}, source="t", base_dir=tmp_path)
    fn = platform.reconciler.apply(spec, 1, CodeRef("0" * 64, tmp_path), "t", NOW, NOW)
    for n, exited_at in enumerate([NOW - 600, None]):
        facts = InstanceFacts(started_at=NOW - 700, exited_at=exited_at)
        if exited_at is not None:
            facts.failure, facts.exit_code = "process exited with code 3 after listening", 3
        started = StartedInstance(address=Address.unix(str(tmp_path / f"{n}.sock")), node="n",
                                  pool="p")
        fn.instances[f"fn-1-{n}"] = Instance(id=f"fn-1-{n}", function="fn", revision=1,
                                             facts=facts, started=started)
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
