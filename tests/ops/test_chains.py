"""Chains of layers as one pass (:mod:`taskflow.ops.cpu.chains`): a first convolution (1x1
expansion, few-channel stem, dense), the depthwise layer or MaxPool it feeds, a
squeeze-excite and a 1x1 projection, against the nodes' references; and the executor's
chaining of the nodes (untraced runs only)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import taskflow.ops as ops
from onnx import TensorProto, helper, numpy_helper
from taskflow.ops.cpu import chains
from taskflow.ops.cpu.lowp import cpu_features
from taskflow.ops.cpu.warmup import channels_last

import taskflow as tf
from taskflow.ir.graph import Node

from .oracles import assert_close

PARAMS = {"HardSwish": [], "Relu": [], "": [], "LeakyRelu": [0.1]}


def _nodes(act1: str, act2: str, k: int, stride: int, pads: list[int]) -> tuple[Node, Node]:
    pw = Node("FusedConv", ["x", "w1", "b1"], ["wide"],
              {"activation": act1, "activation_params": PARAMS[act1]}, name="expand")
    dw = Node("FusedConv", ["wide", "w2", "b2"], ["y"],
              {"group": 0, "kernel_shape": [k, k], "strides": [stride, stride], "pads": pads,
               "activation": act2, "activation_params": PARAMS[act2]}, name="depthwise")
    return pw, dw


def _se_node(pool: str = "GlobalAveragePool") -> Node:
    return Node("FusedSqueezeExcite", ["y", "s1", "sb1", "s2", "sb2"], ["gated"],
                {"pool": pool, "activation": "Relu", "gate": "HardSigmoid",
                 "gate_params": [1 / 6, 0.5]}, name="se")


def _reference(x, w1, b1, w2, b2, pw: Node, dw: Node) -> np.ndarray:
    conv = ops.get("FusedConv").reference
    wide = conv(x, w1, b1, **pw.attrs)
    return conv(wide, w2, b2, **dw.attrs)


@pytest.mark.parametrize("pool", ["GlobalAveragePool", "ReduceMean"])
@pytest.mark.parametrize("batch,bands", [(4, False), (1, True), (3, True)])
def test_expand_depthwise_with_its_squeeze_excite(pool, batch, bands, kernel_threads,
                                                  monkeypatch):
    """The gate applied to each task's whole images in place, or (bands of rows) in one pass
    after them; the squeeze's bias omitted."""
    if bands:
        monkeypatch.setattr(chains, "MIN_BAND_BYTES", 1)
    rng = np.random.default_rng(batch)
    c, m, r = 8, 40, 12
    x = rng.standard_normal((batch, c, 9, 10)).astype(np.float32)
    w1 = (rng.standard_normal((m, c, 1, 1)) / np.sqrt(c)).astype(np.float32)
    b1 = rng.standard_normal(m).astype(np.float32)
    w2 = rng.standard_normal((m, 1, 3, 3)).astype(np.float32) * np.float32(0.3)
    s1 = (rng.standard_normal((r, m, 1, 1)) * 0.3).astype(np.float32)
    s2 = (rng.standard_normal((m, r, 1, 1)) * 0.3).astype(np.float32)
    sb2 = rng.standard_normal(m).astype(np.float32)
    pw, dw = _nodes("HardSwish", "HardSwish", 3, 2, [1, 1, 1, 1])
    dw.attrs["group"] = m
    se = _se_node(pool)
    run = chains.chain(pw, dw, {"w1": w1, "w2": w2, "s1": s1, "s2": s2}, se=se)
    assert run is not None
    y = _reference(x, w1, b1, w2, None, pw, dw)
    want = ops.get("FusedSqueezeExcite").reference(y, s1, None, s2, sb2, **se.attrs)
    got = run([channels_last(x), w1, b1], [[w2, None], [s1, None, s2, sb2]])
    assert_close(got, want, rtol=1e-5, atol=1e-5, what=f"{pool} batch {batch}")
    gates = want.reshape(batch, m, -1)[..., :1] / y.reshape(batch, m, -1)[..., :1]
    assert np.ptp(gates[np.isfinite(gates)]) > 0.05  # the gate differs between channels


