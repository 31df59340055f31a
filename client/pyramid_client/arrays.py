"""The wire's datatypes as numpy arrays: one ``[1, 1]`` tensor per input or output (``wire``).

Used where a tensor is built from a Python value: the client's gRPC transport (``InferInput``),
the server's responses and engine calls (``pb_utils.Tensor``), the router's remote calls."""

from __future__ import annotations

from typing import Any

import numpy as np

from .wire import BOOL, BYTES, FP32, INT32, UINT64

NUMPY_DTYPES: dict[str, Any] = {BYTES: np.object_, BOOL: np.bool_, INT32: np.int32, UINT64: np.uint64, FP32: np.float32}
_DATATYPES = {np.dtype(v): k for k, v in NUMPY_DTYPES.items()}


def to_array(value: Any, datatype: str) -> np.ndarray:
    """``[[value]]`` as ``datatype`` (BYTES: the UTF-8 encoding of ``str(value)``)."""
    if datatype == BYTES:
        return np.array([[str(value).encode("utf-8")]], dtype=np.object_)
    return np.array([[value]], dtype=NUMPY_DTYPES[datatype])


def datatype(dtype: Any) -> str:
    """The wire datatype of a numpy dtype (ValueError if the wire has none)."""
    try:
        return _DATATYPES[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"no Triton datatype for numpy dtype {dtype}") from None
