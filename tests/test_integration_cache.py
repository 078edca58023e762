"""model.path goes through the content-addressed cache: instances never read the user's folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import FUNCTIONS, make_function, torpor_cli
from torpor.code import pack_dir

pytestmark = pytest.mark.timeout(90)


class TestModelCache:
    def test_vanished_model_folder_still_serves(self, make_server: Any, tmp_path: Path) -> None:
        """Delete model.path after deploy: cold starts, even after a restart, read the cache."""
        folder = make_function(tmp_path, "modelfile")
        srv = make_server([folder])
        shutil.rmtree(folder / "weights")
        body = srv.invoke("modelfile", {}).json()
        assert body["vocab"] == ["alpha", "beta", "gamma"]
        cache = srv.data_dir / "cache"
        assert Path(body["root"]).is_relative_to(cache)
        events = [e["message"] for e in srv.function("modelfile")["events"] if e["kind"] == "model"]
        assert len(events) == 1 and events[0].startswith("model.path cached as ")

        assert srv.stop() == 0
        again = make_server(data_dir=srv.data_dir)
        assert again.invoke("modelfile", {}).json()["vocab"] == ["alpha", "beta", "gamma"]

    def test_redeploy_same_content_is_a_hit(self, make_server: Any, tmp_path: Path) -> None:
        """The same bytes deployed again are not copied again; changed bytes get a new entry."""
        folder = make_function(tmp_path, "modelfile")
        srv = make_server([folder])
        srv.deploy(folder)
        (folder / "weights" / "vocab.txt").write_text("delta\n")
        srv.deploy(folder)
        events = [e["message"] for e in reversed(srv.function("modelfile")["events"])
                  if e["kind"] == "model"]
        assert [m.split(" as ")[0] for m in events] == [
            "model.path cached", "model.path already cached", "model.path cached"]
        assert len({m.split(" as ")[1].split()[0] for m in events}) == 2
        srv.wait_for(lambda: srv.invoke("modelfile", {}).json()["vocab"] == ["delta"],
                     what="revision 3 serving the new model")

    def test_missing_model_path_is_a_spec_error(self, make_server: Any, tmp_path: Path) -> None:
        """A model.path that does not exist is rejected at deploy, naming the field."""
        folder = make_function(tmp_path, "modelfile", model={"path": "nope"})
        srv = make_server()
        archive = pack_dir(folder)
        assert srv.http.put(f"/api/v1/code/{archive.digest}", content=archive.data).status_code == 201
        response = srv.http.post("/api/v1/functions", json={
            "spec": yaml.safe_load((folder / "torpor.yaml").read_text()), "code": archive.digest})
        assert response.status_code == 422
        assert response.json()["errors"] == ["model.path: nope is not in the uploaded folder"]
        # the CLI checks the folder before it uploads anything
        result = torpor_cli("deploy", str(folder), server=srv.url)
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"error: {folder / 'torpor.yaml'}: model.path: {folder / 'nope'} does not exist")
        assert srv.http.get("/api/v1/functions").json() == []

    def test_model_outside_the_folder_is_uploaded_apart(self, make_server: Any,
                                                        tmp_path: Path) -> None:
        """A model.path outside the function's folder is packed and uploaded on its own."""
        weights = tmp_path / "shared-weights"
        shutil.copytree(FUNCTIONS / "modelfile" / "weights", weights)
        folder = make_function(tmp_path, "modelfile", model={"path": str(weights)})
        shutil.rmtree(folder / "weights")
        srv = make_server()
        result = torpor_cli("deploy", str(folder), server=srv.url)
        assert result.returncode == 0, result.stderr
        shutil.rmtree(weights)
        assert srv.invoke("modelfile", {}).json()["vocab"] == ["alpha", "beta", "gamma"]
