"""Batch layouts: where the batch lives on one axis of a value; its rows taken and joined.

A layout is ``(axis, factor, outer)``: ``axis`` has length ``batch * factor`` and reads as
``(outer, batch, factor // outer)``. ``(B*H, S, D)`` is ``(0, H, 1)``, ``nn.MultiheadAttention``'s
``(S*B, E)`` is ``(0, S, S)``, the batch itself ``(0, 1, 1)``. Shapes at two batch sizes give
the axis and factor (:func:`layout_of`); which ``outer`` is right only running a node on some
rows can tell (:func:`candidates` and :func:`matches`, used by :mod:`taskflow.dask.trace`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: How far a chunk's result may stray from the whole batch's rows (kernels sum in other orders
#: for other row counts), relative to the largest magnitude of the output.
CHECK_RTOL = 1e-4
#: ``(axis, factor, outer)``: see the module docstring.
Layout = tuple[int, int, int]
#: The layout of a batch input.
ROWS: Layout = (0, 1, 1)
#: Most factorisations ``outer x inner`` of a merged axis tried per output (outer 1 first).
MAX_LAYOUT_CANDIDATES = 64


def take_rows(a: Any, lay: Layout, lo: int, hi: int) -> Any:
    """Rows ``lo:hi`` of the batch of ``a``, whose batch has layout ``lay``."""
    axis, k, outer = lay
    if outer == 1:
        return a[(slice(None),) * axis + (slice(lo * k, hi * k),)]
    shape = a.shape
    split = a.reshape(*shape[:axis], outer, shape[axis] // k, k // outer, *shape[axis + 1:])
    part = split[(slice(None),) * (axis + 1) + (slice(lo, hi),)]
    return part.reshape(*shape[:axis], outer * (hi - lo) * (k // outer), *shape[axis + 1:])


def join_rows(blocks: list[Any], lay: Layout) -> Any:
    """The chunks ``blocks`` (consecutive rows, layout ``lay``) as one value."""
    axis, k, outer = lay
    if len(blocks) == 1:
        return blocks[0]
    if outer == 1:
        return np.concatenate(blocks, axis=axis)
    parts = [b.reshape(*b.shape[:axis], outer, b.shape[axis] // k, k // outer,
                       *b.shape[axis + 1:]) for b in blocks]
    joined = np.concatenate(parts, axis=axis + 1)
    shape = blocks[0].shape
    return joined.reshape(*shape[:axis], -1, *shape[axis + 1:])


def layout_of(s: list[tuple[int, ...]] | None,
              sizes: tuple[int, int]) -> Layout | None:
    """``(axis, factor, 1)`` when exactly one dim is ``factor * batch`` at both ``sizes``
    (which factorisation ``outer`` is right, the row check finds)."""
    if s is None or len(s) < 2:
        return None
    a, b = s[0], s[-1]
    if len(a) != len(b) or not a:
        return None
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(diff) != 1:
        return None
    i = diff[0]
    k, rest = divmod(a[i], sizes[0])
    if rest or k < 1 or b[i] != k * sizes[1]:
        return None
    return (i, k, 1)


def matches(got: Any, whole: Any, lay: Layout, lo: int, hi: int) -> str:
    """"" when ``got`` equals rows ``lo:hi`` of ``whole`` read with layout ``lay``."""
    want = take_rows(whole, lay, lo, hi)
    if got is None or tuple(np.shape(got)) != tuple(want.shape):
        return (f"has shape {None if got is None else tuple(np.shape(got))}, not "
                f"{tuple(want.shape)} (those rows of the whole batch's)")
    if not close(np.asarray(got), np.asarray(want)):
        return "differs from those rows of the whole batch's: it mixes rows"
    return ""


def candidates(lay: Layout) -> list[Layout]:
    """Layouts with ``lay``'s axis and factor: the batch outermost first, then innermost
    (``(S*B, E)``), then the other factorisations of the factor."""
    axis, k, _ = lay
    outers = [1] + ([k] if k > 1 else []) + [d for d in range(2, k) if k % d == 0]
    return [(axis, k, d) for d in outers[:MAX_LAYOUT_CANDIDATES]]


def close(got: np.ndarray, want: np.ndarray) -> bool:
    if want.size == 0:
        return True
    if want.dtype.kind not in "fc":
        return bool(np.array_equal(got, want))
    finite = np.isfinite(want)
    if not np.array_equal(finite, np.isfinite(got)):
        return False
    scale = float(np.max(np.abs(want[finite]), initial=0.0)) or 1.0
    diff = np.abs(got[finite].astype(np.float64) - want[finite].astype(np.float64))
    return bool(np.all(diff <= CHECK_RTOL * scale))
