"""Elementwise ops (ops/elementwise.py) against ONNX Runtime and onnx's ReferenceEvaluator.

Every registered op runs on hypothesis-drawn broadcastable shapes (empty dims included), on
fixed edge shapes (0-d, one element, empty batch), and in every legal dtype of float32, float64,
float16 and int64; outputs must match the oracles in dtype, shape and value.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx.defs
import onnxruntime
import pytest
import taskflow.ops as ops
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes
from onnx import TensorProto
from taskflow.ops.elementwise import BFLOAT16
from taskflow.ops.registry import elementwise_flops

from .oracles import assert_close, run_onnx_reference, run_ort

onnxruntime.set_default_logger_severity(3)  # the expected-failure probes below log errors

#: Oracle names; a Case lists the ones it is compared against (the reason sits on the Case
#: when one is left out).
ORT, REF = "ort", "ref"
#: (rtol, atol) by dtype for every op not in TOL; float16 is ~1 ulp (2**-11 relative).
DEFAULT_TOL = {"float32": (1e-6, 1e-7), "float64": (1e-12, 1e-14), "float16": (1e-3, 1e-4)}
#: Per-op (float32 and looser float16) or per-"op/dtype" tolerances, each with its reason.
TOL: dict[str, tuple[float, float]] = {
    # ReferenceEvaluator's Erf maps math.erf through float32 (np.vectorize(otypes="f")) even
    # for float64, and ORT has no float64 Erf; test_erf_is_accurate_in_float64 checks 1e-15.
    "Erf/float64": (2e-7, 1e-8),
}
#: Inputs on which one oracle is wrong, and why; the other oracle still checks them.
ORACLE_BUGS: dict[tuple[str, str], Callable[[list[np.ndarray], dict], bool]] = {
    # ReferenceEvaluator's Mean adds in place into a copy of the first input, so it raises
    # unless that input already has the broadcast shape.
    (REF, "Mean"): lambda xs, attrs: xs[0].shape != np.broadcast_shapes(*(x.shape for x in xs)),
}
#: Legal (op, dtype) pairs ONNX Runtime 1.31 has no CPU kernel for: these compare against the
#: ReferenceEvaluator instead, and the test checks ORT really refuses them.
ORT_MISSING = {("Erf", "float64"), ("Mean", "float64")}
#: Hypothesis examples per case: keeps each test well under a second (ORT builds a session
#: per example); raise it locally to hunt for tolerance outliers.
MAX_EXAMPLES = 12


# --- shared with test_activation.py and test_reduce.py -------------------------------------
def tolerance(op: str, dtype: Any, table: dict[str, tuple[float, float]]) -> tuple[float, float]:
    """``table["op/dtype"]``, else the looser of ``table[op]`` and the dtype's default."""
    name = np.dtype(dtype).name
    if f"{op}/{name}" in table:
        return table[f"{op}/{name}"]
    base = DEFAULT_TOL.get(name, (0.0, 0.0))
    if name == "float64":
        return base
    op_tol = table.get(op, base)
    return max(base[0], op_tol[0]), max(base[1], op_tol[1])


