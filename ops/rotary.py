"""RotaryEmbedding (opset 23): rotary positional embeddings (RoPE, arXiv:2104.09864).

Kind ``contraction``: each pair (x1, x2) of a head's first ``rotary_embedding_dim`` features
is multiplied by a 2x2 rotation whose cos/sin come from caches indexed by position -- a
multiply-accumulate over (position-gathered) weights, neither elementwise nor a normalisation.
Which batch rows stay independent is left to the Dask lowering's trace.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from taskflow.errors import ShapeError

from .elementwise import HALF_DTYPES
from .registry import register

#: Per rotated output element: two multiplies and one add.
ROTARY_FLOPS_PER_ELEMENT = 3


def rotary_flops(in_shapes: Sequence[tuple[int, ...]], out_shapes: Sequence[tuple[int, ...]],
                 *, num_heads: int = 0, **attrs: Any) -> int:
    """3 per rotated feature (2 x the caches' last dim) of every (batch, seq, head) row."""
    x, cache = in_shapes[0], in_shapes[1]
    head = x[-1] if len(x) == 4 else (x[-1] // num_heads if num_heads else 0)
    rows = math.prod(out_shapes[0]) // head if head else 0
    return ROTARY_FLOPS_PER_ELEMENT * rows * 2 * (cache[-1] if cache else 0)


@register("RotaryEmbedding", "contraction", flops=rotary_flops)
def rotary_embedding(X: np.ndarray, cos_cache: np.ndarray, sin_cache: np.ndarray,
                     position_ids: np.ndarray | None = None, *, interleaved: int = 0,
                     num_heads: int = 0, rotary_embedding_dim: int = 0) -> np.ndarray:
    """(x1, x2) -> (cos x1 - sin x2, sin x1 + cos x2) on the first rotary_embedding_dim features
    of each head (x1, x2: halves, or even/odd features if interleaved); the rest pass through.

    X is (batch, heads, seq, head_size) or (batch, seq, heads * head_size) with num_heads;
    cos/sin are (max_pos, rot/2) gathered by position_ids (batch, seq), else (batch, seq, rot/2).
    """
    if X.ndim == 4:
        x = X.transpose(0, 2, 1, 3)  # (batch, seq, heads, head_size)
    elif X.ndim == 3 and num_heads > 0 and X.shape[2] % num_heads == 0:
        x = X.reshape(*X.shape[:2], num_heads, X.shape[2] // num_heads)
    else:
        raise ShapeError(f"RotaryEmbedding input has shape {X.shape} with num_heads="
                         f"{num_heads!r}; expected (batch, heads, seq, head_size), or (batch, "
                         "seq, hidden) with num_heads > 0 dividing hidden")
    head = x.shape[3]
    rot = int(rotary_embedding_dim) or head
    if rot % 2 or rot > head:
        raise ShapeError(f"RotaryEmbedding rotary_embedding_dim={rot} must be even and at most "
                         f"head_size={head}")
    if position_ids is not None:
        pos = np.asarray(position_ids).astype(np.int64, copy=False)
        n = cos_cache.shape[0]
        if pos.size and (pos.min() < 0 or pos.max() >= n):
            raise ShapeError(f"RotaryEmbedding position_ids span [{pos.min()}, {pos.max()}]; "
                             f"the cos/sin caches have {n} positions")
        cos, sin = cos_cache[pos], sin_cache[pos]
    else:
        cos, sin = cos_cache, sin_cache
    if cos.shape[-1] != rot // 2 or sin.shape != cos.shape:
        raise ShapeError(f"RotaryEmbedding cos/sin (as gathered) have shapes {cos.shape} and "
                         f"{sin.shape}; expected (batch, seq, {rot // 2}) = rotary dim / 2")
    wide = np.float32 if X.dtype in HALF_DTYPES else X.dtype
    cos = cos.astype(wide, copy=False)[:, :, None, :]  # broadcast over heads
    sin = sin.astype(wide, copy=False)[:, :, None, :]
    first = slice(0, rot, 2) if interleaved else slice(0, rot // 2)
    second = slice(1, rot, 2) if interleaved else slice(rot // 2, rot)
    x1 = x[..., first].astype(wide, copy=False)
    x2 = x[..., second].astype(wide, copy=False)
    out = x.copy()
    out[..., first] = cos * x1 - sin * x2
    out[..., second] = sin * x1 + cos * x2
    return out.transpose(0, 2, 1, 3) if X.ndim == 4 else out.reshape(X.shape)
