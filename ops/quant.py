"""Quantisation: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, and the integer products
MatMulInteger, ConvInteger, QLinearMatMul and QLinearConv.

The rounding is ONNX's and ONNX Runtime's (MLAS): ``x / scale`` in the float type of the operands,
rounded half to even, plus the zero point, saturated to the integer type's range. Dequantising is
``(x - zero_point) * scale`` in float32, cast to the scale's type.

The integer products contract in float64 through the float references (:func:`.conv.conv`,
``np.matmul``): after the zero points are taken off, every factor is an integer of magnitude at
most 255, so each product is below 2**16 and any sum of fewer than 2**37 of them is exact in
float64. That is ONNX's int32 accumulation exactly, and it runs on BLAS (numpy's integer matmul
does not). Requantising (QLinear*) scales the int32 accumulator by ``a_scale * b_scale / y_scale``
in float32, as MLAS does, then rounds as above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from taskflow.errors import ShapeError, UnsupportedOpError

from .conv import conv, conv_flops
from .device import array_module
from .elementwise import FLOAT8_DTYPES, cast_to, per_element
from .matmul import matmul_flops
from .registry import register


def _np(t: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(t))


#: Integer quantised types and the range QuantizeLinear saturates to (4- and 2-bit types are
#: ml_dtypes' one-byte-per-element int4/uint4/int2/uint2, as onnx's numpy_helper reads them).
INTEGER_RANGES: dict[np.dtype, tuple[int, int]] = {
    _np(t): r for t, r in (
        (TensorProto.UINT8, (0, 255)), (TensorProto.INT8, (-128, 127)),
        (TensorProto.UINT16, (0, 65535)), (TensorProto.INT16, (-32768, 32767)),
        (TensorProto.UINT4, (0, 15)), (TensorProto.INT4, (-8, 7)),
        (TensorProto.UINT2, (0, 3)), (TensorProto.INT2, (-2, 1)))}
#: 4-bit floats: no inf/nan encoding, so the cast itself saturates.
FLOAT4_DTYPES = (_np(TensorProto.FLOAT4E2M1),)
#: Requantisation: round, add the zero point, saturate, multiply-adds per output element.
REQUANT_FLOPS = 4


def _quant_error(op: str, what: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"{op}: {what}", [(op, "")])


def _along(v: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int = 0,
           op: str = "QuantizeLinear") -> np.ndarray:
    """Scale or zero point ``v`` made broadcastable against an input of ``shape``: a scalar (or
    one-element vector) as is, a 1-D vector along ``axis``, blocked (same rank, ``block_size``
    elements of ``axis`` per entry) repeated to the input's shape."""
    v = np.asarray(v)
    if v.ndim == 0 or (v.ndim == 1 and v.size == 1 and not block_size):
        return v.reshape(())
    rank = len(shape)
    if not -rank <= axis < rank:
        raise ShapeError(f"{op}: axis={axis} is out of range for an input of shape {shape}")
    axis %= rank
    if not block_size:
        if v.ndim != 1 or v.size != shape[axis]:
            raise ShapeError(f"{op}: scale/zero point of shape {v.shape} does not match axis "
                             f"{axis} of input shape {shape}; expected a scalar or "
                             f"({shape[axis]},)")
        return v.reshape([v.size if d == axis else 1 for d in range(rank)])
    v = np.repeat(v, block_size, axis=axis) if v.ndim == rank else v
    v = v.take(range(shape[axis]), axis=axis) if v.shape[axis] >= shape[axis] else v
    if v.shape != tuple(shape):
        raise ShapeError(f"{op}: blocked scale/zero point does not cover input shape {shape} "
                         f"with block_size={block_size} along axis {axis}")
    return v


def _saturate(q: np.ndarray, zero_point: np.ndarray | int, dtype: np.dtype) -> np.ndarray:
    """round_half_even(q) + zero_point, clipped to ``dtype``'s range (in float64: no wrap)."""
    lo, hi = INTEGER_RANGES[dtype]
    with np.errstate(invalid="ignore"):  # nan -> int is undefined in ONNX too
        y = np.clip(np.rint(q).astype(np.float64) + zero_point, lo, hi)
        return y.astype(dtype)


