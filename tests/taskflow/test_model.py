"""Model: ONNX Runtime's calling convention, input checking, unsupported-op reporting, info."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import taskflow as tf
from taskflow.errors import DTypeError, InputError, UnsupportedOpError
from tests.conformance.light_models import light_path


def _two_input_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    graph = helper.make_graph(
        nodes, "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_run_matches_onnxruntime_signature_and_values():
    ort = pytest.importorskip("onnxruntime")
    proto = _two_input_model()
    proto.ir_version = 11
    model = tf.load(proto)
    rng = np.random.default_rng(0)
    feed = {"a": rng.standard_normal((3, 4), dtype=np.float32),
            "b": rng.standard_normal((3, 4), dtype=np.float32)}
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ours, theirs = model.run(None, feed), sess.run(None, feed)
    assert isinstance(ours, list) and len(ours) == len(theirs) == 1
    np.testing.assert_array_equal(ours[0], theirs[0])
    assert model.run(["y"], feed)[0].shape == (3, 4)
    ins = model.get_inputs()
    assert [(i.name, i.shape, i.type) for i in ins] == \
        [(i.name, i.shape, i.type) for i in sess.get_inputs()]
    assert [(o.name, o.type) for o in model.get_outputs()] == \
        [(o.name, o.type) for o in sess.get_outputs()]


@pytest.mark.parametrize("feed, error, words", [
    ({"a": np.zeros((2, 4), np.float32)}, InputError, ["missing input(s) ['b']"]),
    ({"a": np.zeros((2, 4), np.float32), "b": np.zeros((2, 4), np.float32),
      "c": np.zeros(1)}, InputError, ["unexpected input(s) ['c']"]),
    ({"a": np.zeros((2, 4), np.float64), "b": np.zeros((2, 4), np.float32)}, DTypeError,
     ["'a'", "float64", "float32"]),
    ({"a": np.zeros((2, 5), np.float32), "b": np.zeros((2, 5), np.float32)}, InputError,
     ["'a'", "(2, 5)", "(N, 4)", "axis 1 must be 4"]),
    ({"a": np.zeros((2, 4, 1), np.float32), "b": np.zeros((2, 4), np.float32)}, InputError,
     ["'a'", "rank 3", "rank 2"]),
    ({"a": np.zeros((2, 4), np.float32), "b": np.zeros((3, 4), np.float32)}, InputError,
     ["'b'", "N=3", "'a'", "N=2"]),
])
def test_bad_feed_names_the_input_expected_and_found(feed, error, words):
    model = tf.load(_two_input_model())
    with pytest.raises(error) as info:
        model.run(None, feed)
    for w in words:
        assert w in str(info.value), f"{w!r} not in {info.value}"


def test_unknown_output_name_lists_outputs():
    model = tf.load(_two_input_model())
    feed = {"a": np.zeros((1, 4), np.float32), "b": np.zeros((1, 4), np.float32)}
    with pytest.raises(InputError, match=r"unknown output name\(s\) \['z'\].*\['y'\]"):
        model.run(["z"], feed)


def test_every_unsupported_node_is_listed_before_anything_runs():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("LSTM", ["a", "w", "r"], ["b"], name="rnn", hidden_size=2),
             helper.make_node("GRU", ["b", "w", "r"], ["c"], name="gru", hidden_size=2),
             helper.make_node("Conv", ["c", "w2"], ["y"], name="conv", unknown_attr=3)]
    graph = helper.make_graph(
        nodes, "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[helper.make_tensor(n, TensorProto.FLOAT, [1], [1.0]) for n in "wr"]
        + [helper.make_tensor("k", TensorProto.INT64, [1], [1]),
           helper.make_tensor("w2", TensorProto.FLOAT, [1, 1, 1], [1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError) as info:
        tf.load(model)
    msg = str(info.value)
    assert {("LSTM", "rnn"), ("GRU", "gru"), ("Conv", "conv")} <= set(info.value.ops)
    assert ("Relu", "ok") not in info.value.ops
    for word in ("LSTM (rnn)", "GRU (gru)", "Conv (conv)", "unknown_attr"):
        assert word in msg


def test_info_counts_parameters_and_flops_of_resnet50():
    model = tf.load(light_path("resnet50"))
    info = model.info()
    # ResNet-50: 25.6 M parameters, ~4.1 G multiply-adds = ~8.2 GFLOP per 224x224 image.
    assert 25.4e6 < info.parameters < 25.7e6
    assert 7.9e9 < info.flops_per_sample < 8.4e9
    assert "->" in info.optimized
    text = str(info)
    assert "GFLOP per sample" in text and "batch" in text


def test_optimize_off_keeps_the_source_graph():
    src = tf.load(light_path("squeezenet"), optimize=False)
    opt = tf.load(light_path("squeezenet"))
    assert len(src.graph.nodes) > len(opt.graph.nodes)
    assert "Dropout" in src.graph.op_counts() and "Dropout" not in opt.graph.op_counts()
    assert opt.source_graph.op_counts() == src.graph.op_counts()


def test_save_writes_the_source_graph_for_other_runtimes(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = tf.load(light_path("squeezenet"))
    path = tmp_path / "squeezenet.onnx"
    model.save(path)
    saved = onnx.load(path)
    assert {o.domain for o in saved.opset_import} <= {"", "ai.onnx"}
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (expected,) = sess.run(None, {sess.get_inputs()[0].name: x})
    (ours,) = model.run(None, {model.get_inputs()[0].name: x})
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)
