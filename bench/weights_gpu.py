"""GPU weight loading: torpor's pinned-buffer streaming against the physical floor and against safetensors.

    python -m bench.weights_gpu --out result.json [--size-gb 2] [--tensors 200] [--runs 5] [--sweep]

Writes a ~2 GiB safetensors file of random fp16 tensors, measures pinned host→device bandwidth, then
alternates ``torpor.weights.load_safetensors_torch(device="cuda")`` and
``safetensors.torch.load_file(device="cuda")`` for ``--runs`` rounds. Nothing is dropped from the page
cache: the file was just written, so every run reads from memory; run 1 also pays for first-time
pinned and device allocations and is reported on its own as well as in the median/min/max.
The ratio ``load_s / (bytes / pinned_bandwidth)`` is how far a load is from the PCIe floor (the goal
in BENCHMARKS.md is ≤ 1.2). ``--sweep`` also times other chunk sizes and buffer counts.
Without a CUDA GPU it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import cuda_torch, summary

SWEEP = [(16, 4), (32, 4), (64, 2), (64, 4), (64, 8), (128, 4)]  # (chunk_mb, num_buffers)



def write_random_fp16(path: Path, total_bytes: int, num_tensors: int) -> int:
    """Stream ``num_tensors`` random fp16 tensors (shape rows × 1024) into a safetensors file."""
    import torch

    rows = max(1, total_bytes // num_tensors // 2048)  # 1024 fp16 columns = 2048 bytes a row
    size_each = rows * 2048
    header = {f"layer.{i:03d}.weight": {"dtype": "F16", "shape": [rows, 1024],
                                        "data_offsets": [i * size_each, (i + 1) * size_each]}
              for i in range(num_tensors)}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    generator = torch.Generator().manual_seed(0)
    with open(path, "wb") as handle:
        handle.write(len(raw).to_bytes(8, "little") + raw)
        for _ in range(num_tensors):
            tensor = torch.randn(rows, 1024, generator=generator, dtype=torch.float32).half()
            handle.write(tensor.numpy().tobytes())
    return size_each * num_tensors


def timed(load: Callable[[], dict[str, Any]]) -> float:
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    tensors = load()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    del tensors
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GPU weight loading vs the PCIe floor and safetensors")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--size-gb", type=float, default=2.0, help="file size in GiB")
    parser.add_argument("--tensors", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="folder for the file (default: temp)")
    parser.add_argument("--sweep", action="store_true", help="also time other chunk sizes / buffer counts")
    args = parser.parse_args(argv)

    torch = cuda_torch(args.out)
    if torch is None:
        return 0
    from torpor.weights import load_safetensors_torch, measure_pinned_h2d_gbps

    load_file: Callable[..., dict[str, Any]] | None
    try:
        from safetensors.torch import load_file
    except ImportError:
        load_file = None

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="torpor-weights-") as tmp:
        path = Path(tmp) / "model.safetensors"
        t0 = time.perf_counter()
        data_bytes = write_random_fp16(path, int(args.size_gb * (1 << 30)), args.tensors)
        write_s = time.perf_counter() - t0
        bandwidth_gbps = measure_pinned_h2d_gbps(size_mb=512, repeats=7)
        floor_s = data_bytes / (bandwidth_gbps * 1e9)

        torpor_s: list[float] = []
        safetensors_s: list[float] = []
        for _ in range(args.runs):  # alternate the two loaders so drift hits both alike
            torpor_s.append(timed(lambda: load_safetensors_torch(path, device="cuda")))
            if load_file is not None:
                safetensors_s.append(timed(lambda: load_file(str(path), device="cuda")))
        check = load_safetensors_torch(path, device="cuda")
        if load_file is not None:
            reference = load_file(str(path), device="cuda")
            assert all(torch.equal(check[name], reference[name]) for name in reference), "loaders differ"
            del reference
        del check

        sweep: dict[str, dict[str, float]] = {}
        for chunk_mb, num_buffers in SWEEP if args.sweep else []:
            load = functools.partial(load_safetensors_torch, path, device="cuda", chunk_mb=chunk_mb,
                                     num_buffers=num_buffers)
            samples = [timed(load) for _ in range(args.runs)]
            sweep[f"chunk_mb={chunk_mb},num_buffers={num_buffers}"] = summary(samples)

    torpor = summary(torpor_s)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "file_bytes": data_bytes,
        "tensors": args.tensors,
        "page_cache": "warm (the file was just written; nothing dropped)",
        "write_s": write_s,
        "pinned_h2d_gbps": bandwidth_gbps,
        "floor_s": floor_s,
        "torpor_s": torpor,
        "torpor_gbps": data_bytes / torpor["median"] / 1e9,
        "torpor_ratio_to_floor": {"median": torpor["median"] / floor_s, "first": torpor["first"] / floor_s},
        "runs_s": {"torpor": torpor_s, "safetensors": safetensors_s},
        "sweep": sweep,
    }
    if safetensors_s:
        reference_summary = summary(safetensors_s)
        result["safetensors_s"] = reference_summary
        result["speedup_vs_safetensors"] = reference_summary["median"] / torpor["median"]

    print(f"{result['device']}, torch {result['torch']}: {data_bytes / 2**30:.2f} GiB in {args.tensors} "
          f"fp16 tensors, page cache warm")
    print(f"pinned H2D {bandwidth_gbps:.1f} GB/s → floor {floor_s * 1000:.1f} ms")
    print(f"  {'loader':<34} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'run 1 ms':>9} {'× floor':>8}")
    rows = [("torpor load_safetensors_torch", torpor)]
    if safetensors_s:
        rows.append(("safetensors.torch.load_file", result["safetensors_s"]))
    rows += [(f"torpor {name}", s) for name, s in sweep.items()]
    for name, s in rows:
        print(f"  {name:<34} {s['median'] * 1000:>10.1f} {s['min'] * 1000:>8.1f} {s['max'] * 1000:>8.1f} "
              f"{s['first'] * 1000:>9.1f} {s['median'] / floor_s:>8.2f}")
    if safetensors_s:
        print(f"torpor is {result['speedup_vs_safetensors']:.2f}× faster than safetensors (median)")
    else:
        print("safetensors is not installed: no comparison")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0



if __name__ == "__main__":
    sys.exit(main())
