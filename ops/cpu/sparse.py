"""Sparse weights of the cpu kernels: ``x @ W`` with W in CSR, through oneMKL's sparse BLAS.

FusedGemm, FusedMatMul (2-D B) and FusedConv (1x1, stride 1, no padding, one group) with the
attribute ``sparse=1`` multiply here instead of in :func:`.blas.gemm`: the weight, pruned to
mostly zeros (:meth:`taskflow.Model.prune` with ``structured=False``), is converted once to
CSR (cached with :func:`.common.packed`), one row per *output* channel: ``(N, K)``.

MKL's sparse product ``mkl_sparse_s_mm`` takes the sparse matrix on the left, so a block of
rows of X computes ``Y_blk^T = W X_blk^T``: the block is transposed into a per-thread scratch
``(K, rows)`` buffer, MKL writes ``Y_blk^T`` (N, rows) into another, and a Numba pass
transposes it into the output (a strided view if need be). Measured on this machine (2-core
AMD EPYC, AVX2, MKL 2026.2, one thread, 64 x 4096 x 4096 at 90% sparsity, best of 5):
MKL's column-major layout, which reads X and writes Y in place, ran at 0.9-1.1x sgemm; its
row-major layout on transposed copies at 2.5-3x. Transposing whole matrices with numpy cost
up to 3x the product itself (3136 x 256 x 64), so blocks of :func:`block_rows` rows are
transposed while they are in cache. ``mkl_sparse_set_mm_hint`` + ``mkl_sparse_optimize``
changed the time by under 2% at five shapes, so handles are used as created.

Without MKL (``TASKFLOW_BLAS=numpy``, no ``mkl`` wheel) or with ``TASKFLOW_SPARSE=numba``
(read per call), a Numba loop computes the same block product, at 0.4-1x MKL's speed (close
from 64 rows on, 3x slower at 8). Below :data:`NUMBA_MAX_WORK` (rows x non-zeros) that loop
runs even with MKL: MKL's call costs ~35 us, the loop ~15 us on a 8 x 64 x 32 product.
:func:`sparse_backend` says which.

Sparse products win only at high sparsity. Through the FusedGemm / FusedConv kernels, 2 kernel
threads, best of 5 interleaved (dense / sparse time): at 90% 3.8x on 64 x 4096 x 4096, 4.2x at
8 rows, 3.3x on 256 x 1024 x 1024, 2.3x on 1024 x 512 x 512, 1.9-2.3x on 1x1 convolutions
(1024 -> 256 at 7x7, 512 -> 512 at 14x14, batch 8) but 1.0x on 256 -> 64 at 28x28; at 80%
1.5-2.4x; at 50% 0.55-1.0x. So nothing here decides: the pruning choice
(:mod:`taskflow.precision.sparse`) times both kernels per layer and sets ``sparse=1`` only
where it is measured faster.
"""

from __future__ import annotations

import ctypes
import os
import threading
import weakref
from typing import Any

import numpy as np
from numba import njit

from taskflow.errors import ShapeError

from . import blas
from .common import TASKS_PER_THREAD, packed, run_tasks, scratch, threads

#: mkl_spblas.h enums: SPARSE_OPERATION_NON_TRANSPOSE, SPARSE_MATRIX_TYPE_GENERAL,
#: SPARSE_FILL_MODE_FULL, SPARSE_DIAG_NON_UNIT, SPARSE_LAYOUT_ROW_MAJOR, SPARSE_INDEX_BASE_ZERO
_NON_TRANSPOSE, _GENERAL, _FILL_FULL, _DIAG_NON_UNIT, _ROW_MAJOR, _INDEX_ZERO = (
    10, 20, 42, 50, 101, 0)
#: Elements of the two transposed blocks, (K + N) x rows, per MKL call: its kernel vectorises
#: along the rows, and blocks of about this size ran fastest (measured 8-256 rows: 32 rows best
#: at K + N = 2048-8192, 128-256 at 320-1024; up to 4x between the best and worst).
BLOCK_ELEMENTS = 1 << 17
#: Fewest and most rows per block.
BLOCK_ROWS = (32, 256)
#: Rows x non-zeros below which the Numba loop runs instead of MKL (its ctypes call and setup
#: cost a few microseconds: a classifier head at batch 1).
NUMBA_MAX_WORK = 1 << 14
#: Smallest row block per kernel-thread task: below it hand-offs cost more than they save.
MIN_TASK_ROWS = 32
#: Rows x non-zeros below which a product stays one task on the calling thread.
MIN_PARALLEL_WORK = 1 << 20
#: Index arrays are int32 (MKL's LP64 interface): larger weights stay dense.
MAX_NNZ = 2**31 - 1


class _Descr(ctypes.Structure):
    """``struct matrix_descr`` (passed by value)."""

    _fields_ = [("type", ctypes.c_int), ("mode", ctypes.c_int), ("diag", ctypes.c_int)]


