"""The register-blocked depthwise convolution (``group == C == M``; see :mod:`.direct`).

For 4 output pixels and a block of 8 or 16 channels, every tap is one weight load, the input
loads and 4 multiply-adds into registers. The accumulator-in-memory loop it replaces did a
load, a load and a store per multiply-add: 1.2-2.8x slower on MobileNetV3's layers (2-core
AVX2 EPYC). 16 lanes, where the CPU has AVX-512F (:func:`.direct.vector_lanes`), and the
kernel width as a compile-time constant took them another 1.1-1.4x on an AVX-512 VM.

Stride-1 layers 5 or more taps wide run a block of channels on a *plane*: its input rows
copied, zero-padded, into a scratch (rows, columns, lanes) array, the layout ONNX Runtime's
NCHWc kernels keep throughout. There a tap's input is a constant offset from the row's start
(the lane count times the tap's column), so a 4-pixel block's loads are addressing modes of
one pointer, a pixel two taps read is one load, and no tap needs a bounds test: the padding
is zeros. Read in place from NHWC, a tap's input is ``column * C`` away, a run-time multiple:
LLVM kept a pointer register per tap (spilling them), and the border blocks tested each tap.
In MobileNetV3-small (batch 32, 2 threads, AVX-512 VM, interleaved runs), its 5x5 stride-1
blocks ran 1.1-1.2x faster on planes (the whole model 1.04-1.07x). There a block of channels
runs over all the rows of an image before the next block (its plane then stays in L1), and
a row's last 4-pixel block overlaps the one before it instead of summing its last pixels one
by one, a chain of dependent multiply-adds each. 3x3 and strided layers read in place, 4
pixels by all blocks of channels at a time, the last pixels one by one: on planes
MobileNetV3's ran 1.05-1.25x slower (the copy, 4 input pixels per output at stride 2, costs
more than the taps save); in place but in the planes' order (blocks of channels outermost,
overlapping last blocks) ShuffleNet's 3x3 layers ran 1.04-1.34x slower.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .direct import T8, _act8, _act_vectors, _activate_row_pixels, _output_row, _store4
from .simd import fma8, store8, vload, vsplat


@njit(cache=True, inline="always")
def _plane4(pf, wb, b0, p, wrow, kh, ktag, sw, tag):
    """The sums of 4 output pixels whose window starts at flat index ``p`` of the plane
    (rows ``wrow`` floats apart), from their bias vector ``b0``."""
    lanes = len(tag)
    kw = len(ktag)
    a0 = b0
    a1 = b0
    a2 = b0
    a3 = b0
    for a in range(kh):
        q = p + a * wrow
        for b in range(len(ktag)):  # a constant trip count: the taps unroll
            wv = vload(wb, (a * kw + b) * lanes, tag)
            a0 = fma8(vload(pf, q + b * lanes, tag), wv, a0)
            a1 = fma8(vload(pf, q + (b + sw) * lanes, tag), wv, a1)
            a2 = fma8(vload(pf, q + (b + 2 * sw) * lanes, tag), wv, a2)
            a3 = fma8(vload(pf, q + (b + 3 * sw) * lanes, tag), wv, a3)
    return a0, a1, a2, a3


@njit(cache=True, inline="always")
def _plane1(pf, wb, b0, p, wrow, kh, ktag, tag):
    """The sum of one output pixel whose window starts at flat index ``p`` of the plane."""
    lanes = len(tag)
    kw = len(ktag)
    a0 = b0
    for a in range(kh):
        for b in range(len(ktag)):
            a0 = fma8(vload(pf, p + a * wrow + b * lanes, tag),
                      vload(wb, (a * kw + b) * lanes, tag), a0)
    return a0


@njit(cache=True, inline="always")
def _fill_plane(xf, pf, n, ih0, rows, cols, h, wd, c, k0, pw, tag):
    """plane[i, j] = x[n, ih0 + i, j - pw, k0:k0 + lanes], zeros outside the input."""
    lanes = len(tag)
    zero = vsplat(np.float32(0), tag)
    for i in range(rows):
        ih = ih0 + i
        o = i * cols * lanes
        if ih < 0 or ih >= h:
            for j in range(cols):
                store8(pf, o + j * lanes, zero)
            continue
        src = (n * h + ih) * wd * c + k0
        for j in range(cols):
            iw = j - pw
            store8(pf, o + j * lanes,
                   vload(xf, src + iw * c, tag) if 0 <= iw < wd else zero)


@njit(cache=True, inline="always")
def _channel_block(xf, wf, yf, pf, wb, bias, k0, t0, t1, h, wd, c, ho, wo, ctot, c0, kh, kw,
                   sh, sw, ph, pw, cols, act, lo_v, hi_v, p0_v, p1_v, tag, ktag):
    """Output rows t0..t1 - 1 (of one image), channels k0:k0 + len(tag), through a plane
    ``cols`` pixels wide: 4 pixels at a time, the row's last block overlapping the one
    before it (recomputing up to 3 pixels costs less than summing them one by one, a chain of
    dependent multiply-adds)."""
    lanes = len(tag)
    for i in range(kh * kw):  # the block's weights, one vector per tap
        store8(wb, i * lanes, vload(wf, i * c + k0, tag))
    n = t0 // ho
    oh0 = t0 % ho
    wrow = cols * lanes
    _fill_plane(xf, pf, n, oh0 * sh - ph, (t1 - t0 - 1) * sh + kh, cols, h, wd, c, k0, pw,
                tag)
    b0 = vload(bias, k0, tag)
    for t in range(t0, t1):
        ybase = (n * ho + t % ho) * wo * ctot + c0 + k0
        row = (t - t0) * sh * wrow
        ow = 0
        while ow < wo:
            if wo < 4:  # a row narrower than a block: pixel by pixel
                a0 = _plane1(pf, wb, b0, row + ow * sw * lanes, wrow, kh, ktag, tag)
                store8(yf, ybase + ow * ctot, _act8(a0, act, lo_v, hi_v, p0_v, p1_v))
                ow += 1
            else:
                ow = min(ow, wo - 4)
                a0, a1, a2, a3 = _plane4(pf, wb, b0, row + ow * sw * lanes, wrow, kh, ktag, sw,
                                         tag)
                _store4(yf, ybase + ow * ctot, ctot, a0, a1, a2, a3, act, lo_v, hi_v, p0_v,
                        p1_v)
                ow += 4


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
def depthwise_rows(x, w, bias, y, c0, sh, stag, ph, pw, act, p0, p1, one, lo, hi, tag, ktag):
    """y[n, oh, ow, c0 + k] = act(bias[k] + sum over taps of x[n, ih, iw, k] * w[a, b, k]).

    x (N, H, W, C) and w (KH, KW, C) C-contiguous float32, C % 8 == 0; y (N, Ho, Wo, Ctot)
    C-contiguous with the output in channels c0:c0 + C. Output rows (n, oh) in [lo, hi),
    through planes or in place (module docstring), in blocks of ``len(tag)`` channels
    (:data:`T8` or :data:`T16`); with 16 lanes a last 8 channels (C % 16 == 8: 72, 88) as
    one 8-lane block.
    ``ktag`` is a tuple of KW zeros and ``stag`` one of SW (the column stride) zeros: both
    constants of the compiled code, so the taps of a block unroll (with a run-time width,
    LLVM kept a pointer per unrolled load and spilled them: 1.1-1.2x slower) and the path
    not taken compiles away.
    """
    n_, h, wd, c = x.shape
    kh, kw = w.shape[0], w.shape[1]
    sw = len(stag)
    if len(ktag) != kw:
        raise ValueError("depthwise_rows: ktag must hold one zero per kernel column")
    ho, wo, ctot = y.shape[1], y.shape[2], y.shape[3]
    if hi <= lo:
        return
    xf = x.reshape(-1)
    wf = w.reshape(-1)
    yf = y.reshape(-1)
    lanes = len(tag)
    whole = c - c % lanes
    lo_v, hi_v, p0_v, p1_v = _act_vectors(act, p0, p1, one, tag)
    lo8, hi8, p08, p18 = _act_vectors(act, p0, p1, one, T8)
    zero = vsplat(one - one, tag)
    zero8 = vsplat(one - one, T8)
    plane = sw == 1 and kw >= 5  # constants: the other path compiles away
    cols = (wo - 1) * sw + kw  # a plane's width: every tap of every output pixel
    pf = np.empty(((min(ho, hi - lo) - 1) * sh + kh) * cols * lanes if plane else 0,
                  np.float32)
    wb = np.empty(kh * kw * lanes if plane else 0, np.float32)  # a block's weights
    if plane:
        t0 = lo
        while t0 < hi:
            t1 = min(hi, (t0 // ho + 1) * ho)  # the range's rows of this image
            for k0 in range(0, whole, lanes):
                _channel_block(xf, wf, yf, pf, wb, bias, k0, t0, t1, h, wd, c, ho, wo, ctot,
                               c0, kh, kw, sh, sw, ph, pw, cols, act, lo_v, hi_v, p0_v, p1_v,
                               tag, ktag)
            if whole < c:
                _channel_block(xf, wf, yf, pf, wb, bias, whole, t0, t1, h, wd, c, ho, wo, ctot,
                               c0, kh, kw, sh, sw, ph, pw, cols, act, lo8, hi8, p08, p18, T8,
                               ktag)
            t0 = t1
    for t in range(lo, hi):
        n, oh, ybase, a_lo, a_hi = _output_row(t, ho, wo, ctot, c0, kh, h, sh, ph)
        ow = 0
        while not plane and ow + 4 <= wo:  # in place: 4 pixels, all blocks of channels
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
        while not plane and ow < wo:  # the last < 4 pixels of the row, one at a time
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
