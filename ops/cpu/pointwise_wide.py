"""The 16-lane 1x1 convolution (one group), where the CPU has AVX-512F.

A 1x1 layer on K = 16-64 input channels is a GEMM too thin for MKL: its K is too short to
pay for packing the operands, it writes its C at some GFLOP/s per thread, and its bias and
activation then take a pass of their own over the output (in SqueezeNet, where the output
is half of a Concat's buffer, 3-5 ms per 16 -> 64 expansion at batch 32 against ONNX
Runtime's 1.1). This kernel reads the NHWC rows in place and keeps 6 rows by 64 output
channels in 24 accumulators of 16 lanes; per input channel it loads 4 weight vectors and
broadcasts 6 input values (folded into the multiply-adds), as :mod:`.dense_wide` does for
KxK layers. Bias, residual and activation are applied in registers before the one store.
Output counts that are not a multiple of 64 finish in blocks of 6 rows by one vector (a last
8 outputs by an 8-lane one).

Against OpenBLAS's sgemm the same blocking wins at any K (see :data:`MAX_CHANNELS`): its
24 multiply-adds per 4 weight loads keep the core's FMA unit busy even where a 64-output
weight block outgrows L1, and it needs no packing pass. Rows of many channels prefetch
the next block of rows (:data:`PREFETCH_MIN_CHANNELS`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import blas
from .direct import T8, T16, _act8, _act_vectors, _in_registers
from .epilogue import activate_row
from .simd import add8, fma8, prefetch, store8, vbroadcast, vload

#: Output channels per wide block: 4 vectors of 16 lanes.
BLOCK = 64
#: Rows (pixels) per block.
ROWS = 6
#: Where it runs (routing in :mod:`.conv` and :mod:`.chains`): 1x1 layers with whole
#: vectors of outputs; where oneMKL runs the float GEMMs, only on at most MAX_CHANNELS
#: input channels. Measured against MKL's GEMM and its epilogue pass on 2 threads, batch 32,
#: interleaved (Intel VM): 16 -> 64 on 55 x 55 1.16x, 32 -> 128 on 27 x 27 into a Concat's
#: buffer 1.38x, 48 -> 192 1.13x, 64 -> 256 1.01x; in SqueezeNet (node by node) its 1x1
#: layers together 3.3 ms faster, of 140. An 8-lane tail (M % 16 == 8) through a buffer ran
#: 16 -> 72 at 0.66x MKL, so those stay where they were. Inside MobileNetV3's chains
#: (K = 16-24) it ties with the 8-lane direct kernel. Against OpenBLAS's sgemm (Zen 4 VM,
#: batch 32, with the prefetch below) it was faster on every 1x1 shape tried, at any K:
#: 2 threads, 128 -> 16 on 55 x 55 2.8x, 256 -> 32 1.7x, 512 -> 64 on 13 x 13 1.5x,
#: ResNet-50's 256 -> 64 on 56 x 56 1.5x, 512 -> 128 1.3x, 1024 -> 256 1.16x, 2048 -> 512
#: 1.1x, 256 -> 1024 1.13x, 96 -> 576 1.2x (205-222 GFLOP/s, near the two cores' peak);
#: 1 thread, 1.1-1.5x. There a last block of 8 outputs runs in 8-lane registers (not
#: through a buffer, as in the MKL measurement above): 512 -> 1000 on 13 x 13 1.11x, 16 -> 72
#: on 55 x 55 1.75x, 24 -> 88 1.25x, 40 -> 120 1.25x; whole models 1.03-1.04x (SqueezeNet,
#: MobileNetV3-small, Inception v1).
MAX_CHANNELS = 64
#: ...and never on more than this many: a 64-output block's weight (K x 64 float32, 512 KB
#: here) is read again for every 6 rows, from L2 while it fits there (measured up to 2048).
MAX_WIDE_CHANNELS = 2048
#: Rows of more input channels than this prefetch the next block of rows while a block
#: computes: six rows read side by side are six short streams, which the hardware
#: prefetchers did not follow (Zen 4: 128 -> 16 on 55 x 55, 1 thread, 10.3 -> 5.0 ms; at
#: 64 channels the hardware kept up and the hints cost 1.9 -> 2.5 ms).
PREFETCH_MIN_CHANNELS = 64


def usable(k: int, m: int) -> bool:
    """Whether :func:`pointwise_wide_rows` takes a one-group float32 1x1 layer of ``k`` input
    and ``m`` output channels (see :data:`MAX_CHANNELS`): whole 16-lane vectors of outputs
    where oneMKL runs the GEMMs, else whole 8-lane ones (a last block of 8, at half the
    rate: SqueezeNet's 1000 classes, MobileNetV3's 40-120 channels)."""
    if k <= 0 or k > MAX_WIDE_CHANNELS or m % 8:
        return False
    if blas.backend() == "mkl":
        return k <= MAX_CHANNELS and m % 16 == 0
    return m >= 16


def pack(w: np.ndarray) -> np.ndarray:
    """A (M, K, 1, 1) or (M, K) weight, M % 8 == 0, for :func:`pointwise_wide_rows`: blocks
    of 64 outputs while 64 remain, then of 16, then a last one of 8; each block's (K, width)
    is contiguous, so block m0 starts at m0 * K."""
    m, k = w.shape[0], w.shape[1]
    w2 = w.reshape(m, k).astype(np.float32)
    blocks, m0 = [], 0
    while m0 < m:
        width = BLOCK if m0 + BLOCK <= m else 16 if m0 + 16 <= m else 8
        blocks.append(np.ascontiguousarray(w2[m0:m0 + width].T).ravel())
        m0 += width
    return np.concatenate(blocks)


@njit(cache=True, inline="always")
def _prefetch6(xf, p, k):
    """Prefetch the cache lines at p, p + k, ... p + 5k (6 rows' same column)."""
    prefetch(xf, p)
    prefetch(xf, p + k)
    prefetch(xf, p + 2 * k)
    prefetch(xf, p + 3 * k)
    prefetch(xf, p + 4 * k)
    prefetch(xf, p + 5 * k)


@njit(cache=True, inline="always")
def _wide6(xf, wf, bias, m0, k, q0, q1, q2, q3, q4, q5, pn):
    """The sums of 6 rows (input offsets q0..q5) by the 64 outputs m0:m0 + 64."""
    b0 = vload(bias, m0, T16)
    b1 = vload(bias, m0 + 16, T16)
    b2 = vload(bias, m0 + 32, T16)
    b3 = vload(bias, m0 + 48, T16)
    a00, a01, a02, a03 = b0, b1, b2, b3
    a10, a11, a12, a13 = b0, b1, b2, b3
    a20, a21, a22, a23 = b0, b1, b2, b3
    a30, a31, a32, a33 = b0, b1, b2, b3
    a40, a41, a42, a43 = b0, b1, b2, b3
    a50, a51, a52, a53 = b0, b1, b2, b3
    wq = m0 * k
    for i in range(k):
        if pn >= 0 and (i & 15) == 0:
            _prefetch6(xf, pn + i, k)
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
def _narrow6(xf, wf, bias, m0, k, q0, q1, q2, q3, q4, q5, pn, tag):
    """The sums of 6 rows by the L = len(tag) outputs m0:m0 + L (weight block at m0 * k)."""
    lanes = len(tag)
    b = vload(bias, m0, tag)
    a0, a1, a2, a3, a4, a5 = b, b, b, b, b, b
    wq = m0 * k
    for i in range(k):
        if pn >= 0 and (i & 15) == 0:
            _prefetch6(xf, pn + i, k)
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
def _out(v, zf, zo, act, lo, hi, p0, p1, tag=T16):
    """One vector to store: the sums v plus the residual at zf[zo:zo + 16] (zeros when there
    is none), activated. No branch on an array here: Numba prunes the reference counting of
    an array argument only in straight-line code, and an atomic count per vector stored
    would cost more than the multiply-adds of a 16-channel input."""
    return _act8(add8(v, vload(zf, zo, tag)), act, lo, hi, p0, p1)


@njit(cache=True, inline="always")
def _row4(yf, zf, o, zo, v0, v1, v2, v3, act, lo, hi, p0, p1):
    """One row's 64 outputs at yf[o:o + 64] (residual at zf[zo:zo + 64]); straight-line."""
    store8(yf, o, _out(v0, zf, zo, act, lo, hi, p0, p1))
    store8(yf, o + 16, _out(v1, zf, zo + 16, act, lo, hi, p0, p1))
    store8(yf, o + 32, _out(v2, zf, zo + 32, act, lo, hi, p0, p1))
    store8(yf, o + 48, _out(v3, zf, zo + 48, act, lo, hi, p0, p1))


@njit(cache=True, nogil=True, error_model="numpy")
def pointwise_wide_rows(x, w, bias, z, y, c0, m, act, p0, p1, one, lo, hi):
    """y[r, c0 + j] = act(bias[j] + z[r, j] + sum over k of x[r, k] * W[j, k]) for rows r in
    [lo, hi) and the m outputs j.

    x (R, K) and z (R, m) C-contiguous float32 (an empty z: no residual); w packed by
    :func:`pack`; bias (m,); m % 8 == 0; y (R, Ctot) C-contiguous, the output in columns
    c0:c0 + m. Rows go 6 at a time; a last block of fewer rows computes its last
    row again in the missing places and stores each row once.
    """
    k = x.shape[1]
    ctot = y.shape[1]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    has_z = z.shape[0] > 0
    zs = m if has_z else 0  # the residual's row stride: no residual reads zeros, row after row
    zf = z.reshape(-1) if has_z else np.zeros(m, np.float32)
    lo_v, hi_v, p0_v, p1_v = _act_vectors(act, p0, p1, one, T16)
    lo_8, hi_8, p0_8, p1_8 = _act_vectors(act, p0, p1, one, T8)
    last = hi - 1
    for r in range(lo, hi, ROWS):
        nr = min(ROWS, hi - r)
        q0 = r * k
        q1 = min(r + 1, last) * k
        q2 = min(r + 2, last) * k
        q3 = min(r + 3, last) * k
        q4 = min(r + 4, last) * k
        q5 = min(r + 5, last) * k
        nxt = (r + ROWS) * k  # the next block's rows: prefetched while these compute
        pn = nxt if k > PREFETCH_MIN_CHANNELS and r + 2 * ROWS <= hi else -1
        m0 = 0
        while m0 + BLOCK <= m:
            (a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23,
             a30, a31, a32, a33, a40, a41, a42, a43, a50, a51, a52, a53) = _wide6(
                xf, w, bias, m0, k, q0, q1, q2, q3, q4, q5, pn)
            o = r * ctot + c0 + m0
            zo = r * zs + m0
            _row4(yf, zf, o, zo, a00, a01, a02, a03, act, lo_v, hi_v, p0_v, p1_v)
            if nr > 1:
                _row4(yf, zf, o + ctot, zo + zs, a10, a11, a12, a13, act, lo_v, hi_v, p0_v, p1_v)
            if nr > 2:
                _row4(yf, zf, o + 2 * ctot, zo + 2 * zs, a20, a21, a22, a23, act, lo_v,
                      hi_v, p0_v, p1_v)
            if nr > 3:
                _row4(yf, zf, o + 3 * ctot, zo + 3 * zs, a30, a31, a32, a33, act, lo_v,
                      hi_v, p0_v, p1_v)
            if nr > 4:
                _row4(yf, zf, o + 4 * ctot, zo + 4 * zs, a40, a41, a42, a43, act, lo_v,
                      hi_v, p0_v, p1_v)
            if nr > 5:
                _row4(yf, zf, o + 5 * ctot, zo + 5 * zs, a50, a51, a52, a53, act, lo_v,
                      hi_v, p0_v, p1_v)
            m0 += BLOCK
            pn = -1
        while m0 + 16 <= m:
            a0, a1, a2, a3, a4, a5 = _narrow6(xf, w, bias, m0, k, q0, q1, q2, q3, q4, q5, pn,
                                              T16)
            o = r * ctot + c0 + m0
            zo = r * zs + m0
            store8(yf, o, _out(a0, zf, zo, act, lo_v, hi_v, p0_v, p1_v))
            if nr > 1:
                store8(yf, o + ctot, _out(a1, zf, zo + zs, act, lo_v, hi_v, p0_v, p1_v))
            if nr > 2:
                store8(yf, o + 2 * ctot, _out(a2, zf, zo + 2 * zs, act, lo_v, hi_v, p0_v,
                                               p1_v))
            if nr > 3:
                store8(yf, o + 3 * ctot, _out(a3, zf, zo + 3 * zs, act, lo_v, hi_v, p0_v,
                                               p1_v))
            if nr > 4:
                store8(yf, o + 4 * ctot, _out(a4, zf, zo + 4 * zs, act, lo_v, hi_v, p0_v,
                                               p1_v))
            if nr > 5:
                store8(yf, o + 5 * ctot, _out(a5, zf, zo + 5 * zs, act, lo_v, hi_v, p0_v,
                                               p1_v))
            m0 += 16
            pn = -1
        # the last 8 outputs, in 8-lane vectors; the stores are written out as above (see
        # _out): a shared inlined helper taking the arrays ran 32 -> 48 with a residual
        # 1.9x slower
        if m0 < m:
            a0, a1, a2, a3, a4, a5 = _narrow6(xf, w, bias, m0, k, q0, q1, q2, q3, q4, q5, pn,
                                              T8)
            o = r * ctot + c0 + m0
            zo = r * zs + m0
            store8(yf, o, _out(a0, zf, zo, act, lo_8, hi_8, p0_8, p1_8, T8))
            if nr > 1:
                store8(yf, o + ctot, _out(a1, zf, zo + zs, act, lo_8, hi_8, p0_8, p1_8, T8))
            if nr > 2:
                store8(yf, o + 2 * ctot, _out(a2, zf, zo + 2 * zs, act, lo_8, hi_8, p0_8, p1_8,
                                               T8))
            if nr > 3:
                store8(yf, o + 3 * ctot, _out(a3, zf, zo + 3 * zs, act, lo_8, hi_8, p0_8, p1_8,
                                               T8))
            if nr > 4:
                store8(yf, o + 4 * ctot, _out(a4, zf, zo + 4 * zs, act, lo_8, hi_8, p0_8, p1_8,
                                               T8))
            if nr > 5:
                store8(yf, o + 5 * ctot, _out(a5, zf, zo + 5 * zs, act, lo_8, hi_8, p0_8, p1_8,
                                               T8))
        if not _in_registers(act):
            for i in range(nr):
                activate_row(y[r + i, c0:c0 + m], act, p0, p1, one)

