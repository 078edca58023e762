"""The opt-in compiled simulator (torpor.sim.compiled): a copy is used only while it matches every
source file and the interpreter, a stale one falls back to pure Python saying why, and a fresh
one (``make sim-compiled``) gives byte-for-byte the output of pure Python.

CI has no compiler: the staleness and launch logic is tested on manifests written here; the
equivalence tests run only where a fresh ``build/sim-compiled`` exists."""

from __future__ import annotations

import dataclasses
import inspect
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import torpor_cli
from torpor.autoscaling.autoscaler import ScaleDecision
from torpor.autoscaling.kpa import KpaDecision
from torpor.lifecycle.planner import FunctionView, InstanceView
from torpor.sim import compiled

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A small source package: two modules, one in a subpackage, and a cache to be ignored."""
    pkg = tmp_path / "src" / "torpor"
    (pkg / "sim" / "__pycache__").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sim" / "__init__.py").write_text("")
    (pkg / "sim" / "window.py").write_text("WINDOW_S = 60.0\n")
    (pkg / "sim" / "__pycache__" / "window.py").write_text("not a source\n")
    return pkg


def write_manifest(dest: Path, package: Path, python: str = sys.version) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    (dest / compiled.MANIFEST).write_text(json.dumps(
        {"python": python, "hot": compiled.HOT, "sources": compiled.source_hashes(package)}))


def test_hashes_cover_every_source_file_by_its_path(package: Path) -> None:
    assert sorted(compiled.source_hashes(package)) == [
        "torpor/__init__.py", "torpor/sim/__init__.py", "torpor/sim/window.py"]


def test_fresh_copy_is_used(package: Path, tmp_path: Path) -> None:
    dest = tmp_path / "build"
    write_manifest(dest, package)
    assert compiled.stale(dest, package) is None
    argv, line = compiled.launch(["-m", "bench.simulate_speed", "--policy", "kpa"], dest, package)
    assert argv[:2] == [sys.executable, "-c"]
    assert argv[3:] == [str(dest), "-m", "bench.simulate_speed", "--policy", "kpa"]
    assert line == f"simulator: compiled ({len(compiled.HOT)} modules, {dest})"


def test_edited_source_is_stale_naming_the_file(package: Path, tmp_path: Path) -> None:
    dest = tmp_path / "build"
    write_manifest(dest, package)
    (package / "sim" / "window.py").write_text("WINDOW_S = 30.0\n")
    why = compiled.stale(dest, package)
    assert why == (f"{dest} is stale: torpor/sim/window.py changed since it was built"
                   " (make sim-compiled)")
    argv, line = compiled.launch(["-m", "torpor", "simulate"], dest, package)
    assert argv == [sys.executable, "-m", "torpor", "simulate"]  # the command as it is
    assert line == f"simulator: pure Python ({why})"


def test_added_and_removed_sources_are_stale(package: Path, tmp_path: Path) -> None:
    dest = tmp_path / "build"
    write_manifest(dest, package)
    (package / "sim" / "new.py").write_text("")
    (package / "sim" / "__init__.py").unlink()
    assert compiled.stale(dest, package) == (
        f"{dest} is stale: torpor/sim/__init__.py, torpor/sim/new.py changed since it was built"
        " (make sim-compiled)")


def test_other_python_is_stale(package: Path, tmp_path: Path) -> None:
    dest = tmp_path / "build"
    write_manifest(dest, package, python="3.12.1 (main, Jan  1 2026, 00:00:00) [GCC 12.2.0]")
    assert compiled.stale(dest, package) == (
        f"{dest} was built for Python '3.12.1 (main, Jan  1 2026, 00:00:00) [GCC 12.2.0]', "
        f"this is {sys.version!r} (make sim-compiled)")


def test_no_or_broken_manifest_is_not_used(package: Path, tmp_path: Path) -> None:
    dest = tmp_path / "build"
    assert compiled.stale(dest, package) == f"no compiled copy in {dest} (make sim-compiled)"
    dest.mkdir()
    (dest / compiled.MANIFEST).write_text("{truncated")
    assert compiled.stale(dest, package) == f"no compiled copy in {dest} (make sim-compiled)"
    (dest / compiled.MANIFEST).write_text('["python"]')
    assert compiled.stale(dest, package) == (
        f"{dest / compiled.MANIFEST} is not a manifest written by this module (make sim-compiled)")


def test_launched_command_finds_the_copy_first(package: Path, tmp_path: Path) -> None:
    """The launcher's command line really puts the copy ahead of the current directory, and the
    program sees its own arguments."""
    dest = tmp_path / "build"
    write_manifest(dest, package)
    (dest / "where.py").write_text("NAME = 'the copy'\n")
    (tmp_path / "where.py").write_text("NAME = 'the source tree'\n")
    argv, _ = compiled.launch(["-c", "import sys, where; print(where.NAME, sys.argv[1:])", "a", "b"],
                              dest, package)
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=30, check=True)
    assert done.stdout == "the copy ['a', 'b']\n"


def test_never_built_in_place() -> None:
    assert compiled.build(compiled.SOURCE / "sim" / "out") == (
        f"{compiled.SOURCE / 'sim' / 'out'} is inside the source package {compiled.SOURCE}: "
        "the copy is built apart from it")
    assert not (compiled.SOURCE / "sim" / "out").exists()


def test_run_without_a_command_says_what_to_give() -> None:
    done = subprocess.run([sys.executable, "-m", "torpor.sim.compiled", "run", "--"],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert done.returncode == 2
    assert done.stderr == "run: nothing to run: give -- -m MODULE ARGS..., -c CODE or SCRIPT ARGS...\n"


@pytest.mark.parametrize("cls", [InstanceView, FunctionView, ScaleDecision, KpaDecision])
def test_written_out_inits_match_the_fields(cls: type) -> None:
    """These dataclasses write out their __init__ (compiled, the generated one stays interpreted):
    it takes every field, in order, with the field's default, and sets each one."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    fields = dataclasses.fields(cls)
    assert [(p.name, p.default) for p in params] == [
        (f.name, inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
        for f in fields]
    values = {f.name: object() for f in fields}
    made = cls(**values)
    assert {f.name: getattr(made, f.name) for f in fields} == values


# -- a fresh build/sim-compiled: the same output, byte for byte -----------------------------------

STALE = compiled.stale(compiled.DEFAULT_DEST)
needs_build = pytest.mark.skipif(STALE is not None, reason=f"no fresh compiled simulator: {STALE}")


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """Two functions, bursts and gaps over ten minutes (cold starts, queueing, scale to zero)."""
    rng = random.Random(5)
    rows, t = [], 0.0
    while t < 600:
        t += rng.expovariate(2.0) if rng.random() < 0.9 else rng.uniform(20, 60)
        rows.append(f"{t:.3f},{rng.choice(['a', 'b'])},{rng.randint(50, 3000)}")
    trace = tmp_path / "trace.csv"
    trace.write_text("timestamp_s,function,duration_ms\n" + "\n".join(rows) + "\n")
    spec = tmp_path / "torpor.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "fn", "runtime": {"command": ["serve"]}, "concurrency": 2,
        "scaling": {"max_instances": 20, "tick_s": 1, "scale_to_zero_grace_s": 5}}))
    return trace, spec


