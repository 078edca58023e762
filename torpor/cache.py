"""The model cache: model files copied once, at deploy, into ``<data_dir>/cache`` keyed by content.

Cold starts read the model from here, so no cold start ever downloads or depends on the user's folder
still existing, and ten functions deploying the same weights store them once.

Layout::

    cache/objects/<digest>/manifest.json      what the entry holds (hash, sizes, files, created_at)
    cache/objects/<digest>/content/<name>     a single file, under its original name
    cache/objects/<digest>/content/...        or a whole directory tree
    cache/tmp/<pid>-<token>-<what>/           entries being built (or removed); never read

An entry is built in ``tmp/`` and published with one ``os.rename``, so ``objects/<digest>`` either does
not exist or is complete: a crash leaves only a ``tmp/`` folder, which a later ``put`` removes once the
process that made it is gone. Two puts of the same content race harmlessly: the first rename wins and
the loser throws its copy away.

The digest (scheme ``torpor-cache-v1``) hashes a canonical walk, not a path::

    piece_i   = sha256(bytes [i*64 MiB, (i+1)*64 MiB) of a file)
    file_hash = sha256(piece_0 || piece_1 || ...)              (raw 32-byte digests; sha256(b"") if empty)
    digest    = sha256("torpor-cache-v1\\n" + kind + "\\n"
                       + for each file, sorted by relative POSIX path:
                           relpath + "\\0" + decimal size + "\\0" + hex(file_hash) + "\\n")

``kind`` is ``file`` or ``tree``. A single file's relpath is its name (loaders often go by the name, and
the cached copy keeps it); a tree's relpaths start below its root, so the folder's own name and location
do not count. Hashing in 64 MiB pieces lets a thread pool hash one large file on every core: SHA-256
runs at about 2 GB/s on one core, so a 10 GB model would otherwise cost 5 s on every deploy.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torpor.clock import Clock, SystemClock
from torpor.errors import SpecError

CACHE_DIRNAME = "cache"  # <data_dir>/cache
HASH_SCHEME = "torpor-cache-v1"
HASH_PIECE_BYTES = 64 << 20  # part of the scheme: changing it changes every digest
READ_BYTES = 4 << 20  # one pread; large enough that syscalls cost nothing next to SHA-256
PROGRESS_MIN_BYTES = 64 << 20  # smaller models copy in well under a second; no bar
MAX_HASH_THREADS = 8
MANIFEST = "manifest.json"
CONTENT = "content"

_HEX = frozenset("0123456789abcdef")
_local = threading.local()


@dataclass(frozen=True)
class CachedModel:
    """A cache entry. ``path`` is what an instance opens: the file (original name kept) or the folder.

    ``hit`` is True when the content was already cached before this call (always True from ``get``).
    """

    digest: str
    path: Path
    size_bytes: int
    files: int
    hit: bool


@dataclass(frozen=True)
class _SourceFile:
    relpath: str
    path: Path
    size_bytes: int


@dataclass(frozen=True)
class _Walk:
    kind: str  # "file" or "tree"
    files: list[_SourceFile]

    @property
    def size_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)


class ModelCache:
    """Content-addressed model files under ``root`` (normally ``<data_dir>/cache``)."""

    def __init__(
        self,
        root: Path,
        *,
        clock: Clock | None = None,
        progress_min_bytes: int = PROGRESS_MIN_BYTES,
        hash_threads: int | None = None,
    ) -> None:
        self.root = root
        self.clock: Clock = clock or SystemClock()
        self.progress_min_bytes = progress_min_bytes
        self.hash_threads = hash_threads or _default_threads()

    @classmethod
    def in_data_dir(cls, data_dir: Path, **kwargs: Any) -> ModelCache:
        return cls(data_dir / CACHE_DIRNAME, **kwargs)

    @property
    def objects_dir(self) -> Path:
        return self.root / "objects"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def put(self, source: Path, progress: bool = False) -> CachedModel:
        """Cache a file or folder; content already cached is hashed but not copied again.

        A miss reads the source twice: once to learn the key, once to copy it while hashing again, so
        an entry always holds exactly the bytes its digest names, even if the source changes mid-put.
        """
        walk = _walk(source)
        with _progress(progress and walk.size_bytes >= self.progress_min_bytes) as bar:
            hashed = _hash_files(walk, None, bar("hashing", walk.size_bytes), self.hash_threads)
            digest = _digest(walk, hashed)
            existing = self.get(digest)
            if existing is not None:
                return existing
            self.clean_tmp()
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            self.objects_dir.mkdir(parents=True, exist_ok=True)
            building = self.tmp_dir / f"{os.getpid()}-{secrets.token_hex(4)}-{digest}"
            try:
                self._build(building, walk, digest, bar("copying", walk.size_bytes))
                _publish(building, self.objects_dir / digest)
            finally:
                _rmtree(building)  # gone already unless the publish lost a race or failed
        entry = self.get(digest)
        assert entry is not None, f"cache entry {digest} vanished right after it was published"
        # hit=False even when a concurrent put published first: this call did copy the bytes
        return CachedModel(entry.digest, entry.path, entry.size_bytes, entry.files, hit=False)

    def get(self, digest: str) -> CachedModel | None:
        """The complete entry for ``digest``, or None (a folder without a readable manifest is not one)."""
        manifest = self._manifest(digest)
        if manifest is None:
            return None
        content = self._entry_dir(digest) / CONTENT
        path = content / manifest["files"][0]["path"] if manifest["kind"] == "file" else content
        return CachedModel(digest, path, manifest["size_bytes"], len(manifest["files"]), hit=True)

    def entries(self) -> list[CachedModel]:
        """Every complete entry, sorted by digest."""
        if not self.objects_dir.is_dir():
            return []
        found = (self.get(p.name) for p in sorted(self.objects_dir.iterdir()) if _is_digest(p.name))
        return [entry for entry in found if entry is not None]

    def remove(self, digest: str) -> bool:
        """Delete an entry; False if there was none. Instances that still have it open keep reading."""
        entry_dir = self._entry_dir(digest)
        if not entry_dir.exists():
            return False
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        doomed = self.tmp_dir / f"{os.getpid()}-{secrets.token_hex(4)}-removing"
        try:
            entry_dir.rename(doomed)  # disappears from get() atomically, then is deleted at leisure
        except FileNotFoundError:
            return False
        _rmtree(doomed)
        return True

    def verify(self, digest: str) -> bool:
        """Re-hash an entry's files; False if it is missing, incomplete or its bytes changed."""
        manifest = self._manifest(digest)
        if manifest is None:
            return False
        content = self._entry_dir(digest) / CONTENT
        try:
            walk = _walk(content / manifest["files"][0]["path"] if manifest["kind"] == "file" else content)
            listed = [(f["path"], f["size_bytes"]) for f in manifest["files"]]
            if walk.kind != manifest["kind"] or [(f.relpath, f.size_bytes) for f in walk.files] != listed:
                return False
            return _digest(walk, _hash_files(walk, None, _no_progress, self.hash_threads)) == digest
        except SpecError:
            return False

    def clean_tmp(self) -> int:
        """Remove ``tmp/`` folders whose process is gone (a crash mid-put); returns how many."""
        if not self.tmp_dir.is_dir():
            return 0
        removed = 0
        for leftover in self.tmp_dir.iterdir():
            pid_text = leftover.name.split("-", 1)[0]
            if pid_text.isdigit() and _alive(int(pid_text)):
                continue
            _rmtree(leftover)
            removed += 1
        return removed

    def _entry_dir(self, digest: str) -> Path:
        if not _is_digest(digest):
            raise ValueError(f"not a cache digest (64 lowercase hex characters): {digest!r}")
        return self.objects_dir / digest

    def _manifest(self, digest: str) -> dict[str, Any] | None:
        path = self._entry_dir(digest) / MANIFEST
        try:
            manifest: dict[str, Any] = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        ok = manifest.get("digest") == digest and manifest.get("files") and manifest.get("kind")
        return manifest if ok else None

    def _build(self, building: Path, walk: _Walk, digest: str, advance: Callable[[int], None]) -> None:
        content = building / CONTENT
        targets = [content / f.relpath for f in walk.files]
        created = {building}
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            created.update(parent for parent in target.parents if parent.is_relative_to(building))
        if _digest(walk, _hash_files(walk, targets, advance, self.hash_threads)) != digest:
            raise SpecError(str(walk.files[0].path), [
                f"model.path: {walk.files[0].path} changed while it was being cached; deploy again"
            ])
        manifest = {
            "digest": digest,
            "scheme": HASH_SCHEME,
            "kind": walk.kind,
            "size_bytes": walk.size_bytes,
            "files": [{"path": f.relpath, "size_bytes": f.size_bytes} for f in walk.files],
            "created_at": self.clock.now(),
        }
        _write_synced(building / MANIFEST, json.dumps(manifest, indent=1).encode())
        for directory in created:
            _fsync_dir(directory)


