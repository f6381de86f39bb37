"""gpu kernels of the normalisations (BatchNormalization and its fused form, Layer-, Instance-,
Group- and RMSNormalization), FusedAddLayerNorm and FusedSqueezeExcite.

Statistics are the references' two passes in the same dtypes (``stash_type`` never below the
input's precision); affine parameters are cast to the input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from taskflow.errors import ShapeError

from .. import norm as ref
from ..squeeze_excite import POOLS
from .common import apply_activation, gpu_kernel, operands


def _per_channel(p: Any, x: Any) -> Any:
    return p.astype(x.dtype, copy=False).reshape(-1, *(1,) * (x.ndim - 2))


@gpu_kernel("BatchNormalization")
def batch_normalization_gpu(X: Any, scale: Any, B: Any, input_mean: Any, input_var: Any, *,
                            epsilon: float = 1e-5, momentum: float = 0.9,
                            training_mode: int = 0) -> Any:
    if training_mode or X.ndim < 2:  # the reference's errors
        return ref.batch_normalization(X, scale, B, input_mean, input_var,
                                       training_mode=training_mode)
    xp, (X, scale, B, mean, var) = operands(X, scale, B, input_mean, input_var)
    # One multiply-add per element, folded as the reference folds it.
    a = _per_channel(scale, X) / xp.sqrt(_per_channel(var, X) + X.dtype.type(epsilon))
    b = _per_channel(B, X) - _per_channel(mean, X) * a
    return X * a + b


@gpu_kernel("FusedBatchNormalization")
def fused_batch_normalization_gpu(X: Any, scale: Any, B: Any, input_mean: Any, input_var: Any,
                                  *, epsilon: float = 1e-5, activation: str = "",
                                  activation_params: Sequence[float] | None = None) -> Any:
    y = batch_normalization_gpu(X, scale, B, input_mean, input_var, epsilon=epsilon)
    return apply_activation(y, activation, activation_params)


def _standardize(xp: Any, x: Any, axes: tuple[int, ...], epsilon: float) -> tuple[Any, ...]:
    mean = x.mean(axis=axes, keepdims=True)
    dev = x - mean
    inv_std = 1 / xp.sqrt((dev * dev).mean(axis=axes, keepdims=True) + x.dtype.type(epsilon))
    return dev * inv_std, mean, inv_std


@gpu_kernel("LayerNormalization")
def layer_normalization_gpu(X: Any, Scale: Any, B: Any = None, *, axis: int = -1,
                            epsilon: float = 1e-5, stash_type: int = 1) -> tuple[Any, ...]:
    if not -X.ndim <= axis < X.ndim or stash_type not in ref.STASH_DTYPES:
        return ref.layer_normalization(X, Scale, B, axis=axis, stash_type=stash_type)
    xp, (X, Scale, B) = operands(X, Scale, B)
    stash = np.dtype(ref.STASH_DTYPES[stash_type])
    axes = tuple(range(axis % X.ndim, X.ndim))
    x = X.astype(np.promote_types(X.dtype, stash), copy=False)
    z, mean, inv_std = _standardize(xp, x, axes, epsilon)
    y = z.astype(X.dtype, copy=False) * Scale.astype(X.dtype, copy=False)
    if B is not None:
        y += B.astype(X.dtype, copy=False)
    return y, mean.astype(stash, copy=False), inv_std.astype(stash, copy=False)


@gpu_kernel("InstanceNormalization")
def instance_normalization_gpu(X: Any, scale: Any, B: Any, *, epsilon: float = 1e-5) -> Any:
    if X.ndim < 3:
        return ref.instance_normalization(X, scale, B)
    xp, (X, scale, B) = operands(X, scale, B)
    z, _, _ = _standardize(xp, X, tuple(range(2, X.ndim)), epsilon)
    return z * _per_channel(scale, X) + _per_channel(B, X)


@gpu_kernel("GroupNormalization")
def group_normalization_gpu(X: Any, scale: Any, bias: Any, *, num_groups: int,
                            epsilon: float = 1e-5, stash_type: int = 1) -> Any:
    g, c = int(num_groups), X.shape[1] if X.ndim >= 2 else 0
    if (X.ndim < 2 or g < 1 or c % g or scale.size != c or bias.size != c
            or stash_type not in ref.STASH_DTYPES):
        return ref.group_normalization(X, scale, bias, num_groups=num_groups,
                                       stash_type=stash_type)
    xp, (X, scale, bias) = operands(X, scale, bias)
    x = X.astype(np.promote_types(X.dtype, ref.STASH_DTYPES[stash_type]), copy=False)
    grouped = x.reshape(X.shape[0], g, c // g * math.prod(X.shape[2:]))
    z, _, _ = _standardize(xp, grouped, (2,), epsilon)
    z = z.reshape(X.shape).astype(X.dtype, copy=False)
    return z * _per_channel(scale, X) + _per_channel(bias, X)


@gpu_kernel("RMSNormalization")
def rms_normalization_gpu(X: Any, scale: Any, *, axis: int = -1, epsilon: float = 1e-5,
                          stash_type: int = 1) -> Any:
    """The reference itself (array-module generic) on the device operands."""
    _, (X, scale) = operands(X, scale)
    return ref.rms_normalization(X, scale, axis=axis, epsilon=epsilon, stash_type=stash_type)


@gpu_kernel("FusedAddLayerNorm")
def fused_add_layer_norm_gpu(X: Any, Skip: Any, Scale: Any, B: Any = None, *, axis: int = -1,
                             epsilon: float = 1e-5, stash_type: int = 1) -> tuple[Any, Any]:
    xp, (X, Skip) = operands(X, Skip)
    s = X + Skip
    y = layer_normalization_gpu(s, Scale, B, axis=axis, epsilon=epsilon,
                                stash_type=stash_type)[0]
    return y, s


@gpu_kernel("FusedSqueezeExcite")
def fused_squeeze_excite_gpu(X: Any, W1: Any, B1: Any, W2: Any, B2: Any = None, *,
                             pool: str = "GlobalAveragePool", activation: str = "Relu",
                             activation_params: Sequence[float] | None = None,
                             gate: str = "HardSigmoid",
                             gate_params: Sequence[float] | None = None) -> Any:
    """X * gate(W2 @ act(W1 @ mean_hw(X) + B1) + B2): the pooled (N, C) matrix meets both
    weights as two GEMMs over the batch, and the gate broadcasts over X in one multiply."""
    if isinstance(pool, bytes):
        pool = pool.decode()
    if pool not in POOLS:
        raise ValueError(f"FusedSqueezeExcite: pool={pool!r}; expected one of {POOLS}")
    xp, (X, W1, B1, W2, B2) = operands(X, W1, B1, W2, B2)
    squeezed = X.mean(axis=tuple(range(2, X.ndim)), keepdims=True)
    h = _conv1x1(xp, squeezed, W1, B1, activation, activation_params)
    g = _conv1x1(xp, h, W2, B2, gate, gate_params)
    return X * g


def _conv1x1(xp: Any, s: Any, w: Any, b: Any, activation: str,
             params: Sequence[float] | None) -> Any:
    """A 1x1 convolution of the pooled ``(N, C, 1, ...)`` input, as a GEMM, then its bias
    and activation (the reference's FusedConv on a 1x1 map)."""
    if w.ndim != s.ndim or any(k != 1 for k in w.shape[2:]):
        raise ShapeError(f"FusedSqueezeExcite weight has shape {w.shape}; expected a 1x1 "
                         f"convolution weight of rank {s.ndim}")
    n, c = s.shape[:2]
    y = xp.matmul(s.reshape(n, c), w.reshape(w.shape[0], -1).astype(s.dtype, copy=False).T)
    if b is not None:
        y = y + b.astype(y.dtype, copy=False)
    y = y.reshape(n, y.shape[1], *(1,) * (s.ndim - 2))
    return apply_activation(y, activation, params)
