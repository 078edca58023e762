"""Freeze and thaw a GPU model: GpuOffloader.restore() time against the pinned-PCIe floor.

    python -m bench.wake_gpu --out result.json [--size-gb 2] [--blocks 16] [--runs 5]

Builds a stack of fp16 blocks (LayerNorm, Linear d→2d, GELU, Linear 2d→d) with about ``--size-gb``
GiB of weights on the GPU, measures pinned host→device bandwidth with
``torpor.weights.measure_pinned_h2d_gbps`` before and after the runs, pins the host arena once
(``prepare()``, reported on its own), then runs ``--runs`` freeze/thaw cycles (``offload()`` /
``restore()``). After every freeze it records what the process still holds on the device: torch's
``memory_reserved()``, the device-wide used memory from ``torch.cuda.mem_get_info`` and this process's
memory from NVML (pynvml if installed, else ``nvidia-smi --query-compute-apps``), each beside the same
reading taken right after CUDA started and before the model existed (the CUDA context itself, which no
freeze can give back). After every thaw a forward pass must give bit-identical output.

The thaw goal in BENCHMARKS.md: ``thaw_s / (weight bytes / pinned bandwidth) ≤ 1.2``, with the bandwidth
measured in the same run (the higher of the two measurements, so the floor is the stricter one).
Without a CUDA GPU it prints one line, writes ``{"skipped": reason}`` and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import cuda_torch, summary

if TYPE_CHECKING:
    import torch  # type: ignore[import-not-found, unused-ignore]

GOAL_RATIO = 1.2
MIB = 1 << 20



def build_model(size_bytes: int, blocks: int) -> tuple[torch.nn.Sequential, int]:
    """``blocks`` blocks of two Linear layers (d×2d each, fp16, 8·d² bytes a block) plus a LayerNorm.

    Returns the model and its width d. Mostly large weights, as in real models, plus small ones.
    """
    import torch  # type: ignore[import-not-found, unused-ignore]

    d = max(64, round(math.sqrt(size_bytes / blocks / 8) / 64) * 64)
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(blocks):
        layers += [torch.nn.LayerNorm(d), torch.nn.Linear(d, 2 * d), torch.nn.GELU(),
                   torch.nn.Linear(2 * d, d)]
    return torch.nn.Sequential(*layers).to(device="cuda", dtype=torch.float16).eval(), d


def weight_bytes(module: torch.nn.Module) -> tuple[int, int, int]:
    """(bytes, tensors, storages) of the module's parameters and buffers, shared storages once."""
    tensors = [*module.parameters(), *module.buffers()]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values()), len(tensors), len(storages)


def process_gpu_mib() -> tuple[float | None, str]:
    """This process's device memory as the driver sees it (context included), and where it came from.

    None when the reading is unavailable or this PID is not listed (in a container NVML reports host
    PIDs, which differ from ours).
    """
    pid = os.getpid()
    try:
        import pynvml  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        pynvml = None
    source = "pynvml not installed"
    if pynvml is not None:
        try:
            pynvml.nvmlInit()
            used = 0
            found = False
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if proc.pid == pid and proc.usedGpuMemory is not None:
                        used += proc.usedGpuMemory
                        found = True
            return (used / MIB if found else None), "pynvml"
        except Exception as exc:  # NVML missing or refused: fall through to nvidia-smi
            source = f"pynvml failed: {exc}"
    if shutil.which("nvidia-smi") is None:
        return None, f"{source}; nvidia-smi not found"
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{source}; nvidia-smi failed: {exc}"
    mib = [float(fields[1]) for fields in (line.split(",") for line in out.stdout.splitlines())
           if len(fields) == 2 and fields[0].strip() == str(pid) and fields[1].strip().isdigit()]
    return (sum(mib) if mib else None), "nvidia-smi --query-compute-apps"


def device_used_mib() -> float:
    """Device-wide used memory (every process, contexts included) from cudaMemGetInfo."""
    import torch  # type: ignore[import-not-found, unused-ignore]

    free, total = torch.cuda.mem_get_info()
    return (total - free) / MIB


