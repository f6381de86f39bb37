"""Normalisations: BatchNormalization (inference), LayerNormalization, InstanceNormalization,
GroupNormalization (opset 21) and RMSNormalization (opset 23).

Statistics are two-pass (mean, then the mean of squared deviations) in the input dtype, or in
the ``stash_type`` of Layer/Group/RMSNormalization (never below the input's precision); the
affine parameters are cast to the input dtype so a float32 model stays float32 whatever dtype
its initializers were stored in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from taskflow.errors import ShapeError, UnsupportedOpError

from .conv import apply_activation
from .device import array_module
from .registry import register

#: ONNX TensorProto element types LayerNormalization's ``stash_type`` may name.
STASH_DTYPES = {1: np.float32, 10: np.float16, 11: np.float64}


def _per_channel(p: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A (C,) parameter cast to x's dtype and shaped to broadcast along axis 1 of x."""
    return p.astype(x.dtype, copy=False).reshape(-1, *(1,) * (x.ndim - 2))


def batch_norm_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any], **attrs: Any) -> int:
    """One multiply-add per element (the per-channel scale and shift are folded first)."""
    return 2 * math.prod(out_shapes[0])


@register("BatchNormalization", "norm", flops=batch_norm_flops)
def batch_normalization(X: np.ndarray, scale: np.ndarray, B: np.ndarray,
                        input_mean: np.ndarray, input_var: np.ndarray, *,
                        epsilon: float = 1e-5, momentum: float = 0.9,
                        training_mode: int = 0) -> np.ndarray:
    """Y = (X - mean) / sqrt(var + epsilon) * scale + B, per channel (axis 1)."""
    if training_mode:
        raise UnsupportedOpError("BatchNormalization with training_mode=1 is not supported; "
                                 "taskflow runs inference only (export the model in eval mode)",
                                 [("BatchNormalization", "")])
    if X.ndim < 2:
        raise ShapeError(f"BatchNormalization input has shape {X.shape}; expected (N, C, ...)")
    # Fold to one multiply-add per element, as ONNX Runtime does.
    a = _per_channel(scale, X) / np.sqrt(_per_channel(input_var, X) + X.dtype.type(epsilon))
    b = _per_channel(B, X) - _per_channel(input_mean, X) * a
    return X * a + b


def fused_batch_norm_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any],
                           **attrs: Any) -> int:
    """BatchNormalization's count, + one op per element for the activation."""
    y = math.prod(out_shapes[0])
    return 2 * y + (y if attrs.get("activation", "") else 0)


@register("FusedBatchNormalization", "norm", flops=fused_batch_norm_flops, domain="taskflow")
def fused_batch_normalization(X: np.ndarray, scale: np.ndarray, B: np.ndarray,
                              input_mean: np.ndarray, input_var: np.ndarray, *,
                              epsilon: float = 1e-5, activation: str = "",
                              activation_params: Sequence[float] | None = None) -> np.ndarray:
    """Y = activation(BatchNormalization(X, ...)): DenseNet's pre-activation BN + ReLU as one
    node (the optimiser's ``fuse_epilogues``), so the kernel makes one pass instead of two."""
    y = batch_normalization(X, scale, B, input_mean, input_var, epsilon=epsilon)
    return apply_activation(y, activation, activation_params)


def _standardize(x: np.ndarray, axes: tuple[int, ...],
                 epsilon: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x - mean) * inv_std, mean and inv_std = 1 / sqrt(var + epsilon) over ``axes``."""
    mean = x.mean(axis=axes, keepdims=True)
    dev = x - mean
    inv_std = 1 / np.sqrt((dev * dev).mean(axis=axes, keepdims=True) + x.dtype.type(epsilon))
    return dev * inv_std, mean, inv_std


def standardize_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any],
                      **attrs: Any) -> int:
    """Per element: add (mean), subtract, square, add (variance), multiply, multiply-add."""
    return 7 * math.prod(in_shapes[0])


@register("LayerNormalization", "norm", flops=standardize_flops)
def layer_normalization(X: np.ndarray, Scale: np.ndarray, B: np.ndarray | None = None, *,
                        axis: int = -1, epsilon: float = 1e-5,
                        stash_type: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y = (X - mean) / sqrt(var + epsilon) * Scale + B, statistics over axes [axis, rank)."""
    if not -X.ndim <= axis < X.ndim:
        raise ShapeError(f"LayerNormalization axis={axis!r} is out of range for input shape "
                         f"{X.shape}")
    if stash_type not in STASH_DTYPES:
        raise UnsupportedOpError(f"LayerNormalization stash_type={stash_type!r} is not "
                                 f"supported (known: {sorted(STASH_DTYPES)})",
                                 [("LayerNormalization", "")])
    # Mean and InvStdDev have dtype stash_type; the arithmetic never drops below the input's
    # own precision (a float64 input is normalised in float64). Both as in ONNX Runtime.
    stash = np.dtype(STASH_DTYPES[stash_type])
    axes = tuple(range(axis % X.ndim, X.ndim))
    x = X.astype(np.promote_types(X.dtype, stash), copy=False)
    z, mean, inv_std = _standardize(x, axes, epsilon)
    y = z.astype(X.dtype, copy=False) * Scale.astype(X.dtype, copy=False)
    if B is not None:
        y += B.astype(X.dtype, copy=False)
    return y, mean.astype(stash, copy=False), inv_std.astype(stash, copy=False)


