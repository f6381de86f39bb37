"""Register-blocked direct convolutions for the layers GEMMs serve badly: depthwise, the
few-channel first layers of image models, small 1x1 and dense KxK on few channels.

They keep a block of output pixels x channels in vector registers (:mod:`.simd`) across all
the taps, then store each output once. Float32 only, no dilation, channel counts that are
multiples of 8; :func:`taskflow.ops.cpu.conv.conv_nhwc` picks them by shape and otherwise runs
its other paths. Each output row (n, oh) is a task item, and the fused activation runs on
the row's pixels while they are in cache.

- depthwise convolutions (``group == C == M``) have their own module, :mod:`.depthwise`,
  on the helpers below.
- :func:`pointwise_rows` (1x1, stride 1, small weights: MobileNet's expansions and
  projections, SqueezeNet's squeeze and expand layers, ShuffleNet's grouped layers): 4 rows
  x 16 output channels per block, as the stems. K = 16-96 is where a BLAS call's packing
  costs most. Groups of any width (34 outputs: a last block of 8 holding 2) and a folded
  channel shuffle: ShuffleNet's grouped 1x1 layers, one BLAS call per group before, ran
  1.3-1.7x slower, and the model 12% slower.
- :func:`few_channels_rows` (C <= 4, one group, the stem of MobileNet, ShuffleNet and
  SqueezeNet): 4 output pixels x 16 output channels per block, each tap a broadcast input
  value times two weight vectors. It reads the NCHW input in place, so there is no NHWC copy,
  no im2col and no GEMM with K = 27 and N = 16-64. It runs 1.4-2.3x faster than those at 3x3;
  7x7 (ResNet's stem) stays on the GEMM, which is as fast there.
- :func:`dense_rows` (one group, KxK, NHWC; where Winograd does not apply: SqueezeNet's
  16 -> 64 3x3, strided 3x3, 5x5 on few channels): 4 output pixels x 16 output channels per
  block, the weight in blocks of 16 output channels. 1.1-1.7x faster than im2col + GEMM where
  :data:`DENSE_MIN_WIDTH` and :data:`DENSE_MAX_TAPS` let it run.

These kernels are 8 lanes wide, and their limits were measured against MKL's AVX2 sgemm.
Where the GEMM runs AVX-512 kernels (:func:`mkl_is_wider`: MKL's, or OpenBLAS's, which
:mod:`.blas` takes on AMD CPUs), it is as fast or faster on
every pointwise and dense shape measured (Sapphire Rapids-class VM, 2 threads: ResNet-50's
64 -> 256 and 256 -> 64 1x1 at 56x56 1.6x, MobileNetV3's 96 -> 576 1.7x, 16 -> 72 even;
SqueezeNet's 16 -> 64 3x3 1.5x, its 32 -> 128 and 48 -> 192 even), so
:func:`pointwise_max_weight` and :func:`dense_max_taps` turn those two off there. The
few-channel stems stay direct (0.84-0.86x the GEMM's time on the same machine), and depthwise
layers have no GEMM form.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from numba import njit

from . import blas
from .epilogue import CLIP, HARD_SIGMOID, HARD_SWISH, NONE, RELU, activate_row
from .lowp import cpu_features
from .movement import shuffle_row
from .simd import (
    add8,
    broadcast8,
    clamp8,
    fma8,
    lanes_tag,
    load8,
    mul8,
    splat8,
    store8,
    vbroadcast,
    vload,
    vsplat,
)

#: Few-channel first layers: at most this many input channels, and taps per output at most
#: FEW_CHANNELS_MAX_TAPS (3x3 and 5x5 on 3 channels; measured no gain at 7x7).
FEW_CHANNELS_MAX = 4
FEW_CHANNELS_MAX_TAPS = 75
#: 1x1 convolutions whose weight (per group) has fewer elements run :func:`pointwise_rows`:
#: measured 1.1-1.55x faster than the GEMM up to 256 -> 64 and 96 -> 576, 1.5-2x slower at
#: 256 -> 1024 and 1024 -> 256 (where MKL's blocking pays), level at 128 -> 512.
POINTWISE_MAX_WEIGHT = 1 << 16
#: Dense KxK convolutions (one group) that Winograd does not take run :func:`dense_rows` where
#: the output is at least DENSE_MIN_WIDTH wide and a pixel has at most DENSE_MAX_TAPS taps
#: (KH x KW x C; DENSE_MAX_STRIDED_TAPS when strided). Measured against im2col + GEMM on 2
#: threads: 1.1-1.7x faster at stride 1 from 8 to 32 channels (3x3) and 16 (5x5), 1.2-1.6x at
#: stride 2 up to 128 channels (3x3), 1.2x on ResNet's 7x7 stem; 0.7-0.8x at 13-14 columns
#: (the border columns go one by one), at 5x5 on 32-64 channels, and 0.83x on ZFNet's
#: strided 5x5 on 96 channels (2400 taps). At stride 1 the GEMM's efficiency grows with the
#: output channels too, so taps x M is capped at DENSE_MAX_TAPS_X_M as well: dense / im2col
#: (time, 1 and 2 threads) was 0.75-0.77 at 16 -> 32 channels (4608), 0.92 at 32 -> 32
#: (9216), 0.95-1.09 around 18432 (16 -> 128, 32 -> 64, 24 -> 96), 1.18-1.19 at 32 -> 128
#: (36864: SqueezeNet's fire 3x3s, 56.8 against 45.5 ms on one thread), 1.13-1.17 at 40 -> 160.
DENSE_MIN_WIDTH = 20
DENSE_MAX_TAPS = 400
DENSE_MAX_TAPS_X_M = 1 << 14
DENSE_MAX_STRIDED_TAPS = 1200



@functools.lru_cache(maxsize=1)
def mkl_is_wider() -> bool:
    """Whether the GEMM here runs 16-lane (AVX-512) kernels: a sequential BLAS (MKL or
    OpenBLAS) runs it, the CPU has AVX-512F and ``TASKFLOW_ISA`` does not cap MKL at AVX2
    (with a cap, :mod:`.blas` keeps the float GEMMs on MKL)."""
    return blas.backend() != "numpy" and "avx512f" in cpu_features() \
        and blas.isa_cap() != "avx2"


#: Lane tags (:func:`.simd.lanes_tag`) of the kernels written for both widths.
T8 = lanes_tag(8)
T16 = lanes_tag(16)


def vector_lanes() -> int:
    """Lanes of the vectors the depthwise and stem kernels use here: 16 where the CPU has
    AVX-512F and ``TASKFLOW_ISA`` does not cap at AVX2, else 8. Inside :func:`routed_as`,
    16 for ``wide`` where the CPU has AVX-512F (whatever the cap: the tests run both widths
    there), else 8: a CPU without it never runs the 16-lane kernels, and each of their
    specialisations takes ~15 s to compile."""
    avx512 = "avx512f" in cpu_features()
    if _ROUTED:
        return 16 if _ROUTED[-1] and avx512 else 8
    return 16 if avx512 and blas.isa_cap() != "avx2" else 8


#: [wide]: routing as if :func:`mkl_is_wider` returned ``wide`` (:func:`routed_as`)
_ROUTED: list[bool] = []


@contextmanager
def routed_as(wide: bool) -> Iterator[None]:
    """Inside the block, route 1x1 and dense layers as if :func:`mkl_is_wider` were ``wide``,
    and give the depthwise and stem kernels 16 lanes (``wide``, where the CPU has AVX-512F)
    or 8 (:func:`vector_lanes`). Process-wide: for :func:`.warmup.warmup`, which compiles
    every kernel on every machine, and the tests, which run both routings."""
    _ROUTED.append(wide)
    try:
        yield
    finally:
        _ROUTED.pop()


def _wide() -> bool:
    return _ROUTED[-1] if _ROUTED else mkl_is_wider()


def pointwise_max_weight() -> int:
    """:data:`POINTWISE_MAX_WEIGHT`, or 0 (no 1x1 layer runs :func:`pointwise_rows`) where
    :func:`mkl_is_wider`."""
    return 0 if _wide() else POINTWISE_MAX_WEIGHT


def dense_max_taps() -> int:
    """:data:`DENSE_MAX_TAPS`, or 0 (no layer runs :func:`dense_rows`) where
    :func:`mkl_is_wider`."""
    return 0 if _wide() else DENSE_MAX_TAPS

#: The activations :func:`_act8` applies to a vector (those of CNNs); others run on the
#: stored row afterwards.
IN_REGISTERS = (NONE, RELU, CLIP, HARD_SWISH, HARD_SIGMOID)


@njit(cache=True, inline="always")
def _in_registers(act):
    """Whether :func:`_act8` applies ``act`` (:data:`IN_REGISTERS`)."""
    return act in IN_REGISTERS


@njit(cache=True, inline="always")
def _clamp_bounds(act, p0, p1, one, tag=T8):
    """The (low, high) vectors of :func:`_act8`'s clamp for ``act`` (``len(tag)`` lanes)."""
    zero = one - one
    if act == RELU:
        return vsplat(zero, tag), vsplat(np.float32(np.inf), tag)
    if act == CLIP:
        return vsplat(p0, tag), vsplat(p1, tag)
    return vsplat(zero, tag), vsplat(one, tag)  # the hard sigmoid's [0, 1]


