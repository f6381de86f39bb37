"""fuse_attention and fuse_gelu: every exported form they match computes what the unfused graph
computes, and look-alikes they must not match stay as they were."""

from __future__ import annotations

import math

import numpy as np
import pytest

from taskflow.executor import ExecutionPlan
from taskflow.ir.fuse_attention import fuse_attention
from taskflow.ir.fuse_gelu import fuse_gelu
from taskflow.ir.graph import Graph, Node, Value
from taskflow.ir.optimize import optimize

#: Largest error allowed relative to the output's largest magnitude (float32 GEMMs summed in
#: another order; fast erf/tanh within 3e-7).
RTOL = 1e-5
B, S, H, D = 2, 9, 3, 4


def _graph(nodes, feed, outputs=("y",), init=None):
    inputs = [Value(k, v.dtype, v.shape) for k, v in feed.items()]
    return Graph(nodes=nodes, inputs=inputs, outputs=[Value(o, np.float32) for o in outputs],
                 initializers=dict(init or {}))


def _check(graph, feed, fused_op, count=1):
    """The optimised graph (all passes) has ``count`` ``fused_op`` nodes and the unoptimised
    graph's numbers, on the cpu kernels and on the references."""
    want = ExecutionPlan(graph, device="reference").run(feed)["y"]
    out, _ = optimize(graph)
    assert out.op_counts().get(fused_op, 0) == count, out.op_counts()
    for device in ("cpu", "reference"):
        got = ExecutionPlan(out, device=device).run(feed)["y"]
        scale = max(1.0, float(np.nanmax(np.abs(want))))
        np.testing.assert_allclose(got, want, rtol=0, atol=RTOL * scale, equal_nan=True)
    return out


def _scale_nodes(kind, src):
    """A scale step on ``src`` giving "scaled", with its constant."""
    if kind == "div":
        return [Node("Div", [src, "c"], ["scaled"])], {"c": np.float32(math.sqrt(D))}
    if kind == "mul_left":
        return [Node("Mul", ["c", src], ["scaled"])], {"c": np.array([0.5], np.float32)}
    return [Node("Mul", [src, "c"], ["scaled"])], {"c": np.float32(1 / math.sqrt(D))}


def _batch_first(scale, mask):
    """BERT's export: (B, S, H, D) projections, Transposes (0,2,1,3) / (0,2,3,1), attention,
    Transpose back."""
    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal((B, S, H, D), dtype=np.float32) for n in "qkv"}
    nodes = [Node("Transpose", ["q"], ["qt"], {"perm": [0, 2, 1, 3]}),
             Node("Transpose", ["k"], ["kt"], {"perm": [0, 2, 3, 1]}),
             Node("Transpose", ["v"], ["vt"], {"perm": [0, 2, 1, 3]}),
             Node("MatMul", ["qt", "kt"], ["scores"])]
    init = {}
    last = "scores"
    if scale:
        steps, init = _scale_nodes(scale, last)
        nodes += steps
        last = "scaled"
    if mask == "add":
        keep = rng.random((B, 1, 1, S)) < 0.7
        keep[..., 0] = True
        feed["mask"] = np.where(keep, 0, -np.inf).astype(np.float32)
        nodes.append(Node("Add", [last, "mask"], ["masked"]))
        last = "masked"
    elif mask == "where":  # nanoGPT: Where(causal condition, -inf, scores)
        feed["cond"] = np.triu(np.ones((S, S), bool), 1)[None, None]
        init["fill"] = np.array(-np.inf, np.float32)
        nodes.append(Node("Where", ["cond", "fill", last], ["masked"]))
        last = "masked"
    nodes += [Node("Softmax", [last], ["probs"], {"axis": -1}),
              Node("MatMul", ["probs", "vt"], ["ctx"]),
              Node("Transpose", ["ctx"], ["y"], {"perm": [0, 2, 1, 3]})]
    return _graph(nodes, feed, init=init), feed


@pytest.mark.parametrize("scale", [None, "div", "mul", "mul_left"])
@pytest.mark.parametrize("mask", [None, "add", "where"])
def test_batch_first_attention_is_fused(scale, mask):
    graph, feed = _batch_first(scale, mask)
    out = _check(graph, feed, "FusedAttention")
    assert not {"Softmax", "Div", "Mul"} & set(out.op_counts())


@pytest.mark.parametrize("mask", [False, True])
def test_merged_heads_attention_is_fused(mask):
    rng = np.random.default_rng(1)
    feed = {"q": rng.standard_normal((B * H, S, D), dtype=np.float32),
            "kt": rng.standard_normal((B * H, D, S), dtype=np.float32),
            "v": rng.standard_normal((B * H, S, D), dtype=np.float32)}
    nodes = [Node("MatMul", ["q", "kt"], ["scores"]),
             Node("Mul", ["scores", "c"], ["scaled"])]
    last = "scaled"
    if mask:  # mask first, as the add may take either side
        feed["mask"] = np.where(rng.random((B * H, 1, S)) < 0.3, -1e9, 0).astype(np.float32)
        nodes.append(Node("Add", ["mask", last], ["masked"]))
        last = "masked"
    nodes += [Node("Softmax", [last], ["probs"], {"axis": 2}),  # last axis, by number
              Node("MatMul", ["probs", "v"], ["y"])]
    graph = _graph(nodes, feed, init={"c": np.float32(0.5)})
    graph.values["scaled"] = Value("scaled", np.float32, (B * H, S, S))
    graph.values[last] = Value(last, np.float32, (B * H, S, S))
    _check(graph, feed, "FusedAttention")


