"""The batch analysis (:mod:`taskflow.dask.trace`): layouts, roles, and never a wrong result."""

from __future__ import annotations

import math
import warnings

import dask.array as da
import numpy as np
import pytest

from taskflow.dask.lower import get_trace
from taskflow.dask.units import Bind, Check, Program, run_unit
from taskflow.errors import ShapeError

from . import layout_models as lm

pytestmark = pytest.mark.timeout(120)


def trace_of(model, **nonbatch):
    shapes = {v.name: tuple(v.shape[1:]) for v in model.graph.inputs}
    dtypes = {v.name: np.dtype(v.dtype) for v in model.graph.inputs}
    return get_trace(model, shapes, {}, dtypes)


def as_dask(feed, rows):
    return {k: da.from_array(v, chunks=(rows, *v.shape[1:])) for k, v in feed.items()}


def test_layouts_follow_the_batch_through_transposes_and_merges():
    trace = trace_of(lm.mha_sequence_first())
    seen = set(trace.layouts.values())
    # batch-first input, sequence-first (S, B, E), heads merged (S, B*H, HD) and (B*H, S, HD),
    # the batch inner in (S*B, E)
    assert {(0, 1, 1), (1, 1, 1), (1, lm.H, 1), (0, lm.H, 1), (0, lm.S, lm.S)} <= seen, seen
    assert not trace.global_nodes, [(n.name, n.reason) for n in trace.global_nodes]
    assert trace.whole_batch_message() == ""


def test_shape_arithmetic_is_meta_and_recomputed_per_task():
    model = lm.bert_layer(torchscript=True)
    trace = trace_of(model)
    roles = {n.node.op: set() for n in trace.nodes}
    for n in trace.nodes:
        roles[n.node.op].add(n.role)
    assert roles["Shape"] == {"meta"} and roles["Concat"] == {"meta"}
    assert roles["Range"] == {"meta"}  # position ids from the sequence length
    assert roles["Reshape"] == {"local"}  # the Flatten-ed mask and the head split


def test_a_mixing_reshape_runs_whole_and_its_shape_comes_from_the_whole_batch():
    """(B, S) -> (S, B) with the shape gathered from Shape(x): per chunk it would reshape
    the chunk's rows into other rows. It must run whole, from whole-batch shapes (what broke
    the first patch), while the Relu after it runs per chunk."""
    g = lm._G()
    shp = g.op("Shape", "x")
    new = g.op("Concat", g.op("Slice", shp, g.const([1]), g.const([2])),
               g.op("Slice", shp, g.const([0]), g.const([1])), axis=0)
    r = g.op("Reshape", "x", new)
    g.nodes[-1].name = "swap_rows"
    out = g.op("Relu", r)
    g.nodes[-1].name = "relu"
    model = g.model([lm._fin("x", "N", 6)], out, "swap_rows")
    trace = trace_of(model)
    assert {n.name: n.role for n in trace.compute_nodes} == {"swap_rows": "global",
                                                             "relu": "local"}
    feed = lm.sample(model, 5)
    for rows in (1, 2):
        with pytest.warns(UserWarning, match="'swap_rows' \\(Reshape\\) is not batch-local"):
            y = model.predict(as_dask(feed, rows))
        np.testing.assert_allclose(y.compute(scheduler="threads"), model.run(None, feed)[0])


def test_several_mixing_nodes_give_one_warning_naming_each():
    g = lm._G()
    a = g.op("Softmax", "x", axis=0)
    g.nodes[-1].name = "softmax_rows"
    b = g.op("ReduceMean", g.op("Relu", a), axes=[0], keepdims=1)
    g.nodes[-1].name = "mean_rows"
    model = g.model([lm._fin("x", "N", 4)], g.op("Sub", "x", b), "two_mixers")
    feed = lm.sample(model, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = model.predict(as_dask(feed, 2))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "2 nodes are not batch-local" in messages[0]
    assert "'softmax_rows'" in messages[0] and "'mean_rows'" in messages[0]
    np.testing.assert_allclose(y.compute(scheduler="threads"), model.run(None, feed)[0],
                               rtol=1e-6)


def test_output_whose_size_depends_on_the_batch_elsewhere_has_unknown_dims():
    """x @ x^T is (B, B): no one axis carries the batch. Its Dask shape says nan, never a
    wrong number, and it computes right."""
    g = lm._G()
    out = g.op("MatMul", "x", g.op("Transpose", "x", perm=[1, 0]))
    model = g.model([lm._fin("x", "N", 3)], out, "gram")
    feed = lm.sample(model, 5)
    with pytest.warns(UserWarning, match="no one axis carries the batch"):
        y = model.predict(as_dask(feed, 2))
    assert all(math.isnan(d) for d in y.shape)
    np.testing.assert_allclose(y.compute(scheduler="threads"), model.run(None, feed)[0],
                               rtol=1e-6)


def test_shape_of_the_input_as_an_output():
    g = lm._G()
    model = g.model([lm._fin("x", "N", 3)], [g.op("Shape", "x"), g.op("Relu", "x")], "shape")
    feed = lm.sample(model, 5)
    shape, relu = model.predict(as_dask(feed, 2))
    np.testing.assert_array_equal(shape.compute(), [5, 3])
    np.testing.assert_allclose(relu.compute(), model.run(None, feed)[1])


def test_a_task_refuses_to_return_a_shape_the_graph_did_not_declare():
    nodes = (("relu", "Relu", ("x",), ("out",), {}),)
    program = Program("p", nodes, (Bind("x", ((0, None),), batched=True),), (), ("out",),
                      checks=(Check("out", "relu", (None, 4), (0, 1, 1)),))
    np.testing.assert_array_equal(run_unit(program, np.ones((2, 4), np.float32)),
                                  np.ones((2, 4)))
    with pytest.raises(ShapeError, match=r"node 'relu' computed value 'out' with shape "
                                         r"\(2, 3\).*declared \(2, 4\)"):
        run_unit(program, np.ones((2, 3), np.float32))


def test_scatter_into_batch_rows_runs_whole_batch_never_per_chunk():
    """ScatterND addresses rows of its batch-carrying data by value: per chunk, 'row 0' would
    be every chunk's first row. With updates that happen to leave random trace data unchanged
    (reduction min, large updates), a row-slice check alone was fooled; the indexing kind's
    rule is not."""
    import dask.array as da
    from onnx import TensorProto, helper, numpy_helper

    import taskflow as tf

    idx = numpy_helper.from_array(np.array([[0]], np.int64), "idx")
    upd = numpy_helper.from_array(np.full((1, 4), 5.0, np.float32), "upd")
    graph = helper.make_graph(
        [helper.make_node("ScatterND", ["x", "idx", "upd"], ["y"], reduction="min")], "s",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [idx, upd])
    model = tf.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    x = np.arange(24, dtype=np.float32).reshape(6, 4) * 3      # rows past 0 exceed 5
    want = model.run(None, {"x": x})[0]
    assert (want[0] == [0, 3, 5, 5]).all() and (want[1:] == x[1:]).all()
    with pytest.warns(UserWarning, match="addresses positions"):
        got = model.predict(da.from_array(x, chunks=(2, 4))).compute(scheduler="threads")
    np.testing.assert_array_equal(got, want)