@pytest.mark.parametrize("act1,act2,k,stride,size,pads", [
    ("Relu", "Relu", 3, 2, 11, [1, 1, 1, 1]),  # odd input, stride 2
    ("HardSwish", "HardSwish", 5, 1, 9, [2, 2, 2, 2]),
    # uneven pads: the last input row is read by no tap; an activation applied after the
    # depthwise rows (not in registers)
    ("", "LeakyRelu", 3, 2, 8, [0, 1, 1, 0]),
])
@pytest.mark.parametrize("c,m", [(6, 24), (48, 64)])  # 16 + 8 lanes; K >= 40: MKL, wide
@pytest.mark.parametrize("batch,bands", [(5, False), (1, True), (3, True)])
def test_expand_depthwise_matches_the_two_convolutions(act1, act2, k, stride, size, pads, c, m,
                                                      batch, bands, kernel_threads,
                                                      conv_routing, monkeypatch):
    if bands:  # small images cut into bands of rows, each expanding the rows its taps read
        monkeypatch.setattr(chains, "MIN_BAND_BYTES", 1)
    rng = np.random.default_rng(k * 10 + stride + c)
    x = rng.standard_normal((batch, c, size, size + 3)).astype(np.float32)
    w1 = (rng.standard_normal((m, c, 1, 1)) / np.sqrt(c)).astype(np.float32)
    b1 = rng.standard_normal(m).astype(np.float32)
    w2 = rng.standard_normal((m, 1, k, k)).astype(np.float32) * np.float32(0.3)
    b2 = rng.standard_normal(m).astype(np.float32)
    pw, dw = _nodes(act1, act2, k, stride, pads)
    dw.attrs["group"] = m
    run = chains.chain(pw, dw, {"w1": w1, "w2": w2})
    assert run is not None
    want = _reference(x, w1, b1, w2, b2, pw, dw)
    for inp in (channels_last(x), x):  # channels-last in place; NCHW through one transpose
        got = run([inp, w1, b1], [[w2, b2]])
        assert got is not None and got.shape == want.shape
        assert_close(got, want, rtol=1e-5, atol=1e-5, what=f"{pw.attrs} {dw.attrs}")
    assert (np.ptp(want, axis=(2, 3)) > 0.01).mean() > 0.5  # outputs vary over the pixels


@pytest.mark.parametrize("squeeze_excite", [False, True], ids=["", "squeeze-excite"])
@pytest.mark.parametrize("m", [16, 24])  # 16 lanes where AVX-512 (wide routing), or 8
@pytest.mark.parametrize("batch,bands", [(5, False), (1, True), (3, True)])
def test_a_few_channel_stem_into_its_depthwise(squeeze_excite, m, batch, bands,
                                               kernel_threads, conv_routing, monkeypatch):
    """MobileNet's first layer (3 -> M, 3x3 stride 2) read in NCHW, its rows (all of an
    image's, or a band's, offset through the top padding) into the buffer the depthwise
    layer reads; odd sizes, uneven pads."""
    if bands:
        monkeypatch.setattr(chains, "MIN_BAND_BYTES", 1)
    rng = np.random.default_rng(m + batch)
    x = rng.standard_normal((batch, 3, 23, 20)).astype(np.float32)
    w1 = (rng.standard_normal((m, 3, 3, 3)) * 0.3).astype(np.float32)
    b1 = rng.standard_normal(m).astype(np.float32)
    w2 = rng.standard_normal((m, 1, 3, 3)).astype(np.float32) * np.float32(0.3)
    b2 = rng.standard_normal(m).astype(np.float32)
    stem = Node("FusedConv", ["x", "w1", "b1"], ["wide"],
                {"strides": [2, 2], "pads": [1, 0, 1, 1], "activation": "HardSwish"})
    _, dw = _nodes("", "Relu", 3, 2, [1, 1, 1, 1])
    dw.attrs["group"] = m
    consts = {"w1": w1, "w2": w2}
    se, later = None, [[w2, b2]]
    if squeeze_excite:
        consts["s1"] = (rng.standard_normal((8, m, 1, 1)) * 0.5).astype(np.float32)
        consts["s2"] = (rng.standard_normal((m, 8, 1, 1)) * 0.5).astype(np.float32)
        se = _se_node()
        later.append([consts["s1"], None, consts["s2"], None])
    run = chains.chain(stem, dw, consts, se=se)
    assert run is not None
    want = _reference(x, w1, b1, w2, b2, stem, dw)
    if squeeze_excite:
        want = ops.get("FusedSqueezeExcite").reference(want, consts["s1"], None, consts["s2"],
                                                        None, **se.attrs)
    got = run([x, w1, b1], later)
    assert_close(got, want, rtol=1e-5, atol=1e-5, what=f"stem batch {batch}")
    assert run([channels_last(x), w1, b1], later) is None  # the stem reads NCHW only
    assert (np.ptp(want, axis=(2, 3)) > 0.01).mean() > 0.5


