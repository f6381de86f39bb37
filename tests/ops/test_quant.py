"""The quantisation family against ONNX Runtime and onnx's ReferenceEvaluator, and models made
by ONNX Runtime's own quantisation tool run end to end.

Integer outputs must be equal, not close. Two oracle caveats shape the cases:
  * On CPUs without AVX-512 VNNI, ORT's u8s8/s8s8 integer GEMMs (MatMulInteger, ConvInteger,
    QLinear*, and the QLinearConv its optimiser makes of QDQ models) use VPMADDUBSW, whose
    int16 pair sums saturate for large weights (ORT's quantisation docs: use ``reduce_range``).
    Cases judged by ORT keep int8 weights in [-64, 63], where no pair can saturate; full-range
    weights are judged by the ReferenceEvaluator, and ORT-quantised models by ORT with
    ``reduce_range=True`` (and the full-range model by ORT's unoptimised QDQ graph).
  * The ReferenceEvaluator requantises in float64, ORT (MLAS) and taskflow in float32: they
    could differ on a value within ~1e-7 of a rounding tie, which these seeded cases avoid.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import taskflow.ops as ops
from onnx import TensorProto, helper, numpy_helper
from taskflow.ops.registry import ROW_RULES, BatchView

import taskflow
from taskflow.errors import ShapeError, UnsupportedOpError

from .oracles import assert_close, run_onnx_reference, run_ort

ORACLES = {"ort": run_ort, "reference": run_onnx_reference}
F32 = np.float32
#: Largest int8 weight magnitude ORT's AVX2 u8s8 kernel sums without int16 saturation:
#: 2 * 255 * 64 = 32640 <= 32767.
ORT_SAFE_INT8 = 64

MODULE_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
              "ConvInteger", "QLinearMatMul", "QLinearConv"}


def check(op, inputs, attrs=None, oracles=("ort", "reference"), const=(), n_outputs=1):
    """Every output equal (floats within 1 ulp-ish) to every oracle's."""
    attrs = attrs or {}
    got = ops.get(op)(*inputs, **attrs)
    for name in oracles:
        want = ORACLES[name](op, inputs, attrs, const_inputs=set(const), n_outputs=n_outputs)
        for k, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, rtol=1e-6, atol=0, what=f"{op} vs {name}, output {k}, {attrs}")
    return got


def u8(rng, *shape):
    return rng.integers(0, 256, shape).astype(np.uint8)


def s8(rng, *shape, limit=128):
    return rng.integers(-limit, limit, shape).astype(np.int8)


def test_registers_exactly_this_family_with_onnx_signatures() -> None:
    mine = {s.name for s in ops.specs() if s.reference.__module__.endswith(".quant")}
    assert mine == MODULE_OPS
    for name in sorted(mine):
        spec, schema = ops.get(name), onnx.defs.get_schema(name)
        assert spec.attributes == set(schema.attributes), name
        assert (spec.min_inputs, spec.max_inputs) == (schema.min_input, schema.max_input), name
        assert spec.reference.__doc__, f"{name} needs a one-line formula docstring"


def test_kinds_keep_rows_apart_except_dynamic_quantize() -> None:
    kinds = {name: ops.get(name).kind for name in MODULE_OPS}
    assert kinds.pop("QuantizeLinear") == kinds.pop("DequantizeLinear") == "elementwise"
    # One scale over the whole tensor: the lowering must run it on the whole batch.
    assert kinds.pop("DynamicQuantizeLinear") == "reduce"
    assert set(kinds.values()) == {"contraction"}
    batch = BatchView(inputs=((0, 1, 1),), in_ranks=(2,), output=(0, 1, 1), out_rank=2)
    assert "every axis" in ROW_RULES["reduce"](batch)
    assert ROW_RULES["elementwise"](batch) == ""


