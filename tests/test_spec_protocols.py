"""Spec fields of the protocol front doors: ``openai.models`` and ``model.path: package:NAME/FILE``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.test_spec import load, make_spec, spec_errors
from torpor.cache import ModelCache, cache_root_of
from torpor.spec import package_model_problem, resolve_model_path


class TestOpenAISection:
    def test_aliases(self, tmp_path: Path) -> None:
        """openai.models lists extra model names; no section means no OpenAI route."""
        assert load(make_spec(tmp_path / "a", openai={"models": ["qwen"]})).openai.models == ["qwen"]
        assert load(make_spec(tmp_path / "b", openai={})).openai.models == []
        assert load(make_spec(tmp_path / "c")).openai is None

    def test_bad_aliases_named(self, tmp_path: Path) -> None:
        """Empty names and unknown keys are errors naming the field."""
        assert spec_errors(make_spec(tmp_path / "a", openai={"models": [""]})) == [
            "openai.models: must be a list of non-empty model names of at most 256 characters"]
        assert spec_errors(make_spec(tmp_path / "b", openai={"model": ["x"]})) == [
            "openai.model: unknown field"]


class TestPackageModelPath:
    def test_file_in_installed_package(self, tmp_path: Path) -> None:
        """package:NAME/FILE resolves inside the installed package, without importing it."""
        folder = make_spec(tmp_path, model={"path": "package:yaml/__init__.py"})
        expected = Path(yaml.__file__)
        assert resolve_model_path(load(folder), folder) == expected

    def test_missing_package_or_file(self, tmp_path: Path) -> None:
        """An uninstalled package or a missing file is a model.path problem where it is deployed
        (the client's spec check leaves it to the server, which need not be the same machine)."""
        missing = load(make_spec(tmp_path / "a", model={"path": "package:no_such_pkg_x/m.gguf"}))
        assert package_model_problem(missing) == (
            "model.path: package 'no_such_pkg_x' is not installed on the server")
        nofile = load(make_spec(tmp_path / "b", model={"path": "package:yaml/nope.gguf"}))
        problem = package_model_problem(nofile)
        assert problem is not None and problem.endswith("nope.gguf does not exist")
        assert package_model_problem(load(make_spec(tmp_path / "c", model={
            "path": "package:yaml/__init__.py"}))) is None

    async def test_server_refuses_missing_package(self, tmp_path: Path) -> None:
        """Deploying it on a server without the package fails naming model.path; nothing is stored."""
        from torpor.errors import SpecError
        from torpor.platform import Platform

        folder = make_spec(tmp_path / "fn", model={"path": "package:no_such_pkg_x/m.gguf"})
        (tmp_path / "data").mkdir()
        platform = Platform(tmp_path / "data")
        try:
            with pytest.raises(SpecError, match="package 'no_such_pkg_x' is not installed"):
                await platform.deploy_folder(folder)
            assert await platform.store.run(platform.store.list_functions) == []
        finally:
            platform.store.close()


class TestCacheRootOf:
    def test_round_trip(self, tmp_path: Path) -> None:
        """The root of an entry's content path is the cache it came from; other paths have none."""
        source = tmp_path / "w.bin"
        source.write_bytes(b"weights")
        cache = ModelCache(tmp_path / "cache")
        entry = cache.put(source)
        assert cache_root_of(entry.path) == tmp_path / "cache"
        assert cache_root_of(source) is None

    @pytest.mark.parametrize("path", ["/", "/objects/content/x"])
    def test_not_in_a_cache(self, path: str) -> None:
        assert cache_root_of(Path(path)) is None
