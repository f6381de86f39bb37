"""Reduced-precision GEMMs of the cpu kernels: bfloat16 and int8 through oneMKL, else emulated.

FusedConv, FusedGemm and FusedMatMul with ``precision="bf16"`` or ``"int8"`` end their GEMMs
here instead of in :func:`.blas.gemm`. The weight (B, K x N) is converted once and cached
with :func:`.common.packed`: :func:`pack_bf16` rounds it to bfloat16, :func:`pack_int8`
quantises each column to int8 (symmetric, ``scale = max|column| / 127``) and keeps its
column sums. Each call converts its slice of A in one Numba pass into a per-thread scratch
buffer, then makes one oneMKL call:

- :func:`gemm_bf16`: A rounded to bfloat16, ``cblas_gemm_bf16bf16f32`` accumulating in float32
  straight into the output;
- :func:`gemm_int8`: A quantised to uint8 with the given scale and zero point,
  ``cblas_gemm_s8u8s32`` into int32, the zero point taken off exactly through MKL's
  per-column offset (``-zero_point * column sum``), then one pass
  ``out = acc * (x_scale * w_scale[n])``.

These compute the references' definition (``ops/quant.py``: the float32 op on fake-quantised
operands) up to float32 summation order: a product of two bfloat16 values is exact in float32,
and the int8 accumulator is the exact integer sum.

Packed B. MKL's ``*_pack`` / ``*_compute`` API lays B out once for its kernels (on AMX and
VNNI machines, the tile and 4-byte-group layouts) instead of in every call. Measured on this
machine (2-core AMD EPYC, AVX2 only, MKL 2026.2, one thread, min of 25 interleaved runs,
GOP/s)::

    rows x K x N       sgemm  bf16  bf16 packed  s8u8s32  s8u8s32 packed
    3136 x 576 x 64     30.0  27.1     26.7        10.4      10.2
    784 x 1152 x 128    33.9  31.4     31.3        13.6      13.4
    196 x 2304 x 256    34.1  31.8     30.5        14.9      14.6
    3136 x 64 x 256     28.9  28.2     28.7        10.5      10.7
    12544 x 147 x 64    28.9  26.0     26.1         8.3       8.6
    256 x 768 x 768     33.4  31.5     32.8        11.9      12.5
    64 x 4096 x 1000    28.0  22.9     21.9        10.9      12.0
    1024 x 256 x 1024   33.4  33.3     33.1        15.4      15.4
    geometric mean      1.00  0.92     0.92        0.38      0.38   (x sgemm)

Packed and plain calls run at the same speed here, so the packed API is used: it is what
the matrix units of AMX/VNNI machines want. Here they are slower than sgemm (MKL has no VNNI
or bf16 instructions to use on this CPU), which the per-layer precision choice
(:mod:`taskflow.precision`) measures and takes into account. On a 2-core AVX-512 + AMX VM
(Intel, MKL 2026.2, one thread, min of 7 runs, GOP/s, :func:`gemm_bf16` / :func:`gemm_int8`
with their conversion of A and, for int8, the dequantisation)::

    rows x K x N       sgemm  bf16  int8
    3136 x 576 x 64      156   302   312
    784 x 1152 x 128     169   434   532
    196 x 2304 x 256     169   599   830
    3136 x 64 x 256      182   201   161
    256 x 768 x 768      189   836   981
    1024 x 256 x 1024    205   573   645
    12544 x 576 x 256    175   512   332
    4096 x 384 x 1536    205  1019   679

MKL's GEMMs alone reach 770 (bf16) and about twice that (int8) on such shapes; at K = 64
(ResNet-50's first 1x1 layers) the AMX tiles are mostly idle and bf16 barely beats sgemm.

Dot kernels. Where MKL does not use the CPU's dot-product instructions (an AMD Zen 4 has
AVX512-VNNI and AVX512-BF16, and MKL ran its int8 GEMM there at 0.4x its sgemm), the GEMM
runs on :mod:`.dotgemm`'s register-blocked Numba kernels instead (4-5x sgemm for int8, 2.3x
for bf16 there): :func:`dot_kernels` decides per precision (the instruction present, no AMX,
and the kernel measured faster than MKL's once per process); ``TASKFLOW_LOWP=dot`` or
``=mkl`` forces either. The packed weight, the zero-point offsets and the epilogues are the
same; only the GEMM call differs.

Emulation. Without MKL's reduced GEMMs (no ``mkl`` wheel, ``TASKFLOW_BLAS=numpy``, or
``TASKFLOW_LOWP=emulate``, read per call) the same conversions feed the float32 GEMM of
:func:`.blas.gemm` on the bfloat16-valued operands, and for int8 a float64 GEMM of the centred
integers (exact below 2**53): the same products, int8 bit for bit.

``TASKFLOW_ISA=avx2`` (or ``avx512``) caps the instruction sets MKL dispatches to, so that a
machine with AMX can run and test the AVX2 path; it is read once, when MKL loads
(:mod:`.blas` sets ``MKL_ENABLE_INSTRUCTIONS`` before loading MKL and calls
``MKL_Enable_Instructions`` before its first computation; MKL honours both on Intel CPUs
only).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from taskflow.errors import ShapeError, UnsupportedOpError

from ..quant import check_precision, quantize_weight_per_channel
from . import blas, dotgemm
from .common import scratch

# which engine runs a reduced GEMM here, and oneMKL's bindings: re-exported, this module is
# the reduced GEMMs' face for the kernels and the tests
from .lowp_engine import (  # noqa: F401
    BF16_COMPUTE_ARGS,
    FEATURES,
    LOWP_MODES,
    MAX_INT8_K,
    PACK_ROWS,
    PACKED,
    PAIR_SAFE_WEIGHT_MAX,
    ROW_OFFSET,
    _bindings,
    _int8_bindings,
    _int8_exact,
    _Mkl,
    _mkl_int8_bindings,
    _mkl_pack,
    cpu_features,
    dot_kernels,
    int8_weight_max,
    lowp_backend,
    mkl_functions,
)


def precision_attrs(precision: str | bytes, x_scale: float,
                    x_zero_point: int) -> tuple[str, float, int] | None:
    """A kernel's ``(precision, x_scale, x_zero_point)`` attributes checked and normalised, or
    None when they are invalid (the kernel then runs the reference, which says why).

    Examples
    --------
    >>> precision_attrs(b"int8", 0.5, 3), precision_attrs("fp8", 0.0, 0)
    (('int8', 0.5, 3), None)
    """
    try:
        precision = check_precision("", precision, x_scale, x_zero_point)
    except (UnsupportedOpError, TypeError, ValueError):
        return None
    return (precision, float(x_scale), int(x_zero_point)) if precision == "int8" else \
        (precision, 0.0, 0)


# --- packed weights -------------------------------------------------------------------------
class PackedBF16:
    """A weight B (K, N) for :func:`gemm_bf16`: its bfloat16 bits (``bits``, uint16), and on
    first use MKL's packed copy or the emulation's float32 values."""

    def __init__(self, bits: np.ndarray):
        self.bits = bits
        self.k, self.n = bits.shape
        self._mkl: np.ndarray | None = None
        self._f32: np.ndarray | None = None
        self._groups: np.ndarray | None = None
        #: :func:`.dotgemm.gemm_groups`' ``init``: zeros, padded to whole panels
        self.zeros = dotgemm.padded_init(None, self.n, np.float32)

    def groups(self) -> np.ndarray:
        """The weight packed for :func:`.dotgemm.gemm_groups` (on first use)."""
        if self._groups is None:
            self._groups = dotgemm.pack_groups(self.bits)
        return self._groups

    def mkl(self, fns: _Mkl) -> np.ndarray:
        if self._mkl is None:  # a race packs twice, harmlessly
            self._mkl = _mkl_pack(fns.bf16bf16f32_get_size, fns.bf16bf16f32_pack, self.bits)
        return self._mkl

    def emulated(self) -> np.ndarray:
        if self._f32 is None:
            self._f32 = (self.bits.astype(np.uint32) << 16).view(np.float32)
        return self._f32


class PackedInt8:
    """A weight B (K, N) for :func:`gemm_int8`: int8 ``values``, per-column float32 ``scale``
    (B ~ values * scale), int64 column sums ``colsum``; on first use MKL's packed copy or the
    emulation's float64 values."""

    def __init__(self, values: np.ndarray, scale: np.ndarray):
        self.values = values
        self.scale = scale
        self.colsum = values.sum(axis=0, dtype=np.int64)
        self.k, self.n = values.shape
        #: the largest magnitude of ``values`` (what MKL must sum exactly: :func:`_int8_exact`)
        self.wmax = int(np.abs(values.astype(np.int16)).max()) if values.size else 0
        self._mkl: np.ndarray | None = None
        self._f64: np.ndarray | None = None
        self._groups: np.ndarray | None = None
        self._terms: dict[tuple[float, int], tuple[np.ndarray, np.ndarray]] = {}

    def mkl(self, fns: _Mkl) -> np.ndarray:
        if self._mkl is None:
            self._mkl = _mkl_pack(fns.s8u8s32_get_size, fns.s8u8s32_pack, self.values)
        return self._mkl

    def groups(self) -> np.ndarray:
        """The weight packed for :func:`.dotgemm.gemm_groups` (on first use)."""
        if self._groups is None:
            self._groups = dotgemm.pack_groups(self.values)
        return self._groups

    def terms(self, x_scale: float, x_zp: int) -> tuple[np.ndarray, np.ndarray]:
        """``(offset, multiplier)`` for A quantised at ``x_scale`` / ``x_zp``: MKL's int32
        column offsets ``-x_zp * colsum`` (|.| <= 255 * 127 * K: they fit), which take the
        zero point off the sums exactly (zero-padded to whole panels: also the ``init`` of
        :func:`.dotgemm.gemm_groups`), and the float32 ``x_scale * scale`` per column.
        Kept per static scale (a layer's are fixed: computing them took 10 us per call)."""
        key = (float(x_scale), int(x_zp))
        got = self._terms.get(key)
        if got is None:
            offset = dotgemm.padded_init(-key[1] * self.colsum, self.n, np.int32)
            got = offset, np.float32(x_scale) * self.scale
            if len(self._terms) < 8:  # dynamic int8's scales change with every input
                self._terms[key] = got
        return got

    def emulated(self) -> np.ndarray:
        if self._f64 is None:
            self._f64 = self.values.astype(np.float64)
        return self._f64


