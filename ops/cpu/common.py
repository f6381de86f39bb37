"""Shared machinery of the Numba ``cpu`` kernels: layout, threads, scratch buffers, weights.

Layout. Convolution-family kernels compute in NHWC ("channels last") and return their output
as the logical NCHW array ONNX expects: ``y_nhwc.transpose(0, 3, 1, 2)``, a strided *view*.
Values are the reference's, only the memory order differs, so every other kernel and every
numpy reference still works on it, and the next NHWC kernel finds its input already
channels-last (:func:`as_nhwc` is then free). The layout is thus converted once, at the first
convolution of a network (and again only after an op without an NHWC kernel returns NCHW),
never per layer. Why NHWC: a convolution becomes one GEMM over all pixels of the batch,
``(N*H*W, K) @ (K, M)``, instead of one GEMM per sample with only H*W columns; on ResNet-50's
7x7 and 14x14 layers at batch 32 that is 2-5x faster in OpenBLAS on this machine, and the same
or better elsewhere. Elementwise tails (bias, activation, residual) then run along contiguous
channel rows, and pools vectorise over channels.

Threads. Every kernel splits its work into tasks (slices of output rows) that the calling
thread and ``kernel threads - 1`` pool threads take from a shared counter, with BLAS
single-threaded meanwhile: the MLAS way. Neither OpenBLAS's threads nor Numba's ``prange``
are used. Both join their threads at a barrier per call, and on this shared 2-core machine the
second thread is often descheduled: a 170x48x192 GEMM took 3.7 ms with 2 OpenBLAS threads
against 39 us with one. With a shared counter a late thread simply takes fewer tasks (the
caller may do them all), and a small op runs as one task on the caller.
"""

from __future__ import annotations

import itertools
import math
import os
import queue
import sys
import threading
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numba
import numpy as np

#: dtypes the Numba kernels compile for; other dtypes run the numpy reference.
FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: Smallest task of a memory-bound kernel, in elements (~100 us of streaming on one core): a
#: pool hand-off costs ~10-20 us, more when the helper thread has to wait for a core.
MIN_TASK_ELEMENTS = 1 << 18
#: Smallest task of a GEMM-based kernel split so that every kernel thread gets one (FLOPs):
#: ~0.2 ms of GEMM, well above a pool hand-off (and the cost of a helper thread that is
#: descheduled).
MIN_TASK_FLOPS = 20_000_000
#: Tasks per kernel thread for memory-bound kernels: enough to rebalance around a thread that
#: is descheduled for a while, few enough that hand-offs stay negligible.
TASKS_PER_THREAD = 4


def fast_dtype(*arrays: np.ndarray | None) -> bool:
    """True when every given array is float32 (or every one float64): the compiled types."""
    dts = {a.dtype for a in arrays if a is not None}
    return len(dts) == 1 and next(iter(dts)) in FAST_DTYPES


def is_channels_last(x: np.ndarray) -> bool:
    """A 4-D logical NCHW array whose memory is NHWC C-contiguous."""
    return x.ndim == 4 and x.transpose(0, 2, 3, 1).flags.c_contiguous