# --- QuantizeLinear / DequantizeLinear ----------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16])
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
def test_quantize_dequantize_match_oracles(dtype, axis) -> None:
    rng = np.random.default_rng(list(f"{np.dtype(dtype).name} {axis}".encode()))
    x = (rng.standard_normal((3, 4, 5)) * 40).astype(F32)
    n = 1 if axis is None else x.shape[axis]
    scale = (rng.random(n) * 0.5 + 0.05).astype(F32)
    info = np.iinfo(dtype)
    zp = rng.integers(max(info.min, -20), min(info.max, 20) + 1, n).astype(dtype)
    if axis is None:
        scale, zp = scale.reshape(()), zp.reshape(())
    attrs = {} if axis is None else {"axis": axis}
    q = check("QuantizeLinear", [x, scale, zp], attrs, const={1, 2})[0]
    assert q.min() == info.min or dtype in (np.int16, np.uint16)  # int8 ranges saturate
    check("DequantizeLinear", [q, scale, zp], attrs, const={1, 2})


def test_quantize_rounds_half_to_even_and_saturates() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 1e6, -1e6, 127.5, 126.5], F32)
    got = ops.get("QuantizeLinear")(x, F32(1), np.int8(0))[0]
    assert got.tolist() == [0, 2, 2, 0, -2, -2, 127, -128, 127, 126]
    # No zero point: uint8, as ONNX says.
    assert ops.get("QuantizeLinear")(x[:3], F32(0.5))[0].tolist() == [1, 3, 5]
    check("QuantizeLinear", [x * 0.25, F32(0.25), np.int8(3)], const={1, 2})
    check("QuantizeLinear", [x, F32(2), np.uint8(128)], const={1, 2})


@pytest.mark.parametrize("to", [TensorProto.INT4, TensorProto.UINT4, TensorProto.FLOAT8E4M3FN,
                                TensorProto.FLOAT8E5M2])
def test_quantize_to_small_types_matches_reference(to) -> None:
    rng = np.random.default_rng(to)
    x = (rng.standard_normal((4, 6)) * 8).astype(F32)
    zp = np.zeros((), helper.tensor_dtype_to_np_dtype(to))
    q = check("QuantizeLinear", [x, F32(0.5), zp], oracles=("reference",), const={1, 2})[0]
    check("DequantizeLinear", [q, F32(0.5), zp], oracles=("reference",), const={1, 2})


def test_blocked_quantisation_matches_oracles() -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 7)).astype(F32)  # 7 = 3 blocks of 3, the last one short
    scale = (rng.random((4, 3)) * 0.05 + 0.01).astype(F32)
    zp = s8(rng, 4, 3, limit=10)
    attrs = {"axis": 1, "block_size": 3}
    q = check("QuantizeLinear", [x, scale, zp], attrs, const={1, 2})[0]
    check("DequantizeLinear", [q, scale, zp], attrs, oracles=("reference",), const={1, 2})


def test_dequantize_int32_bias_and_float16_scale() -> None:
    rng = np.random.default_rng(3)
    b = rng.integers(-(2**20), 2**20, 16).astype(np.int32)  # a QDQ model's int32 bias
    check("DequantizeLinear", [b, F32(1e-4)], const={1})
    y = check("DequantizeLinear", [u8(rng, 5), np.float16(0.1), np.uint8(9)],
              oracles=("reference",), const={1, 2})[0]
    assert y.dtype == np.float16


def test_bad_scale_shape_and_type_are_named() -> None:
    x = np.zeros((2, 3), F32)
    with pytest.raises(ShapeError, match=r"does not match axis 1 of input shape \(2, 3\)"):
        ops.get("QuantizeLinear")(x, np.ones(4, F32), axis=1)
    with pytest.raises(UnsupportedOpError, match="int8 and uint8 are"):
        ops.get("MatMulInteger")(np.zeros((2, 2), np.int16), np.zeros((2, 2), np.int8))


