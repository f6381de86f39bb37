"""Reduced-precision GEMMs on the CPU's dot-product instructions, for CPUs where oneMKL does
not use them: uint8 x int8 -> int32 (AVX512-VNNI ``vpdpbusd``) and bf16 x bf16 -> float32
(AVX512-BF16 ``vdpbf16ps``).

Why. oneMKL dispatches its reduced GEMMs by CPU vendor: on an AMD Zen 4 (AVX-512 with VNNI
and BF16, no AMX) its ``cblas_gemm_s8u8s32`` ran at 0.4x its own sgemm and its bf16 GEMM at
0.9x, so :mod:`.lowp`'s int8 and bf16 layers were slower than float32 there, while ONNX Runtime's
int8 model ran at 2.4x its float32 and OpenVINO's bf16 at 2x. One instruction of either kind
does 4 (int8) or 2 (bf16) multiply-adds per 32-bit lane where an FMA does one: measured on that
machine (one thread, GOP/s)::

    rows x K x N       MKL sgemm  MKL s8u8s32  this int8  MKL bf16  this bf16
    784 x 1152 x 128       90         34          459         71        230
    256 x 768 x 768       101         45          456         98        227
    12544 x 576 x 256      86         32          311         77        171
    3136 x 64 x 256        96         32          371         91        208

(``benchmarks/bench_lowp_gemm.py`` prints this table on any machine, the dequantisation
pass included.) That is about the instructions' peak on this core (one 512-bit ``vpdpbusd`` or
``vdpbf16ps`` per cycle): the register block keeps them busy, and B's 64-column block of
K x 64 bytes stays in L2.

The kernel. Both GEMMs are one Numba kernel, :func:`gemm_groups`, specialised by the
operands' types. K is cut in *groups* of 4 bytes: 4 uint8 / int8 values or 2 bf16 values. B
(K, N) is packed once (:func:`pack_groups`) into panels of 16 columns, ``(panels, groups,
64 bytes)``: one panel's group is one 64-byte vector, 16 columns x one group. A row's group
is 4 bytes, broadcast to all 16 lanes; one dot instruction then adds the group's products to
16 accumulators (int32 or float32). The kernel keeps 4 rows x 4 panels (64 columns) of
accumulators in 16 registers, so each group costs 4 vector loads of B, 4 broadcasts of A and
16 dot instructions. Edge rows and panels recompute the last valid one and do not store it;
a K that is not a whole number of groups ends with a group assembled from the row's last
values (B's padding rows are zeros).

What it computes. int8: the exact integer sums ``A @ B + offset`` (``offset`` per column: the
zero point taken off as :mod:`.lowp` does with MKL), like ``cblas_gemm_s8u8s32`` with
weights up to 127 in magnitude: ``vpdpbusd`` neither saturates nor rounds. bf16: each group's
two products are exact in float32 and are added to the float32 accumulator in K order;
``vdpbf16ps`` treats denormal inputs as zero and flushes denormal results (float32
summation-order differences, as MKL's).

The epilogue. The sums can leave the registers finished: an int8 layer's dequantisation,
bias, residual and ReLU, and the quantisation for the next int8 layer, are applied to the 16
accumulators of each store (:func:`finish`, :func:`_quantize`), so the int32 sums never go
to memory and the output is written once, as float32 or as uint8; a bf16 layer's bias,
residual and ReLU likewise, its output float32 or bf16 bits. One thread, 512 x 64 x 256
int8: 44 us for the raw sums, 58 us with dequantisation, bias and ReLU (float32 out).

Elsewhere. Where the CPU lacks the instruction, the intrinsics emit the same arithmetic in
plain LLVM vector operations (the results are identical; the speed is not): :mod:`.lowp`
never chooses these kernels there by itself, and ``TASKFLOW_LOWP=dot`` forces them, which
is how the tests run this file on any machine.
"""

from __future__ import annotations

import llvmlite.binding as llvm_binding
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

from .epilogue import RELU, empty_operand
from .simd import F32x16, add8, clamp8, div8

_I32 = ir.IntType(32)
_V16 = ir.VectorType(_I32, 16)
_F16 = ir.VectorType(ir.FloatType(), 16)
#: Lanes of one vector; bytes of one group; rows and panels of the register block.
LANES, GROUP, ROWS, PANELS = 16, 4, 4, 4