@pytest.mark.parametrize("squeeze_excite", [False, True], ids=["", "squeeze-excite"])
@pytest.mark.parametrize("residual", [False, True], ids=["", "residual"])
@pytest.mark.parametrize("batch,bands", [(4, False), (1, True), (3, True)])
def test_the_chain_through_its_projection(squeeze_excite, residual, batch, bands,
                                          kernel_threads, conv_routing, monkeypatch):
    """expansion -> depthwise (-> squeeze-excite) -> 1x1 projection (+ residual): the
    projection reads each task's depthwise output from its buffer, or, where a gate needs
    whole images and the tasks are bands, runs after the gate as a pass of its own. With
    the residual, the projection goes to the GEMM + epilogue where 1x1 layers route to MKL
    (wide routing); else to the direct kernel."""
    if bands:
        monkeypatch.setattr(chains, "MIN_BAND_BYTES", 1)
    if residual:
        monkeypatch.setattr(chains, "PROJECT_DIRECT_MAX_CHANNELS", 0)
    rng = np.random.default_rng(batch + 2 * residual)
    c, m, p = 12, 48, 20  # 20 outputs: a block of 16 and a partial one of 8 (direct kernel)
    x = rng.standard_normal((batch, c, 9, 11)).astype(np.float32)
    consts = {"w1": (rng.standard_normal((m, c, 1, 1)) / np.sqrt(c)).astype(np.float32),
              "w2": (rng.standard_normal((m, 1, 3, 3)) * 0.3).astype(np.float32),
              "s1": (rng.standard_normal((8, m, 1, 1)) * 0.5).astype(np.float32),
              "s2": (rng.standard_normal((m, 8, 1, 1)) * 0.5).astype(np.float32),
              "w3": (rng.standard_normal((p, m, 1, 1)) / np.sqrt(m)).astype(np.float32)}
    b1, b2, b3 = (rng.standard_normal(k).astype(np.float32) for k in (m, m, p))
    pw, dw = _nodes("Relu", "HardSwish", 3, 1, [1, 1, 1, 1])
    dw.attrs["group"] = m
    se = _se_node() if squeeze_excite else None
    inputs = ["gated" if squeeze_excite else "y", "w3", "b3"] + (["z"] if residual else [])
    project = Node("FusedConv", inputs, ["out"], {"activation": ""}, name="project")
    run = chains.chain(pw, dw, consts, se=se, project=project)
    assert run is not None
    z = rng.standard_normal((batch, p, 9, 11)).astype(np.float32) if residual else None
    conv = ops.get("FusedConv").reference
    want = _reference(x, consts["w1"], b1, consts["w2"], b2, pw, dw)
    later = [[consts["w2"], b2]]
    if squeeze_excite:
        want = ops.get("FusedSqueezeExcite").reference(want, consts["s1"], None, consts["s2"],
                                                        None, **se.attrs)
        later.append([consts["s1"], None, consts["s2"], None])
    want = conv(want, consts["w3"], b3, z)
    later.append([consts["w3"], b3] + ([channels_last(z)] if residual else []))
    got = run([channels_last(x), consts["w1"], b1], later)
    assert_close(got, want, rtol=1e-5, atol=1e-5, what=f"batch {batch} {inputs}")
    assert (np.ptp(want, axis=(2, 3)) > 0.01).mean() > 0.5


