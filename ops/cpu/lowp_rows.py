"""Row blocks of the reduced-precision (bf16 / int8) kernels, each one Numba call without the
GIL: the conversion of the block's operand, oneMKL's reduced GEMM through a function pointer,
the dequantisation and the bias/activation epilogue while the rows are in cache.

- :func:`gemm_rows`: rows of a FusedMatMul/FusedGemm product (:func:`.matmul.lowp_matmul`);
- :func:`conv_rows`: output rows of a one-group convolution (:func:`.conv.conv_nhwc`), whose
  input :func:`convert_input` converted once before: the im2col copies the narrow values.

On a 2-core VM every hand-off to a kernel thread costs ~50 us (a futex wake, then the GIL),
a third of a small bf16 layer, so a task is one call rather than a step per call; and from
Numba a GEMM call costs a few microseconds against ~20 through ctypes. The conversions and
GEMMs themselves are :mod:`.lowp`'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from .blas import _NO_TRANS, _ROW_MAJOR
from .common import run_ranges, scratch
from .dotgemm import gemm_groups, raw_in_njit
from .epilogue import NONE, RELU, empty_operand, epilogue_rows
from .lowp import (
    PACKED,
    ROW_OFFSET,
    PackedBF16,
    PackedInt8,
    _dequantize,
    _quantize_u8,
    _to_bf16,
    dot_kernels,
    mkl_functions,
)
from .movement import im2col

#: Elements per task of :func:`convert_input` (~0.2 ns each): handing a task to a
#: kernel thread costs ~100 us on a 2-core VM (the wake-up and the GIL), a 7x7 or 14x14
#: layer's whole input
CONVERT_TASK_ELEMENTS = 1 << 19
#: Rows per MKL call of a layer with a narrow output (:func:`_narrow_bf16_rows`): its float32
#: block (rows x outputs) stays in L2 between MKL's stores, the epilogue and the conversion
NARROW_ROWS = 512

def gemm_rows(precision: str, a: np.ndarray, packed: PackedBF16 | PackedInt8, y: np.ndarray,
               x_scale: float, x_zp: int,
               epilogue: tuple[np.ndarray, int, Any, Any]) -> Any:
    """A function ``(lo, hi)`` that computes rows ``lo:hi`` of ``y = act(R(a) @ B + bias)``
    (``R``: the bf16 rounding or the int8 quantisation of :func:`.lowp.gemm_bf16` /
    :func:`.lowp.gemm_int8`) in one Numba call without the GIL: the conversion of those rows of
    ``a``, MKL's reduced GEMM, the dequantisation and the epilogue while the rows are in cache.
    ``epilogue`` is ``(bias or an empty vector, activation code, p0, p1)`` in float32.

    None where this does not apply: no MKL reduced GEMMs (the emulation), an int8 K beyond
    :data:`.lowp.MAX_INT8_K`, an empty product, or ``y`` not a C-contiguous float32 (M, N).
    The conversion buffers are the calling thread's scratch: the function is for one
    :func:`.common.run_tasks` call of that thread, its row blocks disjoint.
    """
    m, k = a.shape
    n = packed.n
    fns = mkl_functions(precision, k, getattr(packed, "wmax", 0))
    if fns is None or a.dtype != np.float32 or k != packed.k or y.shape != (m, n) \
            or y.dtype != np.float32 or not y.flags.c_contiguous or m == 0 or k == 0 or n == 0:
        return None
    bias, code, p0, p1 = epilogue
    no_z = empty_operand(np.float32, 2)
    src = a.view(np.uint32) if precision == "bf16" else a
    b, groups = _weights(precision, packed, fns)
    if precision == "bf16":
        bits = scratch("lowp-rows", (m, k), np.uint16)
        return lambda lo, hi: _bf16_rows(fns.bf16_ptr, src, bits, b, groups, packed.zeros, y,
                                         lo, hi, bias, no_z, code, p0, p1)
    q, acc = scratch("lowp-rows", (m, k), np.uint8), scratch("lowp-rows-acc", (m, n), np.int32)
    offset, multiplier = packed.terms(x_scale, x_zp)
    xs, zp = np.float32(x_scale), np.float32(int(x_zp))
    return lambda lo, hi: _int8_rows(fns.s8u8_ptr, src, q, b, groups, acc, offset, y, lo, hi,
                                     xs, zp, multiplier, bias, no_z, code, p0, p1)


def _weights(precision: str, packed: PackedBF16 | PackedInt8, fns) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """``(MKL's packed weight, the weight packed for .dotgemm)``: the second where
    :func:`.lowp.dot_kernels` runs ``precision`` here, else an empty stand-in for the first
    (the row functions take one or the other)."""
    if dot_kernels(precision):
        return empty_operand(np.uint8, 1), packed.groups()
    return packed.mkl(fns), empty_operand(np.int8 if precision == "int8" else np.uint16, 3)


@njit(cache=True, nogil=True, error_model="numpy")
def _bf16_rows(fn, bits, a16, b, groups, zeros, y, lo, hi, bias, no_z, code, p0, p1):
    """Rows lo:hi: ``a16 = bf16(bits)``, MKL's packed bf16 GEMM (or .dotgemm's, with
    ``groups``) into ``y``, the epilogue."""
    n = y.shape[1]
    _to_bf16(bits[lo:hi], a16[lo:hi])
    if _fusable(groups, bias, n, code):  # the epilogue on the sums in registers
        gemm_groups(a16[lo:hi], groups, zeros, y[lo:hi],
                    (bias[:0], bias, no_z, code, np.float32(1), np.float32(0)))
        return
    _gemm_bf16(fn, a16[lo:hi], b, groups, zeros, y[lo:hi], n, n)
    epilogue_rows(y[lo:hi], 0, n, bias, no_z, code, p0, p1, np.float32(1))


@njit(cache=True, nogil=True, error_model="numpy")
def _int8_rows(fn, a, q, b, groups, acc, offset, y, lo, hi, xs, zp, multiplier, bias, no_z,
               code, p0, p1):
    """Rows lo:hi: ``q = u8(a)``, MKL's packed s8u8s32 GEMM (or .dotgemm's, with ``groups``)
    into ``acc`` (the zero point taken off through the column offsets), ``y = acc *
    multiplier``, the epilogue."""
    n = y.shape[1]
    _quantize_u8(a[lo:hi], q[lo:hi], xs, zp)
    if _fusable(groups, bias, n, code):  # the epilogue on the sums in registers
        gemm_groups(q[lo:hi], groups, offset, y[lo:hi], (multiplier, bias, no_z, code, xs, zp))
        return
    _gemm_s8u8(fn, q[lo:hi], b, groups, acc[lo:], offset, n)
    _dequantize(acc[lo:hi], y[lo:hi], multiplier)
    epilogue_rows(y[lo:hi], 0, n, bias, no_z, code, p0, p1, np.float32(1))


def conv_rows(precision: str, x4: np.ndarray, x2d: np.ndarray | None, w, kdim: int,
                  step: int, geometry: tuple, pad, y2d: np.ndarray, c0: int, m: int,
                  bias: np.ndarray | None, z2d: np.ndarray | None, act: tuple[int, float, float],
                  x_scale: float, x_zp: int, y_qparams: tuple[float, int] = (0.0, 0),
                  xf: np.ndarray | None = None):
    """A function ``(r0, r1)`` computing output rows ``r0:r1`` of a one-group bf16 / int8
    convolution in one Numba call without the GIL (:func:`_bf16_conv_rows`,
    :func:`_int8_conv_rows`): the im2col of the converted input ``x4`` (or the rows of the
    1x1 input ``x2d``, or of the float32 1x1 input ``xf`` converted there, row block by row
    block: no pass of its own, and the converted rows stay in cache for MKL), MKL's reduced
    GEMM into ``y2d``'s columns ``c0:c0 + m``, and the epilogue; None where MKL does not run
    this GEMM (the emulation).

    A narrow ``y2d`` (uint16: bf16 bits; uint8: quantised at ``y_qparams``, the consumer's
    scale and zero point) is written by :func:`_narrow_bf16_rows` / :func:`_narrow_int8_rows`
    instead: blocks of :data:`NARROW_ROWS` rows through a float32 scratch that stays in L2.
    An int8 layer's float32 output is written in such blocks too: its int32 sums stay in L2
    and are dequantised in the epilogue's one pass (:func:`_dequant_epilogue`); ResNet-50
    int8, batch 8, in one process: 0.91x the time of one MKL call per task and two passes.
    (A bf16 layer's float32 output in blocks of 256-2048 rows measured the same as one call
    per task.)"""
    fns = mkl_functions(precision, kdim, getattr(w, "wmax", 0))
    if fns is None:
        return None
    kh, kw, s, d, pb, ho, wo = geometry
    f32 = np.float32
    int8 = precision == "int8"
    narrow = (np.uint8 if int8 else np.uint16)
    # the row functions' operands: empty ones for what this layer does not have
    args = (fns.s8u8_ptr if int8 else fns.bf16_ptr, x4,
            empty_operand(narrow, 2) if x2d is None else x2d, _float_source(precision, xf))
    geo = (kh, kw, s[0], s[1], d[0], d[1], pb[0], pb[1], ho, wo)
    b, groups = _weights(precision, w, fns)
    zeros = empty_operand(f32, 1) if int8 else w.zeros
    bias_ = empty_operand(f32, 1) if bias is None else bias
    z_ = empty_operand(f32, 2) if z2d is None else z2d
    code, p0, p1 = act[0], f32(act[1]), f32(act[2])
    xs, zp = f32(x_scale), f32(int(x_zp))
    offset, multiplier = w.terms(x_scale, x_zp) if int8 else \
        (empty_operand(np.int32, 1), empty_operand(f32, 1))
    rows = step if y2d.dtype == np.float32 and not int8 else min(step, NARROW_ROWS)
    cols = (0 if x2d is not None else rows, kdim)
    acc = (rows if int8 else 0, m)
    if y2d.dtype != np.float32:
        ys, yzp = f32(y_qparams[0]), f32(int(y_qparams[1]))
        rows_fn = _narrow_int8_rows if int8 else _narrow_bf16_rows
        return lambda r0, r1: rows_fn(
            *args, scratch("im2col", cols, narrow), pad, r0, r1, *geo, b, groups, zeros,
            scratch("lowp-acc", acc, np.int32), scratch("lowp-c", (rows, m), f32), offset,
            multiplier, y2d, bias_, z_, z2d is not None, code, p0, p1, xs, zp, ys, yzp)
    if not int8:
        return lambda r0, r1: _bf16_conv_rows(
            *args, scratch("im2col", cols, narrow), r0, r1, *geo, b, groups, zeros, y2d, c0, m,
            bias_, z_,
            z2d is not None, code, p0, p1)
    return lambda r0, r1: _int8_conv_rows(
        *args, scratch("im2col", cols, narrow), pad, r0, r1, *geo, b, groups,
        scratch("lowp-acc", acc, np.int32), offset, multiplier, y2d, c0, m, bias_, z_,
        z2d is not None, code, p0, p1, xs, zp)


def _float_source(precision: str, xf: np.ndarray | None) -> np.ndarray:
    """The row functions' ``xf``: a float32 1x1 input they convert themselves (its bits as
    uint32 for bf16), or an empty one."""
    if xf is None:
        return empty_operand(np.uint32 if precision == "bf16" else np.float32, 2)
    return xf.view(np.uint32) if precision == "bf16" else xf


@njit(cache=True, inline="always")
def _slice_operand(x4, x2, xf, cols, r0, r1, kh, kw, sh, sw, dh, dw, ph, pw, ho, wo, pad,
                   xs, zp):
    """A (r1 - r0, K) GEMM operand: rows r0:r1 of the float32 1x1 input ``xf`` converted into
    ``cols`` (bf16 bits from uint32 ``xf``, or uint8 at ``xs`` / ``zp``), rows r0:r1 of the
    converted 1x1 input ``x2``, or (both empty) the im2col of ``x4`` written into ``cols``."""
    if xf.shape[0] > 0:
        a = cols[:r1 - r0]
        if a.itemsize == 1:
            _quantize_u8(xf[r0:r1], a, xs, zp)
        else:
            _to_bf16(xf[r0:r1], a)
        return a
    if x2.shape[0] > 0:
        return x2[r0:r1]
    a = cols[:r1 - r0]
    im2col(x4, a, r0, kh, kw, sh, sw, dh, dw, ph, pw, ho, wo, 1, pad)
    return a


@njit(cache=True, inline="always")
def _gemm_bf16(fn, a, b, groups, zeros, c, ldc, m):
    """``c = a @ B`` through MKL's packed bf16 GEMM ``b`` (or .dotgemm's kernel on
    ``groups``, where it is not empty): ``a`` (rows, K) bf16 bits, ``c`` float32 rows ``ldc``
    apart, ``m`` columns."""
    if groups.shape[0] > 0:
        gemm_groups(a, groups, zeros, c[:, :m], raw_in_njit(zeros))
        return
    k = a.shape[1]
    fn(_ROW_MAJOR, _NO_TRANS, PACKED, a.shape[0], m, k, np.float32(1.0), a.ctypes.data, k,
       b.ctypes.data, m, np.float32(0.0), c.ctypes.data, ldc)


@njit(cache=True, inline="always")
def _gemm_s8u8(fn, a, b, groups, acc, offset, m):
    """The int32 sums of ``a @ B`` through MKL's packed s8u8s32 GEMM ``b`` (or .dotgemm's
    kernel on ``groups``, where it is not empty; the zero point taken off through the column
    ``offset``), into the first rows of ``acc``; returns them."""
    k, rows = a.shape[1], a.shape[0]
    out = acc[:rows]
    if groups.shape[0] > 0:
        gemm_groups(a, groups, offset, out, raw_in_njit(np.empty(0, np.float32)))
        return out
    fn(_ROW_MAJOR, _NO_TRANS, PACKED, ROW_OFFSET, rows, m, k, np.float32(1.0),
       a.ctypes.data, k, np.int8(0), b.ctypes.data, m, np.int8(0), np.float32(0.0),
       out.ctypes.data, m, offset.ctypes.data)
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _bf16_conv_rows(fn, x4, x2, xf, cols, r0, r1, kh, kw, sh, sw, dh, dw, ph, pw, ho, wo, b,
                    groups, zeros, y2d, c0, m, bias, z2d, has_z, code, p0, p1):
    """Rows r0:r1 of a bf16 convolution (see :func:`conv_rows`)."""
    a = _slice_operand(x4, x2, xf, cols, r0, r1, kh, kw, sh, sw, dh, dw, ph, pw, ho, wo,
                       np.uint16(0), np.float32(0), np.float32(0))
    if _fusable(groups, bias, m, code):  # the epilogue on the sums in registers
        gemm_groups(a, groups, zeros, y2d[r0:r1, c0:c0 + m], (
            bias[:0], bias, z2d[r0:r1] if has_z else z2d, code, np.float32(1), np.float32(0)))
        return
    _gemm_bf16(fn, a, b, groups, zeros, y2d[r0:r1, c0:], y2d.shape[1], m)
    epilogue_rows(y2d[r0:r1], c0, m, bias, z2d[r0:r1] if has_z else z2d, code, p0, p1,
                  np.float32(1))


@njit(cache=True, nogil=True, error_model="numpy")
def _int8_conv_rows(fn, x4, x2, xf, cols, pad, r0, r1, kh, kw, sh, sw, dh, dw, ph, pw, ho, wo,
                    b, groups, acc, offset, multiplier, y2d, c0, m, bias, z2d, has_z, code, p0,
                    p1, xs, zp):
    """Rows r0:r1 of an int8 convolution on the quantised input (see :func:`conv_rows`):
    MKL's s8u8s32 into ``acc``, the zero point taken off through the column ``offset``, then
    ``acc * multiplier`` and the epilogue."""
    fused = _fusable(groups, bias, m, code)
    for q0 in range(r0, r1, NARROW_ROWS):  # blocks whose int32 sums stay in L2
        q1 = min(r1, q0 + NARROW_ROWS)
        a = _slice_operand(x4, x2, xf, cols, q0, q1, kh, kw, sh, sw, dh, dw, ph, pw, ho, wo,
                           pad, xs, zp)
        if fused:  # the epilogue on the sums in registers
            gemm_groups(a, groups, offset, y2d[q0:q1, c0:c0 + m],
                        (multiplier, bias, z2d[q0:q1] if has_z else z2d, code, xs, zp))
            continue
        _dequant_epilogue(_gemm_s8u8(fn, a, b, groups, acc, offset, m), y2d[q0:q1], c0,
                          multiplier,
                          bias, z2d[q0:q1] if has_z else z2d, has_z, code, p0, p1)


@njit(cache=True, inline="always")
def _fusable(groups, bias, m, code):
    """Whether .dotgemm's kernel runs this layer (``groups`` not empty) with its epilogue on
    the sums in registers: a bias of all ``m`` columns or none, and no activation or ReLU
    (the others take the separate passes)."""
    return groups.shape[0] > 0 and (bias.shape[0] == m or bias.shape[0] == 0) \
        and (code == NONE or code == RELU)


@njit(cache=True, inline="always")
def _dequant_epilogue(acc, y, c0, multiplier, bias, z, has_z, code, p0, p1):
    """``y[:, c0:c0 + m] = act(acc * multiplier + bias + z)``: in one pass over the rows
    for a bias with no activation or ReLU (ResNet's layers: a pass fewer over each block),
    else the dequantisation then the general epilogue. The same float32 operations in the
    same order either way."""
    m = acc.shape[1]
    if bias.shape[0] != m or (code != NONE and code != RELU):
        _dequantize(acc, y[:, c0:c0 + m], multiplier)
        epilogue_rows(y, c0, m, bias, z, code, p0, p1, np.float32(1))
        return
    zero = np.float32(0)
    for r in range(acc.shape[0]):
        row, a = y[r, c0:c0 + m], acc[r]
        if has_z:
            zr = z[r]
            if code == RELU:
                for j in range(m):
                    v = np.float32(a[j]) * multiplier[j] + bias[j] + zr[j]
                    row[j] = zero if v < zero else v
            else:
                for j in range(m):
                    row[j] = np.float32(a[j]) * multiplier[j] + bias[j] + zr[j]
        elif code == RELU:
            for j in range(m):
                v = np.float32(a[j]) * multiplier[j] + bias[j]
                row[j] = zero if v < zero else v
        else:
            for j in range(m):
                row[j] = np.float32(a[j]) * multiplier[j] + bias[j]


@njit(cache=True, nogil=True, error_model="numpy")
def _narrow_bf16_rows(fn, x4, x2, xf, cols, pad, r0, r1, kh, kw, sh, sw, dh, dw, ph, pw, ho, wo,
                      b, groups, zeros, acc, c, offset, multiplier, y2d, bias, z2d, has_z, code,
                      p0, p1, xs, zp, ys, yzp):
    """Rows r0:r1 of a bf16 convolution whose output goes on narrow: per block of
    :data:`NARROW_ROWS` rows, the block's operand, MKL's GEMM into the float32 ``c``, then
    the epilogue and :func:`_to_narrow`."""
    m = y2d.shape[1]
    for q0 in range(r0, r1, NARROW_ROWS):
        q1 = min(r1, q0 + NARROW_ROWS)
        a = _slice_operand(x4, x2, xf, cols, q0, q1, kh, kw, sh, sw, dh, dw, ph, pw, ho, wo,
                           pad, xs, zp)
        if _fusable(groups, bias, m, code):  # epilogue and bf16 rounding in registers
            gemm_groups(a, groups, zeros, y2d[q0:q1],
                        (bias[:0], bias, z2d[q0:q1] if has_z else z2d, code, ys, yzp))
            continue
        cb = c[:q1 - q0]
        _gemm_bf16(fn, a, b, groups, zeros, cb, m, m)
        epilogue_rows(cb, 0, m, bias, z2d[q0:q1] if has_z else z2d, code, p0, p1,
                      np.float32(1))
        _to_narrow(cb, y2d[q0:q1], ys, yzp)


@njit(cache=True, nogil=True, error_model="numpy")
def _narrow_int8_rows(fn, x4, x2, xf, cols, pad, r0, r1, kh, kw, sh, sw, dh, dw, ph, pw, ho, wo,
                      b, groups, zeros, acc, c, offset, multiplier, y2d, bias, z2d, has_z, code,
                      p0, p1, xs, zp, ys, yzp):
    """:func:`_narrow_bf16_rows` for int8: MKL's s8u8s32 GEMM into ``acc`` (the zero point
    taken off through the column ``offset``), ``c = acc * multiplier``; or .dotgemm's kernel
    with the epilogue and the quantisation on its sums in registers (:func:`_fusable`)."""
    m = y2d.shape[1]
    fused = _fusable(groups, bias, m, code)
    for q0 in range(r0, r1, NARROW_ROWS):
        q1 = min(r1, q0 + NARROW_ROWS)
        a = _slice_operand(x4, x2, xf, cols, q0, q1, kh, kw, sh, sw, dh, dw, ph, pw, ho, wo,
                           pad, xs, zp)
        if fused:
            gemm_groups(a, groups, offset, y2d[q0:q1],
                        (multiplier, bias, z2d[q0:q1] if has_z else z2d, code, ys, yzp))
            continue
        cb = c[:q1 - q0]
        _dequant_epilogue(_gemm_s8u8(fn, a, b, groups, acc, offset, m), cb, 0, multiplier, bias,
                          z2d[q0:q1] if has_z else z2d, has_z, code, p0, p1)
        _to_narrow(cb, y2d[q0:q1], ys, yzp)


@njit(cache=True, inline="always")
def _to_narrow(cb, out, ys, yzp):
    """A block's float32 rows ``cb`` after their epilogue, converted into the narrow ``out``:
    bf16 bits (uint16), or uint8 at ``ys`` / ``yzp`` (the consumer's quantisation, exactly as
    it would quantise a float32 input)."""
    if out.itemsize == 1:
        _quantize_u8(cb, out, ys, yzp)
    else:
        _to_bf16(cb.view(np.uint32), out)


def convert_input(xh: np.ndarray, convert, dtype) -> np.ndarray:
    """C-contiguous NHWC ``xh`` converted by ``convert(rows, out_rows)`` into a new ``dtype``
    array of its shape, image rows over the kernel threads."""
    out = np.empty(xh.shape, dtype)
    n, h = xh.shape[:2]
    x3, o3 = xh.reshape(n * h, -1), out.reshape(n * h, -1)
    run_ranges(lambda lo, hi: convert(x3[lo:hi], o3[lo:hi]), n * h,
               max(1, CONVERT_TASK_ELEMENTS // max(1, x3.shape[1])))
    return out
