"""GGUF → a folder that loads in milliseconds: float32 weights, tokenizer and chat template.

A GGUF file keeps its weights quantized (Q4_1: 4-bit blocks with a scale and a minimum). Dequantizing
135 M weights takes seconds, so it is done once, here, and the result is written as one float32 file
that :func:`torpor.llm.llama.load` memory-maps: loading is then a page-table operation, and every
instance forked from a template shares the same page-cache pages.

Layout of the folder::

    weights.f32     every tensor, float32, C order, 64-byte aligned
    index.json      name → [offset, shape]
    tokenizer.json  a Hugging Face ``tokenizers`` BPE built from the GGUF vocabulary and merges
    config.json     architecture numbers, special token ids, the chat template (all from the GGUF)

:func:`prepare` converts into the torpor model cache (``torpor.cache``), keyed by the GGUF's
content digest, so a second template (another revision, a restarted server) finds it there.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "torpor-llama-f32-v1"  # part of the cache key: changing the layout changes it
ALIGN = 64
_CONTROL = 3  # GGUF token type of special tokens such as <|im_start|>


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def convert(gguf_path: Path, out_dir: Path) -> None:
    """Write the folder described in the module docstring for a Llama-architecture GGUF file."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(str(gguf_path))
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{gguf_path}: architecture {arch!r} is not supported (only 'llama')")
    out_dir.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {}
    offset = 0
    with open(out_dir / "weights.f32", "wb") as out:
        for tensor in reader.tensors:
            array = np.ascontiguousarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
            shape = [int(n) for n in reversed(tensor.shape.tolist())]  # GGUF lists ne innermost first
            array = array.reshape(shape)
            padding = -offset % ALIGN
            out.write(b"\0" * padding)
            offset += padding
            index[tensor.name] = [offset, shape]
            out.write(array.tobytes())
            offset += array.nbytes
    (out_dir / "index.json").write_text(json.dumps(index))
    (out_dir / "tokenizer.json").write_text(_tokenizer_json(reader))
    (out_dir / "config.json").write_text(json.dumps(_config(reader), indent=1))


def _config(reader: Any) -> dict[str, Any]:
    def arch(key: str) -> Any:
        return _field(reader, f"llama.{key}")

    tokens = _field(reader, "tokenizer.ggml.tokens")
    eos = int(_field(reader, "tokenizer.ggml.eos_token_id"))
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    # Generation ends at the EOS token and at any other control token that ends a turn.
    stop_ids = sorted({eos, *(i for i, t in enumerate(tokens) if t in ("<|endoftext|>", "<|im_end|>",
                                                                          "<|eot_id|>", "</s>"))})
    return {
        "format": FORMAT,
        "name": _field(reader, "general.name"),
        "n_layers": int(arch("block_count")),
        "dim": int(arch("embedding_length")),
        "ffn_dim": int(arch("feed_forward_length")),
        "n_heads": int(arch("attention.head_count")),
        "n_kv_heads": int(arch("attention.head_count_kv")),
        "rope_base": float(arch("rope.freq_base") or 10000.0),
        "norm_eps": float(arch("attention.layer_norm_rms_epsilon")),
        "context_length": int(arch("context_length")),
        "vocab_size": len(tokens),
        "bos_token_id": None if bos is None else int(bos),
        "eos_token_id": eos,
        "stop_token_ids": stop_ids,
        "bos_token": tokens[int(bos)] if bos is not None else "",
        "eos_token": tokens[eos],
        "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token")),
        "chat_template": _field(reader, "tokenizer.chat_template"),
    }


def _tokenizer_json(reader: Any) -> str:
    """The GGUF's byte-level BPE (``tokenizer.ggml.model: gpt2``) as a ``tokenizers`` JSON document."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"tokenizer model {model!r} is not supported (only byte-level BPE, 'gpt2')")
    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens")
    types: list[int] = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if _field(reader, "tokenizer.ggml.pre") == "smollm":
        # llama.cpp's "smollm" pre-tokenizer: every digit on its own, then GPT-2's split
        digits = pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated")
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([digits, byte_level])
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    special = [t for t, kind in zip(tokens, types, strict=True) if kind == _CONTROL]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return str(tokenizer.to_str())


def prepare(gguf_path: Path, cache_root: Path) -> Path:
    """The converted folder for ``gguf_path`` in the model cache at ``cache_root``, made if missing.

    The cache entry is found again through ``cache_root/derived/<gguf digest>.<FORMAT>``, a one-line
    file naming the entry's digest, written (atomically) after the entry is published.
    """
    from torpor.cache import ModelCache, content_digest

    cache = ModelCache(cache_root)
    source = content_digest(gguf_path)
    ref = cache_root / "derived" / f"{source}.{FORMAT}"
    if ref.is_file():
        cached = cache.get(ref.read_text().strip())
        if cached is not None:
            return cached.path
    cache_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_root, prefix="convert-") as tmp:
        folder = Path(tmp) / "model"
        convert(gguf_path, folder)
        cached = cache.put(folder)
    ref.parent.mkdir(parents=True, exist_ok=True)
    partial = ref.with_name(f"{ref.name}.{os.getpid()}.tmp")
    partial.write_text(cached.digest + "\n")
    os.replace(partial, ref)
    return cached.path