#: LLVM's name for this CPU's features (what Numba compiles for)
_HOST = llvm_binding.get_host_cpu_features()
#: Whether the dot instructions exist here (else the intrinsics emit plain vector code).
HAS_VNNI = bool(_HOST.get("avx512vnni"))
HAS_BF16 = bool(_HOST.get("avx512bf16"))


class _Int32x16(types.Type):
    def __init__(self) -> None:
        super().__init__(name="int32x16")


#: 16 int32 lanes, held in a register (a zmm with AVX-512).
I32x16 = _Int32x16()


@register_model(_Int32x16)
class _Int32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V16)


def _llvm_vector(vt):
    return _V16 if vt == I32x16 else _F16


def _address(context, builder, aryty, ary, indices, index_types):
    """The address of ``ary[indices]`` (any layout, any strides)."""
    arr = context.make_array(aryty)(context, builder, ary)
    idx = [context.cast(builder, i, t, types.intp) for i, t in zip(indices, index_types)]
    return cgutils.get_item_pointer(context, builder, aryty, arr, idx)


def _splat(builder, value, vec):
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(_V16, [0] * LANES))


def _vector_of(arr):
    """The vector type that 16 lanes of ``arr``'s dtype make (int32 / float32), or None."""
    if isinstance(arr, types.Array):
        return {types.int32: I32x16, types.float32: F32x16}.get(arr.dtype)
    return None


@intrinsic
def panel(typingctx, b, p, g):
    """Group ``g`` of panel ``p`` of a packed B (3-D, 64 bytes per group): 16 lanes of 4 bytes."""
    if not isinstance(b, types.Array) or b.ndim != 3:
        return None

    def codegen(context, builder, sig, args):
        zero = ir.Constant(ir.IntType(64), 0)
        ptr = _address(context, builder, sig.args[0], args[0], [args[1], args[2], zero],
                       [sig.args[1], sig.args[2], types.intp])
        return builder.load(builder.bitcast(ptr, _V16.as_pointer()), align=1)

    return I32x16(b, p, g), codegen


@intrinsic
def group(typingctx, a, r, k):
    """The 4 bytes at ``a[r, k]`` (a group of A's row r) in all 16 lanes."""
    if not isinstance(a, types.Array) or a.ndim != 2:
        return None

    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1:], sig.args[1:])
        value = builder.load(builder.bitcast(ptr, _I32.as_pointer()), align=1)
        return _splat(builder, value, _V16)

    return I32x16(a, r, k), codegen


@intrinsic
def splat_group(typingctx, x):
    """The int32 ``x`` (a group's 4 bytes) in all 16 lanes."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, context.cast(builder, args[0], sig.args[0], types.int32), _V16)

    return I32x16(x), codegen


@intrinsic
def vload(typingctx, v, i):
    """The 16 elements ``v[i:i + 16]`` of a 1-D int32 or float32 array as a vector."""
    vt = _vector_of(v)
    if vt is None or v.ndim != 1:
        return None

    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], [args[1]], [sig.args[1]])
        return builder.load(builder.bitcast(ptr, _llvm_vector(vt).as_pointer()), align=4)

    return vt(v, i), codegen


@intrinsic
def as_float(typingctx, v):
    """``v`` as float32 lanes: converted from int32 (exact below 2**24), or itself."""
    if v not in (I32x16, F32x16):
        return None

    def codegen(context, builder, sig, args):
        return builder.sitofp(args[0], _F16) if v == I32x16 else args[0]

    return F32x16(v), codegen


@intrinsic
def fsub(typingctx, a, b):
    """``a - b`` lane by lane."""
    if a != F32x16 or b != F32x16:
        return None

    def codegen(context, builder, sig, args):
        return builder.fsub(args[0], args[1])

    return F32x16(a, b), codegen


@intrinsic
def splat_f32(typingctx, x):
    """The float32 ``x`` in all 16 lanes."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, args[0], _F16)

    return F32x16(x), codegen


