"""Move a torch model's weights off the GPU while its instance is frozen, and back on thaw.

DESIGN.md promises that a FROZEN instance holds no GPU memory: the cgroup freezer stops the process, but
memory it holds on the device stays allocated (and billed) unless the process gives it back first.
:class:`GpuOffloader` does that from ``Model.on_freeze``/``on_thaw``:

* ``offload()`` copies every registered module's CUDA parameters and buffers into one pinned host arena
  (allocated at the first freeze, or by ``prepare()``, and reused by every later freeze), points the
  module tensors at their host copies, frees the device storage, and returns the caching allocator's
  cached blocks to the driver, so ``torch.cuda.memory_reserved()`` drops to (nearly) zero.
* ``restore()`` allocates the device storage again and streams the bytes back from the pinned arena with
  asynchronous copies on a side stream, so a thaw costs about ``weight bytes / pinned H2D bandwidth``
  (the goal in BENCHMARKS.md is at most 1.2 times that).

Quick start (or subclass :class:`OffloadingModel`, which wires the two hooks)::

    class Generator(torpor.Model):
        def setup(self):
            self.net = build_net().to("cuda").eval()
            self.offloader = GpuOffloader()
            self.offloader.register(self.net)

        def on_freeze(self):
            self.offloader.offload()

        def on_thaw(self):
            self.offloader.restore()

What stays valid across a freeze: the module objects and their ``Parameter``/buffer objects are never
replaced (only their ``.data`` is swapped), so references held by user code, hooks or an optimizer keep
working. The device *storage* objects are kept too: they are shrunk to zero bytes while frozen
(``UntypedStorage.resize_(0)``, as FSDP does) and grown again on thaw, so other views of a weight made
in ``setup()`` (``w_t = self.net.proj.weight.t()``) free their memory with it and see the weights again
after the thaw. While frozen, module tensors are ordinary CPU tensors in the pinned arena (readable,
e.g. for ``state_dict()``); such other views are empty until the thaw and must not be touched. Tied
weights (one ``Parameter`` in two modules, or views of one storage) stay tied. A storage torch cannot
resize (memory imported from another library through DLPack) is only let go by the module, and freed
once nothing else references it.

What is moved: tensors on CUDA devices only, each back to the device it came from (several GPUs are
fine). CPU tensors are never touched, so on a machine without CUDA (or for a model on the CPU) both
calls are no-ops returning zero stats and never initialise CUDA -- a frozen CPU instance uses no CPU
anyway. Tensors on 'meta' (no storage) or other devices are left as they are, and zero-byte tensors
(e.g. an uninitialised ``LazyLinear``) hold nothing to free. Sparse, quantized and wrapper-subclass
tensors have no single plain storage to move: ``offload()`` raises ``ValueError`` naming the tensor
before changing anything. Gradients, CUDA graphs, KV caches and other tensors that are not parameters or
buffers of a registered module are not moved: free them in ``on_freeze`` before offloading (a CUDA graph
captured before a freeze points at freed memory afterwards; capture it again after the thaw).

Failure leaves a consistent state: ``offload()`` copies everything before it changes anything, and a
``restore()`` that runs out of device memory gives back what it allocated, stays frozen (weights safe in
host memory) and raises, so it can be retried.

Not thread safe: the runtime calls ``on_freeze``/``on_thaw`` one at a time, and nothing else may use the
model meanwhile. torch is imported inside the methods, so ``import torpor.gpu_offload`` is cheap.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from torpor.sdk import Model

if TYPE_CHECKING:
    import torch  # type: ignore[import-not-found, unused-ignore]

ModuleT = TypeVar("ModuleT", bound="torch.nn.Module")

# Arena regions start on this boundary: the CUDA caching allocator's own granularity, and a multiple of
# every dtype's size, so a region can be viewed as any dtype.
ALIGN_BYTES = 512
# Storages above this size come from the caching allocator's large pool, which restore() pre-reserves
# in one block so that each storage is a cheap sub-allocation instead of its own cudaMalloc.
_SMALL_ALLOCATION_BYTES = 1 << 20
_CUDA_HOST_REGISTER_PORTABLE = 1  # pinned for every CUDA context, so any GPU can DMA from it


@dataclass(frozen=True)
class OffloadStats:
    """What one ``offload()`` or ``restore()`` did.

    ``bytes``: device storage bytes moved (0 for a no-op); ``seconds``: wall time of the call, including
    the final synchronisation; ``device_bytes_after``: ``torch.cuda.memory_reserved()`` afterwards,
    summed over the devices involved (0 when CUDA was never initialised).
    """

    bytes: int
    seconds: float
    device_bytes_after: int


@dataclass
class _Member:
    """One module tensor and where it sits in its storage, so a view can be rebuilt exactly."""

    tensor: torch.Tensor
    dtype: torch.dtype
    storage_offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass
class _Group:
    """One device storage (shared by every tensor in ``members``) and its region of the host arena."""

    storage: torch.UntypedStorage
    device: torch.device
    nbytes: int
    offset: int
    members: list[_Member] = field(default_factory=list)


class _HostBuffer:
    """A pinned uint8 host tensor plus whatever releases its pinning (runs once, at close or collection)."""

    def __init__(self, tensor: torch.Tensor, release: Callable[[], None] | None = None) -> None:
        self.tensor = tensor
        self.capacity = int(tensor.numel())
        self._finalizer = weakref.finalize(self, release) if release is not None else None
        if self._finalizer is not None:
            self._finalizer.atexit = False  # at interpreter exit the OS reclaims it; CUDA may be gone

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()


class _Backend:
    """Device-specific steps of an offload, so the plan itself (grouping, views, rollback) is device-neutral.

    This base class treats copies as synchronous and has nothing to cache or synchronise; tests subclass
    it to run the whole plan with CPU tensors standing in for device tensors. :class:`_CudaBackend` is
    what real offloaders use.
    """

    def is_target(self, tensor: torch.Tensor) -> bool:
        raise NotImplementedError

    def host_buffer(self, nbytes: int) -> _HostBuffer:
        raise NotImplementedError

    def side_stream(self, device: torch.device) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def synchronize(self, devices: Sequence[torch.device]) -> None:
        pass

    def release_cached(self, devices: Sequence[torch.device]) -> None:
        pass

    def reserve(self, device: torch.device, nbytes: int) -> None:
        pass

    def allocate(self, storage: torch.UntypedStorage, nbytes: int) -> None:
        storage.resize_(nbytes)

    def trim(self, devices: Sequence[torch.device]) -> None:
        pass

    def reserved_bytes(self, devices: Sequence[torch.device]) -> int:
        return 0


class _CudaBackend(_Backend):
    def __init__(self) -> None:
        self._streams: dict[int, Any] = {}

    def is_target(self, tensor: torch.Tensor) -> bool:
        return bool(tensor.device.type == "cuda")

    def host_buffer(self, nbytes: int) -> _HostBuffer:
        """Exactly ``nbytes`` (page-rounded) of pinned memory.

        ``torch.empty(pin_memory=True)`` rounds every request up to a power of two (up to 2x the weights
        in unswappable host memory per frozen instance), so the arena is an ordinary allocation pinned
        with ``cudaHostRegister``; torch's pinned allocator is the fallback where registering fails.
        """
        import torch  # type: ignore[import-not-found, unused-ignore]

        page = mmap.PAGESIZE
        size = -(-max(nbytes, 1) // page) * page
        raw = torch.empty(size + page, dtype=torch.uint8)
        start = -raw.data_ptr() % page  # register whole pages that lie inside this allocation only
        pointer = raw.data_ptr() + start
        cudart = torch.cuda.cudart()  # type: ignore[no-untyped-call, unused-ignore]
        if int(cudart.cudaHostRegister(pointer, size, _CUDA_HOST_REGISTER_PORTABLE)) == 0:
            # ``raw`` rides in the closure: it is freed only after the pages are unregistered
            return _HostBuffer(raw[start : start + size], functools.partial(_unregister, pointer, raw))
        del raw
        _clear_cuda_error()
        return _HostBuffer(torch.empty(size, dtype=torch.uint8, pin_memory=True))

    def side_stream(self, device: torch.device) -> contextlib.AbstractContextManager[None]:
        """Copies run on a stream of their own that first waits for the caller's pending work.

        A non-default stream does not implicitly serialise with work other code queued elsewhere, and
        waiting on it alone is enough before the copied tensors are used or freed.
        """
        import torch  # type: ignore[import-not-found, unused-ignore]

        index = _device_index(device)
        stream = self._streams.get(index)
        if stream is None:
            stream = self._streams[index] = torch.cuda.Stream(index)  # type: ignore[no-untyped-call, unused-ignore]
        stream.wait_stream(torch.cuda.current_stream(index))
        return _on_stream(index, stream)

    def synchronize(self, devices: Sequence[torch.device]) -> None:
        import torch  # type: ignore[import-not-found, unused-ignore]

        for device in devices:
            torch.cuda.synchronize(_device_index(device))

    def release_cached(self, devices: Sequence[torch.device]) -> None:
        """Hand the freed blocks back to the driver; until then memory_reserved() still counts them."""
        import torch  # type: ignore[import-not-found, unused-ignore]

        self.synchronize(devices)
        # cuBLAS workspaces (tens of MiB per handle and stream) live in the caching allocator and survive
        # empty_cache(); the next matmul after the thaw allocates them again
        clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear_workspaces is not None:
            clear_workspaces()
        for device in devices:
            with torch.cuda.device(_device_index(device)):
                torch.cuda.empty_cache()

    def reserve(self, device: torch.device, nbytes: int) -> None:
        """Cache one block for all large storages: one cudaMalloc, then cheap sub-allocations."""
        import torch  # type: ignore[import-not-found, unused-ignore]

        if nbytes > _SMALL_ALLOCATION_BYTES:
            block = torch.empty(nbytes, dtype=torch.uint8, device=device)
            del block  # back to the allocator's cache on the current stream, where resize_ allocates

    def trim(self, devices: Sequence[torch.device]) -> None:
        """Drop whatever the reservation left unused (e.g. when ``max_split_size_mb`` forbade splitting it),
        so a thaw never holds more than the weights; fully used segments are kept."""
        import torch  # type: ignore[import-not-found, unused-ignore]

        for device in devices:
            with torch.cuda.device(_device_index(device)):
                torch.cuda.empty_cache()

    def reserved_bytes(self, devices: Sequence[torch.device]) -> int:
        return _cuda_reserved(devices)


class GpuOffloader:
    """Moves registered modules' CUDA weights to pinned host memory and back (see the module docstring).

    ``register()`` the modules in ``setup()``; call ``offload()`` from ``on_freeze`` and ``restore()``
    from ``on_thaw`` (or use :class:`OffloadingModel`). Optionally ``prepare()`` at the end of
    ``setup()`` so the first freeze does not also pay for allocating and pinning the host arena.
    Both calls are idempotent: a second ``offload()`` before a ``restore()`` moves nothing, and
    ``restore()`` without an ``offload()`` is a no-op. Not thread safe (the runtime never calls the
    hooks concurrently).
    """

    def __init__(self) -> None:
        self._modules: list[torch.nn.Module] = []
        self._backend: _Backend = _CudaBackend()
        self._host: _HostBuffer | None = None
        self._frozen: list[_Group] | None = None
        self.last_offload: OffloadStats | None = None
        self.last_restore: OffloadStats | None = None

    @property
    def modules(self) -> tuple[torch.nn.Module, ...]:
        return tuple(self._modules)

    @property
    def offloaded(self) -> bool:
        """True between an ``offload()`` that moved something and the next ``restore()``."""
        return self._frozen is not None

    @property
    def pinned_bytes(self) -> int:
        """Bytes of pinned host arena: 0 before the first freeze or ``prepare()``, kept until ``close()``."""
        return 0 if self._host is None else self._host.capacity

    def register(self, module: ModuleT) -> ModuleT:
        """Add a module whose parameters and buffers move with every freeze; returns it for chaining.

        Several modules may be registered; registering one twice, or tensors shared between modules,
        moves them once. A module registered while offloaded moves from the next ``offload()`` on.
        """
        import torch  # type: ignore[import-not-found, unused-ignore]

        if not isinstance(module, torch.nn.Module):
            raise TypeError("GpuOffloader.register(module): module must be a torch.nn.Module, "
                            f"got {type(module).__name__}")
        if not any(existing is module for existing in self._modules):
            self._modules.append(module)
        return module

    def prepare(self) -> int:
        """Allocate and pin the host arena for the weights now on the device; returns its size in bytes.

        Pinning gigabytes takes a while (the kernel has to fault in and lock every page), so doing it at
        the end of ``setup()`` keeps that out of the first freeze.
        """
        if self._frozen is None:
            groups, total = self._plan()
            if groups:
                self._arena(total)
        return self.pinned_bytes

    def offload(self) -> OffloadStats:
        """Copy weights to the pinned arena, point the modules at the copies, free the device memory."""
        if self._frozen is not None:
            self.last_offload = OffloadStats(0, 0.0, self._reserved_now())
            return self.last_offload
        started = time.perf_counter()
        groups, total = self._plan()
        if not groups:
            self.last_offload = OffloadStats(0, 0.0, self._reserved_now())
            return self.last_offload
        import torch  # type: ignore[import-not-found, unused-ignore]

        host = self._arena(total)
        base = int(host.storage_offset())
        devices = _devices(groups)
        # copy first, change nothing until every byte is safely on the host
        for device in devices:
            with self._backend.side_stream(device):
                for group in groups:
                    if group.device == device:
                        _region(host, group).copy_(_bytes_of(group.storage), non_blocking=True)
        self._backend.synchronize(devices)
        for group in groups:
            for member in group.members:
                member.tensor.data = _view(host.untyped_storage(), base + group.offset, member,
                                           torch.device("cpu"))
            if group.storage.resizable():
                group.storage.resize_(0)  # frees it even where user code still holds another view
        self._frozen = groups
        self._backend.release_cached(devices)
        self.last_offload = OffloadStats(sum(g.nbytes for g in groups), time.perf_counter() - started,
                                         self._backend.reserved_bytes(devices))
        return self.last_offload

    def restore(self) -> OffloadStats:
        """Allocate the device storage again and copy the weights back; returns once they are there.

        Each storage gets its own allocation again (not views into one big block), so storage sharing,
        ``untyped_storage()`` and libraries that refuse shared tensors (safetensors) see exactly what
        they saw before the freeze. To keep that cheap, one block the size of all large storages is
        reserved first, so the caching allocator carves them out of one cudaMalloc; the copies, one per
        storage, are queued asynchronously on a side stream, so their launch cost hides behind the DMA.
        """
        groups = self._frozen
        if groups is None:
            self.last_restore = OffloadStats(0, 0.0, self._reserved_now())
            return self.last_restore
        assert self._host is not None
        started = time.perf_counter()
        host = self._host.tensor
        devices = _devices(groups)
        missing = [g for g in groups if g.storage.nbytes() != g.nbytes]  # all but non-resizable ones
        for device in devices:
            large = sum(_align(g.nbytes) for g in missing
                        if g.device == device and g.nbytes > _SMALL_ALLOCATION_BYTES)
            self._backend.reserve(device, large)
        allocated: list[_Group] = []
        try:
            for group in missing:
                self._backend.allocate(group.storage, group.nbytes)
                allocated.append(group)
            for device in devices:
                with self._backend.side_stream(device):
                    for group in groups:
                        if group.device == device:
                            _bytes_of(group.storage).copy_(_region(host, group), non_blocking=True)
            self._backend.synchronize(devices)
        except BaseException:
            # stay frozen and give the partial allocation back; the weights are intact in the arena
            with contextlib.suppress(Exception):
                self._backend.synchronize(devices)
            for group in allocated:
                group.storage.resize_(0)
            with contextlib.suppress(Exception):
                self._backend.release_cached(devices)
            raise
        for group in groups:
            for member in group.members:
                member.tensor.data = _view(group.storage, 0, member, group.device)
        self._frozen = None
        self._backend.trim(devices)
        self.last_restore = OffloadStats(sum(g.nbytes for g in groups), time.perf_counter() - started,
                                         self._backend.reserved_bytes(devices))
        return self.last_restore

    def close(self) -> None:
        """Unpin and free the host arena (a later freeze allocates a new one). Refused while offloaded."""
        if self._frozen is not None:
            raise RuntimeError("GpuOffloader.close(): the weights are offloaded; restore() them first")
        if self._host is not None:
            self._host.close()
            self._host = None

    def _plan(self) -> tuple[list[_Group], int]:
        """Group the registered modules' target tensors by storage and lay the storages out in the arena.

        Deterministic (registration order, then parameters before buffers in module order), so an
        unchanged model gets the same layout, and the same host addresses, at every freeze.
        """
        seen: set[int] = set()
        groups: dict[tuple[str, int | None, int], _Group] = {}
        end = 0
        for index, module in enumerate(self._modules):
            tensors: Iterable[tuple[str, str, torch.Tensor]] = [
                *(("parameter", name, t) for name, t in module.named_parameters()),
                *(("buffer", name, t) for name, t in module.named_buffers()),
            ]
            for kind, name, tensor in tensors:
                if id(tensor) in seen or not self._backend.is_target(tensor):
                    continue
                seen.add(id(tensor))
                storage = _plain_storage(tensor, f"module {index} ({type(module).__name__}) {kind} {name!r}")
                nbytes = int(storage.nbytes())
                if nbytes == 0:
                    continue  # nothing to free (e.g. an uninitialised lazy parameter)
                key = (tensor.device.type, tensor.device.index, int(storage.data_ptr()))
                group = groups.get(key)
                if group is None:
                    group = groups[key] = _Group(storage, tensor.device, nbytes, end)
                    end = _align(end + nbytes)
                group.members.append(_Member(tensor, tensor.dtype, int(tensor.storage_offset()),
                                             tuple(tensor.size()), tuple(tensor.stride())))
        return list(groups.values()), end

    def _arena(self, nbytes: int) -> torch.Tensor:
        """The pinned host arena, grown (reallocated) only when the weights outgrew it."""
        if self._host is None or self._host.capacity < nbytes:
            if self._host is not None:
                self._host.close()
                self._host = None
            self._host = self._backend.host_buffer(nbytes)
        return self._host.tensor

    def _reserved_now(self) -> int:
        return self._backend.reserved_bytes(())


class OffloadingModel(Model):
    """A :class:`torpor.Model` whose weights leave the GPU while the instance is frozen.

    Register the modules in ``setup()``; the freeze and thaw hooks do the rest::

        import torch, torpor
        from torpor.gpu_offload import OffloadingModel

        class Classifier(OffloadingModel):
            def setup(self) -> None:
                self.net = torch.load("net.pt", weights_only=False).to("cuda").eval()
                self.offloader.register(self.net)
                self.offloader.prepare()  # pin host memory now, not at the first freeze

            def predict(self, payload):
                with torch.inference_mode():
                    x = torch.tensor(payload["x"], device="cuda")
                    return self.net(x).tolist()

    Overriding ``on_freeze``/``on_thaw``? Free other GPU state (caches) and then call ``super()``.
    """

    @functools.cached_property
    def offloader(self) -> GpuOffloader:
        """Created on first use, one per instance (no ``__init__`` to forget to call)."""
        return GpuOffloader()

    def on_freeze(self) -> None:
        self.offloader.offload()

    def on_thaw(self) -> None:
        self.offloader.restore()


def _plain_storage(tensor: torch.Tensor, label: str) -> torch.UntypedStorage:
    """The tensor's storage, or ValueError naming it when it has no single plain one to move."""
    import torch  # type: ignore[import-not-found, unused-ignore]

    why = None
    if tensor.layout != torch.strided:
        why = f"it has layout {tensor.layout}"
    elif tensor.is_quantized:
        why = "it is quantized"
    elif tensor.is_conj() or tensor.is_neg():
        why = "it is a lazily conjugated or negated view"
    else:
        try:
            return tensor.untyped_storage()
        except (RuntimeError, NotImplementedError) as exc:
            why = f"it has no plain storage ({type(tensor).__name__}: {exc})"
    raise ValueError(f"cannot offload {label}: {why}; only plain strided tensors can be moved, so move "
                     "or free this one yourself in on_freeze")


