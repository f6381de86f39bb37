"""gpu kernels of the activations and of Softmax/LogSoftmax (:mod:`taskflow.ops.activation`).

float16 inputs run in float32 and round once, as the references do (:func:`.common.in_float32`).
Gelu keeps the reference's float32 formulation through erfc (no cancellation for x < 0),
with ``xp.where`` in place of a ufunc's ``where=`` (which CuPy's ufuncs do not take).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import activation as ref
from ..device import is_device_array
from .common import gpu_kernel, in_float32, operands
from .elementwise import erf_float64, erfc_float32


def _sigmoid(xp: Any, x: Any) -> Any:
    e = xp.exp(-xp.abs(x))  # never overflows
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _softplus(xp: Any, x: Any) -> Any:
    return xp.logaddexp(x, 0)


#: The attribute-free activations of ``activation.UNARY_ACTIVATIONS``, as ``f(xp, x)``.
UNARY: dict[str, Callable[[Any, Any], Any]] = {
    "Sigmoid": _sigmoid,
    "Tanh": lambda xp, x: xp.tanh(x),
    "Softplus": _softplus,
    "Softsign": lambda xp, x: x / (1 + xp.abs(x)),
    "Mish": lambda xp, x: x * xp.tanh(_softplus(xp, x)),
    "HardSwish": lambda xp, x: x * xp.clip(ref.HARD_SWISH_ALPHA * x + 0.5, 0, 1),
}


def _unary(formula: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    @in_float32
    def kernel(x: Any) -> Any:
        xp, (x,) = operands(x)
        return formula(xp, x)

    return kernel


for _name, _formula in UNARY.items():
    gpu_kernel(_name, _unary(_formula))


@gpu_kernel("Relu")
def relu_gpu(x: Any) -> Any:
    xp, (x,) = operands(x)
    return xp.maximum(x, 0).astype(x.dtype, copy=False)  # (int8 stays int8 on any module)


@gpu_kernel("LeakyRelu")
@in_float32
def leaky_relu_gpu(x: Any, *, alpha: float = ref.f32(0.01)) -> Any:
    xp, (x,) = operands(x)
    return xp.where(x >= 0, x, alpha * x)


@gpu_kernel("PRelu")
@in_float32
def prelu_gpu(x: Any, slope: Any) -> Any:
    xp, (x, slope) = operands(x, slope)
    return xp.where(x >= 0, x, slope.astype(x.dtype) * x)


@gpu_kernel("ThresholdedRelu")
@in_float32
def thresholded_relu_gpu(x: Any, *, alpha: float = 1.0) -> Any:
    xp, (x,) = operands(x)
    return xp.where(x > alpha, x, 0)


@gpu_kernel("Clip")
def clip_gpu(x: Any, min: Any = None, max: Any = None) -> Any:
    xp, (out,) = operands(x)
    for bound, limit in ((min, xp.maximum), (max, xp.minimum)):
        if bound is None or not bound.size:
            continue
        if bound.ndim == 0 and not is_device_array(bound):  # a host scalar: no upload
            out = limit(out, out.dtype.type(bound))
        else:
            out = limit(out, xp.asarray(bound).astype(out.dtype))
    return out


@gpu_kernel("HardSigmoid")
@in_float32
def hard_sigmoid_gpu(x: Any, *, alpha: float = ref.f32(0.2), beta: float = 0.5) -> Any:
    xp, (x,) = operands(x)
    return xp.clip(alpha * x + beta, 0, 1)


@gpu_kernel("Gelu")
@in_float32
def gelu_gpu(x: Any, *, approximate: str = "none") -> Any:
    mode = ref._text(approximate)
    if mode not in ("none", "tanh"):
        raise ValueError(f"Gelu: approximate={approximate!r}; expected 'none' or 'tanh'")
    xp, (x,) = operands(x)
    if x.dtype != np.float32:  # float64 keeps the formula's own float64 steps
        if mode == "none":
            return 0.5 * x * (1 + erf_float64(x / math.sqrt(2)))
        return 0.5 * x * (1 + xp.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    x1 = xp.atleast_1d(x)
    y = _gelu_float32(xp, x1) if mode == "none" else _gelu_tanh_float32(xp, x1)
    return y.reshape(x.shape)


def _gelu_float32(xp: Any, x: Any) -> Any:
    """x * Phi(x) through erfc(|x| / sqrt 2), as ``activation._gelu_float32``."""
    z = xp.minimum(xp.abs(x), ref.GELU_ERFC_XMAX)
    h = erfc_float32(z, square_scale=0.5)
    h *= np.float32(0.5)
    h = xp.where(x >= 0, np.float32(1) - h, h)  # Phi(x) = 1 - Phi(-x)
    h *= x
    return h


def _gelu_tanh_float32(xp: Any, x: Any) -> Any:
    """x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3), as ``_gelu_tanh_float32``."""
    u = x * x
    u *= np.float32(0.044715)
    u += np.float32(1)
    u *= x
    u *= np.float32(-2 * math.sqrt(2 / math.pi))
    xp.exp(u, out=u)
    u += np.float32(1)
    return xp.divide(x, u, out=u)


@gpu_kernel("Swish")
@in_float32
def swish_gpu(x: Any, *, alpha: float = 1.0) -> Any:
    xp, (x,) = operands(x)
    return x * _sigmoid(xp, x.dtype.type(alpha) * x)


@gpu_kernel("Elu")
@in_float32
def elu_gpu(x: Any, *, alpha: float = 1.0) -> Any:
    xp, (x,) = operands(x)
    return xp.where(x >= 0, x, alpha * xp.expm1(x))


@gpu_kernel("Selu")
@in_float32
def selu_gpu(x: Any, *, alpha: float = 1.67326319217681884765625,
             gamma: float = 1.05070102214813232421875) -> Any:
    xp, (x,) = operands(x)
    return gamma * xp.where(x > 0, x, alpha * xp.expm1(x))


@gpu_kernel("Celu")
@in_float32
def celu_gpu(x: Any, *, alpha: float = 1.0) -> Any:
    xp, (x,) = operands(x)
    return xp.maximum(x, 0) + xp.minimum(0, alpha * xp.expm1(x / alpha))


def _shifted(xp: Any, x: Any, axis: int) -> Any:
    """x - max(x) along axis (an all -inf row stays nan, as in ORT). CuPy's max takes no
    ``initial``, which only the reference's empty inputs need: those pass through."""
    if x.size == 0:
        return x
    return x - xp.max(x, axis=axis, keepdims=True)


@gpu_kernel("Softmax")
@in_float32
def softmax_gpu(x: Any, *, axis: int = -1) -> Any:
    xp, (x,) = operands(x)
    e = xp.exp(_shifted(xp, x, axis))
    return e / xp.sum(e, axis=axis, keepdims=True)


@gpu_kernel("LogSoftmax")
@in_float32
def log_softmax_gpu(x: Any, *, axis: int = -1) -> Any:
    xp, (x,) = operands(x)
    z = _shifted(xp, x, axis)
    return z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))