def _dpbusd(builder, c, a, b):
    """``c`` plus, per lane, the 4 products of A's uint8 and B's int8 bytes."""
    if HAS_VNNI:
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16] * 3),
                                            "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(fn, [c, a, b])
    bytes64, wide = ir.VectorType(ir.IntType(8), 64), ir.VectorType(_I32, 64)
    prod = builder.mul(builder.zext(builder.bitcast(a, bytes64), wide),
                       builder.sext(builder.bitcast(b, bytes64), wide))
    for j in range(GROUP):
        c = builder.add(c, builder.shuffle_vector(
            prod, prod, ir.Constant(_V16, [GROUP * i + j for i in range(LANES)])))
    return c


def _dpbf16(builder, c, a, b):
    """``c`` plus, per lane, the 2 products of A's and B's bf16 pairs (odd then even, as
    ``vdpbf16ps``)."""
    if HAS_BF16:
        fn = cgutils.get_or_insert_function(builder.module,
                                            ir.FunctionType(_F16, [_F16, _V16, _V16]),
                                            "llvm.x86.avx512bf16.dpbf16ps.512")
        return builder.call(fn, [c, a, b])
    high = ir.Constant(_V16, [-65536] * LANES)  # 0xFFFF0000
    shift = ir.Constant(_V16, [16] * LANES)
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_F16, [_F16] * 3),
                                         "llvm.fma.v16f32")
    for part in (lambda x: builder.and_(x, high), lambda x: builder.shl(x, shift)):
        c = builder.call(fma, [builder.bitcast(part(a), _F16), builder.bitcast(part(b), _F16), c])
    return c


@intrinsic
def dot(typingctx, c, a, b):
    """``c`` plus the products of group vectors ``a`` (A's, broadcast) and ``b`` (B's): int32
    ``c`` takes uint8 x int8 groups, float32 ``c`` bf16 x bf16 pairs."""
    if a != I32x16 or b != I32x16 or c not in (I32x16, F32x16):
        return None
    make = _dpbusd if c == I32x16 else _dpbf16

    def codegen(context, builder, sig, args):
        return make(builder, *args)

    return c(c, a, b), codegen


@njit(cache=True, inline="always")
def _tail_group(a, r, k0, k):
    """The group of A's row ``r`` that starts at ``k0`` and is cut short at ``k``, zero-filled."""
    x = np.int32(0)
    bits = 8 * a.itemsize
    for j in range(k - k0):
        x |= np.int32(a[r, k0 + j]) << (bits * j)
    return splat_group(x)


@njit(cache=True, inline="always")
def _a_group(a, r, g, full, per, k):
    return group(a, r, per * g) if g < full else _tail_group(a, r, per * g, k)


# --- the epilogue, on the accumulators ------------------------------------------------------
def raw_epilogue() -> tuple:
    """The ``ep`` of :func:`gemm_groups` with no multiplier, bias, residual or activation:
    the sums stored as they are (into a float32 ``out`` from int32 sums: converted)."""
    f32 = np.float32
    return (empty_operand(f32, 1), empty_operand(f32, 1), empty_operand(f32, 2), 0, f32(1),
            f32(0))


@njit(cache=True, inline="always")
def _epilogue_scalars(ep):
    """``ep`` as plain numbers for the stores: the addresses of the multiplier, the bias and
    the residual (0 where empty), the residual's row step in bytes, the activation code, the
    scale and the zero point. Inlined code that reads arrays takes and releases references to
    them at every use (atomic counts: 5x the time of the whole GEMM at K = 64, measured), so
    the stores see only these numbers; ``ep`` keeps the arrays alive."""
    mult, bias, z = ep[0], ep[1], ep[2]
    return (mult.ctypes.data if mult.shape[0] > 0 else 0,
            bias.ctypes.data if bias.shape[0] > 0 else 0,
            z.ctypes.data if z.shape[0] > 0 else 0, z.strides[0], ep[3], ep[4], ep[5])


def _mask(builder, count):
    """The lanes below ``count`` (an i64), as a <16 x i1> mask."""
    lanes = ir.Constant(ir.VectorType(ir.IntType(64), LANES), list(range(LANES)))
    wide = ir.VectorType(ir.IntType(64), LANES)
    one = builder.insert_element(ir.Constant(wide, ir.Undefined), count, ir.Constant(_I32, 0))
    return builder.icmp_signed("<", lanes, builder.shuffle_vector(
        one, one, ir.Constant(_V16, [0] * LANES)))


