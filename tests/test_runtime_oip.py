"""The Open Inference Protocol in the instance's app: metadata, infer, and 400s naming the tensor."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

import torpor
from torpor.runtime.app import ModelApp


class Lengths(torpor.Model):
    """text (BYTES, [-1]) → length (INT64, [-1]) and scaled (FP32, [-1, 2])."""

    inputs = (torpor.Tensor("text", "BYTES", (-1,)), torpor.Tensor("scale", "FP32", (1,)))
    outputs = (torpor.Tensor("length", "INT64", (-1,)), torpor.Tensor("scaled", "FP32", (-1, 2)))

    def infer(self, inputs: dict[str, Any]) -> dict[str, Any]:
        lengths = np.array([len(t) for t in inputs["text"]], dtype=np.int64)
        scaled = np.stack([lengths, lengths], axis=1).astype(np.float32) * inputs["scale"][0]
        return {"length": lengths, "scaled": scaled}


def client(model: torpor.Model) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=ModelApp(model)), base_url="http://i")


def request(text: Any = None, **overrides: Any) -> dict[str, Any]:
    text_input = {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["ab", "abcd"]}
    text_input.update(text or {})
    return {"id": "r1", "inputs": [text_input, {"name": "scale", "datatype": "FP32", "shape": [1],
                                                "data": [0.5]}], **overrides}


class TestOip:
    async def test_metadata(self) -> None:
        """GET /v2/models/{name} lists the declared tensors under the name in the path."""
        async with client(Lengths()) as c:
            r = await c.get("/v2/models/lengths")
        assert r.json() == {
            "name": "lengths", "versions": ["1"], "platform": "torpor",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]},
                       {"name": "scale", "datatype": "FP32", "shape": [1]}],
            "outputs": [{"name": "length", "datatype": "INT64", "shape": [-1]},
                        {"name": "scaled", "datatype": "FP32", "shape": [-1, 2]}],
        }

    async def test_infer_without_content_type(self) -> None:
        """A JSON body with no content type (tritonclient's way) is inferred; the id comes back."""
        import json

        async with client(Lengths()) as c:
            r = await c.post("/v2/models/lengths/infer", content=json.dumps(request()).encode())
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["model_name"], body["id"]) == ("lengths", "r1")
        assert body["outputs"] == [
            {"name": "length", "datatype": "INT64", "shape": [2], "data": [2, 4]},
            {"name": "scaled", "datatype": "FP32", "shape": [2, 2], "data": [1.0, 1.0, 2.0, 2.0]},
        ]

    async def test_requested_outputs_only(self) -> None:
        """Naming outputs returns only those; a versioned path works the same."""
        async with client(Lengths()) as c:
            r = await c.post("/v2/models/lengths/versions/1/infer",
                             json=request(outputs=[{"name": "length"}]))
        assert [o["name"] for o in r.json()["outputs"]] == ["length"]

    @pytest.mark.parametrize(("change", "words"), [
        ({"datatype": "FP32"}, "'text' must have datatype BYTES"),
        ({"shape": [1, 2]}, "'text' must have shape [-1]"),
        ({"shape": [3]}, "'text': shape [3] holds 3 elements, 'data' has 2"),
        ({"data": [1, 2]}, "'text': data does not fit datatype BYTES"),
        ({"name": "texts"}, "unknown input tensor 'texts'"),
    ])
    async def test_bad_tensor_is_400(self, change: dict[str, Any], words: str) -> None:
        """A wrong datatype, shape, count or name is a 400 {"error"} naming the tensor."""
        async with client(Lengths()) as c:
            r = await c.post("/v2/models/lengths/infer", json=request(change))
        assert r.status_code == 400
        assert words in r.json()["error"]

    async def test_missing_input_and_binary(self) -> None:
        """A missing input is named; a non-JSON (binary extension) body is refused with a hint."""
        async with client(Lengths()) as c:
            missing = await c.post("/v2/models/lengths/infer", json={"inputs": request()["inputs"][:1]})
            binary = await c.post("/v2/models/lengths/infer", content=b"\x00\x01binary",
                                  headers={"content-type": "application/octet-stream"})
        assert missing.status_code == 400 and "'scale' is missing" in missing.json()["error"]
        assert binary.status_code == 400 and "binary_data=False" in binary.json()["error"]

    async def test_undeclared_model_has_no_v2(self) -> None:
        """A Model without declared tensors does not answer /v2 (404)."""
        class Plain(torpor.Model):
            pass

        async with client(Plain()) as c:
            r = await c.get("/v2/models/plain")
        assert r.status_code == 404

    def test_tensor_declaration_checked(self) -> None:
        """An unknown datatype or a bad dimension fails when the Tensor is declared."""
        with pytest.raises(TypeError, match="datatype"):
            torpor.Tensor("x", "FLOAT", (1,))
        with pytest.raises(TypeError, match="shape"):
            torpor.Tensor("x", "FP32", (-2,))
