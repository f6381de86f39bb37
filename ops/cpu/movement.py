"""Concat and ChannelShuffle: channel moves that keep channels-last inputs channels-last;
Gather of one index as a view.

``np.concatenate`` (the reference) returns a C-ordered (NCHW) array, which would force the
next convolution to transpose it back. Inception, SqueezeNet and DenseNet concatenate
convolution outputs, which are channels-last, so the kernel writes an NHWC output: each
input's channel rows are copied into their column block, pixels split over kernel threads.
ChannelShuffle (ShuffleNet) likewise permutes each pixel's channel row into an NHWC output.
:func:`im2col` gathers each output pixel's receptive field of an NHWC input into a row of a
GEMM operand, for the convolutions (float32 or already converted bf16 bits / uint8 values).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..movement import channel_shuffle, concat, gather
from ..registry import register_kernel
from .common import (
    MIN_TASK_ELEMENTS,
    adjacent_channels,
    as_nhwc,
    fast_dtype,
    is_channels_last,
    nchw_view,
    new_output,
    run_ranges,
)
from .simd import copy32


@njit(cache=True, nogil=True, error_model="numpy")
def _concat_rows(srcs, dst):
    """dst[r] = concatenation of src[r] for src in ``srcs`` (a tuple of (rows, c_i) arrays).

    Each output row is written whole, once: copying input by input would write every cache
    line of a row in parts (measured 1.3x slower than numpy's contiguous NCHW blocks).
    """
    for r in range(dst.shape[0]):
        d = dst[r]
        c0 = np.uint64(0)  # unsigned offsets: see im2col
        for src in srcs:
            s = src[r]
            for k in range(s.shape[0]):
                d[c0 + np.uint64(k)] = s[k]
            c0 += np.uint64(s.shape[0])


@register_kernel("Concat", "cpu")
def concat_cpu(*inputs: np.ndarray, axis: int) -> np.ndarray:
    """Concat; along channels of 4-D float inputs with any channels-last one, NHWC output;
    no copy at all when the inputs already lie side by side in one buffer."""
    first = inputs[0] if inputs else None
    if first is not None and first.ndim == 4 and int(axis) in (1, -3):
        joined = adjacent_channels(inputs)
        if joined is not None:  # the producers wrote into one buffer (taskflow.ir.placement)
            return joined
    if (first is None or first.ndim != 4 or int(axis) not in (1, -3) or not fast_dtype(*inputs)
            or not any(is_channels_last(x) for x in inputs)
            or sum(x.size for x in inputs) < MIN_TASK_ELEMENTS  # small: numpy's copy wins
            or any(x.ndim != 4 or x.shape[:1] + x.shape[2:] != first.shape[:1] + first.shape[2:]
                   for x in inputs)):
        return concat(*inputs, axis=axis)
    n, _, h, w = first.shape
    total = sum(x.shape[1] for x in inputs)
    y = new_output((n, h, w, total), first.dtype)
    rows = y.reshape(-1, total)
    # an NCHW input (rare: after an op without a channels-last kernel) is transposed first
    parts = tuple(as_nhwc(x).reshape(-1, x.shape[1]) for x in inputs)

    def block(lo: int, hi: int) -> None:
        _concat_rows(tuple(p[lo:hi] for p in parts), rows[lo:hi])

    run_ranges(block, rows.shape[0], max(1, MIN_TASK_ELEMENTS // total))
    return nchw_view(y)


@njit(cache=True, inline="always")
def shuffle_row(s, d, group):
    """d[k * group + i] = s[i * (C / group) + k]: one row's (group, C/group) block transposed.
    Reads run along the source row (3x faster than gathering each destination element), with
    unsigned offsets as in ``_concat_rows``."""
    per = s.shape[0] // group
    u = np.uint64
    for i in range(group):
        for k in range(per):
            d[u(k * group + i)] = s[u(i * per + k)]


@njit(cache=True, nogil=True, error_model="numpy")
def _shuffle_rows(src, dst, group):
    """Each row of dst = the channel shuffle of that row of src."""
    for r in range(src.shape[0]):
        shuffle_row(src[r], dst[r], group)


@register_kernel("ChannelShuffle", "cpu")
def channel_shuffle_cpu(input: np.ndarray, *, group: int) -> np.ndarray:
    """ChannelShuffle of a channels-last 4-D float input: a per-pixel gather, NHWC output."""
    group = int(group)
    if (input.ndim != 4 or not fast_dtype(input) or not is_channels_last(input) or group < 1
            or input.shape[1] % group or input.size == 0):
        return channel_shuffle(input, group=group)
    n, c, h, w = input.shape
    src = input.transpose(0, 2, 3, 1).reshape(-1, c)
    y = new_output((n, h, w, c), input.dtype)
    dst = y.reshape(-1, c)
    # a strided scatter that runs near memory speed on one thread: split only large inputs
    run_ranges(lambda lo, hi: _shuffle_rows(src[lo:hi], dst[lo:hi], group), dst.shape[0],
               max(1, 8 * MIN_TASK_ELEMENTS // c))
    return nchw_view(y)


@register_kernel("Gather", "cpu")
def gather_cpu(data: np.ndarray, indices: np.ndarray, *, axis: int = 0) -> np.ndarray:
    """Gather: one in-range index (a 0-d ``indices``) selects a view, no copy; else the
    reference (``np.take``).

    Exporters split a fused QKV projection with ``Gather(axis=0)`` of index 0, 1 and 2 from a
    permuted view (``nn.MultiheadAttention``): ``np.take`` gathers those strided rows at a
    quarter of a plain copy's speed (ViT-tiny, batch 32: 6.2 ms per Gather), while the view
    costs nothing and the consumer copies it only if it must.
    """
    if indices.ndim == 0 and indices.dtype.kind in "iu" and data.ndim > 0 \
            and -data.ndim <= int(axis) < data.ndim:
        ax = int(axis) % data.ndim
        i = int(indices)
        n = data.shape[ax]
        if -n <= i < n:
            return data[(slice(None),) * ax + (i % n,)]
    return gather(data, indices, axis=axis)


@njit(cache=True, nogil=True, error_model="numpy")
def im2col(x, cols, r0, kh, kw, sh, sw, dh, dw, ph, pw, ho, wo, groups, pad):
    """cols[i] = receptive field of output pixel r0 + i, columns ordered (g, kh, kw, c); taps
    outside the image are ``pad`` (0, or an int8 layer's zero point on quantised ``x``).

    With one group and no horizontal dilation, a kernel row's taps are kw * C contiguous
    input values: one copy instead of kw (what makes a 3-channel first layer affordable).
    Such a run moves in 32-byte vectors (:func:`.simd.copy32`), its last one spilling past
    the run's end into what the row writes next (ResNet-50's 7x7 stem in uint8: runs of 21
    bytes, 5.1 -> 3.0 ms for batch 8 on one thread), except where the spill would leave
    ``cols`` or the read leave ``x``.
    """
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    cg = c // groups
    per_image = ho * wo
    run = kw * c
    rows = x.reshape(x.shape[0], h, w * c)
    # Column offsets are unsigned: Numba checks every signed index for wrap-around (negative
    # means "from the end"), which blocks vectorisation of the copies (measured 2.6x slower).
    u = np.uint64
    size = x.itemsize
    span = (run * size + 31) // 32 * 32  # the bytes a run's vector copies move
    vectors = span <= 4 * 32 and cols.strides[1] == size \
        and cols.strides[0] == cols.shape[1] * size
    x_at, cols_at = x.ctypes.data, cols.ctypes.data
    x_end, cols_end = x_at + x.size * size, cols_at + cols.shape[0] * cols.strides[0]
    # the output pixel, stepped row by row: three divisions per row were a tenth of the
    # stem's time
    n = r0 // per_image
    oh = (r0 % per_image) // wo
    ow = r0 % wo - 1
    for i in range(cols.shape[0]):
        ow += 1
        if ow == wo:
            ow = 0
            oh += 1
            if oh == ho:
                oh = 0
                n += 1
        iw0 = ow * sw - pw
        whole_rows = groups == 1 and dw == 1 and iw0 >= 0 and iw0 + kw <= w
        for g in range(groups):
            for a in range(kh):
                ih = oh * sh - ph + a * dh
                if whole_rows:
                    base = u(a * run)
                    if 0 <= ih < h:
                        src = u(iw0 * c)
                        at = ((n * h + ih) * w + iw0) * c * size + x_at
                        to = (i * cols.shape[1] + a * run) * size + cols_at
                        if vectors and at + span <= x_end and to + span <= cols_end:
                            for k in range(0, span, 32):
                                copy32(to + k, at + k)
                            continue
                        for k in range(run):
                            cols[i, base + u(k)] = rows[n, ih, src + u(k)]
                    else:
                        for k in range(run):
                            cols[i, base + u(k)] = pad
                    continue
                for b in range(kw):
                    iw = iw0 + b * dw
                    base = u(((g * kh + a) * kw + b) * cg)
                    if 0 <= ih < h and 0 <= iw < w:
                        src = u(g * cg)
                        for k in range(cg):
                            cols[i, base + u(k)] = x[n, ih, iw, src + u(k)]
                    else:
                        for k in range(cg):
                            cols[i, base + u(k)] = pad
