"""The GEMM of the cpu kernels: a sequential sgemm/dgemm (oneMKL's or OpenBLAS's), else numpy.

Every convolution and matrix product of the cpu kernels ends in :func:`gemm`, one call per
task of the kernel pool (see :mod:`.common`), each on one thread: the kernels do their own
threading, so the library must run each call on its calling thread. Two libraries can:

- oneMKL (the ``mkl`` wheel, a dependency on x86-64 Linux) in its sequential threading layer.
  On Intel CPUs its sgemm is 1.15-1.4x faster per core than OpenBLAS's on the layer shapes of
  the benchmark CNNs (K = 6-34 small-channel layers: up to 2x). Its reduced-precision and
  sparse GEMMs (:mod:`.lowp`, :mod:`.sparse`) are used whichever library runs the float
  GEMMs; the batched float one (:func:`gemm_batch`) follows the float GEMMs.
- OpenBLAS from the ``scipy-openblas32`` wheel: a copy of its own (numpy's OpenBLAS is left
  alone), held at one thread at every call whatever threadpoolctl does to the process's
  other BLAS libraries (:mod:`.openblas`). oneMKL dispatches by vendor: on
  an AMD EPYC (Zen 4, 2 cores) its sequential sgemm ran at 73-100 GFLOP/s on one thread
  alone, but two of them side by side, one per core (what the kernel tasks do), reached only
  65-160 together, where OpenBLAS's reached 87-193 (1.0-1.3x, 2.1x on a 256-row classifier);
  ResNet-50 at batch 32 ran 1.27x faster on it, MiniLM 1.08x.

``TASKFLOW_BLAS`` (read at import) chooses: ``auto`` (the default) takes OpenBLAS on CPUs
that are not Intel's and oneMKL on Intel's (or whichever of the two is installed);
``mkl`` and ``openblas`` force one; ``numpy`` loads neither and keeps every GEMM on numpy's
``matmul`` (so does having neither). Operands a library cannot take (other dtypes, non-unit
inner strides) go to numpy too, so the result is the same product either way, up to
summation order.

``TASKFLOW_ISA=avx2`` (or ``avx512``), read when MKL loads, caps the instruction sets MKL
dispatches to (``MKL_ENABLE_INSTRUCTIONS`` set before MKL loads, and
``MKL_Enable_Instructions`` before its first computation), so that an AMX or AVX-512 machine
can run the AVX2 code paths; MKL honours it on Intel CPUs only. With a cap, ``auto`` keeps
the float GEMMs on MKL too (the cap is how the AVX2 paths are tested).
"""

from __future__ import annotations

import ctypes
import os
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit

#: cblas enums
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_MKL_THREADING_SEQUENTIAL = 1
#: dtype char -> the name of its GEMM pointer in _state
_POINTERS = {"f": "sgemm", "d": "dgemm"}
_lock = threading.Lock()
_state: dict[str, Any] = {}
#: ``TASKFLOW_ISA`` values: the MKL_ENABLE_INSTRUCTIONS value and mkl_enable_instructions code
#: (mkl.h: MKL_ENABLE_AVX2 = 2, MKL_ENABLE_AVX512 = 4) that cap MKL at that instruction set.
ISA_CAPS = {"avx2": ("AVX2", 2), "avx512": ("AVX512", 4)}
#: ``TASKFLOW_BLAS`` values
CHOICES = ("auto", "mkl", "openblas", "numpy")
#: the cblas sgemm/dgemm argument types: order, transa, transb, m, n, k (ints), then alpha,
#: a, lda, b, ldb, beta, c, ldc
_INTS = [ctypes.c_int] * 6
#: cblas_sgemm_batch_strided's argument types (MKL's and OpenBLAS's alike): a batch stride
#: after each of lda, ldb and ldc, then the batch count
_BATCH_ARGS = _INTS + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                       ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_float,
                       ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]


def _gemm_args(real: Any) -> list[Any]:
    return _INTS + [real, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, real,
                    ctypes.c_void_p, ctypes.c_int]


def choice() -> str:
    """``TASKFLOW_BLAS``, lower-cased; an unknown value warns and counts as ``auto``."""
    value = os.environ.get("TASKFLOW_BLAS", "auto").strip().lower() or "auto"
    if value not in CHOICES:
        warnings.warn(f"taskflow: TASKFLOW_BLAS={value!r} is not one of {list(CHOICES)}; "
                      "using 'auto'", RuntimeWarning, stacklevel=3)
        return "auto"
    return value