@register("QuantizeLinear", "elementwise", flops=per_element(3))
def quantize_linear(x: np.ndarray, y_scale: np.ndarray, y_zero_point: np.ndarray | None = None,
                    *, axis: int = 1, block_size: int = 0, output_dtype: int = 0,
                    precision: int = 0, saturate: int = 1) -> np.ndarray:
    """y = saturate(round_half_even(x / y_scale) + y_zero_point)"""
    op = "QuantizeLinear"
    if output_dtype and y_zero_point is not None and _np(output_dtype) != y_zero_point.dtype:
        raise ShapeError(f"{op}: output_dtype={output_dtype} but the zero point is "
                         f"{y_zero_point.dtype}")
    dtype = (y_zero_point.dtype if y_zero_point is not None
             else _np(output_dtype) if output_dtype else np.dtype(np.uint8))
    scale = _along(y_scale, x.shape, axis, block_size, op)
    if precision:
        x, scale = x.astype(_np(precision)), scale.astype(_np(precision))
    with np.errstate(divide="ignore", invalid="ignore"):
        q = x / scale
    zp = None if y_zero_point is None else _along(y_zero_point, x.shape, axis, block_size, op)
    if dtype in INTEGER_RANGES:
        return _saturate(q, 0 if zp is None else zp.astype(np.float64), dtype)
    if dtype in FLOAT8_DTYPES:
        return cast_to(q, dtype, saturate=saturate)
    if dtype in FLOAT4_DTYPES:
        return (q if zp is None else q + zp.astype(q.dtype)).astype(dtype)
    raise _quant_error(op, f"quantising to {dtype} is not supported (supported: "
                           f"{sorted(str(d) for d in (*INTEGER_RANGES, *FLOAT8_DTYPES))})")


@register("DequantizeLinear", "elementwise", flops=per_element(2))
def dequantize_linear(x: np.ndarray, x_scale: np.ndarray,
                      x_zero_point: np.ndarray | None = None, *, axis: int = 1,
                      block_size: int = 0, output_dtype: int = 0) -> np.ndarray:
    """y = (x - x_zero_point) * x_scale"""
    op = "DequantizeLinear"
    dx = x.astype(np.float32)
    # Float 8/4 zero points are 0 by definition; integer ones are exact in float32 (< 2**24).
    if x_zero_point is not None and (x.dtype in INTEGER_RANGES or x.dtype.kind in "iu"):
        dx -= _along(x_zero_point, x.shape, axis, block_size, op).astype(np.float32)
    y = dx * _along(x_scale, x.shape, axis, block_size, op)
    return y.astype(_np(output_dtype) if output_dtype else x_scale.dtype, copy=False)


