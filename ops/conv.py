"""Convolutions: Conv, ConvTranspose, and FusedConv (domain ``taskflow``).

Conv is im2col + one GEMM: ``sliding_window_view`` gives every receptive field as a strided view,
one copy lays the columns out as ``(group, Cin/group * prod(kernel), out_pixels)`` and a batched
``np.matmul`` (BLAS, accumulating in the input dtype as ONNX Runtime does) contracts them with the
weights. A 1x1 kernel skips im2col and is a plain matmul. ConvTranspose is the adjoint: one GEMM
to columns, then a col2im scatter-add whose Python loop runs over kernel taps, never pixels.

``apply_activation`` applies the fused epilogues of FusedConv, FusedGemm and FusedMatMul.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from taskflow.errors import ShapeError, UnsupportedOpError

from . import registry
from .movement import channel_shuffle as shuffle_channels
from .registry import register

#: Largest im2col/col2im buffer built at once; bigger batches go in slices of samples. 16 MiB
#: holds one sample of ResNet-50's largest im2col (conv1: 147 x 12544 float32 = 7 MiB), so batch
#: 1 is a single GEMM, while a batch of 256 would otherwise need 1.8 GiB. Smaller slices also
#: keep the copy in cache: at batch 8 of a 64x56x56 3x3 layer, one 58 MiB im2col took ~3x longer
#: than eight per-sample ones.
IM2COL_BUDGET_BYTES = 16 << 20

# --------------------------------------------------------------------------------------------
# Fused activation epilogues (mirrors ONNX Runtime's com.microsoft FusedConv "activation").

#: Activations a fused op may apply, with the ONNX names of ``activation_params`` in order.
#: Each runs the registered reference of that ONNX op, so a fused node computes exactly what
#: the unfused graph did and every activation has one definition. Clip takes its bounds as
#: inputs (opset >= 11), the others as attributes.
ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "": (),
    "Relu": (),
    "LeakyRelu": ("alpha",),
    "Sigmoid": (),
    "Tanh": (),
    "Clip": ("min", "max"),
    "HardSigmoid": ("alpha", "beta"),
    "Gelu": ("approximate",),  # 0 (default): the erf form; 1: the tanh form
    "HardSwish": (),
}


def apply_activation(y: np.ndarray, activation: str = "",
                     params: Sequence[float] | None = None) -> np.ndarray:
    """``activation(y)`` for a name in :data:`ACTIVATIONS`, parameters in ONNX order.

    Omitted trailing parameters take the ONNX op's defaults.

    Examples
    --------
    >>> apply_activation(np.array([-2.0, 3.0], np.float32), "LeakyRelu", [0.5])
    array([-1.,  3.], dtype=float32)
    """
    try:
        names = ACTIVATIONS[activation]
    except KeyError:
        raise UnsupportedOpError(f"fused activation {activation!r} is not supported "
                                 f"(known: {sorted(ACTIVATIONS)})") from None
    params = list(params if params is not None else ())
    if len(params) > len(names):
        raise ValueError(f"activation {activation!r} takes {len(names)} parameter(s) "
                         f"{list(names)}, got activation_params={params!r}")
    if not activation:
        return y
    # Parameters as scalars of y's dtype, so float32 results stay float32.
    values = [y.dtype.type(p) for p in params]
    reference = registry.get(activation).reference
    if activation == "Clip":
        return reference(y, *(np.asarray(v) for v in values))
    if activation == "Gelu":  # ONNX's attribute is a string; the fused op's parameter 0 / 1
        return reference(y, approximate="tanh" if params and params[0] else "none")
    return reference(y, **dict(zip(names, values)))


# --------------------------------------------------------------------------------------------
# Shared window arithmetic (also used by pool.py).

def spatial_attrs(nd: int, strides: Sequence[int] | None,
                  dilations: Sequence[int] | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Strides and dilations with their ONNX defaults (all ones)."""
    return tuple(strides or (1,) * nd), tuple(dilations or (1,) * nd)


