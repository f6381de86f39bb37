"""Which engine runs a reduced-precision (bf16 / int8) GEMM on this machine, and oneMKL's
bindings for it; :mod:`.lowp` (the packed weights, the GEMMs and the conversions) asks here.

- the CPU's features (:func:`cpu_features`, after ``TASKFLOW_ISA``'s cap) and the name of
  what runs a GEMM of each precision (:func:`lowp_backend`);
- :func:`dot_kernels`: :mod:`.dotgemm`'s kernels instead of oneMKL's, where the CPU has the dot
  instructions and oneMKL does not use them (``TASKFLOW_LOWP=dot|mkl|emulate`` forces a path);
- oneMKL's packed reduced GEMMs through ctypes (:class:`_Mkl`, :func:`_bindings`), and where
  its int8 GEMM sums exactly (:func:`_int8_exact`, :func:`int8_weight_max`,
  :func:`mkl_functions`).

Split from :mod:`.lowp` (whose docstring has the measurements behind these choices) to keep
each file a size one can read; :mod:`.lowp` re-exports the public names.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any

import numpy as np

from ..quant import INT8_WEIGHT_MAX, check_precision
from . import blas, dotgemm

#: cblas enums of the packed API (mkl_cblas.h)
PACKED, B_MATRIX, ROW_OFFSET = 151, 162, 171
#: Rows of A passed when packing B: MKL's packed B serves any number of rows (checked here
#: from 1 to 12544 rows); this is only a typical slice height, should MKL tune to it.
PACK_ROWS = 1024
#: Largest K whose int8 products cannot overflow MKL's int32 accumulator (255 * 127 * K);
#: beyond it (no such layer is known) the emulation's float64 GEMM runs instead.
MAX_INT8_K = (2**31 - 1) // (255 * 127)
#: The /proc/cpuinfo flags that decide which reduced-precision GEMM MKL can run.
FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
            "amx_int8", "amx_bf16")
#: What each ``TASKFLOW_ISA`` cap leaves of those features.
_CAPPED = {"avx2": {"avx2", "fma"}, "avx512": {"avx2", "fma", "avx512f"}}


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """The :data:`FEATURES` this CPU has, from the flags of ``/proc/cpuinfo`` (empty where
    there is none).

    Examples
    --------
    >>> "avx2" in cpu_features()  # doctest: +SKIP
    True
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return frozenset(name for name in FEATURES if name in flags)
    except OSError:
        pass
    return frozenset()


def lowp_backend(precision: str) -> str:
    """What runs a GEMM of ``precision``: for "bf16" / "int8" ``"mkl-amx"``,
    ``"mkl-avx512-bf16"``, ``"mkl-avx512-vnni"``, ``"mkl-avx-vnni"``, ``"mkl-avx512"``,
    ``"mkl-avx2"`` (MKL's best path by CPU flags, after ``TASKFLOW_ISA``'s cap) or
    ``"emulated"``; for "" (float32) :func:`.blas.backend`'s answer.

    Examples
    --------
    >>> lowp_backend("int8")  # doctest: +SKIP
    'mkl-avx2'
    """
    precision = check_precision("lowp_backend", precision)
    if not precision:
        return blas.backend()
    if _bindings() is not None and dot_kernels(precision):
        native = dotgemm.HAS_BF16 if precision == "bf16" else dotgemm.HAS_VNNI
        return "dot-" + (("avx512-bf16" if precision == "bf16" else "avx512-vnni") if native
                         else "emulated")
    seven = precision == "int8" and int8_weight_max() == PAIR_SAFE_WEIGHT_MAX
    if not seven and (_bindings() if precision == "bf16" else _int8_bindings()) is None:
        return "emulated"
    features = _capped_features()
    wanted = (("amx_bf16", "amx"), ("avx512_bf16", "avx512-bf16")) if precision == "bf16" \
        else (("amx_int8", "amx"), ("avx512_vnni", "avx512-vnni"), ("avx_vnni", "avx-vnni"))
    for flag, name in (*wanted, ("avx512f", "avx512"), ("avx2", "avx2")):
        if flag in features:
            return f"mkl-{name}" + ("-7bit" if seven else "")  # 7-bit weights only
    return "mkl"


def _capped_features() -> frozenset[str]:
    """:func:`cpu_features` less what ``TASKFLOW_ISA`` caps."""
    cap = blas.isa_cap()
    return cpu_features() & _CAPPED[cap] if cap else cpu_features()


#: ``TASKFLOW_LOWP`` values: who runs the reduced GEMMs (read per call; unset: chosen here)
LOWP_MODES = ("emulate", "mkl", "dot")


