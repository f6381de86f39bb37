"""int8 in the graph: QDQ models (ONNX Runtime's and quantize_graph's) run as int8 fused nodes
and compute what ONNX Runtime computes; mark_precision marks exactly the eligible layers."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import taskflow as tf
from taskflow import Graph, Node, Value
from taskflow.errors import InputError
from taskflow.executor import ExecutionPlan
from taskflow.frontend import nn
from taskflow.frontend.onnx_export import to_onnx
from taskflow.ir.calibrate import choose_ranges, collect_ranges, merge
from taskflow.ir.optimize import PASSES, optimize
from taskflow.ir.quantize import (
    fuse_qdq,
    mark_precision,
    precision_nodes,
    quantize_graph,
    quantize_weight,
)

quantization = pytest.importorskip("onnxruntime.quantization")

#: Device the int8 models run on: the cpu kernels (MKL's int8 GEMMs or their emulation).
DEVICE = "cpu"
#: The oracle runs the QDQ model as ONNX defines it (constant folding only). ORT's extended
#: level fuses Q/DQ into QLinearConv, whose u8 x s8 kernels saturate int16 pair sums on AVX2
#: without VNNI (errors ~1.0 on these models; reduce_range or u8 weights avoid it).
ORACLE_LEVEL = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.graph_optimization_level = ORACLE_LEVEL
    session = ort.InferenceSession(model.SerializeToString(), so,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _cnn(width: int = 8) -> Graph:
    """conv - relu - depthwise conv - relu - 1x1 conv - pool - dense."""
    return nn.Sequential([
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, groups=width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 1), nn.ReLU(), nn.GlobalAvgPool2d(), nn.Flatten(),
        nn.Dense(2 * width, 4)], input_shape=(3, 8, 8), name="cnn").to_graph()


def _batches(n: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((2, 3, 8, 8)).astype(np.float32) for _ in range(n)]


def _ranges(graph: Graph, batches: list[np.ndarray]) -> dict[str, tuple[float, float]]:
    """min/max of every value over ``batches``, gathered chunk by chunk as the cluster does."""
    stats: dict = {}

    def trace(node, inputs, outputs):
        nonlocal stats
        stats = merge(stats, collect_ranges({o: v for o, v in zip(node.outputs, outputs) if o}))

    plan = ExecutionPlan(graph, device="reference")
    for x in batches:
        stats = merge(stats, collect_ranges({graph.inputs[0].name: x}))
        plan.run({graph.inputs[0].name: x}, trace=trace)
    return choose_ranges(stats)


def _int8(graph: Graph) -> dict[str, tuple[str, float, int]]:
    return {n.name: (n.op, n.attrs["x_scale"], n.attrs["x_zero_point"]) for n in graph.nodes
            if n.attrs.get("precision") == "int8"}


# --- fuse_qdq ------------------------------------------------------------------------------------


def _qdq_graph(scale_q=0.0625, scale_dq=0.0625, zp_type="uint8", extra_reader=False) -> Graph:
    """x -> Q -> DQ -> MatMul(w) and Gemm(w.T, transB) (+ a Relu of the DQ output)."""
    rng = np.random.default_rng(3)
    # weights exactly on a per-channel int8 grid, as after folding DequantizeLinear(int8)
    q, s = quantize_weight(rng.standard_normal((6, 5)).astype(np.float32), axis=1)
    w = q.astype(np.float32) * s
    nodes = [Node("QuantizeLinear", ["x", "sq", "z"], ["xq"], name="q"),
             Node("DequantizeLinear", ["xq", "sdq", "z"], ["xd"], name="dq"),
             Node("MatMul", ["xd", "w"], ["y"], name="mm"),
             Node("Gemm", ["xd", "wt", "b"], ["y2"], {"transB": 1}, name="gemm")]
    outputs = [Value("y", np.float32, ("N", 5)), Value("y2", np.float32, ("N", 5))]
    if extra_reader:
        nodes.append(Node("Relu", ["xd"], ["r"], name="relu"))
        outputs.append(Value("r", np.float32, ("N", 6)))
    inits = {"sq": np.float32(scale_q), "sdq": np.float32(scale_dq), "z": np.asarray(120, zp_type),
             "w": w, "wt": np.ascontiguousarray(w.T), "b": np.ones(5, np.float32)}
    return Graph(nodes, [Value("x", np.float32, ("N", 6))], outputs, inits, name="qdq")


def test_fuse_qdq_turns_a_qdq_input_into_an_int8_node_computing_the_same():
    g = _qdq_graph()
    fused = fuse_qdq(g)
    assert _int8(fused) == {"mm": ("FusedMatMul", 0.0625, 120),
                            "gemm": ("FusedGemm", 0.0625, 120)}
    assert [n.inputs[0] for n in fused.nodes] == ["x", "x"]  # the pair is gone
    assert all(n.domain == "taskflow" and n.attrs["activation"] == "" for n in fused.nodes)
    x = {"x": np.random.default_rng(4).uniform(-7, 7, (3, 6)).astype(np.float32)}
    want = ExecutionPlan(g, device="reference").run(x)
    got = ExecutionPlan(fused, device=DEVICE).run(x)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_fuse_qdq_keeps_a_pair_that_something_else_reads():
    fused = fuse_qdq(_qdq_graph(extra_reader=True))
    assert len(_int8(fused)) == 2
    assert [n.op for n in fused.nodes][:2] == ["QuantizeLinear", "DequantizeLinear"]


@pytest.mark.parametrize("change", [
    {"scale_dq": 0.05},  # Q and DQ disagree: not a fake quantisation of x
    {"zp_type": "int8"},  # s8 activations: the kernels take u8
    {"scale_q": np.full(6, 0.0625)},  # per-column activations
])
def test_fuse_qdq_leaves_other_pairs_alone(change):
    g = _qdq_graph(**change)
    if np.ndim(change.get("scale_q", 0)):
        g.initializers["sq"] = g.initializers["sdq"] = np.full(6, 0.0625, np.float32)
    assert not _int8(fuse_qdq(g))


def test_fuse_qdq_runs_after_the_epilogue_fusions():
    names = list(PASSES)
    assert names.index("fuse_epilogues") < names.index("fuse_qdq")
    assert names.index("fuse_squeeze_excite") < names.index("fuse_qdq")


def test_onnxruntime_qdq_model_runs_int8_and_matches_onnxruntime(tmp_path):
    fp32 = tmp_path / "cnn.onnx"
    onnx.save(to_onnx(_cnn()), fp32)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter(_batches())

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {"input": x}

    qdq = tmp_path / "cnn.qdq.onnx"
    quantization.quantize_static(
        str(fp32), str(qdq), Reader(), quant_format=quantization.QuantFormat.QDQ,
        per_channel=True, activation_type=quantization.QuantType.QUInt8,
        weight_type=quantization.QuantType.QInt8)
    model = tf.load(str(qdq), device=DEVICE)
    int8 = _int8(model.graph)
    # the depthwise conv stays fp32 (with its Q/DQ); the other convs and the dense run int8
    assert sorted(op for op, _, _ in int8.values()) == ["FusedConv", "FusedConv", "FusedGemm"]
    assert "2_Conv" not in int8
    x = _batches(1, seed=9)[0]
    np.testing.assert_allclose(model.run(None, {"input": x})[0], _ort(onnx.load(qdq), x),
                               rtol=1e-5, atol=1e-5)


# --- mark_precision ------------------------------------------------------------------------------


def _mixed() -> Graph:
    """conv, depthwise conv, a MatMul of two activations, a dense MatMul, a 3-D weight."""
    rng = np.random.default_rng(5)
    f32 = np.float32
    conv = {"kernel_shape": [1, 1]}
    nodes = [
        Node("Conv", ["x", "w1"], ["c1"], conv, name="conv"),
        Node("Relu", ["c1"], ["r1"], name="relu"),
        Node("Conv", ["r1", "wd"], ["c2"], {**conv, "group": 4}, name="depthwise"),
        Node("Reshape", ["c2", "shape"], ["t"], name="reshape"),
        Node("Transpose", ["t"], ["tt"], {"perm": [0, 2, 1]}, name="transpose"),
        Node("MatMul", ["t", "tt"], ["att"], name="scores"),  # activation x activation
        Node("MatMul", ["t", "w2"], ["d"], name="dense"),
        Node("MatMul", ["t", "w3"], ["e"], name="batched"),  # 3-D weight
    ]
    inits = {"w1": rng.standard_normal((4, 3, 1, 1)).astype(f32),
             "wd": rng.standard_normal((4, 1, 1, 1)).astype(f32),
             "shape": np.array([0, 4, 4], np.int64),
             "w2": rng.standard_normal((4, 5)).astype(f32),
             "w3": rng.standard_normal((1, 4, 5)).astype(f32)}
    return Graph(nodes, [Value("x", f32, ("N", 3, 2, 2))],
                 [Value("att", f32), Value("d", f32), Value("e", f32)], inits, name="mixed")


def test_mark_precision_marks_exactly_the_eligible_contractions():
    graph, _ = optimize(_mixed())
    assert precision_nodes(graph) == ["conv", "dense"]
    bf16 = mark_precision(graph, "bf16")
    marked = {n.name: n for n in bf16.nodes if n.attrs.get("precision")}
    assert sorted(marked) == ["conv", "dense"]
    assert (marked["conv"].op, marked["conv"].attrs["activation"]) == ("FusedConv", "Relu")
    assert (marked["dense"].op, marked["dense"].domain) == ("FusedMatMul", "taskflow")
    assert {n.name: n.op for n in bf16.nodes}["scores"] == "MatMul"
    assert not any(n.attrs.get("precision") for n in graph.nodes)  # the input is not modified
    x = {"x": np.random.default_rng(6).standard_normal((2, 3, 2, 2)).astype(np.float32)}
    want = ExecutionPlan(graph, device="reference").run(x)
    got = ExecutionPlan(bf16, device=DEVICE).run(x)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0.05, atol=0.05)


def test_mark_precision_int8_is_dynamic_and_respects_the_node_subset():
    graph, _ = optimize(_mixed())
    int8 = mark_precision(graph, "int8", nodes={"dense"})
    assert _int8(int8) == {"dense": ("FusedMatMul", 0.0, 0)}
    assert not mark_precision(int8, "", nodes=["dense"]).nodes[-2].attrs.get("precision")
    # a statically calibrated node keeps its scales under a dynamic int8 request
    static = fuse_qdq(_qdq_graph())
    assert _int8(mark_precision(static, "int8")) == _int8(static)
    with pytest.raises(InputError, match=r"\['scores'\].*eligible nodes: 'conv', 'dense'"):
        mark_precision(graph, "bf16", nodes={"scores"})
    with pytest.raises(InputError, match="precision 'fp16' is unknown"):
        mark_precision(graph, "fp16")


# --- quantize_graph ------------------------------------------------------------------------------


def test_static_quantize_graph_runs_in_onnxruntime_and_as_int8_in_taskflow():
    graph, batches = _cnn(), _batches()
    ranges = _ranges(graph, batches)
    qgraph, report = quantize_graph(graph, ranges)
    assert {k: v["quantized"] for k, v in report.items()} == {
        "0_Conv": True, "2_Conv": False, "4_Conv": True, "8_Gemm": True}
    assert report["2_Conv"]["reason"].startswith("depthwise")
    assert report["8_Gemm"]["axis"] == 0 and report["4_Conv"]["x_zero_point"] == 0
    proto = to_onnx(qgraph)
    onnx.checker.check_model(proto, full_check=True)
    model = tf.Model(qgraph, device=DEVICE)
    assert sorted(op for op, _, _ in _int8(model.graph).values()) == [
        "FusedConv", "FusedConv", "FusedGemm"]
    assert not model.graph.op_counts().get("DequantizeLinear")
    x = batches[0]  # inside the calibrated ranges: no clipping
    got = model.run(None, {"input": x})[0]
    np.testing.assert_allclose(got, _ort(proto, x), rtol=1e-5, atol=1e-5)
    fp32 = tf.Model(graph, device="reference").run(None, {"input": x})[0]
    assert np.abs(got - fp32).max() < 0.05 * np.abs(fp32).max()


def test_static_quantize_graph_skips_a_layer_without_a_range():
    graph = _cnn()
    ranges = _ranges(graph, _batches(1))
    del ranges["3_relu"]
    qgraph, report = quantize_graph(graph, ranges, per_channel=False)
    assert report["4_Conv"] == {"op": "Conv", "quantized": False,
                                "reason": "no calibration range for its input '3_relu'"}
    dq = [n for n in qgraph.nodes if n.op == "DequantizeLinear" and "weight" in n.inputs[0]]
    assert len(dq) == 2 and all("axis" not in n.attrs for n in dq)
    assert all(qgraph.initializers[n.inputs[1]].shape == () for n in dq)
    assert tf.Model(qgraph, device=DEVICE).graph.op_counts().get("FusedConv") == 3


def test_dynamic_quantize_graph_quantizes_weights_only():
    graph = _cnn()
    qgraph, report = quantize_graph(graph, mode="dynamic")
    assert "QuantizeLinear" not in qgraph.op_counts()
    assert qgraph.op_counts()["DequantizeLinear"] == 3
    assert report["0_Conv"]["x_scale"] is None
    x = _batches(1)[0]
    got = _ort(to_onnx(qgraph), x)
    fp32_weights = tf.Model(qgraph, device="reference").run(None, {"input": x})[0]
    np.testing.assert_allclose(fp32_weights, got, rtol=1e-5, atol=1e-5)
    # with mark_precision's dynamic int8, the layers run int8 kernels
    model = tf.Model(qgraph, device=DEVICE)
    dyn = tf.Model(mark_precision(model.graph, "int8"), device=DEVICE, optimize=False)
    assert len(_int8(dyn.graph)) == 3
    y = dyn.run(None, {"input": x})[0]
    assert np.abs(y - got).max() < 0.05 * np.abs(got).max()


def test_quantize_graph_shrinks_a_weight_dominated_file():
    graph = nn.Sequential([nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(),
                           nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.GlobalAvgPool2d(),
                           nn.Flatten(), nn.Dense(64, 10)], input_shape=(16, 8, 8)).to_graph()
    ranges = {v: (-4.0, 4.0) for v in ("input", "1_relu", "5_flatten")}
    qgraph, _ = quantize_graph(graph, ranges)
    before = len(to_onnx(graph).SerializeToString())
    after = len(to_onnx(qgraph).SerializeToString())
    assert before / after >= 3.5


def test_quantize_graph_refuses_bad_requests():
    graph = _cnn()
    with pytest.raises(InputError, match="unknown"):
        quantize_graph(graph, {}, mode="qat")
    with pytest.raises(InputError, match="needs the calibrated ranges"):
        quantize_graph(graph)
    with pytest.raises(InputError, match="range of value 'input'"):
        quantize_graph(graph, {"input": (1.0, -1.0)})


def _embedding(rows: int = 1000) -> Graph:
    """Gather of a rows x 16 table, then a 16 x 8 MatMul."""
    rng = np.random.default_rng(0)
    return Graph([Node("Gather", ["table", "ids"], ["emb"], {"axis": 0}, name="embed"),
                  Node("MatMul", ["emb", "w"], ["y"], name="proj")],
                 [Value("ids", np.int64, ("batch", 5))], [Value("y", np.float32, ("batch", 5, 8))],
                 {"table": rng.standard_normal((rows, 16)).astype(np.float32),
                  "w": rng.standard_normal((16, 8)).astype(np.float32)}, name="embedding")


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_quantize_graph_stores_an_embedding_table_in_int8_per_row(mode):
    graph = _embedding()
    ranges = {"emb": (-4.0, 4.0)} if mode == "static" else None
    qgraph, report = quantize_graph(graph, ranges, mode=mode)
    assert report["embed"] == {"op": "Gather", "quantized": True, "weight": "table", "axis": 0,
                               "parameters": 16000, "x_scale": None, "x_zero_point": None}
    assert report["proj"]["quantized"]
    gather = next(n for n in qgraph.nodes if n.op == "Gather")
    dq = next(n for n in qgraph.nodes if n.outputs[0] == gather.inputs[0])
    q, s = qgraph.initializers[dq.inputs[0]], qgraph.initializers[dq.inputs[1]]
    assert dq.attrs == {"axis": 0} and q.dtype == np.int8 and s.shape == (1000,)
    assert np.abs(q).max() == 127 and not qgraph.initializers[dq.inputs[2]].any()
    assert "table" not in qgraph.initializers
    proto = to_onnx(qgraph)
    onnx.checker.check_model(proto, full_check=True)
    # 16 int8 values and one fp32 scale per row: 64 -> 20 bytes (wide rows approach 4x)
    assert len(to_onnx(graph).SerializeToString()) >= 2.9 * len(proto.SerializeToString())
    # on load the table folds back to fp32: exactly the dequantised rows
    model = tf.Model(qgraph, device=DEVICE)
    assert "DequantizeLinear" not in model.graph.op_counts()
    gather = next(n for n in model.graph.nodes if n.op == "Gather")
    np.testing.assert_array_equal(model.graph.initializers[gather.inputs[0]],
                                  q.astype(np.float32) * s[:, None])
    ids = np.array([[0, 5, 999, 5, 17], [3, 2, 1, 0, 998]], np.int64)
    np.testing.assert_allclose(model.run(None, {"ids": ids})[0], _ort(proto, ids),
                               rtol=1e-5, atol=1e-5)


def test_quantize_graph_keeps_small_or_sideways_tables_fp32():
    graph = _embedding(rows=100)  # 1600 elements
    qgraph, report = quantize_graph(graph, mode="dynamic")
    assert report["embed"]["quantized"] is False and "< 4096" in report["embed"]["reason"]
    assert qgraph.initializers["table"].dtype == np.float32
    graph = _embedding()
    graph.nodes[0].attrs["axis"] = 1
    assert "axis 1" in quantize_graph(graph, mode="dynamic")[1]["embed"]["reason"]
