"""Eight-lane float32 vectors inside Numba kernels: a register-held type and its operations.

Numba has no vector type, and LLVM keeps an accumulator in a register only when it is a
plain SSA value. An accumulator that lives in an array (``acc[k] += x * w``) costs a load
and a store for every multiply-add. So loops that sum many taps into few outputs run
load-bound: depthwise convolutions and the 3-channel first convolutions. Keeping four output
pixels' accumulators in registers is register blocking, and it needs a value that *is* a
vector register.

:data:`F32x8` is that value: a Numba type whose LLVM representation is ``<8 x float>``, so
it travels through locals, loop-carried variables and phis as one register (a ymm on AVX2,
a pair of xmm on SSE-only x86-64 or NEON: LLVM splits the type, nothing here assumes AVX).
These intrinsics make and use it:

- :func:`load8` and :func:`store8`: 8 consecutive float32 of a C-contiguous 1-D array from a
  flat index, unaligned;
- :func:`splat8`: one float32 in every lane; :func:`broadcast8`: one array element in every
  lane;
- :func:`fma8`: ``a * b + c`` as ``llvm.fmuladd``, fused where the CPU has FMA, a multiply
  and an add where it does not;
- :func:`add8`, :func:`mul8` and :func:`clamp8`: what the fused activations need;
- :func:`max8` and :func:`lane8`: lane-wise maxima and one lane's value, for row reductions
  (softmax's maximum and sum) that LLVM does not vectorise by itself (a float reduction in
  order is a chain of dependent operations).

They do no bounds checks: the caller guarantees ``0 <= i`` and ``i + 8 <= len(array)``.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, models, register_model

_LANES = 8
_VEC = ir.VectorType(ir.FloatType(), _LANES)
_I32 = ir.IntType(32)


class _Float32x8(types.Type):
    def __init__(self) -> None:
        super().__init__(name="float32x8")


#: The 8-lane float32 vector type (a value, held in registers).
F32x8 = _Float32x8()


@register_model(_Float32x8)
class _Float32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


def _element_pointer(context, builder, sig, args):
    """The address of ``arr[i]`` for an intrinsic called as ``(arr, i, ...)``."""
    idx = context.cast(builder, args[1], sig.args[1], types.intp)
    data = context.make_array(sig.args[0])(context, builder, args[0]).data
    return builder.gep(data, [idx], inbounds=True)


def _splat(builder, value):
    """``value`` (a float) in every lane."""
    one = builder.insert_element(ir.Constant(_VEC, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(_I32, _LANES),
                                                        [0] * _LANES))


def _is_flat_float32(arr) -> bool:
    return isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.ndim == 1 \
        and arr.layout == "C"


@intrinsic
def load8(typingctx, arr, i):
    """The 8 float32 ``arr[i:i + 8]`` as a vector."""
    if not _is_flat_float32(arr) or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig, args)
        return builder.load(builder.bitcast(ptr, _VEC.as_pointer()), align=4)

    return F32x8(arr, i), codegen


@intrinsic
def store8(typingctx, arr, i, v):
    """``arr[i:i + 8] = v``."""
    if not _is_flat_float32(arr) or not isinstance(i, types.Integer) or v != F32x8:
        return None

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig, args)
        builder.store(args[2], builder.bitcast(ptr, _VEC.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.void(arr, i, v), codegen


@intrinsic
def splat8(typingctx, x):
    """``x`` (a float32) in all 8 lanes."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, args[0])

    return F32x8(x), codegen


@intrinsic
def broadcast8(typingctx, arr, i):
    """``arr[i]`` in all 8 lanes (one broadcast load; no wrap-around check on ``i``)."""
    if not _is_flat_float32(arr) or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return _splat(builder, builder.load(_element_pointer(context, builder, sig, args)))

    return F32x8(arr, i), codegen


@intrinsic
def fma8(typingctx, a, b, c):
    """``a * b + c`` lane by lane."""
    if not a == b == c == F32x8:
        return None

    def codegen(context, builder, sig, args):
        module = builder.module
        fn = module.globals.get("llvm.fmuladd.v8f32")
        if fn is None:
            fn = ir.Function(module, ir.FunctionType(_VEC, [_VEC] * 3), "llvm.fmuladd.v8f32")
        return builder.call(fn, list(args))

    return F32x8(a, b, c), codegen


def _binary(name: str, op: str):
    @intrinsic
    def fn(typingctx, a, b):
        if not a == b == F32x8:
            return None

        def codegen(context, builder, sig, args):
            return getattr(builder, op)(args[0], args[1])

        return F32x8(a, b), codegen

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"``a {'+' if op == 'fadd' else '*'} b`` lane by lane."
    return fn


add8 = _binary("add8", "fadd")
mul8 = _binary("mul8", "fmul")


@intrinsic
def clamp8(typingctx, v, lo, hi):
    """``lo if v < lo``, then ``hi if v > hi``, else ``v``, lane by lane: the activations'
    selects, so a nan lane stays nan (as ``zero if v < zero else v`` does)."""
    if not v == lo == hi == F32x8:
        return None

    def codegen(context, builder, sig, args):
        v_, lo_, hi_ = args
        low = builder.select(builder.fcmp_ordered("<", v_, lo_), lo_, v_)
        return builder.select(builder.fcmp_ordered(">", low, hi_), hi_, low)

    return F32x8(v, lo, hi), codegen


@intrinsic
def max8(typingctx, a, b):
    """``a if a > b else b`` lane by lane (``maxps``: where either lane is nan, ``b``'s)."""
    if not a == b == F32x8:
        return None

    def codegen(context, builder, sig, args):
        return builder.select(builder.fcmp_ordered(">", args[0], args[1]), args[0], args[1])

    return F32x8(a, b), codegen


@intrinsic
def lane8(typingctx, v, k):
    """Lane ``k`` (0-7) of ``v`` as a float32."""
    if v != F32x8 or not isinstance(k, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        return builder.extract_element(args[0], context.cast(builder, args[1], sig.args[1],
                                                             types.int32))

    return types.float32(v, k), codegen
