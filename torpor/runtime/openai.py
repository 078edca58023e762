"""OpenAI's API for Model handlers: write ``generate`` (or ``embed``), torpor speaks the protocol.

Quick start::

    import torpor

    class Chat(torpor.OpenAIModel):
        def generate(self, messages, params):        # one str per generated token
            params.prompt_tokens = 3                  # optional, for "usage"
            yield from ["Hello", ",", " world"]

The runtime routes ``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` to the
handlers here. They validate the body (400 naming the field), stop after ``max_tokens`` /
``max_completion_tokens`` pieces (``finish_reason: "length"``) or at a ``stop`` string (cut before it,
``"stop"``), count ``usage``, and answer either one JSON document or, with ``"stream": true``,
server-sent events: a role chunk, one chunk per piece, a chunk with the ``finish_reason``, the usage
chunk if ``stream_options.include_usage``, then ``data: [DONE]``. ``temperature``, ``top_p`` and
``seed`` reach ``generate`` in ``params``; honouring them is the model's part.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

from torpor.runtime.openai_requests import (
    ChatRequest,
    CompletionRequest,
    GenerationParams,
    OpenAIError,
    parse_chat,
    parse_completion,
    parse_embedding,
)
from torpor.sdk import Model, Response

SSE = "text/event-stream"
DONE = b"data: [DONE]\n\n"
_ids = itertools.count()
_ID_PREFIX = os.urandom(6).hex()


def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event carrying a JSON document."""
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


def error_response(exc: OpenAIError) -> Response:
    return Response(body=exc.to_json(), status=exc.status)


class OpenAIModel(Model):
    """A Model that answers OpenAI's API. Override :meth:`generate`, :meth:`complete` or :meth:`embed`.

    ``default_max_tokens`` applies when a request names no limit; ``max_tokens_limit`` bounds what a
    request may ask for; ``max_embedding_inputs`` bounds ``input`` of ``/v1/embeddings``.
    """

    default_max_tokens: ClassVar[int] = 256
    max_tokens_limit: ClassVar[int] = 4096
    max_embedding_inputs: ClassVar[int] = 64

    def generate(self, messages: list[dict[str, str]], params: GenerationParams) -> Iterable[str]:
        """Chat: yield the reply one token's text at a time."""
        raise OpenAIError(f"model {type(self).__name__} does not serve chat completions",
                          status=404, code="unsupported")

    def complete(self, prompt: str, params: GenerationParams) -> Iterable[str]:
        """Plain completion of ``prompt``: yield one token's text at a time."""
        raise OpenAIError(f"model {type(self).__name__} does not serve completions",
                          status=404, code="unsupported")

    def embed(self, texts: list[str]) -> Any:
        """One vector per text (a list of lists or a 2-D array)."""
        raise OpenAIError(f"model {type(self).__name__} does not serve embeddings",
                          status=404, code="unsupported")

    def predict(self, payload: Any) -> Any:
        """``/invoke`` takes a chat request too (the same body as ``/v1/chat/completions``)."""
        return chat_completions(self, payload)


def routes(model: OpenAIModel) -> dict[str, Callable[[Any], Any]]:
    """``POST`` paths of the runtime answered for ``model``."""
    return {
        "/v1/chat/completions": lambda payload: chat_completions(model, payload),
        "/v1/completions": lambda payload: completions(model, payload),
        "/v1/embeddings": lambda payload: embeddings(model, payload),
    }


def chat_completions(model: OpenAIModel, payload: Any) -> Any:
    try:
        request = parse_chat(payload, model.default_max_tokens, model.max_tokens_limit)
        pieces = iter(model.generate(request.messages, request.params))
    except OpenAIError as exc:
        return error_response(exc)
    return _answer(request, pieces, chat=True)


def completions(model: OpenAIModel, payload: Any) -> Any:
    try:
        request = parse_completion(payload, model.default_max_tokens, model.max_tokens_limit)
        pieces = iter(model.complete(request.prompt, request.params))
    except OpenAIError as exc:
        return error_response(exc)
    return _answer(request, pieces, chat=False)