def resolve_pads(in_spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                 dilations: Sequence[int], pads: Sequence[int] | None,
                 auto_pad: str) -> tuple[list[int], list[int]]:
    """Begin and end pads per spatial axis, resolving ``auto_pad`` as ONNX Conv and pools do."""
    nd = len(in_spatial)
    if auto_pad in ("NOTSET", ""):
        p = list(pads) if pads is not None else [0] * (2 * nd)
        if len(p) != 2 * nd:
            raise ShapeError(f"pads={p!r} needs {2 * nd} entries for {nd} spatial axes")
        return p[:nd], p[nd:]
    if auto_pad == "VALID":
        return [0] * nd, [0] * nd
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"auto_pad={auto_pad!r}; expected NOTSET, SAME_UPPER, SAME_LOWER "
                         "or VALID")
    begin, end = [], []
    for i, k, s, d in zip(in_spatial, kernel, strides, dilations):
        total = max(0, (-(-i // s) - 1) * s + (k - 1) * d + 1 - i)
        small, big = total // 2, total - total // 2  # SAME_UPPER puts the odd pad at the end
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return begin, end


def _check_kernel(w: np.ndarray, kernel_shape: Sequence[int] | None, nd: int) -> None:
    if w.ndim != nd + 2:
        raise ShapeError(f"weight has shape {w.shape}; expected rank {nd + 2} for an input "
                         f"with {nd} spatial axes")
    if kernel_shape is not None and tuple(kernel_shape) != w.shape[2:]:
        raise ShapeError(f"kernel_shape={list(kernel_shape)!r} but the weight's spatial shape "
                         f"is {w.shape[2:]}")


def _batch_step(bytes_per_sample: int) -> int:
    return max(1, IM2COL_BUDGET_BYTES // max(1, bytes_per_sample))


# --------------------------------------------------------------------------------------------
# Conv

def check_groups(c: int, w_shape: Sequence[int], group: int) -> None:
    """ShapeError unless ``c`` input channels and weight shape ``w_shape`` fit ``group``."""
    if c != w_shape[1] * group or w_shape[0] % group:
        raise ShapeError(f"Conv input has {c} channels and weight shape {tuple(w_shape)} with "
                         f"group={group}; expected C = W.shape[1] * group and W.shape[0] % group "
                         "== 0")


def window_geometry(padded: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                    dilations: Sequence[int]) -> tuple[list[int], list[int]]:
    """(span of a dilated window, output size) per spatial axis of a padded input; a
    ShapeError when the window does not fit."""
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    out = [(i - sp) // s + 1 for i, sp, s in zip(padded, span, strides)]
    if any(o <= 0 for o in out):
        raise ShapeError(f"Conv kernel span {span} does not fit the padded input "
                         f"{tuple(padded)}")
    return span, out


def _conv(x: np.ndarray, w: np.ndarray, group: int, strides: tuple[int, ...],
          dilations: tuple[int, ...], pb: list[int], pe: list[int]) -> np.ndarray:
    n, c, nd = x.shape[0], x.shape[1], x.ndim - 2
    m, kernel = w.shape[0], w.shape[2:]
    check_groups(c, w.shape, group)
    if any(pb) or any(pe):
        x = np.pad(x, [(0, 0), (0, 0), *zip(pb, pe)])
    span, out = window_geometry(x.shape[2:], kernel, strides, dilations)
    cg, mg, kp, p = c // group, m // group, math.prod(kernel), math.prod(out)
    wg = w.astype(x.dtype, copy=False).reshape(group, mg, cg * kp)
    y = np.empty((n, group, mg, p), dtype=x.dtype)
    if kp == 1:  # 1x1: no im2col, the input already is the column matrix
        xs = x[(slice(None), slice(None), *(slice(None, None, s) for s in strides))]
        np.matmul(wg, xs.reshape(n, group, cg, p), out=y)
        return y.reshape(n, m, *out)
    win = sliding_window_view(x, span, axis=tuple(range(2, 2 + nd)))  # (n, c, *full, *span)
    win = win[(slice(None), slice(None), *(slice(None, None, s) for s in strides),
               *(slice(None, None, d) for d in dilations))]  # (n, c, *out, *kernel)
    # (n, c, *kernel, *out): the copy made by reshape below then reads output pixels in order.
    win = win.transpose(0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd))
    step = _batch_step(c * kp * p * x.itemsize)
    for i in range(0, n, step):
        cols = win[i:i + step].reshape(-1, group, cg * kp, p)
        np.matmul(wg, cols, out=y[i:i + step])
    return y.reshape(n, m, *out)


def conv_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any], **attrs: Any) -> int:
    """2 * N * Cout * prod(out_spatial) * Cin/group * prod(kernel), + one add per output if B."""
    w, y = in_shapes[1], out_shapes[0]
    macs = math.prod(y) * math.prod(w[1:])
    has_bias = len(in_shapes) > 2 and in_shapes[2] is not None
    return 2 * macs + (math.prod(y) if has_bias else 0)


@register("Conv", "contraction", flops=conv_flops)
def conv(X: np.ndarray, W: np.ndarray, B: np.ndarray | None = None, *, auto_pad: str = "NOTSET",
         dilations: Sequence[int] | None = None, group: int = 1,
         kernel_shape: Sequence[int] | None = None, pads: Sequence[int] | None = None,
         strides: Sequence[int] | None = None) -> np.ndarray:
    """Y[n, m, o] = sum_{c, k} W[m, c, k] * Xpad[n, g(m) * Cin/group + c, o * s + k * d] + B[m]."""
    nd = X.ndim - 2
    _check_kernel(W, kernel_shape, nd)
    s, d = spatial_attrs(nd, strides, dilations)
    pb, pe = resolve_pads(X.shape[2:], W.shape[2:], s, d, pads, auto_pad)
    y = _conv(X, W, group, s, d, pb, pe)
    if B is not None:
        y += B.reshape(-1, *(1,) * nd)
    return y


# --------------------------------------------------------------------------------------------
# ConvTranspose

def _transpose_pads(in_spatial: Sequence[int], natural: Sequence[int], strides: Sequence[int],
                    pads: Sequence[int] | None, auto_pad: str,
                    output_shape: Sequence[int] | None) -> tuple[list[int], list[int]]:
    """Begin/end crop of the full ConvTranspose output (ONNX ConvTranspose's pads rules)."""
    nd = len(in_spatial)
    if output_shape is None and auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        p = [0] * (2 * nd) if pads is None or auto_pad == "VALID" else list(pads)
        return p[:nd], p[nd:]
    target = (list(output_shape)[-nd:] if output_shape is not None
              else [i * s for i, s in zip(in_spatial, strides)])
    total = [full - t for full, t in zip(natural, target)]
    # A target beyond the natural size grows the output at the end, like output_padding (as
    # ONNX Runtime does; the spec's formula is silent on negative totals).
    upper = auto_pad == "SAME_UPPER"
    begin = [0 if t < 0 else t // 2 if upper else t - t // 2 for t in total]
    return begin, [t - b for t, b in zip(total, begin)]


def conv_transpose_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any],
                         **attrs: Any) -> int:
    """2 * N * Cin * prod(in_spatial) * Cout/group * prod(kernel), + one add per output if B."""
    x, w, y = in_shapes[0], in_shapes[1], out_shapes[0]
    macs = math.prod(x) * math.prod(w[1:])
    has_bias = len(in_shapes) > 2 and in_shapes[2] is not None
    return 2 * macs + (math.prod(y) if has_bias else 0)


@register("ConvTranspose", "contraction", flops=conv_transpose_flops)
def conv_transpose(X: np.ndarray, W: np.ndarray, B: np.ndarray | None = None, *,
                   auto_pad: str = "NOTSET", dilations: Sequence[int] | None = None,
                   group: int = 1, kernel_shape: Sequence[int] | None = None,
                   output_padding: Sequence[int] | None = None,
                   output_shape: Sequence[int] | None = None, pads: Sequence[int] | None = None,
                   strides: Sequence[int] | None = None) -> np.ndarray:
    """Y[n, g(c) * Cout/group + m, i * s + k * d - pad] += X[n, c, i] * W[c, m, k]; + B[m]."""
    n, c, nd = X.shape[0], X.shape[1], X.ndim - 2
    _check_kernel(W, kernel_shape, nd)
    if W.shape[0] != c or c % group:
        raise ShapeError(f"ConvTranspose input has {c} channels, weight shape {W.shape}, "
                         f"group={group}; expected W.shape[0] == C and C % group == 0")
    kernel, in_sp = W.shape[2:], X.shape[2:]
    s, d = spatial_attrs(nd, strides, dilations)
    adj = tuple(output_padding or (0,) * nd)
    # The uncropped output covers taps landing at i * s + k * d, plus output_padding at the end.
    reach = [si * (i - 1) + (k - 1) * di + 1 for i, k, si, di in zip(in_sp, kernel, s, d)]
    natural = [r + a for r, a in zip(reach, adj)]
    pb, pe = _transpose_pads(in_sp, natural, s, pads, auto_pad, output_shape)
    out = [f - b - e for f, b, e in zip(natural, pb, pe)]
    if any(o < 0 for o in out):
        raise ShapeError(f"ConvTranspose output shape {out} is negative; check pads={pads!r}")
    # The buffer spans [lo, hi) in uncropped coordinates; a negative pad widens the output.
    lo = [min(0, b) for b in pb]
    hi = [max(r, b + o) for r, b, o in zip(reach, pb, out)]
    cg, mg, kp, p = c // group, W.shape[1], math.prod(kernel), math.prod(in_sp)
    m = mg * group
    wt = W.astype(X.dtype, copy=False).reshape(group, cg, mg * kp).transpose(0, 2, 1)
    buf = np.zeros((n, m, *(h - low for h, low in zip(hi, lo))), dtype=X.dtype)
    step = _batch_step(m * kp * p * X.itemsize)
    taps = [(k, tuple(slice(kk * di - low, kk * di - low + si * (i - 1) + 1, si)
                      for kk, di, low, si, i in zip(k, d, lo, s, in_sp)))
            for k in np.ndindex(*kernel)]
    for i0 in range(0, n, step):
        xb = X[i0:i0 + step]
        cols = np.matmul(wt, xb.reshape(xb.shape[0], group, cg, p))  # (nb, g, mg * kp, p)
        cols = cols.reshape(xb.shape[0], m, *kernel, *in_sp)
        part = buf[i0:i0 + step]
        for k, where in taps:
            part[(slice(None), slice(None), *where)] += cols[(slice(None), slice(None), *k)]
    crop = tuple(slice(b - low, b - low + o) for b, low, o in zip(pb, lo, out))
    y = np.ascontiguousarray(buf[(slice(None), slice(None), *crop)])
    if B is not None:
        y += B.reshape(-1, *(1,) * nd)
    return y


# --------------------------------------------------------------------------------------------
# FusedConv

def fused_conv_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any], **attrs: Any) -> int:
    """Conv's count, + one add per output for Z, + one op per output for the activation."""
    y = math.prod(out_shapes[0])
    has_z = len(in_shapes) > 3 and in_shapes[3] is not None
    return (conv_flops(in_shapes, out_shapes) + (y if has_z else 0)
            + (y if attrs.get("activation", "") else 0))