def test_pairs_only_plain_float32_expansions_into_their_depthwise():
    w1 = np.ones((16, 8, 1, 1), np.float32)
    w2 = np.ones((16, 1, 3, 3), np.float32)
    consts = {"w1": w1, "w2": w2}
    pw, dw = _nodes("Relu", "Relu", 3, 1, [1, 1, 1, 1])
    dw.attrs["group"] = 16
    assert chains.chain(pw, dw, consts) is not None
    for change in ({"precision": "bf16"}, {"channel_shuffle": 2}, {"sparse": 1}):
        bad = Node(pw.op, pw.inputs, pw.outputs, {**pw.attrs, **change})
        assert chains.chain(bad, dw, consts) is None, change
    dense = Node(dw.op, dw.inputs, dw.outputs, {**dw.attrs, "group": 1})
    assert chains.chain(pw, dense, consts) is None  # not depthwise
    dilated = Node(dw.op, dw.inputs, dw.outputs, {**dw.attrs, "dilations": [2, 2]})
    assert chains.chain(pw, dilated, consts) is None
    assert chains.chain(pw, dw, {"w1": w1.astype(np.float64), "w2": w2}) is None
    run = chains.chain(pw, dw, consts)
    x64 = np.ones((1, 8, 5, 5))
    assert run([x64, w1, None], [[w2, None]]) is None  # declined at run time: two steps run
    se = _se_node()
    s1, s2 = np.ones((4, 16, 1, 1), np.float32), np.ones((16, 4, 1, 1), np.float32)
    assert chains.chain(pw, dw, {**consts, "s1": s1, "s2": s2}, se=se) is not None
    assert chains.chain(pw, dw, {**consts, "s1": s1[:, :8], "s2": s2}, se=se) is None


