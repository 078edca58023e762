"""Code and models kept in a shared store, so that a server on another machine can run them.

On a shared store (PostgreSQL, :attr:`torpor.store.Store.shared`) every uploaded code archive and
every model cache entry is also written to the store's ``blobs`` table when it is first kept; a
server whose data directory lacks one (a new machine after the old one was lost) brings it back on
demand, checked against its digest: the archive unpacked into ``DATA_DIR/code``, the model put
into the model cache again. On SQLite nothing is copied: the database lives in the data directory,
and losing one loses the other.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import shutil
import tarfile
import tempfile
from pathlib import Path

from torpor.backends import CodeRef
from torpor.cache import MANIFEST, CachedModel, ModelCache
from torpor.code import CodeStore
from torpor.store import Store, blobs

log = logging.getLogger(__name__)


class SharedFileError(Exception):
    """A blob came back but does not hold what its digest names."""


class SharedFiles:
    def __init__(self, store: Store, code: CodeStore, cache: ModelCache) -> None:
        self.store = store
        self.code = code
        self.cache = cache

    @property
    def enabled(self) -> bool:
        return self.store.shared

    # keeping --------------------------------------------------------------------------------------

    def keep_code(self, digest: str) -> bool:
        """Copy an archive this server holds into the store (once); True if it was copied now."""
        if not self.enabled:
            return False
        with open(self.code.archive_path(digest), "rb") as source:
            return blobs.put(self.store, "code", digest, source)

    def keep_model(self, digest: str) -> bool:
        """Copy a model cache entry into the store (once), as a tar of its manifest and content."""
        if not self.enabled or blobs.has(self.store, "model", digest):
            return False
        entry = self.cache.objects_dir / digest
        if not (entry / MANIFEST).is_file():
            raise SharedFileError(f"model {digest} is not in the model cache")
        self.cache.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self.cache.root) as packed:
            with tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.add(entry / MANIFEST, arcname=MANIFEST)
                tar.add(entry / "content", arcname="content")
            packed.seek(0)
            copied = blobs.put(self.store, "model", digest, packed)
        if copied:
            log.info("model %s copied into the shared store", digest[:12])
        return copied

    # bringing back --------------------------------------------------------------------------------

    def code_ref(self, digest: str) -> CodeRef | None:
        """The unpacked code for ``digest``: from the data directory, else from the store."""
        ref = self.code.get(digest)
        if ref is not None or not self.enabled:
            return ref
        buffer = io.BytesIO()
        if blobs.read(self.store, "code", digest, buffer) is None:
            return None
        ref = self.code.put(buffer.getvalue(), digest)  # checks the sha256
        log.info("code %s brought back from the shared store", digest[:12])
        return ref

    def model(self, digest: str) -> CachedModel | None:
        """The cached model for ``digest``: from the model cache, else from the store."""
        cached = self.cache.get(digest)
        if cached is not None or not self.enabled:
            return cached
        self.cache.tmp_dir.mkdir(parents=True, exist_ok=True)
        # named like the cache's own builds, so that a crash leaves nothing clean_tmp keeps
        work = self.cache.tmp_dir / f"{os.getpid()}-{secrets.token_hex(4)}-fetch"
        try:
            work.mkdir()
            with open(work / "blob.tar", "w+b") as packed:
                if blobs.read(self.store, "model", digest, packed) is None:
                    return None
                packed.seek(0)
                try:
                    with tarfile.open(fileobj=packed, mode="r") as tar:
                        tar.extractall(work / "entry", filter="data")
                    manifest = json.loads((work / "entry" / MANIFEST).read_bytes())
                    content = work / "entry" / "content"
                    source = (content / manifest["files"][0]["path"] if manifest["kind"] == "file"
                              else content)
                except (tarfile.TarError, OSError, ValueError, KeyError, IndexError) as exc:
                    raise SharedFileError(f"the store's copy of model {digest} cannot be "
                                          f"unpacked: {exc}") from None
            cached = self.cache.put(Path(source))
            if cached.digest != digest:
                raise SharedFileError(f"the store's copy of model {digest} holds model "
                                      f"{cached.digest}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.info("model %s brought back from the shared store", digest[:12])
        return cached
