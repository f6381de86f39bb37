"""Float32 vectors inside Numba kernels: register-held types of 8 and 16 lanes and their
operations.

Numba has no vector type, and LLVM keeps an accumulator in a register only when it is a
plain SSA value. An accumulator that lives in an array (``acc[k] += x * w``) costs a load
and a store for every multiply-add. So loops that sum many taps into few outputs run
load-bound: depthwise convolutions and the 3-channel first convolutions. Keeping four output
pixels' accumulators in registers is register blocking, and it needs a value that *is* a
vector register.

:data:`F32x8` and :data:`F32x16` are such values: Numba types whose LLVM representation is
``<8 x float>`` / ``<16 x float>``, so they travel through locals, loop-carried variables and
phis as one register (a ymm or zmm where the CPU has them; LLVM splits a wider type into the
registers the CPU has, so nothing here assumes AVX). These intrinsics make and use them:

- :func:`load8` and :func:`store8`: 8 consecutive float32 of a C-contiguous 1-D array from a
  flat index, unaligned; :func:`vload` loads as many lanes as its ``tag`` (below) has;
  :func:`store8` stores a vector of either width;
- :func:`splat8` / :func:`vsplat`: one float32 in every lane; :func:`broadcast8` /
  :func:`vbroadcast`: one array element in every lane;
- :func:`fma8`: ``a * b + c`` as ``llvm.fmuladd``, fused where the CPU has FMA, a multiply
  and an add where it does not;
- :func:`add8`, :func:`mul8` and :func:`clamp8`: what the fused activations need;
- :func:`max8` and :func:`lane8`: lane-wise maxima and one lane's value, for row reductions
  (softmax's maximum and sum) that LLVM does not vectorise by itself (a float reduction in
  order is a chain of dependent operations);
- :func:`prefetch`: a hint to bring one cache line into L1 ahead of its use, for kernels that
  read several rows at once, which the hardware prefetchers do not follow.

The operations (fma8 to lane8, store8) take vectors of either width, the "8" in their names
notwithstanding. A kernel written once for both widths takes a *tag*, a tuple of ``lanes``
zeros (:func:`lanes_tag`), and makes its vectors with :func:`vload`, :func:`vsplat` and
:func:`vbroadcast`: the tuple's length is part of its Numba type, so each width compiles
(and caches) as its own specialisation, and ``len(tag)`` is a constant in it.

They do no bounds checks: the caller guarantees ``0 <= i`` and ``i + lanes <= len(array)``.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, models, register_model

_I32 = ir.IntType(32)


def _vec(lanes: int) -> ir.VectorType:
    return ir.VectorType(ir.FloatType(), lanes)


class _Float32xN(types.Type):
    def __init__(self, lanes: int) -> None:
        self.lanes = lanes
        super().__init__(name=f"float32x{lanes}")


#: The 8-lane float32 vector type (a value, held in registers).
F32x8 = _Float32xN(8)
#: The 16-lane one (a zmm register with AVX-512; two ymm on AVX2).
F32x16 = _Float32xN(16)
_BY_LANES = {8: F32x8, 16: F32x16}


@register_model(_Float32xN)
class _Float32xNModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _vec(fe_type.lanes))


def lanes_tag(lanes: int) -> tuple[int, ...]:
    """The tag that makes :func:`vload`, :func:`vsplat` and :func:`vbroadcast` build vectors of
    ``lanes`` (8 or 16) lanes: a tuple of that many zeros."""
    if lanes not in _BY_LANES:
        raise ValueError(f"vectors have 8 or 16 lanes, not {lanes}")
    return (0,) * lanes


def _tagged(tag):
    """The vector type a tag argument asks for, or None."""
    if isinstance(tag, types.UniTuple) and tag.count in _BY_LANES:
        return _BY_LANES[tag.count]
    return None


def _vector(*vs):
    """The vector type all of ``vs`` share, or None."""
    first = vs[0]
    if isinstance(first, _Float32xN) and all(v == first for v in vs):
        return first
    return None


def _element_pointer(context, builder, sig, args):
    """The address of ``arr[i]`` for an intrinsic called as ``(arr, i, ...)``."""
    idx = context.cast(builder, args[1], sig.args[1], types.intp)
    data = context.make_array(sig.args[0])(context, builder, args[0]).data
    return builder.gep(data, [idx], inbounds=True)


def _splat(builder, value, lanes):
    """``value`` (a float) in every lane."""
    vec = _vec(lanes)
    one = builder.insert_element(ir.Constant(vec, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(_I32, lanes),
                                                        [0] * lanes))


def _is_flat_float32(arr) -> bool:
    return isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.ndim == 1 \
        and arr.layout == "C"


def _from_element(vt, arr, i, read):
    """The codegen of an intrinsic called as ``(arr, i, ...)`` that makes a ``vt`` vector by
    ``read(builder, address of arr[i], lanes)``; None for other argument types."""
    if not _is_flat_float32(arr) or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return read(builder, _element_pointer(context, builder, sig, args), vt.lanes)

    return codegen


def _read_vector(builder, ptr, lanes):
    """``lanes`` consecutive float32 from ``ptr``, unaligned."""
    return builder.load(builder.bitcast(ptr, _vec(lanes).as_pointer()), align=4)


def _read_splat(builder, ptr, lanes):
    """The float32 at ``ptr`` in every lane."""
    return _splat(builder, builder.load(ptr), lanes)


@intrinsic
def load8(typingctx, arr, i):
    """The 8 float32 ``arr[i:i + 8]`` as a vector."""
    codegen = _from_element(F32x8, arr, i, _read_vector)
    return None if codegen is None else (F32x8(arr, i), codegen)


@intrinsic
def vload(typingctx, arr, i, tag):
    """The ``len(tag)`` float32 from ``arr[i]`` as a vector."""
    vt = _tagged(tag)
    codegen = None if vt is None else _from_element(vt, arr, i, _read_vector)
    return None if codegen is None else (vt(arr, i, tag), codegen)


@intrinsic
def store8(typingctx, arr, i, v):
    """``arr[i:i + lanes] = v`` (a vector of either width)."""
    if not _is_flat_float32(arr) or not isinstance(i, types.Integer) or _vector(v) is None:
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig, args)
        builder.store(args[2], builder.bitcast(ptr, _vec(v.lanes).as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(arr, i, v), codegen


@intrinsic
def splat8(typingctx, x):
    """``x`` (a float32) in all 8 lanes."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, args[0], 8)

    return F32x8(x), codegen


