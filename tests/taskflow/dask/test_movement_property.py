"""Property: on random small graphs of movement ops (Transpose, Reshape merging and splitting
the batch, Slice, Concat, Unsqueeze/Squeeze) around elementwise and reduce ops, ``predict``
equals ``run`` -- same shape, same numbers -- or raises a clear ``TaskflowError``; never a
wrong shape or value."""

from __future__ import annotations

import math
import warnings

import dask.array as da
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskflow.errors import TaskflowError

from . import layout_models as lm

pytestmark = pytest.mark.timeout(300)

#: Each dim is (size, batch): a dim with ``batch`` True is ``size * B`` long.
Dims = list[tuple[int, bool]]


def _shape_const(g: lm._G, dims: Dims) -> str:
    """A Reshape target for ``dims``: -1 where the batch is, literal sizes elsewhere."""
    return g.const([-1 if b else s for s, b in dims])


def _step(data: st.DataObject, g: lm._G, x: str, dims: Dims, seen: dict) -> tuple[str, Dims]:
    rank = len(dims)
    kind = data.draw(st.sampled_from(
        ["transpose", "merge", "split", "slice", "concat", "unsqueeze", "elementwise",
         "reduce", "softmax", "residual"]))
    if kind == "transpose" and rank > 1:
        perm = data.draw(st.permutations(range(rank)))
        return g.op("Transpose", x, perm=list(perm)), [dims[p] for p in perm]
    if kind == "merge" and rank > 1:
        i = data.draw(st.integers(0, rank - 2))
        (s1, b1), (s2, b2) = dims[i], dims[i + 1]
        new = dims[:i] + [(s1 * s2, b1 or b2)] + dims[i + 2:]
        return g.op("Reshape", x, _shape_const(g, new)), new
    if kind == "split":
        splittable = [i for i, (s, b) in enumerate(dims) if s % 2 == 0 or b]
        if splittable:
            i = data.draw(st.sampled_from(splittable))
            s, b = dims[i]
            if b:  # (k*B) -> (B, k): the batch stays the outer factor
                new = dims[:i] + [(1, True), (s, False)] + dims[i + 1:]
            else:
                new = dims[:i] + [(2, False), (s // 2, False)] + dims[i + 1:]
            if sum(bb for _, bb in new) <= 1:
                return g.op("Reshape", x, _shape_const(g, new)), new
    if kind == "slice":
        i = data.draw(st.integers(0, rank - 1))
        s, b = dims[i]
        if not b and s > 1:
            return (g.op("Slice", x, g.const([1]), g.const([s]), g.const([i])),
                    dims[:i] + [(s - 1, False)] + dims[i + 1:])
        if b:  # the first row only: rows are dropped, the batch is gone
            return (g.op("Slice", x, g.const([0]), g.const([1]), g.const([i])),
                    dims[:i] + [(1, False)] + dims[i + 1:])
    if kind == "concat":
        i = data.draw(st.integers(0, rank - 1))
        s, b = dims[i]
        return g.op("Concat", x, g.op("Neg", x), axis=i), dims[:i] + [(2 * s, b)] + dims[i + 1:]
    if kind == "unsqueeze" and rank < 5:
        i = data.draw(st.integers(0, rank))
        u = g.op("Unsqueeze", x, g.const([i]))
        new = dims[:i] + [(1, False)] + dims[i:]
        if data.draw(st.booleans()):
            j = data.draw(st.sampled_from([k for k, (s, b) in enumerate(new)
                                           if s == 1 and not b]))
            return g.op("Squeeze", u, g.const([j])), new[:j] + new[j + 1:]
        return u, new
    if kind == "reduce":
        i = data.draw(st.integers(0, rank - 1))
        keep = data.draw(st.booleans()) or rank == 1
        out = g.op("ReduceSum", x, g.const([i]), keepdims=int(keep))
        return out, dims[:i] + [(1, False)] * keep + dims[i + 1:]
    if kind == "softmax":
        return g.op("Softmax", x, axis=data.draw(st.integers(0, rank - 1))), dims
    if kind == "residual":
        same = [v for v, d in seen.items() if d == dims and v != x]
        if same:
            return g.op("Add", x, data.draw(st.sampled_from(same))), dims
    # elementwise, with a constant broadcast along the last axis
    last = dims[-1][0] if not dims[-1][1] else 1
    c = g.const(np.linspace(0.5, 1.5, last), np.float32)
    return g.op(data.draw(st.sampled_from(["Mul", "Add"])), g.op("Tanh", x), c), dims


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_predict_equals_run_or_refuses_clearly(data):
    g = lm._G()
    x, dims = "x", [(1, True), (2, False), (3, False)]
    seen = {x: dims}
    for _ in range(data.draw(st.integers(1, 6))):
        x, dims = _step(data, g, x, dims, seen)
        seen[x] = dims
        if math.prod(s for s, _ in dims) > 4096:
            break
    out = g.op("Identity", x)
    model = g.model([lm._fin("x", "N", 2, 3)], out, "movement")
    for batch, chunks in ((3, (1, 2)), (5, (2, 2, 1))):
        feed = {"x": np.random.default_rng(batch).standard_normal((batch, 2, 3))
                .astype(np.float32)}
        (want,) = model.run(None, feed)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y = model.predict(da.from_array(feed["x"], chunks=(chunks, 2, 3)))
                got = y.compute(scheduler="threads")
        except TaskflowError as exc:
            assert str(exc), "a refusal says why"
            continue
        assert all(d != d or d == w for d, w in zip(y.shape, want.shape)), (y.shape, want.shape)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
