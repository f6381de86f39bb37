"""Shape ops: outputs that depend only on input shapes or attributes (Shape, Range, Constant...).

The movement family (Reshape, Slice, Gather, Resize...) lives in ``movement.py``, imported at the
bottom so that ``ops/__init__`` registers both through this one module.
"""

from __future__ import annotations

import numpy as np

from taskflow.errors import DTypeError, ShapeError, UnsupportedOpError

from .registry import register

#: Range's ``stash_type`` (opset 27): the precision float16 ranges are computed in.
_STASH_DTYPES = {1: np.float32, 11: np.float64}


def onnx_dtype(code: int) -> np.dtype:
    """The numpy dtype of ONNX ``TensorProto.DataType`` ``code`` (onnx's own mapping)."""
    from onnx import helper

    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(int(code)))
    except (KeyError, ValueError, TypeError):
        dtype = None
    if dtype is None or dtype.kind == "O":  # unknown code, or strings: no numeric tensor
        raise DTypeError(f"ONNX dtype code {code!r} is not supported (expected a numeric "
                         "TensorProto.DataType, e.g. 1 = FLOAT, 7 = INT64)")
    return dtype


@register("Shape", "shape")
def shape(data, *, start=0, end=None):
    """int64(data.shape[start:end]) (start/end clamped to [0, rank])"""
    return np.array(data.shape[start:end], dtype=np.int64)


@register("Size", "shape")
def size(data):
    """int64(prod(data.shape)), a scalar"""
    return np.array(data.size, dtype=np.int64)


@register("Range", "shape")
def range_(start, limit, delta, *, stash_type=1):
    """out[i] = start + i * delta for i < max(ceil((limit - start) / delta), 0)"""
    dtype = np.asarray(start).dtype
    s, l, d = (np.asarray(v).item() for v in (start, limit, delta))
    if d == 0:
        raise ValueError("Range delta is 0")
    if dtype.kind in "iu":
        n = max(-((s - l) // d), 0)  # exact integer ceil((l - s) / d)
        return (s + np.arange(n, dtype=np.int64) * d).astype(dtype)
    # float16 follows stash_type; float32/64 are computed in float64 and rounded once.
    calc = _STASH_DTYPES.get(int(stash_type), np.float32) if dtype.itemsize < 4 else np.float64
    s, l, d = calc(s), calc(l), calc(d)
    n = max(int(np.ceil((float(l) - float(s)) / float(d))), 0)
    return (s + np.arange(n, dtype=calc) * d).astype(dtype)


@register("ConstantOfShape", "shape")
def constant_of_shape(input, *, value=None):
    """full(input, value[0]) (default float32 0)"""
    dims = [int(v) for v in np.asarray(input).ravel()]
    if min(dims, default=0) < 0:
        raise ShapeError(f"ConstantOfShape shape {dims!r} has a negative dim")
    if value is None:
        return np.zeros(dims, np.float32)
    value = np.asarray(value).ravel()
    return np.full(dims, value[0], dtype=value.dtype)


@register("Constant", "shape")
def constant(*, value=None, value_float=None, value_floats=None, value_int=None,
             value_ints=None, value_string=None, value_strings=None, sparse_value=None):
    """the one given attribute as a tensor (floats: float32, ints: int64)"""
    given = {k: v for k, v in (("value", value), ("value_float", value_float),
                                ("value_floats", value_floats), ("value_int", value_int),
                                ("value_ints", value_ints), ("value_string", value_string),
                                ("value_strings", value_strings),
                                ("sparse_value", sparse_value)) if v is not None}
    if len(given) != 1:
        raise ValueError(f"Constant needs exactly one value attribute, got {sorted(given)}")
    (name, v), = given.items()
    if name in ("value_string", "value_strings", "sparse_value"):
        raise UnsupportedOpError(f"Constant {name} is not supported (numeric tensors only)",
                                 [("Constant", "")])
    if name == "value":
        return np.array(v)
    return np.array(v, dtype=np.float32 if name.startswith("value_float") else np.int64)


@register("EyeLike", "shape")
def eye_like(input, *, dtype=None, k=0):
    """out[i, j] = (j - i == k), shaped like the 2-D input, of dtype (default input's)"""
    if input.ndim != 2:
        raise ShapeError(f"EyeLike input has shape {input.shape!r}; expected a 2-D tensor")
    out_dtype = input.dtype if dtype is None else onnx_dtype(dtype)
    return np.eye(*input.shape, k=k, dtype=out_dtype)


from . import movement  # noqa: E402, F401  (registers the movement family)
