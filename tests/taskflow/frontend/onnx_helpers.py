"""Shared helpers for the ONNX import/export tests: oracles, runners and model builders."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from taskflow.ir.graph import Graph
from taskflow.ir.optimize import fold_constants

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(LIGHT_DIR.glob("light_*.onnx"))


def require_ops(*names: str) -> None:
    """Skip (with the reason) when an op is outside the registry (its adapter is still tested
    structurally; the numerical check needs the op)."""
    from taskflow import ops

    missing = [n for n in names if ops.lookup(n) is None]
    if missing:
        pytest.skip(f"ops {missing} are outside taskflow's op set: no kernel to run them")


def run_graph(graph: Graph, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Evaluate ``graph`` with the registry's numpy references (feeds become constants)."""
    g = graph.copy()
    for v in g.inputs:
        g.initializers[v.name] = np.asarray(feeds[v.name])
    g.inputs = []
    out = fold_constants(g)
    assert not out.nodes, f"nodes did not evaluate: {out.nodes[:3]} {out.notes}"
    return [out.initializers[v.name] for v in graph.outputs]


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def node_test(module: str, name: str):
    """One of onnx's backend node tests (importing its module registers its cases)."""
    importlib.import_module(f"onnx.backend.test.case.node.{module}")
    from onnx.backend.test.case.node import _NodeTestCases

    for tc in _NodeTestCases:
        if tc.name == name:
            return tc
    raise LookupError(f"no onnx node test {name!r} in module {module!r}")


def attrs_of(node: onnx.NodeProto) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def one_node_model(op: str, inputs: list[str], outputs: list[str], attrs: dict,
                   graph_inputs: list[onnx.ValueInfoProto], opset: int,
                   initializers: dict[str, np.ndarray] | None = None,
                   ir_version: int | None = None) -> onnx.ModelProto:
    while inputs and inputs[-1] == "":
        inputs = inputs[:-1]
    node = helper.make_node(op, inputs, outputs, **attrs)
    graph = helper.make_graph(
        [node], f"old_{op}", graph_inputs,
        [helper.make_empty_tensor_value_info(o) for o in outputs if o],
        initializer=[numpy_helper.from_array(v, k) for k, v in (initializers or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version or helper.find_min_ir_version_for(list(model.opset_import))
    return model


def downgrade(tc, opset: int, to_attrs: dict[str, str], drop: tuple[str, ...] = ()):
    """An old-opset form of node test ``tc``: the inputs in ``to_attrs`` become attributes.

    Returns ``(model, feeds, expected outputs)``; the data is the node test's own.
    """
    model = tc.model
    node = model.graph.node[0]
    feeds_list, expected = tc.data_sets[0]
    names = [v.name for v in model.graph.input]
    feeds = dict(zip(names, feeds_list))
    attrs = {k: v for k, v in attrs_of(node).items() if k not in drop}
    for inp, attr in to_attrs.items():
        if inp not in feeds:
            continue
        value = np.asarray(feeds.pop(inp))
        if value.size == 0:
            continue  # an empty list meant "all axes": the old form omits the attribute
        if attr == "k":
            attrs[attr] = int(value.ravel()[0])
        else:
            attrs[attr] = value.item() if value.ndim == 0 else value.tolist()
    inputs = ["" if i in to_attrs else i for i in node.input]
    graph_inputs = [v for v in model.graph.input if v.name in feeds]
    old = one_node_model(node.op_type, inputs, list(node.output), attrs, graph_inputs, opset)
    return old, feeds, list(expected)