def _inverted_block(expansion_is_output: bool = False, second_reader: bool = False,
                    squeeze_excite: bool = False, project: bool = False) -> onnx.ModelProto:
    """x -> Conv 1x1 (8 -> 24) -> Relu -> depthwise 3x3 stride 2 -> HardSwish -> y, with
    ``squeeze_excite`` y = d * HardSigmoid(Conv(Relu(Conv(GlobalAveragePool(d))))) instead,
    with ``project`` (and the depthwise at stride 1) y = Conv 1x1 (24 -> 8)(that) + x."""
    rng = np.random.default_rng(3)
    init = [numpy_helper.from_array(a, n) for n, a in (
        ("w1", (rng.standard_normal((24, 8, 1, 1)) * 0.3).astype(np.float32)),
        ("b1", rng.standard_normal(24).astype(np.float32)),
        ("w2", (rng.standard_normal((24, 1, 3, 3)) * 0.3).astype(np.float32)),
        ("b2", rng.standard_normal(24).astype(np.float32)),
        ("s1", (rng.standard_normal((8, 24, 1, 1)) * 0.5).astype(np.float32)),
        ("s2", (rng.standard_normal((24, 8, 1, 1)) * 0.5).astype(np.float32)))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["e"], kernel_shape=[1, 1]),
             helper.make_node("Relu", ["e"], ["wide"]),
             helper.make_node("Conv", ["wide", "w2", "b2"], ["c"], group=24,
                              kernel_shape=[3, 3], strides=[1 + (not project)] * 2,
                              pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c"], ["d" if squeeze_excite or project else "y"])]
    if project:
        init.append(numpy_helper.from_array(
            (rng.standard_normal((8, 24, 1, 1)) * 0.3).astype(np.float32), "w3"))
        nodes += [helper.make_node("Conv", ["gated" if squeeze_excite else "d", "w3"], ["pr"],
                                   kernel_shape=[1, 1]),
                  helper.make_node("Add", ["pr", "x"], ["y"])]
    if squeeze_excite:
        nodes += [helper.make_node("GlobalAveragePool", ["d"], ["p"]),
                  helper.make_node("Conv", ["p", "s1"], ["q"], kernel_shape=[1, 1]),
                  helper.make_node("Relu", ["q"], ["r"]),
                  helper.make_node("Conv", ["r", "s2"], ["t"], kernel_shape=[1, 1]),
                  helper.make_node("HardSigmoid", ["t"], ["g"], alpha=1 / 6),
                  helper.make_node("Mul", ["d", "g"], ["gated" if project else "y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if expansion_is_output:
        outputs.append(helper.make_tensor_value_info("wide", TensorProto.FLOAT, None))
    if second_reader:
        nodes.append(helper.make_node("ReduceMax", ["wide"], ["peak"], keepdims=0))
        outputs.append(helper.make_tensor_value_info("peak", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes, "inverted_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 13, 12])], outputs,
        init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("project", [False, True], ids=["", "project"])
@pytest.mark.parametrize("squeeze_excite", [False, True], ids=["", "squeeze-excite"])
def test_the_executor_runs_the_chain_as_one_step_and_traced_runs_node_by_node(squeeze_excite,
                                                                             project):
    model = tf.load(_inverted_block(squeeze_excite=squeeze_excite,
                                    project=project).SerializeToString())
    plan = model._plan
    assert [(plan.steps[k].node.op, count) for k, (_, count) in plan.chains.items()] == [
        ("FusedConv", 2 + squeeze_excite + project)]
    x = np.random.default_rng(4).standard_normal((3, 8, 13, 12)).astype(np.float32)
    seen: list[str] = []
    traced = plan.run({"x": x}, trace=lambda node, args, results: seen.append(node.name))
    assert len(seen) == len(plan.steps)  # every node, the expansion included
    (y,) = model.run(None, {"x": x})
    assert_close(y, traced["y"], rtol=1e-5, atol=1e-5)
    (want,) = model.run(None, {"x": x}, device="reference")
    assert_close(y, want, rtol=1e-5, atol=1e-5)
    assert np.ptp(y, axis=0).max() > 0.1  # the output depends on the sample


@pytest.mark.parametrize("kind", ["graph output", "second reader"])
def test_an_expansion_someone_else_reads_is_not_paired(kind):
    model = tf.load(_inverted_block(expansion_is_output=kind == "graph output",
                                    second_reader=kind == "second reader").SerializeToString())
    assert model._plan.chains == {}
    x = np.random.default_rng(5).standard_normal((2, 8, 13, 12)).astype(np.float32)
    got = model.run(None, {"x": x})
    want = model.run(None, {"x": x}, device="reference")
    for g, w in zip(got, want):
        assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("first", ["stem", "expand", "dense"])
@pytest.mark.parametrize("pool", [{"strides": [2, 2]},
                                  {"strides": [2, 2], "pads": [1, 0, 0, 1], "ceil_mode": 1}],
                         ids=["valid", "padded-ceil"])
@pytest.mark.parametrize("project", [False, True], ids=["", "project"])
@pytest.mark.parametrize("batch,bands", [(4, False), (4, True), (1, True)])
def test_a_convolution_into_its_max_pool(first, pool, project, batch, bands, kernel_threads,
                                         conv_routing, monkeypatch):
    """SqueezeNet's start: a first layer (few channels, read in NCHW; a 1x1; or, with
    AVX-512, a dense one dense_wide takes), 3x3 stride-2 MaxPool, maybe the 1x1 squeeze;
    bands of one output row (BLOCK_BYTES 1) with ceil-mode windows past the input's end."""
    if first == "dense" and not (conv_routing and "avx512f" in cpu_features()):
        pytest.skip("dense first layers chain only where dense_wide runs (AVX-512F)")
    if bands:
        monkeypatch.setattr(chains, "BLOCK_BYTES", 1)
    rng = np.random.default_rng(batch + project)
    c, m = {"stem": (3, 64), "expand": (8, 24), "dense": (16, 64)}[first]
    x = rng.standard_normal((batch, c, 17, 20)).astype(np.float32)
    w1 = (rng.standard_normal((m, c, *((1, 1) if first == "expand" else (3, 3))))
          / np.sqrt(c)).astype(np.float32)
    b1 = rng.standard_normal(m).astype(np.float32)
    conv_attrs = {"activation": "Relu"} if first == "expand" else \
        {"strides": [2, 2] if first == "stem" else [1, 1], "pads": [1, 1, 1, 1],
         "activation": "Relu"}
    conv = Node("FusedConv", ["x", "w1", "b1"], ["c"], conv_attrs)
    pooled = Node("MaxPool", ["c"], ["p"], {"kernel_shape": [3, 3], **pool})
    consts = {"w1": w1, "w3": (rng.standard_normal((16, m, 1, 1)) / np.sqrt(m)
                               ).astype(np.float32)}
    squeeze = Node("FusedConv", ["p", "w3", "b3"], ["s"], {"activation": "Relu"}) \
        if project else None
    run = chains.chain(conv, pooled, consts, project=squeeze)
    assert run is not None
    want = ops.get("MaxPool").reference(ops.get("FusedConv").reference(x, w1, b1, **conv_attrs),
                                        **pooled.attrs)
    later = [[]]
    if project:
        b3 = rng.standard_normal(16).astype(np.float32)
        want = ops.get("FusedConv").reference(want, consts["w3"], b3, **squeeze.attrs)
        later.append([consts["w3"], b3])
    got = run([x if first == "stem" else channels_last(x), w1, b1], later)
    assert got is not None
    assert_close(got, want, rtol=1e-5, atol=1e-5, what=f"{first} {pool}")
    assert (np.ptp(want, axis=(2, 3)) > 0.01).mean() > 0.5
