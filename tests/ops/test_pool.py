"""MaxPool, AveragePool, global pools and LRN against ONNX Runtime and onnx's ReferenceEvaluator.

Known oracle bugs decide which oracle judges which case (found by comparing all three):
  * ORT ignores dilations when resolving SAME_UPPER/SAME_LOWER pads, and for MaxPool with a
    kernel shorter than the stride computes a negative pad and fails. SAME cases are therefore
    also judged by ORT on the equivalent explicit pads ("ort_explicit").
  * onnx's ReferenceEvaluator mishandles pads in 1-D/3-D MaxPool, asymmetric pads, SAME_LOWER,
    dilated AveragePool and AveragePool's ceil_mode; it judges the pad-free NOTSET cases only.
  * The ReferenceEvaluator's LRN loops over the batch instead of channels: fed N == C only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import taskflow.ops as ops
from hypothesis import given, settings
from hypothesis import strategies as st

from taskflow.errors import ShapeError, UnsupportedOpError

from .oracles import assert_close, run_onnx_reference, run_ort

DEFAULT_TOL = (1e-5, 1e-6)
#: (rtol, atol) per op; ops absent here use DEFAULT_TOL. Every op meets it today: window sums
#: are short, and global means of <= ~200 values round alike in any order.
TOL: dict[str, tuple[float, float]] = {}


def _same_as_explicit(x, attrs):
    """``attrs`` with SAME_* auto_pad replaced by the pads the ONNX spec says it means."""
    nd = x.ndim - 2
    s = attrs.get("strides") or [1] * nd
    d = attrs.get("dilations") or [1] * nd
    begin, end = [], []
    for i, k, si, di in zip(x.shape[2:], attrs["kernel_shape"], s, d):
        total = max(0, (math.ceil(i / si) - 1) * si + (k - 1) * di + 1 - i)
        lo, hi = total // 2, total - total // 2
        begin.append(lo if attrs["auto_pad"] == "SAME_UPPER" else hi)
        end.append(hi if attrs["auto_pad"] == "SAME_UPPER" else lo)
    return {**attrs, "auto_pad": "NOTSET", "pads": begin + end, "ceil_mode": 0}


ORACLES = {
    "ort": run_ort,
    "reference": run_onnx_reference,
    "ort_explicit": lambda op, inputs, attrs: run_ort(op, inputs,
                                                      _same_as_explicit(inputs[0], attrs)),
}


def check(op, inputs, attrs, oracles=("ort", "reference")):
    got = ops.get(op)(*inputs, **attrs)
    rtol, atol = TOL.get(op, DEFAULT_TOL)
    assert oracles, "no oracle judges this case"
    for name in oracles:
        want = ORACLES[name](op, inputs, attrs)
        assert_close(got[0], want[0], rtol=rtol, atol=atol, what=f"{op} vs {name}, {attrs}")
    return got[0]


def randn(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@st.composite
def pool_cases(draw, op):
    """(inputs, attrs, oracles) for a random MaxPool or AveragePool node, 1-D to 3-D."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    nd = draw(st.integers(1, 3))

    def per_axis(lo, hi):
        return draw(st.lists(st.integers(lo, hi), min_size=nd, max_size=nd))

    kernel, strides, dil = per_axis(1, 3), per_axis(1, 3), per_axis(1, 2)
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    # ORT requires each pad to be smaller than the kernel.
    pads = ([draw(st.integers(0, k - 1)) for k in kernel * 2] if auto_pad == "NOTSET"
            else [0] * 2 * nd)
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    side = {1: 8, 2: 6, 3: 4}[nd]
    spatial = [draw(st.integers(max(1, sp - pads[i] - pads[i + nd]), sp + side))
               for i, sp in enumerate(span)]
    x = randn(rng, draw(st.integers(1, 2)), draw(st.integers(1, 3)), *spatial)
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dil,
             "auto_pad": auto_pad, "ceil_mode": int(draw(st.booleans()))}
    if auto_pad == "NOTSET":
        attrs["pads"] = pads
    if op == "AveragePool":
        attrs["count_include_pad"] = int(draw(st.booleans()))
    if auto_pad.startswith("SAME"):
        oracles = ["ort_explicit"]
        if all(d == 1 for d in dil) and all(k >= s for k, s in zip(kernel, strides)):
            oracles.append("ort")
    else:
        oracles = ["ort"]
        if auto_pad == "NOTSET" and not any(pads) and all(d == 1 for d in dil) and (
                op == "MaxPool" or not attrs["ceil_mode"]):
            oracles.append("reference")
    return [x], attrs, oracles