def pack_bf16(w: np.ndarray) -> PackedBF16:
    """B (K, N) rounded to bfloat16 (to nearest, ties to even) for :func:`gemm_bf16`.

    Examples
    --------
    >>> pack_bf16(np.ones((3, 2), np.float32)).bits
    array([[16256, 16256],
           [16256, 16256],
           [16256, 16256]], dtype=uint16)
    """
    w32 = np.asarray(w, dtype=np.float32)
    if w32.ndim != 2:
        raise ShapeError(f"pack_bf16 takes a 2-D (K, N) weight; got shape {w32.shape}")
    bits = np.empty(w32.shape, np.uint16)
    _to_bf16(w32.view(np.uint32), bits)
    return PackedBF16(bits)


def pack_int8(w: np.ndarray) -> PackedInt8:
    """B (K, N) quantised to int8 for :func:`gemm_int8`, one symmetric scale per column
    (:func:`taskflow.ops.quant.quantize_weight_per_channel` along axis 1).

    Examples
    --------
    >>> p = pack_int8(np.array([[0.71, 0.35], [-1.37, 0.123]], np.float32))
    >>> p.values, p.scale
    (array([[  66,  127],
           [-127,   45]], dtype=int8), array([0.0107874 , 0.00275591], dtype=float32))
    """
    w32 = np.asarray(w, dtype=np.float32)
    if w32.ndim != 2:
        raise ShapeError(f"pack_int8 takes a 2-D (K, N) weight; got shape {w32.shape}")
    q, scale = quantize_weight_per_channel(w32, 1)
    return PackedInt8(np.ascontiguousarray(q), scale)


