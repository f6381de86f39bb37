"""OpenBLAS's GEMMs held at one thread: the float GEMMs of the kernels on CPUs where oneMKL's
are slower (see :mod:`.blas`, which imports this module only when it chooses OpenBLAS).

The library is the ``scipy-openblas32`` wheel's, a copy of our own (numpy's OpenBLAS is left
alone), loaded with ``OPENBLAS_NUM_THREADS=1`` so that it starts no helper threads. The
kernels call it through :data:`sgemm`, :data:`dgemm` and :data:`sgemm_batch` (its
``cblas_sgemm_batch_strided``, with MKL's signature): Numba ``cfunc``s of the cblas
signatures that first set OpenBLAS back to one thread if anyone changed it. threadpoolctl's
limits reach every BLAS library loaded in the process, and two kernel tasks that each ran
OpenBLAS on two threads would put four threads on two cores. The check reads one int.

The cfuncs call OpenBLAS by names of our own, bound to the library's addresses with
``llvmlite``'s ``add_symbol``: so Numba caches them on disk like any kernel (compiling them
takes ~0.5 s), and the library stays loaded privately (no RTLD_GLOBAL: its names are those of
SciPy's own OpenBLAS). Importing raises OSError or AttributeError where the wheel is missing
or unusable (:func:`.blas.find_openblas` finds it).
"""

from __future__ import annotations

import ctypes
import os

from llvmlite import binding
from numba import cfunc, types

from .blas import find_openblas as find


def _load() -> ctypes.CDLL:
    path = find()
    if path is None:
        raise OSError("the scipy-openblas32 wheel is not installed")
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # read as it loads
    try:
        lib = ctypes.CDLL(path)
    finally:
        if saved is None:
            os.environ.pop("OPENBLAS_NUM_THREADS", None)
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = saved
    lib.scipy_openblas_set_num_threads.argtypes = [ctypes.c_int]
    lib.scipy_openblas_get_num_threads.restype = ctypes.c_int
    lib.scipy_openblas_set_num_threads(1)
    return lib


LIB = _load()
for _ours, _theirs in (("sgemm", "scipy_cblas_sgemm"), ("dgemm", "scipy_cblas_dgemm"),
                       ("sgemm_batch_strided", "scipy_cblas_sgemm_batch_strided"),
                       ("get_num_threads", "scipy_openblas_get_num_threads"),
                       ("set_num_threads", "scipy_openblas_set_num_threads")):
    binding.add_symbol(f"taskflow_openblas_{_ours}",
                       ctypes.cast(getattr(LIB, _theirs), ctypes.c_void_p).value)

_I, _P = types.int32, types.voidptr
_S_SIG = types.void(_I, _I, _I, _I, _I, _I, types.float32, _P, _I, _P, _I, types.float32, _P,
                    _I)
_D_SIG = types.void(_I, _I, _I, _I, _I, _I, types.float64, _P, _I, _P, _I, types.float64, _P,
                    _I)
_get = types.ExternalFunction("taskflow_openblas_get_num_threads", types.int32())
_set = types.ExternalFunction("taskflow_openblas_set_num_threads", types.void(_I))
_sgemm = types.ExternalFunction("taskflow_openblas_sgemm", _S_SIG)
_dgemm = types.ExternalFunction("taskflow_openblas_dgemm", _D_SIG)
#: cblas_sgemm_batch_strided: as sgemm, with a batch stride after each of lda, ldb and ldc,
#: then the batch count
_SB_SIG = types.void(_I, _I, _I, _I, _I, _I, types.float32, _P, _I, _I, _P, _I, _I,
                     types.float32, _P, _I, _I, _I)
_sgemm_batch = types.ExternalFunction("taskflow_openblas_sgemm_batch_strided", _SB_SIG)


@cfunc(_S_SIG, cache=True)
def sgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):  # pragma: no cover
    """OpenBLAS's ``cblas_sgemm`` on the calling thread."""
    if _get() != 1:
        _set(1)
    _sgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


@cfunc(_D_SIG, cache=True)
def dgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):  # pragma: no cover
    """OpenBLAS's ``cblas_dgemm`` on the calling thread."""
    if _get() != 1:
        _set(1)
    _dgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


@cfunc(_SB_SIG, cache=True)
def sgemm_batch(order, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc,
                count):  # pragma: no cover
    """OpenBLAS's ``cblas_sgemm_batch_strided`` on the calling thread."""
    if _get() != 1:
        _set(1)
    _sgemm_batch(order, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc, count)
