"""gpu kernels of the matrix products: Gemm, MatMul, FusedGemm, FusedMatMul, FusedAttention.

``xp.matmul`` is cuBLAS on a device, batched over leading axes (attention's heads) in one
call. Half-precision operands are multiplied in float32 and rounded once, as the references
(and ONNX Runtime) do; a fused epilogue and reduced precision as in :mod:`.conv`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..matmul import gemm, matmul
from ..quant import check_precision
from .activation import softmax_gpu
from .common import apply_activation, gpu_kernel, operands
from .quant import fake_quant_operands


@gpu_kernel("Gemm")
def gemm_gpu(A: Any, B: Any, C: Any = None, *, alpha: float = 1.0, beta: float = 1.0,
             transA: int = 0, transB: int = 0) -> Any:
    """The reference itself (array-module generic) on the device operands."""
    _, (A, B, C) = operands(A, B, C)
    return gemm(A, B, C, alpha=alpha, beta=beta, transA=transA, transB=transB)


@gpu_kernel("FusedGemm")
def fused_gemm_gpu(A: Any, B: Any, C: Any = None, *, alpha: float = 1.0, beta: float = 1.0,
                   transA: int = 0, transB: int = 0, activation: str = "",
                   activation_params: Sequence[float] | None = None, precision: str = "",
                   x_scale: float = 0.0, x_zero_point: int = 0, sparse: int = 0) -> Any:
    xp, (A, B, C) = operands(A, B, C)
    if precision:
        A, B = fake_quant_operands("FusedGemm", A, B, 0 if transB else 1, precision, x_scale,
                                   x_zero_point)
    y = gemm_gpu(A, B, C, alpha=alpha, beta=beta, transA=transA, transB=transB)
    return apply_activation(y, activation, activation_params)


@gpu_kernel("MatMul")
def matmul_gpu(A: Any, B: Any) -> Any:
    """The reference itself (array-module generic) on the device operands."""
    _, (A, B) = operands(A, B)
    return matmul(A, B)


@gpu_kernel("FusedMatMul")
def fused_matmul_gpu(A: Any, B: Any, bias: Any = None, *, activation: str = "",
                     activation_params: Sequence[float] | None = None, precision: str = "",
                     x_scale: float = 0.0, x_zero_point: int = 0, sparse: int = 0) -> Any:
    xp, (A, B, bias) = operands(A, B, bias)
    if precision:
        check_precision("FusedMatMul", precision, x_scale, x_zero_point)
        if B.ndim == 2:
            A, B = fake_quant_operands("FusedMatMul", A, B, 1, precision, x_scale,
                                       x_zero_point)
    y = matmul_gpu(A, B)
    if bias is not None:
        y = y + bias.astype(y.dtype, copy=False)
    return apply_activation(y, activation, activation_params)


@gpu_kernel("FusedAttention")
def fused_attention_gpu(Q: Any, K: Any, V: Any, mask: Any = None, q_scale: Any = None,
                        k_scale: Any = None, *, scale: float = 1.0, divide: int = 0,
                        nan_to_zero: int = 0) -> Any:
    """softmax(((Q * q_scale) @ (K * k_scale)) * scale + mask) @ V: two batched GEMMs over
    every head at once."""
    xp, (Q, K, V, mask, q_scale, k_scale) = operands(Q, K, V, mask, q_scale, k_scale)
    if q_scale is not None:
        Q = Q * q_scale
    if k_scale is not None:
        K = K * k_scale
    s = matmul_gpu(Q, K)
    if scale != 1 or divide:
        c = s.dtype.type(scale)  # a scalar: CuPy takes no numpy arrays as operands
        s = s / c if divide else s * c
    if mask is not None:
        s = s + mask
    p = softmax_gpu(s, axis=-1)
    if nan_to_zero:
        p = xp.where(xp.isnan(p), p.dtype.type(0), p)
    return matmul_gpu(p, V)