def values(domain: str, shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> Any:
    """Random values of one input; ``domain`` keeps them where the op is defined."""
    if domain == "bool":
        return rng.random(shape) < 0.5
    dt = np.dtype(dtype)
    sign = np.where(rng.random(shape) < 0.5, -1, 1)
    if dt.kind in "iu":
        table = {"real": lambda: rng.integers(-10, 11, shape),
                 "pos": lambda: rng.integers(1, 11, shape),
                 "nonzero": lambda: rng.integers(1, 6, shape) * sign,
                 "grid": lambda: rng.integers(-3, 4, shape),
                 "wide": lambda: rng.integers(-300, 301, shape),
                 "unit": lambda: rng.integers(1, 3, shape) * sign}
        return np.asarray(table[domain]()).astype(dt)
    table = {"real": lambda: rng.standard_normal(shape) * 3,
             "pos": lambda: rng.uniform(0.1, 5, shape),
             "nonzero": lambda: rng.uniform(0.5, 3, shape) * sign,
             "grid": lambda: rng.integers(-3, 4, shape),  # ties for comparisons
             "wide": lambda: rng.standard_normal(shape) * 100,
             "unit": lambda: rng.uniform(0.5, 1.5, shape) * sign,
             "special": lambda: rng.choice([np.nan, np.inf, -np.inf, 0.0, -1.5, 2.0], shape)}
    return np.asarray(table[domain]()).astype(dt)


@dataclass
class Case:
    op: str
    domains: tuple[str, ...]
    dtype: str = "float32"
    attrs: dict[str, Any] = field(default_factory=dict)
    oracles: tuple[str, ...] = (ORT, REF)
    #: per-input dtypes where they differ from ``dtype`` (Pow's exponent, Where's condition)
    dtypes: tuple[str | None, ...] = ()
    #: inputs passed as initializers (axes), as real models do
    const_inputs: frozenset[int] = frozenset()

    def __str__(self) -> str:
        attrs = ",".join(f"{k}={v}" for k, v in self.attrs.items())
        return f"{self.op}-{self.dtype}-{len(self.domains)}in" + (f"-{attrs}" if attrs else "")

    def inputs(self, shapes: list[tuple[int, ...]], rng: np.random.Generator,
               dtype: str | None = None) -> list[np.ndarray]:
        dtypes = self.dtypes or (None,) * len(self.domains)
        return [values(d, s, t or dtype or self.dtype, rng)
                for d, s, t in zip(self.domains, shapes, dtypes, strict=True)]


UNARY_FLOAT = {"Sqrt": "pos", "Exp": "real", "Log": "pos", "Neg": "real", "Abs": "real",
               "Reciprocal": "nonzero", "Erf": "real", "Floor": "real", "Ceil": "real",
               "Sign": "grid", "IsNaN": "special", "IsInf": "special", "Identity": "real",
               "Sin": "wide", "Cos": "wide", "Round": "real"}
BINARY = {"Add": ("real", "real"), "Sub": ("real", "real"), "Mul": ("real", "real"),
          "Div": ("real", "nonzero"), "Pow": ("pos", "real"), "Equal": ("grid", "grid"),
          "Less": ("grid", "grid"), "Greater": ("grid", "grid"),
          "LessOrEqual": ("grid", "grid"), "GreaterOrEqual": ("grid", "grid")}
CASES = [
    *(Case(op, (d,)) for op, d in UNARY_FLOAT.items()),
    *(Case(op, ("real",), "int64") for op in ("Neg", "Abs", "Sign", "Identity")),
    *(Case(op, d) for op, d in BINARY.items()),
    *(Case(op, d, "int64") for op, d in BINARY.items() if op != "Pow"),
    Case("Div", ("wide", "nonzero"), "int32"),  # C truncation, not floor, for negatives
    Case("Div", ("real", "nonzero"), "int8"),
    # Integer Pow: ORT truncates x ** -n to 0 (or +-1); the ReferenceEvaluator raises (numpy).
    Case("Pow", ("nonzero", "grid"), "int64", oracles=(ORT,)),  # 0 ** -n: undefined
    Case("Pow", ("grid", "pos"), "int32"),  # small enough not to overflow (undefined)
    Case("Pow", ("pos", "grid"), dtypes=(None, "int64")),  # exponent of another dtype
    Case("Pow", ("pos", "unit"), "int32", dtypes=(None, "float32")),  # truncated to int
    Case("IsInf", ("special",), attrs={"detect_negative": 0}),
    Case("IsInf", ("special",), attrs={"detect_positive": 0}),
    Case("Not", ("bool",), "bool"),
    *(Case(op, ("bool", "bool"), "bool") for op in ("And", "Or", "Xor", "Equal")),
    Case("Where", ("bool", "real", "real"), dtypes=("bool", None, None)),
    Case("Where", ("bool", "real", "real"), "int64", dtypes=("bool", None, None)),
    *(Case(op, ("real",) * n) for op in ("Min", "Max", "Sum", "Mean") for n in (1, 2, 3)),
    *(Case(op, ("real",) * 3, "int64") for op in ("Min", "Max")),
    Case("Mod", ("real", "nonzero"), "int64"),
    Case("Mod", ("wide", "nonzero"), "int32", attrs={"fmod": 1}),
    Case("Mod", ("real", "nonzero"), attrs={"fmod": 1}),
    # Float Mod with fmod=0 is legal since opset 28 (floor-style, sign of the divisor); ORT
    # 1.31 implements opset <= 21 here and refuses it, so only the ReferenceEvaluator checks.
    Case("Mod", ("real", "nonzero"), attrs={"fmod": 0}, oracles=(REF,)),
    *(Case("Cast", ("real",), attrs={"to": to}) for to in (
        TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT32, TensorProto.INT64,
        TensorProto.INT8, TensorProto.BOOL, TensorProto.FLOAT)),
    Case("Cast", ("pos",), attrs={"to": TensorProto.UINT8}),
    *(Case("Cast", ("wide",), "int64", attrs={"to": to}) for to in (
        TensorProto.FLOAT, TensorProto.INT8, TensorProto.UINT8, TensorProto.BOOL)),
    Case("Cast", ("bool",), "bool", attrs={"to": TensorProto.FLOAT}),
    Case("CastLike", ("real", "real"), dtypes=(None, "int32")),
    Case("CastLike", ("wide", "real"), "int64", dtypes=(None, "float16")),
]
CASE_IDS = [str(c) for c in CASES]


def check(case: Case, inputs: list[np.ndarray], dtype: str | None = None, *,
          tol: dict[str, tuple[float, float]] = TOL,
          oracle_bugs: dict[tuple[str, str], Callable[[list, dict], bool]] = ORACLE_BUGS
          ) -> None:
    """The reference equals each oracle of ``case`` in dtype, shape and value."""
    got = ops.get(case.op)(*inputs, **case.attrs)
    rtol, atol = tolerance(case.op, dtype or case.dtype, tol)
    for oracle in case.oracles:
        if oracle_bugs.get((oracle, case.op), lambda xs, attrs: False)(inputs, case.attrs):
            continue
        run = run_ort if oracle == ORT else run_onnx_reference
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # ReferenceEvaluator: inf, nan
            want = run(case.op, inputs, case.attrs, const_inputs=case.const_inputs)
        assert len(got) == len(want), f"{case}: {len(got)} outputs, {oracle} has {len(want)}"
        for g, w in zip(got, want, strict=True):
            assert_close(g, w, rtol=rtol, atol=atol, what=f"{case} vs {oracle}")


def check_bfloat16(op: str, inputs: list[np.ndarray], attrs: dict[str, Any] | None = None
                   ) -> None:
    """bfloat16 in, bfloat16 out, within 2 bfloat16 ulps of the ReferenceEvaluator (which
    rounds every intermediate step to bfloat16; ORT returns no bfloat16 to numpy)."""
    (got,) = ops.get(op)(*inputs, **(attrs or {}))
    (want,) = run_onnx_reference(op, inputs, attrs)
    assert got.dtype == want.dtype == BFLOAT16, (op, got.dtype, want.dtype)
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=2**-6,
                               atol=2**-8, err_msg=op)