def dot_kernels(precision: str) -> bool:
    """Whether ``precision``'s ("bf16" / "int8") GEMMs run on :mod:`.dotgemm`'s kernels
    instead of MKL's: forced by ``TASKFLOW_LOWP=dot`` (on any CPU: without the instruction
    they compute the same in plain vector code) or ``=mkl``; by default where the CPU has the
    dot instruction (AVX512-VNNI / AVX512-BF16), no AMX, no ``TASKFLOW_ISA`` cap below
    AVX-512, and the kernel is measured faster than MKL's on a typical layer here
    (:func:`_dot_faster`: MKL uses VNNI and BF16 on Intel CPUs, not on AMD's)."""
    mode = os.environ.get("TASKFLOW_LOWP", "").strip().lower()
    if mode in LOWP_MODES:
        return mode == "dot"
    flag = "avx512_bf16" if precision == "bf16" else "avx512_vnni"
    features = _capped_features()
    native = dotgemm.HAS_BF16 if precision == "bf16" else dotgemm.HAS_VNNI
    return native and flag in features and not features & {"amx_bf16", "amx_int8"} \
        and _dot_faster(precision)


@functools.lru_cache(maxsize=2)
def _dot_faster(precision: str) -> bool:
    """Whether :func:`.dotgemm.gemm_groups` beats MKL's ``precision`` GEMM here on a
    (256, 512) x (512, 256) product, one thread, best of 3 each after a first call that
    compiles and packs (~2 ms in all, once per process). MKL wins ties."""
    import time

    from .lowp import _gemm_bits, _gemm_q, pack_bf16, pack_int8, quantize_u8, to_bf16

    if _bindings() is None:
        return True
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 512), dtype=np.float32)
    w = (pack_bf16 if precision == "bf16" else pack_int8)(a[:256].T.copy())
    out = np.empty((256, 256), np.float32)
    narrow = to_bf16(a) if precision == "bf16" else quantize_u8(a, 0.02, 128)

    def best(dot: bool) -> float:
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            if precision == "bf16":
                _gemm_bits(narrow, w, out, dot)
            else:
                _gemm_q(narrow, w, out, 0.02, 128, dot)
            times.append(time.perf_counter() - t0)
        return min(times[1:])

    return best(True) < best(False)


# --- oneMKL bindings ------------------------------------------------------------------------
#: The argument types of MKL's ``cblas_gemm_bf16bf16f32_compute`` (row-major cblas arguments,
#: operands as addresses): :class:`_Mkl` and :mod:`.native_pool` bind it with them.
BF16_COMPUTE_ARGS = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int,
                                          ctypes.c_void_p, ctypes.c_int, ctypes.c_float,
                                          ctypes.c_void_p, ctypes.c_int]


class _Mkl:
    """The ctypes functions of MKL's reduced-precision packed GEMMs."""

    def __init__(self, mkl: Any):
        i, f, p, size = ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_size_t
        i8 = ctypes.c_int8
        for kind in ("bf16bf16f32", "s8u8s32"):
            get_size = getattr(mkl, f"cblas_gemm_{kind}_pack_get_size")
            get_size.argtypes, get_size.restype = [i] * 4, size
            pack = getattr(mkl, f"cblas_gemm_{kind}_pack")
            pack.argtypes, pack.restype = [i] * 6 + [p, i, p], None
            setattr(self, f"{kind}_get_size", get_size)
            setattr(self, f"{kind}_pack", pack)
        self.bf16 = mkl.cblas_gemm_bf16bf16f32_compute
        self.bf16.argtypes = BF16_COMPUTE_ARGS
        self.bf16.restype = None
        self.s8u8 = mkl.cblas_gemm_s8u8s32_compute
        self.s8u8.argtypes = [i] * 7 + [f, p, i, i8, p, i, i8, f, p, i, p]
        self.s8u8.restype = None
        # the same two compute functions as C function pointers for the Numba row blocks
        # (:mod:`.lowp_rows`): a call from Numba costs a few us against
        # ~20 through ctypes from Python, and holds no GIL
        self.bf16_ptr = ctypes.CFUNCTYPE(None, *self.bf16.argtypes)(
            ctypes.cast(self.bf16, ctypes.c_void_p).value)
        self.s8u8_ptr = ctypes.CFUNCTYPE(None, *self.s8u8.argtypes)(
            ctypes.cast(self.s8u8, ctypes.c_void_p).value)


def _bindings() -> _Mkl | None:
    """MKL's reduced GEMMs, or None: emulate (no MKL, too old an MKL, or
    ``TASKFLOW_LOWP=emulate``)."""
    if os.environ.get("TASKFLOW_LOWP", "").lower() == "emulate":
        return None
    # None with an MKL before 2020 (bf16) / 2018 (packed int8)
    return blas.bindings("lowp", _Mkl)


