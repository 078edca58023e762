"""Code and models through a shared store: kept in ``blobs`` by one data directory, brought back
into another, checked against their digests; nothing copied on SQLite."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from torpor.cache import ModelCache
from torpor.code import CodeError, CodeStore, pack_dir
from torpor.shared_files import SharedFileError, SharedFiles
from torpor.store import Store, blobs, tables


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[Store]:
    store = Store(postgres_url)
    yield store
    store.close()


def machine(store: Store, root: Path) -> SharedFiles:
    """One machine's data directory on the shared store."""
    return SharedFiles(store, CodeStore(root / "code"), ModelCache(root / "cache", hash_threads=1))


def function_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "fn"
    (folder / "weights").mkdir(parents=True)
    (folder / "model.py").write_text("print('hi')\n")
    (folder / "weights" / "vocab.txt").write_text("alpha beta\n")
    (folder / "weights" / "w.bin").write_bytes(bytes(range(256)) * 40)
    return folder


def test_code_comes_back_on_another_machine(pg_store: Store, tmp_path: Path) -> None:
    a, b = machine(pg_store, tmp_path / "a"), machine(pg_store, tmp_path / "b")
    folder = function_folder(tmp_path)
    archive = pack_dir(folder)
    a.code.put(archive.data, archive.digest)
    assert a.keep_code(archive.digest) is True
    assert a.keep_code(archive.digest) is False  # once
    assert b.code.get(archive.digest) is None
    ref = b.code_ref(archive.digest)
    assert ref is not None and ref.path == tmp_path / "b" / "code" / archive.digest
    assert (ref.path / "weights" / "w.bin").read_bytes() == bytes(range(256)) * 40
    assert b.code.archive(archive.digest) == archive.data
    assert b.code_ref("0" * 64) is None


@pytest.mark.parametrize("what", ["weights", "weights/vocab.txt"])
def test_a_model_comes_back_with_its_digest(pg_store: Store, tmp_path: Path, what: str) -> None:
    """A folder or a single file, cached on A, is the same cache entry on B."""
    a, b = machine(pg_store, tmp_path / "a"), machine(pg_store, tmp_path / "b")
    cached = a.cache.put(function_folder(tmp_path) / what)
    assert a.keep_model(cached.digest) is True
    assert a.keep_model(cached.digest) is False
    assert b.cache.get(cached.digest) is None
    back = b.model(cached.digest)
    assert back is not None
    assert (back.digest, back.size_bytes, back.files, back.path.name) == (
        cached.digest, cached.size_bytes, cached.files, cached.path.name)
    assert b.cache.verify(cached.digest)
    assert list(b.cache.tmp_dir.iterdir()) == []  # the unpacked blob is gone
    assert b.model("1" * 64) is None


def test_a_blob_that_does_not_match_its_digest_is_refused(pg_store: Store, tmp_path: Path) -> None:
    a, b = machine(pg_store, tmp_path / "a"), machine(pg_store, tmp_path / "b")
    first = a.cache.put(function_folder(tmp_path) / "weights" / "vocab.txt")
    a.keep_model(first.digest)
    packed = io.BytesIO()
    blobs.read(pg_store, "model", first.digest, packed)
    packed.seek(0)
    blobs.put(pg_store, "model", "2" * 64, packed)  # vocab.txt's entry under another digest
    with pytest.raises(SharedFileError, match=f"holds model {first.digest}"):
        b.model("2" * 64)
    blobs.put(pg_store, "code", "3" * 64, io.BytesIO(b"not this archive"))
    with pytest.raises(CodeError, match="the archive's sha256 is"):
        b.code_ref("3" * 64)


def test_nothing_is_copied_into_sqlite(tmp_path: Path) -> None:
    """On SQLite the data directory holds files and database alike: no blob is written."""
    store = Store(tmp_path / "torpor.db")
    files = machine(store, tmp_path / "a")
    archive = pack_dir(function_folder(tmp_path))
    files.code.put(archive.data, archive.digest)
    cached = files.cache.put(tmp_path / "fn" / "weights")
    assert files.keep_code(archive.digest) is False and files.keep_model(cached.digest) is False
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.blobs)).scalar_one() == 0
    store.close()
