"""Numba kernels for the window ops: MaxPool, AveragePool, the global pools and LRN.

They work on NHWC (see :mod:`.common`): a convolution's output arrives channels-last, each
output pixel is a vector over channels, and the result stays channels-last for the next
layer. Window geometry (pads, ceil mode, dilations) is the reference's own
:func:`taskflow.ops.pool.pool_geometry`; padded taps count exactly as in the reference, so the
results are bit-identical (same taps, same order). Shapes outside 2-D NCHW float32/float64
(1-D/3-D pools, MaxPool's indices output, other dtypes) run the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from ..pool import average_pool, global_average_pool, global_max_pool, lrn, max_pool, pool_geometry
from ..quant import check_handoff
from ..registry import register_kernel
from .common import (
    MIN_TASK_ELEMENTS,
    as_nhwc,
    fast_dtype,
    nchw_view,
    new_output,
    output_buffer,
    run_ranges,
    scratch,
)
from .direct import vector_lanes
from .simd import add8, div8, lanes_tag, nanmax8, store8, vload, vsplat


@njit(cache=True, nogil=True, error_model="numpy")
def max_pool_rows(x, y, c0, kh, kw, sh, sw, dh, dw, ph, pw, fill, lo, hi):
    """y[n, oh, ow, c0:c0 + C] = max over taps of x (NHWC), output rows (n, oh) in [lo, hi);
    a tap outside the input counts as ``fill``."""
    n_, h, w, c = x.shape
    ho, wo = y.shape[1], y.shape[2]
    acc = np.empty(c, x.dtype)
    for t in range(lo, hi):
        n = t // ho
        oh = t % ho
        for ow in range(wo):
            for k in range(c):
                acc[k] = -np.inf
            padded = False
            for a in range(kh):
                ih = oh * sh - ph + a * dh
                for b in range(kw):
                    iw = ow * sw - pw + b * dw
                    if ih < 0 or ih >= h or iw < 0 or iw >= w:
                        padded = True
                        continue
                    # np.maximum (nan propagates) compiles to a vector max; the form
                    # ``if v > acc[k]: acc[k] = v`` became masked stores, 2x slower on AMD
                    for k in range(c):
                        acc[k] = np.maximum(acc[k], x[n, ih, iw, k])
            if padded:
                for k in range(c):
                    acc[k] = np.maximum(acc[k], fill)
            out = y[n, oh, ow, c0:c0 + c]
            for k in range(c):
                out[k] = acc[k]


@njit(cache=True, inline="always")
def _window_vector(xf, acc, combine, n, h, w, c, k0, top, left, kh, kw, dh, dw, tag):
    """``acc`` combined (``combine``: :func:`.simd.nanmax8`, :func:`.simd.add8`) with the
    vector of channels k0.. of each tap of a pooling window (top-left input pixel ``top``,
    ``left``) inside the NHWC image n of the flat ``xf``, row by row."""
    for a in range(kh):
        ih = top + a * dh
        if ih < 0 or ih >= h:
            continue
        for b in range(kw):
            iw = left + b * dw
            if 0 <= iw < w:
                acc = combine(acc, vload(xf, ((n * h + ih) * w + iw) * c + k0, tag))
    return acc


@njit(cache=True, nogil=True, error_model="numpy")
def max_pool_vector_rows(x, y, c0, kh, kw, sh, sw, dh, dw, ph, pw, fill, lo, hi, tag):
    """:func:`max_pool_rows` for a C-contiguous float32 NHWC x whose channels are whole
    vectors of len(tag) lanes: each pixel's running maximum of a vector of channels stays in
    a register over the taps (the loop above keeps it in memory, read and written per tap),
    with the same nan propagation (:func:`.simd.nanmax8`)."""
    n_, h, w, c = x.shape
    ho, wo, ctot = y.shape[1], y.shape[2], y.shape[3]
    lanes = len(tag)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    low = vsplat(np.float32(-np.inf), tag)
    pad = vsplat(fill, tag)
    for t in range(lo, hi):
        n = t // ho
        oh = t % ho
        top = oh * sh - ph
        rows_out = top < 0 or top + (kh - 1) * dh >= h
        for ow in range(wo):
            left = ow * sw - pw
            padded = rows_out or left < 0 or left + (kw - 1) * dw >= w  # a tap outside
            o = (t * wo + ow) * ctot + c0
            for k0 in range(0, c, lanes):
                acc = _window_vector(xf, pad if padded else low, nanmax8, n, h, w, c, k0,
                                     oh * sh - ph, ow * sw - pw, kh, kw, dh, dw, tag)
                store8(yf, o + k0, acc)


@njit(cache=True, inline="always")
def _code(v):
    """A uint8 code as its own order key: codes order as their values."""
    return v


@njit(cache=True, inline="always")
def _bf16_key(v):
    """bfloat16 bits as an order key: a positive's sign bit set, a negative's bits all
    flipped. uint16 throughout: widened to int64, Numba's loop did not vectorise (70x
    slower)."""
    u = np.uint16
    return u(v ^ u(u(0x8000) | u(u(v >> u(15)) * u(0x7FFF))))


@njit(cache=True, inline="always")
def _bf16_bits(key):
    """The bfloat16 bits of an order key (:func:`_bf16_key` undone)."""
    u = np.uint16
    return u(key ^ u(u(0x8000) | u(u(u(key >> u(15)) ^ u(1)) * u(0x7FFF))))


@njit(cache=True, inline="always")
def _max_pool_codes(x, y, kh, kw, sh, sw, dh, dw, ph, pw, low, key, unkey, lo, hi):
    """:func:`max_pool_rows` on a reduced layer's narrow output (NHWC codes), as the maximum
    of their order keys ``key(code)``. Each window starts from ``low``, the key of the
    reference's padding (the lowest float32), so a padded tap needs nothing."""
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    ho, wo = y.shape[1], y.shape[2]
    acc = np.empty(c, x.dtype)
    for t in range(lo, hi):
        n = t // ho
        oh = t % ho
        for ow in range(wo):
            acc[:] = low
            for a in range(kh):
                ih = oh * sh - ph + a * dh
                if ih < 0 or ih >= h:
                    continue
                for b in range(kw):
                    iw = ow * sw - pw + b * dw
                    if iw < 0 or iw >= w:
                        continue
                    src = x[n, ih, iw]
                    for k in range(c):
                        acc[k] = max(acc[k], key(src[k]))
            out = y[n, oh, ow]
            for k in range(c):
                out[k] = unkey(acc[k])