# --- DynamicQuantizeLinear ----------------------------------------------------------------------
@pytest.mark.parametrize("case", ["mixed", "positive", "negative", "zeros", "ties"])
def test_dynamic_quantize_matches_oracles(case) -> None:
    rng = np.random.default_rng(11)
    x = {"mixed": rng.standard_normal((3, 17)) * 3, "positive": rng.random((4, 5)) + 1,
         "negative": -rng.random((2, 9)) - 0.5, "zeros": np.zeros((2, 3)),
         "ties": np.array([-1.0, 0.0, 254.0, 1.5, 2.5])}[case].astype(F32)
    # All zeros: the spec's scale is 0/255; ORT takes 1, onnx's reference evaluator 1/255.
    oracles = ("ort",) if case == "zeros" else ("ort", "reference")
    y, scale, zp = check("DynamicQuantizeLinear", [x], oracles=oracles, n_outputs=3)
    assert y.dtype == zp.dtype == np.uint8 and scale.shape == zp.shape == ()


# --- integer products ---------------------------------------------------------------------------
@pytest.mark.parametrize("types", ["u8s8", "u8u8", "s8s8"])
@pytest.mark.parametrize("shapes", [((5, 7), (7, 3)), ((2, 4, 6), (6, 5)),
                                    ((2, 3, 4), (2, 4, 5)), ((0, 4), (4, 3))])
def test_matmul_integer_matches_oracles(types, shapes) -> None:
    rng = np.random.default_rng(5)
    (sa, sb), n = shapes, shapes[1][-1]
    a = u8(rng, *sa) if types[0] == "u" else s8(rng, *sa)
    full = u8(rng, *sb) if types[2] == "u" else s8(rng, *sb)
    safe = full if types[2] == "u" else s8(rng, *sb, limit=ORT_SAFE_INT8)
    azp = np.asarray(7, a.dtype)
    bzp = (u8(rng, n) if types[2] == "u" else s8(rng, n, limit=5))  # per column of B
    if len(sb) > 2:  # ORT takes per-column zero points for a 2-D B only
        bzp = bzp[:1].reshape(())
    check("MatMulInteger", [a, safe, azp, bzp], const={2, 3})
    if sa[0]:  # the ReferenceEvaluator cannot broadcast a per-column zero point
        check("MatMulInteger", [a, full, azp, bzp.reshape(-1)[0]], oracles=("reference",))


@pytest.mark.parametrize("attrs", [{}, {"pads": [1, 1, 1, 1]}, {"strides": [2, 2], "pads":
                                   [0, 1, 1, 0]}, {"group": 2, "dilations": [2, 1]}])
