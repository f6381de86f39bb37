"""Graph passes: each is numerically equivalent on the light model zoo, and does its job."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import taskflow as tf
from taskflow.executor import ExecutionPlan
from taskflow.optimize import PASSES, optimize
from tests.conformance.light_models import (
    LIGHT_MODELS,
    dummy_input,
    light_path,
    with_random_weights,
)

#: Folding BatchNorm rounds W*s once in float32 instead of scaling activations: ~1e-6.
RTOL = 2e-6


def _graph_and_input(name: str):
    proto = with_random_weights(onnx.load(light_path(name)), seed=3)
    _, x = dummy_input(proto)
    x = np.random.default_rng(4).standard_normal(x.shape, dtype=np.float32)
    return tf.load(proto, optimize=False).graph, x


def _run(graph, x):
    return ExecutionPlan(graph).run({graph.inputs[0].name: x})[graph.outputs[0].name]


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_each_pass_and_all_passes_keep_the_numbers(name):
    graph, x = _graph_and_input(name)
    expected = _run(graph, x)
    scale = np.abs(expected).max()
    for pass_name in PASSES:
        out, report = optimize(graph, [pass_name])
        if report.after == report.before and out.initializers.keys() == graph.initializers.keys():
            continue  # the pass found nothing to do here: the same graph
        err = np.abs(_run(out, x) - expected).max() / scale
        assert err <= RTOL, f"{name}: pass {pass_name} changed the output by {err:.2e}"
    out, report = optimize(graph)
    assert report.after < report.before
    err = np.abs(_run(out, x) - expected).max() / scale
    assert err <= RTOL, f"{name}: all passes changed the output by {err:.2e}"


def test_resnet50_batchnorms_folded_and_epilogues_fused():
    graph, _ = _graph_and_input("resnet50")
    out, report = optimize(graph)
    ops = out.op_counts()
    assert "BatchNormalization" not in ops and "Relu" not in ops and "Sum" not in ops
    fused = [n for n in out.nodes if n.op == "FusedConv"]
    assert len(fused) >= 49
    assert sum(1 for n in fused if len(n.inputs) == 4 and n.inputs[3]) == 16  # residual adds
    assert report.by_pass["fold_batchnorm"] == 53


def test_dropout_and_identity_removed_and_dead_nodes_dropped():
    graph, _ = _graph_and_input("squeezenet")
    assert "Dropout" in graph.op_counts()
    out, _ = optimize(graph)
    assert "Dropout" not in out.op_counts()
    used = {i for n in out.nodes for i in n.inputs}
    assert set(out.initializers) <= used


def test_unknown_pass_is_refused_with_the_list():
    graph, _ = _graph_and_input("zfnet512")
    with pytest.raises(ValueError, match="known: .*fold_batchnorm"):
        optimize(graph, ["fold_everything"])