# DynamicQuantizeLinear's scale comes from the min and max of the *whole* tensor, so it is a
# reduction over every axis, the batch's included: its kind tells the Dask lowering to run it
# once on the whole batch, as ONNX Runtime does, never per chunk.
@register("DynamicQuantizeLinear", "reduce", flops=per_element(5))
def dynamic_quantize_linear(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scale = (max(x, 0) - min(x, 0)) / 255; zp = round(clip(-min(x, 0) / scale, 0, 255));
    y = saturate(round_half_even(x / scale) + zp) as uint8"""
    scale, zp = dynamic_qparams(x)
    with np.errstate(invalid="ignore"):
        y = _saturate(x.astype(np.float32) / scale, zp, np.dtype(np.uint8))
    return y, np.asarray(scale, dtype=x.dtype), np.asarray(zp, dtype=np.uint8)


# --- reduced precision of FusedConv / FusedGemm / FusedMatMul -----------------------------------
# Their ``precision`` attribute ("bf16" or "int8") defines the op as the float32 op on
# fake-quantised operands (what the cpu kernels compute with bf16 or int8 GEMMs, up to float32
# summation order); the helpers below are that definition.

#: Values of the ``precision`` attribute: float32 (the default), bfloat16, int8 (u8 x s8).
PRECISIONS = ("", "bf16", "int8")
#: Largest magnitude of a per-channel int8 weight: symmetric, so -128 is never used.
INT8_WEIGHT_MAX = 127
#: The same with 7-bit weights (``reduce_range``, as ONNX Runtime's quantiser names it): a pair
#: of uint8 x int8 products then fits int16 (2 * 255 * 63 = 32130), which CPUs without VNNI
#: (AVX2's ``vpmaddubsw``) saturate at 32767 with 8-bit weights.
INT8_REDUCED_WEIGHT_MAX = 63


def dynamic_qparams(x: np.ndarray) -> tuple[np.float32, int]:
    """``(scale, zero_point)`` of a uint8 quantisation of ``x``, as DynamicQuantizeLinear.

    The range ``[min(0, min x), max(0, max x)]`` maps onto [0, 255]: ``scale = range / 255``
    (1 for an all-zero ``x``), ``zero_point = round(clip(-min / scale, 0, 255))``.

    Examples
    --------
    >>> dynamic_qparams(np.array([-1.0, 3.0], np.float32))
    (np.float32(0.015686275), 64)
    """
    f32 = np.float32
    hi = f32(max(0.0, np.max(x))) if x.size else f32(0)
    lo = f32(min(0.0, np.min(x))) if x.size else f32(0)
    # An all-zero x has no range: scale 1, as ONNX Runtime takes (the spec divides 0 by 255).
    scale = f32(1.0) if hi == lo else f32(hi - lo) / f32(255)
    zp = np.rint(np.clip(f32(0) - lo / scale, f32(0), f32(255)))
    return scale, int(zp)


def fake_quant_u8(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """``(saturate(round_half_even(x / scale) + zero_point, 0, 255) - zero_point) * scale``:
    ``x`` through a uint8 QuantizeLinear/DequantizeLinear pair, in float32 (then ``x``'s dtype).

    Examples
    --------
    >>> fake_quant_u8(np.array([-1.0, 0.26, 200.0], np.float32), 0.5, 2)  # 200 saturates
    array([ -1. ,   0.5, 126.5], dtype=float32)
    """
    s = np.float32(scale)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(np.rint(x.astype(np.float32) / s) + np.float32(zero_point), 0, 255)
        return ((q - np.float32(zero_point)) * s).astype(x.dtype, copy=False)


def quantize_weight_per_channel(w: np.ndarray, axis: int, wmax: int = INT8_WEIGHT_MAX
                                ) -> tuple[np.ndarray, np.ndarray]:
    """``(q, scale)``: ``w`` quantised to int8, symmetric, one scale per index of ``axis``.

    ``scale[c] = max|w[c]| / wmax`` (1 for an all-zero channel), ``q = round_half_even(w /
    scale)`` in [-wmax, wmax] (127; 63 for 7-bit weights); ``q * scale`` (scale broadcast
    along ``axis``) approximates ``w``. A channel that already lies exactly on a coarser
    symmetric grid, ``max|w[c]| / M`` for some M < wmax (a dequantised int8 weight, e.g. a
    7-bit ``reduce_range`` one or a per-tensor scale), keeps that grid (the smallest such M:
    a 63-level weight is also exact on 126 levels, but its integers must stay within 63):
    then ``q * scale == w`` exactly, so a QDQ model's weights stay its own.

    Examples
    --------
    >>> w = np.array([[0.7, -0.123, 0.35], [0.0, 0.0, 0.0]], np.float32)
    >>> q, s = quantize_weight_per_channel(w, 0)
    >>> q
    array([[127, -22,  64],
           [  0,   0,   0]], dtype=int8)
    >>> s
    array([0.00551181, 1.        ], dtype=float32)
    >>> w = np.float32([[64, -3, 17]]) * np.float32(0.01)   # on a 64-level grid
    >>> quantize_weight_per_channel(w, 0)
    (array([[64, -3, 17]], dtype=int8), array([0.01], dtype=float32))
    """
    w32 = np.asarray(w, dtype=np.float32)
    axis %= w32.ndim
    rows = np.moveaxis(w32, axis, 0).reshape(w32.shape[axis], -1)
    amax = np.max(np.abs(rows), axis=1) if rows.size else np.zeros(len(rows), np.float32)
    scale = np.where(amax > 0, amax / np.float32(wmax), np.float32(1))
    scale = scale.astype(np.float32)
    with np.errstate(invalid="ignore"):
        q = np.clip(np.rint(rows / scale[:, None]), -wmax, wmax)
        exact = np.all(q * scale[:, None] == rows, axis=1)
        lossy = np.flatnonzero(~exact & (amax > 0) & np.isfinite(amax))
        if wmax > INT8_REDUCED_WEIGHT_MAX:
            # a 7-bit weight whose values are 0 and +-max|w| lies on wmax levels too: it
            # keeps 63 (what CPUs without VNNI sum exactly)
            step = (amax / np.float32(INT8_REDUCED_WEIGHT_MAX)).astype(np.float32)[:, None]
            q7 = np.rint(rows / np.where(step > 0, step, np.float32(1)))
            seven = np.flatnonzero(exact & (amax > 0) & np.all(q7 * step == rows, axis=1))
            q[seven], scale[seven] = q7[seven], step[seven, 0]
    for c, grid in _exact_grids(rows[lossy], amax[lossy], wmax):
        scale[lossy[c]] = grid
        q[lossy[c]] = np.rint(rows[lossy[c]] / grid)
    q = q.astype(np.int8).reshape(np.moveaxis(w32, axis, 0).shape)
    return np.moveaxis(q, 0, axis), scale


#: Elements of a channel on which every candidate grid is tried before a full check.
_GRID_SAMPLE = 16


def _exact_grids(rows: np.ndarray, amax: np.ndarray, wmax: int = INT8_WEIGHT_MAX
                 ) -> list[tuple[int, np.float32]]:
    """``(row, step)`` for each row of ``rows`` that is exactly ``round(row / step) * step``
    with ``step = amax / M``, M < wmax the smallest that works. Each M is tried on a sample of
    the row first: a trained float weight fails them all there, at little cost."""
    found: list[tuple[int, np.float32]] = []
    levels = np.arange(1, wmax, dtype=np.float32)
    for lo in range(0, len(rows), 256):  # bounded temporaries: 256 x 126 x 16
        part = rows[lo:lo + 256]
        steps = (amax[lo:lo + 256, None] / levels).astype(np.float32)
        sample = part[:, None, :_GRID_SAMPLE]
        with np.errstate(invalid="ignore", divide="ignore"):
            ok = np.all(np.rint(sample / steps[..., None]) * steps[..., None] == sample, axis=2)
        for r, m in zip(*np.nonzero(ok)):
            if found and found[-1][0] == lo + r:
                continue  # a smaller M of this row already passed
            step = steps[r, m]
            if np.array_equal(np.rint(part[r] / step) * step, part[r]):
                found.append((lo + r, step))
    return found


def fake_quant_bf16(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to bfloat16 (round to nearest, ties to even) and back, in ``x``'s dtype.

    bfloat16 keeps float32's exponent and the top 7 of its 23 mantissa bits; NaN stays NaN.

    Examples
    --------
    >>> fake_quant_bf16(np.array([1.0, 1.00390625, 1.01171875, 3.14159], np.float32))
    array([1.      , 1.      , 1.015625, 3.140625], dtype=float32)
    """
    x32 = np.asarray(x, dtype=np.float32)
    bits = x32.view(np.uint32).astype(np.uint64)  # 64-bit: the rounding carry cannot wrap
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    y = bits.astype(np.uint32).view(np.float32)
    y = np.where(np.isnan(x32), x32, y)
    return y.astype(np.asarray(x).dtype, copy=False)


def to_handoff(y: Any, precision: str, scale: float = 0.0, zero_point: int = 0) -> Any:
    """float32 ``y`` as a reduced layer hands it to the next one narrow (a FusedConv's
    ``y_precision``): its bfloat16 bits (uint16, rounded to nearest even; NaN stays NaN) for
    "bf16", or uint8 ``saturate(round_half_even(y / scale) + zero_point)`` for "int8":
    exactly what the next layer's ``precision`` would make of ``y`` in float32
    (:func:`fake_quant_operands`). numpy or CuPy arrays, returned on the same module.

    Examples
    --------
    >>> to_handoff(np.float32([1.0, 3.14159]), "bf16")
    array([16256, 16457], dtype=uint16)
    >>> to_handoff(np.float32([-1.0, 0.26, 200.0]), "int8", 0.5, 2)
    array([  0,   3, 255], dtype=uint8)
    """
    xp = array_module(y)
    y32 = xp.asarray(y).astype(xp.float32)
    if precision == "bf16":
        bits = y32.view(xp.uint32).astype(xp.uint64)  # 64-bit: the carry cannot wrap
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return xp.where(xp.isnan(y32), (bits >> 16) | 0x40, rounded).astype(xp.uint16)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = xp.clip(xp.rint(y32 / xp.float32(scale)) + xp.float32(zero_point), 0, 255)
    return q.astype(xp.uint8)


def from_handoff(x: Any, precision: str, scale: float = 0.0, zero_point: int = 0) -> Any:
    """The float32 values of a narrow input :func:`to_handoff` made; a float ``x`` as is.

    Examples
    --------
    >>> from_handoff(np.uint16([16256, 16457]), "bf16")
    array([1.      , 3.140625], dtype=float32)
    >>> from_handoff(np.uint8([0, 3, 255]), "int8", 0.5, 2)
    array([ -1. ,   0.5, 126.5], dtype=float32)
    """
    xp = array_module(x)
    if precision == "bf16" and x.dtype == xp.uint16:
        return (x.astype(xp.uint32) << 16).view(xp.float32)
    if precision == "int8" and x.dtype == xp.uint8 and scale:
        return (x.astype(xp.float32) - xp.float32(zero_point)) * xp.float32(scale)
    return x


def check_precision(op: str, precision: str | bytes, x_scale: float = 0.0,
                    x_zero_point: int = 0) -> str:
    """The ``precision`` attribute as a str, after checking it and the int8 attributes.

    Raises :class:`~taskflow.errors.UnsupportedOpError` naming the attribute and the values
    it may take.

    Examples
    --------
    >>> check_precision("FusedConv", b"bf16")
    'bf16'
    """
    if isinstance(precision, bytes):
        precision = precision.decode()
    if precision not in PRECISIONS:
        raise _quant_error(op, f"precision={precision!r} is not supported (allowed: "
                               f"{', '.join(repr(p) for p in PRECISIONS)})")
    if precision == "int8":
        if not (math.isfinite(float(x_scale)) and float(x_scale) >= 0):
            raise _quant_error(op, f"x_scale={x_scale!r}; expected a finite scale > 0, or 0 "
                                   "for a dynamic (per call) quantisation of the input")
        if int(x_zero_point) != x_zero_point or not 0 <= int(x_zero_point) <= 255:
            raise _quant_error(op, f"x_zero_point={x_zero_point!r}; expected an integer in "
                                   "[0, 255] (uint8 activations)")
    return precision


def check_handoff(op: str, precision: str | bytes, scale: float, zero_point: int) -> str:
    """An output hand-off's ``y_precision`` as a str, after checking it and, for "int8", the
    next layer's scale (> 0: a hand-off is never dynamic) and zero point.

    Examples
    --------
    >>> check_handoff("FusedConv", "int8", 0.05, 3)
    'int8'
    """
    precision = check_precision(op, precision, scale, zero_point)
    if precision == "int8" and not scale:
        raise _quant_error(op, "y_precision='int8' needs the next layer's y_scale > 0; got 0")
    return precision


def fake_quant_operands(op: str, x: np.ndarray, w: np.ndarray, w_axis: int,
                        precision: str | bytes, x_scale: float = 0.0,
                        x_zero_point: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(x', w')``: the input and weight of a reduced-precision contraction as its reference
    sees them (``x`` and ``w`` themselves for ``precision=""``).

    bf16: both rounded to bfloat16. int8: ``x`` through uint8 (``x_scale = 0``: the scale and
    zero point of :func:`dynamic_qparams` of the whole ``x``), ``w`` through symmetric int8
    with one scale per index of ``w_axis`` (its output channels).

    Examples
    --------
    >>> x, w = np.float32([[0.3, -0.2]]), np.float32([[0.7], [0.123]])
    >>> xq, wq = fake_quant_operands("FusedGemm", x, w, 1, "int8", 0.25, 128)
    >>> xq, wq.ravel()
    (array([[ 0.25, -0.25]], dtype=float32), array([0.7       , 0.12125984], dtype=float32))
    """
    precision = check_precision(op, precision, x_scale, x_zero_point)
    if precision == "bf16":
        return fake_quant_bf16(x), fake_quant_bf16(w)
    if precision == "int8":
        scale, zp = (np.float32(x_scale), int(x_zero_point)) if x_scale else \
            dynamic_qparams(x)
        q, ws = quantize_weight_per_channel(w, w_axis)
        shape = [-1 if d == w_axis % w.ndim else 1 for d in range(w.ndim)]
        wq = (q.astype(np.float32) * ws.reshape(shape)).astype(w.dtype, copy=False)
        return fake_quant_u8(x, scale, zp), wq
    return x, w


# --- integer products ---------------------------------------------------------------------------
def _centred(x: np.ndarray, zero_point: np.ndarray | None, axis: int | None,
             op: str) -> np.ndarray:
    """``x - zero_point`` in float64 (exact); a 1-D zero point of more than one element runs
    along ``axis`` (rows of A, columns of B, output channels of W)."""
    if x.dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
        raise _quant_error(op, f"inputs of type {x.dtype} are not supported (int8 and uint8 are)")
    y = x.astype(np.float64)
    if zero_point is None:
        return y
    zp = np.asarray(zero_point).astype(np.float64)
    if zp.size > 1:
        if axis is None or zp.ndim != 1 or zp.size != x.shape[axis]:
            want = "a scalar" if axis is None else \
                f"a scalar or a vector of {x.shape[axis]} (axis {axis % x.ndim})"
            raise ShapeError(f"{op}: zero point of shape {zp.shape} does not fit input shape "
                             f"{x.shape}; expected {want}")
        return y - zp.reshape([zp.size if d == axis % x.ndim else 1 for d in range(x.ndim)])
    return y - zp.reshape(())


def _requantize(acc: np.ndarray, multiplier: np.ndarray, y_zero_point: np.ndarray | None,
                dtype: np.dtype) -> np.ndarray:
    """MLAS's requantisation: round_half_even(float32(acc) * multiplier) + zp, saturated."""
    q = acc.astype(np.float32) * multiplier.astype(np.float32)
    zp = 0 if y_zero_point is None else np.asarray(y_zero_point).astype(np.float64).reshape(())
    return _saturate(q, zp, dtype)


def _product_scale(scale: np.ndarray, ndim: int, axis: int | None, op: str) -> np.ndarray:
    """A scalar scale as is; a per-row/column one shaped to broadcast over the product."""
    s = np.asarray(scale)
    if s.size == 1:
        return s.reshape(())
    if axis is None or s.ndim != 1:
        raise ShapeError(f"{op}: scale of shape {s.shape} must be a scalar, or a vector per row "
                         "of a / per column of b")
    return s.reshape(-1, 1) if axis == -2 else s


def _product_dtype(y_zero_point: np.ndarray | None, a: np.ndarray, op: str) -> np.dtype:
    dtype = y_zero_point.dtype if y_zero_point is not None else a.dtype
    if dtype not in (np.dtype(np.int8), np.dtype(np.uint8)):
        raise _quant_error(op, f"outputs of type {dtype} are not supported (int8 and uint8 are)")
    return dtype


@register("MatMulInteger", "contraction", flops=matmul_flops)
def matmul_integer(A: np.ndarray, B: np.ndarray, a_zero_point: np.ndarray | None = None,
                   b_zero_point: np.ndarray | None = None) -> np.ndarray:
    """Y = (A - a_zero_point) @ (B - b_zero_point) in int32 (zero points per row of A / per
    column of B)"""
    op = "MatMulInteger"
    a = _centred(A, a_zero_point, -2 if A.ndim > 1 else None, op)
    b = _centred(B, b_zero_point, -1 if B.ndim > 1 else None, op)
    return np.matmul(a, b).astype(np.int32)  # exact integers: no rounding needed


def qlinear_matmul_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any],
                         **attrs: Any) -> int:
    """MatMul's count, + the requantisation of every output element."""
    return (matmul_flops([in_shapes[0], in_shapes[3]], out_shapes)
            + REQUANT_FLOPS * math.prod(out_shapes[0]))


@register("QLinearMatMul", "contraction", flops=qlinear_matmul_flops)
def qlinear_matmul(a: np.ndarray, a_scale: np.ndarray, a_zero_point: np.ndarray | None,
                   b: np.ndarray, b_scale: np.ndarray, b_zero_point: np.ndarray | None,
                   y_scale: np.ndarray, y_zero_point: np.ndarray | None) -> np.ndarray:
    """y = saturate(round_half_even((a - a_zp) @ (b - b_zp) * a_scale * b_scale / y_scale)
    + y_zp) (scales and zero points per row of a / per column of b)"""
    op = "QLinearMatMul"
    dtype = _product_dtype(y_zero_point, a, op)
    row = -2 if a.ndim > 1 else None
    col = -1 if b.ndim > 1 else None
    acc = np.matmul(_centred(a, a_zero_point, row, op), _centred(b, b_zero_point, col, op))
    sa = _product_scale(a_scale, a.ndim, row, op)
    sb = _product_scale(b_scale, b.ndim, col, op)
    return _requantize(acc, sa * sb / np.asarray(y_scale).reshape(()), y_zero_point, dtype)


@register("ConvInteger", "contraction", flops=conv_flops)
def conv_integer(x: np.ndarray, w: np.ndarray, x_zero_point: np.ndarray | None = None,
                 w_zero_point: np.ndarray | None = None, *, auto_pad: str = "NOTSET",
                 dilations: Sequence[int] | None = None, group: int = 1,
                 kernel_shape: Sequence[int] | None = None, pads: Sequence[int] | None = None,
                 strides: Sequence[int] | None = None) -> np.ndarray:
    """Y = Conv(x - x_zero_point, w - w_zero_point) in int32 (w's zero point per output
    channel; padding reads as x_zero_point)"""
    acc = _integer_conv(x, x_zero_point, w, w_zero_point, "ConvInteger", auto_pad=auto_pad,
                        dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
                        strides=strides)
    return acc.astype(np.int32)


def _integer_conv(x: np.ndarray, x_zero_point: np.ndarray | None, w: np.ndarray,
                  w_zero_point: np.ndarray | None, op: str, **attrs: Any) -> np.ndarray:
    if x.ndim < 3:
        raise ShapeError(f"{op} takes an input of rank >= 3 (N, C, spatial...); got shape "
                         f"{x.shape}")
    # Padding after the shift pads with x_zero_point, as ONNX Runtime does.
    return conv(_centred(x, x_zero_point, None, op), _centred(w, w_zero_point, 0, op), **attrs)


def qlinear_conv_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any],
                       **attrs: Any) -> int:
    """Conv's count (+ the bias), + the requantisation of every output element."""
    shapes = [in_shapes[0], in_shapes[3], in_shapes[8] if len(in_shapes) > 8 else None]
    return conv_flops(shapes, out_shapes) + REQUANT_FLOPS * math.prod(out_shapes[0])