def test_conv_integer_matches_oracles(attrs) -> None:
    rng = np.random.default_rng(9)
    x = u8(rng, 2, 4, 7, 6)
    w = s8(rng, 6, 4 // attrs.get("group", 1), 3, 3, limit=ORT_SAFE_INT8)
    check("ConvInteger", [x, w, np.uint8(131), np.int8(-3)], attrs, const={2, 3})
    # Per-output-channel weight zero points (ORT refuses them), full-range weights.
    w = s8(rng, *w.shape)
    check("ConvInteger", [x, w, np.uint8(3), s8(rng, 6, limit=9)], attrs, oracles=("reference",))


@pytest.mark.parametrize("types", ["u8s8", "s8s8", "u8u8"])
@pytest.mark.parametrize("per_column", [False, True])
def test_qlinear_matmul_matches_oracles(types, per_column) -> None:
    rng = np.random.default_rng(13)
    a = u8(rng, 2, 3, 8) if types[0] == "u" else s8(rng, 2, 3, 8)
    b = u8(rng, 8, 5) if types[2] == "u" else s8(rng, 8, 5, limit=ORT_SAFE_INT8)
    n = 5 if per_column else 1
    bscale = (rng.random(n) * 0.01 + 0.002).astype(F32).reshape(-1 if per_column else ())
    bzp = (rng.integers(120, 136, n).astype(np.uint8) if types[2] == "u"
           else np.zeros(n, np.int8)).reshape(bscale.shape)
    y_zp = np.asarray(120 if types[0] == "u" else -3, a.dtype)
    inputs = [a, F32(0.02), np.asarray(9, a.dtype), b, bscale, bzp, F32(0.03), y_zp]
    oracles = ("ort",) if per_column else ("ort", "reference")  # reference: per-tensor only
    y = check("QLinearMatMul", inputs, const={1, 2, 4, 5, 6, 7}, oracles=oracles)[0]
    assert len(np.unique(y)) > 10, "the case should not saturate everywhere"


@pytest.mark.parametrize("attrs", [{"pads": [1, 1, 1, 1]}, {"strides": [2, 2]},
                                   {"group": 2, "pads": [1, 0, 1, 0]}])
@pytest.mark.parametrize("with_bias", [False, True])
def test_qlinear_conv_matches_oracles(attrs, with_bias) -> None:
    rng = np.random.default_rng(17)
    x = u8(rng, 2, 4, 6, 6)
    w = s8(rng, 6, 4 // attrs.get("group", 1), 3, 3, limit=ORT_SAFE_INT8)
    w_scale = (rng.random(6) * 0.002 + 0.001).astype(F32)  # per output channel
    inputs = [x, F32(0.02), np.uint8(128), w, w_scale, np.zeros(6, np.int8), F32(0.05),
              np.uint8(100)]
    if with_bias:
        inputs.append(rng.integers(-3000, 3000, 6).astype(np.int32))
    y = check("QLinearConv", inputs, attrs, const=set(range(1, len(inputs))))[0]
    assert len(np.unique(y)) > 10, "the case should not saturate everywhere"


def test_qlinear_conv_full_range_weights_match_reference() -> None:
    rng = np.random.default_rng(19)
    inputs = [s8(rng, 1, 3, 5, 5), F32(0.05), np.int8(2), s8(rng, 4, 3, 3, 3), F32(0.01),
              np.int8(0), F32(0.4), np.int8(-5)]
    check("QLinearConv", inputs, {"pads": [1, 1, 1, 1]}, oracles=("reference",))


# --- graphs: folding, and models quantised by ONNX Runtime ---------------------------------------
def _ort_session(model: onnx.ModelProto, optimise: bool = True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    if not optimise:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def test_dequantized_constant_weights_fold_into_float_weights() -> None:
    """QDQ weights (int8, per output channel) -> DequantizeLinear -> MatMul: the weight is
    dequantised once at load, even above the importer's folding limit, and the model matches."""
    rng = np.random.default_rng(23)
    wq = s8(rng, 400, 300)  # 120,000 elements: above the importer's FOLD_MAX_INPUT_ELEMENTS
    scale = (rng.random(300) * 0.01).astype(F32)
    inits = [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(scale, "ws"),
             numpy_helper.from_array(np.zeros(300, np.int8), "wz")]
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1),
         helper.make_node("MatMul", ["x", "w"], ["y"])], "qdq_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 400])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 300])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 10
    model = taskflow.load(proto)
    assert [n.op for n in model.graph.nodes] == ["MatMul"]
    (w,) = [v for v in model.graph.initializers.values() if v.shape == (400, 300)]
    np.testing.assert_array_equal(w, wq.astype(F32) * scale)
    x = rng.standard_normal((3, 400)).astype(F32)
    # Unoptimised: ORT's optimiser would quantise x too (DynamicQuantizeMatMul).
    want = _ort_session(proto, optimise=False).run(None, {"x": x})[0]
    np.testing.assert_allclose(model.run(None, {"x": x})[0], want, rtol=1e-4, atol=1e-4)


def _float_cnn() -> onnx.ModelProto:
    """A small CNN + MLP: two 3x3 convolutions with ReLU and a max pool, then Gemm, MatMul."""
    rng = np.random.default_rng(0)

    def weight(name, *shape, std):
        return numpy_helper.from_array((rng.standard_normal(shape) * std).astype(F32), name)

    node = helper.make_node
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             node("Relu", ["c1"], ["r1"]),
             node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             node("Relu", ["c2"], ["r2"]),
             node("Flatten", ["r2"], ["f"]),
             node("Gemm", ["f", "w3", "b3"], ["g"], transB=1),
             node("Relu", ["g"], ["r3"]),
             node("MatMul", ["r3", "w4"], ["m"]),
             node("Add", ["m", "b4"], ["y"])]
    inits = [weight("w1", 8, 1, 3, 3, std=0.3), weight("b1", 8, std=0.1),
             weight("w2", 16, 8, 3, 3, std=0.15), weight("b2", 16, std=0.1),
             weight("w3", 32, 256, std=0.05), weight("b3", 32, std=0.1),
             weight("w4", 32, 10, std=0.2), weight("b4", 10, std=0.1)]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


