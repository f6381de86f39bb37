"""Numba kernels for elementwise ops, Softmax and Concat, keeping the input's memory layout.

An activation or arithmetic op reads its input in *memory* order, whatever it is (NCHW, or
the channels-last arrays the convolution kernels return), and writes its output in the same
order, so a channels-last network stays channels-last and nothing is transposed. Binary ops
cover what networks use (same shape and layout, a scalar, or a per-channel constant such as
DenseNet's (C, 1, 1) scale and shift); any other broadcast, and non-float dtypes, run the
reference.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import numpy as np
from numba import njit

from .. import registry
from ..registry import register_kernel
from .common import (
    MIN_TASK_ELEMENTS,
    fast_dtype,
    is_channels_last,
    nchw_view,
    new_output,
    run_ranges,
    vector,
)
from .epilogue import activate_into, activation_code, erf_fast, tanh_fast

#: Below this many elements numpy's own SIMD loop (one thread) is as fast as ours: entering a
#: Numba kernel and the thread pool costs a few microseconds.
MIN_ELEMENTS = 1 << 15
#: Relu splits over the kernel threads from this size (16 MiB of float32): below it one
#: numpy pass is faster than the split's set-up (measured on ShuffleNet's and DenseNet's).
RELU_PARALLEL_ELEMENTS = 1 << 22


def memory_order(x: np.ndarray) -> tuple[int, ...] | None:
    """The axis permutation that makes ``x`` C-contiguous, or None if it is not dense."""
    if x.flags.c_contiguous:
        return tuple(range(x.ndim))
    perm = tuple(sorted(range(x.ndim), key=lambda a: -x.strides[a]))
    return perm if x.transpose(perm).flags.c_contiguous else None


def flat(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """``x``'s elements as a 1-D view in memory order, and that order (copies if not dense)."""
    perm = memory_order(x)
    if perm is None:
        x, perm = np.ascontiguousarray(x), tuple(range(x.ndim))
    return x.transpose(perm).reshape(-1), perm


