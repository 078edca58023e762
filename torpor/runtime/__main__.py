"""``python -m torpor.runtime``: one instance hosting a user's Model on a Unix socket (plain spawn).

Exit codes: 3 the handler could not be imported or is not a torpor.Model, 4 load()/setup() failed.
Tracebacks go to stderr, which torpor keeps in the instance's log and shows when a cold start fails.
"""

from __future__ import annotations

import argparse
import os
import sys

from torpor.runtime.instance import import_and_load, setup_and_serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torpor.runtime")
    parser.add_argument("--handler", required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args(argv)

    os.chdir(args.dir)
    sys.path.insert(0, args.dir)
    model, load_s = import_and_load(args.handler)
    setup_and_serve(model, args.socket, args.concurrency, {"load_s": load_s})
    return 0


if __name__ == "__main__":
    sys.exit(main())