# --- the GEMMs ------------------------------------------------------------------------------
def _operands(a: np.ndarray, packed: PackedBF16 | PackedInt8, out: np.ndarray, name: str,
              dtype: Any = None) -> np.ndarray | None:
    """``a`` after the shapes are checked: as float32 (``dtype`` None: A is converted by the
    caller), or, for an A already converted to ``dtype`` (uint16 bits / uint8 values), with
    contiguous rows. None when ``out`` is already the product (an empty product: nothing to
    write, or K = 0: zeros)."""
    if a.ndim != 2 or (dtype is not None and a.dtype != dtype) or a.shape[1] != packed.k \
            or out.shape != (a.shape[0], packed.n) or out.dtype != np.float32:
        need = "" if dtype is None else f"{np.dtype(dtype)} A and "
        raise ShapeError(f"{name}: A {a.dtype} {a.shape} times a ({packed.k}, {packed.n}) "
                         f"weight needs {need}a float32 output of shape "
                         f"({a.shape[0]}, {packed.n}); got {out.dtype} {out.shape}")
    if a.shape[0] == 0 or packed.n == 0:
        return None
    if a.shape[1] == 0:
        out[...] = 0
        return None
    if dtype is None:
        return a if a.dtype == np.float32 else a.astype(np.float32)
    return a if a.strides[1] == a.itemsize and a.strides[0] % a.itemsize == 0 \
        else np.ascontiguousarray(a)


