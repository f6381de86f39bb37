"""Index-driven movement: ScatterElements, ScatterND, OneHot, NonZero and Trilu.

Each is one vectorised numpy step: scatters build the full index tuple once and write with
fancy assignment (``reduction="none"``: for duplicate indices the last update wins, as in
ONNX's reference) or with the unbuffered ``ufunc.at`` (add/mul/max/min: every duplicate
counts). Negative indices count back from the end of their axis; out-of-range ones are a
:class:`~taskflow.errors.ShapeError` naming the op, the index and the axis length (OneHot
alone defines them: all ``off_value``). The gathers live in ``movement.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from taskflow.errors import ShapeError

from .registry import register

#: ``reduction`` attribute -> the ufunc that combines an update with the value it lands on.
SCATTER_REDUCTIONS: dict[str, np.ufunc | None] = {
    "none": None, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum,
}


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _checked_index(op: str, index: np.ndarray, length: int, axis: int) -> np.ndarray:
    """``index`` (int array) in ``[-length, length)`` made non-negative, as int64."""
    index = np.asarray(index).astype(np.int64, copy=False)
    bad = (index < -length) | (index >= length)
    if bad.any():
        raise ShapeError(f"{op}: index {int(index[bad][0])!r} is out of range for axis {axis} "
                         f"of length {length}; expected {-length} <= index < {length}")
    return np.where(index < 0, index + length, index)


def _scatter(op: str, out: np.ndarray, where: tuple[np.ndarray, ...], updates: np.ndarray,
             reduction: str) -> np.ndarray:
    mode = _text(reduction)
    if mode not in SCATTER_REDUCTIONS:
        raise ValueError(f"{op}: reduction={reduction!r}; expected one of "
                         f"{sorted(SCATTER_REDUCTIONS)}")
    ufunc = SCATTER_REDUCTIONS[mode]
    updates = updates.astype(out.dtype, copy=False)
    if ufunc is None:
        out[where] = updates
    else:
        ufunc.at(out, where, updates)
    return out


def scatter_flops(in_shapes: Sequence[tuple[int, ...]], out_shapes: Sequence[tuple[int, ...]],
                  *, reduction: str = "none", **attrs: Any) -> int:
    """One combine per update (0 for plain assignment)."""
    return 0 if _text(reduction) == "none" else math.prod(in_shapes[2])


@register("ScatterElements", "indexing", flops=scatter_flops)
def scatter_elements(data: np.ndarray, indices: np.ndarray, updates: np.ndarray, *,
                     axis: int = 0, reduction: str = "none") -> np.ndarray:
    """out = data; out[i][indices[i][j][k]][k] = f(out[...], updates[i][j][k]) for axis 1"""
    r = data.ndim
    if not -r <= axis < r:
        raise ShapeError(f"ScatterElements axis={axis!r} is out of range for data of shape "
                         f"{data.shape}; expected {-r} <= axis < {r}")
    a = axis % r
    if indices.shape != updates.shape or indices.ndim != r or any(
            i > d for k, (i, d) in enumerate(zip(indices.shape, data.shape)) if k != a):
        raise ShapeError(f"ScatterElements indices {indices.shape} and updates {updates.shape} "
                         f"must have one shape, of data's rank and within data's shape "
                         f"{data.shape} off axis {a}")
    where = list(np.indices(indices.shape, sparse=True))
    where[a] = _checked_index("ScatterElements", indices, data.shape[a], a)
    return _scatter("ScatterElements", data.copy(), tuple(where), updates, reduction)


@register("ScatterND", "indexing", flops=scatter_flops)
def scatter_nd(data: np.ndarray, indices: np.ndarray, updates: np.ndarray, *,
               reduction: str = "none") -> np.ndarray:
    """out = data; out[*indices[i..., :]] = f(out[...], updates[i...]) (slices of data's last
    rank - k dims when indices' last dim k < rank)"""
    k = indices.shape[-1] if indices.ndim else -1
    expected = indices.shape[:-1] + data.shape[k:]
    if indices.ndim < 1 or not 0 <= k <= data.ndim or updates.shape != expected:
        raise ShapeError(f"ScatterND data {data.shape}, indices {indices.shape}, updates "
                         f"{updates.shape}: expected indices' last dim k <= rank of data and "
                         f"updates of shape indices.shape[:-1] + data.shape[k:] = {expected}")
    where = tuple(_checked_index("ScatterND", indices[..., j], data.shape[j], j)
                  for j in range(k))
    return _scatter("ScatterND", data.copy(), where, updates, reduction)


@register("OneHot", "movement")
def one_hot(indices: np.ndarray, depth: np.ndarray, values: np.ndarray, *,
            axis: int = -1) -> np.ndarray:
    """out[i, j, indices[i, j]] = on_value, else off_value (for axis = -1; values = [off, on];
    indices in [-depth, -1] count back, others give a row of off_value)"""
    r = indices.ndim
    if not -r - 1 <= axis <= r:
        raise ShapeError(f"OneHot axis={axis!r} is out of range for indices of shape "
                         f"{indices.shape}; expected {-r - 1} <= axis <= {r}")
    n = np.asarray(depth).ravel()
    values = np.asarray(values).ravel()
    if n.size != 1 or n[0] < 1 or values.size != 2:
        raise ShapeError(f"OneHot depth {n.tolist()!r} and values {values.tolist()!r}: "
                         "expected one positive depth and values [off_value, on_value]")
    d = int(n[0])  # a float depth is truncated, as ONNX casts it to int64
    idx = np.asarray(indices).astype(np.int64)
    idx = np.where(idx < 0, idx + d, idx)
    a = axis % (r + 1)
    hot = np.expand_dims(idx, a) == np.arange(d).reshape((d,) + (1,) * (r - a))
    return np.where(hot, values[1], values[0])


@register("NonZero", "indexing")
def non_zero(X: np.ndarray) -> np.ndarray:
    """int64 (rank, count) indices of the non-zero elements, in row-major order"""
    if X.ndim == 0:  # no coordinates to list (ONNX's reference; numpy refuses 0-d)
        return np.zeros((0, int(X != 0)), np.int64)
    return np.array(np.nonzero(X), dtype=np.int64).reshape(X.ndim, -1)


@register("Trilu", "movement")
def trilu(input: np.ndarray, k: np.ndarray | None = None, *, upper: int = 1) -> np.ndarray:
    """The upper (j - i >= k) or lower (j - i <= k) triangle of each matrix in the last two
    dims, zeros elsewhere"""
    if input.ndim < 2:
        raise ShapeError(f"Trilu input has shape {input.shape}; expected rank >= 2 (..., N, M)")
    diag = 0 if k is None else int(np.asarray(k).ravel()[0])
    return np.triu(input, diag) if upper else np.tril(input, diag)