def _masked_load(builder, address, mask):
    """16 float32 from an integer ``address``, the lanes outside ``mask`` zero and unread."""
    ptr = builder.inttoptr(address, _F16.as_pointer())
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_F16, [ptr.type, _I32, mask.type, _F16]),
        "llvm.masked.load.v16f32.p0")
    return builder.call(fn, [ptr, ir.Constant(_I32, 4), mask, ir.Constant(_F16, [0.0] * LANES)])


def _maybe(builder, address, f, compute):
    """``compute(address)`` where the address is not 0 (the operand exists), else ``f``."""
    before = builder.block
    with builder.if_then(builder.icmp_unsigned("!=", address, ir.Constant(address.type, 0))):
        done = compute(address)
        then = builder.block
    merged = builder.phi(f.type)
    merged.add_incoming(done, then)
    merged.add_incoming(f, before)
    return merged


@intrinsic
def finish(typingctx, f, eps, r, c, count):
    """``act(f * mult[c:] + bias[c:] + z[r, c:])`` on ``count`` lanes (up to 16) of float32
    ``f``: the dequantisation and the epilogue of :func:`.lowp_rows._dequant_epilogue`, the
    same float32 operations in the same order (no contraction into FMAs). ``eps`` from
    :func:`_epilogue_scalars`: absent operands skipped, ReLU where the code is RELU."""
    if f != F32x16 or not isinstance(eps, types.BaseTuple) or len(eps) != 7:
        return None

    def codegen(context, builder, sig, args):
        f_, eps_, r_, c_, count_ = args
        r, c, count = (context.cast(builder, v, t, types.int64)
                       for v, t in zip((r_, c_, count_), sig.args[2:]))
        mult, bias, z, zstep, code = (context.cast(builder, builder.extract_value(eps_, i),
                                                   sig.args[1][i], types.int64)
                                      for i in range(5))
        mask = _mask(builder, count)
        col = builder.mul(c, ir.Constant(c.type, 4))

        def at(base):
            return _masked_load(builder, builder.add(base, col), mask)

        f_ = _maybe(builder, mult, f_, lambda a: builder.fmul(f_, at(a)))
        f_ = _maybe(builder, bias, f_, lambda a: builder.fadd(f_, at(a)))
        f_ = _maybe(builder, z, f_, lambda a: builder.fadd(f_, at(
            builder.add(a, builder.mul(r, zstep)))))
        zero = ir.Constant(_F16, [0.0] * LANES)
        relu = builder.select(builder.fcmp_ordered("<", f_, zero), zero, f_)
        return builder.select(builder.icmp_signed("==", code, ir.Constant(code.type, RELU)),
                              relu, f_)

    return F32x16(f, eps, r, c, count), codegen


def _bf16_bits(builder, f):
    """The bfloat16 bits of float32 lanes, as :func:`.lowp._to_bf16`: to nearest, ties to
    even; a NaN stays a quiet NaN."""
    b = builder.bitcast(f, _V16)

    def const(x):
        return ir.Constant(_V16, [x] * LANES)

    odd = builder.and_(builder.lshr(b, const(16)), const(1))
    rounded = builder.lshr(builder.add(builder.add(b, const(0x7FFF)), odd), const(16))
    nan = builder.icmp_unsigned(">", builder.and_(b, const(0x7FFFFFFF)), const(0x7F800000))
    quiet = builder.or_(builder.lshr(b, const(16)), const(0x40))
    return builder.trunc(builder.select(nan, quiet, rounded),
                         ir.VectorType(ir.IntType(16), LANES))


@intrinsic
def put(typingctx, out, r, c, v, count):
    """``out[r, c:c + count] = v[:count]`` (a masked store): int32 or float32 lanes into an
    ``out`` of their type, float32 lanes holding 0 to 255 into a uint8 ``out``, float32
    lanes as their bfloat16 bits into a uint16 ``out``."""
    if not isinstance(out, types.Array) or out.ndim != 2 or (out.dtype, v) not in (
            (types.int32, I32x16), (types.float32, F32x16), (types.uint8, F32x16),
            (types.uint16, F32x16)):
        return None

    def codegen(context, builder, sig, args):
        ptr = _address(context, builder, sig.args[0], args[0], args[1:3], sig.args[1:3])
        value = args[3]
        if sig.args[0].dtype == types.uint8:
            value = builder.fptoui(value, ir.VectorType(ir.IntType(8), LANES))
        elif sig.args[0].dtype == types.uint16:
            value = _bf16_bits(builder, value)
        mask = _mask(builder, context.cast(builder, args[4], sig.args[4], types.int64))
        target = builder.bitcast(ptr, value.type.as_pointer())
        kind = {types.uint8: "i8", types.uint16: "i16", types.float32: "f32",
                types.int32: "i32"}[sig.args[0].dtype]
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [value.type, target.type, _I32,
                                                             mask.type]),
            f"llvm.masked.store.v16{kind}.p0")
        builder.call(fn, [value, target, ir.Constant(_I32, 1), mask])
        return context.get_dummy_value()

    return types.void(out, r, c, v, count), codegen


