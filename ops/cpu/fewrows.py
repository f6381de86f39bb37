"""Few-row products with a large weight: the fully connected layers of CNNs at small batch.

AlexNet's, ZFNet's and VGG's classifiers multiply 8-32 rows by weights of 16-400 MB
((4096, 9216), (4096, 25088): ``Gemm`` with ``transB=1``). OpenBLAS's sgemm re-packs the whole
weight on every call and then runs a few-row kernel: on a Zen 4 VM, 32 x 9216 x 4096 took
29 ms on 2 threads (82 GFLOP/s, the weight read at 5 GB/s, where one core streams 17-20 GB/s)
and 8 x 9216 x 4096 19.5 ms.

Here the weight is packed once, as :mod:`.pointwise_wide` packs a 1x1 layer's (blocks of
64 outputs, each (K, 64) contiguous), and read once per call: for each block of outputs,
the reduction runs in chunks of CHUNK inputs, and every block of 6 rows takes the chunk's
panel (CHUNK x 64 float32: 128 KB, in L2) in turn, 24 accumulators of 16 lanes in registers
(4 weight loads and 6 broadcasts per 24 multiply-adds). The output starts as the bias and
each chunk adds its sums to it; the last one applies the activation before the store.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .direct import T8, T16, _act8, _act_vectors
from .epilogue import NONE
from .pointwise_wide import BLOCK, ROWS
from .simd import add8, fma8, store8, vbroadcast, vload, vsplat

#: Inputs per chunk of the reduction: a 64-output panel of CHUNK rows is 128 KB, which stays
#: in L2 while every block of rows reads it.
CHUNK = 512
#: Most rows it takes: above this the row blocks of :mod:`.matmul` read the weight from cache
#: often enough.
MAX_ROWS = 127


@njit(cache=True, inline="always")
def _panel64(xf, wf, wq, n, q0, q1, q2, q3, q4, q5):
    """The sums over ``n`` inputs of 6 rows (offsets q0..q5) by a 64-output panel at ``wq``."""
    z = vsplat(np.float32(0), T16)
    a00, a01, a02, a03 = z, z, z, z
    a10, a11, a12, a13 = z, z, z, z
    a20, a21, a22, a23 = z, z, z, z
    a30, a31, a32, a33 = z, z, z, z
    a40, a41, a42, a43 = z, z, z, z
    a50, a51, a52, a53 = z, z, z, z
    for i in range(n):
        w0 = vload(wf, wq, T16)
        w1 = vload(wf, wq + 16, T16)
        w2 = vload(wf, wq + 32, T16)
        w3 = vload(wf, wq + 48, T16)
        x = vbroadcast(xf, q0 + i, T16)
        a00 = fma8(x, w0, a00)
        a01 = fma8(x, w1, a01)
        a02 = fma8(x, w2, a02)
        a03 = fma8(x, w3, a03)
        x = vbroadcast(xf, q1 + i, T16)
        a10 = fma8(x, w0, a10)
        a11 = fma8(x, w1, a11)
        a12 = fma8(x, w2, a12)
        a13 = fma8(x, w3, a13)
        x = vbroadcast(xf, q2 + i, T16)
        a20 = fma8(x, w0, a20)
        a21 = fma8(x, w1, a21)
        a22 = fma8(x, w2, a22)
        a23 = fma8(x, w3, a23)
        x = vbroadcast(xf, q3 + i, T16)
        a30 = fma8(x, w0, a30)
        a31 = fma8(x, w1, a31)
        a32 = fma8(x, w2, a32)
        a33 = fma8(x, w3, a33)
        x = vbroadcast(xf, q4 + i, T16)
        a40 = fma8(x, w0, a40)
        a41 = fma8(x, w1, a41)
        a42 = fma8(x, w2, a42)
        a43 = fma8(x, w3, a43)
        x = vbroadcast(xf, q5 + i, T16)
        a50 = fma8(x, w0, a50)
        a51 = fma8(x, w1, a51)
        a52 = fma8(x, w2, a52)
        a53 = fma8(x, w3, a53)
        wq += BLOCK
    return (a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23,
            a30, a31, a32, a33, a40, a41, a42, a43, a50, a51, a52, a53)


@njit(cache=True, inline="always")
def _panel_narrow(xf, wf, wq, n, q0, q1, q2, q3, q4, q5, tag):
    """The sums over ``n`` inputs of 6 rows by a panel of L = len(tag) outputs at ``wq``."""
    lanes = len(tag)
    z = vsplat(np.float32(0), tag)
    a0, a1, a2, a3, a4, a5 = z, z, z, z, z, z
    for i in range(n):
        w0 = vload(wf, wq, tag)
        a0 = fma8(vbroadcast(xf, q0 + i, tag), w0, a0)
        a1 = fma8(vbroadcast(xf, q1 + i, tag), w0, a1)
        a2 = fma8(vbroadcast(xf, q2 + i, tag), w0, a2)
        a3 = fma8(vbroadcast(xf, q3 + i, tag), w0, a3)
        a4 = fma8(vbroadcast(xf, q4 + i, tag), w0, a4)
        a5 = fma8(vbroadcast(xf, q5 + i, tag), w0, a5)
        wq += lanes
    return a0, a1, a2, a3, a4, a5


@njit(cache=True, inline="always")
def _add_store(yf, o, v, act, lo, hi, p0, p1, tag):
    """yf[o:o + L] = act(yf[o:o + L] + v)."""
    store8(yf, o, _act8(add8(vload(yf, o, tag), v), act, lo, hi, p0, p1))


@njit(cache=True, inline="always")
def _add_store4(yf, o, v0, v1, v2, v3, act, lo, hi, p0, p1):
    _add_store(yf, o, v0, act, lo, hi, p0, p1, T16)
    _add_store(yf, o + 16, v1, act, lo, hi, p0, p1, T16)
    _add_store(yf, o + 32, v2, act, lo, hi, p0, p1, T16)
    _add_store(yf, o + 48, v3, act, lo, hi, p0, p1, T16)


@njit(cache=True, inline="always")
def _narrow_rows(xf, w, yf, wq, n, q0, q1, q2, q3, q4, q5, o, m, nr, act, lo, hi, p0, p1,
                 tag):
    """A narrow block's (L = len(tag) outputs) sums over ``n`` inputs of 6 rows, added to the
    first ``nr`` of the rows at ``o`` (stride ``m``). Only the last blocks of a layer take it:
    its branches on arrays cost reference counts the 64-output path does not pay."""
    v0, v1, v2, v3, v4, v5 = _panel_narrow(xf, w, wq, n, q0, q1, q2, q3, q4, q5, tag)
    _add_store(yf, o, v0, act, lo, hi, p0, p1, tag)
    if nr > 1:
        _add_store(yf, o + m, v1, act, lo, hi, p0, p1, tag)
    if nr > 2:
        _add_store(yf, o + 2 * m, v2, act, lo, hi, p0, p1, tag)
    if nr > 3:
        _add_store(yf, o + 3 * m, v3, act, lo, hi, p0, p1, tag)
    if nr > 4:
        _add_store(yf, o + 4 * m, v4, act, lo, hi, p0, p1, tag)
    if nr > 5:
        _add_store(yf, o + 5 * m, v5, act, lo, hi, p0, p1, tag)


@njit(cache=True, inline="always")
def _width(m0, m):
    """The width of the packed block starting at output m0 (as :func:`.pointwise_wide.pack`
    cuts them)."""
    return BLOCK if m0 + BLOCK <= m else 16 if m0 + 16 <= m else 8


@njit(cache=True, nogil=True, error_model="numpy")
def fewrows_cols(x, w, y, act, p0, p1, one, c0, c1):
    """y[r, j] = act(y[r, j] + sum over k of x[r, k] * W[j, k]) for every row r and the
    outputs j in [c0, c1), block boundaries of the packed ``w``
    (:func:`.pointwise_wide.pack` of the (M, K) weight); ``y`` (R, M) C-contiguous holds the
    bias (or zeros) on entry. The activation must be one :func:`.direct._act8` applies."""
    rows, k = x.shape
    m = y.shape[1]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    lo16, hi16, p016, p116 = _act_vectors(act, p0, p1, one, T16)
    lo8, hi8, p08, p18 = _act_vectors(act, p0, p1, one, T8)
    last = rows - 1
    m0 = c0
    while m0 < c1:
        width = _width(m0, m)
        for k0 in range(0, k, CHUNK):
            n = min(CHUNK, k - k0)
            a = act if k0 + n == k else NONE  # the activation with the last sums only
            wq = m0 * k + k0 * width
            for r in range(0, rows, ROWS):
                nr = min(ROWS, rows - r)
                q0 = r * k + k0
                q1 = min(r + 1, last) * k + k0
                q2 = min(r + 2, last) * k + k0
                q3 = min(r + 3, last) * k + k0
                q4 = min(r + 4, last) * k + k0
                q5 = min(r + 5, last) * k + k0
                o = r * m + m0
                if width == BLOCK:
                    (a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23,
                     a30, a31, a32, a33, a40, a41, a42, a43, a50, a51, a52, a53) = _panel64(
                        xf, w, wq, n, q0, q1, q2, q3, q4, q5)
                    _add_store4(yf, o, a00, a01, a02, a03, a, lo16, hi16, p016, p116)
                    if nr > 1:
                        _add_store4(yf, o + m, a10, a11, a12, a13, a, lo16, hi16, p016, p116)
                    if nr > 2:
                        _add_store4(yf, o + 2 * m, a20, a21, a22, a23, a, lo16, hi16, p016,
                                    p116)
                    if nr > 3:
                        _add_store4(yf, o + 3 * m, a30, a31, a32, a33, a, lo16, hi16, p016,
                                    p116)
                    if nr > 4:
                        _add_store4(yf, o + 4 * m, a40, a41, a42, a43, a, lo16, hi16, p016,
                                    p116)
                    if nr > 5:
                        _add_store4(yf, o + 5 * m, a50, a51, a52, a53, a, lo16, hi16, p016,
                                    p116)
                elif width == 16:
                    _narrow_rows(xf, w, yf, wq, n, q0, q1, q2, q3, q4, q5, o, m, nr, a, lo16,
                                 hi16, p016, p116, T16)
                else:
                    _narrow_rows(xf, w, yf, wq, n, q0, q1, q2, q3, q4, q5, o, m, nr, a, lo8,
                                 hi8, p08, p18, T8)
        m0 += width


def column_ranges(m: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` (or fewer) ranges of the m outputs on packed block boundaries, about equal:
    whole 64-output blocks, the narrow last blocks with the last range."""
    full = m // BLOCK
    parts = max(1, min(parts, full)) if full else 1
    bounds = [round(i * full / parts) * BLOCK for i in range(parts)] + [m]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
