"""Reduced precision of the fused contractions on the gpu: fp32 products of fake-quantised
operands, exactly as the references compute them (:func:`taskflow.ops.quant.fake_quant_operands`).

The activation is rounded on its own module (bf16 by bit arithmetic, int8 through uint8 with
the scale and zero point from its min and max). The weight's per-channel int8 grid search is
host code: it runs once per weight array and its result is kept, on the weight's module, in a
small cache keyed by the array's identity (the cache holds the array, so the key cannot be
reused while the entry lives). Tensor-core bf16/int8 GEMMs are not used yet.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from .. import quant as ref
from ..device import array_module, to_host

#: Dequantised weights kept: a model's reduced layers, with room for a second model.
WEIGHT_CACHE_SIZE = 256
_weights: OrderedDict[tuple[int, str, int], tuple[Any, Any]] = OrderedDict()
_lock = threading.Lock()  # worker threads share the cache


def fake_quant_bf16(x: Any) -> Any:
    """``x`` rounded to bfloat16 and back (ties to even, NaN kept), on x's module."""
    xp = array_module(x)
    x32 = x.astype(np.float32)
    bits = x32.view(np.uint32).astype(np.uint64)  # 64-bit: the rounding carry cannot wrap
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    y = bits.astype(np.uint32).view(np.float32)
    return xp.where(xp.isnan(x32), x32, y).astype(x.dtype, copy=False)


def fake_quant_u8(x: Any, scale: float, zero_point: int) -> Any:
    """``x`` through a uint8 QuantizeLinear/DequantizeLinear pair, on x's module."""
    xp = array_module(x)
    s = np.float32(scale)
    q = xp.clip(xp.rint(x.astype(np.float32) / s) + np.float32(zero_point), 0, 255)
    return ((q - np.float32(zero_point)) * s).astype(x.dtype, copy=False)


def dynamic_qparams(x: Any) -> tuple[np.float32, int]:
    """:func:`taskflow.ops.quant.dynamic_qparams` of ``x``: only its min and max matter, so
    they alone come to the host."""
    xp = array_module(x)
    ends = xp.stack([x.min(), x.max()]) if x.size else x.reshape(-1)
    return ref.dynamic_qparams(np.asarray(to_host(ends)))


def _weight_int8(w: Any, axis: int) -> Any:
    key = (id(w), "int8", axis)
    with _lock:
        hit = _weights.get(key)
        if hit is not None and hit[0] is w:
            _weights.move_to_end(key)
            return hit[1]
    host = np.asarray(to_host(w))
    q, scales = ref.quantize_weight_per_channel(host, axis)
    shape = [-1 if d == axis % host.ndim else 1 for d in range(host.ndim)]
    wq = (q.astype(np.float32) * scales.reshape(shape)).astype(host.dtype, copy=False)
    wq = array_module(w).asarray(wq)
    with _lock:
        _weights[key] = (w, wq)
        if len(_weights) > WEIGHT_CACHE_SIZE:
            _weights.popitem(last=False)
    return wq


def fake_quant_operands(op: str, x: Any, w: Any, w_axis: int, precision: str | bytes,
                        x_scale: float = 0.0, x_zero_point: int = 0) -> tuple[Any, Any]:
    """``(x', w')`` as :func:`taskflow.ops.quant.fake_quant_operands` makes them."""
    precision = ref.check_precision(op, precision, x_scale, x_zero_point)
    if precision == "bf16":
        return fake_quant_bf16(x), fake_quant_bf16(w)
    if precision == "int8":
        scale, zp = (np.float32(x_scale), int(x_zero_point)) if x_scale else \
            dynamic_qparams(x)
        return fake_quant_u8(x, scale, zp), _weight_int8(w, w_axis)
    return x, w