def _quantize(f, scale, zero_point):
    """float32 lanes quantised as :func:`.lowp._quantize_u8` does, as float32 lanes holding
    0 to 255."""


@overload(_quantize, inline="always")
def _quantize_impl(f, scale, zero_point):
    def impl(f, scale, zero_point):
        magic = splat_f32(np.float32(12582912.0))
        v = div8(f, splat_f32(scale))
        v = clamp8(v, splat_f32(np.float32(-512.0)), splat_f32(np.float32(512.0)))
        v = add8(fsub(add8(v, magic), magic), splat_f32(zero_point))
        return clamp8(v, splat_f32(np.float32(0.0)), splat_f32(np.float32(255.0)))
    return impl


def _store(out, r, c, n, v, eps):
    """Stores the 16 sums ``v`` into ``out[r, c:]`` (fewer where ``c + 16 > n``): as they are
    into an ``out`` of their type, else through :func:`finish` into a float32 ``out`` (or a
    uint16 one, as bf16 bits), and on through :func:`_quantize` into a uint8 one."""


@overload(_store, inline="always")
def _store_impl(out, r, c, n, v, eps):
    if not isinstance(out, types.Array):
        return None
    if out.dtype == types.int32:
        def raw(out, r, c, n, v, eps):
            put(out, r, c, v, min(LANES, n - c))
        return raw
    if out.dtype == types.float32 or out.dtype == types.uint16:  # uint16: bf16 bits
        def finished(out, r, c, n, v, eps):
            count = min(LANES, n - c)
            put(out, r, c, finish(as_float(v), eps, r, c, count), count)
        return finished
    if out.dtype == types.uint8:
        def quantised(out, r, c, n, v, eps):
            count = min(LANES, n - c)
            put(out, r, c, _quantize(finish(as_float(v), eps, r, c, count), eps[5], eps[6]),
                count)
        return quantised
    return None


@njit(cache=True, inline="always")
def _store_row(out, r, p0, panels, n, eps, v0, v1, v2, v3):
    _store(out, r, LANES * p0, n, v0, eps)
    if p0 + 1 < panels:
        _store(out, r, LANES * (p0 + 1), n, v1, eps)
    if p0 + 2 < panels:
        _store(out, r, LANES * (p0 + 2), n, v2, eps)
    if p0 + 3 < panels:
        _store(out, r, LANES * (p0 + 3), n, v3, eps)


