"""The data directory is private to the server's user: 0700 directories, 0600 files.

``torpor serve`` sets its umask to 077, so everything it (and the instances it starts, which run as
the same user) creates under the data directory is private; :func:`make_private` also tightens what
an older server left readable. Stale Unix sockets (a crashed instance's, or a whole server's killed
with SIGKILL) are removed: the server holds the data directory's lock, so none can be in use.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PRIVATE_UMASK = 0o077


SHARED_DIRNAME = "instances"  # what instances running as their own users read (isolation.py)


def make_private(data_dir: Path) -> None:
    """Create ``data_dir`` 0700 if needed and make everything under it private to its owner, but
    ``instances/``: root-owned read-only copies for instances that run as users of their own,
    each function's behind a folder only it may cross (``torpor.backends.local.isolation``)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    for root, dirs, files in os.walk(data_dir):
        if root == str(data_dir) and SHARED_DIRNAME in dirs:
            dirs.remove(SHARED_DIRNAME)
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), 0o700, follow_symlinks=False)
        for name in files:
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                if not os.path.islink(path) and os.stat(path).st_mode & 0o077:
                    os.chmod(path, os.stat(path).st_mode & 0o700)


def remove_sockets(run_dir: Path) -> int:
    """Remove the Unix sockets left in ``run_dir`` and its per-user folders; returns how many."""
    removed = 0
    for path in [*run_dir.glob("*.sock"), *run_dir.glob("*/*.sock")]:  # */: per-uid folders
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
    return removed


def remove_socket(address: str) -> None:
    """Remove one instance's Unix socket (its address when it is a path)."""
    if address.startswith("/"):
        with contextlib.suppress(OSError):
            os.unlink(address)
