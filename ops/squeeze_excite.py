"""FusedSqueezeExcite (domain ``taskflow``): a squeeze-and-excitation block as one op.

MobileNetV3 and EfficientNet gate each channel by a function of the whole feature map:
``x * gate(W2 @ act(W1 @ mean_hw(x) + B1) + B2)``. Exported, that is a global average
(``GlobalAveragePool`` from TorchScript, ``ReduceMean`` over the spatial axes from dynamo),
two 1x1 convolutions with their activations, and a ``Mul`` broadcasting the (N, C, 1, 1) gate
over x: five nodes, three of which are tiny, and two passes over x.
:func:`taskflow.ir.fuse_squeeze_excite.fuse_squeeze_excite` makes them one node, whose cpu
kernel pools, runs both small GEMVs and scales each sample while it is in cache. The reference
is the unfused computation itself, through the registry's references.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .registry import get, register

#: How the pooled vector was exported; each is computed by that op's own reference.
POOLS = ("GlobalAveragePool", "ReduceMean")


def squeeze_excite_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any],
                         **attrs: Any) -> int:
    """One add per input element (the pool), one multiply per output element (the scale),
    and the two GEMVs' multiply-adds."""
    n = in_shapes[0][0]
    return 2 * math.prod(out_shapes[0]) + 4 * n * math.prod(in_shapes[1][:2])


@register("FusedSqueezeExcite", "window", flops=squeeze_excite_flops, domain="taskflow")
def fused_squeeze_excite(X: np.ndarray, W1: np.ndarray, B1: np.ndarray | None,
                         W2: np.ndarray, B2: np.ndarray | None = None, *,
                         pool: str = "GlobalAveragePool", activation: str = "Relu",
                         activation_params: Sequence[float] | None = None,
                         gate: str = "HardSigmoid",
                         gate_params: Sequence[float] | None = None) -> np.ndarray:
    """X * gate(conv1x1(act(conv1x1(mean_hw(X), W1, B1)), W2, B2)).

    ``W1`` (Cr, C, 1, 1) and ``W2`` (C, Cr, 1, 1) are 1x1 convolution weights; ``activation``
    and ``gate`` are FusedConv activations (:data:`taskflow.ops.conv.ACTIVATIONS`).
    """
    if isinstance(pool, bytes):
        pool = pool.decode()
    if pool == "ReduceMean":
        axes = np.arange(2, X.ndim, dtype=np.int64)
        s = get("ReduceMean").reference(X, axes, keepdims=1)
    elif pool == "GlobalAveragePool":
        s = get("GlobalAveragePool").reference(X)
    else:
        raise ValueError(f"FusedSqueezeExcite: pool={pool!r}; expected one of {POOLS}")
    conv = get("FusedConv").reference
    h = conv(s, W1, B1, activation=activation, activation_params=activation_params)
    g = conv(h, W2, B2, activation=gate, activation_params=gate_params)
    return get("Mul").reference(X, g)
