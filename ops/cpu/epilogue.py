"""The fused epilogue of FusedConv/FusedGemm/FusedMatMul: ``act(y + bias + z)`` in place.

One pass over the GEMM output while it is hot: per row, add the bias, add the residual and
apply the activation, in the reference's order (``(y + B) + Z``, then the activation), so
the only difference from the unfused graph is the GEMM's own summation order.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .. import registry
from ..activation import HARD_SWISH_ALPHA
from ..conv import ACTIVATIONS
from .common import MIN_TASK_ELEMENTS, run_ranges

# Activation codes, fixed: they are compiled into cached kernels.
NONE, RELU, LEAKY_RELU, SIGMOID, TANH, CLIP, HARD_SIGMOID, GELU, HARD_SWISH = range(9)
_CODES = {"": NONE, "Relu": RELU, "LeakyRelu": LEAKY_RELU, "Sigmoid": SIGMOID, "Tanh": TANH,
          "Clip": CLIP, "HardSigmoid": HARD_SIGMOID, "Gelu": GELU, "HardSwish": HARD_SWISH}


def _defaults(op: str, names: Sequence[str]) -> list[float]:
    params = inspect.signature(registry.get(op).reference).parameters
    return [float(params[n].default) for n in names]


def activation_code(activation: str | bytes,
                    params: Sequence[float] | None) -> tuple[int, float, float] | None:
    """``(code, p0, p1)`` for a fused activation, or None when the reference must judge it
    (an unknown name or too many parameters: the reference raises the right error).

    Memoised: every fused kernel asks on every call, and the answer for a layer's
    parameters never changes (it took 18 us a call, 0.9 ms of MobileNetV3's 6.3 ms at
    batch 1)."""
    if isinstance(activation, bytes):
        activation = activation.decode()
    try:
        key = tuple(float(p) for p in params) if params is not None else ()
    except (TypeError, ValueError):
        return _activation_code(activation, params)
    return _memo_activation_code(activation, key)


@functools.lru_cache(maxsize=1024)
def _memo_activation_code(activation: str, params: tuple[float, ...]
                          ) -> tuple[int, float, float] | None:
    return _activation_code(activation, params)


def _activation_code(activation: str, params: Sequence[float] | None
                     ) -> tuple[int, float, float] | None:
    names = ACTIVATIONS.get(activation)
    params = list(params if params is not None else ())
    if names is None or len(params) > len(names):
        return None
    if activation == "Clip":
        full = params + [-math.inf, math.inf][len(params):]
    elif activation == "HardSwish":  # x * HardSigmoid(x) with the reference's fixed alpha
        full = [float(HARD_SWISH_ALPHA), 0.5]
    elif activation == "Gelu":  # p0 = 1: the tanh form
        full = [1.0 if params and params[0] else 0.0]
    elif names:
        full = params + _defaults(activation, names)[len(params):]
    else:
        full = []
    full += [0.0] * (2 - len(full))
    return _CODES[activation], float(full[0]), float(full[1])


@intrinsic
def _f64_from_bits(typingctx, bits):
    """The float64 whose IEEE bits are the int64 ``bits`` (a register move, vectorisable)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@intrinsic
