"""FusedAddLayerNorm: the residual add, the row statistics and the normalisation in one pass
per row (see :mod:`taskflow.ops.skip_norm`), with the arithmetic of the LayerNormalization
kernel (:mod:`.norm`: float64 statistics, at most a few float32 ulps from the reference)."""

from __future__ import annotations

import numpy as np
from numba import njit

from ..norm import STASH_DTYPES
from ..registry import register_kernel
from ..skip_norm import fused_add_layernorm
from .common import MIN_TASK_ELEMENTS, fast_dtype, new_output, run_ranges, vector


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _add_standardize_rows(a, b, scale, bias, y, s, eps, r0):
    """Per row r: s = a + b; y = (s - mean) / sqrt(var + eps) * scale + bias (bias may be
    empty), statistics in float64 as in the LayerNormalization kernel. Row r of ``a`` is row
    ``r0 + r`` of the whole input; it adds row ``(r0 + r) % len(b)`` of ``b`` (a skip
    broadcast over the leading axes, as position embeddings are)."""
    rows, d = a.shape
    nb = bias.shape[0]
    nskip = b.shape[0]
    for r in range(rows):
        sr = s[r]
        br = b[(r0 + r) % nskip]
        total = 0.0
        for j in range(d):
            v = a[r, j] + br[j]
            sr[j] = v
            total += v
        mu = total / d
        sq = 0.0
        for j in range(d):
            dev = sr[j] - mu
            sq += dev * dev
        inv = 1.0 / np.sqrt(sq / d + eps)
        # the normalisation in y's dtype, as in the LayerNormalization kernel
        mu_t, inv_t = y.dtype.type(mu), y.dtype.type(inv)
        yr = y[r]
        if nb > 0:
            for j in range(d):
                yr[j] = (sr[j] - mu_t) * inv_t * scale[j] + bias[j]
        else:
            for j in range(d):
                yr[j] = (sr[j] - mu_t) * inv_t * scale[j]


def _skip_rows(x: np.ndarray, skip: np.ndarray, d: int) -> bool:
    """Whether ``skip`` is ``x``'s shape or a trailing part of it with leading 1s, covering
    whole rows of ``d`` (so its rows repeat down x's rows: GPT's (1, S, D) position
    embeddings against (N, S, D)); other broadcasts run the reference."""
    if skip.ndim > x.ndim or skip.size == 0 or skip.size % d:
        return False
    shape = (1,) * (x.ndim - skip.ndim) + skip.shape
    lead = next((i for i, n in enumerate(shape) if n != 1), x.ndim)
    return shape[lead:] == x.shape[lead:]


@register_kernel("FusedAddLayerNorm", "cpu")
def fused_add_layernorm_cpu(X: np.ndarray, Skip: np.ndarray, Scale: np.ndarray,
                            B: np.ndarray | None = None, *, axis: int = -1,
                            epsilon: float = 1e-5,
                            stash_type: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """FusedAddLayerNorm, rows of the normalised axes over the kernel threads; broadcast
    operands and other dtypes run the reference."""
    d = int(np.prod(X.shape[axis % X.ndim:])) if X.ndim and -X.ndim <= axis < X.ndim else 0
    if not (fast_dtype(X, Skip) and d > 0 and X.size > 0 and _skip_rows(X, Skip, d)
            and stash_type in STASH_DTYPES and Scale.size == d
            and (B is None or B.size == d)):
        return fused_add_layernorm(X, Skip, Scale, B, axis=axis, epsilon=epsilon,
                                   stash_type=stash_type)
    t = X.dtype
    a = np.ascontiguousarray(X).reshape(-1, d)
    b = np.ascontiguousarray(Skip).reshape(-1, d)  # _skip_rows(...) rows, repeating
    y = new_output(a.shape, t)
    s = new_output(a.shape, t)
    scale = vector(Scale, t)
    bias = np.zeros(0, t) if B is None else vector(B, t)
    eps = float(t.type(epsilon))
    run_ranges(lambda lo, hi: _add_standardize_rows(a[lo:hi], b, scale, bias, y[lo:hi],
                                                    s[lo:hi], eps, lo),
               a.shape[0], max(1, MIN_TASK_ELEMENTS // max(1, d)))
    return y.reshape(X.shape), s.reshape(X.shape)