def cache_root_of(path: Path) -> Path | None:
    """The cache root an entry's content path lies in (``<root>/objects/<digest>/content/...``), or None.

    Lets an instance, given ``TORPOR_MODEL_PATH``, keep what it derives from the model (a converted
    form) in the same cache.
    """
    for parent in path.parents:
        entry = parent.parent
        if parent.name == CONTENT and entry.parent.name == "objects" and _is_digest(entry.name):
            return entry.parent.parent
    return None


def content_digest(source: Path, hash_threads: int | None = None) -> str:
    """The cache key ``put`` would give ``source``, without copying anything."""
    walk = _walk(source)
    return _digest(walk, _hash_files(walk, None, _no_progress, hash_threads or _default_threads()))


def _default_threads() -> int:
    return max(1, min(MAX_HASH_THREADS, os.cpu_count() or 1))


def _hash_files(
    walk: _Walk, targets: list[Path] | None, advance: Callable[[int], None], threads: int
) -> list[bytes]:
    """Each file's hash; with ``targets``, the bytes hashed are also written there (a verified copy)."""
    fds: list[int] = []
    out: list[int] = []
    pool = ThreadPoolExecutor(threads, thread_name_prefix="torpor-hash")
    try:
        fds.extend(_open_source(f) for f in walk.files)
        if targets is not None:
            out.extend(_create(t, f.size_bytes) for t, f in zip(targets, walk.files, strict=True))
        pieces = [
            (i, start, min(start + HASH_PIECE_BYTES, f.size_bytes))
            for i, f in enumerate(walk.files)
            for start in range(0, f.size_bytes, HASH_PIECE_BYTES)
        ]

        def hash_piece(piece: tuple[int, int, int]) -> tuple[int, bytes]:
            i, start, end = piece
            return i, _hash_range(fds[i], out[i] if out else None, start, end, walk.files[i], advance)

        per_file: list[list[bytes]] = [[] for _ in walk.files]
        for i, piece_hash in pool.map(hash_piece, pieces):  # map yields in piece order
            per_file[i].append(piece_hash)
        for dst in out:
            os.fsync(dst)
            os.fchmod(dst, 0o444)  # every instance shares these bytes; none may write them
        return [hashlib.sha256(b"".join(hashes)).digest() for hashes in per_file]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for fd in fds + out:
            os.close(fd)


