"""The register-blocked depthwise convolution (``group == C == M``; see :mod:`.direct`).

For 4 output pixels and a block of 8 or 16 channels, every tap is one weight load, 4 input
loads and 4 multiply-adds into registers. The accumulator-in-memory loop it replaces did a
load, a load and a store per multiply-add: 1.2-2.8x slower on MobileNetV3's layers (2-core
AVX2 EPYC). 16 lanes, where the CPU has AVX-512F (:func:`.direct.vector_lanes`), and the
kernel width as a compile-time constant took them another 1.1-1.4x on an AVX-512 VM.
"""

from __future__ import annotations

from numba import njit

from .direct import T8, _act8, _act_vectors, _activate_row_pixels, _output_row, _store4
from .simd import fma8, store8, vload, vsplat


@njit(cache=True, inline="always")
def _depthwise4(xf, wf, b0, k0, n, oh, ow, a_lo, a_hi, h, wd, c, kw, sh, sw, ph, pw, zero,
                tag, ktag):
    """The sums of output pixels ow..ow + 3 of row (n, oh), channels k0:k0 + len(tag), from
    their bias vector ``b0`` (:func:`depthwise_rows`)."""
    a0 = b0
    a1 = b0
    a2 = b0
    a3 = b0
    if ow * sw - pw >= 0 and (ow + 3) * sw - pw + kw <= wd:  # every tap inside the row
        step = sw * c
        for a in range(a_lo, a_hi):
            p = ((n * h + oh * sh - ph + a) * wd + ow * sw - pw) * c + k0
            q = a * kw * c + k0
            for b in range(len(ktag)):  # a constant trip count: the taps unroll
                wv = vload(wf, q + b * c, tag)
                pb = p + b * c
                a0 = fma8(vload(xf, pb, tag), wv, a0)
                a1 = fma8(vload(xf, pb + step, tag), wv, a1)
                a2 = fma8(vload(xf, pb + 2 * step, tag), wv, a2)
                a3 = fma8(vload(xf, pb + 3 * step, tag), wv, a3)
        return a0, a1, a2, a3
    for a in range(a_lo, a_hi):
        xrow = (n * h + oh * sh - ph + a) * wd
        for b in range(kw):
            wv = vload(wf, (a * kw + b) * c + k0, tag)
            iw = ow * sw - pw + b
            x0 = vload(xf, (xrow + iw) * c + k0, tag) if 0 <= iw < wd else zero
            i1 = iw + sw
            x1 = vload(xf, (xrow + i1) * c + k0, tag) if 0 <= i1 < wd else zero
            i2 = iw + 2 * sw
            x2 = vload(xf, (xrow + i2) * c + k0, tag) if 0 <= i2 < wd else zero
            i3 = iw + 3 * sw
            x3 = vload(xf, (xrow + i3) * c + k0, tag) if 0 <= i3 < wd else zero
            a0 = fma8(x0, wv, a0)
            a1 = fma8(x1, wv, a1)
            a2 = fma8(x2, wv, a2)
            a3 = fma8(x3, wv, a3)
    return a0, a1, a2, a3


@njit(cache=True, inline="always")
def _depthwise1(xf, wf, b0, k0, n, oh, ow, a_lo, a_hi, h, wd, c, kw, sh, sw, ph, pw, tag):
    """The sum of output pixel ow of row (n, oh), channels k0:k0 + len(tag)."""
    a0 = b0
    for a in range(a_lo, a_hi):
        xrow = (n * h + oh * sh - ph + a) * wd
        for b in range(kw):
            iw = ow * sw - pw + b
            if 0 <= iw < wd:
                a0 = fma8(vload(xf, (xrow + iw) * c + k0, tag),
                          vload(wf, (a * kw + b) * c + k0, tag), a0)
    return a0


@njit(cache=True, nogil=True, error_model="numpy")
def depthwise_rows(x, w, bias, y, c0, sh, sw, ph, pw, act, p0, p1, one, lo, hi, tag, ktag):
    """y[n, oh, ow, c0 + k] = act(bias[k] + sum over taps of x[n, ih, iw, k] * w[a, b, k]).

    x (N, H, W, C) and w (KH, KW, C) C-contiguous float32, C % 8 == 0; y (N, Ho, Wo, Ctot)
    C-contiguous with the output in channels c0:c0 + C. Output rows (n, oh) in [lo, hi),
    4 pixels at a time, across all channels in blocks of ``len(tag)`` (:data:`T8` or
    :data:`T16`); with 16 lanes a last 8 channels (C % 16 == 8: 72, 88) go as one 8-lane
    block. (Blocks of channels outermost, each over the whole row, ran 1.2-1.4x slower.)
    ``ktag`` is a tuple of KW zeros: the kernel width as a constant of the compiled code, so
    the taps of an interior block unroll (with a run-time width, LLVM kept a pointer per
    unrolled load and spilled them: 1.1-1.2x slower).
    """
    n_, h, wd, c = x.shape
    kh, kw = w.shape[0], w.shape[1]
    if len(ktag) != kw:
        raise ValueError("depthwise_rows: ktag must hold one zero per kernel column")
    ho, wo, ctot = y.shape[1], y.shape[2], y.shape[3]
    xf = x.reshape(-1)
    wf = w.reshape(-1)
    yf = y.reshape(-1)
    lanes = len(tag)
    whole = c - c % lanes
    lo_v, hi_v, p0_v, p1_v = _act_vectors(act, p0, p1, one, tag)
    lo8, hi8, p08, p18 = _act_vectors(act, p0, p1, one, T8)
    zero = vsplat(one - one, tag)
    zero8 = vsplat(one - one, T8)
    for t in range(lo, hi):
        n, oh, ybase, a_lo, a_hi = _output_row(t, ho, wo, ctot, c0, kh, h, sh, ph)
        ow = 0
        while ow + 4 <= wo:
            o = ybase + ow * ctot
            for k0 in range(0, whole, lanes):
                a0, a1, a2, a3 = _depthwise4(xf, wf, vload(bias, k0, tag), k0, n, oh, ow, a_lo,
                                             a_hi, h, wd, c, kw, sh, sw, ph, pw, zero, tag, ktag)
                _store4(yf, o + k0, ctot, a0, a1, a2, a3, act, lo_v, hi_v, p0_v, p1_v)
            if whole < c:
                a0, a1, a2, a3 = _depthwise4(xf, wf, vload(bias, whole, T8), whole, n, oh, ow,
                                             a_lo, a_hi, h, wd, c, kw, sh, sw, ph, pw, zero8, T8,
                                             ktag)
                _store4(yf, o + whole, ctot, a0, a1, a2, a3, act, lo8, hi8, p08, p18)
            ow += 4
        while ow < wo:  # the last < 4 pixels of the row, one at a time
            o = ybase + ow * ctot
            for k0 in range(0, whole, lanes):
                a0 = _depthwise1(xf, wf, vload(bias, k0, tag), k0, n, oh, ow, a_lo, a_hi, h,
                                 wd, c, kw, sh, sw, ph, pw, tag)
                store8(yf, o + k0, _act8(a0, act, lo_v, hi_v, p0_v, p1_v))
            if whole < c:
                a0 = _depthwise1(xf, wf, vload(bias, whole, T8), whole, n, oh, ow, a_lo, a_hi,
                                 h, wd, c, kw, sh, sw, ph, pw, T8)
                store8(yf, o + whole, _act8(a0, act, lo8, hi8, p08, p18))
            ow += 1
        _activate_row_pixels(yf, y, n, oh, ybase, c0, c, act, p0, p1, one)
