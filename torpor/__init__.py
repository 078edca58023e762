"""torpor: a self-hosted serverless inference platform for GPU and CPU models."""

from __future__ import annotations

from torpor.runtime.openai import OpenAIModel
from torpor.runtime.openai_requests import GenerationParams, OpenAIError
from torpor.sdk import Model, Response, request_id
from torpor.tensors import Tensor

__version__ = "0.1.0"
__all__ = ["GenerationParams", "Model", "OpenAIError", "OpenAIModel", "Response", "Tensor",
           "__version__", "request_id"]