def _bits_of_f64(typingctx, x):
    """The IEEE bits of the float64 ``x`` as an int64."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


#: ln 2 split in two (Cody and Waite), 1 / ln 2, 1.5 * 2**52 (adding it rounds to an integer
#: and leaves that integer in the low bits), and where float32 exp stops being normal.
_LN2_HI, _LN2_LO, _INV_LN2 = 0.6931471803691238, 1.9082149292705877e-10, 1.4426950408889634
_ROUNDER, _EXP_MIN = 6755399441055744.0, -87.0


@njit(cache=True, inline="always")
def exp_nonpositive(x):
    """exp of a float64 ``x <= 0`` to 1e-9 relative (0.1 float32 ulp), for softmax rows:
    ``x = n ln2 + r``, a degree-8 Taylor polynomial of exp(r) for |r| <= ln2 / 2, times 2**n
    built from its bits. 0 below -87 (where float32 exp turns subnormal: the largest value
    dropped is 1.6e-38); NaN stays NaN. Branch-free selects and no libm call, so a loop over
    it vectorises."""
    xc = x if x > _EXP_MIN else _EXP_MIN
    t = xc * _INV_LN2 + _ROUNDER
    n = t - _ROUNDER
    r = xc - n * _LN2_HI - n * _LN2_LO
    p = 1.0 + r * (1.0 + r * (0.5 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (
        1 / 720 + r * (1 / 5040 + r * (1 / 40320))))))))
    e = p * _f64_from_bits((_bits_of_f64(t) + 1023) << 52)
    e = 0.0 if x < _EXP_MIN else e
    return x if x != x else e


@intrinsic
def _pow2_f32(typingctx, t):
    """2**n as a float32, for the float32 ``t = n + 1.5 * 2**23`` (``n`` in [-126, 127] held
    in its low mantissa bits): ``(bits(t) + 127) << 23`` in 32-bit integers, vectorisable."""
    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.add(builder.bitcast(args[0], i32), ir.Constant(i32, 127))
        return builder.bitcast(builder.shl(bits, ir.Constant(i32, 23)), ir.FloatType())
    return types.float32(types.float32), codegen


_F32_LN2_HI, _F32_LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)
_F32_INV_LN2, _F32_ROUNDER = np.float32(1.4426950408889634), np.float32(12582912.0)
_F32_EXP_MIN, _F32_ONE, _F32_ZERO = np.float32(-87.0), np.float32(1.0), np.float32(0.0)
#: Taylor coefficients 1/2 .. 1/720 of exp, as float32
_F32_C2, _F32_C3, _F32_C4, _F32_C5, _F32_C6 = (np.float32(1 / 2), np.float32(1 / 6),
                                               np.float32(1 / 24), np.float32(1 / 120),
                                               np.float32(1 / 720))


@njit(cache=True, inline="always")
def exp32_nonpositive(x):
    """exp of a float32 ``x <= 0`` in float32 arithmetic, to 3 float32 ulp: :func:`
    exp_nonpositive`'s reduction (Cody-Waite, ln2 in two parts) with a degree-6 polynomial
    (truncation 1.2e-7 at |r| = ln2 / 2) and 2**n from its bits, so a loop over it runs 8
    lanes wide (the float64 one, 4). 0 below -87; NaN stays NaN. For softmax rows, where the
    tolerance is 1e-5."""
    xc = x if x > _F32_EXP_MIN else _F32_EXP_MIN
    t = xc * _F32_INV_LN2 + _F32_ROUNDER
    n = t - _F32_ROUNDER
    r = xc - n * _F32_LN2_HI - n * _F32_LN2_LO
    p = _F32_ONE + r * (_F32_ONE + r * (_F32_C2 + r * (_F32_C3 + r * (
        _F32_C4 + r * (_F32_C5 + r * _F32_C6)))))
    e = p * _pow2_f32(t)
    e = _F32_ZERO if x < _F32_EXP_MIN else e
    return x if x != x else e


@njit(cache=True, inline="always")
def erf_fast(v):
    """erf of a float64 ``v`` to 1e-7 absolute: Eigen's rational minimax approximation on
    [-4, 4], exactly +-1 beyond (erf(4) = 1 - 1.5e-8). Branch-free, so a loop over it
    vectorises where libm's erf does not (in a kernel compiled with ``error_model="numpy"``:
    Python's division check is a branch). NaN stays NaN."""
    x = -4.0 if v < -4.0 else v
    x = 4.0 if x > 4.0 else x
    x2 = x * x
    p = x2 * -2.72614225801306e-10 + 2.77068142495902e-08
    p = x2 * p - 2.10102402082508e-06
    p = x2 * p - 5.69250639462346e-05
    p = x2 * p - 7.34990630326855e-04
    p = x2 * p - 2.95459980854025e-03
    p = x2 * p - 1.60960333262415e-02
    q = x2 * -1.45660718464996e-05 - 2.13374055278905e-04
    q = x2 * q - 1.68282697438203e-03
    q = x2 * q - 7.37332916720468e-03
    q = x2 * q - 1.42647390514189e-02
    r = x * p / q
    r = 1.0 if v > 4.0 else r
    return -1.0 if v < -4.0 else r


@njit(cache=True, inline="always")
def tanh_fast(v):
    """tanh of a float64 ``v`` to 3e-7 absolute: Eigen's rational approximation on
    [-7.9, 7.9], exactly +-1 beyond (|tanh| > 1 - 3e-7 there); branch-free like
    :func:`erf_fast`."""
    x = -7.90531110763549805 if v < -7.90531110763549805 else v
    x = 7.90531110763549805 if x > 7.90531110763549805 else x
    x2 = x * x
    p = x2 * -2.76076847742355e-16 + 2.00018790482477e-13
    p = x2 * p - 8.60467152213735e-11
    p = x2 * p + 5.12229709037114e-08
    p = x2 * p + 1.48572235717979e-05
    p = x2 * p + 6.37261928875436e-04
    p = x2 * p + 4.89352455891786e-03
    q = x2 * 1.19825839466702e-06 + 1.18534705686654e-04
    q = x2 * q + 2.26843463243900e-03
    q = x2 * q + 4.89352518554385e-03
    r = x * p / q
    r = 1.0 if v > 7.9 else r
    return -1.0 if v < -7.9 else r


