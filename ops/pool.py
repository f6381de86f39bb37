"""Window ops: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, LRN.

Each pool pads once, takes every window as a strided view with ``sliding_window_view`` (strides
and dilations are slices of that view) and reduces over the window axes one kernel tap at a
time; nothing loops over pixels. Output sizes follow the newest ONNX pool spec, including
``ceil_mode``'s rule that a window starting in the end padding is dropped, and SAME_* pads
account for dilations (ONNX Runtime's pools do not).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from taskflow.errors import ShapeError, UnsupportedOpError

from .conv import resolve_pads, spatial_attrs
from .quant import check_handoff, from_handoff, to_handoff
from .registry import register


def pool_geometry(in_sp: Sequence[int], kernel: Sequence[int], strides: Sequence[int] | None,
              dilations: Sequence[int] | None, pads: Sequence[int] | None, auto_pad: str,
              ceil_mode: int) -> tuple[list[int], list[int], list[int], list[int], tuple, tuple]:
    """Begin pads, end pads, ceil-mode overhang past the end pads, output sizes, strides and
    dilations."""
    nd = len(in_sp)
    if len(kernel) != nd:
        raise ShapeError(f"kernel_shape={list(kernel)!r} does not match the input's {nd} "
                         "spatial axes")
    s, d = spatial_attrs(nd, strides, dilations)
    pb, pe = resolve_pads(in_sp, kernel, s, d, pads, auto_pad)
    out, over = [], []
    for i, k, si, di, b, e in zip(in_sp, kernel, s, d, pb, pe):
        span = (k - 1) * di + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o = -(-i // si)
        else:  # VALID honours ceil_mode too, as ORT and ONNX shape inference do (the spec's
            # prose says VALID ignores it; its own shape inference disagrees)
            room = i + b + e - span
            o = (-(-room // si) if ceil_mode else room // si) + 1
            if ceil_mode and (o - 1) * si >= i + b:  # last window would start in end padding
                o -= 1
        if o <= 0:
            raise ShapeError(f"pool window span {span} does not fit input size {i} with pads "
                             f"({b}, {e})")
        out.append(o)
        over.append(max(0, (o - 1) * si + span - i - b - e))
    return pb, pe, over, out, s, d


def _windows(x: np.ndarray, kernel: Sequence[int], pb: Sequence[int], pe: Sequence[int],
             out: Sequence[int], s: Sequence[int], d: Sequence[int], fill: Any) -> np.ndarray:
    """View of shape (N, C, *out, *kernel) over ``x`` padded with ``fill``."""
    nd = len(kernel)
    if any(pb) or any(pe):
        x = np.pad(x, [(0, 0), (0, 0), *zip(pb, pe)], constant_values=fill)
    span = [(k - 1) * di + 1 for k, di in zip(kernel, d)]
    win = sliding_window_view(x, span, axis=tuple(range(2, 2 + nd)))
    return win[(slice(None), slice(None), *(slice(0, (o - 1) * si + 1, si) for o, si in
                                             zip(out, s)),
                *(slice(None, None, di) for di in d))]


def _reduce_window(win: np.ndarray, nd: int, ufunc: np.ufunc) -> np.ndarray:
    """``ufunc.reduce`` over the last ``nd`` (window) axes of ``win``.

    Folds one kernel tap at a time: each step is one vectorised op over every output pixel,
    ~15x faster than ``win.max(axis=...)``, whose inner loop runs over the short window axes.
    """
    taps = np.ndindex(*win.shape[win.ndim - nd:])
    acc = win[(..., *next(taps))].copy()
    for k in taps:
        ufunc(acc, win[(..., *k)], out=acc)
    return acc


def pool_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any], *,
               kernel_shape: Sequence[int] = (), **attrs: Any) -> int:
    """Output elements * window size."""
    return math.prod(out_shapes[0]) * math.prod(kernel_shape)


@register("MaxPool", "window", flops=pool_flops)
def max_pool(X: np.ndarray, *, auto_pad: str = "NOTSET", ceil_mode: int = 0,
             dilations: Sequence[int] | None = None, kernel_shape: Sequence[int],
             pads: Sequence[int] | None = None, storage_order: int = 0,
             strides: Sequence[int] | None = None, y_precision: str | bytes = "",
             y_scale: float = 0.0, y_zero_point: int = 0) -> np.ndarray:
    """Y[n, c, o] = max_k Xpad[n, c, o * s + k * d], padded with the lowest finite value.

    With ``y_precision`` (run-time planning between reduced layers, never stored: see
    :func:`taskflow.executor.narrow_handoffs`) X arrives and Y leaves narrow, as a reduced
    convolution hands its output on (:func:`.quant.to_handoff`): the maximum of X's values,
    encoded again. Both encodings keep the values' order, so that is the maximum of the codes
    (bf16 bits compared as signed magnitudes)."""
    if storage_order != 0:
        raise UnsupportedOpError(f"MaxPool storage_order={storage_order!r} is not supported "
                                 "(only 0, row-major indices)", [("MaxPool", "")])
    if y_precision:
        p = check_handoff("MaxPool", y_precision, y_scale, y_zero_point)
        y = max_pool(from_handoff(X, p, y_scale, y_zero_point), auto_pad=auto_pad,
                     ceil_mode=ceil_mode, dilations=dilations, kernel_shape=kernel_shape,
                     pads=pads, strides=strides)
        return to_handoff(y, p, y_scale, y_zero_point)
    pb, pe, over, out, s, d = pool_geometry(X.shape[2:], kernel_shape, strides, dilations, pads,
                                        auto_pad, ceil_mode)
    # Pad with the dtype's lowest finite value, as ONNX Runtime does: a window wholly in the
    # padding (possible with dilations) then yields that value rather than -inf.
    fill = (np.finfo if X.dtype.kind == "f" else np.iinfo)(X.dtype).min
    win = _windows(X, kernel_shape, pb, [e + v for e, v in zip(pe, over)], out, s, d, fill)
    return _reduce_window(win, len(out), np.maximum)


def _window_counts(in_sp: Sequence[int], kernel: Sequence[int], pb: Sequence[int],
                   pe: Sequence[int], over: Sequence[int], out: Sequence[int],
                   s: Sequence[int], d: Sequence[int], count_pad: int) -> np.ndarray:
    """Elements each window averages over, shape ``out``: separable, so an outer product."""
    count = np.ones((), dtype=np.int64)
    for i, k, b, e, v, o, si, di in zip(in_sp, kernel, pb, pe, over, out, s, d):
        # Positions that count: the input, plus the pads (never the ceil-mode overhang) when
        # count_include_pad.
        mask = np.zeros(b + i + e + v, dtype=np.int64)
        mask[0 if count_pad else b:b + i + (e if count_pad else 0)] = 1
        per_axis = sliding_window_view(mask, (k - 1) * di + 1)[:(o - 1) * si + 1:si, ::di]
        count = np.multiply.outer(count, per_axis.sum(-1))
    return count


@register("AveragePool", "window", flops=pool_flops)
def average_pool(X: np.ndarray, *, auto_pad: str = "NOTSET", ceil_mode: int = 0,
                 count_include_pad: int = 0, dilations: Sequence[int] | None = None,
                 kernel_shape: Sequence[int], pads: Sequence[int] | None = None,
                 strides: Sequence[int] | None = None) -> np.ndarray:
    """Y[n, c, o] = sum_k Xpad[n, c, o * s + k * d] / (elements counted in window o)."""
    in_sp = X.shape[2:]
    pb, pe, over, out, s, d = pool_geometry(in_sp, kernel_shape, strides, dilations, pads,
                                        auto_pad, ceil_mode)
    win = _windows(X, kernel_shape, pb, [e + v for e, v in zip(pe, over)], out, s, d, 0)
    total = _reduce_window(win, len(out), np.add)
    count = _window_counts(in_sp, kernel_shape, pb, pe, over, out, s, d, count_include_pad)
    # A window wholly in padding sums nothing; dividing by 1 keeps it 0 rather than NaN.
    return total / np.maximum(count, 1).astype(X.dtype)


def global_pool_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any],
                      **attrs: Any) -> int:
    """One op per input element."""
    return math.prod(in_shapes[0])


@register("GlobalAveragePool", "window", flops=global_pool_flops)
def global_average_pool(X: np.ndarray) -> np.ndarray:
    """Y[n, c, 1, ...] = mean over the spatial axes of X[n, c]."""
    return X.mean(axis=tuple(range(2, X.ndim)), keepdims=True)


@register("GlobalMaxPool", "window", flops=global_pool_flops)
def global_max_pool(X: np.ndarray) -> np.ndarray:
    """Y[n, c, 1, ...] = max over the spatial axes of X[n, c]."""
    return X.max(axis=tuple(range(2, X.ndim)), keepdims=True)


def lrn_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any], *, size: int = 1,
              **attrs: Any) -> int:
    """Per element: a square and ``size`` adds for the window, then a scale, pow and divide."""
    return math.prod(out_shapes[0]) * (size + 4)


@register("LRN", "window", flops=lrn_flops)
def lrn(X: np.ndarray, *, alpha: float = 1e-4, beta: float = 0.75, bias: float = 1.0,
        size: int) -> np.ndarray:
    """Y = X / (bias + alpha / size * sum_{c' near c} X[:, c']**2) ** beta."""
    lo = (size - 1) // 2  # channels before c; the window has ceil((size-1)/2) after
    sq = np.pad(X * X, [(0, 0), (lo, size - 1 - lo)] + [(0, 0)] * (X.ndim - 2))
    square_sum = _reduce_window(sliding_window_view(sq, size, axis=1), 1, np.add)
    t = X.dtype.type
    return X / (t(bias) + t(alpha / size) * square_sum) ** t(beta)
