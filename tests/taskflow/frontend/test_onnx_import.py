"""load_onnx: old-opset adapters, validation, external data, corrupt files, light models."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from taskflow.errors import ModelLoadError, ShapeError, UnsupportedOpError
from taskflow.frontend.onnx_export import to_onnx
from taskflow.frontend.onnx_import import load_onnx
from taskflow.ir.graph import BATCH, Graph, Node, Value
from taskflow.ir.optimize import fold_constants
from tests.ops.oracles import assert_close

from .onnx_helpers import (
    LIGHT_MODELS,
    attrs_of,
    downgrade,
    node_test,
    one_node_model,
    require_ops,
    run_graph,
    run_ort,
)


def check_outputs(graph, feeds, expected, *, rtol=1e-5, atol=1e-6):
    """The canonical graph, run by ONNX Runtime and by the registry, gives ``expected``."""
    for k, (got, want) in enumerate(zip(run_ort(to_onnx(graph), feeds), expected)):
        assert_close(got, want, rtol=rtol, atol=atol, what=f"ORT(canonical) output {k}")
    for k, (got, want) in enumerate(zip(run_graph(graph, feeds), expected)):
        assert_close(got, want, rtol=rtol, atol=atol, what=f"registry output {k}")


# --- adapters against onnx's node tests, downgraded to old opsets --------------------------------
@dataclass
class Case:
    module: str
    name: str
    opset: int
    to_attrs: dict = field(default_factory=dict)
    drop: tuple = ()
    attrs: dict | None = None  # canonical attributes, when they differ from the node test's
    ort_old: bool = True  # ORT runs the old form (its Pad-2 takes floats only)

    def __str__(self) -> str:
        return f"{self.name}@{self.opset}"


AXES = {"axes": "axes"}
DOWNGRADED = [
    Case("reducemean", "test_reduce_mean_do_not_keepdims_example", 13, AXES),
    Case("reducemean", "test_reduce_mean_default_axes_keepdims_example", 13, AXES),
    Case("reducemean", "test_reduce_mean_negative_axes_keepdims_random", 11, AXES),
    Case("reducemax", "test_reduce_max_do_not_keepdims_example", 13, AXES),
    Case("reducemax", "test_reduce_max_default_axes_keepdim_example", 13, AXES),
    Case("reducemin", "test_reduce_min_keepdims_random", 11, AXES),
    Case("reduceprod", "test_reduce_prod_do_not_keepdims_random", 13, AXES),
    Case("reducel1", "test_reduce_l1_keep_dims_example", 13, AXES),
    Case("reducel2", "test_reduce_l2_negative_axes_keep_dims_random", 13, AXES),
    Case("reduce_log_sum", "test_reduce_log_sum_desc_axes", 13, AXES),
    Case("reduce_log_sum", "test_reduce_log_sum_default", 13, AXES),
    Case("reduce_log_sum_exp", "test_reduce_log_sum_exp_do_not_keepdims_random", 13, AXES),
    Case("reducesumsquare", "test_reduce_sum_square_default_axes_keepdims_random", 13, AXES),
    Case("reducesum", "test_reduce_sum_do_not_keepdims_example", 11, AXES),
    Case("reducesum", "test_reduce_sum_default_axes_keepdims_random", 11, AXES),
    Case("reducesum", "test_reduce_sum_negative_axes_keepdims_example", 7, AXES),
    Case("squeeze", "test_squeeze", 11, AXES),
    Case("squeeze", "test_squeeze_negative_axes", 11, AXES),
    Case("unsqueeze", "test_unsqueeze_two_axes", 11, AXES),
    Case("unsqueeze", "test_unsqueeze_negative_axes", 11, AXES),
    Case("split", "test_split_variable_parts_2d_opset13", 11, {"split": "split"}),
    Case("split", "test_split_equal_parts_default_axis_opset13", 11, attrs={"num_outputs": 3}),
    Case("split", "test_split_equal_parts_2d", 13, drop=("num_outputs",)),
    Case("slice", "test_slice_default_axes", 9, {"starts": "starts", "ends": "ends"}),
    Case("slice", "test_slice_negative_axes", 9,
         {"starts": "starts", "ends": "ends", "axes": "axes"}),
    Case("clip", "test_clip", 10, {"min": "min", "max": "max"}),
    Case("clip", "test_clip_default_max", 10, {"max": "max"}),
    Case("clip", "test_clip_default_inbounds", 7),
    Case("pad", "test_constant_pad", 10, {"pads": "pads", "value": "value"}),
    Case("pad", "test_reflect_pad", 10, {"pads": "pads"}, ort_old=False),
    Case("pad", "test_edge_pad", 10, {"pads": "pads"}, ort_old=False),
    Case("topk", "test_top_k", 9, {"k": "k"}),
    Case("softmax", "test_softmax_axis_2", 11),
    Case("softmax", "test_softmax_negative_axis", 11, attrs={"axis": 2}),
    Case("logsoftmax", "test_logsoftmax_axis_2", 12),
    Case("hardmax", "test_hardmax_negative_axis", 11, attrs={"axis": 2}),
    # onnx's own old-opset tests
    Case("dropout", "test_dropout_default_old", 11),
    Case("dropout", "test_dropout_random_old", 11, attrs={}),
    Case("scatter", "test_scatter_with_axis", 10),
]


@pytest.mark.parametrize("case", DOWNGRADED, ids=str)
def test_adapter_against_node_test(case: Case):
    tc = node_test(case.module, case.name)
    want = tc.model.graph.node[0]
    old, feeds, expected = downgrade(tc, case.opset, case.to_attrs, case.drop)
    for k, got in enumerate(run_ort(old, feeds) if case.ort_old else []):
        # the old form means what the node test says
        assert_close(got, expected[k], rtol=1e-5, atol=1e-6, what="ORT(old form)")
    want_op = "ScatterElements" if want.op_type == "Scatter" else want.op_type
    require_ops(want_op)
    graph = load_onnx(old, fix_batch=False)
    (node,) = graph.nodes
    assert node.op == want_op
    want_attrs = attrs_of(want) if case.attrs is None else case.attrs
    for key in ("ratio", "seed"):  # Dropout: irrelevant at inference; gone from the canon
        want_attrs.pop(key, None) if want.op_type == "Dropout" else None
    assert node.attrs == want_attrs
    data = dict(zip([v.name for v in tc.model.graph.input], tc.data_sets[0][0]))
    # an empty axes list means "all axes", like an omitted input
    want_inputs = ["" if i in data and np.size(data[i]) == 0 else i for i in want.input]
    while want_inputs and not want_inputs[-1]:
        want_inputs.pop()
    assert len(node.inputs) == len(want_inputs), (node.inputs, want_inputs)
    for ours, theirs in zip(node.inputs, want_inputs):
        if theirs in feeds or not theirs:
            assert ours == theirs
        else:  # moved to an attribute by the downgrade, back to a constant input now
            np.testing.assert_array_equal(graph.initializers[ours], data[theirs])
    check_outputs(graph, feeds, expected)


# --- adapters whose semantics changed: ONNX Runtime on the old model is the oracle ------------
def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


RNG = np.random.default_rng(7)
X3 = RNG.standard_normal((2, 3, 4)).astype(np.float32)
X4 = RNG.standard_normal((1, 2, 5, 7)).astype(np.float32)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("axis, shape, path", [
    (1, [2, 3, 4], "flatten"),       # coerce-to-2D over dims 1..2: differs from opset 13
    (0, [2, 3, 4], "flatten"),
    (None, [2, 3, 4], "flatten"),    # default axis=1
    (2, [2, 3, 4], "axis"),          # last axis: the semantics coincide
    (1, None, "flatten"),            # rank unknown
])
def test_softmax_before_13(op, axis, shape, path):
    attrs = {} if axis is None else {"axis": axis}
    old = one_node_model(op, ["x"], ["y"], attrs, [_vi("x", shape)], 11)
    feeds = {"x": X3}
    expected = run_ort(old, feeds)
    graph = load_onnx(old, fix_batch=False)
    ops = [n.op for n in graph.nodes]
    # Shape(x) folds to a constant when x's shape is static
    flatten = ["Flatten", op, "Reshape"] if shape else ["Flatten", op, "Shape", "Reshape"]
    assert ops == ([op] if path == "axis" else flatten)
    check_outputs(graph, feeds, expected)


def test_softmax_trailing_ones_take_the_cheap_path():
    # light squeezenet: Softmax over (1, 1000, 1, 1) at opset 9
    old = one_node_model("Softmax", ["x"], ["y"], {}, [_vi("x", [1, 6, 1, 1])], 9)
    graph = load_onnx(old, fix_batch=False)
    assert [(n.op, n.attrs) for n in graph.nodes] == [("Softmax", {"axis": 1})]
    x = RNG.standard_normal((1, 6, 1, 1)).astype(np.float32)
    check_outputs(graph, {"x": x}, run_ort(old, {"x": x}))


RESIZE_SCALES = {
    "up": [1, 1, 2, 3], "up_fraction": [1, 1, 1.5, 2.5], "down": [1, 1, 0.5, 0.6],
    "mixed": [1, 1, 0.4, 1.7],
}


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", list(RESIZE_SCALES), ids=str)
def test_resize_10(mode, scales):
    s = np.array(RESIZE_SCALES[scales], np.float32)
    old = one_node_model("Resize", ["x", "s"], ["y"], {"mode": mode}, [_vi("x", [1, 2, 5, 7])],
                         10, {"s": s})
    expected = run_ort(old, {"x": X4})
    graph = load_onnx(old, fix_batch=False)
    assert all(n.op == "Resize" for n in graph.nodes)
    assert all(n.attrs["coordinate_transformation_mode"] == "asymmetric" for n in graph.nodes)
    assert len(graph.nodes) == (2 if scales == "mixed" and mode == "nearest" else 1)
    check_outputs(graph, {"x": X4}, expected)


@pytest.mark.parametrize("opset", [7, 9])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_to_resize(opset, mode):
    s = np.array([1, 1, 2, 1.5], np.float32)
    if opset == 7:
        old = one_node_model("Upsample", ["x"], ["y"], {"mode": mode, "scales": s.tolist()},
                             [_vi("x", [1, 2, 5, 7])], 7)
    else:
        old = one_node_model("Upsample", ["x", "s"], ["y"], {"mode": mode},
                             [_vi("x", [1, 2, 5, 7])], 9, {"s": s})
    graph = load_onnx(old, fix_batch=False)
    (node,) = graph.nodes
    assert node.op == "Resize" and node.inputs[1] == ""
    np.testing.assert_array_equal(graph.initializers[node.inputs[2]], s)
    check_outputs(graph, {"x": X4}, run_ort(old, {"x": X4}))


def test_upsample_node_test_opset_9():
    tc = node_test("upsample", "test_upsample_nearest")
    old, feeds, expected = downgrade(tc, 9, {})
    graph = load_onnx(old, fix_batch=False)
    assert [n.op for n in graph.nodes] == ["Resize"]
    assert graph.nodes[0].attrs["nearest_mode"] == "floor"
    check_outputs(graph, feeds, expected)


def _batchnorm_model(opset, attrs, n_outputs=1):
    tc = node_test("batch_normalization", "test_batchnorm_example")
    feeds = dict(zip([v.name for v in tc.model.graph.input], tc.data_sets[0][0]))
    outs = ["y"] + [f"extra{k}" for k in range(1, n_outputs)]
    model = one_node_model("BatchNormalization", ["x", "s", "bias", "mean", "var"], outs,
                           attrs, list(tc.model.graph.input), opset)
    del model.graph.output[1:]  # only Y is a graph output; the training outputs are unused
    return model, feeds, tc.data_sets[0][1]


@pytest.mark.parametrize("opset, attrs, n_outputs", [
    (7, {"spatial": 1, "epsilon": 1e-5}, 1),
    (9, {"momentum": 0.9}, 5),
])
def test_batchnorm_old_forms(opset, attrs, n_outputs):
    model, feeds, expected = _batchnorm_model(opset, attrs, n_outputs)
    require_ops("BatchNormalization")
    graph = load_onnx(model, fix_batch=False)
    (node,) = graph.nodes
    assert "spatial" not in node.attrs and node.outputs == ["y"]
    check_outputs(graph, feeds, expected)


def test_batchnorm_spatial_0_is_unsupported():
    model, _, _ = _batchnorm_model(7, {"spatial": 0})
    with pytest.raises(UnsupportedOpError, match="spatial=0"):
        load_onnx(model)


# --- validation -------------------------------------------------------------------------------
def test_unsupported_ops_are_listed_together():
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                             [_vi("t", [2])])
    nodes = [
        helper.make_node("FooBar", ["x"], ["a"], name="mystery"),
        helper.make_node("Relu", ["a"], ["b"], name="custom", domain="com.example"),
        helper.make_node("Relu", ["b"], ["c"], name="noisy", bogus=3),
        helper.make_node("If", ["cond"], ["d"], name="branch", then_branch=then,
                         else_branch=then),
        helper.make_node("Add", ["c", "d"], ["y"], name="fine"),
    ]
    graph = helper.make_graph(nodes, "bad", [_vi("x", [2]), _vi("cond", [], TensorProto.BOOL)],
                              [_vi("y", [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.example", 1)])
    with pytest.raises(UnsupportedOpError) as info:
        load_onnx(model)
    assert sorted(info.value.ops) == sorted([("FooBar", "mystery"), ("Relu", "custom"),
                                             ("Relu", "noisy"), ("If", "branch")])
    msg = str(info.value)
    for piece in ("FooBar (mystery)", "Relu (custom): domain 'com.example'",
                  "Relu (noisy): attribute(s) ['bogus']", "If (branch)", "4 node(s)"):
        assert piece in msg
    assert "fine" not in msg


def test_opset_newer_than_onnx_is_refused():
    model = one_node_model("Relu", ["x"], ["y"], {}, [_vi("x", [2])], 13)
    model.opset_import[0].version = 99
    with pytest.raises(UnsupportedOpError, match="opset 99"):
        load_onnx(model)


def _legacy_add(b_shape: list[int]) -> onnx.ModelProto:
    # Opset 6 Add broadcast only with broadcast=1, B aligned at `axis`; 7+ is numpy-style.
    model = one_node_model("Add", ["a", "b"], ["y"], {"broadcast": 1, "axis": 1},
                           [_vi("a", [2, 3, 4]), _vi("b", b_shape)], 13)
    model.opset_import[0].version = 6
    model.ir_version = 3
    return model


def test_pre_opset7_model_is_upgraded_by_onnx_version_converter():
    graph = load_onnx(_legacy_add([3, 4]), fix_batch=False)
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    b = np.arange(12, dtype=np.float32).reshape(3, 4) * 10
    (y,) = run_graph(graph, {"a": a, "b": b})
    np.testing.assert_array_equal(y, a + b)


def test_pre_opset7_form_the_converter_cannot_express_is_refused_clearly():
    with pytest.raises(UnsupportedOpError, match=r"opset 6.*version converter.*\['Add'\]"):
        load_onnx(_legacy_add([3]), fix_batch=False)


def test_empty_optional_inputs_are_kept():
    model = one_node_model("Clip", ["x", "", "hi"], ["y"], {}, [_vi("x", [3])], 13,
                           {"hi": np.array(0.5, np.float32)})
    graph = load_onnx(model, fix_batch=False)
    assert graph.nodes[0].inputs == ["x", "", "hi"]


def test_constant_nodes_become_initializers():
    nodes = [helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0]),
             helper.make_node("Constant", [], ["k"], value_int=3),
             helper.make_node("Add", ["x", "c"], ["y"])]
    graph = helper.make_graph(nodes, "g", [_vi("x", [2])], [_vi("y", [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    g = load_onnx(model)
    assert [n.op for n in g.nodes] == ["Add"]
    np.testing.assert_array_equal(g.initializers["c"], np.array([1, 2], np.float32))
    assert "k" not in g.initializers  # unused after import


def test_shape_of_static_value_folds():
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Reshape", ["x", "s"], ["y"])]
    graph = helper.make_graph(nodes, "g", [_vi("x", [2, 3])], [_vi("y", [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    g = load_onnx(model)
    assert [n.op for n in g.nodes] == ["Reshape"]
    np.testing.assert_array_equal(g.initializers["s"], [2, 3])


def test_fold_constants_is_pure_and_respects_the_limit():
    g = Graph([Node("Add", ["w", "w"], ["w2"]), Node("Mul", ["x", "w2"], ["y"])],
              [Value("x", np.float32, (10,))], [Value("y")], {"w": np.ones(10, np.float32)})
    assert [n.op for n in fold_constants(g, max_input_elements=5).nodes] == ["Add", "Mul"]
    folded = fold_constants(g, max_input_elements=10)
    assert [n.op for n in folded.nodes] == ["Mul"] and set(folded.initializers) == {"w2"}
    np.testing.assert_array_equal(folded.initializers["w2"], np.full(10, 2, np.float32))
    assert [n.op for n in g.nodes] == ["Add", "Mul"] and set(g.initializers) == {"w"}


# --- reading: corrupt, truncated, missing, external data ---------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        load_onnx(tmp_path / "nope.onnx")


@pytest.mark.parametrize("content", ["truncated", "text", "empty"])
def test_corrupt_file(tmp_path, content):
    data = LIGHT_MODELS[0].read_bytes()
    data = {"truncated": data[: len(data) // 2], "text": b"hello, I am not a model\n",
            "empty": b""}[content]
    path = tmp_path / "broken.onnx"
    path.write_bytes(data)
    with pytest.raises(ModelLoadError, match=r"broken\.onnx.*corrupt or truncated"):
        load_onnx(path)


def _external_model(folder, location="weights.bin"):
    w = np.arange(12, dtype=np.float32)
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "ext",
                              [_vi("x", [12])], [_vi("y", [12])],
                              initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location=location,
                    size_threshold=0)
    return path, w


def _relocate(path, location):
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save_model(model, str(path))
    return model


def test_external_data_inside_folder(tmp_path):
    path, w = _external_model(tmp_path)
    g = load_onnx(path)
    np.testing.assert_array_equal(g.initializers["w"], w)
    (tmp_path / "sub").mkdir()
    os.replace(tmp_path / "weights.bin", tmp_path / "sub" / "w.bin")
    _relocate(path, "sub/w.bin")
    np.testing.assert_array_equal(load_onnx(path).initializers["w"], w)


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_external_data_outside_folder_is_refused(tmp_path, how):
    folder = tmp_path / "model"
    folder.mkdir()
    path, _ = _external_model(folder)
    outside = tmp_path / "weights.bin"
    os.replace(folder / "weights.bin", outside)
    if how == "dotdot":
        location = "../weights.bin"
    elif how == "absolute":
        location = str(outside)
    else:
        (folder / "link.bin").symlink_to(outside)
        location = "link.bin"
    _relocate(path, location)
    with pytest.raises(ModelLoadError, match=rf"tensor 'w'.*{location!r}".replace("\\", "\\\\")):
        load_onnx(path)


def test_external_data_bytes_need_base_dir(tmp_path):
    path, w = _external_model(tmp_path)
    data = path.read_bytes()
    with pytest.raises(ModelLoadError, match="base_dir"):
        load_onnx(data)
    np.testing.assert_array_equal(load_onnx(data, base_dir=tmp_path).initializers["w"], w)
    proto = onnx.load(str(path), load_external_data=False)
    np.testing.assert_array_equal(load_onnx(proto, base_dir=tmp_path).initializers["w"], w)
    assert proto.graph.initializer[0].data_location == TensorProto.EXTERNAL  # not modified


def test_truncated_external_data(tmp_path):
    path, _ = _external_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"\0" * 8)
    with pytest.raises(ModelLoadError, match="truncated"):
        load_onnx(path)


@pytest.mark.parametrize("ir_version", [3, 14])
def test_ir_versions(ir_version):
    w = numpy_helper.from_array(np.ones(3, np.float32), "w")
    inputs = [_vi("x", [3])] + ([_vi("w", [3])] if ir_version == 3 else [])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", inputs,
                              [_vi("y", [3])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    model.ir_version = ir_version
    g = load_onnx(model.SerializeToString())
    assert g.input_names == ["x"] and set(g.initializers) == {"w"}


# --- light models: symbolic batch -------------------------------------------------------------
@pytest.mark.parametrize("path", LIGHT_MODELS, ids=lambda p: p.stem)
def test_light_model_imports_with_symbolic_batch(path):
    g = load_onnx(path)
    (inp,) = g.inputs
    assert inp.shape == (BATCH, 3, 224, 224) and inp.dtype == np.float32
    assert all(v.shape[0] == BATCH for v in g.outputs)
    assert any(n.startswith("batch dimension made symbolic") for n in g.notes), g.notes
    assert not {"ConstantOfShape", "Constant"} & set(g.op_counts())
    g.validate()


def test_fix_batch_false_keeps_batch_1():
    g = load_onnx(LIGHT_MODELS[0], fix_batch=False)
    assert g.inputs[0].shape[0] == 1 and not g.notes


def _random_weights(path):
    """The light model with random weights instead of its ConstantOfShape fills."""
    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    keep = []
    for n in model.graph.node:
        if n.op_type == "ConstantOfShape":
            w = rng.standard_normal(shapes[n.input[0]]).astype(np.float32) * 0.05
            w = np.abs(w) + 0.5 if "var" in n.output[0] or "riv" in n.output[0] else w
            model.graph.initializer.append(numpy_helper.from_array(w, n.output[0]))
        else:
            keep.append(n)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", ["light_shufflenet", "light_inception_v1"])
def test_symbolic_batch_matches_per_sample_runs(name):
    path = next(p for p in LIGHT_MODELS if p.stem == name)
    model = _random_weights(path)
    g = load_onnx(model)
    x = np.random.default_rng(1).standard_normal((3, 3, 224, 224)).astype(np.float32)
    feeds = {g.inputs[0].name: x}
    per_sample = np.concatenate([run_ort(model, {g.inputs[0].name: x[i:i + 1]})[0]
                                 for i in range(3)])
    assert_close(run_ort(to_onnx(g), feeds)[0], per_sample, rtol=1e-4, atol=1e-6)
    assert_close(run_graph(g, feeds)[0], per_sample, rtol=1e-4, atol=1e-6)


def _batch1_model(op, attrs, extra_nodes=()):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node(op, ["r"], ["y"], **attrs)]
    graph = helper.make_graph(list(extra_nodes) + nodes, "b1", [_vi("x", [1, 4])],
                              [_vi("y", None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_unsound_batch_stays_fixed_with_a_note():
    model = _batch1_model("Softmax", {"axis": 0})  # mixes samples: N would change the result
    g = load_onnx(model)
    assert g.inputs[0].shape == (1, 4)
    assert "kept fixed at 1" in g.notes[-1] and "Softmax" in g.notes[-1]
    with pytest.raises(ShapeError, match="Softmax"):
        load_onnx(model, fix_batch=True)
    ok = load_onnx(_batch1_model("Softmax", {"axis": 1}), fix_batch=True)
    assert ok.inputs[0].shape == (BATCH, 4) and ok.outputs[0].shape[0] == BATCH