def as_nhwc(x: np.ndarray) -> np.ndarray:
    """``x`` (logical N, C, H, W) as a C-contiguous (N, H, W, C) array; a view if it is one.

    An NCHW ``x`` (the network's input, or what an op without an NHWC kernel returned) is
    transposed by :func:`_nchw_to_nhwc`, one image row at a time over the kernel threads:
    about 3x faster than numpy's strided copy for the 3-channel input of a CNN.
    """
    t = x.transpose(0, 2, 3, 1)
    if t.flags.c_contiguous:
        return t
    if not x.flags.c_contiguous or x.dtype not in FAST_DTYPES:
        return np.ascontiguousarray(t)
    n, c, h, w = x.shape
    y = new_output((n, h, w, c), x.dtype)
    run_ranges(lambda lo, hi: _nchw_to_nhwc(x, y, lo, hi), n * h,
               max(1, MIN_TASK_ELEMENTS // max(1, w * c)))
    return y


@numba.njit(cache=True, nogil=True)
def _nchw_to_nhwc(x, y, lo, hi):
    """y[n, i, :, :] = x[n, :, i, :].T for image rows t = (n, i) in [lo, hi)."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    for t in range(lo, hi):
        n = t // h
        i = t % h
        for k in range(c):
            src = x[n, k, i]
            for j in range(w):
                y[n, i, j, k] = src[j]


def nchw_view(y: np.ndarray) -> np.ndarray:
    """The logical NCHW view of an NHWC array (what a channels-last kernel returns)."""
    return y.transpose(0, 3, 1, 2)


def vector(v: np.ndarray, dtype: Any = None) -> np.ndarray:
    """A small parameter (bias, scale) as a fresh, writable, contiguous 1-D array.

    Initializers are often read-only (``numpy_helper.to_array`` wraps the protobuf's bytes), and
    Numba compiles a separate specialisation for read-only arrays: copying a vector is cheaper
    than compiling every kernel twice.
    """
    return np.array(v, dtype=dtype if dtype is not None else v.dtype).reshape(-1)


# --- per-thread scratch buffers ---------------------------------------------------------------
_scratch = threading.local()


def scratch(key: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """A reusable uninitialised buffer of ``shape``, private to the calling thread.

    Each thread (a kernel pool thread, a Dask worker thread, the caller of ``Model.run``)
    keeps one growing buffer per ``key``; im2col columns and Winograd tiles are written there
    instead of into a fresh allocation (and fresh page faults) per call.
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    pool = getattr(_scratch, "pool", None)
    if pool is None:
        pool = _scratch.pool = {}
    buf = pool.get(key)
    if buf is None or buf.size < size:
        buf = pool[key] = np.empty(max(size, 64), np.uint8)
    return buf[:size].view(dtype).reshape(shape)


# --- recycled outputs -------------------------------------------------------------------------
#: Outputs at least this big come from :func:`new_output`'s pool.
RECYCLE_MIN_BYTES = 1 << 20
#: Most memory the pool keeps (free and in use); beyond it outputs are plain allocations.
#: Free buffers are memory a Dask worker's limit counts too, hence a modest default (ResNet-50
#: at batch 32 cycles through ~300 MB); ``TASKFLOW_RECYCLE_MB`` overrides it, 0 turns it off.
RECYCLE_MAX_BYTES = int(float(os.environ.get("TASKFLOW_RECYCLE_MB", 512)) * (1 << 20))
_RECYCLED: list[np.ndarray] = []
_RECYCLE_LOCK = threading.Lock()
ENABLE_RECYCLING = RECYCLE_MAX_BYTES > 0


def new_output(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array for a kernel's output, reusing the memory of a dead one.

    A fresh large array is mmapped memory whose every page faults on first write (~60 us per
    MiB, serialised between threads): at batch 32, ResNet-50's layers write 1.45 GB of fresh
    outputs per run. The pool keeps the buffers of large outputs and hands one out again once
    nothing references it any more (its reference count, read under a lock, is the pool's
    own), like ONNX Runtime's arena, but without any change to the executor: liveness is
    Python's own.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < RECYCLE_MIN_BYTES or not ENABLE_RECYCLING:
        return np.empty(shape, dtype)
    with _RECYCLE_LOCK:
        best = None
        for k in range(len(_RECYCLED)):
            buf = _RECYCLED[k]
            # free: referenced only by the list, ``buf`` and getrefcount's own argument
            if nbytes <= buf.nbytes <= 2 * nbytes and sys.getrefcount(buf) == 3 and (
                    best is None or buf.nbytes < _RECYCLED[best].nbytes):
                best = k
            del buf
        if best is None:
            while sum(b.nbytes for b in _RECYCLED) + nbytes > RECYCLE_MAX_BYTES:
                # over the cap: drop the oldest free buffer (list + argument: 2 references)
                oldest_free = next((k for k in range(len(_RECYCLED))
                                    if sys.getrefcount(_RECYCLED[k]) == 2), None)
                if oldest_free is None:
                    return np.empty(shape, dtype)
                del _RECYCLED[oldest_free]
            _RECYCLED.append(np.empty(nbytes, np.uint8))
            best = len(_RECYCLED) - 1
        return _RECYCLED[best][:nbytes].view(dtype).reshape(shape)


def clear_recycled() -> None:
    """Let go of the pool's free buffers (those still in use stay alive with their arrays)."""
    with _RECYCLE_LOCK:
        _RECYCLED.clear()


# --- outputs written into a Concat's buffer ---------------------------------------------------
class ConcatBuffer:
    """The NHWC output of one Concat (along channels) while its inputs are being computed.

    An interpreter that planned the Concat's producers (:func:`taskflow.ir.placement.concat_slots`)
    makes one per run and hands each producer its channel offset through
    :func:`output_slot`; a convolution kernel then writes its output straight into
    channels ``offset:offset + C`` of ``array`` (:func:`claim_output`), and the Concat kernel finds
    its inputs already adjacent in one buffer and returns it without copying. Allocated by the
    first producer that runs, when the batch and spatial size are known.
    """

    def __init__(self, total: int):
        self.total = total
        self.array: np.ndarray | None = None

    def claim(self, offset: int, shape: tuple[int, int, int, int],
              dtype: Any) -> tuple[np.ndarray, int] | None:
        n, h, w, c = shape
        if self.array is None:
            self.array = new_output((n, h, w, self.total), dtype)
        a = self.array
        if a.shape[:3] != (n, h, w) or a.dtype != np.dtype(dtype) or offset + c > self.total:
            return None  # not what was planned: the producer writes a fresh array instead
        return a, offset


_slot = threading.local()


@contextmanager
def output_slot(buffer: ConcatBuffer, offset: int) -> Iterator[None]:
    """Offer ``buffer`` at channel ``offset`` to the kernel called inside this block (which may
    ignore it: the numpy reference, or a shape the kernel does not handle)."""
    _slot.value = (buffer, offset)
    try:
        yield
    finally:
        _slot.value = None


def claim_output(shape: tuple[int, int, int, int],
                 dtype: Any) -> tuple[np.ndarray, int] | None:
    """``(buffer, c0)``: the offered Concat buffer (C-contiguous NHWC) and the channel where an
    output of ``shape`` (N, H, W, C) goes, or None when none is offered or it does not fit.
    Kernels write channels ``c0:c0 + C`` through the whole buffer, so their loops keep
    contiguous rows (a strided slice would stop Numba vectorising them). An offer is taken at
    most once."""
    offer = getattr(_slot, "value", None)
    if offer is None:
        return None
    _slot.value = None
    buffer, offset = offer
    return buffer.claim(offset, shape, dtype)


def output_buffer(shape: tuple[int, int, int, int], dtype: Any) -> tuple[np.ndarray, int]:
    """``(buffer, c0)`` for a channels-last kernel's output of ``shape`` (N, H, W, C): the
    offered Concat buffer and the channel where this output starts, else a fresh
    :func:`new_output` and 0. The kernel writes channels ``c0:c0 + C`` of ``buffer``."""
    placed = claim_output(shape, dtype)
    return placed if placed is not None else (new_output(shape, dtype), 0)


def adjacent_channels(inputs: Sequence[np.ndarray]) -> np.ndarray | None:
    """The channel concatenation of ``inputs`` (logical NCHW, channels-last memory) as a view,
    if they already lie side by side in one NHWC buffer, in order; else None.

    Checked from the arrays alone: equal dtypes, shapes but for channels, and strides of a
    buffer with exactly their total channel count per pixel, each starting where the previous
    one's channels end. The view then covers exactly their elements.
    """
    first = inputs[0]
    if first.ndim != 4 or any(x.ndim != 4 or x.dtype != first.dtype for x in inputs):
        return None
    n, _, h, w = first.shape
    total = sum(x.shape[1] for x in inputs)
    it = first.itemsize
    strides = (h * w * total * it, it, w * total * it, total * it)
    start = first.__array_interface__["data"][0]
    root = _root(first)
    offset = 0
    for x in inputs:
        if x.shape[0] != n or x.shape[2:] != (h, w) or x.strides != strides or \
                x.__array_interface__["data"][0] != start + offset * it or _root(x) is not root:
            return None
        offset += x.shape[1]
    return np.lib.stride_tricks.as_strided(first, (n, total, h, w), strides)


def _root(x: np.ndarray) -> Any:
    """The object owning ``x``'s memory (the end of its chain of views)."""
    while isinstance(x.base, np.ndarray):
        x = x.base
    return x.base if x.base is not None else x


# --- packed weights ---------------------------------------------------------------------------
_PACKED: dict[tuple, tuple[weakref.ref, Any]] = {}
_PACKED_LOCK = threading.Lock()


def packed(weight: np.ndarray, how: Hashable, pack: Callable[[np.ndarray], Any]) -> Any:
    """``pack(weight)``, computed once per weight array and layout ``how``.

    Weights are initializers that live as long as the model and are never written, so the
    re-laid-out copy is cached against the array's identity (held by a weak reference: a freed
    weight's entry is dropped, and a new array at the same address never matches).
    """
    key = (id(weight), weight.__array_interface__["data"][0], weight.shape, weight.strides,
           weight.dtype.str, how)
    hit = _PACKED.get(key)
    if hit is not None and hit[0]() is weight:
        return hit[1]
    value = pack(weight)
    try:
        ref = weakref.ref(weight, lambda _r, k=key: _PACKED.pop(k, None))
    except TypeError:  # not weak-referenceable: do not cache
        return value
    with _PACKED_LOCK:
        _PACKED[key] = (ref, value)
    return value


#: Arrays registered by :func:`mark_constant`: id -> weak reference.
_CONSTANTS: dict[int, weakref.ref] = {}


def mark_constant(arrays: Iterable[Any]) -> None:
    """Register ``arrays`` (a model's initializers: the executor's plan does this) as
    constants, so kernels that meet an operand which may or may not be a weight (MatMul's B)
    can tell, and pack it once (:func:`packed`). Non-numpy values are ignored."""
    with _PACKED_LOCK:
        for a in arrays:
            if isinstance(a, np.ndarray):
                _CONSTANTS[id(a)] = weakref.ref(a, _forget(id(a)))


def _forget(key: int) -> Callable[[Any], None]:
    """The weak reference's callback: drop the entry when its array dies."""
    return lambda _ref: _CONSTANTS.pop(key, None)


def is_constant(a: Any) -> bool:
    """Whether ``a`` itself (not a view of it) was registered by :func:`mark_constant`."""
    ref = _CONSTANTS.get(id(a))
    return ref is not None and ref() is a


# --- kernel threads ---------------------------------------------------------------------------
_POOL_LOCK = threading.Lock()
_BLAS_LOCK = threading.Lock()
_blas: dict[str, Any] = {"users": 0, "saved": []}


def threads() -> int:
    """Kernel threads for the calling thread: Numba's setting, which
    :func:`taskflow.dask.threads.apply_kernel_threads` (and the Dask worker plugin) set."""
    return numba.get_num_threads()


def _blas_libs() -> list[tuple[Callable[[], int], Callable[[int], Any]]]:
    """(get, set) of the thread count of every BLAS library numpy has loaded.

    For OpenBLAS's own (pthreads) thread pool the setter is ``openblas_set_num_threads``
    itself, not threadpoolctl's ``set_num_threads``: threadpoolctl (>= 3.6) lets only the
    first Python thread that limited OpenBLAS change it later, and silently ignores the
    others. Kernels run on whatever thread calls them (a Dask worker's task threads, while its
    event-loop thread applied the limits), so through threadpoolctl they left OpenBLAS at its
    full thread count inside our own parallel tasks: 2 x 2 threads on 2 cores, and ResNet-50
    ran 1.5x slower on a Dask worker than in process.
    """
    if "libs" not in _blas:
        from threadpoolctl import ThreadpoolController

        libs = []
        for lib in ThreadpoolController().select(user_api="blas").lib_controllers:
            setter = None
            if lib.internal_api == "openblas" and getattr(lib, "threading_layer", "") != "openmp":
                getter = getattr(lib, "_get_symbol", lambda name: None)
                setter = getter("openblas_set_num_threads")
            libs.append((lib.get_num_threads, setter or lib.set_num_threads))
        _blas["libs"] = libs
    return _blas["libs"]


def blas_threads() -> list[int]:
    """The thread count of each loaded BLAS library."""
    return [get() for get, _ in _blas_libs()]


def set_blas_threads(counts: int | Sequence[int]) -> None:
    """Set every loaded BLAS library's thread count (one count, or one per library as
    :func:`blas_threads` returns them), from whichever thread calls."""
    libs = _blas_libs()
    counts = [counts] * len(libs) if isinstance(counts, int) else list(counts)
    with _BLAS_LOCK:
        for (_, set_), n in zip(libs, counts):
            set_(n)


class _BlasSingleThreaded:
    """The context manager :func:`blas_single_threaded` returns (one, stateless: the state is
    the module's, so it nests and is shared by threads). A class, not a generator: entered
    for every parallel kernel call, it costs ~3 us where ``@contextmanager`` cost ~10."""

    __slots__ = ()

    def __enter__(self) -> None:
        with _BLAS_LOCK:
            if _blas["users"] == 0:
                _blas["saved"] = [(get(), set_) for get, set_ in _blas_libs()]
                for n, set_ in _blas["saved"]:
                    if n != 1:
                        set_(1)
            _blas["users"] += 1

    def __exit__(self, *exc: object) -> None:
        with _BLAS_LOCK:
            _blas["users"] -= 1
            if _blas["users"] == 0:
                for n, set_ in _blas["saved"]:
                    if n != 1:
                        set_(n)


_BLAS_SINGLE_THREADED = _BlasSingleThreaded()


def blas_single_threaded() -> _BlasSingleThreaded:
    """BLAS runs on its calling thread inside this ``with`` block, whichever thread that is
    (re-entrant, thread-safe)."""
    return _BLAS_SINGLE_THREADED


#: [``spin(done)``]: polls ``done[0]`` without the GIL for a short while (the join of
#: :meth:`_Tasks.wait`); empty: the join blocks on a lock at once
_JOIN_SPIN: list[Callable[[np.ndarray], None]] = []


def set_join_spin(spin: Callable[[np.ndarray], None]) -> None:
    """Make callers of :func:`run_tasks` first poll with ``spin`` for the pool's last tasks
    (:mod:`.native_pool` installs its Numba one)."""
    _JOIN_SPIN[:] = [spin]


class _Tasks:
    """``fn(i)`` for i in range(n), handed out from a shared counter; :meth:`wait` returns
    when all n have ended. Lean on purpose: it is made for every parallel kernel call, and on
    a decoder's small layers each microsecond of Python here is a microsecond the helper
    waits for the GIL."""

    __slots__ = ("fn", "todo", "n", "ended", "finished", "error", "done")

    def __init__(self, fn: Callable[[int], None], n: int):
        self.fn = fn
        self.todo = iter(range(n))  # next() on it is atomic under the GIL
        self.n = n
        self.ended = itertools.count(1)  # so is this
        self.finished = threading.Lock()  # held until the last task ends
        self.finished.acquire()
        self.error: BaseException | None = None
        self.done = np.zeros(1, np.int64)  # [0] = 1 once all n have ended (see wait)

    def drain(self) -> None:
        for i in self.todo:
            try:
                if self.error is None:
                    self.fn(i)
            except BaseException as exc:  # re-raised on the calling thread
                self.error = exc
            if next(self.ended) == self.n:
                self.done[0] = 1
                self.finished.release()

    def wait(self) -> None:
        """Return once every task has ended. A helper still running one is first waited for
        by :func:`set_join_spin`'s function (polling :attr:`done` without the GIL, briefly),
        then on the lock: waking a thread blocked on a lock took 50-60 us on a 2-core VM, a
        third of a small reduced-precision layer."""
        if _JOIN_SPIN and not self.done[0]:
            _JOIN_SPIN[0](self.done)
        self.finished.acquire()


class _Pool:
    """The kernel threads: daemon threads that drain whatever :class:`_Tasks` they are
    given, one queue for all callers (a Dask worker's task threads share it).

    Between tasks a helper first runs :attr:`poll` when one is set (:mod:`.native_pool`'s:
    it runs GEMM blocks without the GIL and returns when a Python job is posted, i.e. when
    :attr:`posted` changes, or after a while idle), then sleeps until a caller posts again.
    The same threads serve both kinds of job, so polling never takes a core from a Python
    task."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[_Tasks] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        #: [0]: Python jobs posted (what ``poll`` watches, with atomic loads)
        self.posted = np.zeros(8, np.int64)
        self.poll: Callable[[int, int], None] | None = None
        #: ``pending()``: whether a job ``poll`` would run is waiting (checked before sleeping)
        self.pending: Callable[[], bool] = lambda: False
        self.wake = threading.Condition(threading.Lock())
        self.asleep = 0

    def grow(self, helpers: int) -> None:
        """At least ``helpers`` pool threads."""
        if len(self.threads) < helpers:
            with _POOL_LOCK:
                while len(self.threads) < helpers:
                    thread = threading.Thread(target=self._loop, args=(len(self.threads),),
                                              daemon=True,
                                              name=f"taskflow-kernel_{len(self.threads)}")
                    thread.start()
                    self.threads.append(thread)

    def submit(self, work: _Tasks, helpers: int) -> None:
        """``work`` offered to ``helpers`` pool threads (started on first need)."""
        self.grow(helpers)
        for _ in range(helpers):
            self.jobs.put(work)
        self.posted[0] += 1
        self.notify()

    def notify(self) -> None:
        """Wake the sleeping helpers (after a job was posted)."""
        if self.asleep:
            with self.wake:
                self.wake.notify_all()

    def _loop(self, index: int) -> None:
        jobs = self.jobs
        while True:
            try:
                jobs.get_nowait().drain()
                continue
            except queue.Empty:
                pass
            if self.poll is not None:
                self.poll(index, int(self.posted[0]))
                if not jobs.empty():
                    continue
            with self.wake:
                # counted asleep before the last look: a job posted after it notifies us
                self.asleep += 1
                if jobs.empty() and not self.pending():
                    self.wake.wait()
                self.asleep -= 1


_POOL = _Pool()


def _new_pool_in_child() -> None:  # a forked child has none of the parent's threads
    global _POOL
    _POOL = _Pool()


os.register_at_fork(after_in_child=_new_pool_in_child)


def run_tasks(fn: Callable[[int], None], tasks: int) -> None:
    """``fn(i)`` for ``i in range(tasks)``, on the calling thread and the kernel pool.

    The caller takes tasks too and returns as soon as every task is done, without waiting for
    a helper that never got a core. BLAS is single-threaded throughout.
    """
    helpers = min(threads(), tasks) - 1
    with blas_single_threaded():
        if helpers <= 0:
            for i in range(tasks):
                fn(i)
            return
        work = _Tasks(fn, tasks)
        _POOL.submit(work, helpers)
        work.drain()
        work.wait()
    if work.error is not None:
        raise work.error


def run_ranges(fn: Callable[[int, int], None], n: int,
               min_chunk: int = MIN_TASK_ELEMENTS) -> None:
    """``fn(lo, hi)`` over consecutive chunks covering ``range(n)``, in parallel.

    Chunks hold at least ``min_chunk`` items, and there are at most ``TASKS_PER_THREAD`` per
    kernel thread; a small ``n`` is one call on the calling thread.
    """
    t = threads()
    parts = min(-(-n // max(1, min_chunk)), TASKS_PER_THREAD * t)
    if parts <= 1 or t <= 1:
        fn(0, n)
        return
    # a multiple of the threads: 3 chunks on 2 threads took 2/3 of the serial time, not 1/2
    parts = min(n, -(-parts // t) * t)
    step = -(-n // parts)
    run_tasks(lambda i: fn(i * step, min(n, (i + 1) * step)), -(-n // step))