@register("QLinearConv", "contraction", flops=qlinear_conv_flops)
def qlinear_conv(x: np.ndarray, x_scale: np.ndarray, x_zero_point: np.ndarray | None,
                 w: np.ndarray, w_scale: np.ndarray, w_zero_point: np.ndarray | None,
                 y_scale: np.ndarray, y_zero_point: np.ndarray | None,
                 B: np.ndarray | None = None, *, auto_pad: str = "NOTSET",
                 dilations: Sequence[int] | None = None, group: int = 1,
                 kernel_shape: Sequence[int] | None = None, pads: Sequence[int] | None = None,
                 strides: Sequence[int] | None = None) -> np.ndarray:
    """y = saturate(round_half_even((ConvInteger(x, w) + B) * x_scale * w_scale / y_scale)
    + y_zp) (w's scale and zero point per output channel, B int32)"""
    op = "QLinearConv"
    dtype = _product_dtype(y_zero_point, x, op)
    acc = _integer_conv(x, x_zero_point, w, w_zero_point, op, auto_pad=auto_pad,
                        dilations=dilations, group=group, kernel_shape=kernel_shape, pads=pads,
                        strides=strides)
    per_channel = (-1,) + (1,) * (x.ndim - 2)
    if B is not None:
        acc += B.astype(np.float64).reshape(per_channel)
    sw = np.asarray(w_scale)
    if sw.size > 1:
        if sw.ndim != 1 or sw.size != w.shape[0]:
            raise ShapeError(f"{op}: w_scale of shape {sw.shape} must be a scalar or one scale "
                             f"per output channel ({w.shape[0]})")
        sw = sw.reshape(per_channel)
    multiplier = np.asarray(x_scale).reshape(()) * sw / np.asarray(y_scale).reshape(())
    return _requantize(acc, multiplier, y_zero_point, dtype)