def _c_matrix(out: np.ndarray) -> tuple[np.ndarray, int]:
    """``(c, ldc)``: ``out`` itself when MKL can write it (contiguous rows), else scratch."""
    m, n = out.shape
    step = out.strides[0] // 4 if m > 1 else n
    if out.strides[1] == 4 and out.strides[0] % 4 == 0 and step >= n and out.flags.writeable:
        return out, step
    return scratch("lowp-c", (m, n), np.float32), n


def gemm_bf16(a: np.ndarray, packed: PackedBF16, out: np.ndarray) -> np.ndarray:
    """``out[...] = bf16(a) @ B`` in float32, B from :func:`pack_bf16`; returns ``out``.

    ``a`` (M, K) float32 of any strides; ``out`` (M, N) float32, a strided view if need be.
    One call on the calling thread (the kernels split rows among their threads).

    Examples
    --------
    >>> b = pack_bf16(np.eye(2, dtype=np.float32))
    >>> gemm_bf16(np.float32([[1.0, 3.14159]]), b, np.empty((1, 2), np.float32))
    array([[1.      , 3.140625]], dtype=float32)
    """
    a = _operands(a, packed, out, "gemm_bf16")
    if a is None:
        return out
    bits = scratch("lowp-a", a.shape, np.uint16)
    _to_bf16(a.view(np.uint32), bits)
    return _gemm_bits(bits, packed, out)


