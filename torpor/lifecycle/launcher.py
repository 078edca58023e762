"""Cold start of one instance: spawn the process, wait until it listens, call ``/initialize``.

Any failure raises :class:`StartFailed` with a sentence saying what went wrong; the reconciler adds the
last lines of the instance's stderr.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp

from torpor.backend.local import InstanceProcess, LaunchPlan, LocalBackend
from torpor.clock import Clock
from torpor.gateway.upstream import UpstreamClient
from torpor.lifecycle.instance import Instance
from torpor.spec import FunctionSpec

if TYPE_CHECKING:
    from torpor.lifecycle.templates import Templates

POLL_S = 0.001  # how often to try connecting while an instance starts (a cheap connect())
NO_WARMUP_HOOK = frozenset({404, 405, 501})  # a command server without POST /initialize


class StartFailed(Exception):
    """The instance could not become ready; the message says why.

    ``stderr_path`` names the log to show when it is not the instance's own (e.g. its template's).
    """

    def __init__(self, message: str, *, stderr_path: Path | None = None) -> None:
        super().__init__(message)
        self.stderr_path = stderr_path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_plan(
    spec: FunctionSpec, base_dir: Path, instance: Instance, socket_path: str, port: int | None,
    model_path: Path | None = None,
) -> LaunchPlan:
    from torpor.lifecycle.templates import function_env

    env = {**function_env(spec, instance.revision, model_path), "TORPOR_INSTANCE": instance.id}
    if spec.runtime.handler is not None:
        argv = [
            sys.executable, "-m", "torpor.runtime",
            "--handler", spec.runtime.handler,
            "--dir", str(base_dir),
            "--socket", socket_path,
            "--concurrency", str(spec.concurrency),
        ]
    else:
        assert spec.runtime.command is not None and port is not None
        env["PORT"] = str(port)
        argv = [arg.replace("${PORT}", str(port)).replace("$PORT", str(port))
                for arg in spec.runtime.command]
    return LaunchPlan(argv=argv, cwd=str(base_dir), env=env,
                      stdout_path=instance.stdout_path, stderr_path=instance.stderr_path)


async def wait_listening(
    handle: InstanceProcess, *, socket_path: str | None, port: int | None, timeout_s: float
) -> None:
    """Return once the instance accepts connections; fail if it exits or takes too long."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    exited = asyncio.ensure_future(handle.wait())
    try:
        while True:
            try:
                if socket_path is not None:
                    _, writer = await asyncio.open_unix_connection(socket_path)
                else:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                pass
            done, _ = await asyncio.wait((exited,), timeout=POLL_S)
            if done:
                raise StartFailed(f"process exited with code {exited.result()} before listening")
            if loop.time() > deadline:
                raise StartFailed(f"did not accept connections within {timeout_s:g}s")
    finally:
        exited.cancel()


async def initialize(client: UpstreamClient, *, command: bool, timeout_s: float) -> dict[str, float]:
    """``POST /initialize``; a command function that does not serve it (404, 405, or 501 as
    Python's ``http.server`` answers for a method it lacks) has no warm-up hook, which is fine.

    Returns the timings a torpor runtime reports (load_s, setup_s, warmup_s).
    """
    try:
        async with client.session.post(
            client.base + "/initialize", data=b"", timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            body = await response.text(errors="replace")
            if command and response.status in NO_WARMUP_HOOK:
                return {}
            if 200 <= response.status < 300:
                return _timings(body) if not command else {}
            raise StartFailed(f"/initialize answered {response.status}: {body[:2000]}")
    except TimeoutError:
        raise StartFailed(
            f"/initialize did not finish within initialize_timeout_s={timeout_s:g}s"
        ) from None
    except aiohttp.ClientError as exc:
        raise StartFailed(f"/initialize failed: {type(exc).__name__}: {exc}") from None


def _timings(body: str) -> dict[str, float]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return {k: float(v) for k, v in data.items() if k.endswith("_s") and isinstance(v, int | float)}


async def start(
    backend: LocalBackend,
    clock: Clock,
    spec: FunctionSpec,
    base_dir: Path,
    instance: Instance,
    socket_path: str,
    templates: Templates | None = None,
    model_path: Path | None = None,
    on_process: Callable[[], None] = lambda: None,
) -> UpstreamClient:
    """Run one cold start to READY, recording facts on ``instance`` as they happen.

    With ``templates`` (a Python handler with runtime.templates on) the instance is forked from its
    revision's template; otherwise its process is spawned.
    """
    port = None
    if spec.runtime.command is not None:
        port = spec.runtime.port or free_port()
    if templates is not None:
        template = templates.ensure(spec, instance.revision, base_dir, model_path)
        instance.handle = await templates.fork(
            template, instance_id=instance.id, socket_path=socket_path,
            stdout=instance.stdout_path, stderr=instance.stderr_path,
            timeout_s=spec.initialize_timeout_s,
        )
        instance.forked = True
    else:
        plan = launch_plan(spec, base_dir, instance, socket_path, port, model_path)
        try:
            instance.handle = await backend.launch(plan)
        except OSError as exc:
            raise StartFailed(f"could not run {plan.argv[0]!r}: {exc}") from None
    on_process()
    instance.address = socket_path if port is None else f"127.0.0.1:{port}"
    await wait_listening(
        instance.handle,
        socket_path=socket_path if port is None else None,
        port=port,
        timeout_s=spec.initialize_timeout_s,
    )
    instance.facts.listening_at = clock.now()
    client = UpstreamClient(unix_socket=socket_path) if port is None else UpstreamClient(port=port)
    try:
        instance.timings = await initialize(client, command=port is not None,
                                            timeout_s=spec.initialize_timeout_s)
    except BaseException:
        await client.close()
        raise
    return client