@settings(max_examples=150, deadline=None)
@given(pool_cases("MaxPool"))
def test_max_pool_matches_oracles(case):
    check("MaxPool", *case)


@settings(max_examples=150, deadline=None)
@given(pool_cases("AveragePool"))
def test_average_pool_matches_oracles(case):
    check("AveragePool", *case)


@pytest.mark.parametrize("n", [0, 1, 3])
@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_batch_sizes(op, n):
    x = randn(np.random.default_rng(n), n, 2, 7, 6)
    check(op, [x], {"kernel_shape": [3, 2], "strides": [2, 2], "pads": [1, 0, 1, 1]}, ["ort"])


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_one_by_one_spatial(op):
    x = randn(np.random.default_rng(0), 2, 3, 1, 1)
    y = check(op, [x], {"kernel_shape": [1, 1]})
    np.testing.assert_array_equal(y, x)
    check(op, [x], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, ["ort"])


def test_resnet_stem_max_pool():
    x = randn(np.random.default_rng(1), 1, 64, 112, 112)
    y = check("MaxPool", [x], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1] * 4},
              ["ort"])
    assert y.shape == (1, 64, 56, 56)


def test_ceil_mode_drops_window_starting_in_end_padding():
    # in 5, k 2, s 2, pads (1, 1): ceil gives 4 windows, but the 4th would start at padded 6,
    # inside the end padding, so the spec (and ORT) keep 3.
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 5)
    attrs = {"kernel_shape": [2], "strides": [2], "pads": [1, 1], "ceil_mode": 1}
    np.testing.assert_array_equal(check("MaxPool", [x], attrs, ["ort"]), [[[0, 2, 4]]])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_max_pool_integer_pads_with_dtype_minimum(dtype):
    x = np.random.default_rng(2).integers(0, 100, (1, 2, 5, 5)).astype(dtype)
    if dtype == np.int8:
        x -= 50
    check("MaxPool", [x], {"kernel_shape": [3, 3], "pads": [1] * 4}, ["ort"])


def test_max_pool_rejects_what_it_does_not_support():
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(UnsupportedOpError, match="storage_order"):
        ops.get("MaxPool").reference(x, kernel_shape=[2, 2], storage_order=1)
    with pytest.raises(ShapeError, match="kernel_shape"):
        ops.get("MaxPool").reference(x, kernel_shape=[2])
    with pytest.raises(ShapeError, match="does not fit"):
        ops.get("AveragePool").reference(x, kernel_shape=[5, 5])


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(0, 2))
def test_global_pools_match_oracles(seed, nd, n):
    rng = np.random.default_rng(seed)
    x = randn(rng, n, int(rng.integers(1, 4)), *rng.integers(1, 7, nd))
    for op in ("GlobalAveragePool", "GlobalMaxPool"):
        # The ReferenceEvaluator's GlobalMaxPool handles 4-D inputs only.
        y = check(op, [x], {}, ["ort", "reference"] if n and nd == 2 else ["ort"])
        assert y.shape == x.shape[:2] + (1,) * nd


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 3, 5, 7]),
       st.floats(1e-4, 0.5), st.floats(0.5, 1.0), st.floats(0.5, 2.0))
def test_lrn_matches_oracles(seed, size, alpha, beta, bias):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(1, 8))
    x = randn(rng, c, c, *rng.integers(1, 5, 2))  # N == C: see the module docstring
    check("LRN", [x], {"size": size, "alpha": alpha, "beta": beta, "bias": bias})


def test_lrn_even_size_and_batch_zero():
    x = randn(np.random.default_rng(3), 4, 4, 3, 3)
    check("LRN", [x], {"size": 4}, ["reference"])  # ORT accepts odd sizes only
    check("LRN", [x[:0]], {"size": 3}, ["ort"])


def test_registration():
    for name in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LRN"):
        assert ops.get(name).kind == "window"


def test_flops_on_known_shapes():
    # ResNet-50 stem pool: 64 * 56 * 56 outputs, 3 * 3 window each.
    pool = ops.get("MaxPool").flops
    assert pool([(1, 64, 112, 112)], [(1, 64, 56, 56)], kernel_shape=[3, 3]) == 1_806_336
    assert ops.get("AveragePool").flops([(2, 3, 8)], [(2, 3, 4)], kernel_shape=[2]) == 48
    assert ops.get("GlobalAveragePool").flops([(1, 2048, 7, 7)], [(1, 2048, 1, 1)]) == 100_352
    # LRN: per element one square, `size` adds, then scale, pow and divide.
    assert ops.get("LRN").flops([(1, 96, 55, 55)], [(1, 96, 55, 55)], size=5) == \
        96 * 55 * 55 * 9
