"""gpu kernels of the elementwise family: the ufunc tables, C-style Div, Pow, Mod, the variadic
Min/Max/Sum/Mean, Where, IsInf, Cast, Erf and the identity ops.

Each is its reference (:mod:`taskflow.ops.elementwise`) with ``np`` replaced by the operands'
array module: CuPy's ufuncs carry numpy's names and dtype rules, so a table entry is the
same ufunc looked up on ``xp``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from onnx import helper

from .. import elementwise as ref
from ..device import to_host
from .common import gpu_kernel, operands


def _unary(ufunc: str) -> Any:
    def kernel(x: Any) -> Any:
        xp, (x,) = operands(x)
        return getattr(xp, ufunc)(x)

    return kernel


def _binary(ufunc: str) -> Any:
    def kernel(a: Any, b: Any) -> Any:
        xp, (a, b) = operands(a, b)
        return getattr(xp, ufunc)(a, b)

    return kernel


# numpy's ufunc names are CuPy's too (np.abs is "absolute", np.rint "rint"...)
for _name, (_ufunc, _doc) in ref.UNARY_UFUNCS.items():
    gpu_kernel(_name, _unary(_ufunc.__name__))
for _name, (_ufunc, _doc) in ref.BINARY_UFUNCS.items():
    gpu_kernel(_name, _binary(_ufunc.__name__))


def trunc_divide(xp: Any, a: Any, b: Any) -> Any:
    """Integer a / b rounded toward zero, as C (and ONNX) define it; x / 0 gives 0 (in a's
    dtype, whatever a module makes of the Python 1)."""
    q = (a - xp.fmod(a, b)) // xp.where(b == 0, 1, b) * (b != 0)
    return q.astype(a.dtype, copy=False)


@gpu_kernel("Div")
def div_gpu(a: Any, b: Any) -> Any:
    xp, (a, b) = operands(a, b)
    if a.dtype.kind in "iu":
        return trunc_divide(xp, a, b)
    return xp.true_divide(a, b)


@gpu_kernel("Pow")
def pow_gpu(x: Any, y: Any) -> Any:
    xp, (x, y) = operands(x, y)
    if x.dtype.kind in "iu" and y.dtype.kind in "iub":
        e = y.astype(np.int64)
        out = xp.power(x.astype(np.int64), xp.maximum(e, 0))
        unit = xp.where(x == 1, 1, xp.where(x == -1, 1 - 2 * (e % 2), 0))
        return xp.where(e < 0, unit, out).astype(x.dtype)
    if x.dtype.kind in "iu":
        return xp.power(x.astype(np.float64), y.astype(np.float64)).astype(x.dtype)
    wide = np.promote_types(x.dtype, y.dtype) if y.dtype.kind == "f" else x.dtype
    return xp.power(x.astype(wide), y.astype(wide)).astype(x.dtype)


@gpu_kernel("Mod")
def mod_gpu(a: Any, b: Any, *, fmod: int = 0) -> Any:
    xp, (a, b) = operands(a, b)
    return xp.fmod(a, b) if fmod else xp.mod(a, b)


def _fold(op: str, fn: str, inputs: tuple[Any, ...]) -> Any:
    if not inputs:
        raise TypeError(f"{op} takes at least one input, got none")
    xp, arrays = operands(*inputs)
    return functools.reduce(getattr(xp, fn), arrays)


@gpu_kernel("Min")
def min_gpu(*inputs: Any) -> Any:
    return _fold("Min", "minimum", inputs)


@gpu_kernel("Max")
def max_gpu(*inputs: Any) -> Any:
    return _fold("Max", "maximum", inputs)


@gpu_kernel("Sum")
def sum_gpu(*inputs: Any) -> Any:
    return _fold("Sum", "add", inputs)


@gpu_kernel("Mean")
def mean_gpu(*inputs: Any) -> Any:
    total = _fold("Mean", "add", inputs)
    xp, (total,) = operands(total)
    return xp.true_divide(total, len(inputs)).astype(total.dtype)


@gpu_kernel("Where")
def where_gpu(condition: Any, x: Any, y: Any) -> Any:
    xp, (condition, x, y) = operands(condition, x, y)
    return xp.where(condition, x, y)


@gpu_kernel("IsInf")
def is_inf_gpu(x: Any, *, detect_negative: int = 1, detect_positive: int = 1) -> Any:
    xp, (x,) = operands(x)
    inf = xp.isinf(x)
    pos = inf & (x > 0)
    return (pos & bool(detect_positive)) | (inf & ~pos & bool(detect_negative))


#: Cast targets every array module has. The others (bfloat16, float 8) are cast on the host and
#: stay there: CuPy has no such dtypes.
DEVICE_CASTS = frozenset(np.dtype(t) for t in (
    np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
    np.float16, np.float32, np.float64, np.complex64, np.complex128))


def _cast(x: Any, dtype: np.dtype, saturate: int) -> Any:
    if dtype in DEVICE_CASTS:
        return x.astype(dtype, copy=False)
    return ref.cast_to(to_host(x), dtype, saturate=saturate)


@gpu_kernel("Cast")
def cast_gpu(x: Any, *, to: int, saturate: int = 1, round_mode: str = "up") -> Any:
    return _cast(x, np.dtype(helper.tensor_dtype_to_np_dtype(to)), saturate)


@gpu_kernel("CastLike")
def cast_like_gpu(x: Any, target_type: Any, *, saturate: int = 1,
                  round_mode: str = "up") -> Any:
    return _cast(x, np.dtype(target_type.dtype), saturate)


@gpu_kernel("Identity")
def identity_gpu(x: Any) -> Any:
    return x


@gpu_kernel("Dropout")
def dropout_gpu(data: Any, ratio: Any = None, training_mode: Any = None, *,
                seed: int | None = None) -> Any:
    if training_mode is not None and bool(np.asarray(to_host(training_mode))):
        return ref.dropout(data, None, np.asarray(True))  # raises the reference's error
    xp, (data,) = operands(data)
    return data, xp.ones(data.shape, dtype=bool)


# --- erf ------------------------------------------------------------------------------------
def _poly(xp: Any, coeffs: tuple[float, ...], x: Any) -> Any:
    acc = xp.zeros_like(x)
    for c in reversed(coeffs):
        acc = acc * x + c
    return acc


def erf_float64(x: Any) -> Any:
    """:func:`taskflow.ops.elementwise.erf_float64` on any module: float64 throughout."""
    xp, (x,) = operands(x)
    x = x.astype(np.float64)
    a = xp.abs(x)
    small = xp.minimum(a, 0.5)
    s = small * small
    near_zero = 2 / math.sqrt(math.pi) * small * _poly(xp, ref._ERF_P, s) \
        / _poly(xp, ref._ERF_Q, s)
    big = xp.clip(a, 0.5, 10.0)  # erfc(10) ~ 2e-45: erf is exactly 1.0 in float64 beyond
    far = 1.0 - xp.exp(-big * big) * _poly(xp, ref._ERFC_P, big) / _poly(xp, ref._ERFC_Q, big)
    return xp.copysign(xp.where(a < 0.5, near_zero, far), x)


@gpu_kernel("Erf")
def erf_gpu(x: Any) -> Any:
    return erf_float64(x).astype(x.dtype)


def erfc_float32(z: Any, square_scale: float = 1.0) -> Any:
    """:func:`taskflow.ops.elementwise.erfc_float32` itself (array-module generic) on the
    device operand."""
    _, (z,) = operands(z)
    return ref.erfc_float32(z, square_scale)
