"""The executor's shape cache: the Shape -> Gather -> Concat chains of dynamic-axis exports
run once per input signature, and everything else runs every time."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

import taskflow as tf
from taskflow.executor import SHAPE_CACHE_MAX_ELEMENTS, shape_only_steps

from ..ops.oracles import spy_wide_rows


def _dynamic_reshape_model() -> onnx.ModelProto:
    """y = Reshape(x, [N, -1]) * 2 + ConstantOfShape([N, C*H]) with N read by Shape/Gather,
    as torch's TorchScript exporter writes a flatten with a dynamic batch."""
    c = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [len(v)], v)  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Shape", ["flat"], ["flat_shape"]),
        helper.make_node("ConstantOfShape", ["flat_shape"], ["ones"],
                         value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("Mul", ["flat", "two"], ["twice"]),
        helper.make_node("Add", ["twice", "ones"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "dynamic_flatten",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 60])],
        [helper.make_tensor("zero", TensorProto.INT64, [], [0]), c("axes0", [0]),
         c("minus1", [-1]), helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_shape_only_steps_follow_shapes_and_constants_only():
    nodes = [("Shape", ["x"], ["s"]), ("Gather", ["s", "i"], ["n"]),
             ("RandomNormalLike", ["n"], ["r"]), ("Add", ["n", "r"], ["m"]),
             ("Reshape", ["x", "n"], ["y"]), ("Cast", ["n"], ["f"])]
    assert shape_only_steps(nodes, {"i"}) == frozenset({0, 1, 5})


def test_cached_shape_values_give_the_same_results_for_every_batch():
    model = tf.load(_dynamic_reshape_model().SerializeToString(), optimize=False)
    plan = model._plan
    assert {plan.steps[k].node.op for k in plan.shape_steps} == {
        "Shape", "Gather", "Unsqueeze", "Concat", "ConstantOfShape"}
    rng = np.random.default_rng(0)
    for batch in (2, 5, 2, 7, 5):
        x = rng.standard_normal((batch, 3, 4, 5)).astype(np.float32)
        (y,) = model.run(None, {"x": x})
        np.testing.assert_array_equal(y, x.reshape(batch, -1) * 2 + 1)
    assert len(plan.shape_cache) == 3  # one entry per batch size seen
    values, skipped = plan.shape_cache[plan._signature({"x": np.zeros((5, 3, 4, 5),
                                                                      np.float32)})]
    assert values["target"].tolist() == [5, -1] and values["ones"].shape == (5, 60)
    assert {plan.steps[k].node.op for k in skipped} == {"Shape", "Gather", "Unsqueeze",
                                                        "Concat", "ConstantOfShape"}
    # the data path never is: a new x with the cached shape gives its own result
    x = np.full((5, 3, 4, 5), -1.0, np.float32)
    np.testing.assert_array_equal(model.run(None, {"x": x})[0], np.full((5, 60), -1.0))


def test_a_large_shape_derived_value_is_not_kept():
    # ConstantOfShape's (N, 60) output past the limit is computed every run
    model = tf.load(_dynamic_reshape_model().SerializeToString(), optimize=False)
    n = SHAPE_CACHE_MAX_ELEMENTS // 60 + 1
    x = np.ones((n, 3, 4, 5), np.float32)
    for _ in range(2):
        (y,) = model.run(None, {"x": x})
        assert y.shape == (n, 60) and (y == 3).all()
    ((values, skipped),) = model._plan.shape_cache.values()
    assert "ones" not in values and values["target"].tolist() == [n, -1]
    assert "ConstantOfShape" not in {model._plan.steps[k].node.op for k in skipped}


def test_initializers_are_registered_and_a_linear_layer_packs_its_weight(monkeypatch):
    """The plan registers the model's initializers as constants; a MatMul + Add + Relu on a
    (K, N) weight then runs as one FusedMatMul on the weight packed once (the 16-lane kernel
    where the CPU has AVX-512F and oneMKL does not run the GEMMs), and matches numpy. The
    input is not registered."""
    from taskflow.ops.cpu import blas, common, lowp

    rng = np.random.default_rng(5)
    w = (rng.standard_normal((256, 128)) * 0.1).astype(np.float32)
    b = rng.standard_normal(128).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["pre"]),
         helper.make_node("Relu", ["pre"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 128])],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    model = tf.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [n.op for n in model.graph.nodes] == ["FusedMatMul"]
    (node,) = model.graph.nodes
    weight, bias = (model._plan.constants[name] for name in node.inputs[1:3])
    assert common.is_constant(weight) and common.is_constant(bias)
    calls = spy_wide_rows(monkeypatch)
    x = rng.standard_normal((2048, 256)).astype(np.float32)  # 67M multiply-adds
    (y,) = model.run(None, {"x": x})
    assert not common.is_constant(x)
    np.testing.assert_allclose(y, np.maximum(x @ w + b, 0), rtol=1e-4, atol=1e-5)
    assert np.ptp(x @ w + b, axis=0).min() > 0.5  # every output varies over the rows
    wide = "avx512f" in lowp.cpu_features() and blas.backend() != "mkl"
    assert sum(calls) == (2048 if wide else 0)
