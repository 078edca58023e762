"""How a revision's files reach Ray nodes: archives in Ray's object store, named by their sha256.

Code is the archive the server already keeps (``DATA_DIR/code/<digest>.tar.gz``, see
:mod:`torpor.code`), shipped as is; model files (a folder or a single file) are packed here. A node
unpacks each archive once with :func:`torpor.code.unpack`, which checks the digest.
"""

from __future__ import annotations

import hashlib
import io
import tarfile

from torpor.backends import CodeRef
from torpor.code import MAX_UNPACKED_BYTES, pack_dir


def code_archive(code: CodeRef) -> tuple[bytes, str]:
    """The stored archive of ``code`` when the server has one, else a fresh pack of its folder."""
    stored = code.path.parent / f"{code.digest}.tar.gz"
    if stored.is_file():
        return stored.read_bytes(), code.digest
    archive = pack_dir(code.path)
    return archive.data, archive.digest


def model_archive(model: CodeRef) -> tuple[bytes, str, str]:
    """Model files packed for shipping: the bytes, their sha256, and the name to use inside the
    unpacked folder ('' for a folder; a single file keeps its name)."""
    if model.path.is_dir():
        archive = pack_dir(model.path, max_bytes=MAX_UNPACKED_BYTES)
        return archive.data, archive.digest, ""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        tar.add(model.path, arcname=model.path.name)
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest(), model.path.name
