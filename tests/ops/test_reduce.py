"""Reductions (ops/reduce.py) against ONNX Runtime and onnx's ReferenceEvaluator.

Shapes, axes (None, empty, negative, all), keepdims and noop_with_empty_axes are drawn by
hypothesis; axes travel as an int64 initializer, as in real opset-18 models. The comparison
machinery is shared with test_elementwise.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import taskflow.ops as ops
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes
from taskflow.ops.elementwise import BFLOAT16

from .test_elementwise import MAX_EXAMPLES, ORT, REF, Case, check, check_bfloat16, legal_dtypes

#: Per-op (float32 and looser float16) or per-"op/dtype" (rtol, atol), each with its reason;
#: anything not listed uses test_elementwise.DEFAULT_TOL for its dtype.
TOL: dict[str, tuple[float, float]] = {
    # Mixed-sign float32 sums of up to 625 values of |x| ~ 3 cancel: numpy (pairwise) and ORT
    # (blocked) each round by ~2**-24 * sum(|x|), up to ~1e-5 absolute on a result near 0.
    "ReduceSum": (1e-6, 1e-4),
    "ReduceMean": (1e-6, 1e-6),  # the same error divided by the count
}

REDUCE_DOMAINS = {"ReduceSum": "real", "ReduceMean": "real", "ReduceMax": "real",
                  "ReduceMin": "real", "ReduceProd": "unit", "ReduceL1": "real",
                  "ReduceL2": "real", "ReduceSumSquare": "real", "ReduceLogSum": "pos",
                  "ReduceLogSumExp": "wide"}
INT_REDUCTIONS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
                  "ReduceL1", "ReduceL2", "ReduceSumSquare")
ARG_OPS = ("ArgMax", "ArgMin")


def _empty(xs: list[np.ndarray], attrs: dict) -> bool:
    return xs[0].size == 0


def _empty_with_negative_axes(xs: list[np.ndarray], attrs: dict) -> bool:
    axes = xs[1] if len(xs) > 1 and xs[1] is not None else [attrs.get("axis", 0)]
    return xs[0].size == 0 and bool(np.any(np.asarray(axes) < 0))


def _empty_bool_or_negative_axes(xs: list[np.ndarray], attrs: dict) -> bool:
    return xs[0].size == 0 and xs[0].dtype == bool or _empty_with_negative_axes(xs, attrs)


#: Inputs on which one oracle is wrong, and why; the other oracle still checks them.
ORACLE_BUGS: dict[tuple[str, str], Callable[[list[np.ndarray], dict], bool]] = {
    # ORT 1.31 ignores negative axes on an empty input and returns the input's shape.
    **{(ORT, op): _empty_with_negative_axes for op in (*REDUCE_DOMAINS, *ARG_OPS)},
    # ... and refuses ReduceMax/Min of an empty bool tensor (ONNX: False for max, True for min).
    (ORT, "ReduceMax"): _empty_bool_or_negative_axes,
    (ORT, "ReduceMin"): _empty_bool_or_negative_axes,
    # ReduceMean over nothing is "undefined": ORT gives 0, the ReferenceEvaluator nan for
    # floats (as the reference does) and INT_MIN (0/0 cast) for ints, where the reference
    # gives 0. test_reductions_over_nothing_are_the_identities pins the reference's values.
    (ORT, "ReduceMean"): _empty,
    (REF, "ReduceMean"): lambda xs, attrs: _empty(xs, attrs) and xs[0].dtype.kind in "iu",
    # ReferenceEvaluator's ReduceLogSumExp returns a numpy scalar for 0-d input, then raises.
    (REF, "ReduceLogSumExp"): lambda xs, attrs: xs[0].ndim == 0,
}
AXES = frozenset({1})  # the axes input is an initializer
CASES = [
    *(Case(op, (d,), const_inputs=AXES) for op, d in REDUCE_DOMAINS.items()),
    *(Case(op, ("grid",), "int64", const_inputs=AXES) for op in INT_REDUCTIONS),
    Case("ReduceMean", ("wide",), "int32", const_inputs=AXES),  # truncating division
    *(Case(op, ("bool",), "bool", const_inputs=AXES) for op in ("ReduceMax", "ReduceMin")),
    *(Case(op, ("grid",)) for op in ARG_OPS),  # grid: ties, for select_last_index
    *(Case(op, ("grid",), "int64") for op in ARG_OPS),
]
CASE_IDS = [str(c) for c in CASES]


def make_case(case: Case, shape: tuple[int, ...], axes: list[int] | None, keepdims: int,
              noop: int, select_last: int) -> tuple[Case, list[np.ndarray | None]]:
    """The case with these attributes, and the (data shape, axes) of its inputs."""
    if case.op in ARG_OPS:
        attrs = {"axis": axes[0], "keepdims": keepdims, "select_last_index": select_last}
        return replace(case, attrs=attrs), [shape]
    attrs = {"keepdims": keepdims, "noop_with_empty_axes": noop}
    return replace(case, attrs=attrs), [shape, None if axes is None else axes]


def build_inputs(case: Case, spec: list, rng: np.random.Generator,
                 dtype: str | None = None) -> list[np.ndarray | None]:
    data = case.inputs([spec[0]], rng, dtype)
    if case.op in ARG_OPS or spec[1] is None:
        return data
    return data + [np.array(spec[1], np.int64)]


@st.composite
def reduce_args(draw: st.DrawFn, case: Case) -> tuple:
    arg = case.op in ARG_OPS
    shape = draw(array_shapes(min_dims=1 if arg else 0, max_dims=4, min_side=0, max_side=5))
    rank = len(shape)
    if arg:
        axis = draw(st.integers(-rank, rank - 1))
        shape = tuple(max(s, 1) if i == axis % rank else s for i, s in enumerate(shape))
        axes = [axis]
    else:
        picked = draw(st.none() | st.lists(st.sampled_from(range(rank)), unique=True)
                      if rank else st.none() | st.just([]))
        axes = None if picked is None else [a - rank * draw(st.booleans()) for a in picked]
    return shape, axes, draw(st.sampled_from([0, 1])), draw(st.sampled_from([0, 1])), \
        draw(st.sampled_from([0, 1]))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@settings(max_examples=MAX_EXAMPLES, deadline=None)
@given(data=st.data())
def test_matches_oracles_on_random_shapes_and_axes(case: Case, data: st.DataObject) -> None:
    shape, axes, keepdims, noop, last = data.draw(reduce_args(case), label="args")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    case, spec = make_case(case, shape, axes, keepdims, noop, last)
    check(case, build_inputs(case, spec, rng), tol=TOL, oracle_bugs=ORACLE_BUGS)


EDGE = [((), None), ((), []), ((1,), [0]), ((0,), None), ((0, 3), [0]), ((0, 3), [-1]),
        ((3, 0), [1]), ((3, 0), [0]), ((2, 0, 4), [0, 2]), ((2, 3), []), ((1, 1, 1, 1), None)]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_oracles_on_edge_shapes(case: Case) -> None:
    rng = np.random.default_rng(0)
    for shape, axes in EDGE:
        if case.op in ARG_OPS and not (axes and shape[axes[0]]):
            continue  # ArgMax takes one axis, and it must have elements
        for keepdims, noop in [(0, 0), (0, 1), (1, 0), (1, 1)]:
            c, spec = make_case(case, shape, axes, keepdims, noop, select_last=noop)
            check(c, build_inputs(c, spec, rng), tol=TOL, oracle_bugs=ORACLE_BUGS)


DTYPE_CASES = [(c, dt) for c in {c.op: c for c in reversed(CASES) if c.dtype != "bool"}.values()
               for dt in legal_dtypes(c.op)]


@pytest.mark.parametrize("case,dtype", DTYPE_CASES, ids=[f"{c.op}-{d}" for c, d in DTYPE_CASES])
def test_output_dtype_matches_ort(case: Case, dtype: str) -> None:
    rng = np.random.default_rng(1)
    for axes in ([1], None) if case.op not in ARG_OPS else ([1],):
        c, spec = make_case(case, (2, 3), axes, keepdims=0, noop=0, select_last=0)
        check(replace(c, dtype=dtype, oracles=(ORT,)), build_inputs(c, spec, rng, dtype),
              tol=TOL)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceL2", "ReduceLogSumExp"])
def test_bfloat16_accumulates_in_float32(op: str) -> None:
    x = np.random.default_rng(3).uniform(0.5, 2, (3, 40)).astype(BFLOAT16)
    check_bfloat16(op, [x, np.array([1], np.int64)])


def test_reductions_over_nothing_are_the_identities() -> None:
    x = np.zeros((0, 2), np.float32)
    axes = np.array([0], np.int64)
    want = {"ReduceSum": 0, "ReduceProd": 1, "ReduceMax": -np.inf, "ReduceMin": np.inf,
            "ReduceL1": 0, "ReduceL2": 0, "ReduceSumSquare": 0, "ReduceLogSum": -np.inf,
            "ReduceLogSumExp": -np.inf}
    for op, value in want.items():
        assert ops.get(op)(x, axes, keepdims=0)[0].tolist() == [value] * 2, op
    assert np.isnan(ops.get("ReduceMean")(x, axes)[0]).all()
    ints = np.zeros((0, 2), np.int32)
    assert ops.get("ReduceMax")(ints, axes)[0].tolist() == [[np.iinfo(np.int32).min] * 2]


def test_bad_axes_are_refused_with_the_shape() -> None:
    from taskflow.errors import ShapeError

    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ShapeError, match=r"\(2, 3\)"):
        ops.get("ReduceSum")(x, np.array([2], np.int64))
    with pytest.raises(ShapeError, match="twice"):
        ops.get("ReduceMax")(x, np.array([1, -1], np.int64))
    with pytest.raises(ShapeError, match="size 0"):
        ops.get("ArgMax")(np.zeros((2, 0), np.float32), axis=1)


MODULE_OPS = {*REDUCE_DOMAINS, *ARG_OPS, "CumSum", "TopK"}  # those two: test_modern_ops.py


def test_registers_exactly_this_family_with_onnx_signatures() -> None:
    import onnx.defs

    mine = {s.name for s in ops.specs() if s.reference.__module__.endswith(".reduce")}
    assert mine == MODULE_OPS
    for name in sorted(mine):
        spec, schema = ops.get(name), onnx.defs.get_schema(name)
        assert spec.attributes == set(schema.attributes), name
        assert (spec.min_inputs, spec.max_inputs) == (schema.min_input, schema.max_input)
        assert spec.kind == "reduce", name
        assert spec.reference.__doc__, f"{name} needs a one-line formula docstring"
    shapes = ([(4, 5), (1,)], [(4, 1)])
    assert ops.get("ReduceSum").flops(*shapes) == 20
    assert ops.get("ReduceLogSumExp").flops(*shapes) > 20
