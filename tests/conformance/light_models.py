"""The nine light model-zoo models shipped inside the onnx package, and helpers to use them.

The light models build every weight with ConstantOfShape (value 0.02), so their expected
outputs are nearly uniform and weak as a check. :func:`with_random_weights` replaces those
weights by seeded random values (fan-in scaled; BatchNorm variances kept positive), giving a
model whose logits actually depend on every kernel being right.
"""

from __future__ import annotations

import glob
import os

import numpy as np
import onnx
from onnx import numpy_helper

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
LIGHT_MODELS = sorted(
    os.path.basename(p)[len("light_"):-len(".onnx")]
    for p in glob.glob(os.path.join(LIGHT_DIR, "light_*.onnx"))
)


def some_light_models(*kept: str) -> list:
    """``LIGHT_MODELS`` as pytest params: ``kept`` always run, the others only with
    ``TASKFLOW_TEST_ALL_LIGHT=1``. For checks whose code does not branch on the model (the CI
    budget is 20 minutes on 2 cores); the conformance suite runs every model anyway."""
    import pytest

    skip = pytest.mark.skipif(os.environ.get("TASKFLOW_TEST_ALL_LIGHT") != "1",
                              reason="another light model for the same check: set "
                                     "TASKFLOW_TEST_ALL_LIGHT=1 to run it too")
    unknown = set(kept) - set(LIGHT_MODELS)
    assert not unknown, unknown
    return [pytest.param(n, marks=() if n in kept else (skip,)) for n in LIGHT_MODELS]


def light_path(name: str) -> str:
    return os.path.join(LIGHT_DIR, f"light_{name}.onnx")


def expected_output(name: str) -> np.ndarray:
    tensor = onnx.TensorProto()
    with open(os.path.join(LIGHT_DIR, f"light_{name}_output_0.pb"), "rb") as f:
        tensor.ParseFromString(f.read())
    return numpy_helper.to_array(tensor)


def dummy_input(model: onnx.ModelProto) -> tuple[str, np.ndarray]:
    """The input BackendTest feeds light models: arange(n)/n in the declared shape."""
    inits = {i.name for i in model.graph.initializer}
    x = next(i for i in model.graph.input if i.name not in inits)
    shape = tuple(d.dim_value or 1 for d in x.type.tensor_type.shape.dim)
    n = int(np.prod(shape))
    return x.name, (np.arange(n).reshape(shape) / n).astype(np.float32)


def _consumers(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    result: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            result.setdefault(name, []).append((node, k))
    return result


def _role(name: str, consumers: dict) -> tuple[str, int, onnx.NodeProto | None]:
    """Follow Unsqueeze/Reshape chains to the op that uses a weight, and at which input."""
    seen = 0
    while name in consumers and seen < 8:
        node, k = consumers[name][0]
        if node.op_type in ("Unsqueeze", "Reshape", "Squeeze", "Identity") and k == 0:
            name = node.output[0]
            seen += 1
            continue
        return node.op_type, k, node
    return "", -1, None


def with_random_weights(model: onnx.ModelProto, seed: int = 0,
                        drop_softmax: bool = True) -> onnx.ModelProto:
    """A copy of a light model whose ConstantOfShape weights are seeded random initializers.

    With ``drop_softmax`` the final Softmax is removed so the output is the pre-softmax logits.
    """
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers = _consumers(model)
    keep, new_inits = [], []
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in consts:
            keep.append(node)
            continue
        shape = tuple(int(d) for d in consts[node.input[0]])
        op, k, user = _role(node.output[0], consumers)
        w = _random_tensor(rng, shape, op, k, user)
        new_inits.append(numpy_helper.from_array(w.astype(np.float32), node.output[0]))
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(new_inits)
    if drop_softmax:
        out = graph.output[0].name
        soft = [n for n in graph.node if n.op_type == "Softmax" and n.output[0] == out]
        if soft:
            graph.node.remove(soft[0])
            del graph.output[:]
            graph.output.append(onnx.helper.make_empty_tensor_value_info(soft[0].input[0]))
    return model


def _random_tensor(rng: np.random.Generator, shape: tuple[int, ...], op: str, k: int,
                   user: onnx.NodeProto | None) -> np.ndarray:
    if op in ("Conv", "Gemm") and k == 1:
        if op == "Conv":
            fan_in = int(np.prod(shape[1:]))
        else:
            trans_b = next((a.i for a in user.attribute if a.name == "transB"), 0)
            fan_in = shape[1] if trans_b else shape[0]
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
    if op == "BatchNormalization":
        if k == 1:  # scale
            return rng.uniform(0.8, 1.2, shape)
        if k == 4:  # variance must stay positive
            return rng.uniform(0.5, 1.5, shape)
        return rng.standard_normal(shape) * 0.1  # bias, mean
    if op == "Mul":  # DenseNet/Inception express BN scale as Mul
        return rng.uniform(0.8, 1.2, shape)
    return rng.standard_normal(shape) * 0.05  # biases and shifts
