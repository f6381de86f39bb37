"""Shape and movement ops against ONNX Runtime, onnx's ReferenceEvaluator and ONNX's own cases.

This module holds the family's shared pieces (the tolerance table, :func:`check`, the registry
contract and ONNX's backend test cases) and the property tests of the ``shape`` kind ops;
``test_movement.py`` has the property tests of the ``movement`` kind ops.

Where an oracle departs from the spec we compare with the other one (the test says so):

* Slice: the ReferenceEvaluator slices with Python semantics, so a negative step from
  ``start < -dim`` gives nothing where the spec (and ORT) clamps start to 0 first; ORT reads a
  negative step's ``end = INT64_MAX`` as "through index 0" where the spec clamps it to dim - 1.
* Pad: the ReferenceEvaluator rejects negative pads; ORT crops first, as the spec says.
* Split: ORT rejects ``num_outputs`` that leave an empty last chunk (5 into 4: 2, 2, 1, 0).
* Shape: the ReferenceEvaluator does not clamp ``end < -rank`` to 0 (it wraps around).
* Flatten / GatherElements: the ReferenceEvaluator fails on an empty Flatten input, on indices
  shorter than data off the axis, and on a negative GatherElements axis.
* Range: ORT accumulates ``value += delta`` in float32 and drifts from ``start + i * delta``.
* Resize, ORT: sizes and aligns with the integer output length where ONNX means the target
  ``scale * dim`` (onnx/onnx#2462; ONNX's expected outputs use it); sizes ``10 * 0.7f`` as 7
  where ONNX shape inference says 6; copies an axis whose length does not change, ignoring its
  tf_crop_and_resize roi; ignores keep_aspect_ratio_policy with negative axes; rounds 8-bit
  linear results differently; misrounds nearest ties through a float32 ``1 / scale``.
* Resize, ReferenceEvaluator: rejects negative axes; uses x = -0.5 (spec: 0) and tests
  "length != 1" (spec: "> 1") under pytorch_half_pixel; misplaces its linear taps when x lands
  an ulp off an integer (5.0 becomes 1e-15 once).
* EyeLike (bool), Range (stash_type, opset 27), SpaceToDepth (mode, opset 28): not in ORT 1.31.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import numpy as np
import onnx
import pytest
import taskflow.ops as ops  # noqa: F401  (registers every family)
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import AttributeProto, helper, numpy_helper
from taskflow.ops import registry

from taskflow.errors import UnsupportedOpError
from tests.ops.oracles import DEFAULT_OPSET, assert_close, run_onnx_reference, run_ort

#: Per-op tolerances of float outputs. Movement and shape ops only copy elements, so the default
#: is bit-exact equality.
EXACT = {"rtol": 0.0, "atol": 0.0}
TOLERANCES = {
    # We interpolate in float64 and round once; ORT accumulates float32 taps (and its
    # ReferenceEvaluator float64 in another order): a few float32 ulps apart.
    "Resize": {"rtol": 1e-5, "atol": 1e-5},
}

ORACLES = {"ort": run_ort, "reference": run_onnx_reference}
BOTH = ("ort", "reference")

SHAPE_OPS = {"Shape", "Size", "Range", "ConstantOfShape", "Constant", "EyeLike"}
MOVEMENT_OPS = {
    "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice",
    "Gather", "GatherND", "GatherElements", "Expand", "Tile", "Pad", "Resize", "DepthToSpace",
    "SpaceToDepth",
}

FAST = settings(max_examples=40, deadline=None)


def rand(draw: Any, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """Random values of ``shape``; the seed comes from hypothesis so failures replay."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if np.dtype(dtype).kind == "b":
        return np.asarray(rng.random(shape) < 0.5)
    if np.dtype(dtype).kind in "iu":
        return np.asarray(rng.integers(0, 100, shape), dtype)
    return np.asarray(rng.standard_normal(shape), dtype)


def shapes(min_rank: int = 0, max_rank: int = 4, min_side: int = 0,
           max_side: int = 4) -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(st.integers(min_side, max_side), min_size=min_rank,
                    max_size=max_rank).map(tuple)


def check(op: str, inputs: list[Any], attrs: dict[str, Any] | None = None, *,
          const: set[int] = frozenset(), n_outputs: int = 1, oracles: tuple[str, ...] = BOTH,
          opset: int = DEFAULT_OPSET, ours: Any = None) -> tuple:
    """Our reference (or ``ours``) against each oracle; tensor attributes go in as numpy."""
    attrs = attrs or {}
    fn = ours or registry.get(op).reference
    got = registry.as_outputs(fn(*inputs, **attrs))
    onnx_attrs = {k: numpy_helper.from_array(v) if isinstance(v, np.ndarray) else v
                  for k, v in attrs.items()}
    for oracle in oracles:
        expected = ORACLES[oracle](op, inputs, onnx_attrs, const_inputs=set(const),
                                   n_outputs=n_outputs, opset=opset)
        assert len(got) == len(expected), f"{op}: {len(got)} outputs, {oracle} {len(expected)}"
        for k, (a, e) in enumerate(zip(got, expected, strict=True)):
            assert_close(a, e, **TOLERANCES.get(op, EXACT), what=f"{op} output {k} vs {oracle}")
    return got


