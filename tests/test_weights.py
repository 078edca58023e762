"""Weight loading: safetensors read by torpor's own parser, exactly and without copying.

Files are written by the ``safetensors`` library when it is installed (its numpy and torch writers),
otherwise by ``write_minimal`` below, which a test checks the library can read.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from torpor.weights import (
    SafetensorsHeader,
    TensorInfo,
    _load_streamed,
    _stream_into,
    load_safetensors_mmap,
    load_safetensors_torch,
    read_safetensors_header,
)

try:
    import safetensors.numpy as st_numpy
except ImportError:  # the tests fall back to write_minimal
    st_numpy = None

try:
    import torch
except ImportError:
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
needs_cuda = pytest.mark.skipif(torch is None or not torch.cuda.is_available(), reason="needs a CUDA GPU")
linux_only = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self")

NUMPY_CODES = {"?": "BOOL", "u1": "U8", "i1": "I8", "i2": "I16", "u2": "U16", "f2": "F16", "i4": "I32",
               "u4": "U32", "f4": "F32", "i8": "I64", "u8": "U64", "f8": "F64"}
CODE_OF = {np.dtype(name): code for name, code in NUMPY_CODES.items()}


def write_minimal(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]],
                  metadata: dict[str, str] | None = None) -> Path:
    """The format by hand: 8-byte LE header length, space-padded JSON header, bytes in the given order."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, (code, shape, data) in tensors.items():
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"".join(d for _, _, d in tensors.values()))
    return path


def save_numpy(path: Path, arrays: dict[str, np.ndarray[Any, Any]]) -> Path:
    if st_numpy is not None:
        st_numpy.save_file(arrays, str(path))
        return path
    return write_minimal(path, {name: (CODE_OF[a.dtype], a.shape, a.tobytes())
                                for name, a in arrays.items()})


