"""Ray Serve 2.60 as a peer: its own venv, a local single-node Ray with Serve, and its scale from zero.

    python -m bench.ray_peer [--runs 3] [--requests 200]

- ``ensure_ray_venv()`` installs ``ray[serve]==2.60.0`` into ``bench/.venv-ray`` (once; a stamp file
  records it) and returns that venv's python, or None with a printed reason: callers then skip Ray.
- ``RayServe(app, port)`` is a context manager: a local single-node Ray (2 CPUs, 200 MB object store,
  no dashboard, usage stats off, all on 127.0.0.1) with Serve's HTTP proxy on 127.0.0.1:<port> and
  the app ``app`` from ``bench/ray_apps.py`` deployed at ``/<app>``; on exit Ray is shut down and any
  process left from it is killed by pid.
- ``measure_scale_from_zero(python, runs, tuned=False)``: the ``noop_scale_to_zero`` app (autoscaling
  ``min_replicas: 0``) is left until Serve reports no replica at all, then one HTTP request is timed
  from sending it to the last byte of the response; ``runs`` times. Ray's defaults push queue metrics
  to the controller every 10 s and a replica is started only on such a push, so the samples are spread
  over that period; ``tuned=True`` uses ``noop_scale_to_zero_tuned`` (pushes every 0.1 s).
- ``noop_url(port)``: the URL of the no-op app (``noop``, one replica, ``max_ongoing_requests=100``).

Ray runs only in its own venv; this module needs nothing from it and runs under the project's python.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from bench.harness import ROOT, free_port, print_table, summary, write_json

RAY_VERSION = "2.60.0"
RAY_REQUIREMENT = f"ray[serve]=={RAY_VERSION}"
VENV = ROOT / "bench" / ".venv-ray"
CONSTRAINTS = ROOT / "constraints.txt"
APPS_FILE = ROOT / "bench" / "ray_apps.py"
STAMP_NAME = ".torpor-ray-installed"
INSTALL_TIMEOUT_S = 15 * 60
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0
SCALE_TO_ZERO_APP = "noop_scale_to_zero"
SCALE_TO_ZERO_TUNED_APP = "noop_scale_to_zero_tuned"
NOOP_APP = "noop"
# How often a Serve handle (the HTTP proxy's, here) pushes its queue metrics to the controller is the
# app's autoscaling_config.metrics_interval_s (Ray's default 10 s; the tuned app 0.1 s). With a
# deployment at zero replicas the controller starts one only when a push reports the queued request,
# so this period decides most of Ray's scale from zero. (Seen on 2.60: the push made at once when a
# request reaches a zero-replica deployment carries the metrics recorded before that request, so it
# does not set off the scale-up; and RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S is not read.)
DEFAULT_METRICS_INTERVAL_S = 10.0

# Environment of every Ray process we start: no usage stats, quiet, nothing beyond this machine.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    "RAY_DEDUP_LOGS": "0",
    "PYTHONUNBUFFERED": "1",
}


# ---------------------------------------------------------------------------------------------------
# the venv


def _stamp_text() -> str:
    constraints = CONSTRAINTS.read_bytes() if CONSTRAINTS.exists() else b""
    return f"{RAY_REQUIREMENT}\nconstraints sha256 {hashlib.sha256(constraints).hexdigest()}\n"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_ray_venv(venv: Path = VENV, timeout_s: float = INSTALL_TIMEOUT_S) -> Path | None:
    """The python of a venv holding ``ray[serve]==2.60.0``, installing it once; None if it can't be.

    Idempotent: a stamp file in the venv records a finished install of this requirement with these
    constraints. On failure prints one line with the reason and returns None (the caller skips Ray).
    """
    python = _venv_python(venv)
    stamp = venv / STAMP_NAME
    if python.exists() and stamp.exists() and stamp.read_text() == _stamp_text():
        return python
    started = time.monotonic()
    print(f"ray venv: installing {RAY_REQUIREMENT} into {venv} (at most {timeout_s / 60:.0f} min)",
          flush=True)
    if not python.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300,
                           capture_output=True, text=True)
        except (subprocess.SubprocessError, OSError) as error:
            detail = (getattr(error, "stderr", "") or str(error)).strip().splitlines()
            print(f"ray venv: skipped, cannot create the venv: {detail[-1] if detail else error!r}")
            return None
    command = [str(python), "-m", "pip", "install", "--progress-bar", "off", "--no-input",
               RAY_REQUIREMENT]
    if CONSTRAINTS.exists():
        command += ["-c", str(CONSTRAINTS)]  # pins torch: never let a CUDA build be pulled in
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    timer = threading.Timer(timeout_s, process.kill)
    timer.start()
    errors: list[str] = []
    collected = 0
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip()
            if line.startswith("ERROR"):
                errors.append(line)
            if line.startswith("Collecting"):
                collected += 1
                if collected % 10 == 1:
                    print(f"ray venv: [{time.monotonic() - started:5.0f}s] {line[:120]}", flush=True)
            elif line.startswith(("Installing collected", "Successfully installed")):
                print(f"ray venv: [{time.monotonic() - started:5.0f}s] {line[:120]}…", flush=True)
        returncode = process.wait(timeout=60)
    finally:
        timer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait(10)
    elapsed = time.monotonic() - started
    if returncode != 0:
        reason = ("timed out" if elapsed >= timeout_s else
                  (errors[0] if errors else f"pip exited {returncode}"))
        print(f"ray venv: skipped, cannot install {RAY_REQUIREMENT}: {reason[:200]}")
        return None
    check = subprocess.run([str(python), "-c", "import ray, ray.serve; print(ray.__version__)"],
                           capture_output=True, text=True, timeout=120)
    if check.returncode != 0 or check.stdout.strip() != RAY_VERSION:
        print(f"ray venv: skipped, installed ray does not import: {check.stderr.strip()[-200:]}")
        return None
    stamp.write_text(_stamp_text())
    size = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and not p.is_symlink())
    print(f"ray venv: ready in {elapsed:.0f}s, {size / 2**20:.0f} MiB", flush=True)
    return python


# ---------------------------------------------------------------------------------------------------
# processes


def _session_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # state ppid pgrp session ...
    return int(fields[3])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pids_of(session: int, marker: str) -> list[int]:
    """Live processes in ``session`` or whose command line names ``marker`` (our Ray temp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        if _session_of(pid) == session or marker in _cmdline(pid):
            found.append(pid)
    return found


def _kill_pids(pids: list[int], grace_s: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.05)
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
        if not pids:
            return


def _http_get(port: int, path: str, timeout_s: float = 30.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# ---------------------------------------------------------------------------------------------------
# Ray Serve


def noop_url(port: int) -> str:
    """URL of the no-op app (one replica returning "ok") on a `RayServe(NOOP_APP, port)`."""
    return f"http://127.0.0.1:{port}/{NOOP_APP}"


class RayServe:
    """A local single-node Ray with Serve's HTTP proxy on 127.0.0.1:``port`` running ``app``.

    Ray lives in one agent process (``bench/ray_apps.py`` under the venv python) started in its own
    session; every Ray process (GCS, raylet, workers, replicas) descends from it. Leaving the context
    asks the agent to shut Serve and Ray down, then kills, by pid, whatever is left in that session
    or names our Ray temp dir, and checks that nothing is left.
    """

    def __init__(self, app: str, port: int, python: Path | None = None,
                 start_timeout_s: float = START_TIMEOUT_S, env: dict[str, str] | None = None) -> None:
        self.app = app
        self.env = dict(env or {})
        self.port = port
        self.python = python or _venv_python(VENV)
        self.start_timeout_s = start_timeout_s
        self.url = f"http://127.0.0.1:{port}/{app}"
        self.startup_s = 0.0
        self.autoscaling: dict[str, Any] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="rayp-", dir="/tmp"))  # short: Ray's unix sockets
        self.process: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._log: IO[bytes] | None = None

    # context manager ----------------------------------------------------------------------------

    def __enter__(self) -> RayServe:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._log = open(self.tmp / "agent.log", "wb")  # noqa: SIM115
        env = {**os.environ, **RAY_ENV, **self.env}
        env.pop("PYTHONPATH", None)
        self.process = subprocess.Popen(
            [str(self.python), str(APPS_FILE), "--port", str(self.port), "--temp-dir",
             str(self.tmp / "ray"), "--apps", self.app],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=self.tmp,
            env=env, start_new_session=True,
        )
        threading.Thread(target=self._read_stdout, daemon=True).start()
        ready = self._next_line(self.start_timeout_s)
        if not ready.get("ready"):
            raise RuntimeError(f"Ray Serve did not start: {ready.get('error', ready)}; "
                               f"log: {self._log_tail()}")
        self.startup_s = float(ready.get("startup_s", 0.0))
        self.autoscaling = dict(ready.get("autoscaling", {}).get(self.app, {}))
        self.wait_answers(self.start_timeout_s)

    def wait_answers(self, timeout_s: float) -> None:
        """Until GET ``/<app>`` answers 200 "ok" (for a scale-to-zero app this scales it up)."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                status, body = _http_get(self.port, f"/{self.app}", timeout_s=30)
                if status == 200 and body == b"ok":
                    return
                last = f"{status} {body[:100]!r}"
            except OSError as error:
                last = repr(error)
            time.sleep(0.1)
        raise RuntimeError(f"Ray Serve app {self.app} did not answer in {timeout_s}s: {last}")

    def status(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """``{"status": ..., "replicas": {state: count}}`` of the app, from ``serve.status()``."""
        return self._command(f"status {self.app}", timeout_s)

    def replicas(self) -> int:
        """Replicas of the app in any state (starting, running, stopping...)."""
        return sum(int(n) for n in self.status().get("replicas", {}).values())

    def wait_zero_replicas(self, timeout_s: float = 120.0, poll_s: float = 0.25) -> float:
        """Until Serve reports no replica at all for the app; returns the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.replicas() == 0:
                return time.monotonic() - started
            time.sleep(poll_s)
        raise RuntimeError(f"{self.app} still has replicas after {timeout_s}s: {self.status()}")

    def close(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert process.stdin is not None
                process.stdin.write("quit\n")
                process.stdin.flush()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print("ray: agent did not stop in time; killing it", flush=True)
        leftovers = _pids_of(process.pid, str(self.tmp)) if process is not None else []
        if leftovers:
            print(f"ray: killing {len(leftovers)} leftover Ray processes", flush=True)
            _kill_pids(leftovers)
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            remaining = _pids_of(process.pid, str(self.tmp))
            if remaining:
                raise RuntimeError(f"Ray processes still alive after teardown: {remaining}")
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.process = None

    # agent protocol -----------------------------------------------------------------------------

    def _read_stdout(self) -> None:
        process = self.process
        assert process is not None and process.stdout is not None
        for line in process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _next_line(self, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"Ray agent gave no answer in {timeout_s}s; log: {self._log_tail()}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"Ray agent exited; log: {self._log_tail()}")
            with contextlib.suppress(json.JSONDecodeError):
                parsed = json.loads(line)
                if isinstance(parsed, dict):
                    return parsed

    def _command(self, command: str, timeout_s: float) -> dict[str, Any]:
        process = self.process
        if process is None or process.stdin is None:
            raise RuntimeError("Ray agent is not running")
        process.stdin.write(command + "\n")
        process.stdin.flush()
        return self._next_line(timeout_s)

    def _log_tail(self, chars: int = 1500) -> str:
        if self._log is not None:
            self._log.flush()
        try:
            return (self.tmp / "agent.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


# ---------------------------------------------------------------------------------------------------
# measurements


def measure_scale_from_zero(python: Path, runs: int, port: int | None = None, tuned: bool = False,
                            settle_s: float = 1.0) -> list[float] | None:
    """Ray Serve's scale from zero to first response, ``runs`` samples in seconds; None if Ray fails.

    Each round waits until ``serve.status()`` reports no replica at all for the ``min_replicas: 0``
    app, then ``settle_s`` more (so the proxy has seen the replica go) plus a phase offset, then times
    one GET on a new connection from sending it to the last byte of the response.

    The scale-up waits for the proxy's next periodic metrics push (every ``metrics_interval_s`` of
    the app: Ray's default 10 s, or 0.1 s with ``tuned``), and the scale-down that precedes each
    round is itself set off by a push, so rounds run back to back would all hit the same point of
    that period. The offsets, round i waiting (i + 0.5) / runs of a period, spread the requests
    evenly over it instead: the samples are what a request arriving at a random time would see.
    """
    app = SCALE_TO_ZERO_TUNED_APP if tuned else SCALE_TO_ZERO_APP
    samples: list[float] = []
    try:
        with RayServe(app, port or free_port(), python=python) as ray_serve:
            period = float(ray_serve.autoscaling.get("metrics_interval_s", DEFAULT_METRICS_INTERVAL_S))
            for i in range(runs):
                ray_serve.wait_zero_replicas()
                time.sleep(settle_s + (i + 0.5) / runs * period)
                if ray_serve.replicas() != 0:
                    raise RuntimeError("a replica appeared before the timed request")
                started = time.perf_counter()
                status, body = _http_get(ray_serve.port, f"/{app}", timeout_s=120)
                elapsed = time.perf_counter() - started
                if status != 200 or body != b"ok":
                    raise RuntimeError(f"scale from zero answered {status} {body[:200]!r}")
                samples.append(elapsed)
    except (RuntimeError, OSError) as error:
        print(f"ray: scale from zero failed: {error}")
        return None
    return samples


def measure_latency(port: int, path: str, requests: int) -> list[float]:
    """Sequential GETs on one keep-alive connection; seconds per request to the last byte."""
    samples: list[float] = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for _ in range(requests):
            started = time.perf_counter()
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            samples.append(time.perf_counter() - started)
            if response.status != 200 or body != b"ok":
                raise RuntimeError(f"{path} answered {response.status} {body[:200]!r}")
    finally:
        connection.close()
    return samples


def _leftover_ray_processes() -> list[str]:
    found = subprocess.run(["pgrep", "-af", "raylet|gcs_server|ray::|ray/dashboard|ray_apps.py"],
                           capture_output=True, text=True, check=False)
    return [line for line in found.stdout.splitlines() if str(os.getpid()) not in line.split()[:1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="scale-from-zero samples")
    parser.add_argument("--requests", type=int, default=200, help="sequential no-op requests")
    args = parser.parse_args()
    python = ensure_ray_venv()
    if python is None:
        print("ray: no Ray venv; nothing measured")
        return
    results: dict[str, Any] = {"ray": RAY_VERSION, "cpus": os.cpu_count()}

    samples = measure_scale_from_zero(python, args.runs)
    if samples:
        results["scale_from_zero_s"] = summary(samples)
        results["scale_from_zero_samples_s"] = samples
    tuned = measure_scale_from_zero(python, args.runs, tuned=True)
    if tuned:
        results["scale_from_zero_tuned_s"] = summary(tuned)
        results["scale_from_zero_tuned_samples_s"] = tuned

    port = free_port()
    with RayServe(NOOP_APP, port, python=python) as ray_serve:
        results["startup_s"] = ray_serve.startup_s
        measure_latency(port, f"/{NOOP_APP}", 20)  # warm the connection and the replica
        latency = measure_latency(port, f"/{NOOP_APP}", args.requests)
    results["noop_latency_s"] = summary(latency)
    results["noop_latency_p99_s"] = statistics.quantiles(latency, n=100)[98]

    rows = []
    if samples:
        rows.append(("scale from zero → first response", results["scale_from_zero_s"]))
    if tuned:
        rows.append(("  same, metrics pushed every 0.1 s", results["scale_from_zero_tuned_s"]))
    rows.append(("noop, concurrency 1, per request", results["noop_latency_s"]))
    print_table(f"Ray Serve {RAY_VERSION} on 127.0.0.1 ({os.cpu_count()} CPUs)", rows)
    print(f"  noop p99 {results['noop_latency_p99_s'] * 1000:.1f} ms; "
          f"{1 / results['noop_latency_s']['median']:.0f} req/s at concurrency 1; "
          f"Ray+Serve start {results['startup_s']:.1f}s")
    leftovers = _leftover_ray_processes()
    print("  leftover Ray processes: " + ("; ".join(leftovers) if leftovers else "none"))
    print(f"\nwrote {write_json('ray_peer', results)}")


if __name__ == "__main__":
    main()
