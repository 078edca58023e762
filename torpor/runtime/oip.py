"""The Open Inference Protocol (KServe v2, Triton's HTTP API) for Models that declare tensors.

``GET /v2/models/{name}`` answers the metadata of the declared ``inputs``/``outputs``;
``POST /v2/models/{name}/infer`` checks every input against its declaration (a wrong datatype, shape
or element count is a 400 naming the tensor), hands ``infer`` numpy arrays (BYTES as arrays of
``str``), and returns the declared outputs (all, or the ones the request names). Errors are the
protocol's ``{"error": "..."}``. Binary tensor data (Triton's extension) is not supported: the
request must carry JSON ``data``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torpor.sdk import Model, Response
from torpor.tensors import Tensor

PREFIX = "/v2/models/"
_NUMPY = {"BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
          "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16",
          "FP32": "float32", "FP64": "float64"}


class InferError(ValueError):
    """A request that does not match the model's declared tensors."""


def _error(message: str, status: int = 400) -> Response:
    return Response(body={"error": message}, status=status)


def route(model: Model, method: str, path: str) -> Callable[[Any], Any] | None:
    """The handler of ``method path`` for a Model that declares its tensors, else None."""
    if not model.inputs or not path.startswith(PREFIX):
        return None
    name, _, rest = path[len(PREFIX):].partition("/")
    if rest.startswith("versions/"):  # /v2/models/{name}/versions/{v}/...
        rest = rest.split("/", 2)[2] if rest.count("/") >= 2 else ""
    if method == "GET" and rest == "":
        return lambda payload: metadata(model, name)
    if method == "GET" and rest == "ready":
        return lambda payload: {"name": name, "ready": True}
    if method == "POST" and rest == "infer":
        return lambda payload: infer(model, name, payload)
    return None


def metadata(model: Model, name: str) -> dict[str, Any]:
    return {"name": name, "versions": ["1"], "platform": "torpor",
            "inputs": [t.to_json() for t in model.inputs],
            "outputs": [t.to_json() for t in model.outputs]}


def infer(model: Model, name: str, payload: Any) -> Any:
    try:
        arrays, wanted = _inputs(model, payload)
    except InferError as exc:
        return _error(str(exc))
    results = model.infer(arrays)
    outputs = []
    for tensor in model.outputs:
        if wanted is not None and tensor.name not in wanted:
            continue
        if tensor.name not in results:
            return _error(f"{type(model).__name__}.infer returned no output {tensor.name!r}", 500)
        outputs.append(_output(tensor, results[tensor.name]))
    answer: dict[str, Any] = {"model_name": name, "model_version": "1", "outputs": outputs}
    if isinstance(payload, dict) and isinstance(payload.get("id"), str):
        answer["id"] = payload["id"]
    return answer


def _inputs(model: Model, payload: Any) -> tuple[dict[str, Any], set[str] | None]:
    import numpy as np

    if isinstance(payload, bytes | bytearray):
        raise InferError("the request must be a JSON inference request (binary tensor data is not "
                         "supported: send JSON data, e.g. binary_data=False in tritonclient)")
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise InferError("the request must be a JSON object with an 'inputs' list")
    given = {}
    for item in payload["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InferError("every entry of 'inputs' must be an object with a 'name'")
        given[item["name"]] = item
    declared = {t.name: t for t in model.inputs}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise InferError(f"unknown input tensor {unknown[0]!r}; the model takes {sorted(declared)}")
    arrays: dict[str, Any] = {}
    for tensor in model.inputs:
        item = given.get(tensor.name)
        if item is None:
            raise InferError(f"input tensor {tensor.name!r} is missing")
        shape = _check(tensor, item)
        data = _flatten(item.get("data"))
        if len(data) != math.prod(shape):
            raise InferError(f"input tensor {tensor.name!r}: shape {shape} holds {math.prod(shape)} "
                             f"elements, 'data' has {len(data)}")
        try:
            if tensor.datatype == "BYTES":
                if not all(isinstance(v, str) for v in data):
                    raise TypeError("BYTES elements must be strings")
                arrays[tensor.name] = np.array(data, dtype=object).reshape(shape)
            else:
                arrays[tensor.name] = np.array(data, dtype=_NUMPY[tensor.datatype]).reshape(shape)
        except (TypeError, ValueError) as exc:
            raise InferError(f"input tensor {tensor.name!r}: data does not fit datatype "
                             f"{tensor.datatype}: {exc}") from None
    outputs = payload.get("outputs")
    wanted = None
    if isinstance(outputs, list):
        wanted = {str(o.get("name")) for o in outputs if isinstance(o, dict)}
        known = {t.name for t in model.outputs}
        missing = sorted(str(n) for n in wanted - known)
        if missing:
            raise InferError(f"unknown output tensor {missing[0]!r}; the model has {sorted(known)}")
    return arrays, wanted


def _check(tensor: Tensor, item: dict[str, Any]) -> list[int]:
    if item.get("datatype") != tensor.datatype:
        raise InferError(f"input tensor {tensor.name!r} must have datatype {tensor.datatype}, "
                         f"got {item.get('datatype')!r}")
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InferError(f"input tensor {tensor.name!r}: 'shape' must be a list of sizes")
    if len(shape) != len(tensor.shape) or any(d not in (-1, s) for d, s in zip(tensor.shape, shape,
                                                                                 strict=True)):
        raise InferError(f"input tensor {tensor.name!r} must have shape {list(tensor.shape)}, "
                         f"got {shape}")
    return shape


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise InferError("every input needs 'data' as a (possibly nested) list")
    flat: list[Any] = []

    def walk(values: list[Any]) -> None:  # row-major; JSON depth is bounded by the server
        for value in values:
            if isinstance(value, list):
                walk(value)
            else:
                flat.append(value)

    walk(data)
    return flat


def _output(tensor: Tensor, value: Any) -> dict[str, Any]:
    import numpy as np

    array = np.asarray(value)
    data = array.reshape(-1).tolist()
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(array.shape), "data": data}
