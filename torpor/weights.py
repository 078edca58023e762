"""Fast weight loading for ``Model.setup()``: safetensors memory-mapped on the CPU, streamed to a GPU.

On the CPU nothing is read at load time: tensors are views of a memory map of the file, so the page
cache holds one copy of the weights however many instances (or forked children of a template) use them,
and a page is read from disk only when something touches it.

On a GPU the bytes go file → pinned host buffer → device through a small pool of pinned buffers: while
the DMA engine copies chunk k to the device, threads read chunks k+1.. from the page cache or disk, so
loading takes about ``max(read time, bytes / pinned H2D bandwidth)`` instead of their sum, and never
goes through the slow pageable-memory copy path.

The module parses the safetensors format itself (8-byte little-endian header length, a JSON header,
then the raw little-endian bytes) so the ``safetensors`` package is not a runtime dependency. numpy and
torch are imported inside the functions, so ``import torpor.weights`` is cheap, and no CPU path touches
CUDA: a template process that loads weights before forking must not have initialised CUDA.

Quick start::

    from torpor.weights import load_safetensors_torch

    class Model(torpor.Model):
        def setup(self):
            self.weights = load_safetensors_torch("model.safetensors", device="cuda")
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import mmap
import os
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy
    import torch  # type: ignore[import-not-found, unused-ignore]

StrPath = str | os.PathLike[str]

MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit; a larger one is corrupt
PINNED_CHUNK_MB = 64
PINNED_BUFFERS = 4  # one being copied to the device while the other three are read in parallel

# safetensors dtype code -> (bytes per element, numpy dtype or None, torch dtype attribute)
_DTYPES: dict[str, tuple[int, str | None, str]] = {
    "BOOL": (1, "?", "bool"),
    "U8": (1, "u1", "uint8"),
    "I8": (1, "i1", "int8"),
    "F8_E5M2": (1, None, "float8_e5m2"),
    "F8_E4M3": (1, None, "float8_e4m3fn"),
    "I16": (2, "<i2", "int16"),
    "U16": (2, "<u2", "uint16"),
    "F16": (2, "<f2", "float16"),
    "BF16": (2, None, "bfloat16"),
    "I32": (4, "<i4", "int32"),
    "U32": (4, "<u4", "uint32"),
    "F32": (4, "<f4", "float32"),
    "I64": (8, "<i8", "int64"),
    "U64": (8, "<u8", "uint64"),
    "F64": (8, "<f8", "float64"),
}
# numpy has no bfloat16 or float8: ml_dtypes' types when it is installed, else the raw bits as uint
_NUMPY_FALLBACK = {"BF16": ("bfloat16", "<u2"), "F8_E5M2": ("float8_e5m2", "u1"),
                   "F8_E4M3": ("float8_e4m3fn", "u1")}


@dataclass(frozen=True)
class TensorInfo:
    """One header entry; ``start``/``end`` are absolute byte offsets in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: list[TensorInfo]  # in file order
    metadata: dict[str, str]
    file_size_bytes: int