@njit(cache=True, nogil=True, error_model="numpy")
def max_pool_u8_rows(x, y, kh, kw, sh, sw, dh, dw, ph, pw, lo, hi):
    """An int8 layer's uint8 codes: windows start from 0 (the padding's code)."""
    _max_pool_codes(x, y, kh, kw, sh, sw, dh, dw, ph, pw, np.uint8(0), _code, _code, lo, hi)


@njit(cache=True, nogil=True, error_model="numpy")
def max_pool_bf16_rows(x, y, kh, kw, sh, sw, dh, dw, ph, pw, lo, hi):
    """A bf16 layer's bits: windows start from the key of bf16 -inf (0xFF80 flipped:
    0x007F)."""
    _max_pool_codes(x, y, kh, kw, sh, sw, dh, dw, ph, pw, np.uint16(0x007F), _bf16_key,
                    _bf16_bits, lo, hi)


def _vector_tag(x: np.ndarray, y: np.ndarray) -> tuple[int, ...] | None:
    """The lanes tag of the vector pool kernels for NHWC ``x`` into ``y``: float32, both
    C-contiguous, channels whole vectors (16 lanes where the CPU has AVX-512F and they fill
    them, else 8); None where the scalar loops run."""
    c = x.shape[3]
    lanes = 16 if vector_lanes() == 16 and c % 16 == 0 else 8
    ok = x.dtype == np.float32 and c % lanes == 0 and x.flags.c_contiguous \
        and y.flags.c_contiguous
    return lanes_tag(lanes) if ok else None


def max_pool_into(x: np.ndarray, y: np.ndarray, c0: int, kernel, strides, dilations, pads,
                  fill, lo: int, hi: int) -> None:
    """Output rows [lo, hi) of a max pool of the NHWC ``x`` into channels c0:c0 + C of the
    NHWC ``y``: :func:`max_pool_vector_rows` where it applies, else :func:`max_pool_rows`."""
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = kernel, strides, dilations, pads
    tag = _vector_tag(x, y)
    if tag is not None:
        max_pool_vector_rows(x, y, c0, kh, kw, sh, sw, dh, dw, ph, pw, np.float32(fill), lo, hi,
                             tag)
    else:
        max_pool_rows(x, y, c0, kh, kw, sh, sw, dh, dw, ph, pw, x.dtype.type(fill), lo, hi)


