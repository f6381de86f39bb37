"""Numba kernels for BatchNormalization (and FusedBatchNormalization: BatchNorm + activation),
LayerNormalization and InstanceNormalization.

BatchNormalization folds to ``x * a + b`` per channel exactly as the reference does (the same
numpy expressions compute ``a`` and ``b``), then one parallel pass applies it in the input's
own layout, so the results are bit-identical. Layer and instance statistics are two-pass
(mean, then the mean of squared deviations), like the reference, but accumulate in float64:
at most a few float32 ulps from the reference's pairwise float32 sums.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from ..norm import (
    STASH_DTYPES,
    batch_normalization,
    fused_batch_normalization,
    instance_normalization,
    layer_normalization,
)
from ..registry import register_kernel
from .common import (
    MIN_TASK_ELEMENTS,
    as_nhwc,
    fast_dtype,
    is_channels_last,
    nchw_view,
    new_output,
    run_ranges,
    vector,
)
from .epilogue import activate_row, activation_code


@njit(cache=True, nogil=True, error_model="numpy")
def _affine(x, a, b, y, per_row, r0, act, p0, p1, one):
    """y[r, j] = act(x[r, j] * a[k] + b[k]), k = j (per_row False) or (r0 + r) % len(a)."""
    rows, m = x.shape
    nc = a.shape[0]
    for r in range(rows):
        yr = y[r]
        if per_row:
            ar = a[(r0 + r) % nc]
            br = b[(r0 + r) % nc]
            for j in range(m):
                yr[j] = x[r, j] * ar + br
        else:
            for j in range(m):
                yr[j] = x[r, j] * a[j] + b[j]
        activate_row(yr, act, p0, p1, one)


def _affine_rows(x2d: np.ndarray, a: np.ndarray, b: np.ndarray, y2d: np.ndarray,
                 per_row: bool, act: tuple[int, float, float] = (0, 0.0, 0.0)) -> None:
    t = x2d.dtype.type
    code, p0, p1 = act
    run_ranges(lambda lo, hi: _affine(x2d[lo:hi], a, b, y2d[lo:hi], per_row, lo, code, t(p0),
                                      t(p1), t(1)),
               x2d.shape[0], max(1, MIN_TASK_ELEMENTS // max(1, x2d.shape[1])))


def per_channel_affine(x: np.ndarray, a: np.ndarray, b: np.ndarray,
                       act: tuple[int, float, float] = (0, 0.0, 0.0)) -> np.ndarray | None:
    """``act(x * a + b)`` with (C,) vectors along axis 1 of x, in x's layout; None if x is
    neither C-contiguous nor channels-last."""
    a = vector(a, x.dtype)
    b = vector(b, x.dtype)
    if is_channels_last(x):
        xh = x.transpose(0, 2, 3, 1)
        y = new_output(xh.shape, xh.dtype)
        _affine_rows(xh.reshape(-1, x.shape[1]), a, b, y.reshape(-1, x.shape[1]), False, act)
        return nchw_view(y)
    if not x.flags.c_contiguous:
        return None
    n, c = x.shape[:2]
    y = new_output(x.shape, x.dtype)
    inner = x.size // max(1, n * c)
    _affine_rows(x.reshape(n * c, inner), a, b, y.reshape(n * c, inner), True, act)
    return y


def _batch_norm(X, scale, B, input_mean, input_var, epsilon, act) -> np.ndarray | None:
    """Inference BatchNormalization (+ activation) as one per-channel multiply-add pass, or
    None outside the fast cases."""
    if X.ndim < 2 or not fast_dtype(X) or X.size == 0 \
            or any(p.shape != (X.shape[1],) for p in (scale, B, input_mean, input_var)):
        return None
    t = X.dtype
    # The reference's own folding, on (C,) vectors.
    a = scale.astype(t, copy=False) / np.sqrt(input_var.astype(t, copy=False) + t.type(epsilon))
    b = B.astype(t, copy=False) - input_mean.astype(t, copy=False) * a
    y = per_channel_affine(X, a, b, act)
    if y is None:
        y = per_channel_affine(np.ascontiguousarray(X), a, b, act)
    return y


@register_kernel("BatchNormalization", "cpu")
def batch_normalization_cpu(X: np.ndarray, scale: np.ndarray, B: np.ndarray,
                            input_mean: np.ndarray, input_var: np.ndarray, *,
                            epsilon: float = 1e-5, momentum: float = 0.9,
                            training_mode: int = 0) -> np.ndarray:
    """Inference BatchNormalization as one per-channel multiply-add pass."""
    y = None if training_mode else _batch_norm(X, scale, B, input_mean, input_var, epsilon,
                                               (0, 0.0, 0.0))
    if y is None:
        return batch_normalization(X, scale, B, input_mean, input_var, epsilon=epsilon,
                                   momentum=momentum, training_mode=training_mode)
    return y


@register_kernel("FusedBatchNormalization", "cpu")
def fused_batch_normalization_cpu(X: np.ndarray, scale: np.ndarray, B: np.ndarray,
                                  input_mean: np.ndarray, input_var: np.ndarray, *,
                                  epsilon: float = 1e-5, activation: str = "",
                                  activation_params: Sequence[float] | None = None
                                  ) -> np.ndarray:
    """BatchNormalization and its activation in the same pass over each row."""
    act = activation_code(activation, activation_params)
    y = None if act is None else _batch_norm(X, scale, B, input_mean, input_var, epsilon, act)
    if y is None:
        return fused_batch_normalization(X, scale, B, input_mean, input_var, epsilon=epsilon,
                                         activation=activation,
                                         activation_params=activation_params)
    return y


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _standardize_rows(x, scale, bias, y, mean, inv_std, eps):
    """Per row r of x (R, D): y = (x - mean) * inv_std * scale + bias (scale, bias (D,) or
    length 1: broadcast); mean and inv_std (R,) in float64, rounded by the caller."""
    rows, d = x.shape
    ns = scale.shape[0]
    nb = bias.shape[0]
    for r in range(rows):
        total = 0.0
        for j in range(d):
            total += x[r, j]
        mu = total / d
        sq = 0.0
        for j in range(d):
            dev = x[r, j] - mu
            sq += dev * dev
        inv = 1.0 / np.sqrt(sq / d + eps)
        mean[r] = mu
        inv_std[r] = inv
        # the normalisation in the input's dtype: float32 lanes, no float64 round trip per
        # element (2.5x faster on a BERT row of 384; within the reference's own float32 error)
        mu_t, inv_t = y.dtype.type(mu), y.dtype.type(inv)
        if ns > 1 and nb > 1:
            for j in range(d):
                y[r, j] = (x[r, j] - mu_t) * inv_t * scale[j] + bias[j]
        else:
            for j in range(d):
                v = (x[r, j] - mu_t) * inv_t * scale[j if ns > 1 else 0]
                if nb > 0:
                    v += bias[j if nb > 1 else 0]
                y[r, j] = v


@register_kernel("LayerNormalization", "cpu")
def layer_normalization_cpu(X: np.ndarray, Scale: np.ndarray, B: np.ndarray | None = None, *,
                            axis: int = -1, epsilon: float = 1e-5,
                            stash_type: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LayerNormalization, one row (the normalised axes) per task, float64 statistics."""
    ok = (fast_dtype(X) and -X.ndim <= axis < X.ndim and stash_type in STASH_DTYPES
          and X.size > 0)
    if ok:
        lead = X.shape[:axis % X.ndim]
        d = int(np.prod(X.shape[axis % X.ndim:]))
        ok = d > 0 and Scale.size in (1, d) and (B is None or B.size in (1, d))
    if not ok:
        return layer_normalization(X, Scale, B, axis=axis, epsilon=epsilon,
                                   stash_type=stash_type)
    t = X.dtype
    x = np.ascontiguousarray(X).reshape(-1, d)
    y = np.empty_like(x)
    mean = np.empty(x.shape[0])
    inv_std = np.empty(x.shape[0])
    _standardize(x, vector(Scale, t), np.zeros(0, t) if B is None else vector(B, t),
                 y, mean, inv_std, float(t.type(epsilon)))
    stash = np.dtype(STASH_DTYPES[stash_type])
    keep = lead + (1,) * (X.ndim - len(lead))
    return (y.reshape(X.shape), mean.astype(stash).reshape(keep),
            inv_std.astype(stash).reshape(keep))