def _digest(walk: _Walk, file_hashes: list[bytes]) -> str:
    h = hashlib.sha256(f"{HASH_SCHEME}\n{walk.kind}\n".encode())
    for f, file_hash in zip(walk.files, file_hashes, strict=True):
        h.update(_fs_bytes(f.relpath) + b"\0" + str(f.size_bytes).encode() + b"\0")
        h.update(file_hash.hex().encode() + b"\n")
    return h.hexdigest()


def _walk(source: Path) -> _Walk:
    """The regular files under ``source`` (symlinks followed, as in a Hugging Face snapshot)."""
    st = _stat(source)
    if stat.S_ISREG(st.st_mode):
        return _Walk("file", [_SourceFile(source.name, source, st.st_size)])
    if not stat.S_ISDIR(st.st_mode):
        raise _unreadable(source, "is not a regular file or a directory")
    files: list[_SourceFile] = []
    seen_dirs = {(st.st_dev, st.st_ino)}

    def fail(exc: OSError) -> None:
        raise _unreadable(Path(exc.filename or source), exc.strerror or str(exc))

    for dirpath, dirnames, filenames in os.walk(source, onerror=fail, followlinks=True):
        for name in list(dirnames):
            dir_st = _stat(Path(dirpath, name))
            if (dir_st.st_dev, dir_st.st_ino) in seen_dirs:
                raise _unreadable(Path(dirpath, name), "is a symlink loop")
            seen_dirs.add((dir_st.st_dev, dir_st.st_ino))
        for name in filenames:
            path = Path(dirpath, name)
            file_st = _stat(path)
            if not stat.S_ISREG(file_st.st_mode):
                raise _unreadable(path, "is not a regular file")
            files.append(_SourceFile(path.relative_to(source).as_posix(), path, file_st.st_size))
    if not files:
        raise _unreadable(source, "holds no files")
    files.sort(key=lambda f: f.relpath)
    return _Walk("tree", files)


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise SpecError(str(path), [f"model.path: {path} does not exist"]) from None
    except OSError as exc:
        raise _unreadable(path, exc.strerror or str(exc)) from None


