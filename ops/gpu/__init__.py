"""CuPy ``gpu`` kernels, registered when a gpu kernel is first asked for
(``register_lazy("gpu", "taskflow.ops.gpu")`` in :mod:`taskflow.ops`).

Every kernel is array-module generic: it takes its module from its operands
(``xp = array_module(x)``: CuPy for CuPy arrays, numpy otherwise), so this package imports no
CuPy and each kernel is tested against its numpy reference on numpy arrays where there is no
GPU (tests/ops/test_gpu_kernels.py), and on CuPy arrays where there is one (``-m gpu``).
Products go to ``xp.matmul`` (cuBLAS, batched); convolutions are explicit im2col + GEMM.

    common.py      registration, operands on one module, host shape operands, epilogues
    elementwise.py ufunc tables, Div/Pow/Mod, Min/Max/Sum/Mean, Where, Cast, Erf, Identity
    activation.py  Relu ... Gelu, Clip, Softmax, LogSoftmax
    conv.py        Conv, FusedConv                      matmul.py  Gemm, MatMul, Fused*, attention
    pool.py        Max/AveragePool, global pools, LRN   norm.py    BN, LN, IN, GN, RMS, fused
    movement.py    reshapes, joins, slices, gathers, Pad; the shape ops (on the host)
    reduce.py      Reduce*, ArgMax, ArgMin              quant.py   bf16/int8 operands
"""

from __future__ import annotations

from . import (  # noqa: F401  (register their kernels)
    activation,
    conv,
    elementwise,
    matmul,
    movement,
    norm,
    pool,
    reduce,
)