# Eigen's float32 coefficients of erf_fast and tanh_fast as float32 constants, for the float32
# forms below: 8 lanes per AVX2 vector instead of 4, and vdivps instead of vdivpd.
_ERF_P = tuple(np.float32(c) for c in (
    -2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
    -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02))
_ERF_Q = tuple(np.float32(c) for c in (
    -1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
    -1.42647390514189e-02))
_TANH_P = tuple(np.float32(c) for c in (
    -2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
    1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03))
_TANH_Q = tuple(np.float32(c) for c in (
    1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03))
_F32_1, _F32_HALF, _F32_4, _F32_TANH_MAX = (np.float32(1), np.float32(0.5), np.float32(4),
                                            np.float32(7.90531110763549805))
_F32_RSQRT2, _F32_SQRT_2_PI, _F32_GELU_C = (np.float32(0.7071067811865476),
                                            np.float32(0.7978845608028654),
                                            np.float32(0.044715))


@njit(cache=True, inline="always")
def _odd_rational32(z, limit, p, q):
    """``z * P(z^2) / Q(z^2)`` for ``|z| <= limit``, and the function's saturated value
    ``sign(z)`` beyond: Eigen's erf / tanh approximations in float32 arithmetic."""
    x = -limit if z < -limit else z
    x = limit if x > limit else x
    x2 = x * x
    a = x2 * p[0] + p[1]
    for c in p[2:]:
        a = x2 * a + c
    b = x2 * q[0] + q[1]
    for c in q[2:]:
        b = x2 * b + c
    r = x * a / b
    r = _F32_1 if z > limit else r
    return -_F32_1 if z < -limit else r


@njit(cache=True, inline="always")
def gelu_erf32(v):
    """GELU (erf form) of a float32 ``v`` in float32 arithmetic: :func:`erf_fast`'s rational
    evaluated in float32, about 1 ulp of ``v`` absolute (2x the float64 form's speed)."""
    r = _odd_rational32(v * _F32_RSQRT2, _F32_4, _ERF_P, _ERF_Q)
    return _F32_HALF * v * (_F32_1 + r)


@njit(cache=True, inline="always")
def gelu_tanh32(v):
    """GELU (tanh form) of a float32 ``v`` in float32 arithmetic, like :func:`gelu_erf32`."""
    u = _F32_SQRT_2_PI * (v + _F32_GELU_C * v * v * v)
    return _F32_HALF * v * (_F32_1 + _odd_rational32(u, _F32_TANH_MAX, _TANH_P, _TANH_Q))


@njit(cache=True, inline="always")
def activate_into(src, row, act, p0, p1, one):
    """row = act(src) for 1-D arrays (the same one for in place); p0, p1 and ``one`` (1) have
    the row's dtype, so float32 stays float32 arithmetic as in the reference."""
    n = row.shape[0]
    zero = one - one
    # Unconditional stores of selects (no branches in the loops): they vectorise.
    if act == NONE:
        for j in range(n):
            row[j] = src[j]
    elif act == RELU:
        for j in range(n):
            v = src[j]
            row[j] = zero if v < zero else v  # not max(): nan stays nan, as np.maximum
    elif act == LEAKY_RELU:
        for j in range(n):
            v = src[j]
            row[j] = v if v >= zero else v * p0
    elif act == SIGMOID:
        for j in range(n):
            v = src[j]
            e = np.exp(-abs(v))
            row[j] = one / (one + e) if v >= zero else e / (one + e)
    elif act == TANH:
        for j in range(n):
            row[j] = np.tanh(src[j])
    elif act == CLIP:
        for j in range(n):
            v = src[j]
            v = p0 if v < p0 else v
            row[j] = p1 if v > p1 else v
    elif act == HARD_SIGMOID:
        for j in range(n):
            v = p0 * src[j] + p1
            v = zero if v < zero else v
            row[j] = one if v > one else v
    elif act == HARD_SWISH:  # p0 = 1/6, p1 = 1/2: x * HardSigmoid(x), in the reference's order
        for j in range(n):
            x = src[j]
            v = p0 * x + p1
            v = zero if v < zero else v
            row[j] = x * (one if v > one else v)
    elif act == GELU and p0 != zero and row.itemsize == 4:  # tanh form, float32 arithmetic
        for j in range(n):
            row[j] = gelu_tanh32(src[j])
    elif act == GELU and p0 != zero:
        for j in range(n):
            v = np.float64(src[j])
            u = 0.7978845608028654 * (v + 0.044715 * v * v * v)
            row[j] = 0.5 * v * (1.0 + math.tanh(u))
    elif act == GELU and row.itemsize == 4:  # float32: the erf form in float32 arithmetic
        for j in range(n):
            row[j] = gelu_erf32(src[j])
    elif act == GELU:
        for j in range(n):
            v = np.float64(src[j])
            row[j] = 0.5 * v * (1.0 + math.erf(v * 0.7071067811865476))