@register("InstanceNormalization", "norm", flops=standardize_flops)
def instance_normalization(X: np.ndarray, scale: np.ndarray, B: np.ndarray, *,
                           epsilon: float = 1e-5) -> np.ndarray:
    """Y = (X - mean) / sqrt(var + epsilon) * scale[c] + B[c], statistics per (n, c)."""
    if X.ndim < 3:
        raise ShapeError(f"InstanceNormalization input has shape {X.shape}; expected "
                         "(N, C, D1, ...)")
    z, _, _ = _standardize(X, tuple(range(2, X.ndim)), epsilon)
    return z * _per_channel(scale, X) + _per_channel(B, X)


def _stash(op: str, X: np.ndarray, stash_type: int) -> np.dtype:
    """The dtype statistics are computed in: ``stash_type``, never below X's own precision."""
    if stash_type not in STASH_DTYPES:
        raise UnsupportedOpError(f"{op} stash_type={stash_type!r} is not supported (known: "
                                 f"{sorted(STASH_DTYPES)})", [(op, "")])
    return np.promote_types(X.dtype, STASH_DTYPES[stash_type])


@register("GroupNormalization", "norm", flops=standardize_flops)
def group_normalization(X: np.ndarray, scale: np.ndarray, bias: np.ndarray, *,
                        num_groups: int, epsilon: float = 1e-5,
                        stash_type: int = 1) -> np.ndarray:
    """Y = (X - mean) / sqrt(var + epsilon) * scale[c] + bias[c], statistics per (n, group)
    over the group's C / num_groups channels and all spatial positions (opset 21)."""
    g = int(num_groups)
    if X.ndim < 2 or g < 1 or X.shape[1] % g:
        raise ShapeError(f"GroupNormalization input has shape {X.shape}; expected (N, C, ...) "
                         f"with C divisible by num_groups={g}")
    c = X.shape[1]
    for name, p in (("scale", scale), ("bias", bias)):
        if p.size != c:
            old = " (opset 18's per-group form: re-export with opset >= 21)" \
                if p.size == g else ""
            raise ShapeError(f"GroupNormalization {name} has shape {p.shape}; expected ({c},), "
                             f"one per channel of input {X.shape}{old}")
    x = X.astype(_stash("GroupNormalization", X, stash_type), copy=False)
    grouped = x.reshape(X.shape[0], g, c // g * math.prod(X.shape[2:]))
    z, _, _ = _standardize(grouped, (2,), epsilon)
    z = z.reshape(X.shape).astype(X.dtype, copy=False)
    return z * _per_channel(scale, X) + _per_channel(bias, X)


def rms_norm_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any], **attrs: Any) -> int:
    """Per element: square, add (mean), multiply (by 1/rms), multiply (scale)."""
    return 4 * math.prod(in_shapes[0])


@register("RMSNormalization", "norm", flops=rms_norm_flops)
def rms_normalization(X: np.ndarray, scale: np.ndarray, *, axis: int = -1,
                      epsilon: float = 1e-5, stash_type: int = 1) -> np.ndarray:
    """Y = X / sqrt(mean(X^2) + epsilon) * scale, the mean over axes [axis, rank) (opset 23)."""
    if not -X.ndim <= axis < X.ndim:
        raise ShapeError(f"RMSNormalization axis={axis!r} is out of range for input shape "
                         f"{X.shape}; expected {-X.ndim} <= axis < {X.ndim}")
    axes = tuple(range(axis % X.ndim, X.ndim))
    x = X.astype(_stash("RMSNormalization", X, stash_type), copy=False)
    xp = array_module(x)  # numpy here; cupy when the gpu kernel hands CuPy arrays in
    mean_sq = xp.mean(x * x, axis=axes, keepdims=True)
    z = x * (1 / xp.sqrt(mean_sq + x.dtype.type(epsilon)))
    try:
        return z.astype(X.dtype, copy=False) * scale.astype(X.dtype, copy=False)
    except ValueError as exc:
        raise ShapeError(f"RMSNormalization scale of shape {scale.shape} does not broadcast "
                         f"to input shape {X.shape}") from exc
