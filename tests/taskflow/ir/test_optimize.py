"""Graph passes: each is numerically equivalent on the light model zoo, and does its job."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import taskflow as tf
from taskflow.executor import ExecutionPlan
from taskflow.ir.optimize import PASSES, optimize
from tests.conformance.light_models import (
    dummy_input,
    light_path,
    some_light_models,
    with_random_weights,
)

#: Folding BatchNorm rounds W*s once in float32 instead of scaling activations: ~1e-6.
RTOL = 2e-6


def _graph_and_input(name: str):
    proto = with_random_weights(onnx.load(light_path(name)), seed=3)
    _, x = dummy_input(proto)
    x = np.random.default_rng(4).standard_normal(x.shape, dtype=np.float32)
    return tf.load(proto, optimize=False).graph, x


def _run(graph, x):
    return ExecutionPlan(graph).run({graph.inputs[0].name: x})[graph.outputs[0].name]


# BatchNorm folding (ResNet, DenseNet, Inception v2), channel shuffles (ShuffleNet), Concat and
# Dropout (SqueezeNet); the plain conv chains (AlexNet, ZFNet, VGG, Inception v1) add nothing
@pytest.mark.parametrize("name", some_light_models("resnet50", "densenet121", "inception_v2",
                                                   "shufflenet", "squeezenet"))
def test_each_pass_and_all_passes_keep_the_numbers(name):
    graph, x = _graph_and_input(name)
    expected = _run(graph, x)
    scale = np.abs(expected).max()
    for pass_name in PASSES:
        out, report = optimize(graph, [pass_name])
        if report.after == report.before and out.initializers.keys() == graph.initializers.keys():
            continue  # the pass found nothing to do here: the same graph
        err = np.abs(_run(out, x) - expected).max() / scale
        assert err <= RTOL, f"{name}: pass {pass_name} changed the output by {err:.2e}"
    out, report = optimize(graph)
    assert report.after < report.before
    err = np.abs(_run(out, x) - expected).max() / scale
    assert err <= RTOL, f"{name}: all passes changed the output by {err:.2e}"


def test_resnet50_batchnorms_folded_and_epilogues_fused():
    graph, _ = _graph_and_input("resnet50")
    out, report = optimize(graph)
    ops = out.op_counts()
    assert "BatchNormalization" not in ops and "Relu" not in ops and "Sum" not in ops
    fused = [n for n in out.nodes if n.op == "FusedConv"]
    assert len(fused) >= 49
    assert sum(1 for n in fused if len(n.inputs) == 4 and n.inputs[3]) == 16  # residual adds
    assert report.by_pass["fold_batchnorm"] == 53


def test_dropout_and_identity_removed_and_dead_nodes_dropped():
    graph, _ = _graph_and_input("squeezenet")
    assert "Dropout" in graph.op_counts()
    out, _ = optimize(graph)
    assert "Dropout" not in out.op_counts()
    used = {i for n in out.nodes for i in n.inputs}
    assert set(out.initializers) <= used


def test_unknown_pass_is_refused_with_the_list():
    graph, _ = _graph_and_input("zfnet512")
    with pytest.raises(ValueError, match="known: .*fold_batchnorm"):
        optimize(graph, ["fold_everything"])


def test_shufflenet_channel_shuffles_become_one_node_each():
    graph, x = _graph_and_input("shufflenet")
    transposes = graph.op_counts()["Transpose"]
    assert transposes >= 10
    out, report = optimize(graph, ["fuse_channel_shuffle"])
    counts = out.op_counts()
    assert counts.get("ChannelShuffle") == transposes
    assert "Transpose" not in counts
    assert report.by_pass["fuse_channel_shuffle"] == 2 * transposes
    shuffle = next(n for n in out.nodes if n.op == "ChannelShuffle")
    assert shuffle.attrs == {"group": 4} and shuffle.domain == "taskflow"
    np.testing.assert_array_equal(_run(out, x), _run(graph, x))


def test_a_reshape_transpose_reshape_that_is_no_shuffle_stays():
    """The same three ops with another permutation (a spatial transpose) are left alone."""
    from onnx import helper, numpy_helper

    nodes = [helper.make_node("Reshape", ["x", "split"], ["r"]),
             helper.make_node("Transpose", ["r"], ["t"], perm=[0, 1, 2, 4, 3]),
             helper.make_node("Reshape", ["t", "back"], ["y"])]
    proto = helper.make_model(helper.make_graph(
        nodes, "not_a_shuffle",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 6, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 6, 4, 4])],
        initializer=[numpy_helper.from_array(np.array([0, 2, 3, 4, 4]), "split"),
                     numpy_helper.from_array(np.array([0, 6, 4, 4]), "back")]),
        opset_imports=[helper.make_opsetid("", 17)])
    graph = tf.load(proto, optimize=False).graph
    out, _ = optimize(graph, ["fuse_channel_shuffle"])
    assert out.op_counts() == graph.op_counts()


def test_densenet_batchnorm_relu_pairs_become_fused_batchnorms():
    """DenseNet's pre-activation BatchNorm + ReLU cannot fold into a convolution (the ReLU
    sits between): each pair becomes one FusedBatchNormalization with the activation."""
    graph, x = _graph_and_input("densenet121")
    out, _ = optimize(graph)
    counts = out.op_counts()
    fused = [n for n in out.nodes if n.op == "FusedBatchNormalization"]
    assert len(fused) >= 58 and counts.get("Relu", 0) == 0
    assert all(n.attrs["activation"] == "Relu" and "momentum" not in n.attrs for n in fused)
    expected = _run(graph, x)
    err = np.abs(_run(out, x) - expected).max() / np.abs(expected).max()
    assert err <= RTOL


def test_shufflenet_shuffles_fold_into_the_convolutions_before_them():
    graph, x = _graph_and_input("shufflenet")
    out, report = optimize(graph)
    assert "ChannelShuffle" not in out.op_counts() and "Transpose" not in out.op_counts()
    folded = [n for n in out.nodes if n.attrs.get("channel_shuffle")]
    assert len(folded) == graph.op_counts()["Transpose"] and report.by_pass[
        "fold_shuffle_into_conv"] == len(folded)
    assert all(n.op == "FusedConv" and n.attrs["channel_shuffle"] == 4 for n in folded)
    expected = _run(graph, x)
    err = np.abs(_run(out, x) - expected).max() / np.abs(expected).max()
    assert err <= RTOL
