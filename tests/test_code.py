"""Code upload: deterministic packing with .torporignore, and archives checked before unpacking."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from torpor.code import CodeError, CodeStore, ignored, pack_dir, unpack


def make_folder(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "model.py").write_text("class M: pass\n")
    (root / "pkg" / "__init__.py").write_text("")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref\n")
    return root


def names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getnames()


def evil_archive(member: tarfile.TarInfo, content: bytes = b"x") -> tuple[bytes, str]:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        member.size = len(content) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(content) if member.isfile() else None)
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()


class TestPack:
    def test_same_files_same_digest(self, tmp_path: Path) -> None:
        """Packing twice, or after touching times, gives the same bytes and digest."""
        folder = make_folder(tmp_path / "fn")
        first = pack_dir(folder)
        os.utime(folder / "model.py", (1, 1))
        assert pack_dir(folder) == first
        (folder / "model.py").write_text("class M: x = 1\n")
        assert pack_dir(folder).digest != first.digest

    def test_ignores_caches_vcs_and_torporignore(self, tmp_path: Path) -> None:
        """__pycache__, .git and what .torporignore lists stay out; modes survive."""
        folder = make_folder(tmp_path / "fn")
        (folder / "data").mkdir()
        (folder / "data" / "big.bin").write_bytes(b"0" * 100)
        (folder / "notes.log").write_text("x")
        (folder / ".torporignore").write_text("# not needed to serve\ndata/\n*.log\n")
        archive = pack_dir(folder)
        assert names(archive.data) == [".torporignore", "model.py", "pkg/__init__.py", "run.sh"]
        assert archive.files == 4
        with tarfile.open(fileobj=io.BytesIO(archive.data), mode="r:gz") as tar:
            assert tar.getmember("run.sh").mode == 0o755
            assert tar.getmember("model.py").mode == 0o644
            assert {m.mtime for m in tar.getmembers()} == {0}

    def test_link_out_of_the_folder_is_left_out(self, tmp_path: Path) -> None:
        """A symlink to a file outside the folder is not packed; one inside is, as a file."""
        folder = make_folder(tmp_path / "fn")
        (tmp_path / "secret").write_text("s")
        (folder / "out").symlink_to(tmp_path / "secret")
        (folder / "alias.py").symlink_to(folder / "model.py")
        assert "out" not in names(pack_dir(folder).data)
        assert "alias.py" in names(pack_dir(folder).data)

    def test_size_limit_names_the_fix(self, tmp_path: Path) -> None:
        """A folder over the limit is refused, saying how to leave things out."""
        folder = make_folder(tmp_path / "fn")
        (folder / "noise.bin").write_bytes(os.urandom(4096))
        with pytest.raises(CodeError, match=r"packs to \d+ bytes, more than 1000 bytes; list what "
                                             r"the function does not need in \.torporignore"):
            pack_dir(folder, max_bytes=1000)

    def test_gitignore_like_patterns(self) -> None:
        """name at any depth, dir/ only folders, /x only at the top, a/b as a path."""
        assert ignored("a/b/x.log", False, ["*.log"])
        assert not ignored("data", False, ["data/"]) and ignored("data", True, ["data/"])
        assert ignored("build", True, ["/build"]) and not ignored("src/build", True, ["/build"])
        assert ignored("docs/a.md", False, ["docs/*.md"]) and not ignored("a.md", False, ["docs/*.md"])


class TestUnpack:
    def test_roundtrip_and_once(self, tmp_path: Path) -> None:
        """An upload is checked against its digest, unpacked once and found again by digest."""
        archive = pack_dir(make_folder(tmp_path / "fn"))
        store = CodeStore(tmp_path / "code")
        ref = store.put(archive.data, archive.digest)
        assert ref.path == tmp_path / "code" / archive.digest
        assert (ref.path / "pkg" / "__init__.py").is_file()
        assert store.put(archive.data, archive.digest) == ref
        assert store.get(archive.digest) == ref and store.archive(archive.digest) == archive.data
        assert store.get("f" * 64) is None

    def test_digest_must_match(self, tmp_path: Path) -> None:
        """Bytes that do not hash to the digest are refused and nothing is written."""
        archive = pack_dir(make_folder(tmp_path / "fn"))
        with pytest.raises(CodeError, match=f"the archive's sha256 is {archive.digest}, not "):
            unpack(archive.data, "0" * 64, tmp_path / "code")
        with pytest.raises(CodeError, match="is not a sha256 in lowercase hex"):
            unpack(archive.data, "../../etc", tmp_path / "code")
        assert not (tmp_path / "code").exists()

    @pytest.mark.parametrize("member", [
        tarfile.TarInfo("../escape.py"),
        tarfile.TarInfo("/etc/cron.d/x"),
    ])
    def test_paths_out_of_the_archive_are_refused(self, tmp_path: Path, member: tarfile.TarInfo) -> None:
        """An entry that would land outside the folder fails the whole upload."""
        data, digest = evil_archive(member)
        with pytest.raises(CodeError, match=f"the archive's entry '{member.name}' points outside it"):
            unpack(data, digest, tmp_path / "code")
        assert not (tmp_path / "escape.py").exists()
        assert list((tmp_path / "code").iterdir()) == []

    def test_links_and_devices_are_refused(self, tmp_path: Path) -> None:
        """Only files and folders: a symlink entry is refused by name."""
        link = tarfile.TarInfo("passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        data, digest = evil_archive(link)
        with pytest.raises(CodeError, match="the archive's entry 'passwd' is not a file or folder"):
            unpack(data, digest, tmp_path / "code")