def _standardize(x, scale, bias, y, mean, inv_std, eps) -> None:
    def part(lo: int, hi: int) -> None:
        _standardize_rows(x[lo:hi], scale, bias, y[lo:hi], mean[lo:hi], inv_std[lo:hi], eps)

    run_ranges(part, x.shape[0], max(1, MIN_TASK_ELEMENTS // max(1, x.shape[1])))


@njit(cache=True, nogil=True, error_model="numpy")
def _instance_nhwc(x, scale, bias, y, eps):
    """Instance norm of x (N, P, C): statistics per (n, c) over the P pixels."""
    n_, p, c = x.shape
    for n in range(n_):
        total = np.zeros(c)
        for i in range(p):
            for k in range(c):
                total[k] += x[n, i, k]
        mu = total / p
        sq = np.zeros(c)
        for i in range(p):
            for k in range(c):
                dev = x[n, i, k] - mu[k]
                sq[k] += dev * dev
        inv = 1.0 / np.sqrt(sq / p + eps)
        for i in range(p):
            for k in range(c):
                y[n, i, k] = (x[n, i, k] - mu[k]) * inv[k] * scale[k] + bias[k]


@register_kernel("InstanceNormalization", "cpu")
def instance_normalization_cpu(X: np.ndarray, scale: np.ndarray, B: np.ndarray, *,
                               epsilon: float = 1e-5) -> np.ndarray:
    """InstanceNormalization: per (n, c) statistics, NCHW rows or NHWC pixels."""
    if X.ndim < 3 or not fast_dtype(X) or X.size == 0 \
            or scale.shape != (X.shape[1],) or B.shape != (X.shape[1],):
        return instance_normalization(X, scale, B, epsilon=epsilon)
    t = X.dtype
    n, c = X.shape[:2]
    s = vector(scale, t)
    b = vector(B, t)
    eps = float(t.type(epsilon))
    if is_channels_last(X):
        xh = as_nhwc(X)
        y = np.empty_like(xh)
        x3, y3 = xh.reshape(n, -1, c), y.reshape(n, -1, c)
        run_ranges(lambda lo, hi: _instance_nhwc(x3[lo:hi], s, b, y3[lo:hi], eps), n,
                   max(1, MIN_TASK_ELEMENTS // max(1, x3.shape[1] * c)))
        return nchw_view(y)
    x = np.ascontiguousarray(X).reshape(n * c, -1)
    y = np.empty_like(x)
    _standardize(x, np.ones(1, t), np.zeros(1, t), y, np.empty(n * c), np.empty(n * c), eps)
    # scale and shift per (n, c) row: the affine kernel's per-row mode
    out = np.empty_like(y)
    _affine_rows(y, s, b, out, True)
    return out.reshape(X.shape)