class _Mkl:
    """The ctypes functions of MKL's inspector-executor sparse BLAS used here."""

    def __init__(self, mkl: Any):
        i, p, f = ctypes.c_int, ctypes.c_void_p, ctypes.c_float
        self.create = mkl.mkl_sparse_s_create_csr
        self.create.argtypes = [ctypes.POINTER(p), i, i, i, p, p, p, p]
        self.create.restype = i
        self.mm = mkl.mkl_sparse_s_mm
        self.mm.argtypes = [i, f, p, _Descr, i, p, i, i, f, p, i]
        self.mm.restype = i
        self.destroy = mkl.mkl_sparse_destroy
        self.destroy.argtypes = [p]
        self.destroy.restype = i
        self.descr = _Descr(_GENERAL, _FILL_FULL, _DIAG_NON_UNIT)


def _bindings() -> _Mkl | None:
    """MKL's sparse BLAS, or None: the Numba loop (no MKL, or ``TASKFLOW_SPARSE=numba``)."""
    if os.environ.get("TASKFLOW_SPARSE", "").lower() == "numba":
        return None
    # None with an MKL without the inspector-executor API (< 11.3)
    return blas.bindings("sparse", _Mkl)


def sparse_backend() -> str:
    """What multiplies by a CSR weight: ``"mkl"`` (oneMKL's sparse BLAS) or ``"numba"`` (a
    Numba loop: no MKL, ``TASKFLOW_BLAS=numpy`` or ``TASKFLOW_SPARSE=numba``). Either way
    ``sparse=1`` runs a real sparse product; whether it pays is measured per layer.

    Examples
    --------
    >>> sparse_backend() in ("mkl", "numba")
    True
    """
    return "numba" if _bindings() is None else "mkl"


def sparsity(w: np.ndarray) -> float:
    """The fraction of ``w``'s elements that are exactly zero (0.0 for an empty array).

    Examples
    --------
    >>> sparsity(np.array([[0.0, 1.5], [0.0, 0.0]], np.float32))
    0.75
    """
    return 1.0 - int(np.count_nonzero(w)) / w.size if w.size else 0.0