def unflat(y: np.ndarray, shape: tuple[int, ...], perm: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`flat`: a 1-D result laid out like the input, as ``shape``."""
    return y.reshape([shape[a] for a in perm]).transpose(np.argsort(perm))


# --- unary activations -----------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _activate(x, y, act, p0, p1, one):
    activate_into(x, y, act, p0, p1, one)


def _unary_kernel(op: str, names: Sequence[str]):
    reference = registry.get(op).reference
    defaults = inspect.signature(reference).parameters

    def kernel(x: np.ndarray, *bounds: np.ndarray | None, **attrs) -> np.ndarray:
        if op == "Clip":  # bounds are inputs; an omitted or empty one does not clamp
            if any(b is not None and b.size > 1 for b in bounds):
                return reference(x, *bounds, **attrs)
            given = [None if b is None or b.size == 0 else float(b.reshape(())) for b in bounds]
            given += [None] * (2 - len(given))
            params = [-math.inf if given[0] is None else given[0],
                      math.inf if given[1] is None else given[1]]
        else:
            params = [float(attrs.get(n, defaults[n].default)) for n in names]
        if not fast_dtype(x) or x.size < MIN_ELEMENTS:
            return reference(x, *bounds, **attrs)
        t = x.dtype.type
        if op == "Relu" and x.size < RELU_PARALLEL_ELEMENTS:
            # numpy's SIMD maximum, the reference's own ufunc (bit-identical), with the
            # output in the input's layout (empty_like keeps it) and no Python set-up
            y = np.empty_like(x)
            return np.maximum(x, t(0), out=y)
        code, p0, p1 = activation_code(op, params)
        xf, perm = flat(x)
        y = new_output(xf.shape, xf.dtype)
        if op == "Relu":
            run_ranges(lambda lo, hi: np.maximum(xf[lo:hi], t(0), out=y[lo:hi]), xf.size)
        else:
            run_ranges(lambda lo, hi: _activate(xf[lo:hi], y[lo:hi], code, t(p0), t(p1),
                                                t(1)), xf.size)
        return unflat(y, x.shape, perm)

    kernel.__name__ = kernel.__qualname__ = f"{reference.__name__}_cpu"
    kernel.__doc__ = f"{op} in one parallel pass over memory order (layout kept)."
    return kernel


# Activations shared with the fused epilogues: one compiled loop serves all of them.
for _op, _names in {"Relu": (), "LeakyRelu": ("alpha",), "Sigmoid": (), "Tanh": (),
                    "Clip": (), "HardSigmoid": ("alpha", "beta"), "HardSwish": ()}.items():
    register_kernel(_op, "cpu")(_unary_kernel(_op, _names))


# --- binary arithmetic ----------------------------------------------------------------------
ADD, SUB, MUL, DIV = range(4)
_BINARY = {"Add": ADD, "Sub": SUB, "Mul": MUL, "Div": DIV}


@njit(cache=True, inline="always")
def _apply(op, y, a, b):
    """y[j] = a[j] (op) b[j] over 1-D arrays; a length-1 ``a`` or ``b`` is a scalar. The op
    is chosen outside the loops so each loop vectorises."""
    n = y.shape[0]
    if a.shape[0] == 1:
        s = a[0]
        if op == ADD:
            for j in range(n):
                y[j] = s + b[j]
        elif op == SUB:
            for j in range(n):
                y[j] = s - b[j]
        elif op == MUL:
            for j in range(n):
                y[j] = s * b[j]
        else:
            for j in range(n):
                y[j] = s / b[j]
    elif b.shape[0] == 1:
        s = b[0]
        if op == ADD:
            for j in range(n):
                y[j] = a[j] + s
        elif op == SUB:
            for j in range(n):
                y[j] = a[j] - s
        elif op == MUL:
            for j in range(n):
                y[j] = a[j] * s
        else:
            for j in range(n):
                y[j] = a[j] / s
    elif op == ADD:
        for j in range(n):
            y[j] = a[j] + b[j]
    elif op == SUB:
        for j in range(n):
            y[j] = a[j] - b[j]
    elif op == MUL:
        for j in range(n):
            y[j] = a[j] * b[j]
    else:
        for j in range(n):
            y[j] = a[j] / b[j]


@njit(cache=True, nogil=True, error_model="numpy")
def _binary_rows(x, v, y, op, swap, per_row, r0):
    """y[r] = x[r] (op) v (per_row False: v along the row) or v[(r0 + r) % len(v)] (per_row
    True); ``swap`` puts v on the left. A v of length 1 is a scalar."""
    nv = v.shape[0]
    for r in range(x.shape[0]):
        k = (r0 + r) % nv
        w = v[k:k + 1] if per_row or nv == 1 else v
        if swap:
            _apply(op, y[r], w, x[r])
        else:
            _apply(op, y[r], x[r], w)


@njit(cache=True, nogil=True, error_model="numpy")
def _binary_same(a, b, y, op):
    _apply(op, y, a, b)


def _rows(x2d: np.ndarray, v: np.ndarray, y2d: np.ndarray, op: int, swap: bool,
          per_row: bool) -> None:
    """:func:`_binary_rows` over row ranges on the kernel threads."""
    def part(lo: int, hi: int) -> None:
        _binary_rows(x2d[lo:hi], v, y2d[lo:hi], op, swap, per_row, lo)

    run_ranges(part, x2d.shape[0], max(1, MIN_TASK_ELEMENTS // max(1, x2d.shape[1])))


def _channel_vector(v: np.ndarray, x: np.ndarray) -> np.ndarray | None:
    """v as a length-C vector if it broadcasts against 4-D x along axis 1 only, else None."""
    if v.ndim > 4 or x.ndim != 4:
        return None
    full = (1,) * (4 - v.ndim) + v.shape
    if full[0] == 1 and full[2] == full[3] == 1 and full[1] == x.shape[1]:
        return vector(v)
    return None


def _binary_fast(op: int, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    if not fast_dtype(a, b):
        return None
    big, small, swap = (a, b, False) if a.size >= b.size else (b, a, True)
    if big.size < MIN_ELEMENTS or np.broadcast_shapes(a.shape, b.shape) != big.shape:
        return None
    if small.shape == big.shape:
        pa, pb = memory_order(a), memory_order(b)
        if pa is None or pa != pb:
            return None
        af, perm = flat(a)
        bf = flat(b)[0]
        y = new_output(af.shape, af.dtype)
        run_ranges(lambda lo, hi: _binary_same(af[lo:hi], bf[lo:hi], y[lo:hi], op), af.size)
        return unflat(y, a.shape, perm)
    if small.size == 1:
        xf, perm = flat(big)
        y = new_output(xf.shape, xf.dtype)
        s1 = vector(small)  # a length-1 operand is a scalar

        def part(lo: int, hi: int) -> None:
            if swap:
                _binary_same(s1, xf[lo:hi], y[lo:hi], op)
            else:
                _binary_same(xf[lo:hi], s1, y[lo:hi], op)

        run_ranges(part, xf.size)
        return unflat(y, big.shape, perm)
    vec = _channel_vector(small, big)
    if vec is None:
        return None
    n, c, h, w = big.shape
    if is_channels_last(big):
        xh = big.transpose(0, 2, 3, 1)
        y = new_output(xh.shape, xh.dtype)
        _rows(xh.reshape(-1, c), vec, y.reshape(-1, c), op, swap, False)
        return nchw_view(y)
    if big.flags.c_contiguous:
        y = new_output(big.shape, big.dtype)
        _rows(big.reshape(n * c, h * w), vec, y.reshape(n * c, h * w), op, swap, True)
        return y
    return None


def _binary_kernel(op: str):
    reference = registry.get(op).reference
    code = _BINARY[op]

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        y = _binary_fast(code, a, b)
        return reference(a, b) if y is None else y

    kernel.__name__ = kernel.__qualname__ = f"{reference.__name__}_cpu"
    kernel.__doc__ = f"{op}: same-layout, scalar or per-channel operands in one parallel pass."
    return kernel


for _op in _BINARY:
    register_kernel(_op, "cpu")(_binary_kernel(_op))


# --- Softmax, Gelu, Erf -----------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _softmax(x, y, lo, hi):
    """Softmax over axis 1 of x (pre, n, post), for rows t = (p, q) in [lo, hi); float64
    sums."""
    n, post = x.shape[1], x.shape[2]
    for t in range(lo, hi):
        p = t // post
        q = t % post
        top = -np.inf
        for i in range(n):
            if x[p, i, q] > top or x[p, i, q] != x[p, i, q]:
                top = x[p, i, q]
        total = 0.0
        for i in range(n):
            e = np.exp(x[p, i, q] - top)
            y[p, i, q] = e
            total += e
        for i in range(n):
            y[p, i, q] = y[p, i, q] / total


@register_kernel("Softmax", "cpu")
def softmax_cpu(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis``: max, exp and float64 sum per row, in one task per row."""
    reference = registry.get("Softmax").reference
    if not fast_dtype(x) or not -x.ndim <= axis < x.ndim:
        return reference(x, axis=axis)
    if x.size < MIN_ELEMENTS:  # small (a classifier's last layer): numpy's SIMD exp wins
        return _small_softmax(x, axis)
    a = axis % x.ndim
    shape3 = (int(np.prod(x.shape[:a])), x.shape[a], int(np.prod(x.shape[a + 1:])))
    xc = np.ascontiguousarray(x)
    y = np.empty_like(xc)
    x3, y3 = xc.reshape(shape3), y.reshape(shape3)
    run_ranges(lambda lo, hi: _softmax(x3, y3, lo, hi), shape3[0] * shape3[2],
               max(1, MIN_TASK_ELEMENTS // shape3[1]))
    return y


def _small_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """The reference's own numpy steps, in place in one output array instead of three
    temporaries: bit-identical, and 5-12% faster on a (32, 1000) classifier output."""
    y = np.subtract(x, np.max(x, axis=axis, keepdims=True, initial=-np.inf))
    np.exp(y, out=y)
    np.divide(y, np.sum(y, axis=axis, keepdims=True), out=y)
    return y


GELU_ERF, GELU_TANH, ERF = range(3)


@njit(cache=True, nogil=True, error_model="numpy")  # no division check: loops vectorise
def _erf_family(x, y, mode):
    """Gelu (erf or tanh form) or Erf in float64; a float32 Gelu through the branch-free
    erf_fast and tanh_fast (1e-7 and 3e-7 absolute, vectorised: 2-10x libm's speed), the rest
    through libm."""
    k = math.sqrt(2.0 / math.pi)
    fast = y.itemsize == 4  # float32 output: the approximations' 1e-7 is below its ulp
    for i in range(x.shape[0]):
        w = np.float64(x[i])
        if mode == GELU_ERF and fast:
            y[i] = 0.5 * w * (1.0 + erf_fast(w * 0.7071067811865476))
        elif mode == GELU_ERF:
            y[i] = 0.5 * w * (1.0 + math.erf(w * 0.7071067811865476))
        elif mode == GELU_TANH and fast:
            y[i] = 0.5 * w * (1.0 + tanh_fast(k * (w + 0.044715 * w * w * w)))
        elif mode == GELU_TANH:
            y[i] = 0.5 * w * (1.0 + math.tanh(k * (w + 0.044715 * w * w * w)))
        else:
            y[i] = math.erf(w)


def _erf_family_cpu(x: np.ndarray, mode: int) -> np.ndarray | None:
    if not fast_dtype(x) or x.size == 0:
        return None
    xf, perm = flat(x)
    y = np.empty_like(xf)
    run_ranges(lambda lo, hi: _erf_family(xf[lo:hi], y[lo:hi], mode), xf.size,
               MIN_TASK_ELEMENTS // 16)  # ~30 flops per element
    return unflat(y, x.shape, perm)


@register_kernel("Gelu", "cpu")
def gelu_cpu(x: np.ndarray, *, approximate: str = "none") -> np.ndarray:
    """Gelu in float64 per element (libm erf/tanh), layout kept."""
    mode = approximate.decode() if isinstance(approximate, bytes) else approximate
    y = None
    if mode in ("none", "tanh"):
        y = _erf_family_cpu(x, GELU_ERF if mode == "none" else GELU_TANH)
    return registry.get("Gelu").reference(x, approximate=approximate) if y is None else y


@register_kernel("Erf", "cpu")
def erf_cpu(x: np.ndarray) -> np.ndarray:
    """Erf in float64 per element (libm erf), layout kept."""
    y = _erf_family_cpu(x, ERF)
    return registry.get("Erf").reference(x) if y is None else y
