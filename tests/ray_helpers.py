"""Shared by the Ray backend's tests: Ray's environment, the test function, and cleanup by pid."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from torpor.backends import CodeRef, RevisionPlan, StartedInstance
from torpor.spec import FunctionSpec

FUNCTIONS = Path(__file__).resolve().parent / "functions"
MB = 2**20
# Node death noticed by Ray in ~1.5 s instead of ~15 s (the backend's pings notice a dead agent
# as fast; on a real cluster they are what bounds the time).
FAST_HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                      "health_check_initial_delay_ms": 0}


def scratch_dir(name: str) -> str:
    """A short, fixed folder for one test module's Ray (Unix socket paths must stay short), emptied
    first: Ray's exit handler recreates an empty session folder after any cleanup, so a fixed name
    keeps one such leftover per worktree instead of one per run."""
    tag = hashlib.sha1(str(FUNCTIONS).encode()).hexdigest()[:8]
    root = Path(tempfile.gettempdir()) / f"tpr-{tag}-{name}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return str(root)


@contextmanager
def ray_environment(root: str, **extra: str) -> Iterator[None]:
    """Ray's temp dir (sockets, logs, the 'current cluster' file) under ``root``, not /tmp/ray,
    which other Ray users on this machine share; no usage stats."""
    names = {"RAY_TMPDIR": root, "RAY_USAGE_STATS_ENABLED": "0", **extra}
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def kill_leftovers(root: str) -> list[int]:
    """Kill, by pid, processes whose command line names ``root`` (Ray processes of nodes that a
    fake autoscaler started and nobody stopped); returns their pids."""
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if root in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except ProcessLookupError:
                pass
    return killed


def make_spec(**overrides: Any) -> FunctionSpec:
    data: dict[str, Any] = {"name": "stateful", "runtime": {"handler": "model:Stateful"},
                            "resources": {"cpus": 1, "memory_mb": 256}}
    data.update(overrides)
    return FunctionSpec.model_validate(data)


def make_revision(tmp_path: Path, spec: FunctionSpec) -> RevisionPlan:
    """A revision of tests/functions/stateful from a copy of its folder."""
    code = tmp_path / "code"
    shutil.copytree(FUNCTIONS / "stateful", code)
    return RevisionPlan(function=spec.name, revision=1, spec=spec, code=CodeRef("d" * 64, code))


async def invoke(started: StartedInstance, payload: dict[str, Any]) -> dict[str, Any]:
    """/healthz, /initialize, then /invoke over TCP at the instance's address."""
    async with httpx.AsyncClient(base_url=started.address.base_url, timeout=30) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.post("/initialize")).status_code == 200
        response = await client.post("/invoke", json=payload)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result