def save_torch(path: Path, tensors: dict[str, Any]) -> Path:
    try:
        from safetensors.torch import save_file
    except ImportError:
        codes = {torch.bfloat16: "BF16", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}
        return write_minimal(path, {
            name: (codes.get(t.dtype) or CODE_OF[t.reshape(-1)[:0].numpy().dtype],
                   tuple(t.shape), t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            for name, t in tensors.items()})
    save_file(tensors, str(path))
    return path


def sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray[Any, Any]:
    """Random values covering the dtype's extremes (and inf/nan for floats)."""
    rng = np.random.default_rng(seed)
    kind = np.dtype(dtype)
    if kind == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if kind.kind in "iu":
        info = np.iinfo(kind)
        flat = rng.integers(info.min, info.max, math.prod(shape), dtype=kind, endpoint=True)
        flat[:2] = [info.min, info.max][: flat.size]
        return flat.reshape(shape)
    flat = rng.standard_normal(math.prod(shape)).astype(kind) * 1000
    flat[:3] = [np.inf, -np.inf, np.nan][: flat.size]
    return flat.reshape(shape)


def bits(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The array's raw bytes, so NaN compares equal to itself and -0.0 differs from 0.0."""
    return np.ascontiguousarray(a).view(np.uint8)


def file_mappings(path: Path) -> list[tuple[int, int, int]]:
    """(start, end, file offset) of every mapping of ``path`` in this process."""
    found = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path.resolve()):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            found.append((start, end, int(fields[2], 16)))
    return found


def file_offset_of(path: Path, address: int) -> int:
    """The file offset that ``address`` maps, failing if it lies in no mapping of ``path``."""
    (offset,) = [address - start + file_offset for start, end, file_offset in file_mappings(path)
                 if start <= address < end]
    return offset


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def load_torch_cpu(path: Path) -> dict[str, Any]:
    return load_safetensors_torch(path)


LOADERS: list[Any] = [
    pytest.param(load_safetensors_mmap, id="mmap"),
    pytest.param(load_torch_cpu, id="torch-cpu", marks=needs_torch),
    pytest.param(read_safetensors_header, id="header"),
]


class TestHeader:
    def test_reads_entries_and_metadata(self, tmp_path: Path) -> None:
        """Offsets are absolute in the file, entries in file order, metadata as given."""
        path = write_minimal(tmp_path / "m.safetensors",
                             {"b": ("U8", (3,), b"\x01\x02\x03"), "a": ("F32", (1,), b"\0\0\x80\x3f")},
                             metadata={"format": "pt"})
        header_len = int.from_bytes(path.read_bytes()[:8], "little")
        start = 8 + header_len
        assert read_safetensors_header(path) == SafetensorsHeader(
            tensors=[TensorInfo("b", "U8", (3,), start, start + 3),
                     TensorInfo("a", "F32", (1,), start + 3, start + 7)],
            metadata={"format": "pt"}, file_size_bytes=start + 7)

    @pytest.mark.parametrize("load", LOADERS)
    def test_truncated_file(self, tmp_path: Path, load: Callable[[Path], Any]) -> None:
        """A file cut short names itself and the tensor that runs past its end."""
        path = save_numpy(tmp_path / "m.safetensors", {"w": np.zeros(16, np.float32)})
        path.write_bytes(path.read_bytes()[:-10])
        with pytest.raises(ValueError, match=rf"^{path}: not a valid safetensors file: tensor 'w' ends at"):
            load(path)

    @pytest.mark.parametrize("load", LOADERS)
    def test_header_length_past_the_end(self, tmp_path: Path, load: Callable[[Path], Any]) -> None:
        """A corrupt length prefix is caught before anything is allocated for it."""
        path = save_numpy(tmp_path / "m.safetensors", {"w": np.zeros(4, np.float32)})
        path.write_bytes((10**12).to_bytes(8, "little") + path.read_bytes()[8:])
        with pytest.raises(ValueError, match=rf"^{path}: .*header length 1000000000000 does not fit"):
            load(path)

    @pytest.mark.parametrize("load", LOADERS)
    def test_header_not_json(self, tmp_path: Path, load: Callable[[Path], Any]) -> None:
        """Garbage where the JSON header should be says so."""
        path = tmp_path / "m.safetensors"
        path.write_bytes((4).to_bytes(8, "little") + b"\xff{x}")
        with pytest.raises(ValueError, match=rf"^{path}: not a valid safetensors file: header is not JSON"):
            load(path)

    @pytest.mark.parametrize("load", LOADERS)
    def test_shorter_than_the_length_prefix(self, tmp_path: Path, load: Callable[[Path], Any]) -> None:
        """A 3-byte file is not mistaken for an empty model."""
        path = tmp_path / "m.safetensors"
        path.write_bytes(b"abc")
        with pytest.raises(ValueError, match=rf"^{path}: .*3 bytes, shorter than the 8-byte header length"):
            load(path)

    def test_size_must_match_shape(self, tmp_path: Path) -> None:
        """data_offsets that disagree with dtype × shape are rejected with both numbers."""
        path = write_minimal(tmp_path / "m.safetensors", {"w": ("F32", (2, 3), b"\0" * 20)})
        with pytest.raises(ValueError, match=r"tensor 'w' spans 20 bytes but F32\[2, 3\] needs 24"):
            load_safetensors_mmap(path)

    def test_unsupported_dtype(self, tmp_path: Path) -> None:
        """An unknown dtype code is named."""
        path = write_minimal(tmp_path / "m.safetensors", {"w": ("F4", (2,), b"\0")})
        with pytest.raises(ValueError, match=r"tensor 'w' has unsupported dtype 'F4'"):
            load_safetensors_mmap(path)

    def test_overlapping_tensors(self, tmp_path: Path) -> None:
        """Two tensors claiming the same bytes are a corrupt file, not an alias."""
        path = write_minimal(tmp_path / "m.safetensors", {"a": ("U8", (4,), b"abcd")})
        header = {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                  "b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}}
        raw = json.dumps(header).encode()
        path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"abcd")
        with pytest.raises(ValueError, match="tensors 'a' and 'b' overlap"):
            load_safetensors_mmap(path)

    @pytest.mark.skipif(st_numpy is None, reason="safetensors is not installed")
    def test_library_reads_the_minimal_writer(self, tmp_path: Path) -> None:
        """The fallback writer produces files the safetensors library accepts, byte for byte."""
        a = sample("f4", (2, 3))
        path = write_minimal(tmp_path / "m.safetensors", {"a": ("F32", (2, 3), a.tobytes()),
                                                          "b": ("U8", (1,), b"\x07")})
        loaded = st_numpy.load_file(str(path))
        assert bits(loaded["a"]).tolist() == bits(a).tolist()
        assert loaded["b"].tolist() == [7]


class TestMmap:
    @pytest.mark.parametrize("dtype", list(NUMPY_CODES))
    def test_every_dtype_round_trips_exactly(self, tmp_path: Path, dtype: str) -> None:
        """Each numpy dtype comes back with its dtype, shape and every bit."""
        arrays = {"m": sample(dtype, (3, 5)), "v": sample(dtype, (7,), seed=1), "s": sample(dtype, ())}
        loaded = load_safetensors_mmap(save_numpy(tmp_path / "m.safetensors", arrays))
        for name, expected in arrays.items():
            assert loaded[name].dtype == np.dtype(dtype).newbyteorder("<")
            assert loaded[name].shape == expected.shape
            assert bits(loaded[name]).tolist() == bits(expected).tolist()

    def test_bf16_is_bits_or_ml_dtypes(self, tmp_path: Path) -> None:
        """BF16 keeps its exact bits: uint16 without ml_dtypes, ml_dtypes.bfloat16 with it."""
        raw = np.array([0x3F80, 0xC000, 0x3F00, 0x7F80], "<u2")  # 1.0, -2.0, 0.5, inf
        path = write_minimal(tmp_path / "m.safetensors", {"w": ("BF16", (2, 2), raw.tobytes())})
        loaded = load_safetensors_mmap(path)["w"]
        assert loaded.shape == (2, 2)
        assert loaded.view(np.uint16).ravel().tolist() == [0x3F80, 0xC000, 0x3F00, 0x7F80]
        try:
            import ml_dtypes
        except ImportError:
            assert loaded.dtype == np.uint16
        else:
            assert loaded.dtype == ml_dtypes.bfloat16
            assert loaded.astype(np.float32).ravel().tolist() == [1.0, -2.0, 0.5, np.inf]

    def test_empty_and_scalar_shapes(self, tmp_path: Path) -> None:
        """A 0-element tensor and a 0-d scalar keep their shapes."""
        arrays = {"empty": np.zeros((0, 3), np.int64), "scalar": np.array(2.5, np.float64)}
        loaded = load_safetensors_mmap(save_numpy(tmp_path / "m.safetensors", arrays))
        assert loaded["empty"].shape == (0, 3)
        assert (loaded["scalar"].shape, float(loaded["scalar"])) == ((), 2.5)

    def test_unaligned_offsets(self, tmp_path: Path) -> None:
        """A float tensor at an odd file offset (after 3 bytes of U8) still reads exactly."""
        floats = np.array([1.5, -2.25], "<f4")
        path = write_minimal(tmp_path / "m.safetensors", {"u": ("U8", (3,), b"xyz"),
                                                          "f": ("F32", (2,), floats.tobytes())})
        loaded = load_safetensors_mmap(path)
        assert loaded["f"].tolist() == [1.5, -2.25]
        assert bytes(loaded["u"]) == b"xyz"

    @linux_only
    def test_zero_copy(self, tmp_path: Path) -> None:
        """Every array is a view into a mapping of the file, at exactly its own file offset."""
        arrays = {"a": sample("f4", (64, 64)), "b": sample("i8", (100,))}
        path = save_numpy(tmp_path / "m.safetensors", arrays)
        loaded = load_safetensors_mmap(path)
        header = {t.name: t for t in read_safetensors_header(path).tensors}
        for name, array in loaded.items():
            base = array
            while not isinstance(base, np.memmap):
                base = base.base
            assert np.shares_memory(array, base)
            assert file_offset_of(path, array.ctypes.data) == header[name].start
        assert not np.shares_memory(loaded["a"], loaded["b"])

    def test_read_only(self, tmp_path: Path) -> None:
        """The views cannot be written, so no instance can corrupt weights another instance shares."""
        loaded = load_safetensors_mmap(save_numpy(tmp_path / "m.safetensors", {"w": np.zeros(4, np.float32)}))
        with pytest.raises(ValueError, match="read-only"):
            loaded["w"][0] = 1.0

    def test_outlives_the_file(self, tmp_path: Path) -> None:
        """The mapping keeps the bytes readable after the file is deleted (a cache entry removed)."""
        path = save_numpy(tmp_path / "m.safetensors", {"w": np.arange(5, dtype=np.int32)})
        loaded = load_safetensors_mmap(path)
        path.unlink()
        assert loaded["w"].tolist() == [0, 1, 2, 3, 4]


@linux_only
@pytest.mark.parametrize("load", [LOADERS[0], LOADERS[1]])
def test_rss_does_not_grow_until_touched(tmp_path: Path, load: Callable[[Path], dict[str, Any]]) -> None:
    """Loading 64 MiB adds (almost) nothing to RSS; reading every byte then maps the pages in."""
    size_bytes = 64 << 20
    path = save_numpy(tmp_path / "m.safetensors", {f"w{i}": np.ones(size_bytes // 16, np.float32)
                                                   for i in range(4)})
    before = rss_bytes()
    loaded = load(path)
    assert rss_bytes() - before < 4 << 20
    total = sum(float(v.sum()) for v in loaded.values())
    assert total == size_bytes // 4
    assert rss_bytes() - before > size_bytes // 2  # the measurement can see the pages once touched


@needs_torch
class TestTorchCpu:
    def test_every_dtype_round_trips_exactly(self, tmp_path: Path) -> None:
        """All torch dtypes safetensors stores, bfloat16 and float8 included, bit for bit."""
        g = torch.Generator().manual_seed(0)
        floats = {d: (torch.randn(4, 3, generator=g) * 100).to(d) for d in
                  (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
                   torch.float8_e5m2)}
        ints = {d: torch.randint(-100 if d.is_signed else 0, 100, (5,), generator=g).to(d) for d in
                (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)}
        tensors = {str(d): t for d, t in {**floats, **ints}.items()}
        tensors["bool"] = torch.tensor([[True, False], [False, True]])
        tensors["scalar"] = torch.tensor(3.0)
        loaded = load_safetensors_torch(save_torch(tmp_path / "m.safetensors", tensors))
        assert set(loaded) == set(tensors)
        for name, expected in tensors.items():
            got = loaded[name]
            assert (got.dtype, got.shape, got.device.type) == (expected.dtype, expected.shape, "cpu")
            assert torch.equal(got.reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8))

    @linux_only
    def test_zero_copy(self, tmp_path: Path) -> None:
        """data_ptr of every tensor lies in a mapping of the file, at exactly its file offset."""
        path = save_torch(tmp_path / "m.safetensors", {"a": torch.ones(256, 256), "b": torch.arange(10)})
        loaded = load_safetensors_torch(path)
        header = {t.name: t for t in read_safetensors_header(path).tensors}
        for name, tensor in loaded.items():
            assert file_offset_of(path, tensor.data_ptr()) == header[name].start

    def test_unaligned_and_empty(self, tmp_path: Path) -> None:
        """Odd offsets and 0-element tensors load."""
        path = write_minimal(tmp_path / "m.safetensors", {
            "u": ("U8", (3,), b"xyz"), "f": ("F32", (2,), np.array([1.5, -2.25], "<f4").tobytes()),
            "e": ("I64", (0, 4), b"")})
        loaded = load_safetensors_torch(path)
        assert loaded["f"].tolist() == [1.5, -2.25]
        assert loaded["e"].shape == (0, 4)

    def test_a_write_stays_private(self, tmp_path: Path) -> None:
        """Writing to a loaded tensor (don't) never changes the file another instance maps."""
        path = save_torch(tmp_path / "m.safetensors", {"w": torch.zeros(8)})
        before = path.read_bytes()
        load_safetensors_torch(path)["w"].add_(1)
        assert path.read_bytes() == before
        assert load_safetensors_torch(path)["w"].tolist() == [0.0] * 8

    def test_unknown_device(self, tmp_path: Path) -> None:
        """Only cpu and cuda are supported; anything else is named."""
        path = save_torch(tmp_path / "m.safetensors", {"w": torch.zeros(1)})
        with pytest.raises(ValueError, match=r"cannot load onto meta: only cpu and cuda"):
            load_safetensors_torch(path, device="meta")

    @pytest.mark.skipif(torch is not None and torch.cuda.is_available(), reason="CUDA is available")
    def test_cuda_without_a_gpu_is_a_clear_error(self, tmp_path: Path) -> None:
        """Asking for cuda where there is none says why instead of failing deep inside torch."""
        from torpor.weights import measure_pinned_h2d_gbps

        path = save_torch(tmp_path / "m.safetensors", {"w": torch.zeros(1)})
        with pytest.raises(RuntimeError, match=rf"^{path}: cannot load onto cuda: torch.cuda.is_available"):
            load_safetensors_torch(path, device="cuda")
        with pytest.raises(RuntimeError, match="needs CUDA"):
            measure_pinned_h2d_gbps()


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


class TestNoEagerImports:
    def test_import_is_cheap(self) -> None:
        """``import torpor.weights`` imports neither numpy nor torch."""
        code = ("import sys, torpor; before = set(sys.modules); import torpor.weights; "
                "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} & {'numpy', 'torch'}))")
        assert run_python(code) == "[]"

    @needs_torch
    def test_cpu_loading_leaves_cuda_uninitialised(self, tmp_path: Path) -> None:
        """A template may load on the CPU and then fork: CUDA must still be untouched."""
        path = save_torch(tmp_path / "m.safetensors", {"w": torch.ones(3)})
        code = ("import torch, torpor.weights as w; "
                f"w.load_safetensors_torch({str(path)!r}); w.load_safetensors_mmap({str(path)!r}); "
                "print(torch.cuda.is_initialized())")
        assert run_python(code) == "False"


class LazyCopies:
    """A stand-in for a CUDA stream: copies run only when a fence's wait (or flush) runs them.

    So if the pipeline overwrote a staging buffer before waiting for its fence, the copy would read
    the new bytes and the test would see it.
    """

    def __init__(self) -> None:
        self.queued: list[tuple[Any, Any]] = []
        self.fences = 0
        self.waits = 0

    def copy(self, dst: Any, src: Any) -> None:
        self.queued.append((dst, src))

    def flush(self) -> None:
        for dst, src in self.queued:
            dst.copy_(src)
        self.queued.clear()

    def fence(self) -> Callable[[], None]:
        self.fences += 1
        pending, self.queued = self.queued, []

        def wait() -> None:
            self.waits += 1
            for dst, src in pending:
                dst.copy_(src)
            pending.clear()

        return wait


@needs_torch
class TestStreaming:
    """The GPU path's chunk pipeline, run on the CPU with 32-byte staging buffers."""

    @pytest.mark.parametrize("num_buffers", [1, 2, 3])
    def test_spans_cross_chunks_and_gaps(self, tmp_path: Path, num_buffers: int) -> None:
        """Spans across chunk edges, a padding gap and a 1-byte span all arrive exactly."""
        data = np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes()
        path = tmp_path / "blob"
        path.write_bytes(data)
        spans = [(10, 50), (50, 53), (60, 200), (200, 201), (201, 233)]
        dests = [torch.zeros(end - start, dtype=torch.uint8) for start, end in spans]
        staging = [torch.empty(32, dtype=torch.uint8) for _ in range(num_buffers)]
        engine = LazyCopies()
        _stream_into(path, spans, dests, staging, engine.copy, engine.fence)
        engine.flush()
        assert [bytes(d.numpy()) for d in dests] == [data[start:end] for start, end in spans]
        chunks = math.ceil((233 - 10) / 32)  # 7
        assert (engine.fences, engine.waits) == (chunks - num_buffers, chunks - num_buffers)

    def test_whole_plan_on_the_cpu(self, tmp_path: Path) -> None:
        """The GPU path's allocation, byte views and staging, with 100-byte chunks: every dtype exact."""
        g = torch.Generator().manual_seed(1)
        tensors = {str(d): (torch.randn(7, 5, generator=g) * 50).to(d) for d in
                   (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
                    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)}
        tensors.update(bool=torch.tensor([True, False, True]), empty=torch.zeros(0, 2),
                       scalar=torch.tensor(-1.5))
        path = save_torch(tmp_path / "m.safetensors", tensors)
        engine = LazyCopies()
        loaded = _load_streamed(path, torch.device("cpu"), 100, 3, False, contextlib.nullcontext,
                                engine.copy, engine.fence)
        engine.flush()
        data_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
        assert engine.fences == math.ceil(data_bytes / 100) - 3
        for name, expected in tensors.items():
            assert (loaded[name].dtype, loaded[name].shape) == (expected.dtype, expected.shape)
            assert torch.equal(loaded[name].reshape(-1).view(torch.uint8),
                               expected.reshape(-1).view(torch.uint8))


@needs_cuda
class TestCuda:
    def test_matches_the_cpu_load(self, tmp_path: Path) -> None:
        """Streaming through 1 MiB pinned chunks gives the same tensors as the CPU load, on the GPU."""
        g = torch.Generator().manual_seed(0)
        tensors = {f"w{i}": torch.randn(1000 + i, 257, generator=g).to(torch.float16) for i in range(12)}
        tensors.update(b=torch.tensor([True, False]), bf=torch.randn(33, generator=g).to(torch.bfloat16),
                       e=torch.zeros(0, 5), s=torch.tensor(7, dtype=torch.int64))
        path = save_torch(tmp_path / "m.safetensors", tensors)
        on_gpu = load_safetensors_torch(path, device="cuda", chunk_mb=1, num_buffers=3)
        for name, expected in tensors.items():
            got = on_gpu[name]
            assert (got.device.type, got.dtype, got.shape) == ("cuda", expected.dtype, expected.shape)
            assert torch.equal(got.cpu(), expected)

    def test_pinned_bandwidth_is_plausible(self) -> None:
        """A PCIe link moves at least 1 GB/s from pinned memory."""
        from torpor.weights import measure_pinned_h2d_gbps

        assert 1.0 < measure_pinned_h2d_gbps(size_mb=64, repeats=3) < 2000.0
