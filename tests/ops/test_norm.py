"""BatchNormalization, LayerNormalization and InstanceNormalization against ONNX Runtime and
onnx's ReferenceEvaluator."""

from __future__ import annotations

import numpy as np
import pytest
import taskflow.ops as ops
from hypothesis import given, settings
from hypothesis import strategies as st

from taskflow.errors import ShapeError, UnsupportedOpError

from .oracles import assert_close, run_onnx_reference, run_ort

DEFAULT_TOL = (1e-5, 1e-6)
#: (rtol, atol) per op; ops absent here use DEFAULT_TOL.
TOL = {
    # Outputs are (x - mean) * inv_std * scale with the statistics summed in another order than
    # ORT's; inv_std up to 1/sqrt(1e-5) ~ 316 scales their rounding, so a few ulps become ~1e-5.
    "LayerNormalization": (1e-4, 1e-5),
    "InstanceNormalization": (1e-4, 1e-5),
}

ORACLES = {"ort": run_ort, "reference": run_onnx_reference}
#: One element per instance: variance 0 and inv_std = 1/sqrt(epsilon) ~ 316. ORT folds to
#: x * a + (B - mean * a) and loses ~1 ulp of x * a (~1e-4); the exact answer is B.
SINGLE_ELEMENT_ORACLES = ("reference",)


def check(op, inputs, attrs, oracles=("ort", "reference"), n_outputs=1):
    got = ops.get(op)(*inputs, **attrs)
    rtol, atol = TOL.get(op, DEFAULT_TOL)
    for name in oracles:
        want = ORACLES[name](op, inputs, attrs, n_outputs=n_outputs)
        for k, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, rtol=rtol, atol=atol, what=f"{op} vs {name}, output {k}, {attrs}")
    return got


def randn(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def bn_inputs(rng, x, dtype=np.float32):
    c = x.shape[1]
    return [x, randn(rng, c, dtype=dtype), randn(rng, c, dtype=dtype),
            randn(rng, c, dtype=dtype), rng.uniform(0.1, 2.0, c).astype(dtype)]


shapes = st.lists(st.integers(1, 5), min_size=0, max_size=3)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(1, 4), shapes,
       st.sampled_from([1e-5, 1e-3, 0.1]))
def test_batch_normalization_matches_oracles(seed, n, c, spatial, epsilon):
    rng = np.random.default_rng(seed)
    inputs = bn_inputs(rng, randn(rng, n, c, *spatial))
    check("BatchNormalization", inputs, {"epsilon": epsilon, "momentum": 0.5})


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.integers(1, 6), min_size=1, max_size=4),
       st.data(), st.booleans(), st.sampled_from([1e-5, 1e-2]))
def test_layer_normalization_matches_oracles(seed, shape, data, with_bias, epsilon):
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    x = randn(rng, *shape) * 3 + 1
    norm_shape = shape[axis:]
    inputs = [x, randn(rng, *norm_shape)] + ([randn(rng, *norm_shape)] if with_bias else [])
    check("LayerNormalization", inputs, {"axis": axis, "epsilon": epsilon}, n_outputs=3)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(1, 4),
       st.lists(st.integers(1, 6), min_size=1, max_size=3), st.sampled_from([1e-5, 1e-2]))
def test_instance_normalization_matches_oracles(seed, n, c, spatial, epsilon):
    rng = np.random.default_rng(seed)
    inputs = [randn(rng, n, c, *spatial) * 2 - 1, randn(rng, c), randn(rng, c)]
    check("InstanceNormalization", inputs, {"epsilon": epsilon}, SINGLE_ELEMENT_ORACLES
          if np.prod(spatial) == 1 else ("ort", "reference"))


def test_batch_zero_and_one():
    rng = np.random.default_rng(0)
    for n in (0, 1):
        x = randn(rng, n, 3, 4, 4)
        check("BatchNormalization", bn_inputs(rng, x), {})
        check("InstanceNormalization", [x, randn(rng, 3), randn(rng, 3)], {})
        check("LayerNormalization", [x, randn(rng, 4, 4)], {"axis": 2}, n_outputs=3)


def test_one_by_one_spatial():
    rng = np.random.default_rng(1)
    x, scale, b = randn(rng, 2, 3, 1, 1), randn(rng, 3), randn(rng, 3)
    check("BatchNormalization", bn_inputs(rng, x), {})
    # One element per (n, c): zero variance, so the output is exactly the shift B.
    y = check("InstanceNormalization", [x, scale, b], {}, SINGLE_ELEMENT_ORACLES)[0]
    np.testing.assert_array_equal(y, np.broadcast_to(b.reshape(1, 3, 1, 1), y.shape))