@intrinsic
def vsplat(typingctx, x, tag):
    """``x`` (a float32) in all ``len(tag)`` lanes."""
    vt = _tagged(tag)
    if x != types.float32 or vt is None:
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, args[0], vt.lanes)

    return vt(x, tag), codegen


@intrinsic
def broadcast8(typingctx, arr, i):
    """``arr[i]`` in all 8 lanes (one broadcast load; no wrap-around check on ``i``)."""
    codegen = _from_element(F32x8, arr, i, _read_splat)
    return None if codegen is None else (F32x8(arr, i), codegen)


@intrinsic
def vbroadcast(typingctx, arr, i, tag):
    """``arr[i]`` in all ``len(tag)`` lanes."""
    vt = _tagged(tag)
    codegen = None if vt is None else _from_element(vt, arr, i, _read_splat)
    return None if codegen is None else (vt(arr, i, tag), codegen)


@intrinsic
def fma8(typingctx, a, b, c):
    """``a * b + c`` lane by lane."""
    vt = _vector(a, b, c)
    if vt is None:
        return None

    def codegen(context, builder, sig, args):
        module = builder.module
        name = f"llvm.fmuladd.v{vt.lanes}f32"
        fn = module.globals.get(name)
        if fn is None:
            vec = _vec(vt.lanes)
            fn = ir.Function(module, ir.FunctionType(vec, [vec] * 3), name)
        return builder.call(fn, list(args))

    return vt(a, b, c), codegen


