"""Tensor declarations for the Open Inference Protocol (KServe v2), shared by the SDK and the runtime.

A Model declares ``inputs`` and ``outputs`` as :class:`Tensor` tuples and implements ``infer``; the
runtime then answers ``GET /v2/models/{name}`` (metadata) and ``POST /v2/models/{name}/infer``
(:mod:`torpor.runtime.oip`). A dimension of ``-1`` takes any size.
"""

from __future__ import annotations

from dataclasses import dataclass

DATATYPES = frozenset({"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
                       "FP16", "FP32", "FP64", "BYTES"})


@dataclass(frozen=True)
class Tensor:
    """One named input or output: ``Tensor("text", "BYTES", (-1,))``."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise TypeError(f"tensor {self.name!r}: datatype {self.datatype!r} is not one of "
                            f"{', '.join(sorted(DATATYPES))}")
        if not all(isinstance(d, int) and (d == -1 or d >= 0) for d in self.shape):
            raise TypeError(f"tensor {self.name!r}: shape {self.shape!r} must hold sizes >= 0 or -1")

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
