"""A function's code, packed by the CLI and kept content-addressed by the server.

``pack_dir`` makes a deterministic ``.tar.gz`` of a folder (sorted names, zeroed times and owners,
normalised modes), so the same files always give the same sha256 ``digest``; files matching
``.torporignore`` (gitignore-like globs, one a line) and :data:`ALWAYS_IGNORED` stay out.
:class:`CodeStore` keeps each archive once, in ``DATA_DIR/code/<digest>.tar.gz``, unpacked beside it
in ``DATA_DIR/code/<digest>/``; instances on any node run from such a copy, never from the user's
folder, and no API call names a path on the server.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torpor.backends import CodeRef
from torpor.datadir import make_private

IGNORE_FILE = ".torporignore"
ALWAYS_IGNORED = (".git/", "__pycache__/", "*.pyc", ".venv/", ".torpor/", ".mypy_cache/",
                  ".pytest_cache/", ".ruff_cache/")
DEFAULT_MAX_BYTES = 512 * 1024 * 1024  # packed archive; a model this big belongs in model.path
MAX_UNPACKED_BYTES = 4 * 1024 * 1024 * 1024
MAX_FILES = 100_000
DIGEST_HEX = 64


class CodeError(Exception):
    """A folder cannot be packed, or an archive cannot be accepted; the message names why."""


@dataclass(frozen=True)
class Archive:
    data: bytes
    digest: str  # sha256 of data
    files: int
    unpacked_bytes: int


def _patterns(root: Path) -> list[str]:
    patterns = list(ALWAYS_IGNORED)
    ignore = root / IGNORE_FILE
    if ignore.is_file():
        for line in ignore.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                patterns.append(line)
    return patterns


def ignored(relative: str, is_dir: bool, patterns: list[str]) -> bool:
    """gitignore-like: ``name`` matches at any depth, ``dir/`` only folders, ``/x`` only at the top."""
    name = relative.rsplit("/", 1)[-1]
    for pattern in patterns:
        if pattern.endswith("/"):
            if not is_dir:
                continue
            pattern = pattern[:-1]
        if pattern.startswith("/"):
            if fnmatch.fnmatchcase(relative, pattern[1:]):
                return True
        elif "/" in pattern:
            if fnmatch.fnmatchcase(relative, pattern):
                return True
        elif fnmatch.fnmatchcase(name, pattern):
            return True
    return False


def _files(root: Path) -> list[tuple[str, Path]]:
    """(archive name, path) of every file to pack, sorted; symlinks inside the folder followed."""
    patterns = _patterns(root)
    found: list[tuple[str, Path]] = []
    for current, dirs, names in os.walk(root):
        rel_dir = os.path.relpath(current, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        dirs[:] = sorted(d for d in dirs if not ignored(rel_dir + d, True, patterns)
                         and not (Path(current) / d).is_symlink())
        for name in sorted(names):
            relative = rel_dir + name
            path = Path(current) / name
            if ignored(relative, False, patterns):
                continue
            if path.is_symlink():
                target = path.resolve()
                if not target.is_file() or not target.is_relative_to(root):
                    continue  # a link out of the folder is not the function's code
            elif not path.is_file():
                continue
            found.append((relative, path))
    return sorted(found)


def pack_dir(root: Path, max_bytes: int = DEFAULT_MAX_BYTES,
             progress: Callable[[int, int], None] | None = None) -> Archive:
    """A deterministic ``.tar.gz`` of ``root``; ``progress(done_bytes, total_bytes)`` as it goes."""
    root = root.resolve()
    if not root.is_dir():
        raise CodeError(f"{root} is not a folder")
    files = _files(root)
    if len(files) > MAX_FILES:
        raise CodeError(f"{root} has {len(files)} files to upload, more than {MAX_FILES}; "
                        f"list what the function does not need in {IGNORE_FILE}")
    total = sum(path.stat().st_size for _, path in files)
    if total > MAX_UNPACKED_BYTES:
        raise CodeError(f"{root} holds {total} bytes to upload, more than {MAX_UNPACKED_BYTES}; "
                        f"list what the function does not need in {IGNORE_FILE}")
    buffer = io.BytesIO()
    done = 0
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=6) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in files:
            info = tarfile.TarInfo(name)
            stat = path.stat()
            info.size = stat.st_size
            info.mode = 0o755 if stat.st_mode & 0o111 else 0o644
            info.mtime = 0
            with open(path, "rb") as f:
                tar.addfile(info, f)
            done += stat.st_size
            if progress is not None:
                progress(done, total)
            if buffer.tell() > max_bytes:
                raise CodeError(f"{root} packs to more than {max_bytes} bytes; list what the "
                                f"function does not need in {IGNORE_FILE}")
    data = buffer.getvalue()
    if len(data) > max_bytes:
        raise CodeError(f"{root} packs to {len(data)} bytes, more than {max_bytes} bytes; list what "
                        f"the function does not need in {IGNORE_FILE}")
    return Archive(data, hashlib.sha256(data).hexdigest(), len(files), total)


def valid_digest(digest: str) -> bool:
    return len(digest) == DIGEST_HEX and all(c in "0123456789abcdef" for c in digest)


def unpack(data: bytes, digest: str, dest_root: Path) -> Path:
    """Check ``data`` against ``digest`` and unpack it (once) to ``dest_root/<digest>``.

    Only regular files and folders are accepted, none outside the archive's root (Python's
    ``data`` extraction filter), at most :data:`MAX_FILES` and :data:`MAX_UNPACKED_BYTES`.
    """
    if not valid_digest(digest):
        raise CodeError(f"code digest {digest!r} is not a sha256 in lowercase hex")
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise CodeError(f"the archive's sha256 is {actual}, not {digest}")
    dest = dest_root / digest
    if dest.is_dir():
        return dest
    dest_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=dest_root))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            members = tar.getmembers()
            if len(members) > MAX_FILES:
                raise CodeError(f"the archive holds {len(members)} entries, more than {MAX_FILES}")
            size = 0
            for member in members:
                if not (member.isfile() or member.isdir()):
                    raise CodeError(f"the archive's entry {member.name!r} is not a file or folder")
                if member.name.startswith("/") or ".." in member.name.split("/"):
                    raise CodeError(f"the archive's entry {member.name!r} points outside it")
                size += member.size
            if size > MAX_UNPACKED_BYTES:
                raise CodeError(f"the archive unpacks to {size} bytes, more than {MAX_UNPACKED_BYTES}")
            tar.extractall(staging, filter="data")
        make_private(staging)  # like the whole data directory: 0700 folders, owner-only files
        try:
            staging.rename(dest)
        except OSError:  # someone else unpacked the same digest meanwhile
            if not dest.is_dir():
                raise
    except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
        raise CodeError(f"the archive cannot be unpacked: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


class CodeStore:
    """``DATA_DIR/code``: archives by digest, each unpacked once."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> CodeStore:
        return cls(data_dir / "code")

    def archive_path(self, digest: str) -> Path:
        if not valid_digest(digest):
            raise CodeError(f"code digest {digest!r} is not a sha256 in lowercase hex")
        return self.root / f"{digest}.tar.gz"

    def has(self, digest: str) -> bool:
        return valid_digest(digest) and (self.root / digest).is_dir() and \
            self.archive_path(digest).is_file()

    def put(self, data: bytes, digest: str) -> CodeRef:
        path = unpack(data, digest, self.root)
        archive = self.archive_path(digest)
        if not archive.is_file():
            partial = archive.with_suffix(".partial")
            partial.write_bytes(data)
            partial.rename(archive)
        return CodeRef(digest, path)

    def get(self, digest: str) -> CodeRef | None:
        return CodeRef(digest, self.root / digest) if self.has(digest) else None

    def archive(self, digest: str) -> bytes:
        """The packed archive (what a remote node fetches)."""
        return self.archive_path(digest).read_bytes()

    def put_dir(self, folder: Path) -> CodeRef:
        """Pack a folder on this machine and keep it (``torpor serve --deploy``)."""
        archive = pack_dir(folder)
        return self.put(archive.data, archive.digest)
