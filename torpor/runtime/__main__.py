"""``python -m torpor.runtime``: one instance hosting a user's Model on a Unix socket.

Exit codes: 3 the handler could not be imported or is not a torpor.Model, 4 load()/setup() failed.
Tracebacks go to stderr, which torpor keeps in the instance's log and shows when a cold start fails.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from torpor.sdk import Model

EXIT_IMPORT = 3
EXIT_SETUP = 4


def load_model_class(handler: str) -> type[Model]:
    module_name, class_name = handler.split(":", 1)
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ImportError(f"module {module_name!r} has no attribute {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise TypeError(f"{handler} is not a torpor.Model subclass")
    return cls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torpor.runtime")
    parser.add_argument("--handler", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args(argv)

    os.chdir(args.dir)
    sys.path.insert(0, args.dir)
    try:
        cls = load_model_class(args.handler)
    except Exception:
        print(f"torpor: cannot import handler {args.handler!r}", file=sys.stderr)
        traceback.print_exc()
        return EXIT_IMPORT
    try:
        model = cls()
        model.load()
        model.setup()
    except Exception:
        print(f"torpor: {args.handler} failed in load()/setup()", file=sys.stderr)
        traceback.print_exc()
        return EXIT_SETUP

    from torpor.runtime.serve import serve_unix

    serve_unix(model, args.socket, args.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