def read_safetensors_header(path: StrPath) -> SafetensorsHeader:
    """Parse and check a file's header; raises ValueError naming the file if it is not valid."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        return _parse_header(path, lambda start, end: os.pread(handle.fileno(), end - start, start), size)


def load_safetensors_mmap(path: StrPath) -> dict[str, numpy.ndarray[Any, Any]]:
    """Read-only numpy views of a memory map of the file: zero-copy, nothing read until touched.

    BF16 and F8 tensors come back as ml_dtypes' ``bfloat16``/``float8_*`` when ml_dtypes is installed,
    otherwise as ``uint16``/``uint8`` arrays holding the same bits (``.view(ml_dtypes.bfloat16)`` or
    ``torch.from_numpy(a).view(torch.bfloat16)`` turns them into numbers without a copy).
    """
    import numpy as np

    _check_size(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")  # the arrays keep the mapping alive
    header = _parse_header(path, lambda start, end: raw[start:end].tobytes(), raw.size)
    flat = raw.view(np.ndarray)  # plain ndarray views, not np.memmap subclasses
    return {
        t.name: flat[t.start : t.end].view(_numpy_dtype(t.dtype)).reshape(t.shape) for t in header.tensors
    }


def load_safetensors_torch(
    path: StrPath,
    device: str | torch.device = "cpu",
    *,
    chunk_mb: int = PINNED_CHUNK_MB,
    num_buffers: int = PINNED_BUFFERS,
) -> dict[str, torch.Tensor]:
    """Tensors on ``device``: zero-copy views of the file on the CPU, streamed through pinned memory to CUDA.

    CPU tensors share the mapping (``MAP_PRIVATE``): treat them as read-only. A write does not reach
    the file or other processes, but it copies the touched pages into this process for good.

    On CUDA the file streams through ``num_buffers`` pinned host buffers of ``chunk_mb`` each; the
    call returns once every byte is on the device. Tensors come back in file order in both cases.
    """
    import torch  # type: ignore[import-not-found, unused-ignore]

    target = torch.device(device)
    if target.type == "cpu":
        return _load_cpu(path)
    if target.type != "cuda":
        raise ValueError(f"{os.fspath(path)}: cannot load onto {target}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"{os.fspath(path)}: cannot load onto {target}: torch.cuda.is_available() is False "
            "(no GPU visible, or a CPU-only torch build)"
        )
    return _load_cuda(path, target, chunk_mb << 20, num_buffers)


def measure_pinned_h2d_gbps(size_mb: int = 256, repeats: int = 5, device: str = "cuda") -> float:
    """Median pinned host → device copy bandwidth in GB/s (1e9 bytes/s): the floor for any GPU load."""
    import torch  # type: ignore[import-not-found, unused-ignore]

    if not torch.cuda.is_available():
        raise RuntimeError("measure_pinned_h2d_gbps needs CUDA, but torch.cuda.is_available() is False")
    size_bytes = size_mb << 20
    src = torch.empty(size_bytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(size_bytes, dtype=torch.uint8, device=device)
    dst.copy_(src, non_blocking=True)  # warm-up: first touch, context and DMA setup
    torch.cuda.synchronize(device)
    seconds: list[float] = []
    for _ in range(repeats):
        begin = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call, unused-ignore]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call, unused-ignore]
        begin.record()
        dst.copy_(src, non_blocking=True)
        end.record()
        end.synchronize()
        seconds.append(begin.elapsed_time(end) / 1e3)  # elapsed_time is in ms
    seconds.sort()
    return size_bytes / seconds[len(seconds) // 2] / 1e9


def _load_cpu(path: StrPath) -> dict[str, torch.Tensor]:
    import torch  # type: ignore[import-not-found, unused-ignore]

    _check_size(path)
    with open(path, "rb") as handle:
        # ACCESS_COPY (MAP_PRIVATE) so torch gets the writable buffer it insists on, and a stray write
        # lands in a private page instead of crashing (ACCESS_READ) or changing the file (ACCESS_WRITE)
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    header = _parse_header(path, lambda start, end: mapped[start:end], len(mapped))
    out: dict[str, torch.Tensor] = {}
    for t in header.tensors:
        dtype = _torch_dtype(path, t.dtype)
        count = math.prod(t.shape)
        if count == 0:  # frombuffer refuses count=0
            out[t.name] = torch.empty(t.shape, dtype=dtype)
        else:
            out[t.name] = torch.frombuffer(mapped, dtype=dtype, count=count, offset=t.start).view(t.shape)
    return out


def _load_cuda(
    path: StrPath, device: torch.device, chunk_bytes: int, num_buffers: int
) -> dict[str, torch.Tensor]:
    import torch  # type: ignore[import-not-found, unused-ignore]

    if chunk_bytes <= 0 or num_buffers < 2:
        raise ValueError("need chunk_mb >= 1 and num_buffers >= 2 to overlap reads with copies")
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with torch.cuda.device(device):
        stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call, unused-ignore]

        def copy(dst: torch.Tensor, src: torch.Tensor) -> None:
            dst.copy_(src, non_blocking=True)  # pinned source: an async DMA on ``stream``

        def fence() -> Callable[[], None]:
            event = torch.cuda.Event()  # type: ignore[no-untyped-call, unused-ignore]
            event.record(stream)
            wait: Callable[[], None] = event.synchronize  # blocks only the reader that reuses the buffer
            return wait

        @contextlib.contextmanager
        def on_stream() -> Iterator[None]:
            # allocate on the caller's stream (so the memory returns to its pool), copy on ours after it
            stream.wait_stream(torch.cuda.current_stream(device))
            try:
                with torch.cuda.stream(stream):
                    yield
            finally:
                stream.synchronize()  # done before return: no copy still reads a staging buffer

        return _load_streamed(path, device, chunk_bytes, num_buffers, True, on_stream, copy, fence)


def _load_streamed(
    path: StrPath,
    device: torch.device,
    chunk_bytes: int,
    num_buffers: int,
    pin_memory: bool,
    copying: Callable[[], contextlib.AbstractContextManager[None]],
    copy: Callable[[Any, Any], None],
    fence: Callable[[], Callable[[], None]],
) -> dict[str, torch.Tensor]:
    """Allocate every tensor on ``device``, then stream the file into them (see ``_stream_into``).

    Device-neutral so the whole plan (allocation, byte views, staging sizes) runs in CPU tests too.
    """
    import torch  # type: ignore[import-not-found, unused-ignore]

    header = read_safetensors_header(path)
    out = {t.name: torch.empty(t.shape, dtype=_torch_dtype(path, t.dtype), device=device)
           for t in header.tensors}
    filled = [t for t in header.tensors if t.end > t.start]
    if not filled:
        return out
    spans = [(t.start, t.end) for t in filled]
    dests = [out[t.name].reshape(-1).view(torch.uint8) for t in filled]
    total = spans[-1][1] - spans[0][0]
    chunk_bytes = min(chunk_bytes, total)
    staging = [torch.empty(chunk_bytes, dtype=torch.uint8, pin_memory=pin_memory)
               for _ in range(min(num_buffers, -(-total // chunk_bytes)))]  # ceil: no idle buffers
    with copying():
        _stream_into(path, spans, dests, staging, copy, fence)
    return out


def _stream_into(
    path: StrPath,
    spans: Sequence[tuple[int, int]],
    dests: Sequence[Any],
    staging: Sequence[Any],
    copy: Callable[[Any, Any], None],
    fence: Callable[[], Callable[[], None]],
) -> None:
    """Read the file bytes of ``spans`` (sorted, disjoint) into the flat uint8 tensors ``dests``.

    The bytes [first span start, last span end) move in chunks the size of a staging buffer; chunk k
    uses buffer k % len(staging). ``copy(dst, src)`` starts one copy out of a staging buffer;
    ``fence()``, called after a chunk's copies, returns a wait that returns once they are done, which
    the reader of chunk k + len(staging) calls before overwriting that buffer. Reads run on one thread
    per buffer, so with N buffers up to N - 1 reads overlap the copy of the current chunk. The CUDA path
    passes pinned buffers and asynchronous copies; tests pass plain CPU tensors.
    """
    chunk_bytes = staging[0].numel()
    begin, stop = spans[0][0], spans[-1][1]
    chunks = [(lo, min(lo + chunk_bytes, stop)) for lo in range(begin, stop, chunk_bytes)]
    views = [buffer.numpy().data for buffer in staging]
    ends = [end for _, end in spans]
    fd = os.open(path, os.O_RDONLY)
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # larger readahead when the cache is cold
    pool = ThreadPoolExecutor(len(staging), thread_name_prefix="torpor-weights")

    def fill(k: int, wait: Callable[[], None] | None) -> None:
        if wait is not None:
            wait()
        lo, hi = chunks[k]
        _pread_exact(path, fd, views[k % len(views)][: hi - lo], lo)

    try:
        pending: dict[int, Future[None]] = {k: pool.submit(fill, k, None) for k in range(len(staging))
                                            if k < len(chunks)}
        for k, (lo, hi) in enumerate(chunks):
            pending.pop(k).result()
            buffer = staging[k % len(staging)]
            i = bisect_right(ends, lo)  # first span that ends after lo
            while i < len(spans) and spans[i][0] < hi:
                start, end = spans[i]
                a, b = max(start, lo), min(end, hi)
                copy(dests[i][a - start : b - start], buffer[a - lo : b - lo])
                i += 1
            if k + len(staging) < len(chunks):
                pending[k + len(staging)] = pool.submit(fill, k + len(staging), fence())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        os.close(fd)


def _pread_exact(path: StrPath, fd: int, into: memoryview, offset: int) -> None:
    done = 0
    while done < len(into):
        n = os.preadv(fd, [into[done:]], offset + done)
        if n == 0:
            raise ValueError(f"{os.fspath(path)}: file ended at byte {offset + done} while loading")
        done += n


def _check_size(path: StrPath) -> None:
    size = os.stat(path).st_size
    if size < 8:
        raise ValueError(f"{os.fspath(path)}: not a safetensors file: {size} bytes, shorter than the "
                         "8-byte header length")


def _parse_header(path: StrPath, read: Callable[[int, int], bytes], size: int) -> SafetensorsHeader:
    def bad(problem: str) -> ValueError:
        return ValueError(f"{os.fspath(path)}: not a valid safetensors file: {problem}")

    if size < 8:
        raise bad(f"{size} bytes, shorter than the 8-byte header length")
    header_len = int.from_bytes(read(0, 8), "little")
    if header_len > min(MAX_HEADER_BYTES, size - 8):
        raise bad(f"header length {header_len} does not fit in a {size}-byte file (truncated or corrupt)")
    try:
        raw = json.loads(read(8, 8 + header_len).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"header is not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise bad("header is not a JSON object")
    metadata = raw.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("__metadata__ must map strings to strings")
    data_start = 8 + header_len
    tensors = [_tensor_info(name, entry, data_start, size, bad) for name, entry in raw.items()]
    tensors.sort(key=lambda t: (t.start, t.end))
    for before, after in itertools.pairwise(tensors):
        if after.start < before.end and after.end > after.start:
            raise bad(f"tensors {before.name!r} and {after.name!r} overlap")
    return SafetensorsHeader(tensors, metadata, size)


def _tensor_info(
    name: str, entry: Any, data_start: int, size: int, bad: Callable[[str], ValueError]
) -> TensorInfo:
    if not isinstance(entry, dict):
        raise bad(f"entry {name!r} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _DTYPES:
        raise bad(f"tensor {name!r} has unsupported dtype {dtype!r} (supported: {', '.join(_DTYPES)})")
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise bad(f"tensor {name!r} has invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_uint(o) for o in offsets)):
        raise bad(f"tensor {name!r} has invalid data_offsets {offsets!r}")
    start, end = data_start + offsets[0], data_start + offsets[1]
    expected = math.prod(shape) * _DTYPES[dtype][0]
    if end - start != expected:
        raise bad(f"tensor {name!r} spans {end - start} bytes but {dtype}{shape} needs {expected}")
    if end > size:
        raise bad(f"tensor {name!r} ends at byte {end} past the end of the {size}-byte file (truncated?)")
    return TensorInfo(name, dtype, tuple(shape), start, end)


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@functools.cache
def _numpy_dtype(code: str) -> numpy.dtype[Any]:
    import numpy as np

    name = _DTYPES[code][1]
    if name is not None:
        return np.dtype(name)
    ml_name, bits = _NUMPY_FALLBACK[code]
    try:
        import ml_dtypes  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return np.dtype(bits)
    dtype: numpy.dtype[Any] = np.dtype(getattr(ml_dtypes, ml_name))
    return dtype


def _torch_dtype(path: StrPath, code: str) -> torch.dtype:
    import torch  # type: ignore[import-not-found, unused-ignore]

    dtype: torch.dtype | None = getattr(torch, _DTYPES[code][2], None)
    if dtype is None:
        raise ValueError(f"{os.fspath(path)}: this torch ({torch.__version__}) has no {code} dtype")
    return dtype
