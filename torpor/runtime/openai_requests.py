"""OpenAI request bodies checked and turned into small dataclasses; every error names its field.

Pure functions, no I/O. An :class:`OpenAIError` carries OpenAI's error shape
``{"error": {"message", "type", "param", "code"}}`` and the HTTP status to answer with.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
MAX_STOP = 4


class OpenAIError(Exception):
    """An error to answer in OpenAI's shape."""

    def __init__(self, message: str, *, status: int = 400, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code

    def to_json(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def body(self) -> bytes:
        return json.dumps(self.to_json()).encode()


@dataclass
class GenerationParams:
    """What a ``generate`` call is asked for. ``prompt_tokens`` is set by ``generate`` (for ``usage``)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    prompt_tokens: int = 0


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    params: GenerationParams
    stream: bool = False
    include_usage: bool = False


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompt: str
    params: GenerationParams
    stream: bool = False
    include_usage: bool = False


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    texts: list[str]
    base64: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _bad(message: str, param: str | None) -> OpenAIError:
    return OpenAIError(message, param=param)


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", None)
    return body


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required and must be a non-empty string", "model")
    return model


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        raise _bad(f"'{name}' must be a number from {low:g} to {high:g}, got {value!r}", name)
    return float(value)


def _params(body: dict[str, Any], default_max_tokens: int, limit: int) -> GenerationParams:
    max_tokens = default_max_tokens
    for name in ("max_tokens", "max_completion_tokens"):  # the newer name wins when both are given
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise _bad(f"'{name}' must be an integer from 1 to {limit}, got {value!r}", name)
        max_tokens = value
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad(f"'seed' must be an integer, got {seed!r}", "seed")
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,) if stop else ()
    elif isinstance(stop, list) and len(stop) <= MAX_STOP and all(isinstance(s, str) and s for s in stop):
        stops = tuple(stop)
    else:
        raise _bad(f"'stop' must be a non-empty string or a list of up to {MAX_STOP} of them", "stop")
    n = body.get("n")
    if n is not None and n != 1:
        raise _bad("'n' must be 1: one choice per request is supported", "n")
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        seed=seed, stop=stops,
    )


def _stream(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad(f"'stream' must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise _bad("'stream_options' must be an object", "stream_options")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise _bad("'stream_options.include_usage' must be true or false", "stream_options")
    return stream, include


def _content(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                raise _bad(f"'{param}[{i}]' must be a text part ({{'type': 'text', 'text': ...}}); "
                           "other content types are not supported", f"{param}[{i}]")
            texts.append(part["text"])
        return "".join(texts)
    if content is None:
        return ""
    raise _bad(f"'{param}' must be a string or a list of text parts", param)


def parse_chat(body: Any, default_max_tokens: int, limit: int) -> ChatRequest:
    body = _object(body)
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' is required and must be a non-empty list", "messages")
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"'messages[{i}]' must be an object", f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise _bad(f"'messages[{i}].role' must be one of {', '.join(sorted(ROLES))}, got {role!r}",
                       f"messages[{i}].role")
        parsed.append({"role": role, "content": _content(message.get("content"),
                                                         f"messages[{i}].content")})
    stream, include_usage = _stream(body)
    return ChatRequest(model, parsed, _params(body, default_max_tokens, limit), stream, include_usage)


def parse_completion(body: Any, default_max_tokens: int, limit: int) -> CompletionRequest:
    body = _object(body)
    model = _model(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise _bad("'prompt' is required and must be a non-empty string (one prompt per request)",
                   "prompt")
    stream, include_usage = _stream(body)
    return CompletionRequest(model, prompt, _params(body, default_max_tokens, limit), stream,
                             include_usage)


def parse_embedding(body: Any, max_inputs: int) -> EmbeddingRequest:
    body = _object(body)
    model = _model(body)
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not 1 <= len(texts) <= max_inputs \
            or not all(isinstance(t, str) and t for t in texts):
        raise _bad(f"'input' must be a non-empty string or a list of 1 to {max_inputs} of them "
                   "(token arrays are not supported)", "input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise _bad(f"'encoding_format' must be 'float' or 'base64', got {encoding!r}", "encoding_format")
    return EmbeddingRequest(model, texts, base64=encoding == "base64")