# ------------------------------------------------------------------------- registry contract


def test_registered_ops_and_kinds():
    for name in SHAPE_OPS | MOVEMENT_OPS:
        spec = registry.get(name)
        assert spec.kind == ("shape" if name in SHAPE_OPS else "movement"), name
        assert (spec.reference.__doc__ or "").strip(), f"{name} has no formula docstring"
    ours = {s.name for s in registry.specs() if s.reference.__module__.endswith(
        (".shape", ".movement")) and not s.domain}  # taskflow's own ops: no ONNX schema
    assert ours == SHAPE_OPS | MOVEMENT_OPS


@pytest.mark.parametrize("name", sorted(SHAPE_OPS | MOVEMENT_OPS))
def test_signature_matches_newest_onnx_schema(name):
    """Every attribute of the newest opset is declared, inputs are positional in ONNX order."""
    schema = onnx.defs.get_schema(name)
    spec = registry.get(name)
    assert spec.attributes == set(schema.attributes), name
    params = inspect.signature(spec.reference).parameters.values()
    positional = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    if spec.variadic:
        assert len(schema.inputs) == 1, name
    else:
        assert len(positional) == len(schema.inputs), name
        assert spec.min_inputs == sum(
            i.option != onnx.defs.OpSchema.FormalParameterOption.Optional
            for i in schema.inputs), name


def test_resize_flops():
    spec = registry.get("Resize")
    assert spec.flops([(1, 3, 4, 4)], [(1, 3, 8, 8)], mode="nearest") == 0
    assert spec.flops([(1, 3, 4, 4)], [(1, 3, 8, 8)], mode="linear") == 3 * 2 * 192
    assert registry.get("Reshape").flops([(2, 3)], [(6,)]) == 0


def test_harness_can_fail():
    """check() catches a wrong reference, a wrong dtype and a wrong output count."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with pytest.raises(AssertionError):
        check("Transpose", [x], {"perm": [0, 1]}, ours=lambda x, perm: x.T)
    with pytest.raises(AssertionError):
        check("Shape", [x], ours=lambda x: np.array(x.shape, np.int32))
    with pytest.raises(AssertionError):
        check("Split", [x], {"axis": 1, "num_outputs": 3}, n_outputs=3,
              ours=lambda x, **kw: np.split(x, 3, axis=1)[:2])


# ------------------------------------------------------------------------- ONNX backend cases

#: ONNX backend test cases we do not run, with the reason.
ONNX_CASE_SKIPS = {
    "test_resize_downsample_scales_cubic_antialias": "antialias=1 is unsupported",
    "test_resize_downsample_scales_linear_antialias": "antialias=1 is unsupported",
    "test_resize_downsample_sizes_cubic_antialias": "antialias=1 is unsupported",
    "test_resize_downsample_sizes_linear_antialias": "antialias=1 is unsupported",
}

#: Module of onnx.backend.test.case.node holding each op's cases.
ONNX_CASE_MODULES = {
    "Range": "rangeop", "GatherND": "gathernd", "GatherElements": "gatherelements",
    "ConstantOfShape": "constantofshape", "EyeLike": "eyelike", "DepthToSpace": "depthtospace",
    "SpaceToDepth": "spacetodepth",
}


def onnx_cases(op: str) -> list[tuple]:
    """(node, inputs, outputs, name) of ONNX's backend test cases for ``op``.

    Runs the case module's ``export*`` functions with ``expect`` swapped for a collector, so
    nothing depends on onnx's global test-case registry.
    """
    from onnx.backend.test.case.base import Base

    mod = importlib.import_module("onnx.backend.test.case.node."
                                  + ONNX_CASE_MODULES.get(op, op.lower()))
    found: list[tuple] = []
    original = mod.expect
    mod.expect = lambda node, inputs, outputs, name, **kw: found.append(
        (node, inputs, outputs, name))
    try:
        for cls in vars(mod).values():
            if inspect.isclass(cls) and issubclass(cls, Base) and cls.__module__ == mod.__name__:
                for export in sorted(k for k in vars(cls) if k.startswith("export")):
                    np.random.seed(0)  # as onnx does before each export
                    getattr(cls, export)()
    finally:
        mod.expect = original
    return [c for c in found if c[0].op_type == op]


def attribute_value(attr: AttributeProto) -> Any:
    """An attribute as the importer hands it over: numpy for tensors, str for strings."""
    value = helper.get_attribute_value(attr)
    if attr.type == AttributeProto.TENSOR:
        return numpy_helper.to_array(value)
    if isinstance(value, bytes):
        return value.decode()
    return value


@pytest.mark.parametrize("op", sorted(SHAPE_OPS | MOVEMENT_OPS))
def test_onnx_backend_cases(op):
    spec = registry.get(op)
    cases = onnx_cases(op)
    ran = 0
    for node, inputs, outputs, name in cases:
        if name in ONNX_CASE_SKIPS:
            continue
        attrs = {a.name: attribute_value(a) for a in node.attribute}
        if op == "Split" and "num_outputs" not in attrs and len(node.input) < 2:
            attrs["num_outputs"] = len(node.output)  # the opset-13 form, as the importer does
        it = iter(inputs)
        args = [None if n == "" else next(it) for n in node.input]
        assert spec.check(len(args), attrs) is None, (name, spec.check(len(args), attrs))
        got = spec(*args, **attrs)
        assert len(got) == len(outputs), name
        for a, e in zip(got, outputs, strict=True):
            assert_close(a, e, **TOLERANCES.get(op, EXACT), what=name)
        ran += 1
    assert ran, f"no ONNX backend case ran for {op}"


# ------------------------------------------------------------------------- shape-kind ops


@FAST
@given(shapes(), st.integers(-6, 6) | st.none(), st.integers(-6, 6) | st.none())
def test_shape(shape, start, end):
    attrs = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    # The ReferenceEvaluator slices to rank + end without clamping it to 0 first.
    bad_end = end is not None and end < -len(shape)
    check("Shape", [np.zeros(shape, np.float32)], attrs,
          oracles=("ort",) if bad_end else BOTH)


@FAST
@given(shapes(), st.sampled_from([np.float32, np.int64, np.bool_]))
def test_size(shape, dtype):
    check("Size", [np.zeros(shape, dtype)])


@FAST
@given(st.sampled_from([np.int32, np.int64, np.float32, np.float64]),
       st.integers(-80, 80), st.integers(-80, 80), st.integers(-20, 20).filter(bool))
def test_range(dtype, start, limit, delta):
    """Quarter steps are exact in every float type, so ORT's accumulation does not drift."""
    scale = 1 if np.dtype(dtype).kind == "i" else 4
    check("Range", [np.array(v / scale, dtype) for v in (start, limit, delta)])


