"""Reductions: ``Reduce*`` in their opset-18 form and ``ArgMax``/``ArgMin``.

``axes`` is an optional int64 *input*; omitted or empty means "all axes", or "no axes" (the op
then only applies its elementwise steps: ReduceSumSquare squares) when
``noop_with_empty_axes=1``. Reducing over an empty set gives the ONNX identities: 0 for sums and
norms, 1 for ReduceProd, -inf (or the dtype's minimum) for ReduceMax, -inf for ReduceLogSum(Exp)
and nan (0/0, "undefined" in ONNX) for float ReduceMean.

Each ``Reduce*`` is one row of :data:`REDUCTIONS`: an elementwise step before, a ufunc to reduce
with, and an elementwise step after. float16/bfloat16 accumulate in float32; integers keep their
dtype (numpy would widen int32 sums to int64), and integer steps that need floats (sqrt, log)
run in float64 and truncate back, as ONNX Runtime does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .elementwise import HALF_DTYPES, trunc_divide
from .registry import register


def _shape_error(message: str) -> Exception:
    from taskflow.errors import ShapeError

    return ShapeError(message)


def normalize_axes(data: np.ndarray, axes: np.ndarray | None,
                   noop_with_empty_axes: int = 0) -> tuple[int, ...]:
    """Sorted non-negative axes to reduce; ``()`` means reduce nothing."""
    if axes is None or np.asarray(axes).size == 0:
        return () if noop_with_empty_axes else tuple(range(data.ndim))
    found = [int(a) for a in np.asarray(axes).ravel()]
    if any(not -data.ndim <= a < data.ndim for a in found):
        raise _shape_error(f"axes {found!r} out of range for an input of shape {data.shape}; "
                           f"expected values in [{-data.ndim}, {data.ndim - 1}]")
    normalized = sorted(a % data.ndim for a in found)
    if len(set(normalized)) != len(normalized):
        raise _shape_error(f"axes {found!r} name an axis twice (input shape {data.shape})")
    return tuple(normalized)


def _identity(x: np.ndarray) -> np.ndarray:
    return x


@dataclass(frozen=True)
class Reduction:
    """``post(ufunc.reduce(pre(x)))``; ``float_steps`` run integers through float64."""

    ufunc: np.ufunc
    doc: str
    pre: Callable[[np.ndarray], np.ndarray] = _identity
    post: Callable[[np.ndarray], np.ndarray] = _identity
    float_steps: bool = False
    flops_per_element: int = 1


REDUCTIONS: dict[str, Reduction] = {
    "ReduceSum": Reduction(np.add, "sum(x, axes)"),
    "ReduceProd": Reduction(np.multiply, "prod(x, axes)"),
    "ReduceMax": Reduction(np.maximum, "max(x, axes) (nan propagates)"),
    "ReduceMin": Reduction(np.minimum, "min(x, axes) (nan propagates)"),
    "ReduceL1": Reduction(np.add, "sum(|x|, axes)", pre=np.abs, flops_per_element=2),
    "ReduceL2": Reduction(np.add, "sqrt(sum(x^2, axes))", pre=np.square, post=np.sqrt,
                          float_steps=True, flops_per_element=2),
    "ReduceSumSquare": Reduction(np.add, "sum(x^2, axes)", pre=np.square,
                                 flops_per_element=2),
    "ReduceLogSum": Reduction(np.add, "ln(sum(x, axes))", post=np.log, float_steps=True),
}


def _initial(ufunc: np.ufunc, dtype: np.dtype) -> dict[str, Any]:
    """Start value for max/min, so an empty reduction gives -inf (or the dtype's minimum)."""
    if ufunc not in (np.maximum, np.minimum):
        return {}
    low = ufunc is np.maximum
    if dtype == np.bool_:
        return {"initial": not low}
    if dtype.kind in "iu":
        return {"initial": np.iinfo(dtype).min if low else np.iinfo(dtype).max}
    return {"initial": -np.inf if low else np.inf}


def _work_dtype(dtype: np.dtype, float_steps: bool) -> np.dtype:
    if dtype in HALF_DTYPES:
        return np.dtype(np.float32)
    if float_steps and dtype.kind in "iub":
        return np.dtype(np.float64)
    return dtype


def _reduce_flops(per_element: int) -> Callable[..., int]:
    return lambda in_shapes, out_shapes, **attrs: per_element * math.prod(in_shapes[0])


def _make_reduce(name: str, r: Reduction) -> Callable[..., np.ndarray]:
    def reference(data: np.ndarray, axes: np.ndarray | None = None, *, keepdims: int = 1,
                  noop_with_empty_axes: int = 0) -> np.ndarray:
        ax = normalize_axes(data, axes, noop_with_empty_axes)
        x = data.astype(_work_dtype(data.dtype, r.float_steps), copy=False)
        with np.errstate(all="ignore"):
            x = r.pre(x)
            out = r.ufunc.reduce(x, axis=ax, keepdims=bool(keepdims), dtype=x.dtype,
                                 **_initial(r.ufunc, x.dtype))
            out = r.post(out)
        return np.asarray(out).astype(data.dtype, copy=False)

    reference.__name__ = reference.__qualname__ = name.lower()
    reference.__doc__ = r.doc
    return reference


for _name, _r in REDUCTIONS.items():
    register(_name, "reduce", flops=_reduce_flops(_r.flops_per_element))(
        _make_reduce(_name, _r))


@register("ReduceMean", "reduce", flops=_reduce_flops(1))
def reduce_mean(data: np.ndarray, axes: np.ndarray | None = None, *, keepdims: int = 1,
                noop_with_empty_axes: int = 0) -> np.ndarray:
    """sum(x, axes) / count (integers: truncated toward zero)"""
    ax = normalize_axes(data, axes, noop_with_empty_axes)
    count = math.prod(data.shape[a] for a in ax)
    x = data.astype(_work_dtype(data.dtype, False), copy=False)
    total = np.add.reduce(x, axis=ax, keepdims=bool(keepdims), dtype=x.dtype)
    if x.dtype.kind in "iu":
        return np.asarray(trunc_divide(total, np.asarray(count, x.dtype)))
    with np.errstate(all="ignore"):
        return np.asarray(total / count).astype(data.dtype, copy=False)


@register("ReduceLogSumExp", "reduce", flops=_reduce_flops(4))
def reduce_log_sum_exp(data: np.ndarray, axes: np.ndarray | None = None, *, keepdims: int = 1,
                       noop_with_empty_axes: int = 0) -> np.ndarray:
    """ln(sum(exp(x), axes)), computed as m + ln(sum(exp(x - m))) with m = max(x, axes)"""
    ax = normalize_axes(data, axes, noop_with_empty_axes)
    x = data.astype(_work_dtype(data.dtype, True), copy=False)
    with np.errstate(all="ignore"):
        m = np.max(x, axis=ax, keepdims=True, initial=-np.inf)
        m = np.where(np.isfinite(m), m, 0)  # all -inf (or empty): no shift needed
        out = np.log(np.sum(np.exp(x - m), axis=ax, keepdims=True)) + m
    if not keepdims:
        out = np.squeeze(out, axis=ax)
    return np.asarray(out).astype(data.dtype, copy=False)


# --- ArgMax / ArgMin --------------------------------------------------------------------
def _arg_reduce(fn: Callable[..., np.ndarray], data: np.ndarray, axis: int, keepdims: int,
                select_last_index: int) -> np.ndarray:
    if not -data.ndim <= axis < data.ndim:
        raise _shape_error(f"axis {axis!r} out of range for an input of shape {data.shape}; "
                           f"expected a value in [{-data.ndim}, {data.ndim - 1}]")
    axis %= data.ndim
    n = data.shape[axis]
    if n == 0:
        raise _shape_error(f"cannot take the arg-extremum over axis {axis} of size 0 "
                           f"(input shape {data.shape})")
    if select_last_index:
        idx = n - 1 - fn(np.flip(data, axis), axis=axis, keepdims=True)
    else:
        idx = fn(data, axis=axis, keepdims=True)
    if not keepdims:
        idx = np.squeeze(idx, axis=axis)
    return np.asarray(idx, dtype=np.int64)


@register("ArgMax", "reduce")
def argmax(data: np.ndarray, *, axis: int = 0, keepdims: int = 1,
           select_last_index: int = 0) -> np.ndarray:
    """index of max(x) along axis (first one, or last if select_last_index), int64"""
    return _arg_reduce(np.argmax, data, axis, keepdims, select_last_index)


@register("ArgMin", "reduce")
def argmin(data: np.ndarray, *, axis: int = 0, keepdims: int = 1,
           select_last_index: int = 0) -> np.ndarray:
    """index of min(x) along axis (first one, or last if select_last_index), int64"""
    return _arg_reduce(np.argmin, data, axis, keepdims, select_last_index)


# --- along one axis: CumSum, TopK ---------------------------------------------------------
def _one_axis(op: str, data: np.ndarray, axis: Any) -> int:
    """A scalar (or one-element) axis operand, checked against data's rank, made non-negative."""
    values = np.asarray(axis).ravel()
    if values.size != 1:
        raise _shape_error(f"{op} axis {values.tolist()!r} must be one integer")
    a = int(values[0])
    if not -data.ndim <= a < data.ndim:
        raise _shape_error(f"{op} axis {a!r} out of range for an input of shape {data.shape}; "
                           f"expected a value in [{-data.ndim}, {data.ndim - 1}]")
    return a % data.ndim


@register("CumSum", "reduce", flops=_reduce_flops(1))
def cumsum(x: np.ndarray, axis: np.ndarray, *, exclusive: int = 0,
           reverse: int = 0) -> np.ndarray:
    """y[..., i, ...] = sum(x[..., j, ...] for j <= i) along axis (j < i if exclusive; j >= i
    (j > i) if reverse)"""
    a = _one_axis("CumSum", x, axis)
    work = _work_dtype(x.dtype, False)
    src = np.flip(x, a) if reverse else x
    out = np.cumsum(src, axis=a, dtype=work)
    if exclusive:  # shift by one along the axis, 0 first (not cumsum - x: that rounds)
        shifted = np.zeros_like(out)
        dst, src_rows = [slice(None)] * out.ndim, [slice(None)] * out.ndim
        dst[a], src_rows[a] = slice(1, None), slice(None, -1)
        shifted[tuple(dst)] = out[tuple(src_rows)]
        out = shifted
    if reverse:
        out = np.flip(out, a)
    return np.ascontiguousarray(out).astype(x.dtype, copy=False)


def _topk_flops(in_shapes: Any, out_shapes: Any, *, axis: int = -1, **attrs: Any) -> int:
    """A comparison sort: n log2 n comparisons per slice along axis."""
    shape = in_shapes[0]
    n = shape[axis] if shape else 1
    return int(math.prod(shape) * max(math.log2(n), 1)) if n else 0


@register("TopK", "reduce", flops=_topk_flops)
def topk(X: np.ndarray, K: np.ndarray, *, axis: int = -1, largest: int = 1,
         sorted: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(values, int64 indices) of the k largest (smallest) along axis, best first; equal
    values in index order (sorted=0 allows any order: they come sorted)"""
    a = _one_axis("TopK", X, axis)
    ks = np.asarray(K).ravel()
    n = X.shape[a]
    if ks.size != 1 or not 0 <= int(ks[0]) <= n:
        raise _shape_error(f"TopK k={ks.tolist()!r} must be one integer in [0, {n}] (axis {a} "
                           f"of input shape {X.shape})")
    k = int(ks[0])
    if largest:
        # Stable ascending order of the flipped axis, read backwards: descending values with
        # equal ones in increasing index order (and nan first, as the largest).
        order = np.flip(np.argsort(np.flip(X, a), axis=a, kind="stable"), a)
        order = n - 1 - order
    else:
        order = np.argsort(X, axis=a, kind="stable")
    idx = np.take(order, np.arange(k), axis=a).astype(np.int64, copy=False)
    return np.take_along_axis(X, idx, axis=a), idx
