"""The model cache: content addressing, hit without copying, trees, crash safety, and spec errors.

Digests are checked against ``scheme_digest``, an independent few-line implementation of the
``torpor-cache-v1`` scheme in cache.py's docstring, and one literal pins the scheme itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import torpor.cache
from torpor.cache import CACHE_DIRNAME, CachedModel, ModelCache, content_digest
from torpor.clock import FakeClock
from torpor.errors import SpecError

PIECE = 64 << 20
HELLO_DIGEST = "07579ee8b532d08d125d3a42ac989b5d60551fda1b8f5d101f3528775f068765"  # model.bin = b"hello\n"


def scheme_digest(kind: str, files: dict[str, bytes], piece_bytes: int = PIECE) -> str:
    """torpor-cache-v1, written out from the docstring: pieces → file hash → sorted file lines."""
    top = hashlib.sha256(f"torpor-cache-v1\n{kind}\n".encode())
    for relpath in sorted(files):
        data = files[relpath]
        pieces = b"".join(hashlib.sha256(data[i : i + piece_bytes]).digest()
                          for i in range(0, len(data), piece_bytes))
        top.update(f"{relpath}\0{len(data)}\0{hashlib.sha256(pieces).hexdigest()}\n".encode())
    return top.hexdigest()


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` (relative path → bytes) under ``root`` and return ``root``."""
    for relpath, data in files.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def make_cache(tmp_path: Path, **overrides: object) -> ModelCache:
    """A cache in ``tmp_path/data/cache`` on a FakeClock at 1234.5."""
    options: dict[str, object] = {"clock": FakeClock(1234.5), **overrides}
    return ModelCache.in_data_dir(tmp_path / "data", **options)


TREE = {"config.json": b'{"dim": 4}', "weights/part-0.bin": b"\x00\x01\x02" * 100,
        "weights/deep/part-1.bin": b"\xff" * 7, "tokenizer/vocab.txt": b"a\nb\n"}


