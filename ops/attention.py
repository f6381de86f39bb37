"""FusedAttention (domain ``taskflow``): scaled dot-product attention as one op.

:func:`taskflow.ir.fuse_attention.fuse_attention` replaces the exported subgraph
``MatMul(Q, K) -> (Mul | Div by a constant) -> (Add mask) -> Softmax(last axis) -> MatMul(., V)``
by one node; the reference below is that subgraph, op by op, through the registry's own
references, so the fused graph computes exactly what the unfused one did. ``K`` is the first
MatMul's right operand as the graph has it, already transposed: ``(..., D, T)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .registry import get, register


def attention_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any], **attrs: Any) -> int:
    """2 * S * T * D (scores) + 2 * S * T * Dv (weighted sum) + 5 * S * T (scale, mask,
    softmax) per block of the leading axes."""
    q, y = in_shapes[0], out_shapes[0]
    k = in_shapes[1]
    s, t, d = q[-2] if len(q) > 1 else 1, k[-1], q[-1]
    blocks = math.prod(y[:-2]) if len(y) > 2 else 1
    dv = y[-1]
    return int(blocks * s * t * (2 * d + 2 * dv + 5))


@register("FusedAttention", "contraction", flops=attention_flops, domain="taskflow")
def fused_attention(Q: np.ndarray, K: np.ndarray, V: np.ndarray, mask: np.ndarray | None = None,
                    q_scale: np.ndarray | None = None, k_scale: np.ndarray | None = None,
                    *, scale: float = 1.0, divide: int = 0, nan_to_zero: int = 0) -> np.ndarray:
    """Y = softmax(((Q * q_scale) @ (K * k_scale)) * scale + mask, last axis) @ V (``/ scale``
    when ``divide``; NaN probabilities, from fully masked rows, as 0 when ``nan_to_zero``).
    ``q_scale`` and ``k_scale`` are one-element factors computed at run time (TorchScript's
    sdpa export derives sqrt(scale) from Q's shape), each optional."""
    if q_scale is not None:
        Q = get("Mul").reference(Q, q_scale)
    if k_scale is not None:
        K = get("Mul").reference(K, k_scale)
    s = get("MatMul").reference(Q, K)
    if scale != 1 or divide:
        c = np.asarray(scale, dtype=s.dtype)
        s = get("Div" if divide else "Mul").reference(s, c)
    if mask is not None:
        s = get("Add").reference(s, mask)
    p = get("Softmax").reference(s, axis=-1)
    if nan_to_zero:
        p = get("Where").reference(get("IsNaN").reference(p), np.zeros((), p.dtype), p)
    return get("MatMul").reference(p, V)
