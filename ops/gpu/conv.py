"""gpu kernels of Conv and FusedConv: explicit im2col and one batched GEMM per slice.

A strided view (:func:`.common.windows`) gives every receptive field without a copy; one copy
lays it out as ``(N, group, Cin/group * prod(kernel), out_pixels)`` and ``xp.matmul`` (cuBLAS
batched over samples and groups on a device) contracts it with the weights, as the reference
does with numpy. A 1x1 kernel is the GEMM alone. Bias, residual and activation follow as
whole-array steps; ShuffleNet's channel shuffle is a reshape of the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..conv import _check_kernel, check_groups, resolve_pads, spatial_attrs, window_geometry
from ..movement import channel_shuffle as channel_shuffle_ref
from ..quant import check_handoff, from_handoff, to_handoff
from .common import apply_activation, gpu_kernel, operands, pad_spatial, windows
from .quant import fake_quant_operands

#: Largest im2col buffer built at once; bigger batches go in slices of samples. 256 MiB keeps
#: a batch of 16 of ResNet-50's largest im2col (7 MiB per sample) in one GEMM while leaving
#: most of a small GPU's memory to activations (the CPU kernels' 16 MiB is sized for caches).
IM2COL_BUDGET_BYTES = 256 << 20


def conv2col(x: Any, w: Any, group: int, strides: Sequence[int], dilations: Sequence[int],
             pb: Sequence[int], pe: Sequence[int]) -> Any:
    """``Conv(x, w)`` without bias: im2col + batched GEMM, in x's dtype and module."""
    xp = operands(x)[0]
    n, c, nd = x.shape[0], x.shape[1], x.ndim - 2
    m, kernel = w.shape[0], tuple(w.shape[2:])
    check_groups(c, w.shape, group)
    x = pad_spatial(x, pb, pe)
    _, out = window_geometry(x.shape[2:], kernel, strides, dilations)
    cg, mg, kp, p = c // group, m // group, math.prod(kernel), math.prod(out)
    wg = w.astype(x.dtype, copy=False).reshape(group, mg, cg * kp)
    if kp == 1:  # 1x1: the (strided) input already is the column matrix
        xs = x[(slice(None), slice(None), *(slice(None, (o - 1) * s + 1, s)
                                            for o, s in zip(out, strides)))]
        return xp.matmul(wg, xs.reshape(n, group, cg, p)).reshape(n, m, *out)
    win = windows(x, kernel, strides, dilations, out)  # (n, c, *out, *kernel)
    win = win.transpose(0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd))
    if n == 0:
        return xp.zeros((0, m, *out), dtype=x.dtype)
    step = max(1, IM2COL_BUDGET_BYTES // max(1, c * kp * p * x.itemsize))
    parts = [xp.matmul(wg, win[i:i + step].reshape(-1, group, cg * kp, p))
             for i in range(0, n, step)]
    y = parts[0] if len(parts) == 1 else xp.concatenate(parts)
    return y.reshape(n, m, *out)


@gpu_kernel("Conv")
def conv_gpu(X: Any, W: Any, B: Any = None, *, auto_pad: str = "NOTSET",
             dilations: Sequence[int] | None = None, group: int = 1,
             kernel_shape: Sequence[int] | None = None, pads: Sequence[int] | None = None,
             strides: Sequence[int] | None = None) -> Any:
    xp, (X, W, B) = operands(X, W, B)
    nd = X.ndim - 2
    _check_kernel(W, kernel_shape, nd)
    s, d = spatial_attrs(nd, strides, dilations)
    pb, pe = resolve_pads(X.shape[2:], W.shape[2:], s, d, pads, auto_pad)
    y = conv2col(X, W, group, s, d, pb, pe)
    if B is not None:
        y = y + B.astype(y.dtype, copy=False).reshape(-1, *(1,) * nd)
    return y


@gpu_kernel("FusedConv")
def fused_conv_gpu(X: Any, W: Any, B: Any = None, Z: Any = None, *, auto_pad: str = "NOTSET",
                   dilations: Sequence[int] | None = None, group: int = 1,
                   kernel_shape: Sequence[int] | None = None,
                   pads: Sequence[int] | None = None, strides: Sequence[int] | None = None,
                   activation: str = "", activation_params: Sequence[float] | None = None,
                   channel_shuffle: int = 0, precision: str = "", x_scale: float = 0.0,
                   x_zero_point: int = 0, sparse: int = 0, y_precision: str = "",
                   y_scale: float = 0.0, y_zero_point: int = 0) -> Any:
    """The reference's FusedConv (narrow hand-offs included: the executor sets them on the
    cpu only) with CuPy's GEMMs."""
    if y_precision:
        y_precision = check_handoff("FusedConv", y_precision, y_scale, y_zero_point)
        y = fused_conv_gpu(X, W, B, Z, auto_pad=auto_pad, dilations=dilations, group=group,
                           kernel_shape=kernel_shape, pads=pads, strides=strides,
                           activation=activation, activation_params=activation_params,
                           channel_shuffle=channel_shuffle, precision=precision,
                           x_scale=x_scale, x_zero_point=x_zero_point)
        return to_handoff(y, y_precision, y_scale, y_zero_point)
    xp, (X, W, B, Z) = operands(X, W, B, Z)
    if precision:
        X = from_handoff(X, precision, x_scale, x_zero_point)
        X, W = fake_quant_operands("FusedConv", X, W, 0, precision, x_scale, x_zero_point)
    y = conv_gpu(X, W, B, auto_pad=auto_pad, dilations=dilations, group=group,
                 kernel_shape=kernel_shape, pads=pads, strides=strides)
    if Z is not None:
        y = y + Z
    y = apply_activation(y, activation, activation_params)
    if int(channel_shuffle) > 1:  # the reference's shuffle: reshapes only, any module
        y = xp.ascontiguousarray(channel_shuffle_ref(y, group=int(channel_shuffle)))
    return y
