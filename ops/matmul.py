"""Matrix products: Gemm, MatMul, Einsum, and the fused FusedGemm / FusedMatMul (``taskflow``).

Every product goes through ``np.matmul`` (or ``np.einsum(optimize=True)``, which calls BLAS via
tensordot), so float32 stays float32 and accumulates in float32 as ONNX Runtime's sgemm does.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

from taskflow.errors import ShapeError

from .conv import apply_activation
from .device import array_module
from .registry import register

#: Half-precision types numpy has no BLAS for: products accumulate in float32 and round
#: once at the end, as ONNX Runtime's kernels do (numpy would round after every addition).
_HALF_KINDS = ("float16", "bfloat16")


def _accumulate_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if np.dtype(dtype).name in _HALF_KINDS else np.dtype(dtype)


def _scaled(y: np.ndarray, factor: float) -> np.ndarray:
    # Skip the multiply when factor is 1 so y is bit-identical to the plain product.
    return y if factor == 1 else y * y.dtype.type(factor)


# --------------------------------------------------------------------------------------------
# Gemm

def gemm_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any], *, transA: int = 0,
               **attrs: Any) -> int:
    """2 * M * N * K, + one add per output element if C is given."""
    a, y = in_shapes[0], out_shapes[0]
    k = a[0] if transA else a[1]
    has_c = len(in_shapes) > 2 and in_shapes[2] is not None
    return 2 * math.prod(y) * k + (math.prod(y) if has_c else 0)


@register("Gemm", "contraction", flops=gemm_flops)
def gemm(A: np.ndarray, B: np.ndarray, C: np.ndarray | None = None, *, alpha: float = 1.0,
         beta: float = 1.0, transA: int = 0, transB: int = 0) -> np.ndarray:
    """Y = alpha * A' @ B' + beta * C, with A' = A.T if transA and B' = B.T if transB."""
    if A.ndim != 2 or B.ndim != 2:
        raise ShapeError(f"Gemm takes 2-D A and B; got shapes {A.shape} and {B.shape}")
    a = A.T if transA else A
    b = B.T if transB else B
    if a.shape[1] != b.shape[0]:
        raise ShapeError(f"Gemm inner dimensions differ: A' is {a.shape}, B' is {b.shape} "
                         f"(transA={transA}, transB={transB})")
    acc = _accumulate_dtype(a.dtype)
    xp = array_module(a)  # numpy here; cupy when the gpu kernel hands CuPy arrays in
    y = _scaled(xp.matmul(a.astype(acc, copy=False), b.astype(acc, copy=False)), alpha)
    y = y.astype(a.dtype, copy=False)
    if C is not None:
        y = y + _scaled(C.astype(y.dtype, copy=False), beta)
    return y


def fused_gemm_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any], **attrs: Any) -> int:
    """Gemm's count, + one op per output element for the activation."""
    y = math.prod(out_shapes[0]) if attrs.get("activation", "") else 0
    return gemm_flops(in_shapes, out_shapes, transA=attrs.get("transA", 0)) + y


@register("FusedGemm", "contraction", flops=fused_gemm_flops, domain="taskflow")
def fused_gemm(A: np.ndarray, B: np.ndarray, C: np.ndarray | None = None, *,
               alpha: float = 1.0, beta: float = 1.0, transA: int = 0, transB: int = 0,
               activation: str = "", activation_params: Sequence[float] | None = None,
               precision: str = "", x_scale: float = 0.0, x_zero_point: int = 0,
               sparse: int = 0) -> np.ndarray:
    """Y = activation(alpha * A' @ B' + beta * C).

    With ``precision`` "bf16" / "int8" (and, for int8, ``x_scale`` and ``x_zero_point``:
    0 = dynamic), A and B are first fake-quantised (:func:`.quant.fake_quant_operands`), B per
    output channel (axis 1, or 0 when ``transB``). ``sparse`` (1: multiply by B's non-zeros
    only) chooses a kernel, not a result: the reference ignores it."""
    if precision:
        from .quant import fake_quant_operands  # here: quant imports this module

        A, B = fake_quant_operands("FusedGemm", A, B, 0 if transB else 1, precision, x_scale,
                                   x_zero_point)
    y = gemm(A, B, C, alpha=alpha, beta=beta, transA=transA, transB=transB)
    return apply_activation(y, activation, activation_params)


# --------------------------------------------------------------------------------------------
# MatMul

def matmul_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any], **attrs: Any) -> int:
    """2 * (batched M * N) * K; K is A's last dimension."""
    a, y = in_shapes[0], out_shapes[0]
    return 2 * math.prod(y) * (a[-1] if a else 1)


