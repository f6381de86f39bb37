"""Test oracles: run one ONNX node through ONNX Runtime and onnx's ReferenceEvaluator.

Both are oracles only (test extras), never part of taskflow's runtime path.

Examples
--------
>>> outs = run_ort("Relu", [np.array([-1.0, 2.0], np.float32)])   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: ONNX Runtime 1.31 refuses IR 14 (what onnx 1.23 writes); IR 11 with opset <= 26 loads.
ORT_IR_VERSION = 11
DEFAULT_OPSET = 21


def node_model(op: str, inputs: list[np.ndarray | None], attrs: dict[str, Any] | None = None,
               *, n_outputs: int = 1, opset: int = DEFAULT_OPSET,
               const_inputs: set[int] = frozenset()) -> onnx.ModelProto:
    """A one-node model. Inputs listed in ``const_inputs`` become initializers (e.g. shapes)."""
    attrs = attrs or {}
    in_names, vinfo, inits = [], [], []
    for k, x in enumerate(inputs):
        if x is None:
            in_names.append("")
            continue
        name = f"in{k}"
        in_names.append(name)
        x = np.asarray(x)
        if k in const_inputs:
            inits.append(numpy_helper.from_array(x, name))
        else:
            elem = helper.np_dtype_to_tensor_dtype(x.dtype)
            vinfo.append(helper.make_tensor_value_info(name, elem, list(x.shape)))
    while in_names and in_names[-1] == "":
        in_names.pop()
    out_names = [f"out{k}" for k in range(n_outputs)]
    node = helper.make_node(op, in_names, out_names, **attrs)
    outs = [helper.make_empty_tensor_value_info(o) for o in out_names]
    graph = helper.make_graph([node], f"single_{op}", vinfo, outs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ORT_IR_VERSION
    return model


def _feeds(inputs: list[np.ndarray | None], const_inputs: set[int]) -> dict[str, np.ndarray]:
    return {f"in{k}": np.asarray(x) for k, x in enumerate(inputs)
            if x is not None and k not in const_inputs}


def run_ort(op: str, inputs: list[np.ndarray | None], attrs: dict[str, Any] | None = None,
            **kw: Any) -> list[np.ndarray]:
    """Outputs of ONNX Runtime (CPU provider, 1 thread) for one node."""
    import onnxruntime as ort

    model = node_model(op, inputs, attrs, **kw)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, _feeds(inputs, kw.get("const_inputs", set())))


def run_onnx_reference(op: str, inputs: list[np.ndarray | None],
                       attrs: dict[str, Any] | None = None, **kw: Any) -> list[np.ndarray]:
    """Outputs of ``onnx.reference.ReferenceEvaluator`` for one node."""
    from onnx.reference import ReferenceEvaluator

    model = node_model(op, inputs, attrs, **kw)
    return ReferenceEvaluator(model).run(None, _feeds(inputs, kw.get("const_inputs", set())))


def assert_close(actual: Any, expected: Any, *, rtol: float = 1e-5, atol: float = 1e-6,
                 what: str = "") -> None:
    """Same dtype, same shape, values within tolerance (NaNs must match)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if actual.dtype.kind in "fc":
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True,
                                   err_msg=what)
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=what)


def spy_wide_rows(monkeypatch) -> list[int]:
    """A list that gets the row count of every block :mod:`taskflow.ops.cpu.pointwise_wide`'s
    kernel runs from Python, and of every whole job the native pool ran through it (its
    blocks are Numba calls no patch can see)."""
    from taskflow.ops.cpu import native_pool, pointwise_wide

    calls: list[int] = []
    kernel = pointwise_wide.pointwise_wide_rows
    monkeypatch.setattr(pointwise_wide, "pointwise_wide_rows",
                        lambda *args: (calls.append(args[-1] - args[-2]), kernel(*args))[1])
    shared = native_pool.pool()
    if shared is not None:
        job = shared.wide

        def wide(a, *rest):
            ran = job(a, *rest)
            if ran:
                calls.append(a.shape[0])
            return ran

        monkeypatch.setattr(shared, "wide", wide)
    return calls