def _bytes_of(storage: torch.UntypedStorage) -> torch.Tensor:
    """A flat uint8 tensor over a whole storage, on the storage's device."""
    import torch  # type: ignore[import-not-found, unused-ignore]

    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


def _region(host: torch.Tensor, group: _Group) -> torch.Tensor:
    return host[group.offset : group.offset + group.nbytes]


def _view(
    storage: torch.UntypedStorage, byte_offset: int, member: _Member, device: torch.device
) -> torch.Tensor:
    """``member``'s tensor rebuilt on ``storage`` whose bytes start ``byte_offset`` bytes in."""
    import torch  # type: ignore[import-not-found, unused-ignore]

    itemsize = member.dtype.itemsize
    assert byte_offset % itemsize == 0, "arena regions are aligned to every dtype's size"
    offset = byte_offset // itemsize + member.storage_offset
    return torch.empty(0, dtype=member.dtype, device=device).set_(storage, offset, member.size, member.stride)


def _devices(groups: Sequence[_Group]) -> list[torch.device]:
    return list(dict.fromkeys(g.device for g in groups))


def _align(nbytes: int) -> int:
    return -(-nbytes // ALIGN_BYTES) * ALIGN_BYTES


def _device_index(device: torch.device) -> int:
    import torch  # type: ignore[import-not-found, unused-ignore]

    return int(device.index if device.index is not None else torch.cuda.current_device())


@contextlib.contextmanager
def _on_stream(index: int, stream: Any) -> Iterator[None]:
    import torch  # type: ignore[import-not-found, unused-ignore]

    with torch.cuda.device(index), torch.cuda.stream(stream):
        yield


def _cuda_reserved(devices: Iterable[torch.device]) -> int:
    """memory_reserved() summed over ``devices`` (the current one if none); 0 if CUDA never started.

    Checks ``is_initialized()`` first: the query must not be what initialises CUDA in a process that
    may still fork (a template), and an uninitialised process holds nothing anyway.
    """
    import torch  # type: ignore[import-not-found, unused-ignore]

    if not torch.cuda.is_initialized():  # type: ignore[no-untyped-call, unused-ignore]
        return 0
    indices = {_device_index(d) for d in devices} or {torch.cuda.current_device()}
    return sum(int(torch.cuda.memory_reserved(i)) for i in indices)


def _unregister(pointer: int, raw: torch.Tensor) -> None:
    """Unpin the arena's pages; ``raw`` (the allocation) is only an argument so it outlives the pinning."""
    import torch  # type: ignore[import-not-found, unused-ignore]

    with contextlib.suppress(Exception):
        torch.cuda.cudart().cudaHostUnregister(pointer)  # type: ignore[no-untyped-call, unused-ignore]
    del raw


def _clear_cuda_error() -> None:
    """Consume the error a failed cudaHostRegister left behind.

    The CUDA runtime keeps the last error of any call until cudaGetLastError reads it, and torch reads
    it after each kernel launch, so the failed registration would otherwise surface later as the error
    of some unrelated kernel. torch has no binding for cudaGetLastError; launching a tiny kernel makes
    torch read (and raise, and thereby clear) it. A genuinely broken context fails again at the next use.
    """
    import torch  # type: ignore[import-not-found, unused-ignore]

    with contextlib.suppress(RuntimeError):
        torch.zeros(1, device="cuda")
