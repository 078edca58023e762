"""An OpenAI chat model that costs nothing: 32 tokens at once, so the gateway's own share of the time to
first token stands out (bench/llm.py)."""

from __future__ import annotations

from collections.abc import Iterator

import torpor


class Tokens(torpor.OpenAIModel):
    def generate(self, messages: list[dict[str, str]],
                 params: torpor.GenerationParams) -> Iterator[str]:
        params.prompt_tokens = 1
        for _ in range(params.max_tokens):
            yield " tok"
