"""Gemm, FusedGemm and FusedMatMul: one BLAS GEMM, then the epilogue in place.

The product is :func:`.blas.gemm` (MKL's or OpenBLAS's sgemm/dgemm: faster than any Numba loop
at these sizes), split into row blocks over the kernel threads with BLAS single-threaded
(see :mod:`.common`); ``alpha``, a row-vector ``C`` or bias, and the activation are then
applied in one pass over the fresh output instead of a chain of temporaries. Where B is a
model's weight (registered by the executor's plan: :func:`.common.is_constant`) and the
product is big enough, the 16-lane 1x1-convolution kernel of :mod:`.pointwise_wide` runs it
instead, on B packed once, with the epilogue in registers (AVX-512, where OpenBLAS or numpy
runs the GEMMs: faster than OpenBLAS's sgemm on the transformers' projections). Other
broadcasts of ``C``, half precision and FusedMatMul with a non-vector bias take the
reference's route.

FusedGemm and FusedMatMul (with a 2-D B) with a ``precision`` ("bf16", "int8") multiply with
:mod:`.lowp`'s reduced GEMMs instead, on B packed once, in the same row blocks; with
``sparse=1`` (and no precision, float32) by B in CSR (:mod:`.sparse`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from numba import njit

from ..matmul import fused_gemm, fused_matmul, gemm
from ..quant import dynamic_qparams
from ..registry import register_kernel
from . import direct, fewrows, lowp, lowp_rows, native_pool, pointwise_wide
from .blas import backend, gemm_pointer, gemm_rows
from .blas import gemm as blas_gemm
from .common import (
    MIN_TASK_ELEMENTS,
    TASKS_PER_THREAD,
    fast_dtype,
    is_constant,
    packed,
    run_ranges,
    run_tasks,
    scratch,
    threads,
    vector,
)
from .epilogue import NONE, activation_code, apply_epilogue, empty_operand, epilogue_rows
from .sparse import sparse_matmul

#: Smallest block of a split GEMM: below it BLAS's per-call packing dominates.
MIN_BLOCK = 64
#: Column blocks of a few-row GEMM split over threads are multiples of this: whole register
#: tiles, so every output column goes through the same kernel path as in one call.
COLUMN_BLOCK = 128
#: Multiply-adds below which a GEMM (a classifier head at small batch) is left to BLAS as is:
#: splitting and thread switching would cost more than it saves.
SMALL_GEMM = 1 << 24
#: With a sequential BLAS, multiply-adds from which a GEMM below SMALL_GEMM is still split
#: into row blocks over the kernel threads (~0.2 ms of one core); smaller ones are one
#: sequential call.
SPLIT_GEMM = 1 << 21
#: Multiply-adds below which a split GEMM has one row block per kernel thread, not
#: TASKS_PER_THREAD: each block's MKL call re-packs B, and GPT's (512, 128) @ (128, 384) ran at
#: 45 GFLOP/s in 8 blocks, 57 in 2 (one core: 34), 2 threads on an AVX2 EPYC.
BALANCED_GEMM = 1 << 27
#: BALANCED_GEMM for the reduced-precision GEMMs of :func:`lowp_matmul`.
REDUCED_BALANCED_GEMM = 8 * BALANCED_GEMM
#: Elements per task of an epilogue over a whole GEMM output: a GELU costs ~2 ns an element,
#: so the memory-bound kernels' MIN_TASK_ELEMENTS would leave GPT's (512, 512) on one thread.
EPILOGUE_TASK_ELEMENTS = MIN_TASK_ELEMENTS // 8
#: Multiply-adds per task of :func:`_wide_matmul` (as :mod:`.conv` splits its 1x1 layers).
WIDE_TASK_MACS = 1 << 21
#: Products from this many multiply-adds run :func:`_wide_matmul` (smaller ones: one
#: sequential GEMM call). Its row blocks go to the native pool (:mod:`.native_pool`) as the
#: GEMM's do: through Python-dispatched tasks the GPT decoder's (512 rows, 8-34M multiply-adds)
#: ran 5% slower than the GEMM; in the native pool the whole decoder runs 1.08x faster, MiniLM
#: (4096 rows, 0.6-2.4G) 1.12x, ViT-tiny 1.07-1.10x.
WIDE_MIN_MACS = SPLIT_GEMM


def parallel_matmul(a: np.ndarray, b: np.ndarray,
                    post: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """``a @ b`` for 2-D operands, blocks of output rows over the kernel threads; then
    ``post(rows)`` on each block of output rows (an epilogue, in place), inside the block's
    task while it is in cache, or on the whole output where the product is one call.

    Rows are split: every output element is then computed by the same BLAS call shape as its
    neighbours. Splitting columns anywhere would let BLAS's edge kernels round some outputs
    differently from others, which a model with equal logits (the constant-weight light
    models) turns into a visibly non-uniform softmax; so a few-row product (a classifier)
    is split only into whole COLUMN_BLOCKs, on MKL.
    """
    m, n = a.shape[0], b.shape[1]
    macs = m * n * a.shape[1]
    if _wide_matmul_usable(a, b, post):
        return _wide_matmul(a, b, post)
    y = _fewrows(a, b, False, post)
    if y is not None:
        return y
    if m < 2 * MIN_BLOCK and n >= 2 * COLUMN_BLOCK and threads() > 1 and backend() != "numpy" \
            and a.dtype == b.dtype and macs >= SPLIT_GEMM:
        # few rows (a classifier at small batch): column blocks of whole COLUMN_BLOCKs over
        # the kernel threads, MKL's sequential sgemm in each (1.2-1.6x OpenBLAS's own
        # threads on a (8, 1024-4096) x (., 1000) classifier)
        y = np.empty((m, n), a.dtype)
        parts = min(threads(), n // COLUMN_BLOCK)
        step = -(-(n // COLUMN_BLOCK) // parts) * COLUMN_BLOCK
        run_tasks(lambda i: blas_gemm(a, b[:, i * step:(i + 1) * step],
                                      y[:, i * step:(i + 1) * step]), -(-n // step))
        return _whole(y, post)
    # MKL's GEMM for this dtype as a pointer Numba calls (the tasks below), or None
    fn = gemm_pointer(a.dtype) if a.dtype == b.dtype else None
    sequential = backend() != "numpy" and a.dtype == b.dtype and macs < SMALL_GEMM
    if not sequential and (macs < SMALL_GEMM or m < 2 * MIN_BLOCK):
        # small, or few rows (VGG's 25088x4096 weight): one call, with BLAS's own threads,
        # which split the weight's columns among themselves
        return _whole(np.matmul(a, b), post)
    if sequential and (macs < SPLIT_GEMM or m < 2 * MIN_BLOCK or threads() == 1):
        # small (a transformer's projections at small batch): one sequential MKL call on this
        # thread; OpenBLAS's two threads took 17 ms for GPT's 512x128x128 under load
        y = np.empty((m, n), a.dtype)
        if isinstance(post, Epilogue) and fn is not None and m * n <= EPILOGUE_TASK_ELEMENTS:
            # and its epilogue in the same Numba call (a decoding step's few rows)
            bias, code, p0, p1 = post.operands(y.dtype)
            if _gemm_epilogue_rows(fn, a, b, y, 0, m, bias, empty_operand(y.dtype, 2), code,
                                   p0, p1):
                return y
        return _whole(blas_gemm(a, b, y), post)
    y = np.empty((m, n), np.result_type(a, b))
    step = _row_step(m, macs, MIN_BLOCK)
    tasks = -(-m // step)

    def block(i: int) -> None:
        rows = y[i * step:(i + 1) * step]
        blas_gemm(a[i * step:(i + 1) * step], b, rows)
        if post is not None:
            post(rows)

    native = native_pool.pool() if fn is not None and a.dtype == np.float32 \
        and (post is None or isinstance(post, Epilogue)) else None
    if native is not None:
        ep = post if isinstance(post, Epilogue) else Epilogue(None, (NONE, 0.0, 0.0))
        if native.gemm(a, b, y, ep.bias, ep.act, step, min(threads(), tasks) - 1):
            return y
    if isinstance(post, Epilogue) and fn is not None:
        # the whole task in one Numba call (GEMM, then the epilogue while the rows are in
        # cache), no Python in it to hold the GIL while the other kernel threads wait
        bias, code, p0, p1 = post.operands(y.dtype)
        no_z = empty_operand(y.dtype, 2)

        def rows(i: int) -> None:
            lo, hi = i * step, min(m, (i + 1) * step)
            if not _gemm_epilogue_rows(fn, a, b, y, lo, hi, bias, no_z, code, p0, p1):
                block(i)

        run_tasks(rows, tasks)
        return y

    run_tasks(block, tasks)
    return y


def _row_step(m: int, macs: int, least: int, balanced: int = BALANCED_GEMM) -> int:
    """Rows per block of an ``m``-row product split over the kernel threads: one block per
    thread below ``balanced`` multiply-adds, else TASKS_PER_THREAD; blocks of at least
    ``least`` rows where there are enough."""
    per_thread = 1 if macs < balanced else TASKS_PER_THREAD
    parts = max(1, min(m // least, per_thread * threads()))
    return max(1, -(-m // parts))


def _wide_matmul_usable(a: np.ndarray, b: np.ndarray, post: Any) -> bool:
    """Whether :func:`_wide_matmul` takes ``a @ b``: float32, ``b`` a model's weight
    (:func:`.common.is_constant`: it is packed once) of a shape :func:`.pointwise_wide.usable`
    takes (AVX-512; not oneMKL's K > 64, nor column counts that are no multiple of 8), an
    epilogue it can apply (bias and activation, or none), and enough rows: every row task
    reads all of B (a classifier at small batch splits B's columns instead)."""
    return a.dtype == b.dtype == np.float32 and a.ndim == b.ndim == 2 \
        and a.flags.c_contiguous and a.shape[0] >= 2 * MIN_BLOCK \
        and a.shape[0] * a.shape[1] * b.shape[1] >= WIDE_MIN_MACS \
        and (post is None or isinstance(post, Epilogue)) \
        and direct.vector_lanes() == 16 and pointwise_wide.usable(a.shape[1], b.shape[1]) \
        and is_constant(b)


def _wide_matmul(a: np.ndarray, b: np.ndarray, post: Epilogue | None) -> np.ndarray:
    """``a @ b`` with the epilogue, by the 16-lane 1x1-convolution kernel: a linear layer on
    rows is a 1x1 convolution on pixels. Against OpenBLAS's sgemm and the epilogue in its
    row blocks (Zen 4 VM, 2 threads), 1.1-1.2x on MiniLM's and ViT's projections (4096 x
    384 x 1152, 4096 x 384 x 1536, 6304 x 768 x 192)."""
    m, k = a.shape
    n = b.shape[1]
    y = np.empty((m, n), np.float32)
    wp = packed(b, ("matmul-wide", "<f4"), lambda w: pointwise_wide.pack(w.T))
    bias = np.zeros(n, np.float32) if post is None or post.bias is None else post.bias
    act = (NONE, 0.0, 0.0) if post is None else post.act
    f32 = np.float32
    # row blocks as the GEMM splits them, in the native pool where it is free
    step = _row_step(m, m * k * n, pointwise_wide.ROWS)
    native = native_pool.pool()
    if native is not None and native.wide(a, wp, y, bias, act, step,
                                          min(threads(), -(-m // step)) - 1):
        return y
    no_z = np.zeros((0, n), np.float32)
    run_ranges(lambda lo, hi: pointwise_wide.pointwise_wide_rows(
        a, wp, bias, no_z, y, 0, n, act[0], f32(act[1]), f32(act[2]), f32(1), lo, hi),
        m, max(pointwise_wide.ROWS, WIDE_TASK_MACS // (k * n)))
    return y


def _fewrows(a: np.ndarray, w: np.ndarray, trans: bool, post: Any) -> np.ndarray | None:
    """``post(a @ (w.T if trans else w))`` by :mod:`.fewrows` where it takes the product, else
    None: float32, at most MAX_ROWS rows (a classifier at small batch) and at least
    SPLIT_GEMM multiply-adds, ``w`` a model's weight (packed once, as a 1x1 layer's), whole
    8-lane vectors of outputs, AVX-512, OpenBLAS (or no BLAS) running the GEMMs, and an
    epilogue of bias and a CNN activation. Against OpenBLAS's sgemm in column blocks and the
    epilogue (Zen 4 VM, 2 threads; ``transB=1``): 32 x 9216 x 4096 29.4 -> 14.1 ms,
    32 x 4096 x 4096 12.8 -> 6.2, 8 x 25088 x 4096 39.3 -> 17.2 (the weight read at 24 GB/s),
    8 x 9216 x 4096 19.5 -> 6.0; one thread 2.0-3.5x. Whole models, interleaved: AlexNet
    1.08x, ZFNet 1.22x, VGG-19 1.03x."""
    m, k = a.shape
    n = w.shape[0] if trans else w.shape[1]
    if not (a.dtype == w.dtype == np.float32 and w.ndim == 2 and a.flags.c_contiguous
            and 0 < m <= fewrows.MAX_ROWS and n >= 16 and n % 8 == 0
            and m * n * k >= SPLIT_GEMM and (post is None or (
                isinstance(post, Epilogue) and post.act[0] in direct.IN_REGISTERS))
            and direct.vector_lanes() == 16 and backend() != "mkl" and is_constant(w)):
        return None
    wp = packed(w, ("fewrows", trans, "<f4"),
                lambda v: pointwise_wide.pack(v if trans else v.T))
    y = np.empty((m, n), np.float32)
    if post is None or post.bias is None:
        y.fill(0)
    else:
        y[:] = post.bias
    code, p0, p1 = (NONE, 0.0, 0.0) if post is None else post.act
    f32 = np.float32
    ranges = fewrows.column_ranges(n, TASKS_PER_THREAD * threads())
    run_tasks(lambda i: fewrows.fewrows_cols(a, wp, y, code, f32(p0), f32(p1), f32(1),
                                             *ranges[i]), len(ranges))
    return y


@njit(cache=True, nogil=True, error_model="numpy")
def _gemm_epilogue_rows(fn, a, b, y, lo, hi, bias, no_z, code, p0, p1) -> bool:
    """Rows ``lo:hi`` of ``y = act(a @ b + bias)``: MKL through ``fn``, then the epilogue;
    False (nothing done) where MKL cannot take the operands."""
    if not gemm_rows(fn, a, b, y, lo, hi):
        return False
    epilogue_rows(y[lo:hi], 0, y.shape[1], bias, no_z, code, p0, p1, y.dtype.type(1))
    return True


class Epilogue(NamedTuple):
    """``rows = act(rows + bias)`` in place, over blocks of GEMM output rows: callable from
    Python, and run inside the GEMM's own Numba call by :func:`parallel_matmul`."""

    bias: np.ndarray | None
    act: tuple[int, float, float]

    def operands(self, dtype: np.dtype) -> tuple[np.ndarray, int, Any, Any]:
        """(bias or an empty vector, activation code, its two parameters) for
        :func:`.epilogue.epilogue_rows` on ``dtype`` rows."""
        t = np.dtype(dtype).type
        bias = empty_operand(dtype, 1) if self.bias is None else self.bias
        return bias, self.act[0], t(self.act[1]), t(self.act[2])

    def __call__(self, rows: np.ndarray) -> None:
        apply_epilogue(rows, self.bias, None, self.act, parallel=False)


def _whole(y: np.ndarray, post: Callable[[np.ndarray], None] | None) -> np.ndarray:
    """``post`` over all of ``y``'s rows, in row ranges over the kernel threads."""
    if post is not None:
        run_ranges(lambda lo, hi: post(y[lo:hi]), y.shape[0],
                   max(1, EPILOGUE_TASK_ELEMENTS // max(1, y.shape[1])))
    return y


def _epilogue(bias: np.ndarray | None, act: tuple[int, float, float]) -> Epilogue | None:
    """The bias + activation epilogue of a block of rows, or None when there is nothing."""
    if bias is None and act[0] == NONE:
        return None
    return Epilogue(bias, act)


def lowp_matmul(a: np.ndarray, w: np.ndarray, trans_w: bool, precision: str,
                x_scale: float = 0.0, x_zp: int = 0,
                post: Epilogue | None = None) -> np.ndarray:
    """``post(a @ w')`` (``w' = w.T`` when ``trans_w``; ``post`` a bias + activation
    epilogue, or none) for a float32 2-D ``a`` and weight ``w`` with :mod:`.lowp`'s
    ``precision`` GEMM, row blocks over the kernel threads.

    ``w`` is packed once (cached against the array itself: pass the weight, not a view made
    per call); int8 with ``x_scale`` 0 quantises ``a`` with its own (dynamic) range. With
    MKL, each row block is one Numba call (:func:`.lowp_rows.gemm_rows`): conversion, GEMM and
    epilogue with the rows in cache, one block per kernel thread below
    REDUCED_BALANCED_GEMM (each call re-reads the packed weight; MKL's AMX kernels want tall
    blocks).
    """
    pack = lowp.pack_bf16 if precision == "bf16" else lowp.pack_int8
    wp = packed(w, (f"gemm-{precision}", bool(trans_w)),
                lambda b: pack(b.T if trans_w else b))
    if precision == "int8" and not x_scale:
        x_scale, x_zp = dynamic_qparams(a)
    m, n = a.shape[0], wp.n
    y = np.empty((m, n), np.float32)
    ep = post if post is not None else Epilogue(None, (NONE, 0.0, 0.0))
    fused = lowp_rows.gemm_rows(precision, a, wp, y, x_scale, x_zp, ep.operands(np.float32))

    def rows(lo: int, hi: int) -> None:
        if fused is not None:
            fused(lo, hi)
            return
        if precision == "bf16":
            lowp.gemm_bf16(a[lo:hi], wp, y[lo:hi])
        else:
            lowp.gemm_int8(a[lo:hi], wp, y[lo:hi], x_scale, x_zp)
        if post is not None:
            post(y[lo:hi])

    if m * n * wp.k < SPLIT_GEMM or m < 2 * MIN_BLOCK or threads() == 1:
        rows(0, m)
        return y
    # reduced GEMMs run 3-5x faster on matrix units: one block per thread up to 8x as many
    # multiply-adds (MiniLM's FFN at batch 8, 1024 x 384 x 1536 bf16 with GELU: 2.1 -> 1.5 ms)
    step = _row_step(m, m * n * wp.k, MIN_BLOCK, REDUCED_BALANCED_GEMM)
    tasks = -(-m // step)
    if precision == "bf16" and fused is not None and tasks > 1 and a.flags.c_contiguous \
            and not lowp.dot_kernels("bf16"):
        # a job of the native pool: the helpers take their blocks without the GIL
        native = native_pool.pool()
        fns = lowp.mkl_functions("bf16", wp.k)
        if native is not None and fns is not None and native.gemm_bf16(
                a, scratch("lowp-rows", a.shape, np.uint16), wp.mkl(fns), y, ep.bias, ep.act,
                step, min(threads(), tasks) - 1):
            return y
    run_tasks(lambda i: rows(i * step, min(m, (i + 1) * step)), tasks)
    return y


def _bias_vector(bias: np.ndarray | None, n: int, ndim: int,
                 dtype: np.dtype) -> tuple[bool, np.ndarray | None]:
    """(whether FusedMatMul's bias is absent or a length-``n`` row vector of an output of
    rank ``ndim``, as in every exported Linear layer; that vector)."""
    if bias is None:
        return True, None
    vec = _row_vector(bias.reshape(-1) if bias.ndim > 2 and bias.size == n else bias, n, dtype)
    return vec is not None and bias.ndim <= ndim, vec


def _row_vector(c: np.ndarray | None, n: int, dtype: np.dtype) -> np.ndarray | None:
    """``c`` as a length-n vector if it broadcasts along rows of an (m, n) output."""
    if c is None or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
        return None
    if c.size == n or c.size == 1:
        return vector(np.broadcast_to(c.reshape(-1), (n,)), dtype)
    return None


def _gemm(A, B, C, alpha, beta, transA, transB, act,
          lowp_attrs=("", 0.0, 0), sparse=0) -> np.ndarray | None:
    if act is None or A.ndim != 2 or B.ndim != 2 or not fast_dtype(A, B):
        return None
    if lowp_attrs is None or (lowp_attrs[0] and A.dtype != np.float32):
        return None  # an invalid precision (the reference says why), or float64
    a = A.T if transA else A
    b = B.T if transB else B
    if a.shape[1] != b.shape[0] or (C is not None and C.dtype != A.dtype):
        return None
    bias = None
    if C is not None:
        bias = _row_vector(C, b.shape[1], A.dtype)
        if bias is None:
            return None
        if beta != 1:
            bias = bias * A.dtype.type(beta)
    if lowp_attrs[0] and alpha == 1:
        return lowp_matmul(a, B, transB, *lowp_attrs, post=_epilogue(bias, act))
    if lowp_attrs[0]:
        y = lowp_matmul(a, B, transB, *lowp_attrs)
    elif sparse and A.dtype == np.float32:
        y = sparse_matmul(a, B, bool(transB))
    elif alpha == 1:
        post = _epilogue(bias, act)
        # B.T, a view, is no registered weight: the few-row kernel takes B itself here (with
        # transB=0, parallel_matmul routes it)
        y = _fewrows(a, B, True, post) if transB else None
        return parallel_matmul(a, b, post) if y is None else y
    else:
        y = parallel_matmul(a, b)
    if alpha != 1:
        y *= A.dtype.type(alpha)
    apply_epilogue(y, bias, None, act)
    return y


@register_kernel("Gemm", "cpu")
def gemm_cpu(A: np.ndarray, B: np.ndarray, C: np.ndarray | None = None, *, alpha: float = 1.0,
             beta: float = 1.0, transA: int = 0, transB: int = 0) -> np.ndarray:
    """Gemm with the row-vector ``C`` added in place."""
    y = _gemm(A, B, C, alpha, beta, transA, transB, (0, 0.0, 0.0))
    if y is None:
        return gemm(A, B, C, alpha=alpha, beta=beta, transA=transA, transB=transB)
    return y


@register_kernel("FusedGemm", "cpu")
def fused_gemm_cpu(A: np.ndarray, B: np.ndarray, C: np.ndarray | None = None, *,
                   alpha: float = 1.0, beta: float = 1.0, transA: int = 0, transB: int = 0,
                   activation: str = "", activation_params: Sequence[float] | None = None,
                   precision: str = "", x_scale: float = 0.0,
                   x_zero_point: int = 0, sparse: int = 0) -> np.ndarray:
    """FusedGemm: ``C`` and the activation applied in one pass over the GEMM output; with a
    ``precision``, the product is :mod:`.lowp`'s bf16 or int8 GEMM; with ``sparse``, the CSR
    product of :mod:`.sparse`."""
    y = _gemm(A, B, C, alpha, beta, transA, transB,
              activation_code(activation, activation_params),
              lowp.precision_attrs(precision, x_scale, x_zero_point), int(sparse))
    if y is None:
        return fused_gemm(A, B, C, alpha=alpha, beta=beta, transA=transA, transB=transB,
                          activation=activation, activation_params=activation_params,
                          precision=precision, x_scale=x_scale, x_zero_point=x_zero_point,
                          sparse=sparse)
    return y


@register_kernel("FusedMatMul", "cpu")
def fused_matmul_cpu(A: np.ndarray, B: np.ndarray, bias: np.ndarray | None = None, *,
                     activation: str = "", activation_params: Sequence[float] | None = None,
                     precision: str = "", x_scale: float = 0.0,
                     x_zero_point: int = 0, sparse: int = 0) -> np.ndarray:
    """FusedMatMul: bias over the last axis and the activation in one pass; with a
    ``precision`` and a 2-D B, the product is :mod:`.lowp`'s bf16 or int8 GEMM; with
    ``sparse`` (float32, 2-D B), the CSR product of :mod:`.sparse`."""
    act = activation_code(activation, activation_params)
    attrs = lowp.precision_attrs(precision, x_scale, x_zero_point)
    reduced = attrs is not None and attrs[0] and B.ndim == 2 and A.shape[-1:] == B.shape[:1]
    if act is not None and attrs is not None and A.ndim >= 2 and B.ndim >= 2 \
            and fast_dtype(A, B) and (bias is None or bias.dtype == A.dtype) \
            and (not reduced or A.dtype == np.float32):
        if reduced:
            fits, vec = _bias_vector(bias, B.shape[1], A.ndim, A.dtype)
            y = lowp_matmul(A.reshape(-1, A.shape[-1]), B, False, *attrs,
                            post=_epilogue(vec, act) if fits else None)
            y = y.reshape(*A.shape[:-1], B.shape[1])
            if fits:
                return y
        elif sparse and B.ndim == 2 and A.shape[-1:] == B.shape[:1] and A.dtype == np.float32:
            y = sparse_matmul(A.reshape(-1, A.shape[-1]), B)
            y = y.reshape(*A.shape[:-1], B.shape[1])
        elif B.ndim == 2 and (A.ndim == 2 or A.flags.c_contiguous) \
                and A.shape[-1] == B.shape[0]:
            fits, vec = _bias_vector(bias, B.shape[1], A.ndim, A.dtype)
            if fits:  # the epilogue inside the GEMM's row blocks
                y = parallel_matmul(A.reshape(-1, A.shape[-1]), B, _epilogue(vec, act))
                return y.reshape(*A.shape[:-1], B.shape[1])
            y = None  # a bias of another shape: the reference broadcasts it
        else:
            from .attention import batched_matmul  # here: attention imports this module

            y = batched_matmul(A, B)
            y = np.matmul(A, B) if y is None else y
        if y is not None:
            fits, vec = _bias_vector(bias, y.shape[-1], y.ndim, y.dtype)
            if fits and y.flags.c_contiguous:
                apply_epilogue(y.reshape(-1, y.shape[-1]), vec, None, act)
                return y
    return fused_matmul(A, B, bias, activation=activation, activation_params=activation_params,
                        precision=precision, x_scale=x_scale, x_zero_point=x_zero_point,
                        sparse=sparse)
