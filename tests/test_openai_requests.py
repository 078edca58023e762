"""OpenAI request validation: every malformed field is a 400 that names it."""

from __future__ import annotations

from typing import Any

import pytest

from torpor.runtime.openai_requests import (
    OpenAIError,
    parse_chat,
    parse_completion,
    parse_embedding,
)


def chat(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    body.update(overrides)
    return body


class TestParseChat:
    def test_defaults(self) -> None:
        """A minimal body gets the model's default max_tokens and OpenAI's sampling defaults."""
        request = parse_chat(chat(), default_max_tokens=16, limit=100)
        assert request.model == "m"
        assert request.messages == [{"role": "user", "content": "hi"}]
        assert (request.params.max_tokens, request.params.temperature, request.params.top_p) == (16, 1.0, 1.0)
        assert (request.params.seed, request.params.stop, request.stream) == (None, (), False)

    def test_all_params(self) -> None:
        """max_completion_tokens wins over max_tokens; stop as a string becomes a tuple."""
        request = parse_chat(chat(max_tokens=5, max_completion_tokens=7, temperature=0, top_p=0.5,
                                  seed=3, stop="\n", stream=True, stream_options={"include_usage": True}),
                             16, 100)
        p = request.params
        assert (p.max_tokens, p.temperature, p.top_p, p.seed, p.stop) == (7, 0.0, 0.5, 3, ("\n",))
        assert request.stream and request.include_usage

    def test_text_parts_joined(self) -> None:
        """Content given as text parts is joined into one string."""
        body = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                           {"type": "text", "text": "b"}]}])
        assert parse_chat(body, 16, 100).messages[0]["content"] == "ab"

    @pytest.mark.parametrize(("body", "param"), [
        ([], None),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        (chat(model=""), "model"),
        (chat(messages=[]), "messages"),
        (chat(messages="hi"), "messages"),
        (chat(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
        (chat(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
        (chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), "messages[0].content[0]"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(max_tokens=101), "max_tokens"),
        (chat(max_tokens=True), "max_tokens"),
        (chat(max_completion_tokens="5"), "max_completion_tokens"),
        (chat(temperature=2.5), "temperature"),
        (chat(temperature=float("nan")), "temperature"),
        (chat(top_p=-0.1), "top_p"),
        (chat(seed=1.5), "seed"),
        (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
        (chat(stop=[""]), "stop"),
        (chat(n=2), "n"),
        (chat(stream="yes"), "stream"),
        (chat(stream_options=[]), "stream_options"),
    ])
    def test_rejected_with_param(self, body: Any, param: str | None) -> None:
        """Each bad field is a 400 invalid_request_error naming that field."""
        with pytest.raises(OpenAIError) as caught:
            parse_chat(body, 16, 100)
        assert caught.value.status == 400
        assert caught.value.param == param
        assert caught.value.to_json()["error"]["type"] == "invalid_request_error"


class TestParseCompletion:
    def test_prompt(self) -> None:
        """A one-element prompt list is accepted as its string."""
        assert parse_completion({"model": "m", "prompt": ["abc"]}, 8, 100).prompt == "abc"

    def test_bad_prompt(self) -> None:
        """Several prompts per request are refused, naming 'prompt'."""
        with pytest.raises(OpenAIError) as caught:
            parse_completion({"model": "m", "prompt": ["a", "b"]}, 8, 100)
        assert caught.value.param == "prompt"


class TestParseEmbedding:
    def test_string_and_list(self) -> None:
        """A single string is one input; base64 is recognised."""
        assert parse_embedding({"model": "m", "input": "x"}, 4).texts == ["x"]
        request = parse_embedding({"model": "m", "input": ["x", "y"], "encoding_format": "base64"}, 4)
        assert request.texts == ["x", "y"] and request.base64

    @pytest.mark.parametrize("body", [
        {"model": "m"}, {"model": "m", "input": []}, {"model": "m", "input": [1, 2]},
        {"model": "m", "input": ["a"] * 5}, {"model": "m", "input": [""]},
    ])
    def test_bad_input(self, body: dict[str, Any]) -> None:
        """Missing, empty, token-array or too many inputs name 'input'."""
        with pytest.raises(OpenAIError) as caught:
            parse_embedding(body, 4)
        assert caught.value.param == "input"

    def test_bad_encoding(self) -> None:
        with pytest.raises(OpenAIError) as caught:
            parse_embedding({"model": "m", "input": "x", "encoding_format": "int8"}, 4)
        assert caught.value.param == "encoding_format"