@njit(cache=True, inline="always")
def _taps(start, k, d, lo, hi):
    """How many of a window's ``k`` taps (from ``start``, ``d`` apart) lie in [lo, hi)."""
    count = 0
    for a in range(k):
        if lo <= start + a * d < hi:
            count += 1
    return count


@njit(cache=True, nogil=True, error_model="numpy")
def _avg_pool(x, y, c0, kh, kw, sh, sw, dh, dw, ph, pw, lo_h, hi_h, lo_w, hi_w, lo, hi):
    """y[..., c0:c0 + C] = sum of in-input taps / (taps inside [lo, hi) per axis, at least 1),
    NHWC.

    [lo_*, hi_*) is the input itself, or the input plus its pads when count_include_pad;
    output rows (n, oh) in [lo, hi).
    """
    n_, h, w, c = x.shape
    ho, wo = y.shape[1], y.shape[2]
    for t in range(lo, hi):
        n = t // ho
        oh = t % ho
        acc = np.empty(c, x.dtype)
        count_h = _taps(oh * sh - ph, kh, dh, lo_h, hi_h)
        for ow in range(wo):
            for k in range(c):
                acc[k] = 0
            count_w = _taps(ow * sw - pw, kw, dw, lo_w, hi_w)
            for a in range(kh):
                ih = oh * sh - ph + a * dh
                if ih < 0 or ih >= h:
                    continue
                for b in range(kw):
                    iw = ow * sw - pw + b * dw
                    if iw < 0 or iw >= w:
                        continue
                    for k in range(c):
                        acc[k] += x[n, ih, iw, k]
            # int / float32 divides in float64 and rounds once: the float32 quotient exactly.
            count = max(count_h * count_w, 1)
            out = y[n, oh, ow, c0:c0 + c]
            for k in range(c):
                out[k] = acc[k] / count


@njit(cache=True, nogil=True, error_model="numpy")
def avg_pool_vector_rows(x, y, c0, kh, kw, sh, sw, dh, dw, ph, pw, lo_h, hi_h, lo_w, hi_w, lo,
                         hi, tag):
    """:func:`_avg_pool` for a C-contiguous float32 NHWC x whose channels are whole vectors
    of len(tag) lanes: each pixel's sum of a vector of channels stays in a register over the
    taps (the loop above reads and writes it in memory per tap). The same sums in the same
    order, divided in float32: the same quotients (a float32 division rounds once, as the
    float64 one rounded to float32 does)."""
    n_, h, w, c = x.shape
    ho, wo, ctot = y.shape[1], y.shape[2], y.shape[3]
    lanes = len(tag)
    xf = x.reshape(-1)
    yf = y.reshape(-1)
    zero = vsplat(np.float32(0), tag)
    for t in range(lo, hi):
        n = t // ho
        oh = t % ho
        count_h = _taps(oh * sh - ph, kh, dh, lo_h, hi_h)
        for ow in range(wo):
            count_w = _taps(ow * sw - pw, kw, dw, lo_w, hi_w)
            count = vsplat(np.float32(max(count_h * count_w, 1)), tag)
            o = (t * wo + ow) * ctot + c0
            for k0 in range(0, c, lanes):
                acc = _window_vector(xf, zero, add8, n, h, w, c, k0, oh * sh - ph,
                                     ow * sw - pw, kh, kw, dh, dw, tag)
                store8(yf, o + k0, div8(acc, count))


@njit(cache=True, nogil=True, error_model="numpy")
def _global_pool(x, y, take_max):
    """y[n, c] = mean (or max) of x[n, :, c] over the pixels of x (N, P, C)."""
    n_, p, c = x.shape
    for n in range(n_):
        if take_max:
            acc = np.full(c, -np.inf, x.dtype)
            for i in range(p):
                for k in range(c):
                    acc[k] = np.maximum(acc[k], x[n, i, k])
            for k in range(c):
                y[n, k] = acc[k]
        else:
            total = np.zeros(c, np.float64)  # float64: the mean of 3136 pixels stays exact
            for i in range(p):
                for k in range(c):
                    total[k] += x[n, i, k]
            for k in range(c):
                y[n, k] = total[k] / p


