"""Activations (elementwise) and Softmax, LogSoftmax, Hardmax (kind "reduce": along one axis).

Each reference is its ONNX formula. float16/bfloat16 inputs are computed in float32 and rounded
once at the end (:func:`half_in_float32`), so multi-step formulas such as Gelu or Mish do not
pile up half-precision rounding; the output dtype is always the input's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .elementwise import HALF_DTYPES, erf_float64, erfc_float32, per_element, quiet
from .registry import register

#: exp, sum and divide per element, plus the max-subtraction that keeps exp from overflowing.
SOFTMAX_FLOPS_PER_ELEMENT = 5
#: Gelu: erf (see elementwise.ERF_FLOPS_PER_ELEMENT) plus 4 multiply/adds.
GELU_FLOPS_PER_ELEMENT = 34
#: |x| beyond which erfc(|x| / sqrt 2) underflows to 0 in float32 (erfc(10.1) < 2**-150):
#: clamping there keeps inf finite inside erfc_float32, so Gelu(inf) = inf and Gelu(-inf) = nan
#: as in ONNX.
GELU_ERFC_XMAX = np.float32(16)
#: exp/log/tanh-based activations (Sigmoid, Softplus, Mish, Elu...): a handful of ops each.
TRANSCENDENTAL_FLOPS_PER_ELEMENT = 4


def f32(value: float) -> float:
    """ONNX float attributes are float32: their defaults are float32-rounded, as ONNX stores."""
    return float(np.float32(value))


#: HardSwish is defined as x * HardSigmoid(x) with alpha = 1/6 as a float32 attribute.
HARD_SWISH_ALPHA = f32(1 / 6)


def half_in_float32(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` on float16/bfloat16 ``x`` in float32 and cast the result back to x's dtype."""

    @functools.wraps(fn)
    def wrapper(x: np.ndarray, *args: Any, **attrs: Any) -> np.ndarray:
        wide = x.astype(np.float32) if x.dtype in HALF_DTYPES else x
        with np.errstate(all="ignore"):
            out = fn(wide, *args, **attrs)
        return np.asarray(out).astype(x.dtype, copy=False)

    return wrapper


def _text(value: str | bytes) -> str:
    """String attributes may arrive as bytes (``onnx.helper.get_attribute_value``)."""
    return value.decode() if isinstance(value, bytes) else value


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(x, 0)


# Attribute-free float activations: ONNX name -> (formula, docstring, FLOPs per element).
UNARY_ACTIVATIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], str, int]] = {
    "Sigmoid": (_sigmoid, "1 / (1 + exp(-x))", TRANSCENDENTAL_FLOPS_PER_ELEMENT),
    "Tanh": (np.tanh, "tanh(x)", TRANSCENDENTAL_FLOPS_PER_ELEMENT),
    "Softplus": (_softplus, "ln(exp(x) + 1)", TRANSCENDENTAL_FLOPS_PER_ELEMENT),
    "Softsign": (lambda x: x / (1 + np.abs(x)), "x / (1 + |x|)", 3),
    "Mish": (lambda x: x * np.tanh(_softplus(x)), "x * tanh(ln(1 + exp(x)))",
             2 * TRANSCENDENTAL_FLOPS_PER_ELEMENT),
    "HardSwish": (lambda x: x * np.clip(HARD_SWISH_ALPHA * x + 0.5, 0, 1),
                  "x * max(0, min(1, x/6 + 1/2))", 5),
}


def _activation(name: str, formula: Callable[[np.ndarray], np.ndarray],
                doc: str) -> Callable[..., Any]:
    def reference(x: np.ndarray) -> np.ndarray:
        return formula(x)

    reference.__name__ = reference.__qualname__ = name.lower()
    reference.__doc__ = doc
    return half_in_float32(reference)


for _name, (_formula, _doc, _flops) in UNARY_ACTIVATIONS.items():
    register(_name, "elementwise", flops=per_element(_flops))(_activation(_name, _formula, _doc))


