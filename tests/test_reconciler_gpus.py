"""The reconciler places GPU instances pool by pool, best pool first, and says why one waits."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torpor.backends import CodeRef, NodeInfo
from torpor.clock import FakeClock
from torpor.lifecycle.reconciler import Reconciler
from torpor.placement.gpus import GpuDevice, Placement
from torpor.spec import FunctionSpec
from torpor.store import Store


class TwoPools:
    """A backend with one 16384 MB GPU on an on-prem node and one on a cloud node."""

    name = "fake"
    places_gpus = False
    pool_priorities: ClassVar[dict[str, int]] = {"onprem": 10, "cloud": 1}

    def nodes(self) -> list[NodeInfo]:
        gpu = (GpuDevice(0, "T4", 16384),)
        return [NodeInfo("cloud-1", "10.0.0.2", "cloud", {}, {}, gpus=gpu),
                NodeInfo("onprem-1", "10.0.0.1", "onprem", {}, {}, gpus=gpu)]

    def prepare(self, plan: Any) -> None:
        pass


def test_best_pool_first_then_the_next(tmp_path: Path) -> None:
    """Slices go on-prem first, then to the cloud; a third waits with the on-prem GPU's reason."""
    store = Store(tmp_path / "torpor.db")
    try:
        reconciler = Reconciler(store, FakeClock(), TwoPools())  # type: ignore[arg-type]
        spec = FunctionSpec.model_validate({"name": "fn", "runtime": {"command": ["true"]},
                                            "resources": {"gpu_memory_mb": 12288}})
        fn = reconciler.apply(spec, 1, CodeRef("d", tmp_path), "src", 0.0, 0.0)
        pools = ("onprem", "cloud")
        first, _ = reconciler.place_next(fn, pools)
        assert first == Placement("onprem-1", (0,), 12288)
        reconciler.placements["a"] = first
        second, _ = reconciler.place_next(fn, pools)
        assert second == Placement("cloud-1", (0,), 12288)
        reconciler.placements["b"] = second
        assert reconciler.place_next(fn, pools) == (
            None, "waiting for GPU memory: need 12288 MB, largest free 4096 MB (gpu 0)")
        assert reconciler.place_next(fn, ("elsewhere",)) == (
            None, "waiting for GPU memory: need 12288 MB, no GPU on any node")
    finally:
        store.close()


def test_without_pools_the_priorities_decide_and_placement_pools_restrict(tmp_path: Path) -> None:
    """A start naming no pools goes to the highest-priority pool; placement.pools restricts it."""
    store = Store(tmp_path / "torpor.db")
    try:
        reconciler = Reconciler(store, FakeClock(), TwoPools())  # type: ignore[arg-type]
        spec = FunctionSpec.model_validate({"name": "fn", "runtime": {"command": ["true"]},
                                            "resources": {"gpu_memory_mb": 12288}})
        fn = reconciler.apply(spec, 1, CodeRef("d", tmp_path), "src", 0.0, 0.0)
        assert reconciler.place_next(fn) == (Placement("onprem-1", (0,), 12288), None)
        cloud_only = FunctionSpec.model_validate({
            "name": "fn", "runtime": {"command": ["true"]}, "resources": {"gpu_memory_mb": 12288},
            "placement": {"pools": ["cloud"]}})
        fn = reconciler.apply(cloud_only, 2, CodeRef("d", tmp_path), "src", 0.0, 0.0)
        assert reconciler.place_next(fn) == (Placement("cloud-1", (0,), 12288), None)
    finally:
        store.close()
