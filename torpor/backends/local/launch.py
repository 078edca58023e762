"""What a local instance runs, and waiting until it listens.

A Python handler runs ``python -m torpor.runtime`` on a Unix socket; a command function is the
user's command with ``PORT`` set. Either way the process gets the function's environment
(:func:`function_env`) and logs into ``DATA_DIR/logs/<function>/``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

from torpor.address import Address
from torpor.backends import StartFailed
from torpor.backends.local.isolation import Credentials, base_env
from torpor.backends.local.processes import InstanceProcess, LaunchPlan
from torpor.backends.local.sandbox import sandbox_argv
from torpor.clock import Clock
from torpor.placement.gpus import GpuDevice, Placement
from torpor.runtime.instance import TCP_PREFIX
from torpor.spec import FunctionSpec

POLL_S = 0.001  # how often to try connecting while an instance starts (a cheap connect())

_THREAD_POOL_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def listen_arg(address: Address) -> str:
    """The runtime's ``--socket`` argument: a Unix socket path, or ``tcp:HOST:PORT``."""
    if address.unix_socket is not None:
        return address.unix_socket
    return f"{TCP_PREFIX}{address.host}:{address.port}"


def function_env(spec: FunctionSpec, revision: int, model_path: Path | None = None,
                 home: str | None = None) -> dict[str, str]:
    """The environment of a function's processes (template, forked or spawned instances): the
    :func:`~torpor.backends.local.isolation.base_env` (``HOME``: ``home``), the spec's ``env`` and
    torpor's own variables; nothing else of the server's environment.

    Native thread pools (OpenMP, OpenBLAS, MKL) are sized to ``resources.cpus`` unless the spec's
    env says otherwise: they would otherwise size themselves to every core of the machine, and
    with one CPU numpy's import starts no thread in a template. ``TORPOR_MODEL_PATH`` is the cached
    copy of ``model.path`` (instances never read the user's folder).
    """
    pools = str(max(1, int(spec.resources.cpus)))
    env = {**base_env(home), **dict.fromkeys(_THREAD_POOL_VARS, pools)}
    env = {**env, **spec.env, "TORPOR_FUNCTION": spec.name,
           "TORPOR_REVISION": str(revision), "PYTHONUNBUFFERED": "1",
           "TORPOR_SERVER_PID": str(os.getpid())}
    if model_path is not None:
        env["TORPOR_MODEL_PATH"] = str(model_path)
    return env


def placement_env(placement: Placement | None, devices: tuple[GpuDevice, ...]) -> dict[str, str]:
    """What an instance sees of its GPUs: ``CUDA_VISIBLE_DEVICES`` (its devices, NVML's order),
    ``TORPOR_GPU_MEMORY_MB`` (its slice, or all its GPUs' memory) and
    ``TORPOR_GPU_MEMORY_FRACTION`` (the slice's share of its device: vLLM's
    ``--gpu-memory-utilization``). On a machine with GPUs, an instance that asked for none sees none.
    """
    if placement is None or not placement.gpus:
        return {"CUDA_VISIBLE_DEVICES": ""} if devices else {}
    sizes = {d.index: d.memory_mb for d in devices}
    device_mb = sum(sizes.get(i, 0) for i in placement.gpus)
    fraction = placement.gpu_memory_mb / device_mb if device_mb else 1.0
    return {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",  # CUDA's indices = NVML's (the ones placement used)
        "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in placement.gpus),
        "TORPOR_GPU_MEMORY_MB": str(placement.gpu_memory_mb),
        "TORPOR_GPU_MEMORY_FRACTION": f"{min(fraction, 1.0):.4f}",
    }


def launch_plan(spec: FunctionSpec, revision: int, code_dir: Path, instance_id: str,
                address: Address, logs: tuple[Path, Path],
                model_path: Path | None = None, extra_env: dict[str, str] | None = None,
                cgroups: tuple[str, ...] = (), home: str | None = None,
                user: Credentials | None = None) -> LaunchPlan:
    """The process of one spawned instance listening at ``address``; ``logs``: stdout, stderr.
    ``extra_env`` (its GPUs) wins over the spec's env; ``cgroups``: the cgroups it starts in;
    ``user``: who it runs as (None: the server's user). ``isolation: sandbox`` wraps it in
    bubblewrap (:func:`~torpor.backends.local.sandbox.sandbox_argv`)."""
    env = {**function_env(spec, revision, model_path, home), **(extra_env or {}),
           "TORPOR_INSTANCE": instance_id}
    if spec.runtime.handler is not None:
        argv = [
            sys.executable, "-m", "torpor.runtime",
            "--handler", spec.runtime.handler,
            "--dir", str(code_dir),
            "--socket", listen_arg(address),
            "--concurrency", str(spec.concurrency),
        ]
    else:
        assert spec.runtime.command is not None and address.port is not None
        port = str(address.port)
        env["PORT"] = port
        argv = [arg.replace("${PORT}", port).replace("$PORT", port) for arg in spec.runtime.command]
    if spec.isolation == "sandbox":
        if "HOME" not in spec.env:
            env["HOME"] = "/tmp"  # the only place a sandbox can write
        writable = [str(Path(address.unix_socket).parent)] if address.unix_socket else []
        readable = [str(code_dir)] + ([str(model_path)] if model_path is not None else [])
        argv = sandbox_argv(argv, cwd=str(code_dir), network=spec.network, writable=writable,
                            readable=readable)
    return LaunchPlan(argv=argv, cwd=str(code_dir), env=env,
                      stdout_path=logs[0], stderr_path=logs[1], cgroups=cgroups, user=user)


async def wait_listening(handle: InstanceProcess, address: Address, clock: Clock,
                         timeout_s: float) -> None:
    """Return once the process accepts connections at ``address``; fail if it exits or takes too
    long (``timeout_s`` on ``clock``)."""
    deadline = clock.now() + timeout_s
    exited = asyncio.ensure_future(handle.wait())
    try:
        while True:
            try:
                if address.unix_socket is not None:
                    _, writer = await asyncio.open_unix_connection(address.unix_socket)
                else:
                    _, writer = await asyncio.open_connection(address.host, address.port)
                writer.close()
                return
            except OSError:
                pass
            done, _ = await asyncio.wait((exited,), timeout=POLL_S)
            if done:
                raise StartFailed(f"process exited with code {exited.result()} before listening")
            if clock.now() > deadline:
                raise StartFailed(f"did not accept connections within {timeout_s:g}s")
    finally:
        exited.cancel()