@pytest.mark.parametrize("op", ["Add", "Div", "Sqrt", "Exp", "Erf", "Mean"])
def test_bfloat16(op: str) -> None:
    rng = np.random.default_rng(3)
    x = values("pos", (3, 4), "float32", rng).astype(BFLOAT16)
    check_bfloat16(op, [x] * len(onnx.defs.get_schema(op).inputs))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@settings(max_examples=MAX_EXAMPLES, deadline=None)
@given(data=st.data())
def test_matches_oracles_on_random_broadcast_shapes(case: Case, data: st.DataObject) -> None:
    n = len(case.domains)
    shapes = data.draw(mutually_broadcastable_shapes(num_shapes=n, max_dims=4, min_side=0,
                                                     max_side=5), label="shapes")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    check(case, case.inputs(list(shapes.input_shapes), rng))


EDGE_SHAPES = {
    1: [(), (1,), (0,), (0, 3), (2, 0, 4), (1, 1, 1, 1)],
    2: [((), ()), ((0, 3), (3,)), ((1,), (0,)), ((2, 1, 3), (4, 1)), ((1, 1), ()),
        ((), (0, 2))],
    3: [((), (), ()), ((0, 1), (1,), ()), ((1,), (), (1,)), ((2, 1, 1), (1, 3, 1), (4,))],
}


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_oracles_on_edge_shapes(case: Case) -> None:
    rng = np.random.default_rng(0)
    for shapes in EDGE_SHAPES[len(case.domains)]:
        shapes = [shapes] if len(case.domains) == 1 else list(shapes)
        check(case, case.inputs(shapes, rng))


def legal_dtypes(op: str) -> list[str]:
    """Which of float32/float64/float16/int64 ONNX allows for ``op``'s first input."""
    schema = onnx.defs.get_schema(op)
    param = schema.inputs[0].type_str
    allowed = next(c.allowed_type_strs for c in schema.type_constraints
                   if c.type_param_str == param)
    names = {"float32": "tensor(float)", "float64": "tensor(double)",
             "float16": "tensor(float16)", "int64": "tensor(int64)"}
    return [dt for dt, t in names.items() if t in allowed]


# One numeric case per op (the first listed): dtypes are the op's, not the case's.
DTYPE_CASES = [(c, dt) for c in {c.op: c for c in reversed(CASES) if c.dtype != "bool"}.values()
               for dt in legal_dtypes(c.op)]