@njit(cache=True, inline="always")
def _act_vectors(act, p0, p1, one, tag=T8):
    """The four vectors :func:`_act8` takes for ``act``: its clamp bounds, p0 and p1."""
    lo8, hi8 = _clamp_bounds(act, p0, p1, one, tag)
    return lo8, hi8, vsplat(p0, tag), vsplat(p1, tag)


@njit(cache=True, inline="always")
def _act8(v, act, lo8, hi8, p08, p18):
    """``act`` on a vector, in the arithmetic and order of :func:`.epilogue.activate_into`."""
    if act == RELU or act == CLIP:
        return clamp8(v, lo8, hi8)
    if act == HARD_SWISH:
        return mul8(v, clamp8(add8(mul8(p08, v), p18), lo8, hi8))
    if act == HARD_SIGMOID:
        return clamp8(add8(mul8(p08, v), p18), lo8, hi8)
    return v


@njit(cache=True, inline="always")
def _store4(yf, o, step, v0, v1, v2, v3, act, lo8, hi8, p08, p18):
    """The activated v0..v3 at yf[o], yf[o + step], yf[o + 2 step], yf[o + 3 step]."""
    store8(yf, o, _act8(v0, act, lo8, hi8, p08, p18))
    store8(yf, o + step, _act8(v1, act, lo8, hi8, p08, p18))
    store8(yf, o + 2 * step, _act8(v2, act, lo8, hi8, p08, p18))
    store8(yf, o + 3 * step, _act8(v3, act, lo8, hi8, p08, p18))