@njit(cache=True, nogil=True, error_model="numpy")
def gemm_groups(a, b, init, out, ep):
    """``out[r, :] = E(init[:n] + A[r] @ B)`` for every row: ``a`` (M, K) uint8 (int8 B, int32
    ``init``) or uint16 bf16 bits (bf16 B, float32 ``init``); ``b`` from :func:`pack_groups`;
    ``init`` padded to whole panels; ``out`` (M, N), any strides with contiguous rows.

    ``E`` by ``out``'s dtype: the sums as they are where it is theirs (int32 / float32;
    ``ep`` from :func:`raw_epilogue`); into a float32 ``out`` from int32 sums, or with ``ep``
    not raw, the epilogue ``act(sums * multiplier + bias + z[r])`` (``ep`` = ``(multiplier,
    bias, z, act code, scale, zero point)``, empty operands skipped, act NONE or RELU); into
    a uint8 ``out``, that quantised at ``ep``'s scale and zero point (as
    :func:`.lowp._quantize_u8`). ``multiplier`` and ``bias`` are contiguous with N elements,
    ``z`` is (M, N) with contiguous rows. Bit for bit what :func:`.lowp_rows._dequant_epilogue`
    then :func:`.lowp_rows._to_narrow` compute from the same sums. A panel cut short by N is
    read and written through masked loads and stores."""
    m, k = a.shape
    panels, groups = b.shape[0], b.shape[1]
    n = out.shape[1]
    eps = _epilogue_scalars(ep)
    per = GROUP // a.itemsize
    full = k // per
    for p0 in range(0, panels, PANELS):
        q1, q2, q3 = min(p0 + 1, panels - 1), min(p0 + 2, panels - 1), min(p0 + 3, panels - 1)
        i0, i1 = vload(init, LANES * p0), vload(init, LANES * q1)
        i2, i3 = vload(init, LANES * q2), vload(init, LANES * q3)
        for r0 in range(0, m, ROWS):
            r1, r2, r3 = min(r0 + 1, m - 1), min(r0 + 2, m - 1), min(r0 + 3, m - 1)
            c00, c01, c02, c03 = i0, i1, i2, i3
            c10, c11, c12, c13 = i0, i1, i2, i3
            c20, c21, c22, c23 = i0, i1, i2, i3
            c30, c31, c32, c33 = i0, i1, i2, i3
            for g in range(groups):
                b0, b1, b2, b3 = panel(b, p0, g), panel(b, q1, g), panel(b, q2, g), panel(b, q3, g)
                a0 = _a_group(a, r0, g, full, per, k)
                c00, c01 = dot(c00, a0, b0), dot(c01, a0, b1)
                c02, c03 = dot(c02, a0, b2), dot(c03, a0, b3)
                a1 = _a_group(a, r1, g, full, per, k)
                c10, c11 = dot(c10, a1, b0), dot(c11, a1, b1)
                c12, c13 = dot(c12, a1, b2), dot(c13, a1, b3)
                a2 = _a_group(a, r2, g, full, per, k)
                c20, c21 = dot(c20, a2, b0), dot(c21, a2, b1)
                c22, c23 = dot(c22, a2, b2), dot(c23, a2, b3)
                a3 = _a_group(a, r3, g, full, per, k)
                c30, c31 = dot(c30, a3, b0), dot(c31, a3, b1)
                c32, c33 = dot(c32, a3, b2), dot(c33, a3, b3)
            _store_row(out, r0, p0, panels, n, eps, c00, c01, c02, c03)
            if r0 + 1 < m:
                _store_row(out, r0 + 1, p0, panels, n, eps, c10, c11, c12, c13)
            if r0 + 2 < m:
                _store_row(out, r0 + 2, p0, panels, n, eps, c20, c21, c22, c23)
            if r0 + 3 < m:
                _store_row(out, r0 + 3, p0, panels, n, eps, c30, c31, c32, c33)


def pack_groups(b: np.ndarray) -> np.ndarray:
    """B (K, N) int8 or uint16 (bf16 bits) packed for :func:`gemm_groups`: ``(ceil(N / 16),
    ceil(K / per), 64 // itemsize)`` of B's dtype, ``per`` values of a column per group (4
    int8, 2 bf16), zero-padded.

    Examples
    --------
    >>> pack_groups(np.arange(8, dtype=np.int8).reshape(4, 2))[0, 0, :8]
    array([0, 2, 4, 6, 1, 3, 5, 7], dtype=int8)
    """
    k, n = b.shape
    per = GROUP // b.itemsize
    groups, panels = -(-k // per), -(-n // LANES)
    padded = np.zeros((groups * per, panels * LANES), b.dtype)
    padded[:k, :n] = b
    # (groups, per, panels, 16) -> (panels, groups, 16, per)
    return np.ascontiguousarray(padded.reshape(groups, per, panels, LANES).transpose(2, 0, 3, 1)
                                ).reshape(panels, groups, LANES * per)


def padded_init(values: np.ndarray | None, n: int, dtype) -> np.ndarray:
    """``values`` (N, or zeros where None) padded with zeros to whole panels: the ``init`` of
    :func:`gemm_groups`."""
    out = np.zeros(-(-n // LANES) * LANES, dtype)
    if values is not None:
        out[:n] = values
    return out


@njit(cache=True, inline="always")
def raw_in_njit(like):
    """:func:`raw_epilogue` made inside a Numba function (``like``: any 1-D float32 array)."""
    return (like[:0], like[:0], np.empty((0, 0), np.float32), 0, np.float32(1), np.float32(0))
