"""FusedAddLayerNorm (domain ``taskflow``): a residual Add and the LayerNormalization after it.

Every transformer block ends its two halves with ``LayerNormalization(x + residual)``;
:func:`taskflow.ir.fuse_layernorm.fuse_add_layernorm` makes the pair one node (ONNX Runtime's
SkipLayerNormalization), whose cpu kernel adds, takes the statistics and normalises each row
while it is in cache. The sum is a second output for pre-LN blocks (GPT), where it is also the
next residual. The reference is the pair itself, through the registry's references.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .registry import get, register


def add_layernorm_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any],
                        **attrs: Any) -> int:
    """One add, and LayerNormalization's ~8 operations, per element."""
    return 9 * math.prod(out_shapes[0])


@register("FusedAddLayerNorm", "norm", flops=add_layernorm_flops, domain="taskflow")
def fused_add_layernorm(X: np.ndarray, Skip: np.ndarray, Scale: np.ndarray,
                        B: np.ndarray | None = None, *, axis: int = -1, epsilon: float = 1e-5,
                        stash_type: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """S = X + Skip; Y = LayerNormalization(S, Scale, B); returns (Y, S)."""
    s = get("Add").reference(X, Skip)
    y = get("LayerNormalization").reference(s, Scale, B, axis=axis, epsilon=epsilon,
                                            stash_type=stash_type)[0]
    return y, s