@register("FusedConv", "contraction", flops=fused_conv_flops, domain="taskflow")
def fused_conv(X: np.ndarray, W: np.ndarray, B: np.ndarray | None = None,
               Z: np.ndarray | None = None, *, auto_pad: str = "NOTSET",
               dilations: Sequence[int] | None = None, group: int = 1,
               kernel_shape: Sequence[int] | None = None, pads: Sequence[int] | None = None,
               strides: Sequence[int] | None = None, activation: str = "",
               activation_params: Sequence[float] | None = None,
               channel_shuffle: int = 0, precision: str = "", x_scale: float = 0.0,
               x_zero_point: int = 0, sparse: int = 0, y_precision: str = "",
               y_scale: float = 0.0, y_zero_point: int = 0) -> np.ndarray:
    """Y = activation(Conv(X', W', B) + Z), its channels then shuffled in ``channel_shuffle``
    groups when that is > 1 (ShuffleNet's shuffle after a grouped convolution, folded in).

    X' = X and W' = W, or with ``precision`` "bf16" / "int8" (and, for int8, ``x_scale``
    and ``x_zero_point``: 0 = dynamic) the fake-quantised operands of
    :func:`.quant.fake_quant_operands`, W per output channel (axis 0). ``sparse`` chooses a
    kernel (1x1 convolutions by W's non-zeros only), not a result: the reference ignores it.

    Narrow hand-offs between reduced layers (set by the executor, never stored in a model):
    with ``precision``, X may be given as the next layer's narrow form of its values (bf16
    bits in uint16; uint8 at ``x_scale`` / ``x_zero_point`` for static int8), and
    ``y_precision`` "bf16" / "int8" returns Y in that form (:func:`.quant.to_handoff`, int8
    at ``y_scale`` / ``y_zero_point``). Both are exact: the next layer would round or
    quantise its float32 input just so."""
    if y_precision:
        from .quant import check_handoff, to_handoff

        y_precision = check_handoff("FusedConv", y_precision, y_scale, y_zero_point)
        y = fused_conv(X, W, B, Z, auto_pad=auto_pad, dilations=dilations, group=group,
                       kernel_shape=kernel_shape, pads=pads, strides=strides,
                       activation=activation, activation_params=activation_params,
                       channel_shuffle=channel_shuffle, precision=precision, x_scale=x_scale,
                       x_zero_point=x_zero_point)
        return to_handoff(y, y_precision, y_scale, y_zero_point)
    if precision:
        from .quant import fake_quant_operands, from_handoff  # here: quant imports this module

        X = from_handoff(X, precision, x_scale, x_zero_point)
        X, W = fake_quant_operands("FusedConv", X, W, 0, precision, x_scale, x_zero_point)
    y = conv(X, W, B, auto_pad=auto_pad, dilations=dilations, group=group,
             kernel_shape=kernel_shape, pads=pads, strides=strides)
    if Z is not None:
        y += Z
    y = apply_activation(y, activation, activation_params)
    if int(channel_shuffle) > 1:
        y = np.ascontiguousarray(shuffle_channels(y, group=int(channel_shuffle)))
    return y
