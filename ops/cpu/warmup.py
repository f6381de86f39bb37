"""Compile (or load from Numba's on-disk cache) every ``cpu`` kernel before timing starts.

:data:`CASES` holds one small input per fast path of each kernel, shaped so that the kernel
takes its compiled route (channels-last and NCHW layouts, fused activations, residuals,
depthwise and grouped convolutions). :func:`warmup` runs them all; ``taskflow warmup`` calls
it, and the kernel tests draw their inputs from the same table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import registry
from ..quant import (
    INT8_REDUCED_WEIGHT_MAX,
    INT8_WEIGHT_MAX,
    quantize_weight_per_channel,
    to_handoff,
)
from . import direct, fewrows, lowp, native_pool, pointwise_wide
from .common import ConcatBuffer, as_nhwc, nchw_view, output_slot
from .epilogue import RELU

Case = tuple[str, Callable[..., list[Any]], dict[str, Any]]


def channels_last(x: np.ndarray) -> np.ndarray:
    """A channels-last copy of a 4-D array (how convolution kernels hand on their outputs)."""
    return nchw_view(as_nhwc(x).copy())


def _x(*shape: int, cl: bool = False):
    """A batched input (activation): ``batch`` replaces its first dimension when given."""
    def make(rng: np.random.Generator, dtype: Any, batch: int | None) -> np.ndarray:
        full = shape if batch is None else (batch, *shape[1:])
        x = rng.standard_normal(full).astype(dtype)
        return channels_last(x) if cl and x.ndim == 4 else x
    return make


def _narrow(precision: str, *shape: int):
    """A reduced layer's channels-last output handed on narrow (bf16 bits, or uint8 at scale
    0.05 and zero point 3: :func:`taskflow.ops.quant.to_handoff`), whatever the dtype."""
    def make(rng: np.random.Generator, dtype: Any, batch: int | None) -> np.ndarray:
        x = _x(*shape, cl=True)(rng, np.float32, batch)
        return nchw_view(to_handoff(as_nhwc(x), precision, 0.05, 3))
    return make


def _heads(b: int, s: int, h: int, d: int, keys: bool = False):
    """Attention heads as a (B, H, S, D) view of a (B, S, H, D) array (the keys transposed:
    (B, H, D, S)), as a model splits its projections into heads."""
    def make(rng: np.random.Generator, dtype: Any, batch: int | None) -> np.ndarray:
        x = rng.standard_normal((b if batch is None else batch, s, h, d)).astype(dtype)
        return x.transpose(0, 2, 3, 1) if keys else x.transpose(0, 2, 1, 3)
    return make


def _w(*shape: int):
    """A weight or other unbatched input."""
    return lambda rng, dtype, batch: rng.standard_normal(shape).astype(dtype)


def _pruned(*shape: int, sparsity: float = 0.9):
    """A weight with ``sparsity`` of its elements zeroed (unstructured pruning's)."""
    def make(rng: np.random.Generator, dtype: Any, batch: int | None) -> np.ndarray:
        w = rng.standard_normal(shape).astype(dtype)
        w[rng.random(shape) < sparsity] = 0
        return w
    return make


def _positive(*shape: int):
    return lambda rng, dtype, batch: rng.uniform(0.5, 1.5, shape).astype(dtype)


def _index(value: Any):
    """An int64 index input (a 0-d one for a scalar)."""
    return lambda rng, dtype, batch: np.asarray(value, np.int64)


def _inputs(*makers: Callable[..., Any]):
    return lambda rng, dtype, batch=None: [m(rng, dtype, batch) for m in makers]


#: (op, inputs(rng, dtype, batch=None), attributes): one entry per compiled path; ``batch``
#: replaces the batch dimension of the activations (the tests' edge shapes).
CASES: list[Case] = [
    ("Conv", _inputs(_x(2, 8, 9, 9), _w(16, 8, 3, 3), _w(16)), {"pads": [1, 1, 1, 1]}),
    ("Conv", _inputs(_x(2, 8, 9, 9, cl=True), _w(16, 8, 1, 1)), {}),
    ("Conv", _inputs(_x(2, 8, 9, 9), _w(8, 1, 3, 3)), {"group": 8, "strides": [2, 2],
                                                       "pads": [1, 1, 1, 1]}),
    # im2col + GEMM (8 channels: below Winograd's minimum), with a residual
    ("FusedConv", _inputs(_x(2, 8, 9, 9, cl=True), _w(8, 8, 3, 3), _w(8),
                          _x(2, 8, 9, 9, cl=True)),
     {"pads": [1, 1, 1, 1], "activation": "Relu"}),
    # Winograd F(2x2, 3x3): 3x3, stride 1, >= 40 channels; odd output size
    ("FusedConv", _inputs(_x(2, 48, 7, 7, cl=True), _w(16, 48, 3, 3), _w(16),
                          _x(2, 16, 7, 7, cl=True)),
     {"pads": [1, 1, 1, 1], "activation": "Relu"}),
    ("FusedConv", _inputs(_x(2, 8, 9, 9), _w(8, 2, 1, 1), _w(8)),
     {"group": 4, "activation": "LeakyRelu", "activation_params": [0.1]}),
    # grouped 1x1 with ShuffleNet's channel shuffle folded in (direct.pointwise_rows), and
    # a grouped 3x3 with it (im2col, one GEMM per group, then the rows shuffled in place)
    ("FusedConv", _inputs(_x(2, 64, 5, 5, cl=True), _w(64, 32, 1, 1), _w(64)),
     {"group": 2, "activation": "Relu", "channel_shuffle": 4}),
    ("FusedConv", _inputs(_x(2, 8, 9, 9, cl=True), _w(8, 4, 3, 3), _w(8)),
     {"group": 2, "pads": [1, 1, 1, 1], "activation": "Relu", "channel_shuffle": 2}),
    ("FusedConv", _inputs(_x(2, 8, 9, 9), _w(8, 1, 3, 3), _w(8), _x(2, 8, 9, 9)),
     {"group": 8, "pads": [1, 1, 1, 1], "activation": "Clip", "activation_params": [0, 6]}),
    # register-blocked direct kernels (ops/cpu/direct.py, depthwise.py): depthwise 3x3 and
    # 5x5 at strides 1 and 2 (each width and stride compiles on its own; 24 channels with 16
    # lanes: a block of 16, then one of 8; rows 4 or 7 pixels wide), then a
    # 3-channel stem (24 = 16 + 8 channels)
    *(("FusedConv", _inputs(_x(2, 24, 9, 7, cl=True), _w(24, 1, k, k), _w(24)),
       {"group": 24, "strides": [s, s], "pads": [k // 2] * 4, "activation": "HardSwish"})
      for k in (3, 5) for s in (1, 2)),
    ("FusedConv", _inputs(_x(2, 3, 13, 13), _w(24, 3, 3, 3), _w(24)),
     {"strides": [2, 2], "pads": [1, 0, 1, 2], "activation": "Relu"}),
    # and MobileNetV3's (16 outputs: 16 lanes where the CPU has AVX-512F, as any stem whose
    # outputs are a multiple of 16, where the 24-channel one stays on 8)
    ("FusedConv", _inputs(_x(2, 3, 13, 13), _w(16, 3, 3, 3), _w(16)),
     {"strides": [2, 2], "pads": [1, 1, 1, 1], "activation": "HardSwish"}),
    # a patch embedding (kernel = stride; its last row and column of pixels read by no patch)
    ("Conv", _inputs(_x(2, 8, 9, 11), _w(16, 8, 2, 2), _w(16)), {"strides": [2, 2]}),
    # a dense 3x3 on 8 channels, 22 columns wide (24 = 16 + 8 outputs; border columns)
    ("FusedConv", _inputs(_x(2, 8, 22, 22, cl=True), _w(24, 8, 3, 3), _w(24)),
     {"pads": [1, 1, 1, 1], "activation": "Relu"}),
    # with AVX-512, dense_wide: 64 outputs of a 3x3 on 16 channels, 6 interior columns
    ("FusedConv", _inputs(_x(2, 16, 8, 8, cl=True), _w(64, 16, 3, 3), _w(64)),
     {"pads": [1, 1, 1, 1], "activation": "Relu"}),
    # and pointwise_wide: a 1x1 on 16 channels, 80 outputs (a block of 64, one of 16)
    ("FusedConv", _inputs(_x(2, 16, 5, 5, cl=True), _w(80, 16, 1, 1), _w(80)),
     {"activation": "HardSwish"}),
    # and a 1x1 projection with its residual (5 x 5 x 2 = 50 rows: blocks of 4 and single rows)
    ("FusedConv", _inputs(_x(2, 40, 5, 5, cl=True), _w(24, 40, 1, 1), _w(24),
                          _x(2, 24, 5, 5, cl=True)), {}),
    # reduced precision (ops/cpu/lowp.py): bf16 im2col, static int8 1x1 with a residual,
    # a grouped int8 1x1 (one lowp GEMM per group, from Python), dynamic int8 Gemm, bf16 MatMul
    ("FusedConv", _inputs(_x(2, 8, 9, 9, cl=True), _w(16, 8, 3, 3), _w(16)),
     {"pads": [1, 1, 1, 1], "activation": "Relu", "precision": "bf16"}),
    ("FusedConv", _inputs(_x(2, 8, 9, 9, cl=True), _w(16, 8, 1, 1), _w(16),
                          _x(2, 16, 9, 9, cl=True)),
     {"precision": "int8", "x_scale": 0.03, "x_zero_point": 128}),
    ("FusedConv", _inputs(_x(2, 64, 5, 5, cl=True), _w(32, 32, 1, 1), _w(32)),
     {"group": 2, "precision": "int8", "x_scale": 0.03, "x_zero_point": 128}),
    # a bf16 1x1, converting its float32 input per row block, into float32 and narrow
    ("FusedConv", _inputs(_x(2, 8, 9, 9, cl=True), _w(16, 8, 1, 1), _w(16)),
     {"activation": "Relu", "precision": "bf16"}),
    ("FusedConv", _inputs(_x(2, 8, 9, 9, cl=True), _w(16, 8, 1, 1), _w(16)),
     {"activation": "Relu", "precision": "bf16", "y_precision": "bf16"}),
    # a static int8 3x3 (its im2col reads the converted input), into float32 and narrow
    ("FusedConv", _inputs(_x(2, 8, 9, 9, cl=True), _w(16, 8, 3, 3), _w(16)),
     {"pads": [1, 1, 1, 1], "activation": "Relu", "precision": "int8", "x_scale": 0.03,
      "x_zero_point": 128}),
    ("FusedConv", _inputs(_x(2, 8, 9, 9, cl=True), _w(16, 8, 3, 3), _w(16)),
     {"pads": [1, 1, 1, 1], "activation": "Relu", "precision": "int8", "x_scale": 0.03,
      "x_zero_point": 128, "y_precision": "int8", "y_scale": 0.05, "y_zero_point": 3}),
    # and the two above handing their outputs to the next layer narrow (bf16 bits, uint8)
    ("FusedConv", _inputs(_x(2, 8, 9, 9, cl=True), _w(16, 8, 3, 3), _w(16)),
     {"pads": [1, 1, 1, 1], "activation": "Relu", "precision": "bf16", "y_precision": "bf16"}),
    ("FusedConv", _inputs(_x(2, 8, 9, 9, cl=True), _w(16, 8, 1, 1), _w(16),
                          _x(2, 16, 9, 9, cl=True)),
     {"precision": "int8", "x_scale": 0.03, "x_zero_point": 128, "y_precision": "int8",
      "y_scale": 0.05, "y_zero_point": 3}),
    ("FusedGemm", _inputs(_x(4, 16), _w(8, 16), _w(8)), {"transB": 1, "precision": "int8"}),
    ("FusedMatMul", _inputs(_x(2, 4, 16), _w(16, 8), _w(8)), {"precision": "bf16"}),
    # sparse weights (ops/cpu/sparse.py): the Numba CSR loop (small), MKL's (larger), 1x1 conv
    ("FusedGemm", _inputs(_x(4, 16), _pruned(8, 16), _w(8)),
     {"transB": 1, "activation": "Relu", "sparse": 1}),
    ("FusedMatMul", _inputs(_x(2, 40, 64), _pruned(64, 48), _w(48)), {"sparse": 1}),
    ("FusedConv", _inputs(_x(2, 32, 9, 9, cl=True), _pruned(24, 32, 1, 1), _w(24)),
     {"activation": "Relu", "sparse": 1}),
    ("Gemm", _inputs(_x(4, 16), _w(8, 16), _w(8)), {"transB": 1}),
    # a classifier at small batch: few rows, blocks of columns over the kernel threads (each
    # block's output a strided view: another compiled type)
    ("FusedGemm", _inputs(_x(4, 512), _w(1024, 512), _w(1024)), {"transB": 1}),
    ("FusedGemm", _inputs(_x(4, 16), _w(16, 8), _w(1, 8)), {"activation": "Sigmoid"}),
    ("FusedMatMul", _inputs(_x(2, 4, 16), _w(16, 8), _w(8)), {"activation": "Gelu"}),
    ("MatMul", _inputs(_x(2, 6, 16), _w(16, 8)), {}),
    # batched (attention's products): strided batch GEMMs
    ("MatMul", _inputs(_x(2, 3, 6, 5), _x(2, 3, 5, 7)), {}),
    ("FusedAttention", _inputs(_x(2, 3, 6, 5), _x(2, 3, 5, 6), _x(2, 3, 6, 4)), {"scale": 0.5}),
    ("FusedAttention", _inputs(_x(2, 3, 6, 5), _x(2, 3, 5, 6), _x(2, 3, 6, 4), _x(2, 1, 1, 6)),
     {"scale": 2.0, "divide": 1}),
    # heads split from (B, S, H, D) projections, as the exporters hand them over: strided
    # views (another compiled type than contiguous heads), without and with a mask
    ("FusedAttention", _inputs(_heads(2, 6, 3, 5), _heads(2, 6, 3, 5, keys=True),
                               _heads(2, 6, 3, 4)), {"scale": 0.5}),
    ("FusedAttention", _inputs(_heads(2, 6, 3, 5), _heads(2, 6, 3, 5, keys=True),
                               _heads(2, 6, 3, 4), _x(2, 1, 1, 6)), {"scale": 0.5}),
    # and contiguous Q and K with V split into heads (ViT's dynamo export)
    ("FusedAttention", _inputs(_x(2, 3, 6, 5), _x(2, 3, 5, 6), _heads(2, 6, 3, 4)),
     {"scale": 0.5}),
    # 5-D (and any run without MKL): groups of heads through gemm_batch and numpy's exp
    ("FusedAttention", _inputs(_x(2, 2, 2, 6, 5), _x(2, 2, 2, 5, 6), _x(2, 2, 2, 6, 4),
                               _x(2, 1, 1, 1, 6)), {"scale": 0.5}),
    ("FusedAddLayerNorm", _inputs(_x(4, 6, 16), _x(4, 6, 16), _w(16), _w(16)), {"axis": -1}),
    # MaxPool on whole vectors of channels (8, and 16: 16 lanes where the CPU has AVX-512F),
    # and on 6 (the scalar loop)
    ("MaxPool", _inputs(_x(2, 8, 9, 9, cl=True)), {"kernel_shape": [3, 3], "strides": [2, 2],
                                                    "pads": [1, 1, 1, 1]}),
    ("MaxPool", _inputs(_x(2, 16, 9, 9, cl=True)), {"kernel_shape": [3, 3], "strides": [2, 2]}),
    ("MaxPool", _inputs(_x(2, 6, 9, 9, cl=True)), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    # passing a reduced layer's narrow output through (ResNet's stem -> MaxPool -> block)
    ("MaxPool", _inputs(_narrow("bf16", 2, 8, 9, 9)),
     {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "y_precision": "bf16"}),
    ("MaxPool", _inputs(_narrow("int8", 2, 8, 9, 9)),
     {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "y_precision": "int8",
      "y_scale": 0.05, "y_zero_point": 3}),
    # AveragePool likewise: 8 and 16 channels (Inception's 3x3 / 1 with pads, counting them
    # or not), and 6 (the scalar loop)
    ("AveragePool", _inputs(_x(2, 8, 9, 9, cl=True)), {"kernel_shape": [3, 3],
                                                        "strides": [2, 2], "ceil_mode": 1}),
    ("AveragePool", _inputs(_x(2, 16, 7, 7, cl=True)), {"kernel_shape": [3, 3],
                                                         "pads": [1, 1, 1, 1]}),
    ("AveragePool", _inputs(_x(2, 16, 7, 7, cl=True)),
     {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    ("AveragePool", _inputs(_x(2, 6, 7, 7, cl=True)), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ("GlobalAveragePool", _inputs(_x(2, 8, 5, 5, cl=True)), {}),
    ("GlobalMaxPool", _inputs(_x(2, 8, 5, 5)), {}),
    ("LRN", _inputs(_x(2, 8, 5, 5, cl=True)), {"size": 5, "alpha": 1e-4, "beta": 0.75}),
    ("BatchNormalization", _inputs(_x(2, 8, 5, 5, cl=True), _w(8), _w(8), _w(8),
                                   _positive(8)), {}),
    ("BatchNormalization", _inputs(_x(2, 8, 5, 5), _w(8), _w(8), _w(8), _positive(8)), {}),
    ("FusedBatchNormalization", _inputs(_x(2, 8, 5, 5, cl=True), _w(8), _w(8), _w(8),
                                        _positive(8)), {"activation": "Relu"}),
    ("FusedBatchNormalization", _inputs(_x(2, 8, 5, 5), _w(8), _w(8), _w(8), _positive(8)),
     {"activation": "Clip", "activation_params": [0.0, 6.0]}),
    ("LayerNormalization", _inputs(_x(4, 6, 16), _w(16), _w(16)), {"axis": -1}),
    ("InstanceNormalization", _inputs(_x(2, 8, 5, 5), _w(8), _w(8)), {}),
    ("InstanceNormalization", _inputs(_x(2, 8, 5, 5, cl=True), _w(8), _w(8)), {}),
    ("Concat", _inputs(_x(4, 64, 32, 32, cl=True), _x(4, 32, 32, 32, cl=True)), {"axis": 1}),
    ("Concat", _inputs(_x(4, 64, 32, 32), _x(4, 32, 32, 32, cl=True)), {"axis": -3}),
    # an Inception module's three or four branches (the row copy compiles once per count;
    # below MIN_TASK_ELEMENTS in all, numpy copies)
    ("Concat", _inputs(_x(2, 64, 32, 32, cl=True), _x(2, 32, 32, 32, cl=True),
                       _x(2, 32, 32, 32, cl=True)), {"axis": 1}),
    ("Concat", _inputs(_x(2, 64, 32, 32, cl=True), _x(2, 32, 32, 32, cl=True),
                       _x(2, 16, 32, 32, cl=True), _x(2, 16, 32, 32, cl=True)), {"axis": 1}),
    ("ChannelShuffle", _inputs(_x(4, 24, 16, 16, cl=True)), {"group": 3}),
    ("Gather", _inputs(_x(3, 4, 5), _index(-2)), {"axis": 1}),  # one index: a view
    ("Gather", _inputs(_x(3, 4, 5), _index([2, -1, 0])), {"axis": -1}),
    ("Relu", _inputs(_x(4, 16, 32, 32, cl=True)), {}),
    ("Sigmoid", _inputs(_x(4, 16, 32, 32)), {}),
    ("Tanh", _inputs(_x(4, 16, 32, 32, cl=True)), {}),
    ("LeakyRelu", _inputs(_x(4, 16, 32, 32)), {"alpha": 0.2}),
    ("HardSigmoid", _inputs(_x(4, 16, 32, 32)), {"beta": 0.4}),
    ("HardSwish", _inputs(_x(4, 16, 32, 32, cl=True)), {}),
    # squeeze-excite, both layouts: (N, HW, C) and (N, C, HW) sweeps
    ("FusedSqueezeExcite", _inputs(_x(2, 12, 5, 7, cl=True), _w(4, 12, 1, 1), _w(4),
                                   _w(12, 4, 1, 1), _w(12)),
     {"gate_params": [1 / 6, 0.5]}),
    ("FusedSqueezeExcite", _inputs(_x(2, 12, 5, 7), _w(4, 12, 1, 1),
                                   lambda rng, dtype, batch: None, _w(12, 4, 1, 1)),
     {"pool": "ReduceMean", "activation": "HardSwish", "gate": "Sigmoid"}),
    ("Clip", _inputs(_x(4, 16, 32, 32), lambda rng, dtype, batch: np.asarray(-0.5, dtype),
                     lambda rng, dtype, batch: np.asarray(0.5, dtype)), {}),
    ("Add", _inputs(_x(4, 16, 32, 32, cl=True), _x(4, 16, 32, 32, cl=True)), {}),
    ("Mul", _inputs(_x(4, 16, 32, 32, cl=True), _w(16, 1, 1)), {}),
    ("Mul", _inputs(_w(1), _x(4, 16, 32, 32)), {}),
    ("Sub", _inputs(_x(4, 16, 32, 32), _w(1, 16, 1, 1)), {}),
    ("Div", _inputs(_x(4, 16, 32, 32), _positive(1)), {}),
    ("Softmax", _inputs(_x(32, 1024)), {"axis": -1}),
    ("Softmax", _inputs(_x(8, 64, 64)), {"axis": 1}),
    ("Gelu", _inputs(_x(4, 10)), {}),
    ("Erf", _inputs(_x(4, 10)), {}),
]


def _into_a_concat(rng: np.random.Generator) -> None:
    """Convolutions writing into a Concat's buffer, as the interpreter offers it (their GEMMs
    then write strided columns: other compiled types than a fresh output's): an im2col
    5x5 and a 1x1 on MKL's GEMM, each routing."""
    x = channels_last(rng.standard_normal((2, 96, 8, 8)).astype(np.float32))
    conv = registry.get("FusedConv").kernels["cpu"]
    for wide in (True, False):
        with direct.routed_as(wide):
            buf = ConcatBuffer(48)
            for offset, k in ((0, 5), (24, 1)):
                w = rng.standard_normal((24, 96, k, k)).astype(np.float32)
                with output_slot(buf, offset):
                    conv(x, w, None, pads=[k // 2] * 4, activation="Relu")


def _few_rows(rng: np.random.Generator) -> None:
    """The few-row product kernel (:mod:`.fewrows`), where the CPU has AVX-512F: its route
    needs a model's registered weight and more multiply-adds than a case should have."""
    if direct.vector_lanes() != 16:
        return
    f32 = np.float32
    x = rng.standard_normal((7, 40)).astype(f32)
    wp = pointwise_wide.pack(rng.standard_normal((88, 40)).astype(f32))  # 64 + 16 + 8
    y = np.zeros((7, 88), f32)
    fewrows.fewrows_cols(x, wp, y, RELU, f32(0), f32(0), f32(1), 0, 88)


def _seven_bit(w: np.ndarray, op: str, attrs: dict) -> np.ndarray:
    """``w`` as ``Model.quantize(reduce_range=True)`` leaves it: 63 levels per output channel
    (axis 0 of a convolution's weight and of a transposed Gemm B, else the last)."""
    axis = 0 if op == "FusedConv" or attrs.get("transB") else -1
    q, scale = quantize_weight_per_channel(w, axis, INT8_REDUCED_WEIGHT_MAX)
    return (q * np.expand_dims(scale, [a for a in range(w.ndim) if a != axis % w.ndim])
            ).astype(w.dtype)


def warmup(dtypes: tuple[Any, ...] = (np.float32,), *,
           verbose: bool = False) -> dict[str, float]:
    """Run every case of :data:`CASES` once per dtype; return seconds spent per op.

    The first call in a fresh environment compiles (seconds per kernel); later ones load
    Numba's cache from ``__pycache__`` (milliseconds).
    """
    rng = np.random.default_rng(0)
    spent: dict[str, float] = {}
    # where MKL sums int8 exactly only with 7-bit weights (no VNNI), int8 layers run MKL or
    # the emulation by their weights: each int8 case runs with both
    seven = 0 < lowp.int8_weight_max() < INT8_WEIGHT_MAX
    for dtype in dtypes:
        for op, make, attrs in CASES:
            args = make(rng, np.dtype(dtype))
            start = time.perf_counter()
            variants = [args]
            if seven and attrs.get("precision") == "int8":
                variants.append([args[0], _seven_bit(args[1], op, attrs), *args[2:]])
            for given in variants:
                registry.get(op).kernels["cpu"](*given, **attrs)
                if op in ("Conv", "FusedConv"):  # and the direct kernels MKL's AVX-512 replaces
                    with direct.routed_as(False):
                        registry.get(op).kernels["cpu"](*given, **attrs)
            spent[op] = spent.get(op, 0.0) + time.perf_counter() - start
            if verbose:
                print(f"  {op:22s} {time.perf_counter() - start:7.2f} s")
    if np.float32 in dtypes:
        start = time.perf_counter()
        _into_a_concat(rng)
        spent["Concat"] = spent.get("Concat", 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        _few_rows(rng)
        spent["FusedGemm"] = spent.get("FusedGemm", 0.0) + time.perf_counter() - start
    start = time.perf_counter()
    native_pool.warm()  # its blocks run only in GEMMs bigger than the cases'
    spent["native pool"] = time.perf_counter() - start
    return spent
