"""An opt-in compiled copy of torpor for the simulator (mypyc), kept apart from the source tree.

    python -m torpor.sim.compiled build [DEST]     # what `make sim-compiled` runs
    python -m torpor.sim.compiled check [DEST]     # fresh, or why not (exit status 1)
    python -m torpor.sim.compiled run -- -m bench.simulate_speed --policy kpa
    torpor simulate --compiled ...                 # the same for one simulate command

``build`` copies the ``torpor`` package into DEST (default ``build/sim-compiled`` beside the
package, ignored by git), compiles the simulator's hot modules (:data:`HOT`) there with mypyc and
writes a manifest: the SHA-256 of every ``.py`` file of the source package and the interpreter's
version. It never compiles in place: an ``.so`` next to its ``.py`` would win over it, edited or
not. Without a C compiler, Python's headers or mypy, it says why and the simulator stays pure.

``run`` starts a Python command with DEST first on ``sys.path`` when the copy is fresh (every
source file hashes as in the manifest, same interpreter) and as it is otherwise, saying which on
stderr: an edited ``.py`` is never shadowed by an old ``.so``. The workers inherit ``sys.path``,
so a run is all compiled or all pure. The compiled modules are the same source: the outputs are
identical (``bench.simulate_fingerprint`` through ``run``; tests/test_sim_compiled.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1]  # the torpor package this module belongs to
DEFAULT_DEST = SOURCE.parent / "build" / "sim-compiled"
HOT = (  # the modules a replay spends its time in (the rest of the copy stays pure Python)
    "torpor/autoscaling/kpa.py", "torpor/autoscaling/metrics.py", "torpor/sim/window.py",
    "torpor/autoscaling/keepalive.py", "torpor/autoscaling/autoscaler.py",
    "torpor/lifecycle/planner.py", "torpor/metering/billing.py", "torpor/gateway/route.py",
    "torpor/sim/engine.py", "torpor/clock.py",
)
MANIFEST = "manifest.json"
_BOOT = """import runpy, sys
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "-m":
    sys.argv = [sys.argv[3], *sys.argv[4:]]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
elif sys.argv[2] == "-c":
    code, sys.argv = sys.argv[3], ["-c", *sys.argv[4:]]
    exec(compile(code, "<string>", "exec"), {"__name__": "__main__"})
else:
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def source_hashes(package: Path = SOURCE) -> dict[str, str]:
    """SHA-256 of every ``.py`` file of ``package``, by its path from the package's parent."""
    return {p.relative_to(package.parent).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(package.rglob("*.py")) if "__pycache__" not in p.parts}


def stale(dest: Path, package: Path = SOURCE) -> str | None:
    """Why the compiled copy at ``dest`` must not run ``package``'s code, or None when it is fresh."""
    try:
        manifest = json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"no compiled copy in {dest} (make sim-compiled)"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sources"), dict):
        return f"{dest / MANIFEST} is not a manifest written by this module (make sim-compiled)"
    if manifest.get("python") != sys.version:
        return (f"{dest} was built for Python {manifest.get('python')!r}, this is {sys.version!r}"
                " (make sim-compiled)")
    now, then = source_hashes(package), manifest["sources"]
    changed = sorted(name for name in now.keys() | then.keys() if now.get(name) != then.get(name))
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        return (f"{dest} is stale: {', '.join(changed[:3])}{more} changed since it was built"
                " (make sim-compiled)")
    return None


def build(dest: Path = DEFAULT_DEST) -> str | None:
    """Build the copy; returns why it could not be built (then nothing is left at ``dest``)."""
    dest = dest.resolve()
    if dest == SOURCE or SOURCE in dest.parents:
        return f"{dest} is inside the source package {SOURCE}: the copy is built apart from it"
    work = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    hashes = source_hashes()
    shutil.copytree(SOURCE, work / "torpor", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    pyproject = SOURCE.parent / "pyproject.toml"  # mypy's settings (strict, ignored imports)
    config = ["--config-file", str(pyproject)] if pyproject.exists() else []
    try:
        done = subprocess.run([sys.executable, "-m", "mypyc", *config, *HOT], cwd=work,
                              capture_output=True, text=True, check=False)
    except OSError as exc:
        done = subprocess.CompletedProcess([], 1, "", str(exc))
    if done.returncode != 0 or source_hashes() != hashes:
        shutil.rmtree(work, ignore_errors=True)
        if done.returncode == 0:
            return "the sources changed during the build"
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
        return "mypyc failed: " + " | ".join(tail or [f"exit status {done.returncode}"])
    for scratch in ("build", ".mypy_cache"):  # the generated C, the objects and mypy's cache
        shutil.rmtree(work / scratch, ignore_errors=True)
    (work / MANIFEST).write_text(json.dumps({"python": sys.version, "mypy": _mypy_version(),
                                             "hot": HOT, "sources": hashes}, indent=1))
    shutil.rmtree(dest, ignore_errors=True)
    work.rename(dest)
    return None


def _mypy_version() -> str:
    try:
        from mypy.version import __version__
    except ImportError:  # pragma: no cover (the build ran mypyc: mypy is there)
        return "unknown"
    return __version__


def launch(args: list[str], dest: Path = DEFAULT_DEST, package: Path = SOURCE) -> tuple[list[str], str]:
    """The command line that runs ``args`` (``-m MODULE ...``, ``-c CODE ...`` or ``SCRIPT ...``)
    compiled when the copy at ``dest`` is fresh and as it is otherwise, and the line saying which."""
    if not args:
        raise ValueError("nothing to run: give -m MODULE ARGS..., -c CODE ARGS... or SCRIPT ARGS...")
    why = stale(dest, package)
    if why is None:
        # first on sys.path, ahead of the directory that -m, -c and a script put there
        return ([sys.executable, "-c", _BOOT, str(dest), *args],
                f"simulator: compiled ({len(HOT)} modules, {dest})")
    return [sys.executable, *args], f"simulator: pure Python ({why})"


def relaunch(args: list[str]) -> None:
    """Replace this process with :func:`launch`'s command line (returns only if exec fails)."""
    argv, line = launch(args)
    print(line, file=sys.stderr, flush=True)
    os.execv(argv[0], argv)


def running() -> dict[str, str]:
    """Which build this process runs: ``{"build": "compiled" | "pure", "why": ...}``."""
    from torpor.sim import engine

    where = Path(engine.__file__ or "")
    if where.suffix != ".py":  # an extension module: this process was started by run/--compiled
        return {"build": "compiled", "why": f"{len(HOT)} modules from {where.parents[2]}"}
    why = stale(DEFAULT_DEST)
    return {"build": "pure", "why": why or (
        f"{DEFAULT_DEST} is fresh but not used: start with `python -m torpor.sim.compiled run -- ...`"
        " or `torpor simulate --compiled`")}


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("check", [])
    if command == "run":  # run -- -m MODULE ARGS... | -c CODE ARGS... | SCRIPT ARGS...
        args = rest[1:] if rest[:1] == ["--"] else rest
        if not args:
            print("run: nothing to run: give -- -m MODULE ARGS..., -c CODE or SCRIPT ARGS...",
                  file=sys.stderr)
            return 2
        relaunch(args)
    if command in ("build", "check") and len(rest) <= 1:
        dest = Path(rest[0]) if rest else DEFAULT_DEST
        if command == "build":
            why = build(dest)
            print(f"built {dest}" if why is None else
                  f"no compiled simulator: {why}; the simulator stays pure Python")
            return 0  # never fatal: the simulator runs pure Python without it
        why = stale(dest)
        print("fresh" if why is None else why)
        return 0 if why is None else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