def _unreadable(path: Path, why: str) -> SpecError:
    return SpecError(str(path), [f"model.path: cannot read {path}: {why}"])


def _open_source(f: _SourceFile) -> int:
    try:
        fd = os.open(f.path, os.O_RDONLY)
    except OSError as exc:
        raise _unreadable(f.path, exc.strerror or str(exc)) from None
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    return fd


def _create(path: Path, size_bytes: int) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.ftruncate(fd, size_bytes)  # pieces are written in parallel at their offsets
    return fd


def _hash_range(
    fd: int, dst: int | None, start: int, end: int, f: _SourceFile, advance: Callable[[int], None]
) -> bytes:
    """SHA-256 of bytes [start, end) of ``fd``, copied to ``dst`` on the way (hashlib drops the GIL)."""
    buffer = getattr(_local, "buffer", None)
    if buffer is None:
        buffer = _local.buffer = memoryview(bytearray(READ_BYTES))
    h = hashlib.sha256()
    offset = start
    while offset < end:
        want = buffer[: min(READ_BYTES, end - offset)]
        try:
            n = os.preadv(fd, [want], offset)
        except OSError as exc:
            raise _unreadable(f.path, exc.strerror or str(exc)) from None
        if n == 0:
            raise SpecError(str(f.path), [f"model.path: {f.path} shrank while it was being read"])
        h.update(want[:n])
        if dst is not None:
            written = 0
            while written < n:
                written += os.pwrite(dst, want[written:n], offset + written)
        offset += n
        advance(n)
    return h.digest()


def _publish(building: Path, entry_dir: Path) -> bool:
    """Rename a finished entry into place; False if an identical one got there first."""
    if entry_dir.exists() and not (entry_dir / MANIFEST).is_file():
        _rmtree(entry_dir)  # not ours to have made (rename never leaves this), but it blocks the key
    try:
        building.rename(entry_dir)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    _fsync_dir(entry_dir.parent)
    return True


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new name durable (a power cut must not undo a published entry)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _is_digest(text: str) -> bool:
    return len(text) == 64 and set(text) <= _HEX


def _fs_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")  # undecodable file names round-trip


def _no_progress(n_bytes: int) -> None:
    pass


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Yields ``bar(description, total_bytes) -> advance``; a Rich bar on stderr only when enabled."""
    if not enabled:
        yield lambda description, total_bytes: _no_progress
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:

        def bar(description: str, total_bytes: int) -> Callable[[int], None]:
            task = progress.add_task(description, total=total_bytes)
            return lambda n_bytes: progress.update(task, advance=n_bytes)

        yield bar