@register("MatMul", "contraction", flops=matmul_flops)
def matmul(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Y = A @ B (numpy matmul: 1-D operands promoted, batch dimensions broadcast)."""
    acc = _accumulate_dtype(A.dtype)
    xp = array_module(A)  # numpy here; cupy when the gpu kernel hands CuPy arrays in
    if acc != A.dtype:
        return xp.matmul(A.astype(acc), B.astype(acc)).astype(A.dtype)
    return xp.matmul(A, B.astype(A.dtype, copy=False))


def fused_matmul_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any],
                       **attrs: Any) -> int:
    """MatMul's count, + one add per output for the bias, + one op for the activation."""
    y = math.prod(out_shapes[0])
    has_bias = len(in_shapes) > 2 and in_shapes[2] is not None
    return (matmul_flops(in_shapes, out_shapes) + (y if has_bias else 0)
            + (y if attrs.get("activation", "") else 0))


@register("FusedMatMul", "contraction", flops=fused_matmul_flops, domain="taskflow")
def fused_matmul(A: np.ndarray, B: np.ndarray, bias: np.ndarray | None = None, *,
                 activation: str = "", activation_params: Sequence[float] | None = None,
                 precision: str = "", x_scale: float = 0.0,
                 x_zero_point: int = 0, sparse: int = 0) -> np.ndarray:
    """Y = activation(A @ B + bias).

    With ``precision`` "bf16" / "int8" (and, for int8, ``x_scale`` and ``x_zero_point``:
    0 = dynamic) and a 2-D B, A and B are first fake-quantised
    (:func:`.quant.fake_quant_operands`), B per output channel (axis 1); a B of another rank
    keeps float32. ``sparse`` chooses a kernel, not a result: the reference ignores it."""
    if precision:
        from .quant import check_precision, fake_quant_operands  # quant imports this module

        check_precision("FusedMatMul", precision, x_scale, x_zero_point)
        if B.ndim == 2:
            A, B = fake_quant_operands("FusedMatMul", A, B, 1, precision, x_scale,
                                       x_zero_point)
    y = matmul(A, B)
    if bias is not None:
        y = y + bias.astype(y.dtype, copy=False)
    return apply_activation(y, activation, activation_params)


# --------------------------------------------------------------------------------------------
# Einsum

def _explicit_terms(equation: str, shapes: Sequence[Sequence[int]]) -> tuple[list[str], str]:
    """Operand and output subscripts with ``...`` spelled out as letters unused elsewhere."""
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ShapeError(f"Einsum equation {equation!r} has {len(terms)} operand(s); "
                         f"got {len(shapes)} input(s)")
    spare = [ch for ch in string.ascii_letters if ch not in eq]
    n_ell = max((len(s) - len(t.replace("...", "")) for t, s in zip(terms, shapes)
                 if "..." in t), default=0)
    ell = "".join(spare[:n_ell])
    terms = [t.replace("...", ell[n_ell - (len(s) - len(t) + 3):] if n_ell else "")
             for t, s in zip(terms, shapes)]
    if not arrow:  # implicit output: broadcast dims, then letters used once, sorted
        letters = "".join(terms)
        out = ell + "".join(sorted(c for c in set(letters) if letters.count(c) == 1
                                   and c not in ell))
    return terms, out.replace("...", ell)


def einsum_flops(in_shapes: Sequence[Any], out_shapes: Sequence[Any], *, equation: str = "",
                 **attrs: Any) -> int:
    """Sum over numpy's optimised contraction path of prod(index sizes) * cost factor.

    Per point of a step's index space: 2 for a pairwise contraction that sums an index (a
    multiply-add), 1 for a plain product, 1 for a single-operand sum or transpose.
    """
    terms, out = _explicit_terms(equation, in_shapes)
    size: dict[str, int] = {}
    for term, shape in zip(terms, in_shapes):
        for ch, n in zip(term, shape):
            size[ch] = max(size.get(ch, 1), n)
    operands = [np.broadcast_to(np.zeros((), np.float32), s) for s in in_shapes]
    path = np.einsum_path(",".join(terms) + "->" + out, *operands, optimize="greedy")[0][1:]
    if len(terms) == 1:
        path = [(0,)]
    total, live = 0, list(terms)
    for step in path:
        picked = [live[i] for i in step]
        live = [t for i, t in enumerate(live) if i not in step]
        used = set("".join(picked))
        keep = "".join(sorted(ch for ch in used if ch in out or any(ch in t for t in live)))
        factor = 1 if len(picked) == 1 else len(picked) - 1 + (len(keep) < len(used))
        total += math.prod(size[ch] for ch in used) * factor
        live.append(keep)
    return int(total)


@register("Einsum", "contraction", flops=einsum_flops)
def einsum(*inputs: np.ndarray, equation: str) -> np.ndarray:
    """Y = np.einsum(equation, *inputs), summing over indices absent from the output."""
    dtype = inputs[0].dtype
    acc = _accumulate_dtype(dtype)
    y = np.einsum(equation.replace(" ", ""), *(x.astype(acc, copy=False) for x in inputs),
                  optimize=True)
    y = np.asarray(y, dtype=dtype)
    # einsum may return a view of an input (a transpose, a diagonal); outputs must own memory.
    return y.copy() if any(np.shares_memory(y, x) for x in inputs) else y
