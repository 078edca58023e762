"""``python -m torpor.runtime.check --handler module:Class --dir DIR``: can this handler start?

Run by the server at deploy in a short-lived process (the server never imports user code itself):
imports the module the way an instance does and checks that the name is a :class:`torpor.Model`
subclass. ``TORPOR_DEPLOY_CHECK=1`` is set, so a module can skip work that only an instance needs.
Exit 0 when it can; 3 with the error's last line on stderr when it cannot.
"""

from __future__ import annotations

import sys
import traceback

from torpor.runtime.instance import EXIT_IMPORT, load_model_class, parse_args


def main(argv: list[str] | None = None) -> int:
    args = parse_args("python -m torpor.runtime.check", "--socket", argv)
    try:
        load_model_class(args.handler)
    except BaseException as exc:  # SyntaxError, SystemExit from a module, ...
        if isinstance(exc, KeyboardInterrupt):
            raise
        traceback.print_exc()
        sys.stderr.write(f"{type(exc).__name__}: {exc}"[:2000].replace("\n", " ") + "\n")
        return EXIT_IMPORT
    return 0


if __name__ == "__main__":
    sys.exit(main())