class TestDigest:
    def test_single_file_matches_the_scheme(self, tmp_path: Path) -> None:
        """A file's digest is the scheme computed independently, and the pinned literal."""
        source = make_tree(tmp_path / "src", {"model.bin": b"hello\n"}) / "model.bin"
        entry = make_cache(tmp_path).put(source)
        assert entry.digest == scheme_digest("file", {"model.bin": b"hello\n"}) == HELLO_DIGEST

    def test_tree_matches_the_scheme(self, tmp_path: Path) -> None:
        """A tree hashes its files by path relative to its root, in sorted order."""
        source = make_tree(tmp_path / "src", TREE)
        assert content_digest(source) == scheme_digest("tree", TREE)

    def test_multi_piece_files_hash_piece_by_piece(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Pieces are hashed in order even when threads finish them out of order (4-byte pieces here)."""
        monkeypatch.setattr(torpor.cache, "HASH_PIECE_BYTES", 4)
        files = {"a.bin": bytes(range(250)), "b.bin": b"xyz", "empty.bin": b""}
        source = make_tree(tmp_path / "src", files)
        assert content_digest(source, hash_threads=4) == scheme_digest("tree", files, piece_bytes=4)
        assert content_digest(source) != scheme_digest("tree", files)  # the piece size is in the digest

    def test_same_content_elsewhere_same_digest(self, tmp_path: Path) -> None:
        """Where the content lives (and a tree's own folder name) does not count."""
        one = make_tree(tmp_path / "one" / "model", TREE)
        two = make_tree(tmp_path / "elsewhere" / "other-name", TREE)
        assert content_digest(one) == content_digest(two)
        assert content_digest(one / "config.json") == content_digest(two / "config.json")

    def test_one_changed_byte_changes_the_digest(self, tmp_path: Path) -> None:
        """Flipping one byte of one nested file gives another digest."""
        changed = {**TREE, "weights/part-0.bin": b"\x00\x01\x03" + b"\x00\x01\x02" * 99}
        assert content_digest(make_tree(tmp_path / "a", TREE)) != content_digest(
            make_tree(tmp_path / "b", changed))

    def test_renamed_file_inside_a_tree_changes_the_digest(self, tmp_path: Path) -> None:
        """The same bytes under another relative path are other content."""
        renamed = {("config2.json" if k == "config.json" else k): v for k, v in TREE.items()}
        assert content_digest(make_tree(tmp_path / "a", TREE)) != content_digest(
            make_tree(tmp_path / "b", renamed))

    def test_file_and_folder_holding_it_differ(self, tmp_path: Path) -> None:
        """A file and a folder holding just that file are cached differently, so they hash differently."""
        folder = make_tree(tmp_path / "m", {"model.bin": b"hello\n"})
        assert content_digest(folder) == scheme_digest("tree", {"model.bin": b"hello\n"})
        assert content_digest(folder) != content_digest(folder / "model.bin")


class TestPut:
    def test_miss_copies_and_keeps_the_file_name(self, tmp_path: Path) -> None:
        """A single file lands under its own name with its bytes, read-only, with an exact manifest."""
        source = make_tree(tmp_path / "src", {"model.safetensors": b"weights!"}) / "model.safetensors"
        cache = make_cache(tmp_path)
        entry = cache.put(source)
        digest = scheme_digest("file", {"model.safetensors": b"weights!"})
        entry_dir = tmp_path / "data" / CACHE_DIRNAME / "objects" / digest
        assert entry == CachedModel(digest, entry_dir / "content" / "model.safetensors", 8, 1, hit=False)
        assert entry.path.read_bytes() == b"weights!"
        assert entry.path.stat().st_mode & 0o777 == 0o444
        assert json.loads((entry_dir / "manifest.json").read_text()) == {
            "digest": digest, "scheme": "torpor-cache-v1", "kind": "file", "size_bytes": 8,
            "files": [{"path": "model.safetensors", "size_bytes": 8}], "created_at": 1234.5,
        }

    def test_second_put_is_a_hit_and_copies_nothing(self, tmp_path: Path) -> None:
        """Same content again: hit=True, same path, the cached file untouched (inode and mtime)."""
        source = make_tree(tmp_path / "src", TREE)
        cache = make_cache(tmp_path)
        first = cache.put(source)
        before = (first.path / "config.json").stat()
        second = cache.put(make_tree(tmp_path / "copy", TREE))
        after = (second.path / "config.json").stat()
        assert (first.hit, second.hit) == (False, True)
        assert second == CachedModel(first.digest, first.path, first.size_bytes, first.files, hit=True)
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert list(cache.tmp_dir.iterdir()) == []

    def test_nested_tree(self, tmp_path: Path) -> None:
        """A tree keeps every nested relative path and byte; size and file count are exact."""
        entry = make_cache(tmp_path).put(make_tree(tmp_path / "src", TREE))
        cached = {p.relative_to(entry.path).as_posix(): p.read_bytes()
                  for p in entry.path.rglob("*") if p.is_file()}
        assert cached == TREE
        assert (entry.files, entry.size_bytes) == (4, 10 + 300 + 7 + 4)
        assert entry.path.name == "content"

    def test_survives_the_original_being_deleted(self, tmp_path: Path) -> None:
        """After the user's folder is gone the cached copy still reads and verifies."""
        source = make_tree(tmp_path / "src", TREE)
        cache = make_cache(tmp_path)
        entry = cache.put(source)
        shutil.rmtree(source)
        assert (entry.path / "weights/deep/part-1.bin").read_bytes() == b"\xff" * 7
        assert cache.verify(entry.digest) is True
        assert cache.get(entry.digest) == CachedModel(entry.digest, entry.path, 321, 4, hit=True)

    def test_follows_symlinks_like_a_hugging_face_snapshot(self, tmp_path: Path) -> None:
        """A snapshot of symlinks into blobs/ is cached as the files the links point to."""
        blobs = make_tree(tmp_path / "blobs", {"abc": b"config", "def": b"weights"})
        snapshot = tmp_path / "snapshot"
        snapshot.mkdir()
        (snapshot / "config.json").symlink_to(blobs / "abc")
        (snapshot / "model.bin").symlink_to(blobs / "def")
        entry = make_cache(tmp_path).put(snapshot)
        assert entry.digest == scheme_digest("tree", {"config.json": b"config", "model.bin": b"weights"})
        assert not (entry.path / "model.bin").is_symlink()
        assert (entry.path / "model.bin").read_bytes() == b"weights"

    def test_concurrent_puts_of_the_same_content(self, tmp_path: Path) -> None:
        """Eight threads racing to cache one tree end with one complete entry and no leftovers."""
        source = make_tree(tmp_path / "src", TREE)
        cache = make_cache(tmp_path)
        start = threading.Barrier(8)
        results: list[CachedModel] = []

        def put() -> None:
            start.wait()
            results.append(cache.put(source))

        threads = [threading.Thread(target=put) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert {r.digest for r in results} == {scheme_digest("tree", TREE)}
        assert {r.path for r in results} == {cache.objects_dir / scheme_digest("tree", TREE) / "content"}
        assert [e.digest for e in cache.entries()] == [scheme_digest("tree", TREE)]
        assert list(cache.tmp_dir.iterdir()) == []
        assert cache.verify(results[0].digest) is True

    def test_progress_bar_only_when_asked_and_large(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """progress=True above the size threshold draws a bar on stderr; below it, or without it, nothing."""
        source = make_tree(tmp_path / "src", TREE)
        make_cache(tmp_path, progress_min_bytes=322).put(source, progress=True)  # 321 bytes: below
        make_cache(tmp_path / "b", progress_min_bytes=1).put(source, progress=False)
        assert capsys.readouterr().err == ""
        make_cache(tmp_path / "c", progress_min_bytes=1).put(source, progress=True)
        err = capsys.readouterr().err
        assert "hashing" in err and "copying" in err


class TestEntries:
    def test_get_entries_remove(self, tmp_path: Path) -> None:
        """entries() lists complete entries by digest; remove() deletes one and says whether it existed."""
        cache = make_cache(tmp_path)
        a = cache.put(make_tree(tmp_path / "a", {"x.bin": b"1"}) / "x.bin")
        b = cache.put(make_tree(tmp_path / "b", TREE))
        assert [e.digest for e in cache.entries()] == sorted([a.digest, b.digest])
        assert cache.remove(a.digest) is True
        assert cache.get(a.digest) is None
        assert cache.remove(a.digest) is False
        assert [e.digest for e in cache.entries()] == [b.digest]
        assert not (cache.objects_dir / a.digest).exists()

    def test_verify_detects_a_changed_byte(self, tmp_path: Path) -> None:
        """verify re-hashes: one flipped byte in the cache makes it False; unknown digests are False."""
        cache = make_cache(tmp_path)
        entry = cache.put(make_tree(tmp_path / "src", TREE))
        victim = entry.path / "weights/part-0.bin"
        victim.chmod(0o644)
        victim.write_bytes(b"\x09" + victim.read_bytes()[1:])
        assert cache.verify(entry.digest) is False
        assert cache.verify("0" * 64) is False

    def test_verify_detects_an_extra_file(self, tmp_path: Path) -> None:
        """A file added to a cached tree is not what the manifest lists."""
        cache = make_cache(tmp_path)
        entry = cache.put(make_tree(tmp_path / "src", TREE))
        (entry.path / "extra.txt").write_bytes(b"")
        assert cache.verify(entry.digest) is False

    def test_malformed_digest_is_refused(self, tmp_path: Path) -> None:
        """A digest that is not 64 hex characters cannot name a path outside the cache."""
        with pytest.raises(ValueError, match="not a cache digest"):
            make_cache(tmp_path).get("../../etc")


CRASH_BEFORE_PUBLISH = """
import os, signal, sys
from pathlib import Path
import torpor.cache
torpor.cache._publish = lambda building, entry_dir: os.kill(os.getpid(), signal.SIGKILL)
torpor.cache.ModelCache(Path(sys.argv[1])).put(Path(sys.argv[2]))
"""


class TestCrashSafety:
    def test_killed_put_leaves_nothing_get_returns_and_is_cleaned(self, tmp_path: Path) -> None:
        """SIGKILL after the copy, before the rename: the half entry is invisible, then cleaned up."""
        source = make_tree(tmp_path / "src", TREE)
        cache = make_cache(tmp_path)
        proc = subprocess.Popen([sys.executable, "-c", CRASH_BEFORE_PUBLISH, str(cache.root), str(source)])
        assert proc.wait(timeout=60) == -signal.SIGKILL
        (leftover,) = cache.tmp_dir.iterdir()
        assert leftover.name.startswith(f"{proc.pid}-")
        assert (leftover / "content" / "config.json").read_bytes() == TREE["config.json"]
        digest = scheme_digest("tree", TREE)
        assert cache.get(digest) is None
        assert cache.entries() == []
        entry = cache.put(source)
        assert (entry.digest, entry.hit) == (digest, False)
        assert list(cache.tmp_dir.iterdir()) == []
        assert cache.verify(digest) is True

    def test_failed_put_removes_its_temp_dir(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """An error while publishing leaves neither a temp dir nor an entry."""

        def fail(building: Path, entry_dir: Path) -> bool:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(torpor.cache, "_publish", fail)
        cache = make_cache(tmp_path)
        with pytest.raises(OSError, match="Input/output error"):
            cache.put(make_tree(tmp_path / "src", TREE))
        assert list(cache.tmp_dir.iterdir()) == []
        assert cache.entries() == []

    def test_incomplete_entry_folder_is_not_an_entry(self, tmp_path: Path) -> None:
        """objects/<digest> without a manifest is ignored by get() and replaced by the next put."""
        digest = scheme_digest("tree", TREE)
        cache = make_cache(tmp_path)
        make_tree(cache.objects_dir / digest / "content", {"config.json": b"half"})
        assert cache.get(digest) is None
        assert cache.verify(digest) is False
        entry = cache.put(make_tree(tmp_path / "src", TREE))
        assert (entry.path / "config.json").read_bytes() == TREE["config.json"]
        assert cache.verify(digest) is True

    def test_clean_tmp_spares_live_processes(self, tmp_path: Path) -> None:
        """Temp dirs of a live process (a put in progress) stay; a dead process's and strays go."""
        cache = make_cache(tmp_path)
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        ours = make_tree(cache.tmp_dir / f"{os.getpid()}-aaaa-{'0' * 64}", {"f": b"1"})
        make_tree(cache.tmp_dir / f"{dead.stdout.strip()}-bbbb-{'1' * 64}", {"f": b"1"})
        make_tree(cache.tmp_dir / "stray", {"f": b"1"})
        assert cache.clean_tmp() == 2
        assert list(cache.tmp_dir.iterdir()) == [ours]


class TestSourceErrors:
    def spec_error(self, tmp_path: Path, source: Path) -> SpecError:
        with pytest.raises(SpecError) as excinfo:
            make_cache(tmp_path).put(source)
        return excinfo.value

    def test_missing_source(self, tmp_path: Path) -> None:
        """A model.path that does not exist is a spec error naming the field and the path."""
        missing = tmp_path / "nope" / "model.bin"
        error = self.spec_error(tmp_path, missing)
        assert error.errors == [f"model.path: {missing} does not exist"]
        assert not (tmp_path / "data" / CACHE_DIRNAME / "objects").exists()

    def test_broken_symlink_inside_a_tree(self, tmp_path: Path) -> None:
        """A dangling link in the model folder names the link."""
        source = make_tree(tmp_path / "src", TREE)
        (source / "gone.bin").symlink_to(tmp_path / "nowhere")
        link = source / "gone.bin"
        assert self.spec_error(tmp_path, source).errors == [f"model.path: {link} does not exist"]

    def test_fifo_is_not_a_model_file(self, tmp_path: Path) -> None:
        """Something that is not a regular file cannot be hashed."""
        source = make_tree(tmp_path / "src", TREE)
        os.mkfifo(source / "pipe")
        assert self.spec_error(tmp_path, source).errors == [
            f"model.path: cannot read {source / 'pipe'}: is not a regular file"]

    def test_empty_folder(self, tmp_path: Path) -> None:
        """A model folder with no files is almost certainly the wrong path."""
        (tmp_path / "empty").mkdir()
        assert self.spec_error(tmp_path, tmp_path / "empty").errors == [
            f"model.path: cannot read {tmp_path / 'empty'}: holds no files"]

    @pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
    def test_unreadable_file(self, tmp_path: Path) -> None:
        """A file without read permission is a spec error, not a crash."""
        source = make_tree(tmp_path / "src", {"model.bin": b"x"}) / "model.bin"
        source.chmod(0)
        assert self.spec_error(tmp_path, source).errors == [
            f"model.path: cannot read {source}: Permission denied"]
