"""Code and model files travel to Ray nodes as tar archives through Ray's object store.

The server packs a revision's folder once (``pack_dir``); every node unpacks it once into its own
cache under the revision's content digest (``unpack``), so a node never reads the server's disk and
a second instance on the node finds the code already there. The lead's ``torpor/code.py`` has the
same two functions; this module is the Ray backend's copy until the two are reconciled.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path


def pack_dir(path: Path) -> tuple[bytes, str]:
    """A gzip'ed tar of ``path`` (a folder's contents, or one file under its own name) and the
    sha256 of those bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        if path.is_dir():
            for child in sorted(path.iterdir()):
                if child.name in ("__pycache__", ".git"):
                    continue
                tar.add(child, arcname=child.name, filter=_skip_caches)
        else:
            tar.add(path, arcname=path.name)
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def _skip_caches(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "__pycache__" in Path(info.name).parts else info


def unpack(data: bytes, digest: str, dest_root: Path) -> Path:
    """Unpack into ``dest_root/digest`` (once: an existing copy is reused) and return that folder.

    Unpacked beside its final place and renamed into it, so a half-written copy is never used.
    """
    dest = dest_root / digest
    if dest.is_dir():
        return dest
    dest_root.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=dest_root))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            tar.extractall(partial, filter="data")
        os.rename(partial, dest)
    except OSError:
        if not dest.is_dir():  # not a lost race with another unpacker
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return dest
