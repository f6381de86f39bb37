"""The 16-lane register-blocked dense KxK convolution (one group; see :mod:`.direct`).

Where the CPU has AVX-512F, a 3x3 convolution on 16-64 input channels spent most of its time
outside the multiply-adds when it ran as im2col + MKL's GEMM: the column matrix (9 times
the input) is written and read back, and a GEMM of N = 64-256 output channels and K = 144-576
runs well below peak. This kernel reads the NHWC input in place. For 6 output pixels and 64
output channels it keeps 24 accumulators of 16 lanes in registers; per tap and input channel
it loads 4 weight vectors and broadcasts 6 input values (which LLVM folds into the
multiply-adds' memory operands), for 24 multiply-adds. ONNX Runtime's NCHWc convolution
blocks the same way (its MLAS kernels hold 4 filter blocks by up to 6 outputs).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import blas
from .direct import T16, _act8, _act_vectors, _activate_row_pixels, _output_row
from .simd import add8, fma8, store8, vbroadcast, vload, vsplat

#: Output channels per block: 4 vectors of 16 lanes.
BLOCK = 64
#: Output pixels per block.
PIXELS = 6
#: Where it runs (measured against im2col + MKL's GEMM, 2 threads, batch 32, interleaved, on
#: an AVX-512 VM): at stride 1 up to MAX_TAPS taps (KH x KW x C) per output: 1.3-1.6x faster
#: on 3x3 with 16 channels (14-55 columns: SqueezeNet's first fire modules), 1.3x with 32
#: to 64 outputs, 1.04-1.10x to 128; 5x5 on 16 channels 1.1-1.5x, on 24 1.04x, on 32 0.83x
#: (a 64-output block's weight, 100 KB, outgrows L1). Strided, up to MAX_STRIDED_TAPS:
#: 1.1-1.6x on 3x3 with 16-48 channels, 1.03x with 64. Where OpenBLAS runs the GEMMs
#: (Zen 4 VM, 2 threads, batch 32, interleaved) strided layers of any width beat im2col and
#: its sgemm: 3x3 / 2 on 96-1024 channels 1.04-1.43x (ResNet-50's 128 @ 56 1.43x, 256 @ 28
#: 1.11x, 512 @ 14 1.18x; one thread 1.06-1.33x), ZFNet's 5x5 / 2 on 96 channels 1.21x; so
#: there the strided limit does not apply.
MAX_TAPS = 400
MAX_STRIDED_TAPS = 576


def usable(c: int, m: int, kh: int, kw: int, strides, wo: int, wd: int, pw: int) -> bool:
    """Whether :func:`dense_wide_rows` takes this (one-group, undilated float32) layer:
    whole 64-output blocks, a row interior of at least one block of pixels, few taps."""
    if m % BLOCK or kh * kw == 1:
        return False
    sw = strides[1]
    first = -(-pw // sw)
    if min(wo, (wd - kw + pw) // sw + 1) - first < PIXELS:
        return False
    taps = kh * kw * c
    if max(strides) > 1:  # any number of taps where OpenBLAS runs the GEMMs
        return taps <= MAX_STRIDED_TAPS or blas.backend() != "mkl"
    return taps <= MAX_TAPS


def pack(w: np.ndarray) -> np.ndarray:
    """A (M, C, KH, KW) weight, M % 64 == 0, for :func:`dense_wide_rows`: blocks of 64 output
    channels, each (KH, KW, C, 64), flattened: a block's taps are read in order."""
    m = w.shape[0]
    return np.concatenate([np.ascontiguousarray(w[m0:m0 + BLOCK].transpose(2, 3, 1, 0)).ravel()
                           for m0 in range(0, m, BLOCK)])


@njit(cache=True, inline="always")
def _six(xf, wf, bias, m0, q0, q1, q2, q3, q4, q5, wq0, a_lo, a_hi, kw, c, rs, ps, cs):
    """The sums of 6 output pixels (input offsets q0..q5 at tap (0, 0)) by 64 output channels
    m0:m0 + 64 (weight block at wq0), over kernel rows [a_lo, a_hi): every tap is inside the
    input row. The pixels may lie on different output rows: only the offsets differ. The
    input's strides: rs per row, ps per pixel, cs per channel (NHWC or NCHW)."""
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
    for a in range(a_lo, a_hi):
        for b in range(kw):
            tap = a * rs + b * ps
            wq = wq0 + (a * kw + b) * c * BLOCK
            for ci in range(c):
                w0 = vload(wf, wq, T16)
                w1 = vload(wf, wq + 16, T16)
                w2 = vload(wf, wq + 32, T16)
                w3 = vload(wf, wq + 48, T16)
                i = tap + ci * cs
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
def _store_pixel(yf, o, v0, v1, v2, v3, act, lo, hi, p0, p1):
    store8(yf, o, _act8(v0, act, lo, hi, p0, p1))
    store8(yf, o + 16, _act8(v1, act, lo, hi, p0, p1))
    store8(yf, o + 32, _act8(v2, act, lo, hi, p0, p1))
    store8(yf, o + 48, _act8(v3, act, lo, hi, p0, p1))


