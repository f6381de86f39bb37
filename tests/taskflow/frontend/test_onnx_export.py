"""to_onnx: valid for the checker and ONNX Runtime, and a lossless round trip through load_onnx."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from taskflow.frontend.onnx_export import BASE_OPSET, to_onnx
from taskflow.frontend.onnx_import import load_onnx
from taskflow.ir.graph import BATCH, Graph, Node, Value
from tests.conformance.light_models import with_random_weights
from tests.ops.oracles import assert_close

from .onnx_helpers import LIGHT_MODELS, require_ops, run_graph, run_ort

#: Light models with 60M+ weights: their round trip takes several seconds on a small machine.
BIG = {"light_vgg19", "light_zfnet512", "light_bvlc_alexnet"}


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.stem in BIG
                                  else p for p in LIGHT_MODELS], ids=lambda p: p.stem)
def test_light_model_round_trip(path):
    g = load_onnx(path)
    model = to_onnx(g)
    assert model.ir_version == 11
    assert [(o.domain, o.version) for o in model.opset_import] == [("", BASE_OPSET)]
    # full_check: strict shape inference must agree with every declared shape (N included)
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == BATCH
    again = load_onnx(model)
    assert len(again.nodes) == len(g.nodes) and again.op_counts() == g.op_counts()
    assert sorted(again.initializers) == sorted(g.initializers)
    for name, value in g.initializers.items():
        assert np.array_equal(again.initializers[name], value), name
    assert again.inputs == g.inputs and again.outputs == g.outputs


def test_onnxruntime_runs_the_export_at_any_batch():
    # Seeded random weights: with the zoo's constant weights every logit is the same sum, and
    # whether the softmax comes out uniform then depends on the BLAS's summation order (1 ulp
    # of a 7e9 logit is 512), which differs between AVX2 and AVX-512 machines.
    path = next(p for p in LIGHT_MODELS if p.stem == "light_squeezenet")
    g = load_onnx(with_random_weights(onnx.load(path), drop_softmax=False))
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    (y,) = run_ort(to_onnx(g), {g.inputs[0].name: x})
    assert y.shape == (2, 1000, 1, 1)
    assert_close(run_graph(g, {g.inputs[0].name: x})[0], y, rtol=1e-4, atol=1e-6)


def test_fused_ops_get_the_taskflow_domain():
    require_ops("FusedGemm")
    g = Graph(
        [Node("FusedGemm", ["x", "w", "b"], ["y"], {"transB": 1, "activation": "Relu"},
              "fc", domain="taskflow")],
        [Value("x", np.float32, (BATCH, 4))], [Value("y", np.float32, (BATCH, 3))],
        {"w": np.ones((3, 4), np.float32), "b": np.zeros(3, np.float32)},
    )
    model = to_onnx(g)
    assert ("taskflow", 1) in [(o.domain, o.version) for o in model.opset_import]
    onnx.checker.check_model(model)
    again = load_onnx(model)
    assert again.nodes[0].domain == "taskflow" and again.nodes[0].attrs == g.nodes[0].attrs


def test_attributes_of_every_kind():
    g = Graph(
        [Node("ConstantOfShape", ["s"], ["c"], {"value": np.array([2.5], np.float32)}, "fill"),
         Node("Add", ["x", "c"], ["a"], {}, "add"),
         Node("Transpose", ["a"], ["t"], {"perm": [1, 0]}, "tr"),
         Node("LeakyRelu", ["t"], ["y"], {"alpha": np.float32(0.5)}, "act")],
        [Value("x", np.float32, (2, 3))], [Value("y", np.float32, (3, 2))],
        {"s": np.array([2, 3], np.int64)},
    )
    model = to_onnx(g)
    onnx.checker.check_model(model, full_check=True)
    again = load_onnx(model)  # ConstantOfShape folds on import
    assert [n.op for n in again.nodes] == ["Add", "Transpose", "LeakyRelu"]
    assert again.nodes[2].attrs == {"alpha": 0.5} and again.nodes[1].attrs == {"perm": [1, 0]}


def test_empty_list_attribute_takes_its_type_from_the_schema():
    g = Graph([Node("Transpose", ["x"], ["y"], {"perm": []}, "tr")],
              [Value("x", np.float32, ())], [Value("y", np.float32, ())])
    (attr,) = to_onnx(g).graph.node[0].attribute
    assert attr.type == onnx.AttributeProto.INTS


def test_opset_follows_the_newest_canonical_form():
    g = Graph([Node("Relu", ["x"], ["y"], {}, "r")], [Value("x", np.float32, (2,))],
              [Value("y", np.float32, (2,))])
    assert to_onnx(g).opset_import[0].version == BASE_OPSET
    assert to_onnx(g, opset=14).opset_import[0].version == 14
    g.nodes[0] = Node("Swish", ["x"], ["y"], {}, "s")  # introduced in opset 24
    assert to_onnx(g).opset_import[0].version == 24
