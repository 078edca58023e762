"""``isolation: sandbox``: an instance under bubblewrap (Debian's ``bubblewrap``, ``bwrap``).

The sandbox sees the machine's file system read-only (permissions still apply: it runs as the
function's user), a ``/dev`` of its own (with the GPUs' device files), its own ``/proc`` and pid
namespace, an empty private ``/tmp`` (its ``HOME``), and no network (a network namespace with
only a loopback of its own: the host's 127.0.0.1 is out of reach too) unless the spec says
``network: true``. Its socket folder is the one place outside ``/tmp`` it
can write: the server reaches it there through a Unix socket, which needs no network.

Each sandboxed instance is spawned in a sandbox of its own (no template): instances forked from one
template would share its ``/tmp`` and its network namespace, so one could read another's files.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

BWRAP = "bwrap"
_CHECK_TIMEOUT_S = 10.0


def sandbox_argv(argv: list[str], *, cwd: str, network: bool, writable: list[str],
                 readable: tuple[str, ...] | list[str] = ()) -> list[str]:
    """``argv`` run inside a sandbox; ``writable``: folders it may write besides its ``/tmp``;
    ``readable``: its code and model (bound again read-only: they may be under ``/tmp``, which the
    sandbox's own ``/tmp`` hides)."""
    wrapped = [BWRAP, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
               "--tmpfs", "/tmp", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
               "--die-with-parent"]
    if not network:
        wrapped.append("--unshare-net")
    for device in sorted(glob.glob("/dev/nvidia*")) + sorted(glob.glob("/dev/dri")):
        wrapped += ["--dev-bind", device, device]
    for path in [*runtime_paths(), *readable]:
        wrapped += ["--ro-bind", path, path]
    for folder in writable:
        wrapped += ["--bind", folder, folder]
    return [*wrapped, "--chdir", cwd, "--", *argv]


def runtime_paths() -> list[str]:
    """What every instance runs that the sandbox's private ``/tmp`` would hide: the interpreter's
    environment and torpor itself, when they live under ``/tmp`` (a checkout there, as on a CI
    machine). Outermost folders only."""
    candidates = {os.path.realpath(p) for p in (
        sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable)),
        str(Path(__file__).resolve().parents[3]))}  # the folder holding the torpor package
    under_tmp = sorted(p for p in candidates if p.startswith("/tmp/"))
    return [p for p in under_tmp if not any(p.startswith(q + "/") for q in under_tmp)]


def sandbox_problem(preexec: Callable[[], None] | None = None) -> str | None:
    """Why ``isolation: sandbox`` cannot work on this machine (None: it can): bwrap is missing, or
    cannot make its namespaces here. ``preexec``: become the user instances run as first."""
    if shutil.which(BWRAP) is None:
        return ("isolation: sandbox needs bubblewrap (bwrap), which is not installed on this "
                "machine (Debian: apt-get install bubblewrap); deploy without isolation: sandbox "
                "or install it")
    argv = sandbox_argv(["true"], cwd="/", network=False, writable=[])
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=_CHECK_TIMEOUT_S, preexec_fn=preexec, env=_check_env())
    except (OSError, subprocess.SubprocessError) as exc:
        return f"isolation: sandbox: bubblewrap could not run here: {exc}"
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        return ("isolation: sandbox: bubblewrap cannot create its namespaces on this machine ("
                + (said[-1] if said else f"exit code {done.returncode}") + "); user namespaces "
                "may be disabled (sysctl kernel.unprivileged_userns_clone) or forbidden in this "
                "container")
    return None


def _check_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")}
