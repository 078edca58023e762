"""Shared pieces for the benchmarks: a real `torpor serve` in a temp dir, timing and tables."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from torpor.code import pack_dir

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`torpor serve` on a free port with its own data dir; stopped with SIGTERM.

    On loopback with ``--auth off`` as `make run` starts it, unless ``extra_args`` says ``--auth
    on``: then ``http`` sends the admin key the server wrote (``api_key``)."""

    def __init__(self, extra_args: Sequence[str] = ()) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="torpor-bench-"))
        # crossable by others (mkdtemp makes it 0700): a root server's instances run as their own
        # users and must reach the data dir inside, as they would in a real deployment
        self.tmp.chmod(0o711)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(self.tmp / "serve.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "torpor", "serve", "--port", str(self.port),
             "--data-dir", str(self.tmp / "data"), "--log-level", "warning",
             *([] if "--auth" in extra_args else ["--auth", "off"]), *extra_args],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        self.http = httpx.Client(base_url=self.url, timeout=120)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if self.http.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"torpor serve did not start; see {self.tmp / 'serve.log'}")
        # the admin key the server wrote (none with --auth off)
        key_file = self.tmp / "data" / "admin.key"
        self.api_key = key_file.read_text().strip() if key_file.exists() else ""
        if self.api_key:
            self.http.headers["authorization"] = f"Bearer {self.api_key}"

    def deploy(self, folder: Path, **overrides: Any) -> None:
        """Deploy a copy of ``folder`` with ``overrides`` merged into its spec (a key of a section
        left out, e.g. ``scaling.policy``, keeps the folder's value)."""
        spec = yaml.safe_load((folder / "torpor.yaml").read_text())
        for key, value in overrides.items():
            spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
        self.deploy_spec(folder, spec)

    def deploy_spec(self, folder: Path, spec: dict[str, Any]) -> None:
        """Deploy ``folder``'s code with exactly ``spec`` (its own torpor.yaml is not read): what a
        comparison with the simulator needs, which sees that same spec and nothing else."""
        archive = pack_dir(folder)
        if self.http.head(f"/api/v1/code/{archive.digest}").status_code != 200:
            self.http.put(f"/api/v1/code/{archive.digest}", content=archive.data).raise_for_status()
        response = self.http.post("/api/v1/functions", json={
            "spec": spec, "code": archive.digest, "source": str(folder / "torpor.yaml")})
        response.raise_for_status()

    def wait_template(self, name: str, timeout_s: float = 60) -> None:
        """Until ``name``'s template is ready (a cold start then only forks); fail if it failed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            template = self.http.get(f"/api/v1/functions/{name}").json()["template"]
            if template and template["state"] == "ready":
                return
            if template and template["state"] == "failed":
                raise RuntimeError(f"{name}: template failed; see {template['stderr_log']}")
            time.sleep(0.02)
        raise RuntimeError(f"{name}: template not ready in {timeout_s}s")

    def delete(self, name: str) -> None:
        self.http.delete(f"/api/v1/functions/{name}").raise_for_status()

    def wait_no_instances(self, name: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self.http.get("/api/v1/instances").json()
            if not [r for r in rows if r["function"] == name]:
                return
            time.sleep(0.02)
        raise RuntimeError(f"{name} still has instances after {timeout_s}s")

    def close(self) -> None:
        self.http.close()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def summary(samples: Sequence[float]) -> dict[str, float]:
    """Median, min and max (and the first run, which pays for cold caches) of one measurement."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "first": samples[0], "n": len(samples)}


def cuda_torch(out: Path) -> Any | None:
    """torch, when it is installed and sees a CUDA GPU; otherwise None, after ``write_skip``."""
    try:
        import torch  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        write_skip(out, "torch is not installed")
        return None
    if not torch.cuda.is_available():
        write_skip(out, "no CUDA GPU (torch.cuda.is_available() is False)")
        return None
    return torch


def write_skip(out: Path, reason: str) -> int:
    """A benchmark that cannot run here says why in one line and in its JSON, and exits 0."""
    print(f"skip: {reason}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"skipped": reason}))
    return 0


def ms(value: float) -> str:
    return f"{value * 1000:.1f}"


def print_table(title: str, rows: list[tuple[str, dict[str, float]]]) -> None:
    print(f"\n{title}")
    print(f"  {'case':<40} {'median ms':>10} {'min ms':>10} {'max ms':>10} {'n':>4}")
    for name, s in rows:
        print(f"  {name:<40} {ms(s['median']):>10} {ms(s['min']):>10} {ms(s['max']):>10} "
              f"{int(s['n']):>4}")


def write_json(name: str, data: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path
