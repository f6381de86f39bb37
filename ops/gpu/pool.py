"""gpu kernels of the window ops: MaxPool, AveragePool, the global pools and LRN.

The window geometry (pads, ceil mode, output sizes, the per-window element counts) is the
reference's own host code; the data is padded once, viewed as ``(N, C, *out, *kernel)`` with
strides (:func:`.common.windows`) and reduced over the kernel axes in one reduction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..pool import _window_counts, max_pool, pool_geometry
from ..quant import check_handoff, from_handoff, to_handoff
from .common import gpu_kernel, operands, pad_spatial, windows


def _pooled(X: Any, kernel_shape: Sequence[int], strides: Sequence[int] | None,
            dilations: Sequence[int] | None, pads: Sequence[int] | None, auto_pad: str,
            ceil_mode: int, fill: Any, reduce: str) -> tuple[Any, tuple]:
    xp, (X,) = operands(X)
    geometry = pool_geometry(X.shape[2:], kernel_shape, strides, dilations, pads, auto_pad,
                             ceil_mode)
    pb, pe, over, out, s, d = geometry
    padded = pad_spatial(X, pb, [e + v for e, v in zip(pe, over)], fill)
    win = windows(padded, kernel_shape, s, d, out)
    axes = tuple(range(2 + len(out), 2 + 2 * len(out)))
    return getattr(xp, reduce)(win, axis=axes), geometry


@gpu_kernel("MaxPool")
def max_pool_gpu(X: Any, *, auto_pad: str = "NOTSET", ceil_mode: int = 0,
                 dilations: Sequence[int] | None = None, kernel_shape: Sequence[int],
                 pads: Sequence[int] | None = None, storage_order: int = 0,
                 strides: Sequence[int] | None = None, y_precision: str | bytes = "",
                 y_scale: float = 0.0, y_zero_point: int = 0) -> Any:
    if storage_order != 0:  # the reference's error
        return max_pool(X, kernel_shape=kernel_shape, storage_order=storage_order)
    if y_precision:  # narrow values in and out, decoded and encoded as the reference does
        p = check_handoff("MaxPool", y_precision, y_scale, y_zero_point)
        y = max_pool_gpu(from_handoff(X, p, y_scale, y_zero_point), auto_pad=auto_pad,
                         ceil_mode=ceil_mode, dilations=dilations, kernel_shape=kernel_shape,
                         pads=pads, strides=strides)
        return to_handoff(y, p, y_scale, y_zero_point)
    # Padded with the dtype's lowest finite value, as the reference (and ONNX Runtime) do.
    fill = (np.finfo if X.dtype.kind == "f" else np.iinfo)(X.dtype).min
    y, _ = _pooled(X, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode, fill, "max")
    return y


@gpu_kernel("AveragePool")
def average_pool_gpu(X: Any, *, auto_pad: str = "NOTSET", ceil_mode: int = 0,
                     count_include_pad: int = 0, dilations: Sequence[int] | None = None,
                     kernel_shape: Sequence[int], pads: Sequence[int] | None = None,
                     strides: Sequence[int] | None = None) -> Any:
    xp = operands(X)[0]
    total, (pb, pe, over, out, s, d) = _pooled(X, kernel_shape, strides, dilations, pads,
                                               auto_pad, ceil_mode, 0, "sum")
    total = total.astype(X.dtype, copy=False)
    count = _window_counts(X.shape[2:], kernel_shape, pb, pe, over, out, s, d,
                           count_include_pad)
    # A window wholly in padding sums nothing; dividing by 1 keeps it 0 rather than NaN.
    return total / xp.asarray(np.maximum(count, 1).astype(X.dtype))


@gpu_kernel("GlobalAveragePool")
def global_average_pool_gpu(X: Any) -> Any:
    xp, (X,) = operands(X)
    return X.mean(axis=tuple(range(2, X.ndim)), keepdims=True)


@gpu_kernel("GlobalMaxPool")
def global_max_pool_gpu(X: Any) -> Any:
    xp, (X,) = operands(X)
    return X.max(axis=tuple(range(2, X.ndim)), keepdims=True)


@gpu_kernel("LRN")
def lrn_gpu(X: Any, *, alpha: float = 1e-4, beta: float = 0.75, bias: float = 1.0,
            size: int) -> Any:
    xp, (X,) = operands(X)
    lo = (size - 1) // 2  # channels before c; the window has ceil((size-1)/2) after
    sq = xp.pad(X * X, [(0, 0), (lo, size - 1 - lo)] + [(0, 0)] * (X.ndim - 2))
    c = X.shape[1]
    square_sum = sq[:, 0:c].copy()
    for k in range(1, size):  # the reference's order of additions: bit-identical sums
        square_sum += sq[:, k:k + c]
    t = X.dtype.type
    return X / (t(bias) + t(alpha / size) * square_sum) ** t(beta)
