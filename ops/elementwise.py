"""Elementwise ops: arithmetic, math, comparison, logic, Where, Cast, and the identity ops.

Simple families are tables (ONNX name -> numpy function) registered in a loop; ops with
ONNX-specific semantics (C-style integer ``Div``, ``Pow`` with a second dtype, ``Cast``) are
written out. Every op follows the newest ONNX opset: the output dtype is the input's (bool for
comparisons), numpy is never allowed to upcast, and IEEE specials (``log(0) = -inf``,
``0/0 = nan``) are results, not warnings.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from .device import array_module
from .registry import elementwise_flops, register

BFLOAT16 = helper.tensor_dtype_to_np_dtype(TensorProto.BFLOAT16)
#: 16-bit floats: multi-step formulas run in float32 and round once at the end.
HALF_DTYPES = (np.dtype(np.float16), BFLOAT16)
#: Float 8 types: ``Cast(saturate=1)`` clamps to their finite range before rounding.
FLOAT8_DTYPES = tuple(helper.tensor_dtype_to_np_dtype(t) for t in (
    TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ,
    TensorProto.FLOAT8E5M2, TensorProto.FLOAT8E5M2FNUZ))
#: Cast targets numpy (plus ml_dtypes) converts with ONNX's rules; the rest (string, 4-bit,
#: float8e8m0...) are refused by name.
CAST_TARGETS = frozenset(np.dtype(t) for t in (
    np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
    np.float16, np.float32, np.float64, np.complex64, np.complex128, BFLOAT16, *FLOAT8_DTYPES))

#: Erf costs two degree-6..8 rational polynomials and one exp per element.
ERF_FLOPS_PER_ELEMENT = 30


def quiet(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` with numpy float warnings off: inf/nan are ONNX results, not errors."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(all="ignore"):
            return fn(*args, **kwargs)

    return wrapper


def per_element(n: int) -> Callable[..., int]:
    """A FLOP count of ``n`` per output element."""
    return lambda in_shapes, out_shapes, **attrs: n * elementwise_flops(in_shapes, out_shapes)


# --- erf ----------------------------------------------------------------------------------
# Rational approximations from Hart et al., "Computer Approximations" (1968), #5667 for erfc
# on |x| >= 0.5 (as in 4.3BSD libm). Evaluated in float64 they agree with math.erf to
# 5e-16 relative over the whole line, so float32 results are correctly rounded but for rare
# near-ties. (scipy.special.erf would do, but scipy is not a runtime dependency.)
_ERF_P = (8.04373630960840172832162e4, 7.40407142710151470082064e3,
          3.01782788536507577809226e3, 3.80140318123903008244444e1,
          1.43383842191748205576712e1, -2.88805137207594084924010e-1,
          7.547728033418631287834e-3)
_ERF_Q = (8.04373630960840172826266e4, 3.42165257924628539769006e4,
          6.37960017324428279487120e3, 6.58070155459240506326937e2,
          3.80190713951939403753468e1, 1.0)
_ERFC_P = (1.8263348842295112592168999e3, 2.8980293292167655611275846e3,
           2.320439590251635247384768711e3, 1.143262070703886173606073338e3,
           3.685196154710010637133875746e2, 7.708161730368428609781633646e1,
           9.675807882987265400604202961e0, 5.641877825507397413087057563e-1)
_ERFC_Q = (1.8263348842295112595576438e3, 4.95882756472114071495438422e3,
           6.0895424232724435504633068e3, 4.429612803883682726711528526e3,
           2.094384367789539593790281779e3, 6.617361207107653469211984771e2,
           1.371255960500622202878443578e2, 1.714980943627607849376131193e1, 1.0)


def _poly(coeffs: tuple[float, ...], x: np.ndarray) -> np.ndarray:
    acc = np.zeros_like(x)
    for c in reversed(coeffs):
        acc = acc * x + c
    return acc


def erf_float64(x: np.ndarray) -> np.ndarray:
    """erf(x) in float64 (relative error < 5e-16); NaN in, NaN out."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    small = np.minimum(a, 0.5)
    s = small * small
    near_zero = (2 / np.sqrt(np.pi)) * small * _poly(_ERF_P, s) / _poly(_ERF_Q, s)
    big = np.clip(a, 0.5, 10.0)  # erfc(10) ~ 2e-45: erf is exactly 1.0 in float64 beyond
    far = 1.0 - np.exp(-big * big) * _poly(_ERFC_P, big) / _poly(_ERFC_Q, big)
    return np.copysign(np.where(a < 0.5, near_zero, far), x)


