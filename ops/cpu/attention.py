"""Batched MatMul and FusedAttention: MKL's strided batch GEMM over groups of heads.

Attention's products are many small GEMMs, one per (batch, head) block: (S, D) x (D, T) and
(S, T) x (T, D). numpy's matmul runs them one by one through OpenBLAS with its own threads;
here a group of heads is one ``cblas_sgemm_batch_strided`` call (:func:`.blas.gemm_batch`) and
groups are tasks of the kernel pool (see :mod:`.common`). Operands are read through their
strides: the head split ``Transpose`` views the exporters put before the products cost nothing
(a (B, H, D, S) ``Kᵀ`` is a column-major matrix per head), so no copy is made.

FusedAttention keeps a group's scores in a per-thread tile small enough for the L2 cache,
adds the mask and takes the softmax in place, then multiplies by V straight into the output.
A 4-D output is written as (B, S, H, D) memory and returned as its (B, H, S, D) view: the
``Transpose(0, 2, 1, 3)`` and ``Reshape`` that merge the heads after attention then are views
too, as for the channels-last convolutions.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from numba import njit

from ..attention import fused_attention
from ..matmul import matmul
from ..registry import register_kernel
from .blas import gemm_batch
from .common import TASKS_PER_THREAD, new_output, run_tasks, scratch, threads
from .matmul import parallel_matmul

#: Bytes of scores one task keeps (a group of heads' (S, T) tiles): about half an L2 cache,
#: so the scores stay in cache from the first GEMM through the softmax to the second GEMM.
SCORES_TILE_BYTES = 1 << 18
#: Multiply-adds per task of a batched MatMul below which blocks are grouped further: a task
#: hand-off (~10-20 us) should stay small against the GEMMs it runs.
MIN_TASK_MACS = 1 << 20


def _groups(lead: tuple[int, ...], per_block: int, limit: int) -> list[tuple[tuple, slice]]:
    """Tasks over the leading axes: (index into all but the last, slice of the last).

    Blocks along the last leading axis share one batch stride, so a group of them is one
    strided batch call; a group holds at most ``limit // per_block`` blocks and the blocks are
    spread so every kernel thread gets a few tasks.
    """
    outer, inner = lead[:-1], lead[-1]
    total = math.prod(lead)
    want = max(1, min(total, TASKS_PER_THREAD * threads()))
    size = max(1, min(inner, limit // max(1, per_block), -(-total // want)))
    tasks = []
    for idx in itertools.product(*(range(n) for n in outer)):
        for lo in range(0, inner, size):
            tasks.append((idx, slice(lo, min(inner, lo + size))))
    return tasks


def batched_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """``a @ b`` for float32 operands of rank >= 3 with the same leading shape, one strided
    batch GEMM per group of blocks; None where numpy's matmul must judge (broadcasting,
    other dtypes, empty operands)."""
    if a.ndim < 3 or a.ndim != b.ndim or a.shape[:-2] != b.shape[:-2] \
            or a.dtype != np.float32 or b.dtype != np.float32 or a.shape[-1] != b.shape[-2] \
            or 0 in a.shape or 0 in b.shape:
        return None
    lead, (m, k), n = a.shape[:-2], a.shape[-2:], b.shape[-1]
    y = new_output(lead + (m, n), a.dtype)
    tasks = _groups(lead, m * n * k, max(MIN_TASK_MACS, m * n * k))

    def run(i: int) -> None:
        idx, sl = tasks[i]
        gemm_batch(a[idx][sl], b[idx][sl], y[idx][sl])

    run_tasks(run, len(tasks))
    return y


@register_kernel("MatMul", "cpu")
def matmul_cpu(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """MatMul: row blocks of one GEMM for a 2-D ``B``, strided batch GEMMs for batched
    operands (attention's products), numpy's matmul otherwise."""
    if A.ndim >= 2 and B.ndim == 2 and A.dtype == B.dtype == np.float32 \
            and A.flags.c_contiguous and 0 not in A.shape and A.shape[-1] == B.shape[0]:
        y = parallel_matmul(A.reshape(-1, A.shape[-1]), B)
        return y.reshape(*A.shape[:-1], B.shape[1])
    y = batched_matmul(A, B)
    return matmul(A, B) if y is None else y


@njit(cache=True, nogil=True)
def _shift_rows(s, mask, has_mask):
    """Rows of s (G, S, T) in place: s + mask, minus the row's maximum (NaN propagates)."""
    g, rows, t = s.shape
    for h in range(g):
        for r in range(rows):
            row = s[h, r]
            if has_mask:
                m = mask[h, r]
                for j in range(t):
                    row[j] += m[j]
            top = row[0]
            for j in range(t):
                v = row[j]
                top = v if v > top or v != v else top
            for j in range(t):
                row[j] -= top


@njit(cache=True, nogil=True)
def _normalize_rows(s, nan_to_zero):
    """Rows of s (G, S, T) in place: divided by their sum (float64 sums); NaN results as 0
    when ``nan_to_zero``."""
    g, rows, t = s.shape
    for h in range(g):
        for r in range(rows):
            row = s[h, r]
            total = 0.0
            for j in range(t):
                total += row[j]
            inv = row.dtype.type(1.0 / total)
            for j in range(t):
                row[j] *= inv
            if nan_to_zero:
                zero = row.dtype.type(0)
                for j in range(t):
                    v = row[j]
                    row[j] = zero if v != v else v


def _masked_softmax(s: np.ndarray, mask: np.ndarray, has_mask: bool, nan_to_zero: bool) -> None:
    """softmax(s + mask) over the last axis of the C-contiguous (G, S, T) ``s``, in place.

    The exponentials are numpy's SIMD loop: Numba's scalar ``exp`` does not vectorise, and
    MKL's VML takes its generic code path on AMD CPUs (2x slower than numpy's here).
    """
    _shift_rows(s, mask, has_mask)
    np.exp(s, out=s)
    _normalize_rows(s, nan_to_zero)


def _fits(Q: np.ndarray, K: np.ndarray, V: np.ndarray, mask: np.ndarray | None) -> bool:
    if Q.ndim < 3 or not (Q.ndim == K.ndim == V.ndim) \
            or not Q.shape[:-2] == K.shape[:-2] == V.shape[:-2] \
            or any(x.dtype != np.float32 for x in (Q, K, V)) \
            or Q.shape[-1] != K.shape[-2] or K.shape[-1] != V.shape[-2] \
            or 0 in Q.shape or 0 in K.shape or 0 in V.shape:
        return False
    if mask is None:
        return True
    try:
        shape = np.broadcast_shapes(mask.shape, Q.shape[:-1] + K.shape[-1:])
    except ValueError:
        return False
    return mask.dtype == np.float32 and shape == Q.shape[:-1] + K.shape[-1:]


@register_kernel("FusedAttention", "cpu")
def fused_attention_cpu(Q: np.ndarray, K: np.ndarray, V: np.ndarray,
                        mask: np.ndarray | None = None, *, scale: float = 1.0,
                        divide: int = 0, nan_to_zero: int = 0) -> np.ndarray:
    """FusedAttention per group of heads: scores tile, mask and softmax in place, times V."""
    if not _fits(Q, K, V, mask) or (divide and scale == 0):
        return fused_attention(Q, K, V, mask, scale=scale, divide=divide,
                               nan_to_zero=nan_to_zero)
    lead, s, t, dv = Q.shape[:-2], Q.shape[-2], K.shape[-1], V.shape[-1]
    if Q.ndim == 4:  # (B, S, H, Dv) memory: the head merge after attention is then a view
        y = new_output((lead[0], s, lead[1], dv), Q.dtype).transpose(0, 2, 1, 3)
    else:
        y = new_output(lead + (s, dv), Q.dtype)
    full = None if mask is None else np.broadcast_to(mask, lead + (s, t))
    alpha = 1.0 / scale if divide else scale
    tasks = _groups(lead, s * t * 4, SCORES_TILE_BYTES)

    def run(i: int) -> None:
        idx, sl = tasks[i]
        q = Q[idx][sl]
        scores = scratch("attention_scores", (q.shape[0], s, t), np.float32)
        gemm_batch(q, K[idx][sl], scores, alpha)
        m = scores if full is None else full[idx][sl]
        _masked_softmax(scores, m, full is not None, bool(nan_to_zero))
        gemm_batch(scores, V[idx][sl], y[idx][sl])

    run_tasks(run, len(tasks))
    return y