def _sdpa(scale=None):
    """torch's scaled_dot_product_attention, as the dynamo exporter writes it: sqrt(scale) on Q
    and on Kᵀ, an additive mask, and a NaN guard after the softmax."""
    graph, feed = _batch_first(scale, "add")
    feed["mask"][0, ..., :] = -np.inf  # sample 0 fully masked: NaN rows, guarded to 0
    nodes = {n.outputs[0]: n for n in graph.nodes}
    nodes["scores"].inputs = ["qs", "ks"]
    nodes["ctx"].inputs = ["guarded", "vt"]
    graph.nodes += [Node("Mul", ["qt", "r"], ["qs"]), Node("Mul", ["kt", "r"], ["ks"]),
                    Node("IsNaN", ["probs"], ["isnan"]),
                    Node("Where", ["isnan", "zero", "probs"], ["guarded"])]
    graph.initializers.update(r=np.array([D ** -0.25], np.float32),
                              zero=np.array([0.0], np.float32))
    return graph, feed


@pytest.mark.parametrize("runtime", [False, True], ids=["constant", "runtime"])
@pytest.mark.parametrize("scale", [None, "div"])
def test_sdpa_export_is_fused(scale, runtime):
    """The scalar Muls on Q and Kᵀ join the fused node: a constant factor its scale, a
    one-element value computed at run time (TorchScript's export) its q_scale / k_scale
    inputs. No pass over Q or K is left."""
    graph, feed = _sdpa(scale)
    if runtime:  # the factor as a one-element graph input: known to be one element only
        feed["r"] = graph.initializers.pop("r")
        graph.inputs.append(Value("r", np.float32, (1,)))
        graph.values["r"] = graph.inputs[-1]
    out = _check(graph, feed, "FusedAttention")
    assert "Mul" not in out.op_counts() and "IsNaN" not in out.op_counts()
    (fused,) = [n for n in out.nodes if n.op == "FusedAttention"]
    assert fused.attrs["nan_to_zero"] == 1
    assert fused.inputs[:2] == ["qt", "kt"]
    assert fused.inputs[4:] == (["r", "r"] if runtime else [])
    r2 = 1.0 if runtime else np.float32(D ** -0.25) ** 2
    want = math.sqrt(D) / r2 if scale == "div" else r2
    assert fused.attrs["divide"] == int(scale == "div")
    assert fused.attrs["scale"] == pytest.approx(want, rel=1e-6)
    if runtime:  # the cpu kernel takes the factors as the scale, whatever their value
        feed["r"] = np.array([0.7], np.float32)
        _check(graph, feed, "FusedAttention")


def test_sdpa_scale_read_elsewhere_stays():
    """A scaled Q that another node reads too must exist: its Mul stays, Kᵀ's still folds."""
    graph, feed = _sdpa()
    graph.nodes.append(Node("Identity", ["qs"], ["qs_out"]))
    graph.outputs.append(Value("qs_out", np.float32))
    out = _check(graph, feed, "FusedAttention")
    assert out.op_counts()["Mul"] == 1
    (fused,) = [n for n in out.nodes if n.op == "FusedAttention"]
    assert fused.inputs[:2] == ["qs", "kt"]


def _unfusable(case):
    graph, feed = _batch_first("div", None if case == "softmax_axis_1" else "add")
    nodes = {n.outputs[0]: n for n in graph.nodes}
    if case == "softmax_axis_1":
        nodes["probs"].attrs = {"axis": 1}
    elif case == "scores_read_twice":  # the scores are also an output: they must exist
        graph.outputs.append(Value("scores", np.float32))
    elif case == "runtime_scale":
        feed["c"] = np.array(0.5, np.float32)
        graph.initializers.pop("c")
        graph.inputs.append(Value("c", np.float32, ()))
    elif case == "where_finite_fill":
        graph, feed = _batch_first(None, "where")
        graph.initializers["fill"] = np.array(-1e4, np.float32)
    return graph, feed


@pytest.mark.parametrize("case", ["softmax_axis_1", "scores_read_twice", "runtime_scale",
                                  "where_finite_fill"])
def test_look_alikes_stay_unfused(case):
    graph, feed = _unfusable(case)
    assert fuse_attention(graph).op_counts().get("FusedAttention", 0) == 0
    _check(graph, feed, "FusedAttention", count=0)


