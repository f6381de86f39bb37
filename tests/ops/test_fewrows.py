"""The few-row product kernel (:mod:`taskflow.ops.cpu.fewrows`): fully connected layers at
small batch on a model's weight, against numpy and the unfused activation (ORT)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import taskflow.ops as ops
from onnx import TensorProto, helper

import taskflow as tf

from .oracles import assert_close
from .test_conv import ACTS, unfused_activation

#: (rows, inputs, outputs): row blocks of 6 with and without a last partial one; inputs
#: within one chunk and over two with a tail; outputs of 64-blocks, 16- and 8-wide tails.
SHAPES = [(1, 300, 24), (6, 1100, 136), (13, 1100, 1000), (127, 520, 64), (32, 2048, 4096)]


def _spy(monkeypatch) -> list[tuple[int, int]]:
    """The output column ranges the kernel is called on."""
    from taskflow.ops.cpu import fewrows

    ranges: list[tuple[int, int]] = []
    kernel = fewrows.fewrows_cols
    monkeypatch.setattr(fewrows, "fewrows_cols",
                        lambda *args: (ranges.append(args[-2:]), kernel(*args))[1])
    return ranges


def _expected_route(registered: bool, activation: str) -> bool:
    from taskflow.ops.cpu import blas, lowp

    return registered and "avx512f" in lowp.cpu_features() and blas.backend() != "mkl" \
        and activation in ("", "Relu", "Clip", "HardSigmoid")


def _covered(ranges: list[tuple[int, int]], n: int) -> bool:
    """Whether the ranges cover [0, n) once each."""
    return sorted(ranges) == ranges and [lo for lo, _ in ranges] == [0] + [
        hi for _, hi in ranges[:-1]] and ranges[-1][1] == n


@pytest.mark.parametrize("trans_b", [1, 0], ids=["transB", "plain"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("act", ACTS, ids=lambda a: a[0] or "none")
def test_fused_gemm_on_a_registered_weight_runs_the_few_row_kernel(monkeypatch, act, shape,
                                                                    trans_b):
    """FusedGemm of few rows on a model's weight (registered, as the plan registers its
    initializers) runs the few-row kernel where the CPU has AVX-512F and OpenBLAS (not
    oneMKL) runs the GEMMs, for the activations it applies in registers; every other case
    takes the GEMM. All match numpy's product and ORT's activation."""
    from taskflow.ops.cpu import common, matmul

    monkeypatch.setattr(matmul, "SPLIT_GEMM", 0)  # small cases: the size floor lowered
    rows, k, n = shape
    rng = np.random.default_rng(rows * k + n)
    a = rng.standard_normal((rows, k)).astype(np.float32)
    w = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    b = w if trans_b else np.ascontiguousarray(w.T)
    common.mark_constant([b, bias])
    ranges = _spy(monkeypatch)
    activation, params = act
    attrs = {"transB": trans_b, "activation": activation}
    if params is not None:
        attrs["activation_params"] = params
    got = ops.get("FusedGemm").kernels["cpu"](a, b, bias, **attrs)
    pre = (a.astype(np.float64) @ w.T.astype(np.float64) + bias).astype(np.float32)
    want = unfused_activation(pre, activation, params)
    assert_close(got, want, rtol=1e-4, atol=1e-5, what=f"FusedGemm {activation} {shape}")
    if rows > 1:
        assert np.ptp(pre, axis=0).min() > 0.1  # every output varies over the rows
    if _expected_route(True, activation):
        assert _covered(ranges, n), ranges
    else:
        assert ranges == []


def test_an_activation_operand_and_many_rows_take_the_gemm(monkeypatch):
    """Only a registered weight is packed (an activation changes between calls), and from
    128 rows the GEMM's row blocks run instead."""
    from taskflow.ops.cpu import common

    rng = np.random.default_rng(3)
    w = rng.standard_normal((256, 1024)).astype(np.float32)
    ranges = _spy(monkeypatch)
    for rows, registered in ((32, False), (128, True)):
        a = rng.standard_normal((rows, 1024)).astype(np.float32)
        if registered:
            common.mark_constant([w])
        got = ops.get("Gemm").kernels["cpu"](a, w, transB=1)
        np.testing.assert_allclose(got, a @ w.T, rtol=1e-4, atol=1e-4)
    assert ranges == []


def test_column_ranges_cut_on_packed_blocks():
    from taskflow.ops.cpu.fewrows import column_ranges

    for n in (8, 24, 64, 136, 1000, 4096):
        for parts in (1, 2, 3, 8, 100):
            ranges = column_ranges(n, parts)
            assert _covered(ranges, n) and len(ranges) <= parts
            assert all(lo % 64 == 0 for lo, _ in ranges)
            if n >= 64 * parts:
                assert len(ranges) == parts


def test_a_loaded_classifier_runs_the_few_row_kernel(monkeypatch):
    """A Gemm(transB=1) + Relu loaded from ONNX (the light zoo's fully connected layers): its
    weight is registered by the plan, the few-row kernel takes it where it runs, and the
    output matches numpy for a batch of 8."""
    rng = np.random.default_rng(8)
    w = (rng.standard_normal((512, 2304)) * 0.05).astype(np.float32)
    b = rng.standard_normal(512).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["pre"], transB=1),
         helper.make_node("Relu", ["pre"], ["y"])], "fc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2304])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 512])],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    model = tf.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [n.op for n in model.graph.nodes] == ["FusedGemm"]
    ranges = _spy(monkeypatch)
    x = rng.standard_normal((8, 2304)).astype(np.float32)  # 9.4M multiply-adds
    (y,) = model.run(None, {"x": x})
    np.testing.assert_allclose(y, np.maximum(x @ w.T + b, 0), rtol=1e-4, atol=1e-4)
    assert np.ptp(x @ w.T + b, axis=0).min() > 0.5
    assert _covered(ranges, 512) if _expected_route(True, "Relu") else ranges == []
