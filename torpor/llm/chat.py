"""A chat model from a converted GGUF folder: its own tokenizer and chat template, text piece by piece.

The prompt is the GGUF's ``tokenizer.chat_template`` (Jinja, rendered in a sandbox, the way
``transformers`` does: ``trim_blocks``/``lstrip_blocks``, ``add_generation_prompt``); the tokenizer is
the GGUF's BPE. Text is decoded incrementally: a token that ends inside a UTF-8 character yields ""
and its text comes out with the next token, so every piece is valid text and there is exactly one
piece per generated token (what :class:`torpor.OpenAIModel` counts as ``completion_tokens``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torpor.llm.llama import Sampling, load
from torpor.runtime.openai_requests import GenerationParams, OpenAIError


class GgufChat:
    def __init__(self, folder: Path, in_memory: bool = True) -> None:
        import jinja2.sandbox
        from tokenizers import Tokenizer

        self.llama, self.config = load(folder, in_memory=in_memory)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message: str) -> None:
            raise OpenAIError(f"the chat template refused the messages: {message}", param="messages")

        env.globals["raise_exception"] = raise_exception
        self.template = env.from_string(self.config["chat_template"])

    def render(self, messages: list[dict[str, str]]) -> str:
        return str(self.template.render(messages=messages, add_generation_prompt=True,
                                        bos_token=self.config["bos_token"],
                                        eos_token=self.config["eos_token"]))

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=False).ids
        bos = self.config.get("bos_token_id")
        if self.config.get("add_bos_token") and bos is not None:
            ids = [bos, *ids]
        return ids

    def chat(self, messages: list[dict[str, str]], params: GenerationParams) -> Iterator[str]:
        return self.complete(self.render(messages), params)

    def complete(self, prompt: str, params: GenerationParams) -> Iterator[str]:
        ids = self.encode(prompt)
        room = self.llama.config.context_length - len(ids)
        if room < 1:
            raise OpenAIError(f"the prompt has {len(ids)} tokens; the model's context holds "
                              f"{self.llama.config.context_length}", param="messages",
                              code="context_length_exceeded")
        params.prompt_tokens = len(ids)
        sampling = Sampling(temperature=params.temperature, top_p=params.top_p, seed=params.seed)
        return self._pieces(self.llama.generate(ids, min(params.max_tokens, room), sampling))

    def _pieces(self, tokens: Iterator[int]) -> Iterator[str]:
        generated: list[int] = []
        emitted = 0
        try:
            for token in tokens:
                generated.append(token)
                text: str = self.tokenizer.decode(generated, skip_special_tokens=True)
                if text.endswith("\ufffd"):
                    yield ""
                    continue
                yield text[emitted:]
                emitted = len(text)
        finally:
            close: Any = getattr(tokens, "close", None)
            if close is not None:
                close()
