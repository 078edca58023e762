"""Deploy refuses a Python handler that cannot start, naming runtime.handler (issue 16 #9)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from torpor.api.app import create_api
from torpor.code import pack_dir
from torpor.lifecycle.deploy_check import handler_problem
from torpor.platform import Platform
from torpor.spec import parse_spec

GOOD = "import torpor\n\nclass Echo(torpor.Model):\n    def predict(self, payload):\n        return payload\n"
BROKEN = {
    "missing class": ("import torpor\n", "has no attribute 'Echo'"),
    "syntax error": ("import torpor\nclass Echo(torpor.Model:\n", "SyntaxError"),
    "import error": ("import torpor_no_such_module\n", "No module named 'torpor_no_such_module'"),
    "not a Model": ("class Echo:\n    pass\n", "is not a torpor.Model subclass"),
    "raises on import": ("raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here"),
}


def folder_with(tmp_path: Path, source: str) -> Path:
    (tmp_path / "model.py").write_text(source)
    return tmp_path


def spec_for(folder: Path, **runtime: object) -> object:
    return parse_spec({"name": "fn", "runtime": {"handler": "model:Echo", **runtime}},
                      source="torpor.yaml", base_dir=folder)


class TestHandlerProblem:
    @pytest.mark.parametrize("case", sorted(BROKEN))
    async def test_broken_handler_named(self, tmp_path: Path, case: str) -> None:
        """Each way of not starting is one line naming runtime.handler and the cause."""
        source, expected = BROKEN[case]
        folder = folder_with(tmp_path, source)
        problem = await handler_problem(spec_for(folder), folder)  # type: ignore[arg-type]
        assert problem is not None
        assert problem.startswith("runtime.handler: 'model:Echo' cannot start: ")
        assert expected in problem

    async def test_good_handler_passes(self, tmp_path: Path) -> None:
        """A handler that imports is fine."""
        folder = folder_with(tmp_path, GOOD)
        assert await handler_problem(spec_for(folder), folder) is None  # type: ignore[arg-type]

    async def test_slow_import_let_through(self, tmp_path: Path) -> None:
        """An import past the timeout is not refused (the cold start reports what happens)."""
        folder = folder_with(tmp_path, "import time\ntime.sleep(30)\n")
        problem = await handler_problem(spec_for(folder), folder, timeout_s=0.5)  # type: ignore[arg-type]
        assert problem is None

    async def test_command_functions_not_checked(self, tmp_path: Path) -> None:
        """Only Python handlers are imported."""
        spec = parse_spec({"name": "fn", "runtime": {"command": ["false"]}}, source="t",
                          base_dir=tmp_path)
        assert await handler_problem(spec, tmp_path) is None


class TestDeploy:
    async def test_deploy_refused_with_422(self, tmp_path: Path) -> None:
        """The API refuses the deploy and nothing is stored."""
        (tmp_path / "code").mkdir()
        folder = folder_with(tmp_path / "code", BROKEN["import error"][0])
        (tmp_path / "data").mkdir()
        platform = Platform(tmp_path / "data")
        transport = httpx.ASGITransport(app=create_api(platform))
        archive = pack_dir(folder)
        _, key = await platform.create_key("default", admin=True)  # auth is on, as in production
        async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                     headers={"authorization": f"Bearer {key}"}) as api:
            upload = await api.put(f"/api/v1/code/{archive.digest}", content=archive.data)
            assert upload.status_code == 201, upload.text
            response = await api.post("/api/v1/functions", json={
                "spec": {"name": "fn", "runtime": {"handler": "model:Echo"}},
                "code": archive.digest})
            assert response.status_code == 422
            assert response.json()["reason"] == "invalid_spec"
            assert response.json()["errors"][0].startswith("runtime.handler: 'model:Echo' cannot")
            assert (await api.get("/api/v1/functions")).json() == []
        platform.store.close()