def embeddings(model: OpenAIModel, payload: Any) -> Any:
    try:
        request = parse_embedding(payload, model.max_embedding_inputs)
        vectors = model.embed(request.texts)
    except OpenAIError as exc:
        return error_response(exc)
    data = []
    for index, vector in enumerate(vectors):
        values = [float(v) for v in vector]
        encoded: Any = values
        if request.base64:  # little-endian float32, as OpenAI's clients decode it
            encoded = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(len(text.split()) for text in request.texts)  # whitespace words: an estimate
    return {"object": "list", "data": data, "model": request.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class Stopper:
    """Applies ``max_tokens`` and stop strings to a stream of pieces, holding back what could be the
    start of a stop string until it is known not to be one."""

    def __init__(self, pieces: Iterator[str], params: GenerationParams) -> None:
        self.pieces = pieces
        self.params = params
        self.tokens = 0
        self.finish_reason = "stop"
        self._hold = max((len(s) for s in params.stop), default=1) - 1

    def __iter__(self) -> Iterator[str]:
        pending = ""
        stops = self.params.stop
        try:
            for piece in self.pieces:
                self.tokens += 1
                pending += piece
                if stops:
                    cut = min((i for i in (pending.find(s) for s in stops) if i >= 0), default=-1)
                    if cut >= 0:
                        if cut:
                            yield pending[:cut]
                        return
                    split = max(0, len(pending) - self._hold)  # what no stop string can start in
                    ready, pending = pending[:split], pending[split:]
                    if ready:
                        yield ready
                elif pending:  # a token may end mid-character: its text comes with the next one
                    yield pending
                    pending = ""
                if self.tokens >= self.params.max_tokens:
                    self.finish_reason = "length"
                    break
            if pending:
                yield pending
        finally:
            close = getattr(self.pieces, "close", None)
            if close is not None:
                close()

    def usage(self) -> dict[str, int]:
        prompt = self.params.prompt_tokens
        return {"prompt_tokens": prompt, "completion_tokens": self.tokens,
                "total_tokens": prompt + self.tokens}


def _answer(request: ChatRequest | CompletionRequest, pieces: Iterator[str], chat: bool) -> Any:
    prefix, kind = ("chatcmpl", "chat.completion") if chat else ("cmpl", "text_completion")
    ident = f"{prefix}-{_ID_PREFIX}{next(_ids):08x}"
    created = int(time.time())
    stopper = Stopper(pieces, request.params)
    if request.stream:
        return Response(body=_chunks(request, stopper, ident, created, chat), content_type=SSE,
                        headers={"cache-control": "no-cache"})
    try:
        text = "".join(stopper)
    except OpenAIError as exc:
        return error_response(exc)
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": stopper.finish_reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {"id": ident, "object": kind, "created": created, "model": request.model,
            "system_fingerprint": None, "choices": [choice], "usage": stopper.usage()}


def _chunks(request: ChatRequest | CompletionRequest, stopper: Stopper, ident: str, created: int,
            chat: bool) -> Iterator[bytes]:
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choice: dict[str, Any] | None, usage: dict[str, int] | None = None) -> bytes:
        document: dict[str, Any] = {"id": ident, "object": kind, "created": created,
                                    "model": request.model, "system_fingerprint": None,
                                    "choices": [] if choice is None else [choice]}
        if request.include_usage:
            document["usage"] = usage
        return sse(document)

    def piece(text: str, finish: str | None = None) -> dict[str, Any]:
        if chat:
            delta = {"content": text} if finish is None else {}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    if chat:
        yield chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                     "finish_reason": None})
    try:
        for text in stopper:
            yield chunk(piece(text))
    except OpenAIError as exc:  # the stream is under way: the error goes out as an event
        yield sse(exc.to_json())
        yield DONE
        return
    yield chunk(piece("", stopper.finish_reason))
    if request.include_usage:
        yield chunk(None, stopper.usage())
    yield DONE
