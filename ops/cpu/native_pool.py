"""Kernel threads that take float32 GEMM row blocks without the GIL.

:func:`.common.run_tasks` hands a call's tasks to Python helper threads. Each helper has to
take the GIL to start its task, and the caller holds it until its own task's Numba call
releases it: on a 2-core VM that hand-off (a futex wake of the helper, then the GIL's) made
every split GEMM of a transformer wait ~0.1 ms for its second half. A 512 x 128 x 384 product
takes ~0.8 ms on two threads, so that was 12% of every projection of GPT at batch 8 x 64.

Here the helpers wait in Numba code, without the GIL, polling a shared task counter (and
pausing between polls) for up to :data:`SPIN_S` after their last task, as ONNX Runtime's and
OpenMP's threads do; only then do they go back to sleep in Python. A job is one GEMM with its
epilogue, ``y = act(a @ b + bias)``, in row blocks: its operands are passed as addresses in a
shared int64 array, and both the caller and the helpers claim blocks with an atomic
fetch-and-add, run MKL's sgemm through its function pointer and then the epilogue on the
rows, and count the blocks done. The caller takes blocks too and returns when every block is
done, so a helper that is late (or asleep) only means the caller does more of the work.

Safety: a block is only ever claimed once (the fetch-and-add), the caller does not return
while a claimed block runs, and the next job's operands are written before its counter is
reset, so a helper that claims late reads the job it claimed. One job at a time: a second
caller (another Dask task thread) takes the ordinary pool instead of waiting.

``TASKFLOW_NATIVE_POOL=0`` (read at import) turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import time

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from . import blas, common, lowp
from .blas import _NO_TRANS, _ROW_MAJOR, _layout, gemm_pointer
from .epilogue import NONE, epilogue_rows
from .lowp import PACKED
from .lowp import _to_bf16 as lowp_to_bf16
from .pointwise_wide import pointwise_wide_rows

#: How long an idle helper keeps polling (without the GIL) before it sleeps.
SPIN_S = 2e-3
#: How long a caller whose own tasks are done polls for a helper's last one before it blocks.
JOIN_SPIN_S = 2e-4
ENABLED = os.environ.get("TASKFLOW_NATIVE_POOL", "1") != "0"

# the control words, a cache line apart (no false sharing between the two counters)
_NEXT, _DONE, _TASKS, _HELPERS = 0, 8, 16, 24
#: The task counter between jobs: a helper's claim then fails whatever the next job's size.
_CLOSED = 1 << 62
# job fields (int64)
(_A, _B, _Y, _BIAS, _M, _N, _K, _TA, _LDA, _TB, _LDB, _LDC, _STEP, _CODE, _NBIAS, _KIND, _BITS,
 _JOB_FIELDS) = range(18)
#: job kinds: a float32 GEMM (MKL's sgemm), or A rounded to bfloat16 row block by row block
#: into the buffer at _BITS times a packed bf16 weight (MKL's cblas_gemm_bf16bf16f32_compute)
#: or :func:`.pointwise_wide.pointwise_wide_rows` on A (C-contiguous) and the weight it packed
#: (at _B), bias and activation in its own registers
_F32, _BF16, _WIDE = 0, 1, 2


@intrinsic
def _atomic_add(typingctx, arr, i, value):
    """``arr[i] += value`` atomically (sequentially consistent); returns the old value."""
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.gep(data, [args[1]], inbounds=True)
        return builder.atomic_rmw("add", ptr, args[2], "seq_cst")
    return types.int64(arr, types.intp, types.int64), codegen


@intrinsic
def _atomic_load(typingctx, arr, i):
    """``arr[i]`` read with acquire ordering, never hoisted out of a polling loop."""
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.gep(data, [args[1]], inbounds=True)
        return builder.load_atomic(ptr, ordering="acquire", align=8)
    return types.int64(arr, types.intp), codegen


@intrinsic
def _atomic_store(typingctx, arr, i, value):
    """``arr[i] = value`` with release ordering (earlier writes are seen first)."""
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.gep(data, [args[1]], inbounds=True)
        builder.store_atomic(args[2], ptr, ordering="release", align=8)
        return context.get_dummy_value()
    return types.void(arr, types.intp, types.int64), codegen


@intrinsic
def _pause_clock(typingctx):
    """A ``pause`` (a polling loop's courtesy to the core's other thread), then the TSC."""
    def codegen(context, builder, sig, args):
        pause = builder.module.declare_intrinsic(
            "llvm.x86.sse2.pause", fnty=ir.FunctionType(ir.VoidType(), []))
        builder.call(pause, [])
        clock = builder.module.declare_intrinsic(
            "llvm.readcyclecounter", fnty=ir.FunctionType(ir.IntType(64), []))
        return builder.call(clock, [])
    return types.int64(), codegen


@intrinsic
def _f32_at(typingctx, address):
    """The int64 ``address`` as a float32 pointer (for :func:`numba.carray`)."""
    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], ir.PointerType(ir.FloatType()))
    return types.CPointer(types.float32)(types.int64), codegen


@intrinsic
def _u32_at(typingctx, address):
    """The int64 ``address`` as a uint32 pointer (float32 bits, for :func:`numba.carray`)."""
    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], ir.PointerType(ir.IntType(32)))
    return types.CPointer(types.uint32)(types.int64), codegen


@intrinsic
def _u16_at(typingctx, address):
    """The int64 ``address`` as a uint16 pointer (bfloat16 bits, for :func:`numba.carray`)."""
    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], ir.PointerType(ir.IntType(16)))
    return types.CPointer(types.uint16)(types.int64), codegen


@njit(cache=True, inline="always")
def _run_block(job, p, sgemm, bf16, no_z, i):
    """Rows ``i * step ..`` of the job: the GEMM of its kind, then the epilogue on them."""
    m, n, step = job[_M], job[_N], job[_STEP]
    lo = i * step
    hi = min(m, lo + step)
    ldc = job[_LDC]
    y = job[_Y] + lo * ldc * 4
    if job[_KIND] == _WIDE:  # the epilogue is the kernel's own
        k = job[_K]
        pointwise_wide_rows(numba.carray(_f32_at(job[_A]), (m, k)),
                            numba.carray(_f32_at(job[_B]), (k * n,)),
                            numba.carray(_f32_at(job[_BIAS]), (n,)),
                            numba.carray(_f32_at(job[_BIAS]), (0, n)),  # no residual
                            numba.carray(_f32_at(job[_Y]), (m, ldc)), 0, n, job[_CODE],
                            np.float32(p[0]), np.float32(p[1]), np.float32(1), lo, hi)
        return
    if job[_KIND] == _BF16:  # A C-contiguous (M, K), the bits buffer too
        k = job[_K]
        bits = job[_BITS] + lo * k * 2
        lowp_to_bf16(numba.carray(_u32_at(job[_A] + lo * k * 4), (hi - lo, k)),
                     numba.carray(_u16_at(bits), (hi - lo, k)))
        bf16(_ROW_MAJOR, _NO_TRANS, PACKED, hi - lo, n, k, np.float32(1.0), bits, k, job[_B],
             n, np.float32(0.0), y, ldc)
    else:
        a = job[_A] + (lo * job[_LDA] if job[_TA] == _NO_TRANS else lo) * 4
        sgemm(_ROW_MAJOR, job[_TA], job[_TB], hi - lo, n, job[_K], 1.0, a, job[_LDA], job[_B],
              job[_LDB], 0.0, y, ldc)
    if job[_CODE] != NONE or job[_NBIAS] > 0:
        # the rows as a C-contiguous (rows, ldc) array, the epilogue on its first n columns
        # (a C array keeps the epilogue's loops vectorised; an [:, :n] view did not)
        epilogue_rows(numba.carray(_f32_at(y), (hi - lo, ldc)), 0, n,
                      numba.carray(_f32_at(job[_BIAS]), (job[_NBIAS],)), no_z, job[_CODE],
                      np.float32(p[0]), np.float32(p[1]), np.float32(1))


@njit(cache=True, nogil=True, error_model="numpy")
def _take_blocks(ctl, job, p, sgemm, bf16, no_z) -> int:
    """Claim and run blocks until none is left; returns how many this thread ran."""
    ran = 0
    while True:
        i = _atomic_add(ctl, _NEXT, 1)
        if i >= _atomic_load(ctl, _TASKS):
            return ran
        _run_block(job, p, sgemm, bf16, no_z, i)
        _atomic_add(ctl, _DONE, 1)
        ran += 1


@njit(cache=True, nogil=True)
def _spin_until(done, ticks) -> None:
    """Poll until ``done[0]`` is set or ``ticks`` TSC ticks have passed."""
    end = _pause_clock() + ticks
    while _atomic_load(done, 0) == 0:
        if _pause_clock() > end:
            return


@njit(cache=True, nogil=True)
def _wait_done(ctl, tasks) -> None:
    """Poll until ``tasks`` blocks are done (blocks that helpers claimed and are running)."""
    while _atomic_load(ctl, _DONE) < tasks:
        _pause_clock()


@njit(cache=True, nogil=True, error_model="numpy")
def _helper(ctl, job, p, sgemm, bf16, no_z, index, ticks, posted, seen) -> None:
    """A helper's polling: run blocks whenever there are some (and the job wants this
    helper); return when a Python job is posted (``posted[0] != seen``) or after ``ticks``
    TSC ticks with nothing."""
    end = _pause_clock() + ticks
    while _atomic_load(posted, 0) == seen:
        if _atomic_load(ctl, _NEXT) < _atomic_load(ctl, _TASKS) \
                and index < _atomic_load(ctl, _HELPERS):
            _take_blocks(ctl, job, p, sgemm, bf16, no_z)
            end = _pause_clock() + ticks
        elif _pause_clock() > end:
            return


@functools.lru_cache(maxsize=1)
def _tsc_per_second() -> float:
    @njit
    def clock():
        return _pause_clock()
    c0, t0 = clock(), time.perf_counter()
    time.sleep(0.01)
    return (clock() - c0) / (time.perf_counter() - t0)


class NativePool:
    """The one job the kernel threads share (see the module docstring); the threads are
    :mod:`.common`'s pool, whose :attr:`~.common._Pool.poll` this installs."""

    def __init__(self, sgemm) -> None:
        self.sgemm = sgemm
        # MKL's bf16 GEMM, whatever TASKFLOW_LOWP says (lowp decides per call whether to use
        # it); an MKL without it gets a stand-in of the same type that no job ever calls
        fns = blas.bindings("lowp", lowp._Mkl)
        self.has_bf16 = fns is not None
        self.bf16 = fns.bf16_ptr if fns is not None else ctypes.CFUNCTYPE(
            None, *lowp.BF16_COMPUTE_ARGS)(ctypes.cast(sgemm, ctypes.c_void_p).value)
        self.ctl = np.zeros(32, np.int64)
        self.ctl[_NEXT] = _CLOSED
        self.job = np.zeros(_JOB_FIELDS, np.int64)
        self.params = np.zeros(2, np.float64)
        self.no_z = np.zeros((0, 0), np.float32)
        self.busy = threading.Lock()  # one job at a time
        self.ticks = int(SPIN_S * _tsc_per_second())
        #: Blocks of the last job that its caller ran (the rest: the helpers)
        self.caller_blocks = 0

    def install(self, threads) -> None:
        """Make ``threads`` (a :class:`.common._Pool`) poll for this pool's jobs."""
        threads.pending = self.pending
        threads.poll = self.poll

    def pending(self) -> bool:
        return bool(self.ctl[_NEXT] < self.ctl[_TASKS])

    def poll(self, index: int, seen: int) -> None:
        _helper(self.ctl, self.job, self.params, self.sgemm, self.bf16, self.no_z, index,
                self.ticks, common._POOL.posted, seen)

    def gemm(self, a: np.ndarray, b: np.ndarray, y: np.ndarray, bias: np.ndarray | None,
             act: tuple[int, float, float], step: int, helpers: int) -> bool:
        """``y = act(a @ b + bias)`` in blocks of ``step`` rows over this thread and up to
        ``helpers`` helpers; False (nothing done) if another job is running or MKL cannot
        read the operands (float32, y's rows contiguous)."""
        la, lb = _layout(a), _layout(b)
        if la is None or lb is None or y.strides[1] != 4 or y.strides[0] % 4 \
                or (bias is not None and not bias.flags.c_contiguous):
            return False
        return self._run((a.ctypes.data, b.ctypes.data, y.ctypes.data,
                          0 if bias is None else bias.ctypes.data, y.shape[0], y.shape[1],
                          a.shape[1], la[0], la[1], lb[0], lb[1], y.strides[0] // 4, step,
                          act[0], 0 if bias is None else bias.shape[0], _F32, 0),
                         act, step, helpers)

    def wide(self, a: np.ndarray, wp: np.ndarray, y: np.ndarray, bias: np.ndarray,
             act: tuple[int, float, float], step: int, helpers: int) -> bool:
        """``y = act(a @ W + bias)`` by :func:`.pointwise_wide.pointwise_wide_rows` in blocks
        of ``step`` rows, as :meth:`gemm` runs its GEMM: ``a`` C-contiguous float32 (M, K),
        ``wp`` the weight as :func:`.pointwise_wide.pack` lays it out, ``bias`` (N,) float32,
        ``y`` (M, N) float32 C-contiguous; False (nothing done) if another job is running."""
        m, n = y.shape
        if not (a.flags.c_contiguous and y.flags.c_contiguous and bias.flags.c_contiguous
                and wp.flags.c_contiguous and a.dtype == wp.dtype == bias.dtype == y.dtype
                == np.float32 and wp.size == a.shape[1] * n and bias.shape == (n,)):
            return False
        return self._run((a.ctypes.data, wp.ctypes.data, y.ctypes.data, bias.ctypes.data, m, n,
                          a.shape[1], _NO_TRANS, a.shape[1], _NO_TRANS, n, n, step, act[0], n,
                          _WIDE, 0), act, step, helpers)

    def gemm_bf16(self, a: np.ndarray, bits: np.ndarray, b: np.ndarray, y: np.ndarray,
                  bias: np.ndarray | None, act: tuple[int, float, float], step: int,
                  helpers: int) -> bool:
        """``y = act(bf16(a) @ B + bias)`` as :meth:`gemm` does it: ``a`` C-contiguous
        float32 (M, K), ``bits`` a uint16 (M, K) buffer each block rounds its rows of ``a``
        into, ``b`` MKL's packed bf16 weight (:meth:`.lowp.PackedBF16.mkl`, N columns =
        ``y.shape[1]``); False (nothing done) as in :meth:`gemm`, or without MKL's bf16."""
        m, n = y.shape
        if not self.has_bf16 or not a.flags.c_contiguous or a.dtype != np.float32 \
                or bits.shape != a.shape or not bits.flags.c_contiguous \
                or bits.dtype != np.uint16 or y.strides[1] != 4 or y.strides[0] % 4 \
                or y.dtype != np.float32 or (bias is not None and not bias.flags.c_contiguous):
            return False
        return self._run((a.ctypes.data, b.ctypes.data, y.ctypes.data,
                          0 if bias is None else bias.ctypes.data, m, n, a.shape[1],
                          _NO_TRANS, a.shape[1], PACKED, n, y.strides[0] // 4, step, act[0],
                          0 if bias is None else bias.shape[0], _BF16, bits.ctypes.data),
                         act, step, helpers)

    def _run(self, fields: tuple, act: tuple[int, float, float], step: int,
             helpers: int) -> bool:
        """Post the job ``fields`` (the _A .. _BITS words), take blocks, wait for the rest."""
        if not self.busy.acquire(blocking=False):
            return False
        try:
            tasks = -(-fields[_M] // step)
            job, ctl = self.job, self.ctl
            job[:] = fields
            self.params[:] = act[1], act[2]
            threads = common._POOL
            if threads.poll is None:
                self.install(threads)
            threads.grow(helpers)
            ctl[_DONE] = 0
            ctl[_HELPERS] = helpers
            ctl[_TASKS] = tasks
            _store_next(ctl, 0)  # the counter last: a helper that claims reads this job
            threads.notify()
            self.caller_blocks = _take_blocks(ctl, job, self.params, self.sgemm, self.bf16,
                                              self.no_z)
            _wait_done(ctl, tasks)  # every block claimed (by now) and done
            _store_next(ctl, _CLOSED)
            return True
        finally:
            self.busy.release()


@njit(cache=True, nogil=True)
def _store_next(ctl, value) -> None:
    """Open a job's blocks (0) or close them (_CLOSED), after every earlier write."""
    _atomic_store(ctl, _NEXT, value)


_GROW = threading.Lock()
_POOL: list[NativePool] = []


def pool() -> NativePool | None:
    """The process's native pool (made on first use), or None when it is off or MKL is not
    loaded."""
    if not ENABLED:
        return None
    if not _POOL:
        sgemm = gemm_pointer(np.float32)
        if sgemm is None:
            return None
        with _GROW:
            if not _POOL:
                _POOL.append(NativePool(sgemm))
    return _POOL[0]


def _join_spin(done: np.ndarray) -> None:
    """:func:`.common.set_join_spin`'s function: poll ``done[0]`` (a Python job's end)
    without the GIL for up to :data:`JOIN_SPIN_S`."""
    if not _JOIN_TICKS:
        _JOIN_TICKS.append(int(JOIN_SPIN_S * _tsc_per_second()))
    _spin_until(done, _JOIN_TICKS[0])


_JOIN_TICKS: list[int] = []
if ENABLED:
    common.set_join_spin(_join_spin)


def warm() -> None:
    """Compile (or load) this module's Numba functions: a small job on the caller alone,
    and one helper poll that returns at once."""
    shared = pool()
    if shared is None:
        return
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((8, 4), dtype=np.float32), np.ones((4, 8), np.float32)
    for bias, act in ((None, (NONE, 0.0, 0.0)), (np.ones(8, np.float32), (1, 0.0, 0.0))):
        for y in (np.empty((8, 8), np.float32), np.empty((8, 9), np.float32)[:, :8]):
            shared.gemm(a, b, y, bias, act, 4, 0)
    _spin_until(np.ones(1, np.int64), 0)
    if shared.has_bf16:
        w = lowp.pack_bf16(b).mkl(blas.bindings("lowp", lowp._Mkl))
        shared.gemm_bf16(a, np.empty((8, 4), np.uint16), w, np.empty((8, 8), np.float32),
                         None, (NONE, 0.0, 0.0), 4, 0)
    _helper(shared.ctl, shared.job, shared.params, shared.sgemm, shared.bf16, shared.no_z, 0,
            0, np.ones(1, np.int64), 0)


def _new_in_child() -> None:  # a forked child has none of the parent's helper threads
    _POOL.clear()


os.register_at_fork(after_in_child=_new_in_child)