#: The largest int8 weight magnitude whose u8 x s8 pairs fit int16 (2 * 255 * 64 = 32640):
#: 7-bit weights, taskflow's (63) and ONNX Runtime's ``reduce_range`` ones (-64 to 64).
PAIR_SAFE_WEIGHT_MAX = 64


def _int8_bindings(wmax: int = INT8_WEIGHT_MAX) -> _Mkl | None:
    """:func:`_bindings` where MKL's int8 GEMM sums exactly on this CPU with weights of
    magnitude up to ``wmax`` (:func:`_int8_exact`) or :mod:`.dotgemm`'s kernel runs it (it
    always sums exactly), else None: the emulation runs it."""
    fns = _bindings()
    if fns is not None and dot_kernels("int8"):
        return fns
    return _mkl_int8_bindings(wmax)


def _mkl_int8_bindings(wmax: int) -> _Mkl | None:
    """:func:`_bindings` where MKL's own int8 GEMM sums exactly here with weights of magnitude
    up to ``wmax``, else None."""
    fns = _bindings()
    bound = PAIR_SAFE_WEIGHT_MAX if wmax <= PAIR_SAFE_WEIGHT_MAX else INT8_WEIGHT_MAX
    return fns if fns is not None and _int8_exact(bound) else None


@functools.lru_cache(maxsize=4)
def _int8_exact(wmax: int = INT8_WEIGHT_MAX) -> bool:
    """Whether MKL's ``cblas_gemm_s8u8s32`` gives the exact integer sums here for uint8
    activations and int8 weights of magnitude up to ``wmax``.

    Without VNNI (an Intel CPU with AVX2 or AVX-512F only, AMD before Zen 4, or
    ``TASKFLOW_ISA=avx2`` on a newer one) MKL multiplies pairs of u8 x s8 into int16 with
    saturation (``vpmaddubsw``): a pair of 255 * 127 products, 64770, is clipped to 32767,
    and quantised layers came out wrong by up to half their range (seen on this suite's int8
    tests under ``TASKFLOW_ISA=avx2``). 7-bit weights (``wmax`` 64) fit: 2 * 255 * 64 =
    32640. Probed once per bound with such products, a (64, 64) x (64, 64) of 255s and
    ``wmax``."""
    fns = _bindings()
    if fns is None:
        return False
    k = 64
    a = np.full((k, k), 255, np.uint8)
    b = _mkl_pack(fns.s8u8s32_get_size, fns.s8u8s32_pack, np.full((k, k), wmax, np.int8))
    acc = np.zeros((k, k), np.int32)
    offset = np.zeros(k, np.int32)
    fns.s8u8(blas._ROW_MAJOR, blas._NO_TRANS, PACKED, ROW_OFFSET, k, k, k, 1.0,
             a.ctypes.data, k, 0, b.ctypes.data, k, 0, 0.0, acc.ctypes.data, k,
             offset.ctypes.data)
    return bool(np.all(acc == 255 * wmax * k))


def int8_weight_max() -> int:
    """The largest int8 weight magnitude whose products MKL sums exactly here: 127 (VNNI or
    AMX), 64 (7-bit weights: CPUs without VNNI; :meth:`taskflow.Model.quantize`'s
    ``reduce_range`` then quantises weights to 63), or 0 (no MKL int8 GEMM: the
    emulation)."""
    for wmax in (INT8_WEIGHT_MAX, PAIR_SAFE_WEIGHT_MAX):
        if _int8_bindings(wmax) is not None:
            return wmax
    return 0


def mkl_functions(precision: str, k: int, wmax: int = INT8_WEIGHT_MAX) -> _Mkl | None:
    """MKL's bindings that run a ``precision`` ("bf16" / "int8") GEMM of depth ``k`` here, or
    None where the emulation runs it (int8: with weights of magnitude up to ``wmax``, a
    packed weight's :attr:`PackedInt8.wmax`)."""
    if precision == "bf16":
        return _bindings()
    return _int8_bindings(wmax) if k <= MAX_INT8_K else None


def _mkl_pack(get_size: Any, pack: Any, b: np.ndarray) -> np.ndarray:
    """B (K, N) in MKL's packed layout, in a 64-byte aligned buffer that never moves."""
    k, n = b.shape
    size = get_size(B_MATRIX, PACK_ROWS, n, k)
    raw = np.empty(size + 64, np.uint8)
    start = -raw.ctypes.data % 64
    buf = raw[start:start + size]
    pack(blas._ROW_MAJOR, B_MATRIX, blas._NO_TRANS, PACK_ROWS, n, k, b.ctypes.data, n,
         buf.ctypes.data)
    return buf
