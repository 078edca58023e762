"""GpuOffloader: frozen instances give their GPU memory back and get their exact weights back on thaw.

Most of the plan (grouping by storage, host views, freeing and regrowing storages, rollback) is
device-neutral, so ``HostStandIn`` runs it on this CPU machine with CPU tensors standing in for device
tensors. With the real backend a CPU model is left alone, which the no-op tests check. What only a GPU
can show (memory returned to the driver, pinned memory, bit-identical CUDA outputs) is in
``TestOnGpu``, skipped without CUDA.
"""

from __future__ import annotations

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch

import torpor
from torpor.gpu_offload import (
    GpuOffloader,
    OffloadingModel,
    OffloadStats,
    _Backend,
    _HostBuffer,
)

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class HostStandIn(_Backend):
    """Treats CPU tensors as 'device' tensors, so offload/restore run for real without a GPU."""

    def __init__(self, fail_allocation_at: int | None = None) -> None:
        self.fail_allocation_at = fail_allocation_at
        self.allocations = 0
        self.buffers_released = 0

    def is_target(self, tensor: torch.Tensor) -> bool:
        return bool(tensor.device.type == "cpu")

    def host_buffer(self, nbytes: int) -> _HostBuffer:
        def release() -> None:
            self.buffers_released += 1

        return _HostBuffer(torch.empty(nbytes, dtype=torch.uint8), release)

    def allocate(self, storage: torch.UntypedStorage, nbytes: int) -> None:
        self.allocations += 1
        if self.allocations == self.fail_allocation_at:
            raise RuntimeError("CUDA out of memory (simulated)")
        super().allocate(storage, nbytes)


def stand_in(backend: HostStandIn | None = None) -> GpuOffloader:
    offloader = GpuOffloader()
    offloader._backend = backend or HostStandIn()
    return offloader