@njit(cache=True, inline="always")
def _activate_row_pixels(yf, y, n, oh, ybase, c0, width, act, p0, p1, one):
    """An activation :func:`_act8` does not do, on output row (n, oh)'s ``width`` channels
    from c0: one pass over the row when those are all its channels, else pixel by pixel."""
    if _in_registers(act):
        return
    wo, ctot = y.shape[2], y.shape[3]
    if c0 == 0 and width == ctot:
        activate_row(yf[ybase:ybase + wo * width], act, p0, p1, one)
    else:
        for ow in range(wo):
            activate_row(y[n, oh, ow, c0:c0 + width], act, p0, p1, one)


@njit(cache=True, inline="always")
def _output_row(t, ho, wo, ctot, c0, kh, h, sh, ph):
    """Output row ``t`` = (n, oh): n, oh, the flat offset of its first output, and the kernel
    rows [a_lo, a_hi) whose input rows exist."""
    n = t // ho
    oh = t % ho
    return (n, oh, (n * ho + oh) * wo * ctot + c0, max(0, ph - oh * sh),
            min(kh, h + ph - oh * sh))


@njit(cache=True, inline="always")
def _interior_columns(wo, wd, kw, sw, pw):
    """(first, blocked): output columns first..blocked - 1 have all their taps inside the
    input row, in whole blocks of 4; the others go one by one."""
    first = min(wo, (pw + sw - 1) // sw)
    last = max(first, min(wo, (wd - kw + pw) // sw + 1))
    return first, first + (last - first) // 4 * 4


@njit(cache=True, inline="always")
def _few_channels4(xf, w, bias, yf, o, m0, m, n, c, h, wd, oh, ow, a_lo, a_hi, kh, kw, sh, sw,
                   ph, pw, ctot, two, act, lo_v, hi_v, p0_v, p1_v, tag, ktag):
    """Output pixels ow..ow + 3 of row (n, oh), channels m0:m0 + L (``two``: m0:m0 + 2L) for
    L = len(tag), stored from yf[o] on (:func:`few_channels_rows`)."""
    lanes = len(tag)
    a0 = vload(bias, m0, tag)
    a1 = a0
    a2 = a0
    a3 = a0
    b0 = vload(bias, m0 + lanes, tag) if two else a0
    b1 = b0
    b2 = b0
    b3 = b0
    for ci in range(c):
        for a in range(a_lo, a_hi):
            p = ((n * c + ci) * h + oh * sh - ph + a) * wd + ow * sw - pw
            wrow = (ci * kh + a) * kw * m + m0
            for b in range(len(ktag)):  # a constant trip count: the taps unroll
                q = p + b
                x0 = vbroadcast(xf, q, tag)
                x1 = vbroadcast(xf, q + sw, tag)
                x2 = vbroadcast(xf, q + 2 * sw, tag)
                x3 = vbroadcast(xf, q + 3 * sw, tag)
                wv = vload(w, wrow + b * m, tag)
                a0 = fma8(x0, wv, a0)
                a1 = fma8(x1, wv, a1)
                a2 = fma8(x2, wv, a2)
                a3 = fma8(x3, wv, a3)
                if two:
                    vv = vload(w, wrow + b * m + lanes, tag)
                    b0 = fma8(x0, vv, b0)
                    b1 = fma8(x1, vv, b1)
                    b2 = fma8(x2, vv, b2)
                    b3 = fma8(x3, vv, b3)
    _store4(yf, o, ctot, a0, a1, a2, a3, act, lo_v, hi_v, p0_v, p1_v)
    if two:
        _store4(yf, o + lanes, ctot, b0, b1, b2, b3, act, lo_v, hi_v, p0_v, p1_v)


@njit(cache=True, nogil=True, error_model="numpy")
def few_channels_rows(x, w, bias, y, c0, kh, kw, sh, sw, ph, pw, act, p0, p1, one, lo, hi, tag,
                      ktag):
    """y[n, oh, ow, c0 + m] = act(bias[m] + sum over taps (ci, a, b) of x[n, ci, ih, iw] times
    W[m, ci, a, b]).

    x (N, C, H, W) C-contiguous float32 (read in place); w the weight packed as
    (C, KH, KW, M) and flattened; M % 8 == 0; y (N, Ho, Wo, Ctot) C-contiguous, the output in
    channels c0:c0 + M. Output rows (n, oh) in [lo, hi). Interior pixels go 4 at a time, in
    blocks of 2L output channels (two vectors of L = len(tag) lanes: :data:`T8` or
    :data:`T16`) while they last, then L, then (with 16 lanes) a last 8. ``ktag`` holds KW
    zeros (see :func:`.depthwise.depthwise_rows`).
    """
    if len(ktag) != kw:
        raise ValueError("few_channels_rows: ktag must hold one zero per kernel column")
    n_, c, h, wd = x.shape
    ho, wo, ctot = y.shape[1], y.shape[2], y.shape[3]
    m = bias.shape[0]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    lanes = len(tag)
    lo_v, hi_v, p0_v, p1_v = _act_vectors(act, p0, p1, one, tag)
    lo8, hi8, p08, p18 = _act_vectors(act, p0, p1, one, T8)
    first, blocked = _interior_columns(wo, wd, kw, sw, pw)
    for t in range(lo, hi):
        n, oh, ybase, a_lo, a_hi = _output_row(t, ho, wo, ctot, c0, kh, h, sh, ph)
        for ow in range(first, blocked, 4):
            o = ybase + ow * ctot
            m0 = 0
            while m0 + lanes <= m:
                two = m0 + 2 * lanes <= m
                _few_channels4(xf, w, bias, yf, o + m0, m0, m, n, c, h, wd, oh, ow, a_lo, a_hi,
                               kh, kw, sh, sw, ph, pw, ctot, two, act, lo_v, hi_v, p0_v, p1_v,
                               tag, ktag)
                m0 += 2 * lanes if two else lanes
            if m0 < m:
                _few_channels4(xf, w, bias, yf, o + m0, m0, m, n, c, h, wd, oh, ow, a_lo, a_hi,
                               kh, kw, sh, sw, ph, pw, ctot, False, act, lo8, hi8, p08, p18, T8,
                               ktag)
        for ow in range(wo):  # the border columns (and the interior's last < 4)
            if first <= ow < blocked:
                continue
            for m0 in range(0, m, 8):
                a0 = load8(bias, m0)
                for ci in range(c):
                    for a in range(a_lo, a_hi):
                        xrow = ((n * c + ci) * h + oh * sh - ph + a) * wd
                        for b in range(kw):
                            iw = ow * sw - pw + b
                            if 0 <= iw < wd:
                                a0 = fma8(broadcast8(xf, xrow + iw),
                                          load8(w, ((ci * kh + a) * kw + b) * m + m0), a0)
                store8(yf, ybase + ow * ctot + m0, _act8(a0, act, lo8, hi8, p08, p18))
        _activate_row_pixels(yf, y, n, oh, ybase, c0, m, act, p0, p1, one)


@njit(cache=True, nogil=True, error_model="numpy")
def pointwise_rows(x, w, bias, z, y, c0, groups, m, shuffle, act, p0, p1, one, lo, hi):
    """A 1x1 convolution on NHWC rows: y[r, c0 + g*Mg + j] = act(bias + z[r, ...] + sum over k
    of x[r, g*Kg + k] * W[g*Mg + j, k]), M = groups * Mg output channels.

    x (R, C) and z (R, M) C-contiguous float32 (an empty z: no residual); w and bias packed
    by :func:`pack_pointwise` (each group's outputs padded to a multiple of 8); y (R, Ctot)
    C-contiguous, the output in channels c0:c0 + M. Rows [lo, hi), 4 at a time: per input
    channel 4 broadcasts and two weight vectors make 8 multiply-adds into registers. A
    group's last block of 8 may hold fewer outputs (ShuffleNet's 34 per group): it goes
    through a small buffer, so nothing past its outputs is read or written. ``shuffle`` > 1
    channel-shuffles each row's M outputs in that many groups (ShuffleNet's folded shuffle)
    while the rows are in cache.
    """
    cin = x.shape[1]
    ctot = y.shape[1]
    kg = cin // groups
    mg = m // groups
    mgp = (mg + 7) // 8 * 8
    has_z = z.shape[0] == x.shape[0] and z.shape[0] > 0
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    lo8, hi8, p08, p18 = _act_vectors(act, p0, p1, one)
    zf = z.reshape(-1)
    one8 = splat8(one)
    tmp = np.zeros(8, np.float32)
    srow = np.empty(m if shuffle > 1 else 0, np.float32)
    r = lo
    while r < hi:
        nr = 4 if r + 4 <= hi else 1
        for g in range(groups):
            xr = r * cin + g * kg
            m0 = 0
            while m0 < mg:
                wide = m0 + 16 <= mg
                width = 16 if wide else 8
                part = 16 if wide else min(8, mg - m0)  # outputs of this block
                wb = g * kg * mgp + m0 * kg  # this block of output channels: (Kg, width)
                col = g * mg + m0
                a0 = load8(bias, g * mgp + m0)
                a1 = a0
                a2 = a0
                a3 = a0
                b0 = load8(bias, g * mgp + m0 + 8) if wide else a0
                b1 = b0
                b2 = b0
                b3 = b0
                if nr == 4:
                    for k in range(kg):
                        x0 = broadcast8(xf, xr + k)
                        x1 = broadcast8(xf, xr + cin + k)
                        x2 = broadcast8(xf, xr + 2 * cin + k)
                        x3 = broadcast8(xf, xr + 3 * cin + k)
                        w8 = load8(w, wb + k * width)
                        a0 = fma8(x0, w8, a0)
                        a1 = fma8(x1, w8, a1)
                        a2 = fma8(x2, w8, a2)
                        a3 = fma8(x3, w8, a3)
                        if wide:
                            v8 = load8(w, wb + k * width + 8)
                            b0 = fma8(x0, v8, b0)
                            b1 = fma8(x1, v8, b1)
                            b2 = fma8(x2, v8, b2)
                            b3 = fma8(x3, v8, b3)
                else:
                    for k in range(kg):
                        x0 = broadcast8(xf, xr + k)
                        a0 = fma8(x0, load8(w, wb + k * width), a0)
                        if wide:
                            b0 = fma8(x0, load8(w, wb + k * width + 8), b0)
                if has_z and part >= 8:  # the residual, added exactly (1 * z + acc)
                    zr = r * m + col
                    a0 = fma8(load8(zf, zr), one8, a0)
                    if wide:
                        b0 = fma8(load8(zf, zr + 8), one8, b0)
                    if nr == 4:
                        a1 = fma8(load8(zf, zr + m), one8, a1)
                        a2 = fma8(load8(zf, zr + 2 * m), one8, a2)
                        a3 = fma8(load8(zf, zr + 3 * m), one8, a3)
                        if wide:
                            b1 = fma8(load8(zf, zr + m + 8), one8, b1)
                            b2 = fma8(load8(zf, zr + 2 * m + 8), one8, b2)
                            b3 = fma8(load8(zf, zr + 3 * m + 8), one8, b3)
                o = r * ctot + c0 + col
                if part < 8:  # a partial block: through tmp, the residual lane by lane
                    for i in range(nr):
                        v = a0 if i == 0 else (a1 if i == 1 else (a2 if i == 2 else a3))
                        if has_z:
                            for j in range(part):
                                tmp[j] = zf[(r + i) * m + col + j]
                            v = fma8(load8(tmp, 0), one8, v)
                        store8(tmp, 0, _act8(v, act, lo8, hi8, p08, p18))
                        for j in range(part):
                            yf[o + i * ctot + j] = tmp[j]
                elif nr == 4:
                    _store4(yf, o, ctot, a0, a1, a2, a3, act, lo8, hi8, p08, p18)
                    if wide:
                        _store4(yf, o + 8, ctot, b0, b1, b2, b3, act, lo8, hi8, p08, p18)
                else:
                    store8(yf, o, _act8(a0, act, lo8, hi8, p08, p18))
                    if wide:
                        store8(yf, o + 8, _act8(b0, act, lo8, hi8, p08, p18))
                m0 += width
        if not _in_registers(act):
            if c0 == 0 and ctot == m:
                activate_row(yf[r * ctot:(r + nr) * ctot], act, p0, p1, one)
            else:
                for i in range(nr):
                    activate_row(y[r + i, c0:c0 + m], act, p0, p1, one)
        if shuffle > 1:
            for i in range(nr):
                row = y[r + i, c0:c0 + m]
                srow[:] = row
                shuffle_row(srow, row, shuffle)
        r += nr


def pack_pointwise(w: np.ndarray, groups: int) -> np.ndarray:
    """A (M, C / groups, 1, 1) weight for :func:`pointwise_rows`.

    Each group's outputs are padded with zeros to a multiple of 8, then cut into blocks of
    16 outputs while 16 remain, else 8; each block's (Kg, width) is contiguous. The
    (groups, Kg, Mg) layout this replaces read a 576 -> 96 projection's weight 384 bytes
    apart per input channel: as fast in most runs, up to 1.3x slower in others.
    """
    m, kg = w.shape[0], w.shape[1]
    mg = m // groups
    w2 = np.zeros((groups, -(-mg // 8) * 8, kg), w.dtype)
    w2[:, :mg] = w.reshape(groups, mg, kg)
    blocks = []
    for g in range(groups):
        m0 = 0
        while m0 < mg:
            width = 16 if m0 + 16 <= mg else 8
            blocks.append(np.ascontiguousarray(w2[g, m0:m0 + width].T).ravel())
            m0 += width
    return np.concatenate(blocks)


def pad_groups(bias: np.ndarray | None, groups: int, m: int, dtype: np.dtype) -> np.ndarray:
    """``bias`` (None: zeros) for :func:`pointwise_rows`: each group's padded to a multiple
    of 8 with zeros (the array itself where nothing is padded)."""
    mg = m // groups
    if mg % 8 == 0:
        return np.zeros(m, dtype) if bias is None else bias
    out = np.zeros((groups, -(-mg // 8) * 8), dtype)
    if bias is not None:
        out[:, :mg] = bias.reshape(groups, mg)
    return out.ravel()


def pack_dense(w: np.ndarray) -> np.ndarray:
    """A (M, C, KH, KW) weight for :func:`dense_rows`: blocks of 16 output channels (the last
    one 8 wide when M % 16 == 8), each (KH, KW, C, width), flattened. A block's taps are
    contiguous: with the (KH, KW, C, M) layout, consecutive input channels lay M floats apart
    and a 64-channel layer's weight thrashed L1 (measured 2x slower at 256 channels)."""
    m = w.shape[0]
    return np.concatenate([np.ascontiguousarray(w[m0:m0 + 16].transpose(2, 3, 1, 0)).ravel()
                           for m0 in range(0, m, 16)])


@njit(cache=True, nogil=True, error_model="numpy")
def dense_rows(x, w, bias, y, c0, kh, kw, sh, sw, ph, pw, act, p0, p1, one, lo, hi):
    """y[n, oh, ow, c0 + m] = act(bias[m] + sum over taps (a, b, ci) of x[n, ih, iw, ci] times
    W[m, ci, a, b]), one group, no dilation.

    x (N, H, W, C) C-contiguous float32; w packed by :func:`pack_dense`; M % 8 == 0; y
    (N, Ho, Wo, Ctot) C-contiguous, the output in channels c0:c0 + M. Output rows (n, oh) in
    [lo, hi). For each block of 16 output channels, the row's interior columns go 4 at a time:
    per tap and input channel, 4 broadcasts and two weight vectors make 8 multiply-adds into
    registers. Columns whose taps cross the border go one by one, 8 channels at a time.
    """
    n_, h, wd, c = x.shape
    ho, wo, ctot = y.shape[1], y.shape[2], y.shape[3]
    m = bias.shape[0]
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    lo8, hi8, p08, p18 = _act_vectors(act, p0, p1, one)
    first, blocked = _interior_columns(wo, wd, kw, sw, pw)
    taps = kh * kw * c
    u = np.uint64  # unsigned offsets: no wrap-around checks in the inner loop
    step = u(sw * c)
    for t in range(lo, hi):
        n, oh, ybase, a_lo, a_hi = _output_row(t, ho, wo, ctot, c0, kh, h, sh, ph)
        for m0 in range(0, m, 16):
            wide = m0 + 16 <= m
            width = 16 if wide else 8
            for ow in range(first, blocked, 4):
                a0 = load8(bias, m0)
                a1 = a0
                a2 = a0
                a3 = a0
                b0 = load8(bias, m0 + 8) if wide else a0
                b1 = b0
                b2 = b0
                b3 = b0
                for a in range(a_lo, a_hi):
                    for b in range(kw):
                        q = u(((n * h + oh * sh - ph + a) * wd + ow * sw - pw + b) * c)
                        wq = u(m0 * taps + (a * kw + b) * c * width)
                        for ci in range(c):
                            p = q + u(ci)
                            x0 = broadcast8(xf, p)
                            x1 = broadcast8(xf, p + step)
                            x2 = broadcast8(xf, p + u(2) * step)
                            x3 = broadcast8(xf, p + u(3) * step)
                            wi = wq + u(ci * width)
                            w8 = load8(w, wi)
                            a0 = fma8(x0, w8, a0)
                            a1 = fma8(x1, w8, a1)
                            a2 = fma8(x2, w8, a2)
                            a3 = fma8(x3, w8, a3)
                            if wide:
                                v8 = load8(w, wi + u(8))
                                b0 = fma8(x0, v8, b0)
                                b1 = fma8(x1, v8, b1)
                                b2 = fma8(x2, v8, b2)
                                b3 = fma8(x3, v8, b3)
                o = ybase + ow * ctot + m0
                _store4(yf, o, ctot, a0, a1, a2, a3, act, lo8, hi8, p08, p18)
                if wide:
                    _store4(yf, o + 8, ctot, b0, b1, b2, b3, act, lo8, hi8, p08, p18)
            for ow in range(wo):  # the border columns (and the interior's last < 4)
                if first <= ow < blocked:
                    continue
                for half in range(0, width, 8):
                    a0 = load8(bias, m0 + half)
                    for a in range(a_lo, a_hi):
                        for b in range(kw):
                            iw = ow * sw - pw + b
                            if 0 <= iw < wd:
                                q = ((n * h + oh * sh - ph + a) * wd + iw) * c
                                wq = m0 * taps + (a * kw + b) * c * width + half
                                for ci in range(c):
                                    a0 = fma8(broadcast8(xf, q + ci), load8(w, wq + ci * width),
                                              a0)
                    store8(yf, ybase + ow * ctot + m0 + half,
                           _act8(a0, act, lo8, hi8, p08, p18))
        _activate_row_pixels(yf, y, n, oh, ybase, c0, m, act, p0, p1, one)
