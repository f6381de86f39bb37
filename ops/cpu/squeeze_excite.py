"""FusedSqueezeExcite (see :mod:`taskflow.ops.squeeze_excite`): one sweep per sample.

For each sample the kernel sums the feature map per channel, runs the two small GEMVs
(Cr x C and back: a BLAS call per sample would cost more in call overhead than the
arithmetic) with their bias and activations, and writes ``x * gate`` while the sample is
still in cache, so x is read from memory once and the gate never exists as an (N, C, 1, 1)
tensor. Ranges of samples are the tasks the kernel threads share, one compiled call each.
Channels-last inputs (what the convolution kernels return) give a channels-last output;
C-ordered NCHW inputs are handled in their own order. The pool sums in float64 (within an
ulp of the reference's float32 mean); the GEMVs sum in the input's dtype, as the reference's
1x1 convolutions do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit, types
from numba.extending import overload

from ..registry import register_kernel
from ..squeeze_excite import POOLS, fused_squeeze_excite
from .common import (
    fast_dtype,
    is_channels_last,
    nchw_view,
    new_output,
    packed,
    run_ranges,
    vector,
)
from .epilogue import activate_row, activation_code
from .simd import fma8, load8, splat8, store8


@njit(cache=True, inline="always")
def _pool(x, n, channels_last, total, mean):
    """mean[c] = mean over positions of x[n, ., c], summed in float64 (``total``)."""
    c = mean.shape[0]
    hw = x.shape[1] if channels_last else x.shape[2]
    if channels_last:
        for k in range(c):
            total[k] = 0.0
        for p in range(hw):
            xr = x[n, p]
            for k in range(c):
                total[k] += xr[k]
    else:
        for k in range(c):
            xr = x[n, k]
            acc = 0.0
            for p in range(hw):
                acc += xr[p]
            total[k] = acc
    for k in range(c):
        mean[k] = total[k] / hw


def _gemv_blocks(wt, v, out):
    """out[:r0] += wt[:, :r0].T @ v for the returned r0 (a multiple of 8): float32 in vector
    registers, other dtypes r0 = 0 (:func:`_gemv` does the rest)."""


@overload(_gemv_blocks, jit_options={"cache": True})
def _gemv_blocks_impl(wt, v, out):
    if not (wt.dtype == v.dtype == out.dtype == types.float32):
        return lambda wt, v, out: 0

    def blocks(wt, v, out):
        # 32 outputs held in four vector registers across all k updates: the loop in _gemv
        # loads and stores each output for every update (MobileNetV3's 576 -> 144 -> 576
        # pair ran at 12 GMAC/s so: 0.45 of its last squeeze-excite's 0.8 ms)
        k, rows = wt.shape
        wf = wt.reshape(-1)
        r0 = 0
        while r0 + 32 <= rows:
            a0 = load8(out, r0)
            a1 = load8(out, r0 + 8)
            a2 = load8(out, r0 + 16)
            a3 = load8(out, r0 + 24)
            for j in range(k):
                vj = splat8(v[j])
                q = j * rows + r0
                a0 = fma8(load8(wf, q), vj, a0)
                a1 = fma8(load8(wf, q + 8), vj, a1)
                a2 = fma8(load8(wf, q + 16), vj, a2)
                a3 = fma8(load8(wf, q + 24), vj, a3)
            store8(out, r0, a0)
            store8(out, r0 + 8, a1)
            store8(out, r0 + 16, a2)
            store8(out, r0 + 24, a3)
            r0 += 32
        while r0 + 8 <= rows:
            a0 = load8(out, r0)
            for j in range(k):
                a0 = fma8(load8(wf, j * rows + r0), splat8(v[j]), a0)
            store8(out, r0, a0)
            r0 += 8
        return r0

    return blocks


@njit(cache=True, inline="always")
def _gemv(wt, b, v, out):
    """out = wt.T @ v + b: wt (K, R) (the weight transposed), v (K,), b (R,) or empty.

    Summed as K rank-1 updates of the whole output, so the inner loop runs across outputs
    with no dependency chain and vectorises (a dot product per output is one long chain of
    dependent adds: measured 3x slower than the unfused ops for C = 576).
    """
    k, rows = wt.shape
    if b.shape[0] == rows:
        for r in range(rows):
            out[r] = b[r]
    else:
        for r in range(rows):
            out[r] = 0
    r0 = _gemv_blocks(wt, v, out)
    for j in range(k):
        vj = v[j]
        wr = wt[j]
        for r in range(r0, rows):
            out[r] += wr[r] * vj


@njit(cache=True, nogil=True, error_model="numpy")
def squeeze_excite_samples(x, w1t, b1, w2t, b2, y, channels_last, act, p0, p1, gate, q0, q1,
                           one, lo, hi):
    """y[n] = x[n] * gate(w2 @ act(w1 @ mean(x[n]) + b1) + b2) for samples n in [lo, hi).

    x and y are (N, HW, C) when ``channels_last``, else (N, C, HW); the weights come
    transposed, w1t (C, Cr) and w2t (Cr, C); an empty bias (shape 0) is none.
    """
    c, cr = w1t.shape
    hw = x.shape[1] if channels_last else x.shape[2]
    total = np.empty(c, np.float64)
    mean = np.empty(c, x.dtype)
    hidden = np.empty(cr, x.dtype)
    scale = np.empty(c, x.dtype)
    # in place (a chain's gate): ``y[k] = x[k] * s[k]`` on one array made LLVM's overlap
    # test fail and run the scalar loop, 4x slower than this one
    in_place = x.ctypes.data == y.ctypes.data and x.strides == y.strides
    for n in range(lo, hi):
        _pool(x, n, channels_last, total, mean)
        _gemv(w1t, b1, mean, hidden)
        activate_row(hidden, act, p0, p1, one)
        _gemv(w2t, b2, hidden, scale)
        activate_row(scale, gate, q0, q1, one)
        if channels_last and in_place:  # one array: LLVM vectorises the loop
            for p in range(hw):
                xr = x[n, p]
                for k in range(c):
                    xr[k] *= scale[k]
        elif channels_last:
            for p in range(hw):
                xr = x[n, p]
                yr = y[n, p]
                for k in range(c):
                    yr[k] = xr[k] * scale[k]
        else:
            for k in range(c):
                xr = x[n, k]
                yr = y[n, k]
                s = scale[k]
                for p in range(hw):
                    yr[p] = xr[p] * s


def transposed(w: np.ndarray) -> np.ndarray:
    """A 1x1 weight (M, K, 1, 1) as the (K, M) matrix the GEMVs take."""
    return np.ascontiguousarray(w.reshape(w.shape[:2]).T)  # (M, K, 1, 1) -> (K, M)


def _fast_case(X, W1, B1, W2, B2) -> bool:
    if not fast_dtype(X, W1, W2) or X.ndim != 4 or X.shape[0] == 0 or W1.ndim != 4 \
            or W2.ndim != 4 or W1.dtype != X.dtype or W2.dtype != X.dtype:
        return False
    cr, c = W1.shape[:2]
    if W1.shape[2:] != (1, 1) or W2.shape != (c, cr, 1, 1) or X.shape[1] != c:
        return False
    return all(b is None or (b.dtype == X.dtype and b.size == n)
               for b, n in ((B1, cr), (B2, c)))


@register_kernel("FusedSqueezeExcite", "cpu")
def fused_squeeze_excite_cpu(X: np.ndarray, W1: np.ndarray, B1: np.ndarray | None,
                             W2: np.ndarray, B2: np.ndarray | None = None, *,
                             pool: str = "GlobalAveragePool", activation: str = "Relu",
                             activation_params: Sequence[float] | None = None,
                             gate: str = "HardSigmoid",
                             gate_params: Sequence[float] | None = None) -> np.ndarray:
    """FusedSqueezeExcite in one sweep per sample, samples over the kernel threads; other
    dtypes, shapes and activations run the reference."""
    act = activation_code(activation, activation_params)
    gt = activation_code(gate, gate_params)
    name = pool.decode() if isinstance(pool, bytes) else pool
    if act is None or gt is None or name not in POOLS or not _fast_case(X, W1, B1, W2, B2):
        return fused_squeeze_excite(X, W1, B1, W2, B2, pool=pool, activation=activation,
                                    activation_params=activation_params, gate=gate,
                                    gate_params=gate_params)
    n, c, h, w = X.shape
    dtype = X.dtype
    empty = np.zeros(0, dtype)
    b1 = empty if B1 is None else vector(B1, dtype)
    b2 = empty if B2 is None else vector(B2, dtype)
    w1t = packed(W1, ("se", dtype.str), transposed)
    w2t = packed(W2, ("se", dtype.str), transposed)
    channels_last = is_channels_last(X)
    if channels_last:
        x = X.transpose(0, 2, 3, 1).reshape(n, h * w, c)
        yh = new_output((n, h, w, c), dtype)
        y = yh.reshape(n, h * w, c)
    else:
        x = np.ascontiguousarray(X).reshape(n, c, h * w)
        yc = new_output((n, c, h, w), dtype)
        y = yc.reshape(n, c, h * w)

    t = dtype.type

    def samples(lo: int, hi: int) -> None:
        squeeze_excite_samples(x, w1t, b1, w2t, b2, y, channels_last, act[0], t(act[1]),
                               t(act[2]), gt[0], t(gt[1]), t(gt[2]), t(1), lo, hi)

    run_ranges(samples, n, 1)
    return nchw_view(yh) if channels_last else yc