@needs_build
@pytest.mark.parametrize("policy", ["auto", "kpa"])
def test_compiled_simulate_json_is_pure_pythons(files: tuple[Path, Path], policy: str) -> None:
    trace, spec = files
    args = ["simulate", "--trace", str(trace), "--spec", str(spec), "--json",
            "--set", f"scaling.policy={policy}", "--compare", "scaling.idle_mode=false,true",
            "--duration-s", "700"]
    pure = torpor_cli(*args)
    fast = torpor_cli(*args, "--compiled")
    assert pure.returncode == 0 and fast.returncode == 0, pure.stderr + fast.stderr
    assert pure.stderr == ""
    assert fast.stderr == f"simulator: compiled ({len(compiled.HOT)} modules, {compiled.DEFAULT_DEST})\n"
    requests = len(trace.read_text().splitlines()) - 1
    assert [json.loads(line)["requests"] for line in pure.stdout.splitlines()] == [requests] * 2
    assert fast.stdout == pure.stdout


WORKERS = """
import hashlib, json, sys
from pathlib import Path
from torpor.metering.prices import PriceTable
from torpor.sim import compiled, runner
from torpor.sim.engine import Timings
from torpor.sim.traces import load_trace
runner.PARALLEL_MIN_REQUESTS = 0  # two worker processes even for this small trace
trace = load_trace(Path(sys.argv[1]))
spec = runner.validate_spec(json.loads(sys.argv[2]), "spec")
out = {"build": compiled.running()["build"]}
for workers in (1, 2):
    for duration_s in (None, 700.0):  # without a duration the workers send the ledger back
        run = runner.simulate(trace, spec, timings=Timings(), prices=PriceTable(),
                              duration_s=duration_s, workers=workers)
        out[f"{workers}/{duration_s}"] = hashlib.sha256(
            json.dumps(run.to_json(), sort_keys=True).encode() + repr(run.bill).encode()
            + repr([f.intervals for f in run.functions]).encode()).hexdigest()
print(json.dumps(out))
"""


@needs_build
def test_compiled_workers_give_pure_pythons_results(files: tuple[Path, Path]) -> None:
    """Timings go to two worker processes, results, bill lines and ledger rows come back pickled:
    compiled frozen dataclasses too, with the same results as one process and as pure Python."""
    trace, spec = files
    args = ["-c", WORKERS, str(trace), json.dumps(yaml.safe_load(spec.read_text()))]
    pure = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    argv, line = compiled.launch(args)
    assert line.startswith("simulator: compiled")
    fast = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert pure.returncode == 0 and fast.returncode == 0, pure.stderr + fast.stderr
    pure_out, fast_out = json.loads(pure.stdout), json.loads(fast.stdout)
    assert (pure_out.pop("build"), fast_out.pop("build")) == ("pure", "compiled")
    assert fast_out == pure_out
    assert pure_out["1/None"] == pure_out["2/None"] and pure_out["1/700.0"] == pure_out["2/700.0"]
