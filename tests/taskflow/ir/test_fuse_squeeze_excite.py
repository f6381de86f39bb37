"""fuse_squeeze_excite: both export forms fuse and keep the numbers; near misses stay unfused."""

from __future__ import annotations

import numpy as np
import pytest

import taskflow as tf
from taskflow import Graph, Node, Value, ops
from taskflow.executor import ExecutionPlan
from taskflow.ir.fuse_squeeze_excite import fuse_squeeze_excite
from taskflow.ir.optimize import optimize

C, CR = 13, 5  # channels not a multiple of any vector width
SHAPE = ("N", C, 7, 9)


def _se_graph(pool: str = "GlobalAveragePool", fused_convs: bool = True,
              mul_other: str = "x") -> Graph:
    """conv -> SE block (as TorchScript or dynamo write it) -> output."""
    rng = np.random.default_rng(0)
    init = {
        "w0": rng.standard_normal((C, C, 3, 3)).astype(np.float32) * 0.3,
        "w1": rng.standard_normal((CR, C, 1, 1)).astype(np.float32),
        "b1": rng.standard_normal(CR).astype(np.float32),
        "w2": rng.standard_normal((C, CR, 1, 1)).astype(np.float32),
        "b2": rng.standard_normal(C).astype(np.float32),
        "axes": np.array([-1, -2], np.int64),  # as dynamo writes them
        "other": rng.standard_normal((1, C, 1, 1)).astype(np.float32),
    }
    nodes = [Node("Conv", ["in", "w0"], ["x"], {"pads": [1, 1, 1, 1]})]
    if pool == "ReduceMean":  # dynamo (the importer turns older opsets' attribute into this)
        nodes.append(Node("ReduceMean", ["x", "axes"], ["s"], {"keepdims": 1}))
    else:
        nodes.append(Node("GlobalAveragePool", ["x"], ["s"]))
    if fused_convs:  # what fuse_epilogues leaves
        nodes += [Node("FusedConv", ["s", "w1", "b1"], ["h"],
                       {"activation": "Relu", "activation_params": []}, domain="taskflow"),
                  Node("FusedConv", ["h", "w2", "b2"], ["g"],
                       {"activation": "HardSigmoid", "activation_params": [1 / 6, 0.5]},
                       domain="taskflow")]
    else:
        nodes += [Node("Conv", ["s", "w1", "b1"], ["h0"]), Node("Relu", ["h0"], ["h"]),
                  Node("Conv", ["h", "w2", "b2"], ["g0"]),
                  Node("HardSigmoid", ["g0"], ["g"], {"alpha": 1 / 6, "beta": 0.5})]
    nodes.append(Node("Mul", ["g", mul_other], ["y"]))
    return Graph(nodes=nodes, inputs=[Value("in", np.float32, SHAPE)],
                 outputs=[Value("y", np.float32, SHAPE)], initializers=init, name="se")


def _run(graph: Graph, feed: dict) -> np.ndarray:
    return ExecutionPlan(graph).run(feed)[graph.outputs[0].name]


def _feed(graph: Graph, batch: int) -> dict:
    rng = np.random.default_rng(1)
    return {v.name: rng.standard_normal((batch, *v.shape[1:])).astype(np.float32)
            for v in graph.inputs}


@pytest.mark.parametrize("pool", ["GlobalAveragePool", "ReduceMean"])
@pytest.mark.parametrize("fused_convs", [True, False], ids=["fusedconv", "conv+act"])
@pytest.mark.parametrize("batch", [1, 3])
def test_se_block_fuses_and_keeps_the_numbers(pool, fused_convs, batch):
    graph = _se_graph(pool, fused_convs)
    out, _ = optimize(graph)
    assert out.op_counts().get("FusedSqueezeExcite") == 1
    assert not {"Mul", "GlobalAveragePool", "ReduceMean"} & set(out.op_counts())
    feed = _feed(graph, batch)
    want = _run(graph, feed)
    np.testing.assert_allclose(_run(out, feed), want, rtol=1e-5, atol=1e-5)


def _run_references(graph: Graph, feed: dict) -> np.ndarray:
    """The graph op by op through the registry's numpy references."""
    values = dict(feed, **graph.initializers)
    for n in graph.toposort():
        args = [values[i] if i else None for i in n.inputs]
        values[n.outputs[0]] = ops.get(n.op).reference(*args, **n.attrs)
    return values[graph.outputs[0].name]


@pytest.mark.parametrize("pool", ["GlobalAveragePool", "ReduceMean"])
def test_fused_op_reference_is_exactly_the_unfused_computation(pool):
    graph = _se_graph(pool)
    fused = fuse_squeeze_excite(graph)
    (node,) = [n for n in fused.nodes if n.op == "FusedSqueezeExcite"]
    assert node.attrs["pool"] == pool
    feed = _feed(graph, 2)
    np.testing.assert_array_equal(_run_references(fused, feed), _run_references(graph, feed))


@pytest.mark.parametrize("why", ["mul-other-tensor", "mul-constant", "gate-read-twice",
                                 "pooled-read-twice", "reduce-one-axis", "no-keepdims"])
def test_near_misses_stay_unfused(why):
    if why == "mul-other-tensor":  # gated tensor is not the pooled one
        graph = _se_graph(mul_other="in")
    elif why == "mul-constant":
        graph = _se_graph(mul_other="other")
    else:
        graph = _se_graph("ReduceMean" if why in ("reduce-one-axis", "no-keepdims")
                          else "GlobalAveragePool")
        if why == "gate-read-twice":
            graph.nodes.append(Node("Relu", ["g"], ["g2"]))
            graph.outputs.append(Value("g2", np.float32, ("N", C, 1, 1)))
        elif why == "pooled-read-twice":
            graph.nodes.append(Node("Relu", ["s"], ["s2"]))
            graph.outputs.append(Value("s2", np.float32, ("N", C, 1, 1)))
        elif why == "reduce-one-axis":
            graph.initializers["axes"] = np.array([3], np.int64)
        else:
            graph.nodes[1].attrs["keepdims"] = 0
    graph.validate()
    out = fuse_squeeze_excite(graph)
    assert "FusedSqueezeExcite" not in out.op_counts()
    assert len(out.nodes) == len(graph.nodes)


@pytest.mark.parametrize("name", ["mobilenetv3-small-torchscript", "mobilenetv3-small-dynamo"])
def test_mobilenetv3_exports_fuse_every_se_block(name):
    from tests.taskflow.dask.real_models import exported

    path = exported(name)  # one export per test run, shared with tests/models
    plain = tf.load(path, optimize=False)
    model = tf.load(path)
    counts = model.graph.op_counts()
    assert counts.get("FusedSqueezeExcite", 0) == plain.graph.op_counts()["Mul"] > 0
    assert "HardSwish" not in counts  # fused into the convolutions' epilogues
    feed = _feed(plain.graph, 2)
    want = plain.run(None, feed)[0]
    np.testing.assert_allclose(model.run(None, feed)[0], want, rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())