def memory_snapshot() -> dict[str, Any]:
    import torch  # type: ignore[import-not-found, unused-ignore]

    torch.cuda.synchronize()
    process_mib, source = process_gpu_mib()
    return {"torch_reserved_mib": torch.cuda.memory_reserved() / MIB,
            "torch_allocated_mib": torch.cuda.memory_allocated() / MIB,
            "device_used_mib": device_used_mib(),
            "process_mib": process_mib, "process_source": source}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GPU freeze/thaw (GpuOffloader) against the PCIe floor")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    parser.add_argument("--size-gb", type=float, default=2.0, help="weights in GiB (fp16)")
    parser.add_argument("--blocks", type=int, default=16, help="blocks of two Linear layers each")
    parser.add_argument("--runs", type=int, default=5, help="freeze/thaw cycles")
    args = parser.parse_args(argv)

    torch = cuda_torch(args.out)
    if torch is None:
        return 0
    from torpor.gpu_offload import GpuOffloader
    from torpor.weights import measure_pinned_h2d_gbps

    torch.zeros(1, device="cuda")  # create the context, so the baseline below includes it
    baseline = memory_snapshot()

    net, width = build_model(int(args.size_gb * (1 << 30)), args.blocks)
    total_bytes, num_tensors, num_storages = weight_bytes(net)
    x = torch.randn(8, width, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        reference = net(x)
    loaded = memory_snapshot()

    gbps_before = measure_pinned_h2d_gbps(size_mb=512, repeats=7)
    offloader = GpuOffloader()
    offloader.register(net)
    started = time.perf_counter()
    pinned_bytes = offloader.prepare()
    prepare_s = time.perf_counter() - started

    freeze_s: list[float] = []
    thaw_s: list[float] = []
    frozen: list[dict[str, Any]] = []
    identical: list[bool] = []
    for _ in range(args.runs):
        stats = offloader.offload()
        freeze_s.append(stats.seconds)
        frozen.append({**memory_snapshot(), "device_bytes_after": stats.device_bytes_after})
        stats = offloader.restore()
        thaw_s.append(stats.seconds)
        with torch.inference_mode():
            identical.append(bool(torch.equal(net(x), reference)))
    gbps_after = measure_pinned_h2d_gbps(size_mb=512, repeats=7)
    offloader.close()

    gbps = max(gbps_before, gbps_after)
    floor_s = total_bytes / (gbps * 1e9)
    thaw = summary(thaw_s)
    freeze = summary(freeze_s)
    last = frozen[-1]

    def over_baseline(key: str) -> float | None:
        value, base = last[key], baseline[key]
        return None if value is None or base is None else value - base

    ratio = thaw["median"] / floor_s
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "weight_bytes": total_bytes,
        "tensors": num_tensors,
        "storages": num_storages,
        "pinned_arena_bytes": pinned_bytes,
        "prepare_s": prepare_s,
        "pinned_h2d_gbps": {"before": gbps_before, "after": gbps_after, "used": gbps},
        "floor_s": floor_s,
        "thaw_s": thaw,
        "freeze_s": freeze,
        "thaw_ratio_to_floor": {"median": ratio, "min": thaw["min"] / floor_s, "max": thaw["max"] / floor_s},
        "goal_ratio": GOAL_RATIO,
        "meets_goal": ratio <= GOAL_RATIO,
        "bit_identical_after_every_thaw": all(identical),
        "memory_mib": {"before_model": baseline, "loaded": loaded, "frozen": frozen},
        "frozen_over_context_mib": {"device_used": over_baseline("device_used_mib"),
                                    "process": over_baseline("process_mib")},
        "runs_s": {"thaw": thaw_s, "freeze": freeze_s},
    }

    print(f"{result['device']}, torch {result['torch']}: {total_bytes / 2**30:.2f} GiB fp16 weights in "
          f"{num_tensors} tensors ({num_storages} storages), {args.runs} freeze/thaw cycles")
    print(f"pinned H2D {gbps:.1f} GB/s (before {gbps_before:.1f}, after {gbps_after:.1f}) → floor "
          f"{floor_s * 1000:.1f} ms; pinning the {pinned_bytes / 2**30:.2f} GiB arena (once): "
          f"{prepare_s:.2f} s")
    print(f"  {'step':<18} {'median ms':>10} {'min ms':>8} {'max ms':>8} {'run 1 ms':>9} {'× floor':>8}")
    for name, s in (("thaw (restore)", thaw), ("freeze (offload)", freeze)):
        print(f"  {name:<18} {s['median'] * 1000:>10.1f} {s['min'] * 1000:>8.1f} {s['max'] * 1000:>8.1f} "
              f"{s['first'] * 1000:>9.1f} {s['median'] / floor_s:>8.2f}")
    process = "n/a" if last["process_mib"] is None else f"{last['process_mib']:.0f} MiB"
    context = "n/a" if baseline["process_mib"] is None else f"{baseline['process_mib']:.0f} MiB"
    device_extra = result["frozen_over_context_mib"]["device_used"]
    print(f"frozen: torch reserved {last['torch_reserved_mib']:.1f} MiB, allocated "
          f"{last['torch_allocated_mib']:.1f} MiB; device used {device_extra:+.0f} MiB vs. before the model "
          f"(mem_get_info); process {process} vs. {context} for the bare CUDA context "
          f"({last['process_source']})")
    print(f"loaded: torch reserved {loaded['torch_reserved_mib']:.0f} MiB")
    verdict = "meets" if result["meets_goal"] else "MISSES"
    print(f"thaw / floor = {ratio:.2f} (min {result['thaw_ratio_to_floor']['min']:.2f}, max "
          f"{result['thaw_ratio_to_floor']['max']:.2f}): {verdict} the ≤ {GOAL_RATIO} goal; outputs after "
          f"every thaw bit-identical: {'yes' if all(identical) else 'NO'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0



if __name__ == "__main__":
    sys.exit(main())