class PackedCSR:
    """A weight as CSR rows, one per output channel: ``(n, k)`` with ``indptr`` (n + 1,),
    ``indices`` (nnz,) int32 and float32 ``values``; on first MKL use its handle, destroyed
    when this object is (the arrays it points into live exactly as long)."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, k: int):
        self.indptr, self.indices, self.values = indptr, indices, values
        self.n, self.k = len(indptr) - 1, k
        self.nnz = len(values)
        self._handle: ctypes.c_void_p | None = None
        self._lock = threading.Lock()

    def handle(self, fns: _Mkl) -> ctypes.c_void_p:
        if self._handle is None:
            with self._lock:
                if self._handle is None:
                    h = ctypes.c_void_p()
                    status = fns.create(ctypes.byref(h), _INDEX_ZERO, self.n, self.k,
                                        self.indptr.ctypes.data, self.indptr[1:].ctypes.data,
                                        self.indices.ctypes.data, self.values.ctypes.data)
                    if status != 0:
                        raise RuntimeError(f"mkl_sparse_s_create_csr failed ({status})")
                    # not at exit: the process's memory goes anyway, and MKL may be gone
                    weakref.finalize(self, fns.destroy, h.value).atexit = False
                    self._handle = h
        return self._handle


def pack_csr(w_nk: np.ndarray) -> PackedCSR:
    """``w_nk`` (N output channels, K inputs) as float32 CSR rows for :func:`csr_matmul`.

    Examples
    --------
    >>> p = pack_csr(np.array([[0.0, 2.0, 0.0], [1.0, 0.0, 3.0]], np.float32))
    >>> p.indptr, p.indices
    (array([0, 1, 3], dtype=int32), array([1, 0, 2], dtype=int32))
    >>> p.values
    array([2., 1., 3.], dtype=float32)
    """
    w = np.asarray(w_nk, dtype=np.float32)
    if w.ndim != 2:
        raise ShapeError(f"pack_csr takes a 2-D (N, K) weight; got shape {w.shape}")
    rows, cols = np.nonzero(w)
    if len(rows) > MAX_NNZ:
        raise ShapeError(f"pack_csr: {len(rows)} non-zeros do not fit int32 indices")
    indptr = np.zeros(w.shape[0] + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=w.shape[0]), out=indptr[1:])
    return PackedCSR(indptr, cols.astype(np.int32), np.ascontiguousarray(w[rows, cols]),
                     w.shape[1])


def csr_matmul(a: np.ndarray, w: PackedCSR, out: np.ndarray) -> np.ndarray:
    """``out[...] = a @ W.T`` for the CSR rows ``W`` (N, K) of :func:`pack_csr`; returns ``out``.

    ``a`` (M, K) float32 of any strides; ``out`` (M, N) float32, a strided view if need be.
    One call on the calling thread, :func:`block_rows` rows of ``a`` at a time.

    Examples
    --------
    >>> w = pack_csr(np.array([[0.0, 2.0], [1.0, 0.0], [0.0, 0.0]], np.float32))
    >>> csr_matmul(np.float32([[1.0, 3.0]]), w, np.empty((1, 3), np.float32))
    array([[6., 1., 0.]], dtype=float32)
    """
    m, k = a.shape
    if k != w.k or out.shape != (m, w.n) or a.dtype != np.float32 or out.dtype != np.float32:
        raise ShapeError(f"csr_matmul: A {a.dtype} {a.shape} times a ({w.n}, {w.k}) CSR weight "
                         f"needs float32 operands and a ({m}, {w.n}) output; got {out.dtype} "
                         f"{out.shape}")
    if m == 0 or w.n == 0:
        return out
    if w.nnz == 0:
        out[...] = 0
        return out
    rows = block_rows(k, w.n)
    fns = _bindings()
    if fns is None or m * w.nnz < NUMBA_MAX_WORK:
        for r0 in range(0, m, rows):
            r1 = min(m, r0 + rows)
            xt = scratch("sparse-x", (k, r1 - r0), np.float32)
            _transpose(a[r0:r1], xt)
            _csr_rows(w.indptr, w.indices, w.values, xt, out[r0:r1])
        return out
    h = w.handle(fns)
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        mb = r1 - r0
        xt = scratch("sparse-x", (k, mb), np.float32)
        yt = scratch("sparse-y", (w.n, mb), np.float32)
        _transpose(a[r0:r1], xt)
        status = fns.mm(_NON_TRANSPOSE, 1.0, h, fns.descr, _ROW_MAJOR, xt.ctypes.data, mb, mb,
                        0.0, yt.ctypes.data, mb)
        if status != 0:
            raise RuntimeError(f"mkl_sparse_s_mm failed ({status})")
        _transpose(yt, out[r0:r1])
    return out


def block_rows(k: int, n: int) -> int:
    """Rows of X per block of :func:`csr_matmul` for a (K -> N) product (a multiple of 8)."""
    lo, hi = BLOCK_ROWS
    return max(lo, min(hi, BLOCK_ELEMENTS // max(1, k + n))) // 8 * 8


def sparse_matmul(a: np.ndarray, w: np.ndarray, trans_w: bool = False) -> np.ndarray:
    """``a @ w'`` (``w' = w.T`` when ``trans_w``) for float32 2-D ``a`` and weight ``w`` with
    the CSR product, row blocks of ``a`` over the kernel threads.

    ``w`` is converted once (cached against the array itself: pass the weight, not a view
    made per call).

    Examples
    --------
    >>> w = np.float32([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    >>> sparse_matmul(np.float32([[1.0, 1.0, 1.0]]), w)
    array([[2., 1.]], dtype=float32)
    """
    csr = packed(w, ("csr", bool(trans_w)), lambda b: pack_csr(b if trans_w else b.T))
    m = a.shape[0]
    y = np.empty((m, csr.n), np.float32)
    if m * csr.nnz < MIN_PARALLEL_WORK or m < 2 * MIN_TASK_ROWS or threads() == 1:
        return csr_matmul(a, csr, y)
    parts = max(1, min(m // MIN_TASK_ROWS, TASKS_PER_THREAD * threads()))
    step = -(-m // parts)
    run_tasks(lambda i: csr_matmul(a[i * step:(i + 1) * step], csr, y[i * step:(i + 1) * step]),
              -(-m // step))
    return y


# --- Numba loops ----------------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _transpose(src, dst):
    """dst[j, i] = src[i, j], in 8 x 8 tiles (both sides then touch whole cache lines)."""
    r, c = src.shape
    for i0 in range(0, r, 8):
        i1 = min(r, i0 + 8)
        for j0 in range(0, c, 8):
            j1 = min(c, j0 + 8)
            for j in range(j0, j1):
                for i in range(i0, i1):
                    dst[j, i] = src[i, j]


@njit(cache=True, nogil=True, error_model="numpy")
def _csr_rows(indptr, indices, values, xt, out):
    """out[:, n] = sum over row n's non-zeros (k, v) of v * xt[k, :]: one output channel at a
    time, vectorised along the block's rows (xt: the block of X transposed, (K, rows))."""
    rows = xt.shape[1]
    acc = np.empty(rows, np.float32)
    for n in range(len(indptr) - 1):
        acc[:] = 0
        for j in range(indptr[n], indptr[n + 1]):
            v = values[j]
            x = xt[indices[j]]
            for i in range(rows):
                acc[i] += v * x[i]
        for i in range(rows):
            out[i, n] = acc[i]