def wheel_library(dist_name: str, match: Callable[[str], bool]) -> str | None:
    """Path of the first file of the installed wheel ``dist_name`` whose base name
    ``match``es and exists, or None. Found through the wheel's file list, without importing
    it (scipy-openblas32's module would load its library at its default thread count)."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution

        dist = distribution(dist_name)
    except (ImportError, PackageNotFoundError):
        return None
    for f in dist.files or ():
        if match(os.path.basename(str(f))):
            path = str(dist.locate_file(f))
            if os.path.exists(path):
                return path
    return None


def _find_mkl() -> str | None:
    """Path of ``libmkl_rt`` from the installed ``mkl`` wheel, or None."""
    return wheel_library("mkl", lambda base: base.startswith("libmkl_rt.so"))


def find_openblas() -> str | None:
    """Path of the OpenBLAS library of the installed ``scipy-openblas32`` wheel, or None."""
    return wheel_library("scipy-openblas32", lambda base: "openblas" in base
                         and base.endswith((".so", ".dylib", ".dll")))


def _load() -> Any:
    """The ctypes handle of MKL set to its sequential layer, or None (no MKL, or
    ``TASKFLOW_BLAS=numpy``)."""
    if choice() == "numpy":
        return None
    path = _find_mkl()
    if path is None:
        return None
    isa = os.environ.get("TASKFLOW_ISA", "").strip().lower()
    if isa and isa not in ISA_CAPS:
        warnings.warn(f"taskflow: TASKFLOW_ISA={isa!r} is not one of {sorted(ISA_CAPS)}; "
                      "MKL keeps its own choice", RuntimeWarning, stacklevel=2)
    cap = ISA_CAPS.get(isa)
    if cap is not None:  # MKL reads it once, when it first dispatches
        os.environ["MKL_ENABLE_INSTRUCTIONS"] = cap[0]
    try:
        mkl = ctypes.CDLL(path)
        layer = mkl.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL)
        if layer != _MKL_THREADING_SEQUENTIAL:  # MKL was already set up by someone else
            raise OSError(f"MKL threading layer is {layer}, not sequential")
        if cap is not None:
            # the variable above is what MKL reads; the call (which must come before any
            # computation, but after the threading layer: it initialises MKL) makes sure.
            # Both are no-ops on non-Intel CPUs (the call returns 0 there).
            mkl.MKL_Enable_Instructions(cap[1])
            _state["isa"] = isa
        for name, real in (("cblas_sgemm", ctypes.c_float), ("cblas_dgemm", ctypes.c_double)):
            fn = getattr(mkl, name)
            fn.argtypes = _gemm_args(real)
            fn.restype = None
        # the same two as C function pointers that Numba-compiled kernels call
        for name, real in (("sgemm", ctypes.c_float), ("dgemm", ctypes.c_double)):
            proto = ctypes.CFUNCTYPE(None, *_gemm_args(real))
            _state[f"mkl-{name}"] = proto(
                ctypes.cast(getattr(mkl, f"cblas_{name}"), ctypes.c_void_p).value)
        # batched products of attention (one call per group of heads); optional: an MKL
        # without it (before 2020.2) makes gemm_batch loop over numpy's matmul instead
        batch = getattr(mkl, "cblas_sgemm_batch_strided", None)
        if batch is not None:
            batch.argtypes = _BATCH_ARGS
            batch.restype = None
            _state["mkl-sgemm_batch"] = batch
        return mkl
    except (OSError, AttributeError) as exc:
        warnings.warn(f"taskflow: MKL at {path} is unusable ({exc}); GEMMs use numpy",
                      RuntimeWarning, stacklevel=2)
        return None


def _load_openblas() -> bool:
    """Load :mod:`.openblas` and put its pinned sgemm/dgemm pointers in ``_state``; False if
    the ``scipy-openblas32`` wheel is missing (silently) or unusable (with a warning)."""
    if find_openblas() is None:
        return False
    try:
        from . import openblas
    except (OSError, AttributeError) as exc:
        warnings.warn(f"taskflow: OpenBLAS is unusable ({exc})", RuntimeWarning, stacklevel=2)
        return False
    for name, real in (("sgemm", ctypes.c_float), ("dgemm", ctypes.c_double)):
        proto = ctypes.CFUNCTYPE(None, *_gemm_args(real))
        _state[f"openblas-{name}"] = proto(getattr(openblas, name).address)
    _state["openblas-sgemm_batch"] = ctypes.CFUNCTYPE(None, *_BATCH_ARGS)(
        openblas.sgemm_batch.address)
    return True


def is_intel() -> bool:
    """Whether the CPU is Intel's (``GenuineIntel`` in ``/proc/cpuinfo``); False where
    there is no such file."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip() == "GenuineIntel"
    except OSError:
        pass
    return False