@pytest.mark.parametrize("case,dtype", DTYPE_CASES, ids=[f"{c.op}-{d}" for c, d in DTYPE_CASES])
def test_output_dtype_matches_ort(case: Case, dtype: str) -> None:
    rng = np.random.default_rng(1)
    inputs = case.inputs([(2, 3)] * len(case.domains), rng, dtype)
    if case.op == "Mod" and np.dtype(dtype).kind == "f":
        case = replace(case, attrs={"fmod": 1})  # ORT (opset 21) needs fmod=1 for floats
    if (case.op, dtype) in ORT_MISSING:
        with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.NotImplemented):
            run_ort(case.op, inputs, case.attrs)
        check(replace(case, dtype=dtype, oracles=(REF,)), inputs)
    else:
        check(replace(case, dtype=dtype, oracles=(ORT,)), inputs)


MODULE_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Neg", "Abs",
              "Reciprocal", "Erf", "Floor", "Ceil", "Sign", "Min", "Max", "Sum", "Mean",
              "Equal", "Less", "Greater", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or",
              "Xor", "Where", "Cast", "CastLike", "IsNaN", "IsInf", "Mod", "Identity", "Dropout",
              "Sin", "Cos", "Round"}


def test_registers_exactly_this_family_with_onnx_signatures() -> None:
    mine = {s.name for s in ops.specs() if s.reference.__module__.endswith(".elementwise")}
    assert mine == MODULE_OPS
    for name in sorted(mine):
        spec, schema = ops.get(name), onnx.defs.get_schema(name)
        assert spec.attributes == set(schema.attributes), name
        if schema.max_input > 1000:  # variadic: ``*inputs`` (the registry counts min 0)
            assert spec.variadic, name
        else:
            assert (spec.min_inputs, spec.max_inputs) == (schema.min_input, schema.max_input)
        assert spec.kind == ("identity" if name in ("Identity", "Dropout") else "elementwise")
        assert spec.reference.__doc__, f"{name} needs a one-line formula docstring"


def test_erf_is_accurate_in_float64() -> None:
    import math

    x = np.concatenate([np.linspace(-7, 7, 20001), np.geomspace(1e-300, 0.5, 300)])
    want = np.array([math.erf(v) for v in x])
    got = ops.get("Erf")(x)[0]
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
    assert np.isnan(ops.get("Erf")(np.array([np.nan]))[0]).all()
    assert ops.get("Erf")(np.array([np.inf, -np.inf], np.float32))[0].tolist() == [1, -1]


@pytest.mark.parametrize("to", [TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2])
@pytest.mark.parametrize("saturate", [0, 1])
def test_cast_to_float8_matches_oracles_bitwise(to: int, saturate: int) -> None:
    x = np.array([1e6, -1e6, np.nan, np.inf, -np.inf, 448.1, 470, 1.3, -0.0, 57344, 6e4],
                 np.float32)
    attrs = {"to": to, "saturate": saturate}
    (got,) = ops.get("Cast")(x, **attrs)
    # ORT hands float8 back as raw uint8 bits, and has no numpy type for float8e5m2 at all.
    runs = [run_onnx_reference] + ([run_ort] if to == TensorProto.FLOAT8E4M3FN else [])
    for run in runs:
        (want,) = run("Cast", [x], attrs)
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8),
                                      err_msg=run.__name__)


def test_cast_refuses_unsupported_targets_by_name() -> None:
    from taskflow.errors import UnsupportedOpError

    with pytest.raises(UnsupportedOpError, match="int4"):
        ops.get("Cast")(np.zeros(2, np.float32), to=TensorProto.INT4)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
@pytest.mark.parametrize("shape", [(), (0, 3), (2, 3)])
def test_dropout_is_identity_with_true_mask(shape: tuple[int, ...], dtype: str) -> None:
    x = np.random.default_rng(2).standard_normal(shape).astype(dtype)
    ratio, off = np.array(0.3, dtype), np.array(False)
    for inputs in ([x], [x, ratio], [x, ratio, off]):
        got = ops.get("Dropout")(*inputs, seed=3)
        for run in (run_ort, run_onnx_reference):
            want = run("Dropout", inputs, {"seed": 3}, n_outputs=2)
            for g, w in zip(got, want, strict=True):
                assert_close(g, w, what=f"Dropout vs {run.__name__}")


def test_dropout_in_training_mode_is_refused() -> None:
    x = np.ones((2, 2), np.float32)
    with pytest.raises(NotImplementedError, match="training_mode"):
        ops.get("Dropout")(x, np.array(0.5, np.float32), np.array(True))


def test_heavier_ops_count_more_flops() -> None:
    shapes = ([(4, 5)], [(4, 5)])
    assert ops.get("Add").flops(*shapes) == elementwise_flops(*shapes) == 20
    assert ops.get("Erf").flops(*shapes) > ops.get("Add").flops(*shapes)
    assert ops.get("Dropout").flops(*shapes) == 0