@FAST
@given(st.floats(-100, 100, width=32), st.floats(-100, 100, width=32),
       st.floats(0.125, 10, width=32), st.booleans())
def test_range_float_matches_spec(start, limit, delta, down):
    """start + i * delta rounded once: the ReferenceEvaluator's (spec) answer, not ORT's."""
    delta = -delta if down else delta
    check("Range", [np.float32(v) for v in (start, limit, delta)], oracles=("reference",))


@pytest.mark.parametrize("stash_type", [1, 11])
def test_range_float16_stash_type(stash_type):
    """Opset 27: float16 ranges accumulate in float32 (stash_type 1) or float64 (11)."""
    args = [np.float16(1000), np.float16(1100), np.float16(0.3)]
    out = check("Range", args, {"stash_type": stash_type}, oracles=("reference",), opset=27)[0]
    assert out.dtype == np.float16 and len(out) == 334


@FAST
@given(shapes(max_rank=3), st.sampled_from([None, np.float32, np.float64, np.int32, np.int64,
                                              np.bool_, np.float16]))
def test_constant_of_shape(shape, dtype):
    attrs = {} if dtype is None else {"value": np.ones(1, dtype) * 3}
    check("ConstantOfShape", [np.array(shape, np.int64)], attrs, const={0})


@FAST
@given(st.data())
def test_constant(data):
    kind = data.draw(st.sampled_from(["value", "value_float", "value_floats", "value_int",
                                      "value_ints"]))
    if kind == "value":
        dtype = data.draw(st.sampled_from([np.float32, np.int64, np.int8, np.bool_]))
        value = rand(data.draw, data.draw(shapes(max_rank=3)), dtype)
    elif kind == "value_float":
        value = data.draw(st.floats(-1e6, 1e6, width=32))
    elif kind == "value_floats":
        value = data.draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=5))
    elif kind == "value_int":
        value = data.draw(st.integers(-(2**62), 2**62))
    else:
        value = data.draw(st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=5))
    check("Constant", [], {kind: value})


def test_constant_rejects_strings_and_sparse():
    with pytest.raises(UnsupportedOpError, match="value_string"):
        registry.get("Constant").reference(value_string="abc")
    with pytest.raises(UnsupportedOpError, match="sparse_value"):
        registry.get("Constant").reference(sparse_value=object())
    with pytest.raises(ValueError, match="exactly one"):
        registry.get("Constant").reference(value_int=1, value_float=2.0)


@FAST
@given(st.integers(0, 5), st.integers(0, 5), st.integers(-6, 6),
       st.sampled_from([np.float32, np.int32, np.int64]),
       st.sampled_from([None, 1, 6, 7, 9, 11]))
def test_eye_like(n, m, k, dtype, out_dtype):
    attrs = {"k": k} | ({} if out_dtype is None else {"dtype": out_dtype})
    # ORT 1.31 has no bool EyeLike kernel.
    check("EyeLike", [np.zeros((n, m), dtype)], attrs,
          oracles=("reference",) if out_dtype == 9 else BOTH)