#: erfc(z) = t * exp(-z^2 + P(t)), t = 1 / (1 + z/2), z >= 0: Numerical Recipes' Chebyshev fit
#: (relative error < 1.2e-7 on the whole half-line). One formula, no branches, and no
#: cancellation for large z, so float32 keeps ~5e-7 relative error down to the underflow.
_ERFC_T = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
           -1.13520398, 1.48851587, -0.82215223, 0.17087277)
#: Keeps the top 12 significant bits of a float32, so that z_hi * z_hi is exact.
_HIGH_BITS = np.uint32(0xFFFFF000)


def erfc_float32(z: np.ndarray, square_scale: float = 1.0) -> np.ndarray:
    """erfc(z * sqrt(square_scale)) for float32 ``z >= 0`` (relative error < 1e-6 where the
    result is a normal float32); ``square_scale=0.5`` gives Gelu's erfc(|x| / sqrt 2).

    The exponent's -z^2 * square_scale is taken as hi^2 * s + (z - hi)(z + hi) * s with hi the
    top 12 bits of z, exact for s = 1 or 1/2: z * sqrt(s) rounded to float32 and then squared
    would carry an absolute error of up to ~1e-5 into the exponent near the underflow.
    """
    xp = array_module(z)  # numpy here; cupy when the gpu kernels hand CuPy arrays in
    z = xp.asarray(z, dtype=np.float32)
    s = np.float32(square_scale)
    one = np.float32(1)
    w = z if square_scale == 1 else z * np.float32(math.sqrt(square_scale))
    t = one / (one + np.float32(0.5) * w)
    acc = xp.full_like(z, np.float32(_ERFC_T[-1]))
    for c in reversed(_ERFC_T[:-1]):
        acc *= t
        acc += np.float32(c)
    hi = (z.view(np.uint32) & _HIGH_BITS).view(np.float32)
    low = (z - hi) * (z + hi)
    low *= s
    acc -= low
    with np.errstate(under="ignore", over="ignore"):
        xp.exp(acc, out=acc)
        acc *= t
        xp.multiply(hi, hi, out=t)
        t *= -s
        acc *= xp.exp(t, out=t)
    return acc


# --- arithmetic ---------------------------------------------------------------------------
def trunc_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer a / b rounded toward zero, as C (and ONNX) define it; x / 0 gives 0."""
    with np.errstate(all="ignore"):
        return (a - np.fmod(a, b)) // np.where(b == 0, 1, b) * (b != 0)


@register("Div", "elementwise")
@quiet
def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b (integers: truncated toward zero, like C)."""
    if a.dtype.kind in "iu":
        return trunc_divide(a, b)
    return np.true_divide(a, b)