def _mlp(form):
    """MatMul + bias, GELU in ``form``, as the exporters write it."""
    rng = np.random.default_rng(2)
    feed = {"x": rng.standard_normal((2, 5, 8), dtype=np.float32)}
    init = {"w": rng.standard_normal((8, 12), dtype=np.float32),
            "b": rng.standard_normal(12, dtype=np.float32) * 0.1,
            "half": np.float32(0.5), "one": np.float32(1.0)}
    nodes = [Node("MatMul", ["x", "w"], ["xw"]), Node("Add", ["xw", "b"], ["h"])]
    if form.startswith("erf"):
        if form == "erf_mul":
            init["c"] = np.float32(1 / math.sqrt(2))
            nodes.append(Node("Mul", ["h", "c"], ["z"]))
        else:
            init["c"] = np.float32(math.sqrt(2))
            nodes.append(Node("Div", ["h", "c"], ["z"]))
        nodes += [Node("Erf", ["z"], ["e"]), Node("Add", ["e", "one"], ["t"])]
    else:
        init.update(k=np.float32(math.sqrt(2 / math.pi)), a=np.float32(0.044715))
        if form in ("tanh_pow", "tanh_dynamo"):
            init["three"] = np.float32(3)
            nodes.append(Node("Pow", ["h", "three"], ["cube"]))
        else:
            nodes += [Node("Mul", ["h", "h"], ["sq"]), Node("Mul", ["h", "sq"], ["cube"])]
        nodes += [Node("Mul", ["a", "cube"], ["ac"]), Node("Add", ["h", "ac"], ["inner"]),
                  Node("Mul", ["k", "inner"], ["z"]), Node("Tanh", ["z"], ["e"]),
                  Node("Add", ["one", "e"], ["t"])]
    if form == "erf_half_first":
        nodes += [Node("Mul", ["h", "half"], ["hh"]), Node("Mul", ["hh", "t"], ["y"])]
    elif form in ("erf_dynamo", "tanh_dynamo"):  # x * (0.5 * t)
        nodes += [Node("Mul", ["half", "t"], ["ht"]), Node("Mul", ["h", "ht"], ["y"])]
    else:
        nodes += [Node("Mul", ["h", "t"], ["ht"]), Node("Mul", ["ht", "half"], ["y"])]
    return _graph(nodes, feed, init=init), feed


@pytest.mark.parametrize("form", ["erf_div", "erf_mul", "erf_half_first", "erf_dynamo"])
def test_erf_gelu_fuses_into_the_matmul(form):
    graph, feed = _mlp(form)
    out = _check(graph, feed, "FusedMatMul")
    (node,) = out.nodes
    assert node.attrs["activation"] == "Gelu"


@pytest.mark.parametrize("form", ["tanh_mul", "tanh_pow", "tanh_dynamo"])
def test_tanh_gelu_fuses_into_the_matmul(form):
    graph, feed = _mlp(form)
    out = _check(graph, feed, "FusedMatMul")
    (node,) = out.nodes
    assert node.attrs["activation"] == "Gelu" and node.attrs["activation_params"] == [1.0]


def test_gelu_look_alike_stays_unfused():
    graph, feed = _mlp("erf_div")
    graph.initializers["one"] = np.float32(2.0)  # x/2 * (erf + 2): not GELU
    assert "Gelu" not in fuse_gelu(graph).op_counts()
    _check(graph, feed, "Gelu", count=0)


@pytest.mark.parametrize("form", ["post_ln", "pre_ln", "constant_operand", "stats_read"])
def test_residual_add_and_layernorm_fuse(form):
    """Post-LN (the sum read only by the norm), pre-LN (the sum is the next residual too); an
    Add of a constant (a bias) and a norm whose statistics are read stay as they were."""
    rng = np.random.default_rng(3)
    feed = {"x": rng.standard_normal((2, 5, 8), dtype=np.float32),
            "r": rng.standard_normal((2, 5, 8), dtype=np.float32)}
    init = {"g": rng.standard_normal(8, dtype=np.float32),
            "b": rng.standard_normal(8, dtype=np.float32)}
    other = "r"
    if form == "constant_operand":
        init["c"], other = rng.standard_normal((2, 5, 8), dtype=np.float32), "c"
        del feed["r"]
    ln_out = ["n", "mean"] if form == "stats_read" else ["n"]
    nodes = [Node("Add", ["x", other], ["h"]),
             Node("LayerNormalization", ["h", "g", "b"], ln_out, {"epsilon": 1e-12})]
    outputs = ["y"]
    if form == "pre_ln":
        nodes.append(Node("Add", ["h", "n"], ["y"]))  # the sum read again: the next residual
    elif form == "stats_read":
        nodes.append(Node("Mul", ["n", "mean"], ["y"]))
    else:
        nodes.append(Node("Identity", ["n"], ["y"]))
    graph = _graph(nodes, feed, outputs, init)
    _check(graph, feed, "FusedAddLayerNorm", count=int(form in ("post_ln", "pre_ln")))