def _pick() -> str:
    """Which library runs the float GEMMs: "mkl", "openblas" or "numpy" (see the module
    docstring)."""
    want = choice()
    if want == "numpy":
        return "numpy"
    mkl = _mkl()
    if mkl is not None and (want == "mkl" or (want == "auto" and (is_intel()
                                                                   or _state.get("isa")))):
        return "mkl"
    pick = "openblas" if _load_openblas() else "mkl" if mkl is not None else "numpy"
    if want not in ("auto", pick):  # the one asked for is not there: say so
        warnings.warn(f"taskflow: TASKFLOW_BLAS={want} but that library is not installed; "
                      f"the GEMMs use {pick}", RuntimeWarning, stacklevel=3)
    return pick


def backend() -> str:
    """``"mkl"``, ``"openblas"`` (each sequential, on the calling thread) or ``"numpy"``: what
    :func:`gemm` calls."""
    if "backend" not in _state:
        _mkl()  # before the lock: loading MKL takes it too
        with _lock:
            if "backend" not in _state:
                _state["backend"] = _pick()
    return _state["backend"]


def batch_function() -> Any:
    """The float32 ``cblas_sgemm_batch_strided`` :func:`gemm_batch` calls (through ctypes):
    OpenBLAS's where it runs the float GEMMs (1.0-1.6x oneMKL's, two side by side on the Zen 4
    VM, on Winograd's and attention's shapes), else oneMKL's; None on numpy, or with an MKL
    too old for it."""
    return _state.get(f"{backend()}-sgemm_batch")


def has_mkl() -> bool:
    """Whether oneMKL is loaded (its reduced-precision and sparse GEMMs), whichever
    library runs the float GEMMs."""
    return _mkl() is not None


def isa_cap() -> str:
    """The instruction-set cap MKL was loaded with (``TASKFLOW_ISA``: "avx2", "avx512"), or
    "" for none (MKL's own choice, or no MKL)."""
    _mkl()
    return _state.get("isa", "")


def _mkl() -> Any:
    if "mkl" not in _state:
        with _lock:
            if "mkl" not in _state:
                _state["mkl"] = _load()
    return _state["mkl"]


def bindings(name: str, make: Callable[[Any], Any]) -> Any:
    """``make(mkl)`` (ctypes bindings of more MKL functions), built once per process under
    ``name``; None without MKL or when this MKL lacks them (``make`` raises AttributeError).
    What :mod:`.lowp` and :mod:`.sparse` bind their GEMMs with."""
    if name not in _state:
        mkl = _mkl()  # before the lock: loading MKL takes it too
        with _lock:
            if name not in _state:
                try:
                    _state[name] = None if mkl is None else make(mkl)
                except AttributeError:  # an MKL too old for these functions
                    _state[name] = None
    return _state[name]


def _layout(m: np.ndarray) -> tuple[int, int] | None:
    """(transpose flag, leading dimension) of a 2-D operand in row-major cblas terms."""
    item = m.itemsize
    rows, cols = m.shape
    if m.strides[1] == item and m.strides[0] % item == 0 and m.strides[0] >= max(1, cols) * item:
        return _NO_TRANS, m.strides[0] // item
    if m.strides[0] == item and m.strides[1] % item == 0 and m.strides[1] >= max(1, rows) * item:
        return _TRANS, m.strides[1] // item
    return None


@njit(cache=True, inline="always")
def _ld(rows: int, cols: int, s0: int, s1: int, item: int) -> tuple[int, int]:
    """(cblas transpose flag, leading dimension) of a matrix of these byte strides, or
    (0, 0) where MKL cannot read it (the Numba twin of :func:`_layout`)."""
    if s1 == item and s0 % item == 0 and s0 >= max(1, cols) * item:
        return _NO_TRANS, s0 // item
    if s0 == item and s1 % item == 0 and s1 >= max(1, rows) * item:
        return _TRANS, s1 // item
    return 0, 0


