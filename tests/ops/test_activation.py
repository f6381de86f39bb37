"""Activations and Softmax/LogSoftmax/Hardmax (ops/activation.py) against ONNX Runtime and
onnx's ReferenceEvaluator, on hypothesis-drawn shapes, edge shapes and every legal dtype of
float32, float64, float16 and int64. The comparison machinery is shared with
test_elementwise.py.
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
from onnxruntime.capi import onnxruntime_pybind11_state as ORT_ERRORS
from taskflow.ops.elementwise import BFLOAT16

from .oracles import run_ort
from .test_elementwise import (
    MAX_EXAMPLES,
    ORT,
    REF,
    Case,
    check,
    check_bfloat16,
    legal_dtypes,
)

#: Per-op (float32 and looser float16) or per-"op/dtype" (rtol, atol), each with its reason;
#: anything not listed uses test_elementwise.DEFAULT_TOL for its dtype.
TOL: dict[str, tuple[float, float]] = {
    # ORT's MLAS logistic is a rational approximation: ~1e-7 absolute error, so tiny outputs
    # (x < -12) are off by percents and x < -18 or so flushes to 0.
    "Sigmoid": (1e-6, 2e-7),
    # approximate="tanh": 1 + tanh(z) cancels for x << 0, so ORT's float32 result is off by
    # ~|x| * 2**-24 there (the reference computes Gelu in float64).
    "Gelu": (1e-6, 1e-6),
    # ReferenceEvaluator expands Gelu into Erf, which it computes through float32 (see
    # test_elementwise); ORT has no float64 Gelu.
    "Gelu/float64": (2e-7, 1e-8),
    # ORT computes alpha * exp(x) - alpha, which cancels near 0 (~2e-7 absolute); the
    # reference uses expm1.
    "Selu": (4e-6, 5e-7),
    # ln(sum(exp(x - max))) of a sum just above 1 carries ~ulp(1) = 1.2e-7 absolute error in
    # each implementation, so outputs near 0 agree to a few 1e-7 absolute only.
    "LogSoftmax": (1e-6, 4e-7),
}
#: Inputs on which one oracle is wrong, and why; the other oracle still checks them.
ORACLE_BUGS: dict[tuple[str, str], Callable[[list[np.ndarray], dict], bool]] = {
    # ReferenceEvaluator's Softsign returns a numpy scalar for 0-d input and then raises.
    (REF, "Softsign"): lambda xs, attrs: xs[0].ndim == 0,
    # ReferenceEvaluator's LogSoftmax is log(Softmax(x)): -inf once exp(x - max) underflows.
    (REF, "LogSoftmax"): lambda xs, attrs: xs[0].size > 0 and float(np.ptp(xs[0])) > 80,
}
#: Legal (op, dtype) pairs ONNX Runtime 1.31 has no CPU kernel for: compared against the
#: ReferenceEvaluator instead, after checking that ORT really refuses them.
ORT_MISSING = {("Relu", "int64"), ("PRelu", "int64"), *(
    (op, "float64") for op in ("LeakyRelu", "PRelu", "HardSigmoid", "HardSwish", "Gelu", "Elu",
                               "Selu", "Softplus", "Softsign", "ThresholdedRelu", "Mish",
                               "Hardmax"))}
#: Celu is float32-only up to opset 22 (ORT implements <= 22; opset 28 added the others).
OPSET_28_ONLY = {("Celu", "float64"), ("Celu", "float16")}

AXIS_OPS = ("Softmax", "LogSoftmax", "Hardmax")
CASES = [
    Case("Relu", ("real",)),
    Case("Relu", ("real",), "int32"),
    Case("Relu", ("real",), "int8"),
    Case("LeakyRelu", ("real",)),
    Case("LeakyRelu", ("real",), attrs={"alpha": 0.3}),
    Case("PRelu", ("real", "real")),  # slope broadcasts to x: see unidirectional_shapes
    Case("PRelu", ("real", "real"), "int32", oracles=(REF,)),  # ORT: no int kernel
    Case("Sigmoid", ("wide",)),  # large |x|: exp must not overflow
    Case("Tanh", ("real",)),
    Case("HardSigmoid", ("real",)),
    Case("HardSigmoid", ("real",), attrs={"alpha": 0.5, "beta": 0.25}),
    Case("HardSwish", ("real",)),
    Case("Gelu", ("real",)),
    Case("Gelu", ("real",), attrs={"approximate": "tanh"}),
    Case("Elu", ("real",)),
    Case("Elu", ("real",), attrs={"alpha": 0.5}),
    Case("Selu", ("real",)),
    Case("Selu", ("real",), attrs={"alpha": 1.5, "gamma": 2.0}),
    Case("Celu", ("real",)),
    Case("Celu", ("real",), attrs={"alpha": 2.0}),
    Case("Softplus", ("wide",)),
    Case("Softsign", ("real",)),
    Case("ThresholdedRelu", ("real",)),
    Case("ThresholdedRelu", ("real",), attrs={"alpha": 0.5}),
    Case("Mish", ("wide",)),
    Case("Clip", ("real", "real", "real")),  # min and max are 0-d: see clip_shapes
    Case("Clip", ("wide", "grid", "grid"), "int64"),
    Case("Clip", ("real", "real")),  # min only
    *(Case(op, ("wide",)) for op in AXIS_OPS),
    Case("Hardmax", ("grid",)),  # ties: the first maximum wins
]
CASE_IDS = [str(c) for c in CASES]


@st.composite
def case_shapes(draw: st.DrawFn, case: Case, min_side: int = 0) -> list[tuple[int, ...]]:
    """Input shapes the op accepts: slope broadcasts to x, Clip bounds are 0-d."""
    x = draw(array_shapes(min_dims=1 if case.op in AXIS_OPS else 0, max_dims=4,
                          min_side=min_side, max_side=5))
    if case.op == "PRelu":  # unidirectional: a suffix of x's shape with some sides set to 1
        tail = x[len(x) - draw(st.integers(0, len(x))):]
        return [x, tuple(d if draw(st.booleans()) else 1 for d in tail)]
    return [x] + [()] * (len(case.domains) - 1)


def with_axis(case: Case, shape: tuple[int, ...], axis: int) -> Case:
    return replace(case, attrs={**case.attrs, "axis": axis}) if case.op in AXIS_OPS else case


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@settings(max_examples=MAX_EXAMPLES, deadline=None)
@given(data=st.data())
def test_matches_oracles_on_random_shapes(case: Case, data: st.DataObject) -> None:
    shapes = data.draw(case_shapes(case), label="shapes")
    axis = data.draw(st.integers(-max(len(shapes[0]), 1), max(len(shapes[0]) - 1, 0)),
                     label="axis")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    check(with_axis(case, shapes[0], axis), case.inputs(shapes, rng), tol=TOL,
          oracle_bugs=ORACLE_BUGS)


EDGE_SHAPES = [(), (1,), (0,), (0, 3), (3, 0), (2, 0, 4), (1, 1, 1, 1)]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_oracles_on_edge_shapes(case: Case) -> None:
    rng = np.random.default_rng(0)
    for x in EDGE_SHAPES:
        if case.op in AXIS_OPS and not x:
            continue  # Softmax & co. need an axis: rank >= 1
        extra = [x[1:]] if case.op == "PRelu" else [()] * (len(case.domains) - 1)
        for axis in range(-len(x), len(x)) if case.op in AXIS_OPS else [0]:
            check(with_axis(case, x, axis), case.inputs([x, *extra], rng), tol=TOL,
                  oracle_bugs=ORACLE_BUGS)


DTYPE_CASES = [(c, dt) for c in {c.op: c for c in reversed(CASES)}.values()
               for dt in legal_dtypes(c.op)]


@pytest.mark.parametrize("case,dtype", DTYPE_CASES, ids=[f"{c.op}-{d}" for c, d in DTYPE_CASES])
def test_output_dtype_matches_ort(case: Case, dtype: str) -> None:
    rng = np.random.default_rng(1)
    shapes = [(2, 3), (3,)] if case.op == "PRelu" else [(2, 3)] + [()] * (len(case.domains) - 1)
    inputs = case.inputs(shapes, rng, dtype)
    if (case.op, dtype) in ORT_MISSING | OPSET_28_ONLY:
        refused = ORT_ERRORS.NotImplemented if (case.op, dtype) in ORT_MISSING \
            else ORT_ERRORS.InvalidGraph
        with pytest.raises(refused):
            run_ort(case.op, inputs, case.attrs)
        check(replace(case, dtype=dtype, oracles=(REF,)), inputs, tol=TOL)
    else:
        check(replace(case, dtype=dtype, oracles=(ORT,)), inputs, tol=TOL)


@pytest.mark.parametrize("op", ["Sigmoid", "Gelu", "Mish", "HardSwish", "Softmax"])
def test_bfloat16_is_computed_in_float32(op: str) -> None:
    x = np.random.default_rng(3).standard_normal((3, 4)).astype(BFLOAT16)
    check_bfloat16(op, [x])


def test_clip_with_min_above_max_gives_max() -> None:
    x = np.array([-2.0, 0.5, 3.0], np.float32)
    lo, hi = np.array(2.0, np.float32), np.array(1.0, np.float32)
    assert ops.get("Clip")(x, lo, hi)[0].tolist() == [1.0, 1.0, 1.0]
    check(Case("Clip", ("real", "real", "real")), [x, lo, hi], tol=TOL)
    check(Case("Clip", ("real", "real", "real")), [x, None, hi], tol=TOL)


def test_softmax_is_stable_for_huge_inputs() -> None:
    x = np.array([[1e4, 1e4 - 1, -1e4], [-np.inf, 0.0, -np.inf]], np.float32)
    for op in ("Softmax", "LogSoftmax"):
        (got,) = ops.get(op)(x)
        assert np.isfinite(got[0]).all() and got.dtype == np.float32
        check(Case(op, ("real",)), [x], tol=TOL, oracle_bugs=ORACLE_BUGS)


def test_gelu_rejects_unknown_approximation() -> None:
    with pytest.raises(ValueError, match="approximate"):
        ops.get("Gelu")(np.zeros(2, np.float32), approximate="fast")
    x = np.array([-1.0, 2.0], np.float32)
    assert np.array_equal(ops.get("Gelu")(x, approximate=b"tanh")[0],
                          ops.get("Gelu")(x, approximate="tanh")[0])


MODULE_OPS = {"Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Clip", "HardSigmoid",
              "HardSwish", "Gelu", "Elu", "Selu", "Celu", "Softplus", "Softsign",
              "ThresholdedRelu", "Mish", "Softmax", "LogSoftmax", "Hardmax", "Swish"}


def test_registers_exactly_this_family_with_onnx_signatures() -> None:
    import onnx.defs

    mine = {s.name for s in ops.specs() if s.reference.__module__.endswith(".activation")}
    assert mine == MODULE_OPS
    for name in sorted(mine):
        spec, schema = ops.get(name), onnx.defs.get_schema(name)
        assert spec.attributes == set(schema.attributes), name
        assert (spec.min_inputs, spec.max_inputs) == (schema.min_input, schema.max_input)
        assert spec.kind == ("reduce" if name in AXIS_OPS else "elementwise"), name
        assert spec.reference.__doc__, f"{name} needs a one-line formula docstring"
    shapes = ([(4, 5)], [(4, 5)])
    assert ops.get("Softmax").flops(*shapes) > ops.get("Relu").flops(*shapes) == 20