#: How each model is made with ``onnxruntime.quantization``: (function, keyword arguments).
QUANTISED = {
    # QDQ, per channel, U8S8; reduce_range keeps ORT's AVX2 kernels clear of saturation.
    "static_qdq": ("static", {"quant_format": "QDQ", "reduce_range": True}),
    # The same at full range, judged by ORT running the QDQ graph as written (no fusion).
    "static_qdq_full_range": ("static", {"quant_format": "QDQ"}),
    # QOperator: QLinearConv and QLinearMatMul (ORT's Gemm would become com.microsoft QGemm).
    "static_qoperator": ("static", {"quant_format": "QOperator", "reduce_range": True,
                                    "op_types_to_quantize": ["Conv", "MatMul"]}),
    # Dynamic: DynamicQuantizeLinear + ConvInteger / MatMulInteger, uint8 weights.
    "dynamic": ("dynamic", {}),
}


@pytest.fixture(scope="module")
def float_cnn_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("quant") / "float.onnx"
    onnx.save(_float_cnn(), path)
    return path


def _quantise(float_path, how: str) -> onnx.ModelProto:
    from onnxruntime import quantization as q

    kind, kwargs = QUANTISED[how]
    out = float_path.with_name(f"{how}.onnx")
    if kind == "dynamic":
        q.quantize_dynamic(float_path, out, weight_type=q.QuantType.QUInt8, **kwargs)
        return onnx.load(out)
    calibration = np.random.default_rng(1).random((16, 1, 8, 8)).astype(F32)

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": calibration[i:i + 4]} for i in range(0, 16, 4)])

        def get_next(self):
            return next(self.batches, None)

    kwargs = dict(kwargs, quant_format=getattr(q.QuantFormat, kwargs["quant_format"]))
    q.quantize_static(float_path, out, Reader(), per_channel=True,
                      activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                      **kwargs)
    return onnx.load(out)


def _output_step(model: onnx.ModelProto) -> float:
    """The scale of the quantisation feeding output ``y``, else (dynamic) float32 eps * 16."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.output[0] == "y":
            return float(inits[n.input[1]])
    return float(np.finfo(F32).eps) * 16


@pytest.mark.parametrize("how", list(QUANTISED))
def test_ort_quantised_model_matches_ort(float_cnn_path, how) -> None:
    import dask
    import dask.array as da

    qmodel = _quantise(float_cnn_path, how)
    ops_used = {n.op_type for n in qmodel.graph.node}
    assert ops_used & MODULE_OPS, ops_used
    x = np.random.default_rng(2).random((10, 1, 8, 8)).astype(F32)
    session = _ort_session(qmodel, optimise=how != "static_qdq_full_range")
    want = session.run(None, {"x": x})[0]
    model = taskflow.load(qmodel)
    assert not [n.name for n in model.graph.nodes  # quantised weights fold into float ones
                if n.op == "DequantizeLinear" and n.inputs[0] in model.graph.initializers]
    got = model.run(None, {"x": x})[0]
    step = _output_step(qmodel)
    assert got.dtype == want.dtype == F32
    assert np.abs(got - want).max() <= step * 1.0001, (how, np.abs(got - want).max(), step)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with dask.config.set(scheduler="sync"):
            lazy = model.predict(da.from_array(x, chunks=(5, -1, -1, -1)))
            np.testing.assert_array_equal(lazy.compute(), got)
    mixed = [str(w.message) for w in caught if "not batch-local" in str(w.message)]
    if "DynamicQuantizeLinear" in ops_used:  # one scale per batch: it must see the whole batch
        assert mixed and "(DynamicQuantizeLinear): it reduces along every axis" in mixed[0]
    else:
        assert not mixed