@register("Relu", "elementwise")
@quiet
def relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0) (nan stays nan)"""
    return np.maximum(x, 0)


@register("LeakyRelu", "elementwise", flops=per_element(2))
@half_in_float32
def leaky_relu(x: np.ndarray, *, alpha: float = f32(0.01)) -> np.ndarray:
    """x if x >= 0 else alpha * x"""
    return np.where(x >= 0, x, alpha * x)


@register("PRelu", "elementwise", flops=per_element(2))
@half_in_float32
def prelu(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """x if x >= 0 else slope * x (slope broadcasts to x)"""
    return np.where(x >= 0, x, slope.astype(x.dtype) * x)


@register("ThresholdedRelu", "elementwise")
@half_in_float32
def thresholded_relu(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """x if x > alpha else 0"""
    return np.where(x > alpha, x, 0)


@register("Clip", "elementwise", flops=per_element(2))
@quiet
def clip(x: np.ndarray, min: np.ndarray | None = None,
         max: np.ndarray | None = None) -> np.ndarray:
    """min(max(x, min), max): max wins when min > max"""
    out = x
    if min is not None and min.size:
        out = np.maximum(out, min.astype(x.dtype))
    if max is not None and max.size:
        out = np.minimum(out, max.astype(x.dtype))
    return out


@register("HardSigmoid", "elementwise", flops=per_element(4))
@half_in_float32
def hard_sigmoid(x: np.ndarray, *, alpha: float = f32(0.2), beta: float = 0.5) -> np.ndarray:
    """max(0, min(1, alpha * x + beta))"""
    return np.clip(alpha * x + beta, 0, 1)


@register("Gelu", "elementwise", flops=per_element(GELU_FLOPS_PER_ELEMENT))
@half_in_float32
def gelu(x: np.ndarray, *, approximate: str = "none") -> np.ndarray:
    """x/2 * (1 + erf(x/sqrt(2))); "tanh": x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))"""
    mode = _text(approximate)
    if mode not in ("none", "tanh"):
        raise ValueError(f"Gelu: approximate={approximate!r}; expected 'none' or 'tanh'")
    if x.dtype != np.float32:  # float64 keeps the formula's own float64 steps
        if mode == "none":
            return 0.5 * x * (1 + erf_float64(x / math.sqrt(2)))
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    x1 = np.atleast_1d(x)  # the in-place steps need arrays, not 0-d numpy scalars
    return (_gelu_float32(x1) if mode == "none" else _gelu_tanh_float32(x1)).reshape(x.shape)


def _gelu_float32(x: np.ndarray) -> np.ndarray:
    """x * Phi(x) in float32 through erfc, so Phi(x) = erfc(-x/sqrt 2)/2 never cancels for x < 0
    (1 + erf(x/sqrt 2) would lose every digit below -4): < 6e-7 relative error, no float64."""
    z = np.abs(x)
    np.minimum(z, GELU_ERFC_XMAX, out=z)
    h = erfc_float32(z, square_scale=0.5)  # erfc(|x| / sqrt 2) = 2 * Phi(-|x|)
    h *= np.float32(0.5)
    np.subtract(np.float32(1), h, out=h, where=x >= 0)  # Phi(x) = 1 - Phi(-x)
    h *= x
    return h


def _gelu_tanh_float32(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(2u) with u = sqrt(2/pi) (x + 0.044715 x^3), the same as x/2 (1 + tanh u)
    without its cancellation for x << 0."""
    u = x * x
    u *= np.float32(0.044715)
    u += np.float32(1)
    u *= x
    u *= np.float32(-2 * math.sqrt(2 / math.pi))
    np.exp(u, out=u)  # inf for x << 0: x / inf = -0, the limit
    u += np.float32(1)
    return np.divide(x, u, out=u)


@register("Swish", "elementwise", flops=per_element(TRANSCENDENTAL_FLOPS_PER_ELEMENT + 1))
@half_in_float32
def swish(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """x * sigmoid(alpha * x) (opset 24; alpha = 1 is SiLU)"""
    return x * _sigmoid(np.asarray(alpha, x.dtype) * x)


@register("Elu", "elementwise", flops=per_element(TRANSCENDENTAL_FLOPS_PER_ELEMENT))
@half_in_float32
def elu(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """x if x >= 0 else alpha * (exp(x) - 1)"""
    return np.where(x >= 0, x, alpha * np.expm1(x))


@register("Selu", "elementwise", flops=per_element(TRANSCENDENTAL_FLOPS_PER_ELEMENT))
@half_in_float32
def selu(x: np.ndarray, *, alpha: float = 1.67326319217681884765625,
         gamma: float = 1.05070102214813232421875) -> np.ndarray:
    """gamma * (x if x > 0 else alpha * (exp(x) - 1))"""
    return gamma * np.where(x > 0, x, alpha * np.expm1(x))


@register("Celu", "elementwise", flops=per_element(TRANSCENDENTAL_FLOPS_PER_ELEMENT))
@half_in_float32
def celu(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1))"""
    return np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(x / alpha))


# --- along one axis -------------------------------------------------------------------
def _softmax_flops(in_shapes: Any, out_shapes: Any, **attrs: Any) -> int:
    return SOFTMAX_FLOPS_PER_ELEMENT * math.prod(in_shapes[0])


def _shifted(x: np.ndarray, axis: int) -> np.ndarray:
    """x - max(x) along axis, so exp cannot overflow (an all -inf row stays nan, as in ORT)."""
    return x - np.max(x, axis=axis, keepdims=True, initial=-np.inf)


@register("Softmax", "reduce", flops=_softmax_flops)
@half_in_float32
def softmax(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """exp(x) / sum(exp(x), axis)"""
    e = np.exp(_shifted(x, axis))
    return e / np.sum(e, axis=axis, keepdims=True)


@register("LogSoftmax", "reduce", flops=_softmax_flops)
@half_in_float32
def log_softmax(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """x - ln(sum(exp(x), axis))"""
    z = _shifted(x, axis)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


@register("Hardmax", "reduce")
def hardmax(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """1 where x is the first maximum along axis, else 0"""
    out = np.zeros_like(x)
    if x.size == 0:
        return out
    np.put_along_axis(out, np.argmax(x, axis=axis, keepdims=True), 1, axis=axis)
    return out