@njit(cache=True, inline="always")
def _one(xf, wf, bias, m0, xrow, iw0, wq0, a_lo, a_hi, kw, c, wd, rs, ps, cs):
    """The sums of one output pixel (input column iw0 at tap column 0; ``xrow`` the offset of
    the input row of kernel row 0, maybe outside the input) by 64 output channels; taps
    outside the input row are skipped. Even and odd input channels sum apart: 8 chains of
    multiply-adds hide their latency."""
    a0 = vload(bias, m0, T16)
    a1 = vload(bias, m0 + 16, T16)
    a2 = vload(bias, m0 + 32, T16)
    a3 = vload(bias, m0 + 48, T16)
    zero = vsplat(np.float32(0), T16)
    e0, e1, e2, e3 = zero, zero, zero, zero
    for a in range(a_lo, a_hi):
        for b in range(kw):
            iw = iw0 + b
            if iw < 0 or iw >= wd:
                continue
            p = xrow + a * rs + iw * ps
            wq = wq0 + (a * kw + b) * c * BLOCK
            for _ in range(c // 2):
                x = vbroadcast(xf, p, T16)
                a0 = fma8(x, vload(wf, wq, T16), a0)
                a1 = fma8(x, vload(wf, wq + 16, T16), a1)
                a2 = fma8(x, vload(wf, wq + 32, T16), a2)
                a3 = fma8(x, vload(wf, wq + 48, T16), a3)
                x = vbroadcast(xf, p + cs, T16)
                e0 = fma8(x, vload(wf, wq + 64, T16), e0)
                e1 = fma8(x, vload(wf, wq + 80, T16), e1)
                e2 = fma8(x, vload(wf, wq + 96, T16), e2)
                e3 = fma8(x, vload(wf, wq + 112, T16), e3)
                p += 2 * cs
                wq += 2 * BLOCK
            if c % 2:
                x = vbroadcast(xf, p, T16)
                a0 = fma8(x, vload(wf, wq, T16), a0)
                a1 = fma8(x, vload(wf, wq + 16, T16), a1)
                a2 = fma8(x, vload(wf, wq + 32, T16), a2)
                a3 = fma8(x, vload(wf, wq + 48, T16), a3)
    return add8(a0, e0), add8(a1, e1), add8(a2, e2), add8(a3, e3)


@njit(cache=True, inline="always")
def _step(col, first, end, xq, yo, rstep_x, rstep_y, cstep_x, cstep_y):
    """The next interior pixel after column ``col`` at input offset ``xq`` and output offset
    ``yo``: one column on, or the first interior column of the next row. Additions only:
    offsets from divisions cost ~9% of a 16-channel block's time."""
    if col + 1 < end:
        return col + 1, xq + cstep_x, yo + cstep_y
    back = end - 1 - first
    return first, xq + rstep_x - back * cstep_x, yo + rstep_y - back * cstep_y


@njit(cache=True, nogil=True, error_model="numpy")
def dense_wide_rows(x, w, bias, y, c0, kh, kw, sh, sw, ph, pw, act, p0, p1, one, lo, hi, nchw):
    """y[n, oh, ow, c0 + m] = act(bias[m] + sum over taps (a, b, ci) of x[n, ih, iw, ci] times
    W[m, ci, a, b]), one group, no dilation.

    x (N, H, W, C) C-contiguous float32, or with ``nchw`` (N, C, H, W) (a first layer's input,
    read in place: only the strides differ); w packed by :func:`pack`; M % 64 == 0; y
    (N, Ho, Wo, Ctot) C-contiguous, the output in channels c0:c0 + M. Output rows (n, oh) in
    [lo, hi), in runs of rows of one image with the same kernel rows inside the input (the
    top and bottom rows lose some to the padding). A run's interior pixels (columns whose
    taps all lie inside the input row) go 6 at a time, read in place, as one sequence across
    its rows (a block of 6 may span two rows: no row ends in a partial block); the run's last
    block overlaps the one before and recomputes a few pixels. The border columns go one by
    one. (Blocks of 2 for a row's remainder ran slower than the overlap: each re-reads the
    64-output block's weight, 37-74 KB, from L2.)
    """
    if nchw:
        n_, c, h, wd = x.shape
        rs, ps, cs = wd, 1, h * wd
    else:
        n_, h, wd, c = x.shape
        rs, ps, cs = wd * c, c, 1
    img = c * h * wd
    ho, wo, ctot = y.shape[1], y.shape[2], y.shape[3]
    m = bias.shape[0]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    lo_v, hi_v, p0_v, p1_v = _act_vectors(act, p0, p1, one, T16)
    first = min(wo, (pw + sw - 1) // sw)
    width = max(0, min(wo, (wd - kw + pw) // sw + 1) - first)  # interior columns per row
    taps = kh * kw * c
    t0 = lo
    while t0 < hi:
        n, oh, ybase, a_lo, a_hi = _output_row(t0, ho, wo, ctot, c0, kh, h, sh, ph)
        t1 = t0 + 1  # the run: rows of image n with the same kernel rows [a_lo, a_hi)
        while t1 < hi and t1 // ho == n and max(0, ph - (t1 % ho) * sh) == a_lo \
                and min(kh, h + ph - (t1 % ho) * sh) == a_hi:
            t1 += 1
        total = (t1 - t0) * width
        # the run's row t0: input offset of tap (0, 0) at column 0, output offset of column 0
        x_row0 = n * img + (oh * sh - ph) * rs - pw * ps
        y_row0 = ybase
        end = first + width
        cx, cy = sw * ps, ctot  # one column on
        rx, ry = sh * rs, wo * ctot  # one row on
        for m0 in range(0, m, BLOCK):
            wq0 = m0 * taps
            i = 0
            while total >= PIXELS and i < total:
                i = min(i, total - PIXELS)  # the last block overlaps the one before
                r0 = i // width
                col0 = first + i - r0 * width
                q0 = x_row0 + r0 * rx + col0 * cx
                o0 = y_row0 + r0 * ry + col0 * cy
                col1, q1, o1 = _step(col0, first, end, q0, o0, rx, ry, cx, cy)
                col2, q2, o2 = _step(col1, first, end, q1, o1, rx, ry, cx, cy)
                col3, q3, o3 = _step(col2, first, end, q2, o2, rx, ry, cx, cy)
                col4, q4, o4 = _step(col3, first, end, q3, o3, rx, ry, cx, cy)
                _col5, q5, o5 = _step(col4, first, end, q4, o4, rx, ry, cx, cy)
                (a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23,
                 a30, a31, a32, a33, a40, a41, a42, a43, a50, a51, a52, a53) = _six(
                    xf, w, bias, m0, q0, q1, q2, q3, q4, q5, wq0, a_lo, a_hi, kw, c, rs, ps, cs)
                _store_pixel(yf, o0 + m0, a00, a01, a02, a03, act, lo_v, hi_v, p0_v, p1_v)
                _store_pixel(yf, o1 + m0, a10, a11, a12, a13, act, lo_v, hi_v, p0_v, p1_v)
                _store_pixel(yf, o2 + m0, a20, a21, a22, a23, act, lo_v, hi_v, p0_v, p1_v)
                _store_pixel(yf, o3 + m0, a30, a31, a32, a33, act, lo_v, hi_v, p0_v, p1_v)
                _store_pixel(yf, o4 + m0, a40, a41, a42, a43, act, lo_v, hi_v, p0_v, p1_v)
                _store_pixel(yf, o5 + m0, a50, a51, a52, a53, act, lo_v, hi_v, p0_v, p1_v)
                i += PIXELS
            for t in range(t0, t1):  # the border columns (all, when no block of 6 fits)
                oh = t % ho
                xrow = n * img + (oh * sh - ph) * rs  # kernel row 0's input row (maybe outside)
                ybase = (t * wo) * ctot + c0
                for ow in range(wo):
                    if total >= PIXELS and first <= ow < first + width:
                        continue
                    v0, v1, v2, v3 = _one(xf, w, bias, m0, xrow, ow * sw - pw, wq0, a_lo,
                                          a_hi, kw, c, wd, rs, ps, cs)
                    _store_pixel(yf, ybase + ow * ctot + m0, v0, v1, v2, v3, act, lo_v, hi_v,
                                 p0_v, p1_v)
        for t in range(t0, t1):
            _activate_row_pixels(yf, y, n, t % ho, (t * wo) * ctot + c0, c0, m, act, p0, p1,
                                 one)
        t0 = t1
