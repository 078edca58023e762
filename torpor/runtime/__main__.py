"""``python -m torpor.runtime``: one instance hosting a user's Model on a Unix socket (plain spawn).

Exit codes: 3 the handler could not be imported or is not a torpor.Model, 4 load()/setup() failed.
Tracebacks go to stderr, which torpor keeps in the instance's log and shows when a cold start fails.
"""

from __future__ import annotations

import sys

from torpor.runtime.instance import import_and_load, parse_args, setup_and_serve


def main(argv: list[str] | None = None) -> int:
    args = parse_args("python -m torpor.runtime", "--socket", argv)
    model, load_s = import_and_load(args.handler)
    setup_and_serve(model, args.socket, args.concurrency, {"load_s": load_s})
    return 0


if __name__ == "__main__":
    sys.exit(main())
