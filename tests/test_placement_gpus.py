"""GPU placement: packing, whole-vs-slice exclusion, quota, reasons, and no over-commit ever."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from torpor.placement.gpus import (
    GpuDevice,
    GpuRequest,
    NodeGpus,
    Placed,
    Placement,
    Waiting,
    free_mb,
    gpus_held,
    place,
    unplaceable,
)

MB16 = 16384


def make_nodes(*sizes_mb: int, node: str = "local") -> tuple[NodeGpus, ...]:
    return (NodeGpus(node, tuple(GpuDevice(i, "T4", size) for i, size in enumerate(sizes_mb))),)


def fill(nodes: tuple[NodeGpus, ...], request: GpuRequest, count: int,
         quota: float | None = None) -> dict[str, Placement]:
    """Place ``count`` instances one after another (each must be placed)."""
    allocations: dict[str, Placement] = {}
    for n in range(count):
        decision = place(nodes, allocations, request, quota)
        assert isinstance(decision, Placed), decision
        allocations[f"i{n}"] = decision.placement
    return allocations


class TestSlices:
    def test_burst_packs_two_per_gpu(self) -> None:
        """Four 6144 MB slices on two 16384 MB GPUs: two per GPU, the fifth waits with its reason."""
        nodes = make_nodes(MB16, MB16)
        allocations = fill(nodes, GpuRequest(gpu_memory_mb=6144), 4)
        assert [p.gpus for p in allocations.values()] == [(0,), (0,), (1,), (1,)]
        assert place(nodes, allocations, GpuRequest(gpu_memory_mb=6144)) == Waiting(
            "waiting for GPU memory: need 6144 MB, largest free 4096 MB (gpu 0)")

    def test_best_fit_prefers_the_fullest_device_that_fits(self) -> None:
        """A slice goes where the least memory is left over, keeping big holes for big slices."""
        nodes = make_nodes(MB16, MB16)
        allocations = {"big": Placement("local", (1,), 12288)}
        decision = place(nodes, allocations, GpuRequest(gpu_memory_mb=4096))
        assert isinstance(decision, Placed)
        assert decision.placement == Placement("local", (1,), 4096)
        assert decision.reason == "4096 MB on gpu 1 of local (best fit: 4096 MB free)"

    def test_freed_room_is_used_again(self) -> None:
        """After an instance goes, the waiting slice fits where it was."""
        nodes = make_nodes(MB16, MB16)
        allocations = fill(nodes, GpuRequest(gpu_memory_mb=6144), 4)
        del allocations["i2"]
        decision = place(nodes, allocations, GpuRequest(gpu_memory_mb=6144))
        assert isinstance(decision, Placed) and decision.placement.gpus == (1,)

    def test_no_gpu_asked_is_placed_on_the_node(self) -> None:
        """A CPU function is placed without touching the GPUs."""
        decision = place(make_nodes(MB16), {}, GpuRequest())
        assert decision == Placed(Placement("local"), "no GPU asked")


class TestWholeGpus:
    def test_whole_gpu_only_when_free_of_slices(self) -> None:
        """A slice on each GPU leaves no whole GPU to give."""
        nodes = make_nodes(MB16, MB16)
        allocations = {"a": Placement("local", (0,), 1024), "b": Placement("local", (1,), 1024)}
        assert place(nodes, allocations, GpuRequest(gpus=1)) == Waiting(
            "waiting for 1 whole GPU(s): at most 0 free of slices on one node")

    def test_whole_gpu_takes_a_free_device_and_blocks_slices(self) -> None:
        """A whole GPU holds all its memory: no slice lands on it afterwards."""
        nodes = make_nodes(MB16, MB16)
        allocations = {"a": Placement("local", (0,), 1024)}
        decision = place(nodes, allocations, GpuRequest(gpus=1))
        assert isinstance(decision, Placed)
        assert decision.placement == Placement("local", (1,), MB16, whole=True)
        allocations["w"] = decision.placement
        assert free_mb(nodes, allocations) == {("local", 0): MB16 - 1024, ("local", 1): 0}
        slice_decision = place(nodes, allocations, GpuRequest(gpu_memory_mb=2048))
        assert isinstance(slice_decision, Placed) and slice_decision.placement.gpus == (0,)

    def test_two_gpus_on_one_node(self) -> None:
        """gpus: 2 takes two devices of the same node, lowest indices first."""
        nodes = make_nodes(MB16, MB16, MB16)
        decision = place(nodes, {}, GpuRequest(gpus=2))
        assert isinstance(decision, Placed)
        assert decision.placement == Placement("local", (0, 1), 2 * MB16, whole=True)


class TestQuota:
    def test_slices_count_by_memory(self) -> None:
        """A quota of 1 GPU holds two 8192 MB slices of 16384 MB GPUs, not a third."""
        nodes = make_nodes(MB16, MB16)
        allocations = fill(nodes, GpuRequest(gpu_memory_mb=8192), 2, quota=1)
        assert gpus_held(nodes, allocations) == 1.0
        assert place(nodes, allocations, GpuRequest(gpu_memory_mb=8192), 1) == Waiting(
            "waiting for GPU quota: need 0.5 GPU, 1 of limits.gpus 1 held")

    def test_whole_gpus_count_one_each(self) -> None:
        """With limits.gpus 1, a second whole GPU waits for the quota although one is free."""
        nodes = make_nodes(MB16, MB16)
        allocations = fill(nodes, GpuRequest(gpus=1), 1, quota=1)
        assert place(nodes, allocations, GpuRequest(gpus=1), 1) == Waiting(
            "waiting for GPU quota: need 1 GPU, 1 of limits.gpus 1 held")


class TestUnplaceable:
    def test_slice_larger_than_every_gpu(self) -> None:
        """A 32768 MB slice on 16384 MB GPUs is refused naming the field and the largest device."""
        assert unplaceable(make_nodes(MB16, MB16), GpuRequest(gpu_memory_mb=32768)) == (
            "resources.gpu_memory_mb",
            "32768 MB is larger than every GPU (largest: gpu 0, T4, 16384 MB)")

    def test_more_gpus_than_any_node(self) -> None:
        """Three whole GPUs on a two-GPU node can never be placed."""
        assert unplaceable(make_nodes(MB16, MB16), GpuRequest(gpus=3)) == (
            "resources.gpus", "3 GPUs, but the largest node has 2")

    def test_no_gpus_at_all(self) -> None:
        """A GPU function on a machine without GPUs is refused."""
        field, message = unplaceable(make_nodes(), GpuRequest(gpu_memory_mb=1024)) or ("", "")
        assert field == "resources.gpu_memory_mb" and message.startswith("asks for a GPU")

    def test_more_than_the_quota(self) -> None:
        """A request past limits.gpus could never be placed either."""
        assert unplaceable(make_nodes(MB16, MB16), GpuRequest(gpus=2), quota_gpus=1) == (
            "resources.gpus", "2 GPUs is more than limits.gpus 1")

    def test_fitting_requests_pass(self) -> None:
        """What fits an empty node is not refused."""
        nodes = make_nodes(MB16, MB16)
        assert unplaceable(nodes, GpuRequest(gpu_memory_mb=MB16)) is None
        assert unplaceable(nodes, GpuRequest(gpus=2)) is None
        assert unplaceable(nodes, GpuRequest()) is None


requests = st.one_of(
    st.builds(GpuRequest, gpu_memory_mb=st.integers(1024, 20000)),
    st.builds(GpuRequest, gpus=st.integers(1, 3)),
)
steps = st.lists(st.tuples(st.booleans(), requests, st.integers(0, 50)), max_size=60)


class TestNeverOverCommitted:
    @settings(max_examples=150, deadline=None)
    @given(steps=steps, sizes=st.lists(st.sampled_from([8192, MB16, 24576]), min_size=1, max_size=3),
           quota=st.one_of(st.none(), st.floats(0.5, 4)))
    def test_random_place_and_free(self, steps: list[tuple[bool, GpuRequest, int]],
                                   sizes: list[int], quota: float | None) -> None:
        """Under any sequence of place/free: free memory never negative, whole GPUs unshared,
        the quota never passed, and a refusal only when the request truly does not fit."""
        nodes = make_nodes(*sizes)
        allocations: dict[str, Placement] = {}
        for n, (is_place, request, pick) in enumerate(steps):
            if not is_place and allocations:
                del allocations[sorted(allocations)[pick % len(allocations)]]
                continue
            decision = place(nodes, allocations, request, quota)
            free = free_mb(nodes, allocations)
            if isinstance(decision, Placed):
                allocations[f"i{n}"] = decision.placement
            elif request.gpu_memory_mb and "quota" not in decision.reason:
                assert max(free.values()) < request.gpu_memory_mb  # it really did not fit
            free = free_mb(nodes, allocations)
            assert min(free.values()) >= 0
            if quota is not None:
                assert gpus_held(nodes, allocations) <= quota + 1e-9
            for placement in allocations.values():
                if placement.whole:
                    sharing = [p for p in allocations.values() if p is not placement
                               and set(p.gpus) & set(placement.gpus)]
                    assert sharing == []
