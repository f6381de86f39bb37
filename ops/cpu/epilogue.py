"""The fused epilogue of FusedConv/FusedGemm/FusedMatMul: ``act(y + bias + z)`` in place.

One pass over the GEMM output while it is hot: per row, add the bias, add the residual and
apply the activation, in the reference's order (``(y + B) + Z``, then the activation), so
the only difference from the unfused graph is the GEMM's own summation order.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import numpy as np
from numba import njit

from .. import registry
from ..conv import ACTIVATIONS
from .common import MIN_TASK_ELEMENTS, run_ranges

# Activation codes, fixed: they are compiled into cached kernels.
NONE, RELU, LEAKY_RELU, SIGMOID, TANH, CLIP, HARD_SIGMOID, GELU = range(8)
_CODES = {"": NONE, "Relu": RELU, "LeakyRelu": LEAKY_RELU, "Sigmoid": SIGMOID, "Tanh": TANH,
          "Clip": CLIP, "HardSigmoid": HARD_SIGMOID, "Gelu": GELU}


def _defaults(op: str, names: Sequence[str]) -> list[float]:
    params = inspect.signature(registry.get(op).reference).parameters
    return [float(params[n].default) for n in names]


def activation_code(activation: str | bytes,
                    params: Sequence[float] | None) -> tuple[int, float, float] | None:
    """``(code, p0, p1)`` for a fused activation, or None when the reference must judge it
    (an unknown name or too many parameters: the reference raises the right error)."""
    if isinstance(activation, bytes):
        activation = activation.decode()
    names = ACTIVATIONS.get(activation)
    params = list(params if params is not None else ())
    if names is None or len(params) > len(names):
        return None
    if activation == "Clip":
        full = params + [-math.inf, math.inf][len(params):]
    elif names:
        full = params + _defaults(activation, names)[len(params):]
    else:
        full = []
    full += [0.0] * (2 - len(full))
    return _CODES[activation], float(full[0]), float(full[1])


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
    elif act == GELU:
        for j in range(n):
            v = np.float64(src[j])  # as the reference: 1 + erf cancels for v << 0
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


@njit(cache=True, nogil=True)
def epilogue_rows(y, c0, width, bias, z, act, p0, p1, one):
    """``y[r, cols] = act(y[r, cols] + bias + z[r])`` for every row of 2-D ``y``, columns
    ``c0:c0 + width``; an empty ``bias`` or ``z`` (shape 0) is skipped."""
    for r in range(y.shape[0]):
        _epilogue_row(y, r, c0, width, bias, z, act, p0, p1, one)


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