@njit(cache=True, nogil=True, error_model="numpy")
def _lrn_base(x, d, size, alpha_over_size, bias):
    """d = bias + alpha/size * (sum of squares over each channel's window), rows of x and d
    (R, C); scalars in x's dtype.

    Squares go into a zero-padded row and the window is summed one offset at a time over the
    whole row (vectorised), in window order from its first tap, as the reference's fold does
    (the padding's zeros add nothing), so the sums are bit-identical.
    """
    rows, c = x.shape
    lo = (size - 1) // 2
    sq = np.zeros(c + size, x.dtype)
    acc = np.empty(c, x.dtype)
    u = np.uint64  # unsigned offsets: see movement.im2col
    for r in range(rows):
        xr = x[r]
        for k in range(c):
            v = xr[k]
            sq[u(lo) + u(k)] = v * v
        for k in range(c):
            acc[k] = sq[k]
        for j in range(1, size):
            for k in range(c):
                acc[k] += sq[u(j) + u(k)]
        dr = d[r]
        for k in range(c):
            dr[k] = bias + alpha_over_size * acc[k]


#: Rows of an LRN block: its denominators stay in L2 between the passes.
LRN_BLOCK_ELEMENTS = 1 << 15


def _rows_per_task(row_elements: int, kernel_shape: Sequence[int]) -> int:
    return max(1, MIN_TASK_ELEMENTS // max(1, row_elements * kernel_shape[0] * kernel_shape[1]))


def _pool_case(X: np.ndarray, kernel_shape: Sequence[int]) -> bool:
    return X.ndim == 4 and len(kernel_shape) == 2 and fast_dtype(X)


@register_kernel("MaxPool", "cpu")
def max_pool_cpu(X: np.ndarray, *, auto_pad: str = "NOTSET", ceil_mode: int = 0,
                 dilations: Sequence[int] | None = None, kernel_shape: Sequence[int],
                 pads: Sequence[int] | None = None, storage_order: int = 0,
                 strides: Sequence[int] | None = None, y_precision: str | bytes = "",
                 y_scale: float = 0.0, y_zero_point: int = 0) -> np.ndarray:
    """MaxPool (see :func:`taskflow.ops.pool.max_pool`), NHWC; narrow values in and out
    with ``y_precision`` (:func:`max_pool_narrow_rows`)."""
    narrow = check_handoff("MaxPool", y_precision, y_scale, y_zero_point) if y_precision \
        else ""
    code = {"": None, "bf16": np.uint16, "int8": np.uint8}[narrow]
    if storage_order != 0 or X.ndim != 4 or len(kernel_shape) != 2 or (
            X.dtype != code if narrow else not fast_dtype(X)):
        return max_pool(X, auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations,
                        kernel_shape=kernel_shape, pads=pads, storage_order=storage_order,
                        strides=strides, y_precision=y_precision, y_scale=y_scale,
                        y_zero_point=y_zero_point)
    pb, _, _, out, s, d = pool_geometry(X.shape[2:], kernel_shape, strides, dilations, pads,
                                    auto_pad, ceil_mode)
    if narrow:
        xh = as_nhwc(X)
        y = new_output((X.shape[0], out[0], out[1], X.shape[1]), X.dtype)
        rows = max_pool_bf16_rows if narrow == "bf16" else max_pool_u8_rows
        run_ranges(lambda lo, hi: rows(xh, y, *kernel_shape, *s, *d, *pb[:2], lo, hi),
            X.shape[0] * out[0], _rows_per_task(out[1] * X.shape[1], kernel_shape))
        return nchw_view(y)
    xh = as_nhwc(X)
    y, c0 = output_buffer((X.shape[0], out[0], out[1], X.shape[1]), X.dtype)
    fill = np.finfo(X.dtype).min
    run_ranges(lambda lo, hi: max_pool_into(xh, y, c0, kernel_shape, s, d, pb[:2], fill, lo, hi),
               X.shape[0] * out[0], _rows_per_task(out[1] * X.shape[1], kernel_shape))
    return nchw_view(y[..., c0:c0 + X.shape[1]])


@register_kernel("AveragePool", "cpu")
def average_pool_cpu(X: np.ndarray, *, auto_pad: str = "NOTSET", ceil_mode: int = 0,
                     count_include_pad: int = 0, dilations: Sequence[int] | None = None,
                     kernel_shape: Sequence[int], pads: Sequence[int] | None = None,
                     strides: Sequence[int] | None = None) -> np.ndarray:
    """AveragePool (see :func:`taskflow.ops.pool.average_pool`), NHWC."""
    if not _pool_case(X, kernel_shape):
        return average_pool(X, auto_pad=auto_pad, ceil_mode=ceil_mode,
                            count_include_pad=count_include_pad, dilations=dilations,
                            kernel_shape=kernel_shape, pads=pads, strides=strides)
    h, w = X.shape[2:]
    pb, pe, _, out, s, d = pool_geometry((h, w), kernel_shape, strides, dilations, pads, auto_pad,
                                     ceil_mode)
    lo_h, hi_h = (-pb[0], h + pe[0]) if count_include_pad else (0, h)
    lo_w, hi_w = (-pb[1], w + pe[1]) if count_include_pad else (0, w)
    xh = as_nhwc(X)
    y, c0 = output_buffer((X.shape[0], out[0], out[1], X.shape[1]), X.dtype)
    geometry = (kernel_shape[0], kernel_shape[1], s[0], s[1], d[0], d[1], pb[0], pb[1], lo_h,
                hi_h, lo_w, hi_w)
    tag = _vector_tag(xh, y)

    def rows(lo: int, hi: int) -> None:
        if tag is not None:
            avg_pool_vector_rows(xh, y, c0, *geometry, lo, hi, tag)
        else:
            _avg_pool(xh, y, c0, *geometry, lo, hi)

    run_ranges(rows, X.shape[0] * out[0], _rows_per_task(out[1] * X.shape[1], kernel_shape))
    return nchw_view(y[..., c0:c0 + X.shape[1]])


def _global(X: np.ndarray, take_max: bool) -> np.ndarray | None:
    if X.ndim != 4 or not fast_dtype(X) or X.shape[2] * X.shape[3] == 0:
        return None
    n, c = X.shape[:2]
    xh = as_nhwc(X).reshape(n, X.shape[2] * X.shape[3], c)
    y = np.empty((n, c), X.dtype)
    run_ranges(lambda lo, hi: _global_pool(xh[lo:hi], y[lo:hi], take_max), n,
               max(1, MIN_TASK_ELEMENTS // max(1, xh.shape[1] * c)))
    return y.reshape(n, c, 1, 1)


@register_kernel("GlobalAveragePool", "cpu")
def global_average_pool_cpu(X: np.ndarray) -> np.ndarray:
    """GlobalAveragePool, summing each channel in float64 along NHWC rows."""
    y = _global(X, False)
    return global_average_pool(X) if y is None else y


@register_kernel("GlobalMaxPool", "cpu")
def global_max_pool_cpu(X: np.ndarray) -> np.ndarray:
    """GlobalMaxPool along NHWC rows."""
    y = _global(X, True)
    return global_max_pool(X) if y is None else y


@register_kernel("LRN", "cpu")
def lrn_cpu(X: np.ndarray, *, alpha: float = 1e-4, beta: float = 0.75, bias: float = 1.0,
            size: int) -> np.ndarray:
    """LRN across channels on NHWC rows (all channels of a pixel), a block of rows at a time:
    window sums in Numba, then numpy's own (SIMD) power and division on the block while it
    is in cache. Numba's scalar libm powf ran at half the reference's speed."""
    if X.ndim != 4 or not fast_dtype(X) or size < 1 or X.size == 0:
        return lrn(X, alpha=alpha, beta=beta, bias=bias, size=size)
    n, c, h, w = X.shape
    xh = as_nhwc(X)
    y = new_output(xh.shape, xh.dtype)
    t = X.dtype.type
    x2, y2 = xh.reshape(-1, c), y.reshape(-1, c)
    block = max(1, LRN_BLOCK_ELEMENTS // c)

    def rows(lo: int, hi: int) -> None:
        d = scratch("lrn", (block, c), X.dtype)
        for r0 in range(lo, hi, block):
            r1 = min(hi, r0 + block)
            dr = d[:r1 - r0]
            _lrn_base(x2[r0:r1], dr, int(size), t(alpha / size), t(bias))
            np.power(dr, t(beta), out=dr)
            np.divide(x2[r0:r1], dr, out=y2[r0:r1])

    run_ranges(rows, x2.shape[0], max(1, MIN_TASK_ELEMENTS // c))
    return nchw_view(y)
