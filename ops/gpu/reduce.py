"""gpu kernels of the reductions: every ``Reduce*`` of :data:`taskflow.ops.reduce.REDUCTIONS`,
ReduceMean, ReduceLogSumExp, ArgMax and ArgMin.

Each ``Reduce*`` is its table row on ``xp``: the pre- and post-steps are the same ufuncs looked
up by name, the reduction is ``xp.sum``/``prod``/``max``/``min`` in the working dtype (so int32
sums stay int32). CuPy's max and min take no ``initial``: an empty max or min is filled with
the reference's identity instead.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import reduce as ref
from ..device import to_host
from ..elementwise import HALF_DTYPES
from .common import gpu_kernel, operands
from .elementwise import trunc_divide

#: The reference's reduction ufunc -> the module function doing it.
REDUCERS = {np.add: "sum", np.multiply: "prod", np.maximum: "max", np.minimum: "min"}


def _reduce(xp: Any, x: Any, how: np.ufunc, axes: tuple[int, ...], keepdims: bool) -> Any:
    """``how.reduce(x, axes)`` as the reference computes it, ``axes=()`` reducing nothing."""
    if not axes:
        return x
    if how in (np.maximum, np.minimum) and any(x.shape[a] == 0 for a in axes):
        shape = [1 if a in axes else d for a, d in enumerate(x.shape)] if keepdims else \
            [d for a, d in enumerate(x.shape) if a not in axes]
        return xp.full(shape, ref._initial(how, x.dtype)["initial"], dtype=x.dtype)
    fn = getattr(xp, REDUCERS[how])
    if how in (np.add, np.multiply):
        return fn(x, axis=axes, keepdims=keepdims, dtype=x.dtype)
    return fn(x, axis=axes, keepdims=keepdims)


def _step(xp: Any, fn: Any, x: Any) -> Any:
    return x if fn is ref._identity else getattr(xp, fn.__name__)(x)


def _make(r: ref.Reduction) -> Any:
    def kernel(data: Any, axes: Any = None, *, keepdims: int = 1,
               noop_with_empty_axes: int = 0) -> Any:
        xp, (data,) = operands(data)
        ax = ref.normalize_axes(data, to_host(axes), noop_with_empty_axes)
        x = data.astype(ref._work_dtype(data.dtype, r.float_steps), copy=False)
        x = _step(xp, r.pre, x)
        out = _reduce(xp, x, r.ufunc, ax, bool(keepdims))
        return _step(xp, r.post, out).astype(data.dtype, copy=False)

    return kernel


for _name, _r in ref.REDUCTIONS.items():
    gpu_kernel(_name, _make(_r))


@gpu_kernel("ReduceMean")
def reduce_mean_gpu(data: Any, axes: Any = None, *, keepdims: int = 1,
                    noop_with_empty_axes: int = 0) -> Any:
    xp, (data,) = operands(data)
    ax = ref.normalize_axes(data, to_host(axes), noop_with_empty_axes)
    count = math.prod(data.shape[a] for a in ax)
    x = data.astype(np.float32 if data.dtype in HALF_DTYPES else data.dtype, copy=False)
    total = _reduce(xp, x, np.add, ax, bool(keepdims))
    if x.dtype.kind in "iu":
        return trunc_divide(xp, total, xp.asarray(count, x.dtype))
    return (total / count).astype(data.dtype, copy=False)


@gpu_kernel("ReduceLogSumExp")
def reduce_log_sum_exp_gpu(data: Any, axes: Any = None, *, keepdims: int = 1,
                           noop_with_empty_axes: int = 0) -> Any:
    xp, (data,) = operands(data)
    ax = ref.normalize_axes(data, to_host(axes), noop_with_empty_axes)
    x = data.astype(ref._work_dtype(data.dtype, True), copy=False)
    m = _reduce(xp, x, np.maximum, ax, True)
    m = xp.where(xp.isfinite(m), m, 0)  # all -inf (or empty): no shift needed
    out = xp.log(_reduce(xp, xp.exp(x - m), np.add, ax, True)) + m
    if not keepdims and ax:
        out = out.reshape([d for a, d in enumerate(out.shape) if a not in ax])
    return out.astype(data.dtype, copy=False)


def _arg(fn: str, data: Any, axis: int, keepdims: int, select_last_index: int) -> Any:
    if not -data.ndim <= axis < data.ndim or data.shape[axis % data.ndim] == 0:
        return ref._arg_reduce(getattr(np, fn), data, axis, keepdims, 0)  # its errors
    xp, (data,) = operands(data)
    axis %= data.ndim
    if select_last_index:
        idx = data.shape[axis] - 1 - getattr(xp, fn)(xp.flip(data, axis), axis=axis,
                                                      keepdims=True)
    else:
        idx = getattr(xp, fn)(data, axis=axis, keepdims=True)
    if not keepdims:
        idx = idx.reshape([d for a, d in enumerate(idx.shape) if a != axis])
    return idx.astype(np.int64, copy=False)


@gpu_kernel("ArgMax")
def arg_max_gpu(data: Any, *, axis: int = 0, keepdims: int = 1,
                select_last_index: int = 0) -> Any:
    return _arg("argmax", data, axis, keepdims, select_last_index)


@gpu_kernel("ArgMin")
def arg_min_gpu(data: Any, *, axis: int = 0, keepdims: int = 1,
                select_last_index: int = 0) -> Any:
    return _arg("argmin", data, axis, keepdims, select_last_index)