def test_batch_norm_rank_2_and_float64():
    rng = np.random.default_rng(2)
    check("BatchNormalization", bn_inputs(rng, randn(rng, 5, 4)), {})
    x64 = randn(rng, 2, 3, 4, dtype=np.float64)
    y = check("BatchNormalization", bn_inputs(rng, x64, np.float64), {})[0]
    assert y.dtype == np.float64


def test_batch_norm_float64_parameters_keep_float32_output():
    rng = np.random.default_rng(3)
    x = randn(rng, 2, 3, 4)
    y = ops.get("BatchNormalization").reference(*bn_inputs(rng, x, np.float64))
    assert y.dtype == np.float32


def test_batch_norm_training_mode_is_refused():
    rng = np.random.default_rng(4)
    with pytest.raises(UnsupportedOpError, match="training_mode"):
        ops.get("BatchNormalization").reference(*bn_inputs(rng, randn(rng, 2, 3)),
                                                training_mode=1)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_layer_norm_stash_type_sets_statistics_dtype(dtype):
    # stash_type=1: Mean and InvStdDev are float32 whatever X is (as ORT returns them); float64
    # inputs are still normalised in float64.
    rng = np.random.default_rng(5)
    x, scale = randn(rng, 2, 3, 8, dtype=dtype), randn(rng, 8, dtype=dtype)
    y, mean, inv_std = ops.get("LayerNormalization")(x, scale)
    assert (y.dtype, mean.dtype, inv_std.dtype) == (dtype, np.float32, np.float32)
    want = run_ort("LayerNormalization", [x, scale], n_outputs=3)
    tol = {np.float16: (2e-3, 2e-3), np.float64: (1e-10, 1e-12)}[dtype]  # fp16 output ulps
    assert_close(y, want[0], rtol=tol[0], atol=tol[1], what="Y")
    assert_close(mean, want[1], rtol=1e-5, atol=1e-6, what="Mean")
    assert_close(inv_std, want[2], rtol=1e-5, atol=1e-6, what="InvStdDev")


def test_layer_norm_errors():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ShapeError, match="axis"):
        ops.get("LayerNormalization").reference(x, np.ones(3, np.float32), axis=2)
    with pytest.raises(UnsupportedOpError, match="stash_type"):
        ops.get("LayerNormalization").reference(x, np.ones(3, np.float32), stash_type=7)


def test_registration():
    for name in ("BatchNormalization", "LayerNormalization", "InstanceNormalization"):
        assert ops.get(name).kind == "norm"


def test_flops_on_known_shapes():
    shape = (1, 64, 56, 56)  # 200_704 elements
    assert ops.get("BatchNormalization").flops([shape] + [(64,)] * 4, [shape]) == 401_408
    assert ops.get("InstanceNormalization").flops([shape, (64,), (64,)], [shape]) == 1_404_928
    ln = ops.get("LayerNormalization").flops([(8, 128, 768), (768,)],
                                             [(8, 128, 768), (8, 128, 1), (8, 128, 1)])
    assert ln == 7 * 8 * 128 * 768


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(1, 4), shapes,
       st.sampled_from(["Relu", "LeakyRelu", "Clip", "Sigmoid", ""]))
def test_fused_batch_normalization_is_batch_norm_then_the_activation(seed, n, c, spatial,
                                                                     activation):
    """FusedBatchNormalization (taskflow's) against ORT running BatchNormalization and the
    activation op as two nodes."""
    from onnx import helper

    from .oracles import ORT_IR_VERSION

    rng = np.random.default_rng(seed)
    inputs = bn_inputs(rng, randn(rng, n, c, *spatial))
    params = {"LeakyRelu": [0.2], "Clip": [-0.3, 0.4]}.get(activation, [])
    got = ops.get("FusedBatchNormalization")(*inputs, epsilon=1e-3, activation=activation,
                                            activation_params=params)[0]
    names = ["x", "s", "b", "m", "v"]
    nodes = [helper.make_node("BatchNormalization", names, ["bn" if activation else "y"],
                              epsilon=1e-3)]
    inits = [helper.make_tensor(k, 1, a.shape, a.ravel()) for k, a in zip(names[1:], inputs[1:])]
    if activation == "Clip":
        inits += [helper.make_tensor("lo", 1, [], [params[0]]),
                  helper.make_tensor("hi", 1, [], [params[1]])]
        nodes.append(helper.make_node("Clip", ["bn", "lo", "hi"], ["y"]))
    elif activation:
        extra = {"alpha": params[0]} if params else {}
        nodes.append(helper.make_node(activation, ["bn"], ["y"], **extra))
    model = helper.make_model(helper.make_graph(
        nodes, "bn_act", [helper.make_tensor_value_info("x", 1, inputs[0].shape)],
        [helper.make_empty_tensor_value_info("y")], initializer=inits),
        opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = ORT_IR_VERSION
    import onnxruntime as ort

    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": inputs[0]})
    assert_close(got, want[0], rtol=1e-5, atol=1e-6, what=f"FusedBatchNormalization {activation}")
