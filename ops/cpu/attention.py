"""Batched MatMul and FusedAttention: MKL's strided batch GEMM over groups of heads.

Attention's products are many small GEMMs, one per (batch, head) block: (S, D) x (D, T) and
(S, T) x (T, D). numpy's matmul runs them one by one through OpenBLAS with its own threads;
here a group of heads is one ``cblas_sgemm_batch_strided`` call (:func:`.blas.gemm_batch`) and
groups are tasks of the kernel pool (see :mod:`.common`). Operands are read through their
strides: the head split ``Transpose`` views the exporters put before the products cost nothing
(a (B, H, D, S) ``Kᵀ`` is a column-major matrix per head), so no copy is made.

FusedAttention, with MKL, runs each task's heads in one Numba call (:func:`_attention_heads`):
per head MKL's sgemm through a function pointer for Q·Kᵀ into a tile that stays in cache,
mask, softmax (:func:`.epilogue.exp32_nonpositive`, 8 lanes wide: the float64 exp took half
of GPT's attention) and the product with V straight into the output, with no Python between
the steps: 1.3-1.8x the per-group ``gemm_batch`` + numpy ``exp`` route on one AVX2 core (GPT,
MiniLM and ViT-tiny heads), which remains where MKL is missing. The scores tile's rows are
padded to whole 16-lane vectors, so the mask, maximum, exponentials and sum run over whole
vectors (:func:`_softmax_row`), and the 1 / sum scales each output row (Dv values) instead of
the probabilities (T): on a Zen 4 VM, 2 threads, GPT's heads (64 x 64 x 32, causal mask)
1.13x the unpadded rows' time, MiniLM's (128 x 128 x 32) with a padding mask 1.1x, without
a mask 1.0x; whole models GPT 1.02-1.10x, ViT-tiny 1.01-1.05x, MiniLM within the noise.
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
from .blas import _layout, gemm_batch, gemm_pointer
from .common import TASKS_PER_THREAD, new_output, run_tasks, scratch, threads
from .direct import T16
from .epilogue import exp32_nonpositive
from .matmul import parallel_matmul
from .simd import add8, lane8, max8, store8, vload

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


@njit(cache=True, nogil=True, error_model="numpy")
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


@njit(cache=True, nogil=True, error_model="numpy")
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


#: Lanes of the softmax rows' vectors: rows of the scores tile are padded to a multiple.
ROW_LANES = 16


@njit(cache=True, inline="always")
def _softmax_row(tile, o, t, tp, mf, mo, ms, has_mask):
    """The scores tile's row at flat offset ``o`` (``t`` scores, padded to ``tp``, a multiple
    of ROW_LANES): plus the mask's row (at ``mo`` in ``mf``, stride ``ms``), minus its
    maximum, exponentials in place (:func:`.epilogue.exp32_nonpositive`; the padding's are 0);
    returns 1 / their sum, float32. Whole 16-lane vectors but for a strided mask; the sum in
    float32 lanes over blocks of 256 columns (16 values a lane), the blocks' sums in float64,
    as the reference's float64 sum is to float32. A NaN score makes the row's maximum or sum
    NaN, so every exponential or the inverse is NaN, as in the reference.

    One pass for the mask, one for the maximum, one for the exponentials, one for the sum,
    each over whole vectors of a padded row: 0.57 against 1.0 ns an element for the unpadded
    rows' 8-lane helpers (T = 128, one Zen 4 core), 0.91 against 1.5 at T = 64."""
    ninf = np.float32(-np.inf)
    for j in range(t, tp):
        tile[o + j] = ninf
    if has_mask:
        if ms == 1:
            whole = t - t % ROW_LANES
            for j in range(0, whole, ROW_LANES):
                store8(tile, o + j, add8(vload(tile, o + j, T16), vload(mf, mo + j, T16)))
            for j in range(whole, t):
                tile[o + j] += mf[mo + j]
        else:
            for j in range(t):
                tile[o + j] += mf[mo + j * ms]
    mx = vload(tile, o, T16)
    for j in range(ROW_LANES, tp, ROW_LANES):
        mx = max8(mx, vload(tile, o + j, T16))
    top = lane8(mx, 0)
    for lane in range(1, ROW_LANES):
        x = lane8(mx, lane)
        top = x if x > top else top
    for j in range(tp):
        tile[o + j] = exp32_nonpositive(tile[o + j] - top)
    total = 0.0
    for j0 in range(0, tp, 16 * ROW_LANES):
        acc = vload(tile, o + j0, T16)
        for j in range(j0 + ROW_LANES, min(tp, j0 + 16 * ROW_LANES), ROW_LANES):
            acc = add8(acc, vload(tile, o + j, T16))
        for lane in range(ROW_LANES):
            total += lane8(acc, lane)
    return np.float32(1.0 / total)


@njit(cache=True, inline="always")
def _ld(m):
    """(cblas transpose flag, leading dimension) of a 2-D float32 view MKL can read."""
    if m.strides[1] == 4:
        return 111, max(1, m.strides[0] // 4)
    return 112, max(1, m.strides[1] // 4)


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def _attention_heads(sgemm, q, k, v, mf, mst, has_mask, alpha, nan_to_zero, y, g0, g1):
    """(batch, head) blocks ``g0 .. g1 - 1`` (flat over B x H) of 4-D ``q`` (B, H, S, D),
    ``k`` (B, H, D, T), ``v`` (B, H, T, Dv) and the (B, H, S, T) mask (``mf`` flat from its
    first element, element strides ``mst``: 0 where it broadcasts) into ``y`` (B, H, S, Dv) on
    the calling thread: the BLAS's sgemm for the two products (``sgemm``: a function pointer,
    so no Python between them), the scores (S, T) in a tile that stays in cache, rows padded to
    whole vectors, the mask and the softmax row by row (:func:`_softmax_row`), and each output
    row scaled by its 1 / sum (Dv values, not T: the probabilities are never normalised in
    place).

    Tasks of the kernel pool call it, not Numba's ``prange``: a pool task left waiting for a
    core is taken by the caller, while a parallel region waits for its thread (8 ms per call
    with another process busy on one of 2 cores)."""
    nh, s, d = q.shape[1], q.shape[2], q.shape[3]
    t, dv = k.shape[3], v.shape[3]
    tp = -(-t // ROW_LANES) * ROW_LANES
    scores = np.empty(s * tp, np.float32)
    inv = np.empty(s, np.float32)
    zero = np.float32(0)
    for g in range(g0, g1):
        b, h = g // nh, g % nh
        qa, ka, va, ya = q[b, h], k[b, h], v[b, h], y[b, h]
        ta, lda = _ld(qa)
        tb, ldb = _ld(ka)
        sgemm(101, ta, tb, s, t, d, alpha, qa.ctypes.data, lda, ka.ctypes.data, ldb, 0.0,
              scores.ctypes.data, tp)
        mb = b * mst[0] + h * mst[1]
        for i in range(s):
            inv[i] = _softmax_row(scores, i * tp, t, tp, mf, mb + i * mst[2], mst[3], has_mask)
        tv, ldv = _ld(va)
        sgemm(101, 111, tv, s, dv, t, 1.0, scores.ctypes.data, tp, va.ctypes.data, ldv, 0.0,
              ya.ctypes.data, max(1, ya.strides[0] // 4))
        for i in range(s):
            f = inv[i]
            row = ya[i]
            if nan_to_zero and f != f:  # NaN probabilities count as 0
                for c in range(dv):
                    row[c] = zero
            else:
                for c in range(dv):
                    row[c] *= f


_NO_MASK = np.zeros(1, np.float32)


def _flat(x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]] | None:
    """``x``'s memory from its first element as a flat array, and its strides in elements;
    None where a stride is negative or not a whole element."""
    item = x.itemsize
    if any(st < 0 or st % item for st in x.strides) or 0 in x.shape:
        return None
    span = 1 + sum((n - 1) * st // item for n, st in zip(x.shape, x.strides))
    return (np.lib.stride_tricks.as_strided(x, shape=(span,), strides=(item,)),
            tuple(st // item for st in x.strides))


def _heads_readable(*blocks: np.ndarray) -> bool:
    """Whether MKL can read each 2-D block (one head's matrix) through its strides."""
    return all(_layout(m) is not None for m in blocks)


@register_kernel("FusedAttention", "cpu")
def fused_attention_cpu(Q: np.ndarray, K: np.ndarray, V: np.ndarray,
                        mask: np.ndarray | None = None, q_scale: np.ndarray | None = None,
                        k_scale: np.ndarray | None = None, *, scale: float = 1.0,
                        divide: int = 0, nan_to_zero: int = 0) -> np.ndarray:
    """FusedAttention per group of heads: scores tile, mask and softmax in place, times V;
    one-element ``q_scale`` / ``k_scale`` join the scores' scale."""
    factors = [f for f in (q_scale, k_scale) if f is not None]
    if not _fits(Q, K, V, mask) or (divide and scale == 0) or any(
            f.size != 1 or f.ndim > 1 or f.dtype != Q.dtype for f in factors):
        return fused_attention(Q, K, V, mask, q_scale, k_scale, scale=scale, divide=divide,
                               nan_to_zero=nan_to_zero)
    if factors:  # as the scale: (1 / scale) * q * k when dividing
        product = math.prod(float(f.reshape(())) for f in factors)
        scale, divide = (1.0 / scale if divide else scale) * product, 0
    lead, s, t, dv = Q.shape[:-2], Q.shape[-2], K.shape[-1], V.shape[-1]
    if Q.ndim == 4:  # (B, S, H, Dv) memory: the head merge after attention is then a view
        y = new_output((lead[0], s, lead[1], dv), Q.dtype).transpose(0, 2, 1, 3)
    else:
        y = new_output(lead + (s, dv), Q.dtype)
    full = None if mask is None else np.broadcast_to(mask, lead + (s, t))
    alpha = 1.0 / scale if divide else scale
    # both products' multiply-adds: small ones (decoding a few tokens) stay on this thread
    macs = math.prod(lead) * s * t * (Q.shape[-1] + dv)
    sgemm = gemm_pointer(np.float32)
    q4, k4, v4, y4 = (x if x.ndim == 4 else x.reshape((1,) * (4 - x.ndim) + x.shape)
                      if x.ndim < 4 else None for x in (Q, K, V, y))
    m = (_NO_MASK, (0, 0, 0, 0)) if full is None \
        else _flat(full.reshape((1,) * (4 - full.ndim) + full.shape))
    if sgemm is not None and q4 is not None and k4 is not None and v4 is not None \
            and y4 is not None and m is not None \
            and _heads_readable(q4[0, 0], k4[0, 0], v4[0, 0]):
        heads = q4.shape[0] * q4.shape[1]
        parts = max(1, min(heads, TASKS_PER_THREAD * threads(), macs // MIN_TASK_MACS))
        step = -(-heads // parts)
        run_tasks(lambda i: _attention_heads(
            sgemm, q4, k4, v4, m[0], m[1], full is not None, alpha, bool(nan_to_zero), y4,
            i * step, min(heads, (i + 1) * step)), -(-heads // step))
        return y
    tasks = _groups(lead, s * t * 4, SCORES_TILE_BYTES)

    def run(i: int) -> None:
        idx, sl = tasks[i]
        q = Q[idx][sl]
        scores = scratch("attention_scores", (q.shape[0], s, t), np.float32)
        gemm_batch(q, K[idx][sl], scores, alpha)
        m = scores if full is None else full[idx][sl]
        _masked_softmax(scores, m, full is not None, bool(nan_to_zero))
        gemm_batch(scores, V[idx][sl], y[idx][sl])

    if macs < MIN_TASK_MACS:
        for i in range(len(tasks)):
            run(i)
    else:
        run_tasks(run, len(tasks))
    return y