@njit(cache=True, nogil=True)
def gemm_rows(fn, a, b, out, lo: int, hi: int) -> bool:
    """``out[lo:hi] = a[lo:hi] @ b`` through ``fn`` (:func:`gemm_pointer` of their dtype),
    without the GIL; False (nothing done) where MKL cannot take the operands.

    From Numba, a call costs ~5 us against ~25 us through ctypes from Python: a kernel
    task's Python before its GEMM is time the other kernel threads wait for the GIL."""
    m, k = hi - lo, a.shape[1]
    n = b.shape[1]
    item = a.itemsize
    ta, lda = _ld(m, k, a.strides[0], a.strides[1], item)
    tb, ldb = _ld(k, n, b.strides[0], b.strides[1], item)
    if ta == 0 or tb == 0 or out.strides[1] != item or out.strides[0] % item \
            or out.strides[0] < max(1, n) * item or b.shape[0] != k or out.shape[1] != n \
            or m <= 0 or n == 0 or k == 0:
        return False
    fn(_ROW_MAJOR, ta, tb, m, n, k, 1.0, a[lo:hi].ctypes.data, lda, b.ctypes.data, ldb, 0.0,
       out[lo:hi].ctypes.data, out.strides[0] // item)
    return True


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[...] = a @ b`` for 2-D arrays; returns ``out``.

    ``out`` may be a strided view (a block of a larger row-major array: a Concat's buffer,
    a group's columns) as long as its rows are contiguous.
    """
    fn = gemm_pointer(a.dtype)
    if fn is not None and a.dtype == b.dtype == out.dtype and a.ndim == b.ndim == out.ndim == 2 \
            and out.shape[0] == a.shape[0] and out.flags.writeable \
            and gemm_rows(fn, a, b, out, 0, a.shape[0]):
        return out
    return np.matmul(a, b, out=out)


def gemm_pointer(dtype: Any) -> Any:
    """The sequential ``cblas_sgemm`` (float32) or ``cblas_dgemm`` (float64) of
    :func:`backend` as a ctypes function pointer that Numba-compiled code can call (row-major
    cblas arguments; operands as addresses), or None on numpy (or for another dtype)."""
    return _state.get(f"{backend()}-{_POINTERS.get(np.dtype(dtype).char)}")


def _batch_layout(m: np.ndarray) -> tuple[int, int, int] | None:
    """(transpose flag, leading dimension, batch stride) of a 3-D operand, in elements."""
    item = m.itemsize
    if m.strides[0] % item or m.strides[0] < 0:
        return None
    lay = _layout(m[0]) if m.shape[0] else None
    return None if lay is None else (lay[0], lay[1], m.strides[0] // item)


def gemm_batch(a: np.ndarray, b: np.ndarray, out: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """``out[i] = alpha * (a[i] @ b[i])`` for 3-D float32 arrays; returns ``out``.

    One ``cblas_sgemm_batch_strided`` call (:func:`batch_function`) when every operand has
    one batch stride and matrices BLAS can read (rows or columns contiguous: a transposed view
    costs nothing); else numpy's matmul. ``out`` must have contiguous rows.
    """
    fn = batch_function()
    if fn is not None and a.dtype == b.dtype == out.dtype == np.float32 \
            and a.ndim == b.ndim == out.ndim == 3 and min(a.shape + b.shape) > 0 \
            and out.flags.writeable and out.strides[2] == out.itemsize:
        la, lb, lc = _batch_layout(a), _batch_layout(b), _batch_layout(out)
        g, m, k = a.shape
        n = b.shape[2]
        if la is not None and lb is not None and lc is not None and lc[0] == _NO_TRANS \
                and out.shape == (g, m, n) and b.shape[:2] == (g, k) and lc[1] >= n:
            pa, pb, pc = a.ctypes.data, b.ctypes.data, out.ctypes.data
            if lc[2] >= lc[1] * m:
                fn(_ROW_MAJOR, la[0], lb[0], m, n, k, alpha, pa, la[1], la[2], pb, lb[1],
                   lb[2], 0.0, pc, lc[1], lc[2], g)
                return out
            # interleaved outputs (heads written into (B, S, H, D) memory): MKL's batch call
            # refuses C matrices closer than ldc * m, so one sgemm per matrix
            it = out.itemsize
            sgemm = gemm_pointer(np.float32)
            for i in range(g):
                sgemm(_ROW_MAJOR, la[0], lb[0], m, n, k, alpha, pa + i * la[2] * it, la[1],
                      pb + i * lb[2] * it, lb[1], 0.0, pc + i * lc[2] * it, lc[1])
            return out
    np.matmul(a, b, out=out)
    if alpha != 1:
        out *= out.dtype.type(alpha)
    return out