@register("Pow", "elementwise")
@quiet
def pow_(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x ** y in x's dtype (y may have another dtype; integer x ** -n truncates to 0 or +-1)."""
    if x.dtype.kind in "iu" and y.dtype.kind in "iub":
        e = y.astype(np.int64)
        out = np.power(x.astype(np.int64), np.maximum(e, 0))
        # 1/x**n truncated: +-1 for x = +-1, else 0 (x = 0 is a division by zero: undefined).
        unit = np.where(x == 1, 1, np.where(x == -1, 1 - 2 * (e % 2), 0))
        return np.where(e < 0, unit, out).astype(x.dtype)
    if x.dtype.kind in "iu":  # integer base, float exponent: pow in double, truncated (as ORT)
        return np.power(x.astype(np.float64), y.astype(np.float64)).astype(x.dtype)
    wide = np.promote_types(x.dtype, y.dtype) if y.dtype.kind == "f" else x.dtype
    return np.power(x.astype(wide), y.astype(wide)).astype(x.dtype)


@register("Erf", "elementwise", flops=per_element(ERF_FLOPS_PER_ELEMENT))
def erf(x: np.ndarray) -> np.ndarray:
    """erf(x) = 2/sqrt(pi) * integral_0^x exp(-t^2) dt (float64 inside, cast back)."""
    return erf_float64(x).astype(x.dtype)


@register("Mod", "elementwise")
@quiet
def mod(a: np.ndarray, b: np.ndarray, *, fmod: int = 0) -> np.ndarray:
    """fmod=0: a - floor(a/b)*b (sign of b); fmod=1: a - trunc(a/b)*b (sign of a)."""
    return np.fmod(a, b) if fmod else np.mod(a, b)


# Unary and binary ops that are exactly one numpy ufunc. Numpy keeps the dtype of same-dtype
# operands, and ONNX requires the operands of these ops to share one dtype.
UNARY_UFUNCS: dict[str, tuple[np.ufunc, str]] = {
    "Sqrt": (np.sqrt, "sqrt(x)"),
    "Exp": (np.exp, "e ** x"),
    "Log": (np.log, "ln(x)"),
    "Neg": (np.negative, "-x"),
    "Abs": (np.abs, "|x|"),
    "Reciprocal": (np.reciprocal, "1 / x"),
    "Floor": (np.floor, "floor(x)"),
    "Ceil": (np.ceil, "ceil(x)"),
    "Sign": (np.sign, "-1, 0 or 1 by the sign of x (nan stays nan)"),
    "Sin": (np.sin, "sin(x)"),
    "Cos": (np.cos, "cos(x)"),
    "Round": (np.rint, "x rounded to the nearest integer, halves to even (nan, inf kept)"),
    "Not": (np.logical_not, "not x"),
    "IsNaN": (np.isnan, "x != x"),
}
BINARY_UFUNCS: dict[str, tuple[np.ufunc, str]] = {
    "Add": (np.add, "a + b"),
    "Sub": (np.subtract, "a - b"),
    "Mul": (np.multiply, "a * b"),
    "Equal": (np.equal, "a == b"),
    "Less": (np.less, "a < b"),
    "Greater": (np.greater, "a > b"),
    "LessOrEqual": (np.less_equal, "a <= b"),
    "GreaterOrEqual": (np.greater_equal, "a >= b"),
    "And": (np.logical_and, "a and b"),
    "Or": (np.logical_or, "a or b"),
    "Xor": (np.logical_xor, "a xor b"),
}


def _unary(name: str, ufunc: np.ufunc, doc: str) -> Callable[..., Any]:
    def reference(x: np.ndarray) -> np.ndarray:
        return ufunc(x)

    reference.__name__ = reference.__qualname__ = name.lower()
    reference.__doc__ = doc
    return quiet(reference)


def _binary(name: str, ufunc: np.ufunc, doc: str) -> Callable[..., Any]:
    def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ufunc(a, b)

    reference.__name__ = reference.__qualname__ = name.lower()
    reference.__doc__ = doc
    return quiet(reference)


for _name, (_ufunc, _doc) in UNARY_UFUNCS.items():
    register(_name, "elementwise")(_unary(_name, _ufunc, _doc))
for _name, (_ufunc, _doc) in BINARY_UFUNCS.items():
    register(_name, "elementwise")(_binary(_name, _ufunc, _doc))


# --- variadic (n inputs, multidirectional broadcasting) -----------------------------------
def _fold(op: str, ufunc: np.ufunc, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
    if not inputs:
        raise TypeError(f"{op} takes at least one input, got none")
    return functools.reduce(ufunc, inputs)


@register("Min", "elementwise")
@quiet
def min_(*inputs: np.ndarray) -> np.ndarray:
    """min(x0, x1, ..., xn-1) elementwise (nan propagates)"""
    return _fold("Min", np.minimum, inputs)


@register("Max", "elementwise")
@quiet
def max_(*inputs: np.ndarray) -> np.ndarray:
    """max(x0, x1, ..., xn-1) elementwise (nan propagates)"""
    return _fold("Max", np.maximum, inputs)


@register("Sum", "elementwise")
@quiet
def sum_(*inputs: np.ndarray) -> np.ndarray:
    """x0 + x1 + ... + xn-1"""
    return _fold("Sum", np.add, inputs)


@register("Mean", "elementwise")
@quiet
def mean(*inputs: np.ndarray) -> np.ndarray:
    """(x0 + x1 + ... + xn-1) / n"""
    total = _fold("Mean", np.add, inputs)
    return np.true_divide(total, len(inputs)).astype(total.dtype)


# --- selection, predicates, casts ---------------------------------------------------------
@register("Where", "elementwise")
def where(condition: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x if condition else y"""
    return np.where(condition, x, y)


@register("IsInf", "elementwise")
def isinf(x: np.ndarray, *, detect_negative: int = 1, detect_positive: int = 1) -> np.ndarray:
    """x == +inf (if detect_positive) or x == -inf (if detect_negative)"""
    pos = np.isinf(x) & (x > 0)
    return (pos & bool(detect_positive)) | (np.isinf(x) & ~pos & bool(detect_negative))


def cast_to(x: np.ndarray, dtype: np.dtype, *, saturate: int = 1) -> np.ndarray:
    """``x.astype(dtype)`` with ONNX's rules (float 8 saturation); refuses exotic targets."""
    dtype = np.dtype(dtype)
    if dtype not in CAST_TARGETS:
        from taskflow.errors import UnsupportedOpError

        supported = sorted(str(d) for d in CAST_TARGETS)
        raise UnsupportedOpError(f"Cast to {dtype!s} is not supported (supported: {supported})",
                                 [("Cast", "")])
    if dtype in FLOAT8_DTYPES and saturate:
        # [x] > FLT_MAX becomes FLT_MAX (and inf too); nan passes through np.clip.
        limit = _float8_max(dtype)
        x = np.clip(x.astype(np.float64), -limit, limit)
    with np.errstate(all="ignore"):  # out-of-range float -> int is undefined in ONNX
        return x.astype(dtype, copy=False)


def _float8_max(dtype: np.dtype) -> float:
    import ml_dtypes  # an onnx dependency; only float 8 casts need it

    return float(ml_dtypes.finfo(dtype).max)


@register("Cast", "elementwise")
def cast(x: np.ndarray, *, to: int, saturate: int = 1, round_mode: str = "up") -> np.ndarray:
    """x converted to TensorProto type ``to`` (round_mode only affects float8e8m0: refused)."""
    return cast_to(x, helper.tensor_dtype_to_np_dtype(to), saturate=saturate)


@register("CastLike", "elementwise")
def cast_like(x: np.ndarray, target_type: np.ndarray, *, saturate: int = 1,
              round_mode: str = "up") -> np.ndarray:
    """x converted to target_type's dtype"""
    return cast_to(x, target_type.dtype, saturate=saturate)


# --- identity -------------------------------------------------------------------------
@register("Identity", "identity")
def identity(x: np.ndarray) -> np.ndarray:
    """x (the same array: references never write to their inputs)"""
    return x


@register("Dropout", "identity")
def dropout(data: np.ndarray, ratio: np.ndarray | None = None,
            training_mode: np.ndarray | None = None, *, seed: int | None = None) -> tuple:
    """(data, all-True mask): inference only."""
    if training_mode is not None and bool(np.asarray(training_mode)):
        from taskflow.errors import UnsupportedOpError

        raise UnsupportedOpError(
            f"Dropout with training_mode={np.asarray(training_mode)!r} is not supported: "
            "taskflow runs inference only; feed training_mode=False or drop the input",
            [("Dropout", "")])
    return data, np.ones(data.shape, dtype=bool)
