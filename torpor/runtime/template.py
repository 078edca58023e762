"""``python -m torpor.runtime.template``: the per-revision snapshot new instances are forked from.

It imports the user's module and runs ``Model.load()`` once, pre-imports the serving stack, then
waits on a control socket. Each request (one JSON line: instance id, socket, log paths, env) forks an
instance that runs only ``setup()`` and ``warmup()``: no interpreter start, no imports, no weight
reading. The template stays single-threaded and never touches a GPU, so forking is safe; thread pools
and devices are created in the child.

Instances are double-forked: a spare intermediate process, forked ahead of time, forks the instance
and exits at once, so the instance is re-parented to the torpor server (a child subreaper), which
waits for it through a pidfd. A template that dies therefore takes no instance with it.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import random
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from torpor.runtime.cgroups import SPARE_CGROUPS_ENV, join, join_from_env
from torpor.runtime.instance import import_and_load, parse_args, setup_and_serve, watch_server
from torpor.sdk import Model

_PR_SET_PDEATHSIG = 1


def thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _preimport_serving_stack() -> None:
    """Import what a child needs to serve, once, so every fork starts with it loaded."""
    import httptools  # noqa: F401
    import uvloop  # noqa: F401

    import torpor.httpserver
    import torpor.runtime.app
    import torpor.runtime.batching
    import torpor.runtime.serve
    import torpor.runtime.streaming  # noqa: F401


class Spare:
    """An intermediate process forked ahead of time, waiting for the next instance's request.

    On a request it forks the instance and exits at once, so the instance is re-parented to the
    server; with the spare ready, only that one fork is on the cold start's critical path (the
    template forks the next spare after it has replied). A spare dies with its template.
    """

    def __init__(self, model: Model, listener: socket.socket, concurrency: int,
                 load_s: float, cgroups: list[str] | None = None) -> None:
        requests, self.requests = socket.socketpair()  # a socket: it carries the log descriptors
        self.reply_r, reply_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                self.requests.close()
                os.close(self.reply_r)
                listener.close()
                if sys.platform == "linux":
                    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                if cgroups:  # ahead of time: the instance forked from us inherits them
                    try:
                        join(cgroups)
                    except OSError:
                        pass  # the instance joins its own then
                line, fds = receive(requests)
                if line:
                    child = os.fork()
                    if child == 0:
                        os.close(reply_w)
                        _become_instance(model, {**json.loads(line), "fds": fds}, concurrency,
                                         load_s)
                    os.write(reply_w, f"{child}\n".encode())
            finally:
                os._exit(0)
        requests.close()
        os.close(reply_w)

    def fork(self, request: dict[str, Any], fds: list[int]) -> int:
        """The instance's pid (raises OSError/ValueError if this spare is gone)."""
        socket.send_fds(self.requests, [json.dumps(request).encode() + b"\n"], fds)
        with os.fdopen(self.reply_r, "rb") as replies:
            return int(replies.readline())

    def close(self) -> None:
        self.requests.close()  # an unused spare reads EOF and exits
        os.waitpid(self.pid, 0)


def receive(conn: socket.socket) -> tuple[bytes, list[int]]:
    """One request line and the descriptors that came with it (b"" at EOF)."""
    data, fds, _, _ = socket.recv_fds(conn, 65536, 4)
    while data and not data.endswith(b"\n"):
        more = conn.recv(65536)
        if not more:
            break
        data += more
    return data, fds


def serve_forks(model: Model, control: str, concurrency: int, load_s: float) -> None:
    if os.path.exists(control):
        os.unlink(control)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(control)
    listener.listen(64)
    first = os.environ.pop(SPARE_CGROUPS_ENV, "")  # not for the instances to inherit
    spare = Spare(model, listener, concurrency, load_s, first.split(":") if first else None)
    next_cgroups: list[str] = []

    def stop(*_: object) -> None:
        spare.close()  # reaped here: a spare outliving us would be re-parented to the server
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    while True:
        conn, _ = listener.accept()
        with conn:
            line, fds = receive(conn)
            if not line:  # a readiness probe: connected and closed
                continue
            threads = thread_count()
            started = time.perf_counter()
            try:
                request = json.loads(line)
                next_cgroups = [str(p) for p in request.get("next_cgroups", [])]
                try:
                    pid = spare.fork(request, fds)
                except (OSError, ValueError):  # the spare died: make one now and use it
                    spare.close()
                    spare = Spare(model, listener, concurrency, load_s)
                    pid = spare.fork(request, fds)
                reply: dict[str, Any] = {"pid": pid, "fork_s": time.perf_counter() - started,
                                         "threads": threads}
            except Exception as exc:  # a bad request must not kill the template
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            for fd in fds:  # the instance has its own copies now
                os.close(fd)
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass  # the server gave up on this fork; the child is still its to watch
        # After the reply, off the critical path: reap the used spare, fork the next (which joins
        # the cgroups the server made for the next instance).
        spare.close()
        spare = Spare(model, listener, concurrency, load_s, next_cgroups)


def _become_instance(model: Model, request: dict[str, Any], concurrency: int, load_s: float) -> None:
    """In the forked child: own session, own logs, own randomness, then setup() and serve."""
    try:
        os.setsid()
        _redirect(0, os.devnull, os.O_RDONLY)
        stdout, stderr = request["fds"]  # opened by the server: the logs are not ours to open
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        os.close(stdout)
        os.close(stderr)
        sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
        sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.environ.update(request.get("env", {}))
        try:
            join_from_env()  # before setup(): every page it touches is charged to its own limit
        except PermissionError:
            if os.geteuid() == 0:
                raise
            # not root (cgroup v2 asks for more than our own cgroup.procs): the server moves us
        _reseed()
        # No waiting to be re-parented (that happens only once the intermediate has unmapped its
        # copy of the template): the instance follows the server's life through a pidfd instead.
        watch_server()
        # no gc.unfreeze(): the template's objects stay out of the collector, so no full collection
        # walks (and copies) the pages shared with the template
        setup_and_serve(model, request["socket"], concurrency,
                        {"load_s": load_s, "forked": 1.0})
    except SystemExit as exc:
        os._exit(exc.code if isinstance(exc.code, int) else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _redirect(fd: int, path: str, flags: int) -> None:
    target = os.open(path, flags, 0o644)
    os.dup2(target, fd)
    os.close(target)


def _reseed() -> None:
    """Siblings must not share random streams inherited from the template."""
    random.seed()
    # Only if the template imported it: touching numpy.random otherwise imports it (~10 ms).
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


def main(argv: list[str] | None = None) -> int:
    args = parse_args("python -m torpor.runtime.template", "--control", argv)
    model, load_s = import_and_load(args.handler)
    _preimport_serving_stack()
    gc.collect()
    gc.freeze()  # objects made so far stay out of the collector: their pages stay shared after fork
    threads = thread_count()
    print(f"torpor template: {args.handler} loaded in {load_s:.3f}s, {threads} thread(s)",
          file=sys.stderr, flush=True)
    Path(args.socket).parent.mkdir(parents=True, exist_ok=True)
    serve_forks(model, args.socket, args.concurrency, load_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
