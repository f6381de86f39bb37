"""Small ONNX models for the Dask lowering tests, built with ``onnx.helper``.

Weights are made larger than ``INLINE_CONST_BYTES`` where the tests count weight keys.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import taskflow as tf

RNG = np.random.default_rng(0)
OPSET = 17


def _model(nodes: list, inputs: list, outputs: list, weights: dict[str, np.ndarray],
           name: str) -> tf.Model:
    graph = helper.make_graph(nodes, name, inputs, outputs,
                              initializer=[numpy_helper.from_array(w, k)
                                           for k, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return tf.load(model)


def _w(*shape: int) -> np.ndarray:
    return (RNG.standard_normal(shape) * 0.3).astype(np.float32)


def _in(name: str, *shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def cnn() -> tf.Model:
    """Conv -> Relu -> Flatten -> Gemm: a chain (weights: W 1.7 KB, B, G 46 KB)."""
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv1"),
             helper.make_node("Relu", ["c"], ["r"], name="relu1"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat", axis=1),
             helper.make_node("Gemm", ["f", "G", "GB"], ["y"], name="fc", transB=1)]
    weights = {"W": _w(16, 3, 3, 3), "B": _w(16), "G": _w(10, 16 * 6 * 6), "GB": _w(10)}
    return _model(nodes, [_in("x", "N", 3, 8, 8)], [_in("y", "N", 10)], weights, "cnn")


def branchy() -> tf.Model:
    """A fire module with a residual: squeeze -> (1x1, 3x3) -> Concat, + shortcut, pool, fc."""
    nodes = [helper.make_node("Conv", ["x", "Ws"], ["s"], name="squeeze"),
             helper.make_node("Relu", ["s"], ["sr"], name="squeeze_relu"),
             helper.make_node("Conv", ["sr", "We1"], ["e1"], name="expand1x1"),
             helper.make_node("Relu", ["e1"], ["e1r"], name="expand1x1_relu"),
             helper.make_node("Conv", ["sr", "We3"], ["e3"], name="expand3x3", pads=[1] * 4),
             helper.make_node("Relu", ["e3"], ["e3r"], name="expand3x3_relu"),
             helper.make_node("Concat", ["e1r", "e3r"], ["cat"], name="concat", axis=1),
             helper.make_node("Add", ["cat", "x"], ["res"], name="residual"),
             helper.make_node("GlobalAveragePool", ["res"], ["gap"], name="pool"),
             helper.make_node("Flatten", ["gap"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "G"], ["y"], name="fc")]
    weights = {"Ws": _w(8, 16, 1, 1), "We1": _w(8, 8, 1, 1), "We3": _w(8, 8, 3, 3),
               "G": _w(16, 12)}
    return _model(nodes, [_in("x", "N", 16, 6, 6)], [_in("y", "N", 12)], weights, "branchy")


def torch_flatten() -> tf.Model:
    """``x.view(x.size(0), -1)`` as PyTorch exports it: Shape -> Gather -> Concat -> Reshape."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Shape", ["r"], ["shp"], name="shape"),
             helper.make_node("Gather", ["shp", "zero"], ["n"], name="batch_size", axis=0),
             helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"], name="unsq"),
             helper.make_node("Concat", ["n1", "minus1"], ["newshape"], name="cat", axis=0),
             helper.make_node("Reshape", ["r", "newshape"], ["f"], name="view"),
             helper.make_node("MatMul", ["f", "M"], ["y"], name="fc")]
    weights = {"zero": np.array(0, np.int64), "zero1": np.array([0], np.int64),
               "minus1": np.array([-1], np.int64), "M": _w(4 * 5 * 5, 7)}
    return _model(nodes, [_in("x", "N", 4, 5, 5)], [_in("y", "N", 7)], weights, "torchflat")


def batch_mixing() -> tf.Model:
    """Centres each feature over the batch: ReduceMean over axis 0 is not batch-local."""
    nodes = [helper.make_node("MatMul", ["x", "M"], ["h"], name="fc"),
             helper.make_node("ReduceMean", ["h"], ["mean"], name="batch_mean", axes=[0],
                              keepdims=1),
             helper.make_node("Sub", ["h", "mean"], ["centred"], name="centre"),
             helper.make_node("Relu", ["centred"], ["y"], name="relu")]
    weights = {"M": _w(6, 300)}
    return _model(nodes, [_in("x", "N", 6)], [_in("y", "N", 300)], weights, "mixing")


def two_in_two_out() -> tf.Model:
    """Two batch inputs, two outputs."""
    nodes = [helper.make_node("MatMul", ["a", "M"], ["am"], name="proj"),
             helper.make_node("Add", ["am", "b"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["y1"], name="relu"),
             helper.make_node("Sigmoid", ["s"], ["y2"], name="sigmoid")]
    weights = {"M": _w(5, 300)}
    return _model(nodes, [_in("a", "N", 5), _in("b", "N", 300)],
                  [_in("y1", "N", 300), _in("y2", "N", 300)], weights, "two")


def with_fixed_input() -> tf.Model:
    """A batch input ``x`` and an input ``scale`` of static shape (1, 300) (no batch dim)."""
    nodes = [helper.make_node("MatMul", ["x", "M"], ["h"], name="proj"),
             helper.make_node("Mul", ["h", "scale"], ["y"], name="scale_mul")]
    return _model(nodes, [_in("x", "N", 5), _in("scale", 1, 300)], [_in("y", "N", 300)],
                  {"M": _w(5, 300)}, "fixed")


def mlp(sizes: tuple[int, ...] = (64, 512, 512, 10)) -> tf.Model:
    """Gemm/Relu stack: the model-parallel test splits its big layer."""
    nodes, weights, prev = [], {}, "x"
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        # He-scaled, so activations stay O(1) and float32 rounding stays near 1e-6
        weights[f"W{k}"] = (RNG.standard_normal((a, b)) * np.sqrt(2 / a)).astype(np.float32)
        weights[f"b{k}"] = _w(b)
        out = "y" if k == len(sizes) - 2 else f"h{k}"
        nodes.append(helper.make_node("Gemm", [prev, f"W{k}", f"b{k}"], [f"g{k}"],
                                      name=f"fc{k}"))
        nodes.append(helper.make_node("Relu" if out != "y" else "Identity", [f"g{k}"], [out],
                                      name=f"act{k}"))
        prev = out
    return _model(nodes, [_in("x", "N", sizes[0])], [_in("y", "N", sizes[-1])], weights, "mlp")


def sample(model: tf.Model, batch: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Random inputs: symbolic dims set to ``batch``."""
    rng = np.random.default_rng(seed)
    return {v.name: rng.standard_normal([d if isinstance(d, int) else batch
                                         for d in v.shape]).astype(np.float32)
            for v in model.graph.inputs}
