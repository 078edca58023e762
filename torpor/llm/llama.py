"""A Llama-architecture decoder in numpy: memory-mapped float32 weights, a KV cache, sampling.

Enough for small chat models on CPU (SmolLM2-135M: ~30 tokens/s on one core). Weights come from a
folder made by :mod:`torpor.llm.convert`; :func:`load` maps them without reading them, so a template
process can call it and every forked instance shares the pages.

Rotary embeddings rotate adjacent pairs ``(x[2i], x[2i+1])``: GGUF files store the q and k
projections permuted for that layout (llama.cpp's ``LLAMA_ROPE_TYPE_NORM``).
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: temperature 0 is greedy; ``top_p`` keeps the nucleus."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class Config:
    n_layers: int
    dim: int
    ffn_dim: int
    n_heads: int
    n_kv_heads: int
    rope_base: float
    norm_eps: float
    context_length: int
    vocab_size: int
    stop_token_ids: tuple[int, ...]

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class Llama:
    def __init__(self, config: Config, weights: dict[str, F32]) -> None:
        self.config = config
        self.w = weights
        half = config.head_dim // 2
        # inverse frequencies θ_i = base^(-2i/d), i < d/2
        self.inv_freq = (config.rope_base ** (-np.arange(half, dtype=np.float64) * 2 / config.head_dim))
        self.embed = weights["token_embd.weight"]  # (vocab, dim)
        self.lm_head = weights.get("output.weight", self.embed)  # tied in small models

    def generate(self, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling) -> Iterator[int]:
        """Token ids after ``prompt_ids``, one at a time, ending at a stop token or the limit."""
        c = self.config
        if not prompt_ids:
            raise ValueError("the prompt has no tokens")
        max_new_tokens = min(max_new_tokens, c.context_length - len(prompt_ids))
        if max_new_tokens <= 0:
            return
        total = len(prompt_ids) + max_new_tokens
        cache = [(np.zeros((c.n_kv_heads, total, c.head_dim), np.float32),
                  np.zeros((c.n_kv_heads, total, c.head_dim), np.float32)) for _ in range(c.n_layers)]
        rng = np.random.default_rng(sampling.seed)
        logits = self._forward(np.asarray(prompt_ids), 0, cache)
        position = len(prompt_ids)
        for _ in range(max_new_tokens):
            token = _sample(logits, sampling, rng)
            if token in c.stop_token_ids:
                return
            yield token
            if position >= total:
                return
            logits = self._forward(np.asarray([token]), position, cache)
            position += 1

    def _forward(self, tokens: NDArray[Any], start: int,
                 cache: list[tuple[F32, F32]]) -> NDArray[np.float32]:
        """Run ``tokens`` at positions ``start…``; fill the cache; the last position's logits."""
        c, w = self.config, self.w
        n, hd = len(tokens), c.head_dim
        group = c.n_heads // c.n_kv_heads
        x = self.embed[tokens].astype(np.float32)  # (n, dim)
        angles = np.outer(np.arange(start, start + n), self.inv_freq)
        cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
        end = start + n
        causal = np.triu(np.full((n, end), -np.inf, np.float32), k=start + 1)
        for layer in range(c.n_layers):
            p = f"blk.{layer}."
            h = _rms_norm(x, w[p + "attn_norm.weight"], c.norm_eps)
            q = _rope((h @ w[p + "attn_q.weight"].T).reshape(n, c.n_heads, hd), cos, sin)
            k = _rope((h @ w[p + "attn_k.weight"].T).reshape(n, c.n_kv_heads, hd), cos, sin)
            v = (h @ w[p + "attn_v.weight"].T).reshape(n, c.n_kv_heads, hd)
            k_cache, v_cache = cache[layer]
            k_cache[:, start:end] = k.transpose(1, 0, 2)
            v_cache[:, start:end] = v.transpose(1, 0, 2)
            # grouped-query attention: head j reads kv head j // group
            qh = q.transpose(1, 0, 2).reshape(c.n_kv_heads, group * n, hd)
            scores = (qh @ k_cache[:, :end].transpose(0, 2, 1)) / np.float32(np.sqrt(hd))
            scores = scores.reshape(c.n_kv_heads, group, n, end) + causal
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            attn = probs.reshape(c.n_kv_heads, group * n, end) @ v_cache[:, :end]
            attn = attn.reshape(c.n_heads, n, hd).transpose(1, 0, 2).reshape(n, c.dim)
            x = x + attn @ w[p + "attn_output.weight"].T
            h = _rms_norm(x, w[p + "ffn_norm.weight"], c.norm_eps)
            gate = h @ w[p + "ffn_gate.weight"].T
            up = h @ w[p + "ffn_up.weight"].T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "ffn_down.weight"].T  # SiLU(g)·u
        last = _rms_norm(x[-1:], w["output_norm.weight"], c.norm_eps)
        logits: NDArray[np.float32] = (last @ self.lm_head.T)[0]
        return logits


def _rms_norm(x: F32, weight: F32, eps: float) -> F32:
    scale = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    result: F32 = (x * scale * weight).astype(np.float32)
    return result


def _rope(x: F32, cos: F32, sin: F32) -> F32:
    """Rotate adjacent pairs of ``x`` (n, heads, head_dim) by position-dependent angles (n, head_dim/2)."""
    even, odd = x[..., 0::2], x[..., 1::2]
    cos, sin = cos[:, None, :], sin[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def _sample(logits: NDArray[np.float32], sampling: Sampling, rng: np.random.Generator) -> int:
    if sampling.temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / sampling.temperature
    scaled -= scaled.max()
    probs = np.exp(scaled)
    probs /= probs.sum()
    if sampling.top_p < 1.0:
        order = np.argsort(-probs)
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, sampling.top_p)) + 1]
        kept = probs[keep] / probs[keep].sum()
        return int(keep[rng.choice(len(keep), p=kept)])
    return int(rng.choice(len(probs), p=probs))


def load(folder: Path, in_memory: bool = True) -> tuple[Llama, dict[str, Any]]:
    """The model of a converted folder, and its config.json.

    ``in_memory`` copies the weights into one anonymous mapping advised for huge pages: a template
    that does this in ``load()`` hands every forked instance the weights already in memory, shared
    copy-on-write, and fork copies a few hundred huge-page entries instead of faulting 130 k pages
    of a file mapping back in (measured here: the first token after a fork then costs what a warm
    one does). Without it the file is only mapped: no read, pages come from the page cache on use.
    """
    raw = json.loads((folder / "config.json").read_text())
    index = json.loads((folder / "index.json").read_text())
    source = np.memmap(folder / "weights.f32", dtype=np.uint8, mode="r")
    blob: NDArray[np.uint8] = source
    if in_memory:
        buffer = mmap.mmap(-1, max(1, source.size), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            buffer.madvise(mmap.MADV_HUGEPAGE)
        blob = np.frombuffer(buffer, np.uint8)
        blob[:] = source  # one sequential read of the file
    weights: dict[str, F32] = {}
    for name, (offset, shape) in index.items():
        count = int(np.prod(shape))
        weights[name] = np.frombuffer(blob, np.float32, count, offset).reshape(shape)
    fields = {f: raw[f] for f in Config.__dataclass_fields__ if f != "stop_token_ids"}
    config = Config(**fields, stop_token_ids=tuple(raw["stop_token_ids"]))
    return Llama(config, weights), raw
