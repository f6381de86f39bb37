"""Reshape -> Transpose -> Reshape runs computed as one view (taskflow.views): the values of
the three ops, a view of the input wherever one exists, the ops' own errors elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from taskflow.errors import TaskflowError
from taskflow.executor import ExecutionPlan, node_timer
from taskflow.ir.graph import Graph, Node, Value
from taskflow.ir.views import rearrange

S, B, H, D = 7, 4, 3, 5


def _naive(x, s1, perm, s2):
    return x.reshape(s1).transpose(perm).reshape(s2)


def _qkv(rng):
    """Q as nn.MultiheadAttention's export has it: a slice of the fused projection's output."""
    return rng.standard_normal((S, B, 3 * H * D), dtype=np.float32)[:, :, :H * D]


@pytest.mark.parametrize(("shape", "s1", "perm", "s2", "view"), [
    # the head split of nn.MultiheadAttention: no view step by step, one as a whole
    ("qkv", (S, B * H, D), (1, 0, 2), (B, H, S, D), True),
    # the same run ending merged (B*H, S, D): then one copy
    ("qkv", (S, B * H, D), (1, 0, 2), (B * H, S, D), False),
    # size-1 axes, a split and a merge on a contiguous input
    ((1, 6, 10), (6, 1, 2, 5), (2, 0, 3, 1), (2, 30), False),
    ((6, 10), (6, 2, 5), (0, 2, 1), (6, 5, 2), True),
    # shapes with no common refinement (3 x 2 against 2 x 3): numpy's own path (a view here,
    # the input being contiguous)
    ((3, 2, 4), (2, 3, 4), (2, 0, 1), (4, 6), True),
])
def test_rearrange_is_the_three_ops(shape, s1, perm, s2, view):
    rng = np.random.default_rng(0)
    x = _qkv(rng) if shape == "qkv" else rng.standard_normal(shape).astype(np.float32)
    got = rearrange(x, [("Reshape", list(s1)), ("Transpose", list(perm)), ("Reshape", list(s2))])
    np.testing.assert_array_equal(got, _naive(x, s1, perm, s2))
    assert got.shape == tuple(s2)
    assert np.shares_memory(got, x) == view


def test_a_longer_run_is_one_view():
    """BERT's K as dynamo exports it: heads split, moved forward, merged with the batch,
    transposed, split again: (B, H, D, S), a view of the projection's output."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, S, H * D), dtype=np.float32)
    steps = [("Reshape", [B, S, H, D]), ("Transpose", [0, 2, 1, 3]),
             ("Reshape", [B * H, S, D]), ("Transpose", [0, 2, 1]), ("Reshape", [B, H, D, S])]
    got = rearrange(x, steps)
    want = x.reshape(B, S, H, D).transpose(0, 2, 1, 3).reshape(B * H, S, D)
    np.testing.assert_array_equal(got, want.transpose(0, 2, 1).reshape(B, H, D, S))
    assert np.shares_memory(got, x)


def _graph(second_reader=False, shape_reader=False):
    """qkv -> Slice (Q) -> Reshape -> Transpose -> Reshape -> Mul, with shape tensors that
    use 0 (copy the dimension) and -1 (inferred); ``shape_reader``: a Shape node reads the
    transposed value too (as torchscript's export of nn.MultiheadAttention does)."""
    nodes = [Node("Slice", ["qkv", "starts", "ends", "axes"], ["q"]),
             Node("Reshape", ["q", "s1"], ["r1"]),
             Node("Transpose", ["r1"], ["t"], {"perm": [1, 0, 2]}),
             Node("Reshape", ["t", "s2"], ["heads"]),
             Node("Mul", ["heads", "two"], ["y"])]
    outputs = [Value("y", np.float32)]
    if second_reader:  # the transposed value is read twice: the run must not defer it
        nodes.append(Node("Identity", ["t"], ["t_out"]))
        outputs.append(Value("t_out", np.float32))
    if shape_reader:
        nodes.append(Node("Shape", ["t"], ["t_shape"]))
        outputs.append(Value("t_shape", np.int64))
    init = {"starts": np.array([0]), "ends": np.array([H * D]), "axes": np.array([2]),
            "s1": np.array([0, -1, D]), "s2": np.array([B, H, -1, D]),
            "two": np.array(2.0, np.float32)}
    return Graph(nodes=nodes, inputs=[Value("qkv", np.float32, (S, B, 3 * H * D))],
                 outputs=outputs, initializers=init)


@pytest.mark.parametrize(("second_reader", "shape_reader"),
                         [(False, False), (True, False), (False, True)])
def test_the_executor_runs_a_head_split_as_one_view(second_reader, shape_reader):
    rng = np.random.default_rng(1)
    feed = {"qkv": rng.standard_normal((S, B, 3 * H * D), dtype=np.float32)}
    want = ExecutionPlan(_graph(second_reader, shape_reader), device="reference").run(feed)
    plan = ExecutionPlan(_graph(second_reader, shape_reader), device="cpu")
    assert sorted(plan.views.values()) == ([] if second_reader else ["end", "mid", "start"])
    for _ in range(2):  # the second run serves the Shape node's value from the shape cache
        got = plan.run(feed)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    np.testing.assert_array_equal(
        got["y"], 2 * feed["qkv"][:, :, :H * D].reshape(S, B, H, D).transpose(1, 2, 0, 3))
    # a traced run sees every node's value: the nodes run one by one there
    with node_timer() as times:
        traced = plan.run(feed)
    assert [n.op for n, _ in times] == [
        n.op for n in _graph(second_reader, shape_reader).toposort()]
    np.testing.assert_array_equal(traced["y"], want["y"])


def test_a_bad_shape_in_a_run_fails_as_the_node_would():
    g = _graph()
    g.initializers["s2"] = np.array([B, H, S + 1, D])  # 140 elements, from 105
    plan = ExecutionPlan(g, device="cpu")
    assert plan.views
    feed = {"qkv": np.ones((S, B, 3 * H * D), np.float32)}
    with pytest.raises(TaskflowError, match="Reshape"):
        plan.run(feed)


def test_a_deferred_value_has_the_shape_of_the_value_it_stands_for():
    from taskflow.ir.views import Deferred
    x = np.zeros((S, B, H * D), np.float32)
    d = Deferred(x).add(Node("Reshape", ["x", "s"], ["r"]), [x, np.array([0, -1, D])])
    assert d.shape == (S, B * H, D)
    t = d.add(Node("Transpose", ["r"], ["t"]), [d])  # no perm: the axes reversed
    assert t.shape == (D, B * H, S) and d.shape == (S, B * H, D)
    t2 = t.add(Node("Transpose", ["t"], ["t2"], {"perm": [1, 2, 0]}), [t])
    assert t2.shape == (B * H, S, D)
