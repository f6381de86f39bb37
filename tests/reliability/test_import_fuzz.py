"""Whatever bytes arrive as a model, loading it ends in a model or a TaskflowError that names
the file: never a raw ValueError, KeyError, TypeError or UnicodeDecodeError from the depths."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import taskflow as tf
from taskflow.errors import TaskflowError


def _model() -> bytes:
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "w")
    shape = numpy_helper.from_array(np.array([-1, 3], dtype=np.int64), "shape")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["y"], name="reshape")]
    graph = helper.make_graph(
        nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[w, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


MODEL = _model()


def _load_or_refuse(data: bytes) -> None:
    try:
        model = tf.load(data)
    except TaskflowError as exc:
        assert str(exc)
        return
    inputs = model.get_inputs()
    if len(inputs) == 1 and inputs[0].shape and len(inputs[0].shape) == 2:
        try:  # a model that loads also runs, or refuses its input clearly
            model.run(None, {inputs[0].name: np.ones((2, 3), np.float32)})
        except TaskflowError:
            pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_bytes_load_or_raise_taskflow_errors(data):
    raw = bytearray(MODEL)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    _load_or_refuse(bytes(raw))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, len(MODEL) - 1))
def test_truncated_files_are_refused(cut):
    _load_or_refuse(MODEL[:cut])


def _with_initializer(tensor: onnx.TensorProto) -> onnx.ModelProto:
    model = onnx.load_from_string(MODEL)
    model.graph.initializer[0].CopyFrom(tensor)
    return model


@pytest.mark.parametrize("damage", ["short raw_data", "short float_data", "undefined type"])
def test_a_broken_initializer_names_the_tensor(damage):
    t = numpy_helper.from_array(np.ones((3, 4), np.float32), "w")
    if damage == "short raw_data":
        t.raw_data = t.raw_data[:7]
    elif damage == "short float_data":
        t.ClearField("raw_data")
        t.float_data.extend([1.0, 2.0])
    else:
        t.data_type = 0
    with pytest.raises(TaskflowError, match="'w'"):
        tf.load(_with_initializer(t))


@pytest.mark.parametrize("where", ["node name", "string attribute"])
def test_non_utf8_bytes_load_or_are_refused_clearly(where):
    if where == "node name":
        raw = MODEL.replace(b"relu", b"r\xffl\xfe")
    else:
        model = onnx.load_from_string(MODEL)
        model.graph.node[1].attribute.append(helper.make_attribute("mode", b"x\xff\xfe"))
        raw = model.SerializeToString()
    _load_or_refuse(raw)


@pytest.mark.parametrize("dim", [-5, 2**40])
def test_info_on_an_impossible_declared_dim(dim):
    model = onnx.load_from_string(MODEL)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = dim
    try:
        info = tf.load(model).info()
    except TaskflowError as exc:
        assert str(dim) in str(exc)
    else:
        assert info.parameters == 14