@njit(cache=True, inline="always")
def activate_row(row, act, p0, p1, one):
    """Apply activation ``act`` to a 1-D array in place."""
    if act != NONE:
        activate_into(row, row, act, p0, p1, one)


@njit(cache=True, inline="always")
def _epilogue_row(y, r, c0, width, bias, z, act, p0, p1, one):
    row = y[r, c0:c0 + width]  # a contiguous row (of a Concat's buffer when c0 > 0)
    m = row.shape[0]
    if bias.shape[0] == m and m > 0:
        for j in range(m):
            row[j] += bias[j]
    if z.shape[0] == y.shape[0] and m > 0:
        for j in range(m):
            row[j] += z[r, j]
    activate_row(row, act, p0, p1, one)


@njit(cache=True, nogil=True, error_model="numpy")  # numpy: divisions vectorise (erf_fast)
def epilogue_rows(y, c0, width, bias, z, act, p0, p1, one):
    """``y[r, cols] = act(y[r, cols] + bias + z[r])`` for every row of 2-D ``y``, columns
    ``c0:c0 + width``; an empty ``bias`` or ``z`` (shape 0) is skipped."""
    if width > 0 and bias.shape[0] == width and z.shape[0] != y.shape[0] \
            and (act == NONE or act == RELU or act == CLIP or act == HARD_SWISH):
        _bias_activation_rows(y, c0, width, bias, act, p0, p1, one)
        return
    for r in range(y.shape[0]):
        _epilogue_row(y, r, c0, width, bias, z, act, p0, p1, one)


@njit(cache=True, inline="always")
def _bias_activation_rows(y, c0, width, bias, act, p0, p1, one):
    """Bias and the convolutions' common activations (NONE, RELU, CLIP, HARD_SWISH) in one
    pass per row, one loop per activation: in the general row function the same loops ran
    at half this speed (MobileNetV3's 16 -> 72 1x1 with ReLU: two passes over each row)."""
    zero = one - one
    for r in range(y.shape[0]):
        row = y[r, c0:c0 + width]
        if act == NONE:
            for j in range(width):
                row[j] += bias[j]
        elif act == RELU:
            for j in range(width):
                v = row[j] + bias[j]
                row[j] = zero if v < zero else v
        elif act == CLIP:
            for j in range(width):
                v = row[j] + bias[j]
                v = p0 if v < p0 else v
                row[j] = p1 if v > p1 else v
        else:  # HARD_SWISH, as activate_into
            for j in range(width):
                x = row[j] + bias[j]
                v = p0 * x + p1
                v = zero if v < zero else v
                row[j] = x * (one if v > one else v)


_EMPTY = {}


def empty_operand(dtype: np.dtype, ndim: int) -> np.ndarray:
    """A shape-0 array standing for "no bias" / "no residual" (one per dtype and rank)."""
    key = (np.dtype(dtype).str, ndim)
    if key not in _EMPTY:
        _EMPTY[key] = np.zeros((0,) * ndim, dtype)
    return _EMPTY[key]


def apply_epilogue(y2d: np.ndarray, bias: np.ndarray | None, z2d: np.ndarray | None,
                   act: tuple[int, float, float], parallel: bool = True, c0: int = 0,
                   width: int | None = None) -> None:
    """The epilogue on columns ``c0:c0 + width`` (default: all) of ``y2d`` (C-contiguous
    rows), unless there is nothing to do; over the kernel threads when ``parallel``, else on
    the calling thread (inside a kernel's task)."""
    code, p0, p1 = act
    if bias is None and z2d is None and code == NONE:
        return
    width = y2d.shape[1] - c0 if width is None else width
    t = y2d.dtype.type
    b = empty_operand(y2d.dtype, 1) if bias is None else bias
    no_z = empty_operand(y2d.dtype, 2)
    if not parallel:
        epilogue_rows(y2d, c0, width, b, no_z if z2d is None else z2d, code, t(p0), t(p1),
                      t(1))
        return

    def rows(lo: int, hi: int) -> None:
        epilogue_rows(y2d[lo:hi], c0, width, b, no_z if z2d is None else z2d[lo:hi], code,
                      t(p0), t(p1), t(1))

    run_ranges(rows, y2d.shape[0], max(1, MIN_TASK_ELEMENTS // max(1, y2d.shape[1])))