def to_bf16(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The bfloat16 bits (uint16, same shape) of float32 ``a`` (any rank; rounded to nearest,
    ties to even), into ``out`` if given: what :func:`gemm_bf16_bits` multiplies.

    Examples
    --------
    >>> to_bf16(np.float32([1.0, 3.14159]))
    array([16256, 16457], dtype=uint16)
    """
    a = np.asarray(a, np.float32)
    out = np.empty(a.shape, np.uint16) if out is None else out
    flat = a.reshape(1, -1) if a.ndim < 2 else a.reshape(-1, a.shape[-1])
    _to_bf16(flat.view(np.uint32), out.reshape(flat.shape))
    return out


def quantize_u8(a: np.ndarray, x_scale: float, x_zp: int,
                out: np.ndarray | None = None) -> np.ndarray:
    """float32 ``a`` (any rank) quantised to uint8 as :func:`gemm_int8` does, into ``out`` if
    given: what :func:`gemm_u8` multiplies.

    Examples
    --------
    >>> quantize_u8(np.float32([2.0, -1.0, 400.0]), 0.5, 10)
    array([ 14,   8, 255], dtype=uint8)
    """
    a = np.asarray(a, np.float32)
    out = np.empty(a.shape, np.uint8) if out is None else out
    flat = a.reshape(1, -1) if a.ndim < 2 else a.reshape(-1, a.shape[-1])
    _quantize_u8(flat, out.reshape(flat.shape), np.float32(x_scale), np.float32(int(x_zp)))
    return out


def _lda(a: np.ndarray) -> int:
    """The leading dimension (elements) of a 2-D array with contiguous rows."""
    return a.strides[0] // a.itemsize if a.shape[0] > 1 else a.shape[1]


def gemm_bf16_bits(bits: np.ndarray, packed: PackedBF16, out: np.ndarray) -> np.ndarray:
    """``out[...] = A @ B`` in float32 for A given as its bfloat16 bits (M, K) uint16
    (:func:`to_bf16`; a column block of a wider array is read in place), B from
    :func:`pack_bf16`; returns ``out``."""
    bits = _operands(bits, packed, out, "gemm_bf16_bits", np.uint16)
    return out if bits is None else _gemm_bits(bits, packed, out)


def _gemm_bits(bits: np.ndarray, packed: PackedBF16, out: np.ndarray,
               dot: bool | None = None) -> np.ndarray:
    """The bf16 GEMM on MKL or, where ``dot`` (default: :func:`dot_kernels`), .dotgemm."""
    m, k = bits.shape
    fns = _bindings()
    if fns is None:
        return blas.gemm((bits.astype(np.uint32) << 16).view(np.float32), packed.emulated(),
                         out)
    c, ldc = _c_matrix(out)
    if dot_kernels("bf16") if dot is None else dot:
        dotgemm.gemm_groups(bits, packed.groups(), packed.zeros, c, dotgemm.raw_epilogue())
        if c is not out:
            out[...] = c
        return out
    b = packed.mkl(fns)  # a local: the buffer stays alive through the call
    fns.bf16(blas._ROW_MAJOR, blas._NO_TRANS, PACKED, m, packed.n, k, 1.0, bits.ctypes.data,
             _lda(bits), b.ctypes.data, packed.n, 0.0, c.ctypes.data, ldc)
    if c is not out:
        out[...] = c
    return out


def gemm_int8(a: np.ndarray, packed: PackedInt8, out: np.ndarray, x_scale: float,
              x_zp: int) -> np.ndarray:
    """``out[...] = ((q - x_zp) @ B.values) * (x_scale * B.scale)``, ``q`` = ``a`` quantised
    to uint8 (``saturate(round_half_even(a / x_scale) + x_zp)``), B from :func:`pack_int8`;
    returns ``out``.

    ``a`` (M, K) float32 of any strides; ``out`` (M, N) float32, a strided view if need be.
    One call on the calling thread.

    Examples
    --------
    >>> b = pack_int8(np.float32([[0.71, 0.35], [-1.37, 0.123]]))
    >>> gemm_int8(np.float32([[2.0, 1.0]]), b, np.empty((1, 2), np.float32), 0.5, 10)
    array([[0.05393701, 0.82401574]], dtype=float32)
    """
    a = _operands(a, packed, out, "gemm_int8")
    if a is None:
        return out
    q = scratch("lowp-a", a.shape, np.uint8)
    _quantize_u8(a, q, np.float32(x_scale), np.float32(int(x_zp)))
    return _gemm_q(q, packed, out, x_scale, x_zp)


def gemm_u8(q: np.ndarray, packed: PackedInt8, out: np.ndarray, x_scale: float,
            x_zp: int) -> np.ndarray:
    """:func:`gemm_int8` for A already quantised (:func:`quantize_u8`; uint8 (M, K), a
    column block of a wider array read in place); returns ``out``."""
    q = _operands(q, packed, out, "gemm_u8", np.uint8)
    return out if q is None else _gemm_q(q, packed, out, x_scale, x_zp)


def _gemm_q(q: np.ndarray, packed: PackedInt8, out: np.ndarray, x_scale: float,
            x_zp: int, dot: bool | None = None) -> np.ndarray:
    """The int8 GEMM on MKL or, where ``dot`` (default: :func:`dot_kernels`), .dotgemm."""
    m, k = q.shape
    offset, multiplier = packed.terms(x_scale, x_zp)
    dot = dot_kernels("int8") if dot is None else dot
    fns = _bindings() if dot else _mkl_int8_bindings(packed.wmax)
    if fns is None or k > MAX_INT8_K:
        acc = np.matmul(q.astype(np.float64) - int(x_zp), packed.emulated())
    elif dot:
        acc = scratch("lowp-acc", (m, packed.n), np.int32)
        dotgemm.gemm_groups(q, packed.groups(), offset, acc, dotgemm.raw_epilogue())
    else:
        b = packed.mkl(fns)
        acc = scratch("lowp-acc", (m, packed.n), np.int32)
        fns.s8u8(blas._ROW_MAJOR, blas._NO_TRANS, PACKED, ROW_OFFSET, m, packed.n, k, 1.0,
                 q.ctypes.data, _lda(q), 0, b.ctypes.data, packed.n, 0, 0.0, acc.ctypes.data,
                 packed.n, offset.ctypes.data)
    _dequantize(acc, out, multiplier)
    return out


# --- Numba conversions ----------------------------------------------------------------------
@njit(cache=True, nogil=True, error_model="numpy")
def _to_bf16(bits, out):
    """out = the bfloat16 bits of the float32 values whose bits are ``bits`` (2-D uint32):
    round to nearest, ties to even; a NaN stays a (quiet) NaN."""
    for i in range(bits.shape[0]):
        for j in range(bits.shape[1]):
            b = np.int64(bits[i, j])
            nan = (b & 0x7FFFFFFF) > 0x7F800000
            r = ((b >> 16) | 0x40) if nan else (b + 0x7FFF + ((b >> 16) & 1)) >> 16
            out[i, j] = np.uint16(r)


@njit(cache=True, nogil=True, error_model="numpy")
def _quantize_u8(a, q, xs, zp):
    """q = saturate(round_half_even(a / xs) + zp) to [0, 255], in float32 as the reference.

    Rounding adds and subtracts 1.5 * 2**23 (exact ties-to-even below 2**22) after clamping
    to +-512, which changes nothing once saturated; it vectorises where np.rint (float64 in
    Numba) does not.
    """
    magic = np.float32(12582912.0)
    lo, hi = np.float32(-512.0), np.float32(512.0)
    zero, top = np.float32(0.0), np.float32(255.0)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            v = a[i, j] / xs
            v = lo if v < lo else v
            v = hi if v > hi else v
            v = (v + magic) - magic + zp
            v = zero if v < zero else v
            q[i, j] = np.uint8(top if v > top else v)


@njit(cache=True, nogil=True, error_model="numpy")
def _dequantize(acc, out, multiplier):
    """out[i, j] = float32(acc[i, j]) * multiplier[j] (acc: MKL's int32 or the emulation's
    float64, both exact integers)."""
    for i in range(acc.shape[0]):
        row = out[i]
        for j in range(acc.shape[1]):
            row[j] = np.float32(acc[i, j]) * multiplier[j]