def _binary(name: str, op: str):
    @intrinsic
    def fn(typingctx, a, b):
        vt = _vector(a, b)
        if vt is None:
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])

        return vt(a, b), codegen

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"``a {dict(fadd='+', fmul='*', fdiv='/')[op]} b`` lane by lane."
    return fn


add8 = _binary("add8", "fadd")
mul8 = _binary("mul8", "fmul")
div8 = _binary("div8", "fdiv")


@intrinsic
def clamp8(typingctx, v, lo, hi):
    """``lo if v < lo``, then ``hi if v > hi``, else ``v``, lane by lane: the activations'
    selects, so a nan lane stays nan (as ``zero if v < zero else v`` does)."""
    vt = _vector(v, lo, hi)
    if vt is None:
        return None

    def codegen(context, builder, sig, args):
        v_, lo_, hi_ = args
        low = builder.select(builder.fcmp_ordered("<", v_, lo_), lo_, v_)
        return builder.select(builder.fcmp_ordered(">", low, hi_), hi_, low)

    return vt(v, lo, hi), codegen


@intrinsic
def max8(typingctx, a, b):
    """``a if a > b else b`` lane by lane (``maxps``: where either lane is nan, ``b``'s)."""
    vt = _vector(a, b)
    if vt is None:
        return None

    def codegen(context, builder, sig, args):
        return builder.select(builder.fcmp_ordered(">", args[0], args[1]), args[0], args[1])

    return vt(a, b), codegen


@intrinsic
def nanmax8(typingctx, a, b):
    """``np.maximum(a, b)`` lane by lane: the larger, or nan where either lane is nan."""
    vt = _vector(a, b)
    if vt is None:
        return None

    def codegen(context, builder, sig, args):
        a_, b_ = args
        larger = builder.select(builder.fcmp_ordered(">", a_, b_), a_, b_)  # b's where nan
        return builder.select(builder.fcmp_unordered("uno", a_, a_), a_, larger)

    return vt(a, b), codegen


@intrinsic
def lane8(typingctx, v, k):
    """Lane ``k`` (0 to lanes - 1) of ``v`` as a float32."""
    if _vector(v) is None or not isinstance(k, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], context.cast(builder, args[1], sig.args[1],
                                                             types.int32))

    return types.float32(v, k), codegen


@intrinsic
def copy32(typingctx, dst, src):
    """The 32 bytes at address ``src`` copied to address ``dst`` (integers, as from
    ``arr.ctypes.data``), unaligned: one vector load and store where a loop would move a few
    bytes per step. The caller guarantees that both ranges lie in memory it owns."""
    if not isinstance(dst, types.Integer) or not isinstance(src, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        vec = ir.VectorType(ir.IntType(8), 32).as_pointer()
        d, s = (builder.inttoptr(context.cast(builder, v, t, types.intp), vec)
                for v, t in zip(args, sig.args))
        builder.store(builder.load(s, align=1), d, align=1)
        return context.get_dummy_value()

    return types.void(dst, src), codegen


@intrinsic
def prefetch(typingctx, arr, i):
    """A hint to load the cache line holding ``arr[i]`` (a 1-D C-contiguous float32 array)
    into L1 for reading (``llvm.prefetch``: ``prefetcht0`` on x86). A hint never faults, but
    the caller keeps ``i`` in bounds anyway."""
    if not _is_flat_float32(arr) or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        i8p = ir.IntType(8).as_pointer()
        fn = builder.module.declare_intrinsic(
            "llvm.prefetch", fnty=ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]))
        ptr = _element_pointer(context, builder, sig, args)
        # read (0), highest locality (3: all cache levels), data cache (1)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(_I32, 0),
                          ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.void(arr, i), codegen