def small_net() -> torch.nn.Sequential:
    """Linear layers, a BatchNorm (buffers) and a weight tied across two layers."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
        torch.nn.Linear(32, 32), torch.nn.Linear(32, 8),
    )
    net[4].weight = net[3].weight  # tied: one Parameter in two modules
    net.eval()
    norm = net[1]
    assert isinstance(norm, torch.nn.BatchNorm1d)
    with torch.no_grad():  # non-trivial running statistics, so the buffers matter to the output
        norm.running_mean.uniform_(-1, 1)  # type: ignore[union-attr]
        norm.running_var.uniform_(0.5, 2)  # type: ignore[union-attr]
    return net


class Table(torch.nn.Module):
    """A buffer and a view of it: two tensors, one storage."""

    table: torch.Tensor
    row: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", torch.arange(64, dtype=torch.float32).reshape(8, 8))
        self.register_buffer("row", self.table[3])


class Pair(torch.nn.Module):
    def __init__(self, first: torch.nn.Linear, second: torch.nn.Linear) -> None:
        super().__init__()
        self.first = first
        self.second = second


def weight(net: torch.nn.Sequential, index: int) -> torch.Tensor:
    layer = net[index]
    assert isinstance(layer, torch.nn.Linear)
    return layer.weight


def tensors_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def storage_bytes(module: torch.nn.Module) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in tensors_of(module).values()}
    return sum(storages.values())


def test_import_is_cheap_and_leaves_torch_alone() -> None:
    """A template process imports user code before forking: the module must not pull in torch or CUDA."""
    code = "import sys, torpor.gpu_offload; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


class TestRegister:
    @pytest.mark.parametrize("value", [42, "net", None])
    def test_not_a_module_is_a_type_error_naming_the_argument(self, value: object) -> None:
        with pytest.raises(TypeError, match=r"register\(module\): module must be a torch.nn.Module, got "):
            GpuOffloader().register(value)  # type: ignore[type-var]

    def test_a_tensor_is_refused_too(self) -> None:
        """A common slip: registering a weight instead of the module that owns it."""
        with pytest.raises(TypeError, match=r"got Tensor"):
            GpuOffloader().register(torch.zeros(2))  # type: ignore[type-var]

    def test_returns_the_module_and_registers_it_once(self) -> None:
        offloader = GpuOffloader()
        first, second = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        assert offloader.register(first) is first
        offloader.register(second)
        offloader.register(first)
        assert offloader.modules == (first, second)


class TestWithoutCuda:
    """The real backend moves CUDA tensors only: a CPU model is never touched."""

    def assert_zero(self, stats: OffloadStats) -> None:
        assert (stats.bytes, stats.seconds) == (0, 0.0)
        if not torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            assert stats.device_bytes_after == 0

    def test_offload_and_restore_are_no_ops_on_cpu_tensors(self) -> None:
        net = small_net()
        before = {name: (t, t.data_ptr(), t.clone()) for name, t in tensors_of(net).items()}
        x = torch.randn(4, 16)
        expected = net(x)
        offloader = GpuOffloader()
        offloader.register(net)
        self.assert_zero(offloader.offload())
        assert not offloader.offloaded
        assert offloader.pinned_bytes == 0
        self.assert_zero(offloader.restore())
        for name, t in tensors_of(net).items():
            original, pointer, value = before[name]
            assert t is original and t.data_ptr() == pointer and torch.equal(t, value), name
        assert torch.equal(net(x), expected)
        assert offloader.prepare() == 0

    def test_restore_without_offload_is_a_no_op(self) -> None:
        offloader = stand_in()
        net = offloader.register(small_net())
        pointers = {name: t.data_ptr() for name, t in tensors_of(net).items()}
        assert offloader.restore() == OffloadStats(0, 0.0, 0)
        assert {name: t.data_ptr() for name, t in tensors_of(net).items()} == pointers

    def test_meta_tensors_are_left_alone(self) -> None:
        """No storage, nothing to free: 'meta' modules (and zero-byte tensors) are skipped."""
        offloader = stand_in()
        meta = offloader.register(torch.nn.Linear(4, 4, device="meta"))
        assert offloader.offload() == OffloadStats(0, 0.0, 0)
        assert meta.weight.is_meta and not offloader.offloaded


class TestPlan:
    """The whole offload/restore path with CPU tensors standing in for device tensors."""

    def test_offload_moves_every_storage_once_and_keeps_the_objects(self) -> None:
        offloader = stand_in()
        net = offloader.register(small_net())
        objects = tensors_of(net)
        values = {name: t.clone() for name, t in objects.items()}
        old_storages = {name: t.untyped_storage() for name, t in objects.items()}
        expected_bytes = storage_bytes(net)
        x = torch.randn(4, 16)
        expected = net(x)

        stats = offloader.offload()
        assert stats.bytes == expected_bytes  # the tied weight counted once
        assert offloader.offloaded
        arena = offloader._host
        assert arena is not None and offloader.pinned_bytes == arena.capacity >= expected_bytes
        start = arena.tensor.data_ptr()
        for name, t in tensors_of(net).items():
            assert t is objects[name], name  # same Parameter/buffer objects
            assert start <= t.data_ptr() < start + arena.capacity, f"{name} is not in the arena"
            assert torch.equal(t, values[name]), name
            assert old_storages[name].nbytes() == 0, f"{name}: device storage not freed"
        assert net[3].weight is net[4].weight
        assert torch.equal(net(x), expected)  # while frozen the module is a working CPU module

    def test_restore_is_bit_identical_and_revives_other_views(self) -> None:
        offloader = stand_in()
        net = offloader.register(small_net())
        transposed = weight(net, 0).detach().t()  # a view user code made in setup()
        x = torch.randn(4, 16)
        expected = net(x)
        expected_transposed = transposed.clone()

        offloader.offload()
        assert transposed.untyped_storage().nbytes() == 0  # freed even though user code holds a view
        stats = offloader.restore()
        assert stats.bytes == storage_bytes(net)
        assert not offloader.offloaded
        assert torch.equal(net(x), expected)
        assert torch.equal(transposed, expected_transposed)
        assert transposed.untyped_storage().data_ptr() == weight(net, 0).untyped_storage().data_ptr()
        assert net[3].weight is net[4].weight

    def test_idempotent(self) -> None:
        offloader = stand_in()
        net = offloader.register(small_net())
        offloader.offload()
        pointers = {name: t.data_ptr() for name, t in tensors_of(net).items()}
        assert offloader.offload() == OffloadStats(0, 0.0, 0)
        assert {name: t.data_ptr() for name, t in tensors_of(net).items()} == pointers
        assert offloader.restore().bytes > 0
        assert offloader.restore() == OffloadStats(0, 0.0, 0)

    def test_host_arena_is_allocated_once_and_reused(self) -> None:
        backend = HostStandIn()
        offloader = stand_in(backend)
        net = offloader.register(small_net())
        assert offloader.prepare() > 0
        arena = offloader._host
        frozen_pointers = []
        for _ in range(3):
            offloader.offload()
            frozen_pointers.append({name: t.data_ptr() for name, t in tensors_of(net).items()})
            offloader.restore()
        assert offloader._host is arena
        assert frozen_pointers[0] == frozen_pointers[1] == frozen_pointers[2]
        assert backend.buffers_released == 0

    def test_arena_grows_when_more_is_registered(self) -> None:
        backend = HostStandIn()
        offloader = stand_in(backend)
        offloader.register(small_net())
        offloader.offload()
        offloader.restore()
        small = offloader.pinned_bytes
        offloader.register(torch.nn.Linear(256, 256))
        offloader.offload()
        assert offloader.pinned_bytes > small and backend.buffers_released == 1  # the old one let go
        offloader.restore()

    def test_views_sharing_a_storage_stay_shared(self) -> None:
        module = Table()
        offloader = stand_in()
        offloader.register(module)
        assert offloader.offload().bytes == 64 * 4
        assert torch.equal(module.row, torch.arange(24, 32, dtype=torch.float32))
        offloader.restore()
        assert module.row.untyped_storage().data_ptr() == module.table.untyped_storage().data_ptr()
        assert module.row.storage_offset() == 24 and torch.equal(module.row, module.table[3])

    def test_other_devices_in_a_mixed_module_are_left_alone(self) -> None:
        module = Pair(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4, device="meta"))
        offloader = stand_in()
        offloader.register(module)
        dense_bytes = storage_bytes(module.first)
        assert offloader.offload().bytes == dense_bytes
        assert module.second.weight.is_meta
        offloader.restore()
        assert module.second.weight.is_meta

    def test_unsupported_tensor_is_named_and_nothing_changes(self) -> None:
        module = torch.nn.Linear(4, 4)
        module.register_buffer("mask", torch.eye(4).to_sparse())
        offloader = stand_in()
        offloader.register(module)
        pointer = module.weight.data_ptr()
        with pytest.raises(ValueError, match=r"offload module 0 \(Linear\) buffer 'mask': it has layout"):
            offloader.offload()
        assert module.weight.data_ptr() == pointer and not offloader.offloaded

    def test_storage_that_cannot_be_resized_still_round_trips(self) -> None:
        """torch.frombuffer storages cannot be freed in place: the module just stops referencing them."""
        values = torch.arange(16, dtype=torch.float32)
        external = torch.frombuffer(bytearray(values.numpy().tobytes()), dtype=torch.float32)
        storage = external.untyped_storage()
        assert not storage.resizable()
        module = torch.nn.Module()
        module.register_buffer("external", external)
        offloader = stand_in()
        offloader.register(module)
        offloader.offload()
        assert storage.nbytes() == 64  # cannot be freed in place; the module no longer points at it
        assert external.untyped_storage().data_ptr() != storage.data_ptr()
        offloader.restore()
        assert torch.equal(dict(module.named_buffers())["external"], values)

    def test_failed_restore_stays_frozen_and_can_be_retried(self) -> None:
        backend = HostStandIn(fail_allocation_at=3)
        offloader = stand_in(backend)
        net = offloader.register(small_net())
        x = torch.randn(4, 16)
        expected = net(x)
        storages = [t.untyped_storage() for t in tensors_of(net).values()]
        offloader.offload()
        with pytest.raises(RuntimeError, match="out of memory"):
            offloader.restore()
        assert offloader.offloaded
        assert all(s.nbytes() == 0 for s in storages)  # the partial allocation was given back
        assert torch.equal(net(x), expected)  # the weights are intact on the host
        offloader.restore()
        assert not offloader.offloaded and torch.equal(net(x), expected)

    def test_module_registered_while_offloaded_moves_at_the_next_freeze(self) -> None:
        offloader = stand_in()
        offloader.register(small_net())
        offloader.offload()
        late = offloader.register(torch.nn.Linear(4, 4))
        pointer = late.weight.data_ptr()
        offloader.restore()
        assert late.weight.data_ptr() == pointer
        offloader.offload()
        assert late.weight.data_ptr() != pointer
        offloader.restore()

    def test_close_is_refused_while_offloaded(self) -> None:
        backend = HostStandIn()
        offloader = stand_in(backend)
        offloader.register(small_net())
        offloader.offload()
        with pytest.raises(RuntimeError, match=r"restore\(\) them first"):
            offloader.close()
        offloader.restore()
        offloader.close()
        assert offloader.pinned_bytes == 0 and backend.buffers_released == 1


class RecordingOffloader(GpuOffloader):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def offload(self) -> OffloadStats:
        self.calls.append("offload")
        return super().offload()

    def restore(self) -> OffloadStats:
        self.calls.append("restore")
        return super().restore()


class TestOffloadingModel:
    def test_hooks_call_through(self) -> None:
        model = OffloadingModel()
        recorder = RecordingOffloader()
        model.offloader = recorder
        model.on_freeze()
        model.on_thaw()
        assert recorder.calls == ["offload", "restore"]

    def test_default_offloader_is_per_instance_and_moves_weights(self) -> None:
        class Net(OffloadingModel):
            def setup(self) -> None:
                self.net = self.offloader.register(small_net())

        first, second = Net(), Net()
        assert isinstance(first, torpor.Model)
        assert isinstance(first.offloader, GpuOffloader) and first.offloader is not second.offloader
        first.setup()
        first.offloader._backend = HostStandIn()
        first.on_freeze()
        assert first.offloader.offloaded
        first.on_thaw()
        assert not first.offloader.offloaded


@needs_cuda
class TestOnGpu:
    @pytest.fixture
    def floor(self) -> Iterator[int]:
        """memory_reserved() with nothing of this test's allocated: what a freeze can get back to."""
        gc.collect()
        torch.cuda.synchronize()
        clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear is not None:
            clear()
        torch.cuda.empty_cache()
        yield int(torch.cuda.memory_reserved())
        gc.collect()
        torch.cuda.empty_cache()

    def gpu_net(self) -> torch.nn.Sequential:
        """About 256 MiB of fp32 weights, plus BatchNorm buffers and a tied weight."""
        torch.manual_seed(0)
        layers: list[torch.nn.Module] = [torch.nn.Linear(4096, 4096) for _ in range(4)]
        net = torch.nn.Sequential(*layers, torch.nn.BatchNorm1d(4096), torch.nn.Linear(4096, 4096))
        net[5].weight = net[0].weight
        return net.eval().cuda()

    def test_offload_returns_the_memory_and_restore_is_bit_identical(self, floor: int) -> None:
        net = self.gpu_net()
        transposed = weight(net, 1).detach().t()
        x = torch.randn(64, 4096, device="cuda")
        with torch.inference_mode():
            expected = net(x)
        weight_bytes = storage_bytes(net)
        offloader = GpuOffloader()
        offloader.register(net)
        torch.cuda.synchronize()
        allocated = torch.cuda.memory_allocated()

        stats = offloader.offload()
        assert stats.bytes == weight_bytes
        assert allocated - torch.cuda.memory_allocated() >= weight_bytes
        assert stats.device_bytes_after == torch.cuda.memory_reserved()
        assert torch.cuda.memory_reserved() <= floor + 64 * MIB  # x, expected and rounding only
        assert weight(net, 0).device.type == "cpu" and weight(net, 0).is_pinned()

        stats = offloader.restore()
        assert stats.bytes == weight_bytes and stats.device_bytes_after >= weight_bytes
        assert all(t.is_cuda for t in tensors_of(net).values())
        with torch.inference_mode():
            assert torch.equal(net(x), expected)
        assert torch.equal(transposed, weight(net, 1).t())
        assert net[5].weight is net[0].weight

    def test_pinned_buffers_are_reused_across_freezes(self, floor: int) -> None:
        net = self.gpu_net()
        offloader = GpuOffloader()
        offloader.register(net)
        pointers = []
        for _ in range(2):
            offloader.offload()
            pointers.append({name: t.data_ptr() for name, t in tensors_of(net).items()})
            assert all(t.is_pinned() for t in tensors_of(net).values())
            offloader.restore()
        assert pointers[0] == pointers[1]
        assert offloader.pinned_bytes < 1.01 * storage_bytes(net) + MIB  # exact size, not a power of two
        assert offloader._host is not None and offloader._host._finalizer is not None  # cudaHostRegister

    def test_cpu_part_of_a_mixed_module_is_untouched(self, floor: int) -> None:
        module = Pair(torch.nn.Linear(256, 256).cuda(), torch.nn.Linear(256, 256))
        cpu_weight, cpu_pointer = module.second.weight, module.second.weight.data_ptr()
        gpu_values = module.first.weight.detach().clone()
        offloader = GpuOffloader()
        offloader.register(module)
        gpu_bytes = storage_bytes(module.first)
        assert offloader.offload().bytes == gpu_bytes
        assert module.second.weight is cpu_weight and cpu_weight.data_ptr() == cpu_pointer
        offloader.restore()
        assert module.first.weight.device == gpu_values.device
        assert torch.equal(module.first.weight, gpu_values)
        assert module.second.weight.data_ptr() == cpu_pointer
