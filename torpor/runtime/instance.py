"""What every instance process does after its Model is loaded: setup(), then serve.

Shared by a plain spawn (``python -m torpor.runtime``) and a child forked from a template, so both
report the same timings through ``/initialize``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import sys
import threading
import time
import traceback

from torpor.runtime.gpu_slice import apply_memory_fraction
from torpor.sdk import Model

EXIT_IMPORT = 3
EXIT_SETUP = 4
EXIT_ORPHANED = 5  # the server is gone
TCP_PREFIX = "tcp:"  # ``--socket tcp:HOST:PORT`` listens on a TCP port instead of a Unix socket


def parse_args(prog: str, socket_flag: str, argv: list[str] | None) -> argparse.Namespace:
    """The arguments both entry points take; enters the function's folder (imports resolve there)."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--handler", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument(socket_flag, required=True, dest="socket")
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args(argv)
    os.chdir(args.dir)
    sys.path.insert(0, args.dir)
    return args


def load_model_class(handler: str) -> type[Model]:
    module_name, class_name = handler.split(":", 1)
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ImportError(f"module {module_name!r} has no attribute {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise TypeError(f"{handler} is not a torpor.Model subclass")
    return cls


def import_and_load(handler: str) -> tuple[Model, float]:
    """Import the handler and run ``load()``; exits the process with a clear stderr on failure."""
    started = time.perf_counter()
    try:
        cls = load_model_class(handler)
    except Exception:
        print(f"torpor: cannot import handler {handler!r}", file=sys.stderr)
        traceback.print_exc()
        sys.exit(EXIT_IMPORT)
    try:
        model = cls()
        model.load()
    except Exception:
        print(f"torpor: {handler} failed in load()", file=sys.stderr)
        traceback.print_exc()
        sys.exit(EXIT_SETUP)
    return model, time.perf_counter() - started


def watch_server() -> None:
    """Exit when the torpor server that runs us exits (``TORPOR_SERVER_PID``), whoever our parent
    is: a forked instance is not the server's child until its intermediate parent is gone."""
    server_pid = int(os.environ.get("TORPOR_SERVER_PID", "0"))
    if server_pid <= 1 or not hasattr(os, "pidfd_open"):
        return
    try:
        pidfd = os.pidfd_open(server_pid)
    except ProcessLookupError:
        os._exit(EXIT_ORPHANED)
    except OSError:
        return

    def wait() -> None:
        select.select([pidfd], [], [])
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=wait, name="torpor-server-watch", daemon=True).start()


def setup_and_serve(model: Model, socket_path: str, concurrency: int, timings: dict[str, float]) -> None:
    started = time.perf_counter()
    try:
        fraction = apply_memory_fraction()  # the GPU slice holds from setup()'s first allocation
        if fraction is not None:
            timings["gpu_memory_fraction"] = fraction
        model.setup()
    except Exception:
        print(f"torpor: {type(model).__name__}.setup() failed", file=sys.stderr)
        traceback.print_exc()
        sys.exit(EXIT_SETUP)
    timings["setup_s"] = time.perf_counter() - started

    from torpor.runtime.serve import serve_tcp, serve_unix

    if socket_path.startswith(TCP_PREFIX):  # an instance on a Ray node: the gateway dials its IP
        host, _, port = socket_path[len(TCP_PREFIX):].rpartition(":")
        serve_tcp(model, int(port), concurrency, timings, host=host)
    else:
        serve_unix(model, socket_path, concurrency, timings)
