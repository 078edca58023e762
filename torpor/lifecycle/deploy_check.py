"""Refuse at deploy a Python handler that cannot start: a missing module or class, a SyntaxError,
an ImportError, or a class that is not a ``torpor.Model``.

The check imports the handler in a short-lived process (:mod:`torpor.runtime.check`) with the
function's environment and a timeout, isolated as its instances are (:class:`CheckProcess`: its
user, a copy of its code, its sandbox); what only fails later (``load()``, ``setup()``, warm-up, a
slow import past the timeout) is still reported by the first request's 503.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

from torpor.backends.local.isolation import CheckProcess, base_env
from torpor.spec import FunctionSpec

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 60.0  # an import slower than this is let through (the cold start will tell)


async def handler_problem(spec: FunctionSpec, base_dir: Path,
                          timeout_s: float = CHECK_TIMEOUT_S,
                          how: CheckProcess | None = None) -> str | None:
    """``None`` when ``runtime.handler`` imports; else a ``runtime.handler: ...`` line."""
    handler = spec.runtime.handler
    if handler is None:
        return None
    how = how or CheckProcess(base_dir, os.environ.get("HOME"))
    env = {**base_env(how.home), **spec.env, "TORPOR_FUNCTION": spec.name,
           "TORPOR_DEPLOY_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    code_dir = str(how.code_dir)
    argv = [sys.executable, "-m", "torpor.runtime.check", "--handler", handler, "--dir", code_dir,
            "--socket", "-"]
    process = await asyncio.create_subprocess_exec(
        *(how.wrap(argv) if how.wrap is not None else argv), cwd=code_dir, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, preexec_fn=how.preexec)
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        log.warning("%s: importing %s took over %gs at deploy; not checked", spec.name, handler,
                    timeout_s)
        return None
    if process.returncode == 0:
        return None
    lines = stderr.decode(errors="replace").strip().splitlines()
    detail = lines[-1] if lines else f"the check exited with code {process.returncode}"
    return f"runtime.handler: {handler!r} cannot start: {detail}"
