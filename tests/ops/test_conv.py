"""Conv, ConvTranspose and FusedConv against ONNX Runtime and onnx's ReferenceEvaluator.

Where an oracle is known to be wrong or to refuse a case, the other one judges it alone:
  * ORT refuses dilations with SAME_UPPER/SAME_LOWER, and has no float64 Conv.
  * ORT clamps ConvTranspose's SAME total padding at 0 when the kernel is shorter than the
    stride (output < in * stride); the ReferenceEvaluator pads at the start. Such cases are
    not drawn; an output_shape beyond the natural size is tested against ORT by example.
  * The ReferenceEvaluator's ConvTranspose slices grouped weights wrongly, ignores output_shape
    unless auto_pad is SAME_*, and cannot produce an empty batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import taskflow.ops as ops
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import helper
from taskflow.ops.conv import apply_activation

from taskflow.errors import ShapeError, UnsupportedOpError

from .oracles import (
    DEFAULT_OPSET,
    ORT_IR_VERSION,
    assert_close,
    run_onnx_reference,
    run_ort,
)

#: (rtol, atol) per op. Outputs are float32 dot products of up to 576 terms, summed in another
#: order than ORT's MLAS kernels; atol covers outputs that cancel to near 0.
TOL = {
    "Conv": (1e-4, 2e-5),
    "ConvTranspose": (1e-4, 2e-5),
    # Conv's, plus ORT's vectorised exp/tanh/erf in the activation (a few float32 ulps).
    "FusedConv": (1e-4, 2e-5),
}

ORACLES = {"ort": run_ort, "reference": run_onnx_reference}


def check(op, inputs, attrs, oracles=("ort", "reference")):
    got = ops.get(op)(*inputs, **attrs)
    rtol, atol = TOL[op]
    for name in oracles:
        want = ORACLES[name](op, inputs, attrs)
        for k, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, rtol=rtol, atol=atol, what=f"{op} vs {name}, output {k}, {attrs}")
    return got[0]


def randn(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def _lists(draw, nd, lo, hi):
    return draw(st.lists(st.integers(lo, hi), min_size=nd, max_size=nd))


@st.composite
def conv_cases(draw, transpose=False):
    """(inputs, attrs, oracles) for a random Conv or ConvTranspose node, 1-D to 3-D."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    nd = draw(st.integers(1, 3))
    group = draw(st.sampled_from([1, 1, 2, 3]))
    cg, mg, n = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
    kernel, strides, dil = _lists(draw, nd, 1, 3), _lists(draw, nd, 1, 3), _lists(draw, nd, 1, 2)
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    pads = _lists(draw, 2 * nd, 0, 2) if auto_pad == "NOTSET" else [0] * 2 * nd
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    side = {1: 8, 2: 6, 3: 4}[nd]
    if transpose:
        spatial = _lists(draw, nd, 1, side)
        w = randn(rng, group * cg, mg, *kernel)
    else:
        spatial = [draw(st.integers(max(1, sp - pads[i] - pads[i + nd]), sp + side))
                   for i, sp in enumerate(span)]
        w = randn(rng, group * mg, cg, *kernel)
    x = randn(rng, n, group * cg, *spatial)
    b = randn(rng, w.shape[1] * group if transpose else w.shape[0]) if draw(st.booleans()) \
        else None
    attrs = {"group": group, "strides": strides, "dilations": dil, "auto_pad": auto_pad}
    if auto_pad == "NOTSET":
        attrs["pads"] = pads
    if draw(st.booleans()):
        attrs["kernel_shape"] = kernel
    oracles = ["ort", "reference"]
    if auto_pad.startswith("SAME") and any(d > 1 for d in dil):
        oracles.remove("ort")  # "Dilation not supported for AutoPadType::SAME_UPPER..."
    if transpose:
        adj = [draw(st.integers(0, s - 1)) for s in strides]
        attrs["output_padding"] = adj
        natural = [s * (i - 1) + sp + a for s, i, sp, a in zip(strides, spatial, span, adj)]
        if auto_pad != "VALID" and draw(st.booleans()):
            # ORT accepts an output_shape whose implied total padding is in [0, stride).
            attrs["output_shape"] = [max(1, f - draw(st.integers(0, s - 1)))
                                     for f, s in zip(natural, strides)]
            attrs.pop("pads", None)
            if auto_pad == "NOTSET":
                oracles.remove("reference")  # it ignores output_shape unless auto_pad is SAME
        elif auto_pad == "NOTSET" and any(f - pads[i] - pads[i + nd] < 1
                                          for i, f in enumerate(natural)):
            attrs["pads"] = [0] * 2 * nd
        if group > 1 and "reference" in oracles:
            oracles.remove("reference")  # its grouped ConvTranspose slices W by output channel
        # A kernel shorter than the stride makes SAME's total padding negative: ORT clamps it
        # to 0 (output smaller than in * stride), the reference pads at the start; we follow the
        # spec's output size and grow at the end. test_conv_transpose_output_shape_beyond_...
        assume(not auto_pad.startswith("SAME") or "output_shape" in attrs
               or all(sp + a >= s for sp, a, s in zip(span, adj, strides)))
    return [x, w] + ([b] if b is not None else []), attrs, oracles


@settings(max_examples=150, deadline=None)
@given(conv_cases())
def test_conv_matches_oracles(case):
    inputs, attrs, oracles = case
    check("Conv", inputs, attrs, oracles)


@settings(max_examples=150, deadline=None)
@given(conv_cases(transpose=True))
def test_conv_transpose_matches_oracles(case):
    inputs, attrs, oracles = case
    check("ConvTranspose", inputs, attrs, oracles)


@pytest.mark.parametrize("n", [0, 1, 3])
@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_batch_sizes(op, n):
    rng = np.random.default_rng(n)
    x, w = randn(rng, n, 4, 5, 6), randn(rng, 4, 4, 3, 3)
    # The reference's ConvTranspose cannot build an empty batch (it allocates on first image).
    oracles = ["ort"] if op == "ConvTranspose" and n == 0 else ["ort", "reference"]
    check(op, [x, w, randn(rng, 4)], {"pads": [1, 0, 1, 2], "strides": [2, 1]}, oracles)


@pytest.mark.parametrize(("kernel", "pads"), [(1, 0), (3, 1)])
def test_one_by_one_spatial_input(kernel, pads):
    rng = np.random.default_rng(0)
    x, w = randn(rng, 2, 3, 1, 1), randn(rng, 5, 3, kernel, kernel)
    assert check("Conv", [x, w], {"pads": [pads] * 4}).shape == (2, 5, 1, 1)
    wt = randn(rng, 3, 5, kernel, kernel)
    check("ConvTranspose", [x, wt], {"pads": [pads] * 4})


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise(multiplier):
    rng = np.random.default_rng(multiplier)
    x, w = randn(rng, 2, 8, 9, 9), randn(rng, 8 * multiplier, 1, 3, 3)
    check("Conv", [x, w, randn(rng, 8 * multiplier)], {"group": 8, "pads": [1] * 4})
    check("ConvTranspose", [x, randn(rng, 8, multiplier, 3, 3)], {"group": 8, "strides": [2, 2]},
          oracles=["ort"])  # the reference's grouped ConvTranspose is wrong


def test_pointwise_fast_path_with_strides_and_pads(direct_kernels):
    rng = np.random.default_rng(1)
    x, w = randn(rng, 2, 6, 7, 8), randn(rng, 4, 3, 1, 1)
    check("Conv", [x, w], {"group": 2, "strides": [2, 3], "pads": [1, 0, 0, 1]})


def test_resnet_layer_matches_ort():
    rng = np.random.default_rng(2)
    # Weights scaled by 1/sqrt(fan_in), as trained nets are, so outputs are O(1) like TOL's.
    x, w, b = randn(rng, 1, 64, 56, 56), randn(rng, 64, 64, 3, 3) / 24, randn(rng, 64)
    check("Conv", [x, w, b], {"pads": [1] * 4}, oracles=["ort"])


@pytest.mark.parametrize(("c", "kernel", "size", "act"), [
    (3, (8, 8), (17, 16), "Relu"),  # a ViT-like stem: row 16 is read by no patch
    (8, (2, 3), (9, 14), ""),  # non-square, a column left over
    (6, (4, 4), (8, 8), "HardSwish"),
])
def test_patch_embedding_gathers_patches_from_nchw(kernel_threads, c, kernel, size, act):
    """Kernel = stride, no padding: the cpu kernel reads each patch as one GEMM row straight
    from the NCHW input (taskflow.ops.cpu.patches), over 1 and 2 kernel threads, and agrees
    with ONNX Runtime; with an activation, with the reference."""
    from taskflow.ops.cpu import patches
    rng = np.random.default_rng(4)
    x, w, b = randn(rng, 5, c, *size), randn(rng, 24, c, *kernel) / 8, randn(rng, 24)
    out = [(i - k) // k + 1 for i, k in zip(size, kernel)]
    assert patches.is_patch_embedding(x, kernel, kernel, (0, 0), (1, 1), out)
    attrs = {"strides": list(kernel)}
    y = ops.get("Conv").kernels["cpu"](x, w, b, **attrs)
    assert_close(y, run_ort("Conv", [x, w, b], attrs)[0], rtol=1e-4, atol=2e-5)
    assert np.ptp(y, axis=(2, 3)).min() > 0.1  # each output channel varies over the pixels
    if act:
        fused = ops.get("FusedConv")
        attrs["activation"] = act
        assert_close(fused.kernels["cpu"](x, w, b, **attrs), fused.reference(x, w, b, **attrs),
                     rtol=1e-5, atol=1e-5)
    # padding read after the input, or a stride other than the kernel, is not a patch embedding
    assert not patches.is_patch_embedding(x, kernel, kernel, (0, 0), (1, 1), [out[0] + 1, out[1]])
    assert not patches.is_patch_embedding(x, kernel, (1, 1), (0, 0), (1, 1), out)


def test_batch_sliced_im2col_matches_single_gemm(monkeypatch):
    rng = np.random.default_rng(3)
    x, w = randn(rng, 5, 3, 8, 8), randn(rng, 4, 3, 3, 3)
    whole = ops.get("Conv").reference(x, w)
    monkeypatch.setattr("ops.conv.IM2COL_BUDGET_BYTES", 1)  # one sample per GEMM
    np.testing.assert_array_equal(ops.get("Conv").reference(x, w), whole)
    check("ConvTranspose", [x, randn(rng, 3, 4, 3, 3)], {"strides": [2, 2]})


def test_conv_transpose_output_shape_beyond_natural_grows_at_end():
    rng = np.random.default_rng(4)
    x, w = randn(rng, 1, 2, 8), randn(rng, 2, 3, 2)
    y = check("ConvTranspose", [x, w], {"strides": [3], "output_shape": [25]}, oracles=["ort"])
    full = ops.get("ConvTranspose").reference(x, w, strides=[3])
    np.testing.assert_array_equal(y[..., :23], full)
    assert not y[..., 23:].any()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dtype_is_preserved(dtype):
    rng = np.random.default_rng(5)
    x, w = randn(rng, 1, 2, 5, 5, dtype=dtype), randn(rng, 3, 2, 3, 3, dtype=dtype)
    b = randn(rng, 3, dtype=np.float64)  # a float64 bias must not upcast a float32 conv
    assert ops.get("Conv").reference(x, w, b).dtype == dtype
    assert ops.get("ConvTranspose").reference(x, w.transpose(1, 0, 2, 3), b).dtype == dtype
    # ORT's CPU Conv has no float64 kernel.
    check("Conv", [x, w], {}, oracles=["reference"] if dtype == np.float64 else ["ort"])


def test_shape_errors_are_clear():
    x, w = np.zeros((1, 4, 5, 5), np.float32), np.zeros((2, 4, 3, 3), np.float32)
    with pytest.raises(ShapeError, match="kernel_shape"):
        ops.get("Conv").reference(x, w, kernel_shape=[2, 2])
    with pytest.raises(ShapeError, match="group"):
        ops.get("Conv").reference(x, w, group=2)
    with pytest.raises(ShapeError, match="does not fit"):
        ops.get("Conv").reference(x, np.zeros((2, 4, 7, 7), np.float32))


# --------------------------------------------------------------------------------------------
# FusedConv: compared with Conv + Add + the ONNX activation op, and ORT's com.microsoft kernel.

ACTS = [("", None), ("Relu", None), ("LeakyRelu", [0.2]), ("Sigmoid", None), ("Tanh", None),
        ("Clip", [-0.5, 0.75]), ("HardSigmoid", [0.3, 0.4]), ("Gelu", None)]


def unfused_activation(y, activation, params):
    """The activation as its own ONNX node, run by ORT."""
    if not activation:
        return y
    if activation == "Clip":
        lo, hi = (np.array(p, y.dtype) for p in params)
        return run_ort("Clip", [y, lo, hi])[0]
    names = {"LeakyRelu": ["alpha"], "HardSigmoid": ["alpha", "beta"]}.get(activation, [])
    return run_ort(activation, [y], dict(zip(names, params or [])))[0]


def run_ort_fused_conv(inputs, attrs):
    names = ["X", "W", "B", "Z"][:len(inputs)]
    node = helper.make_node("FusedConv", names, ["Y"], domain="com.microsoft", **attrs)
    info = [helper.make_tensor_value_info(n, 1, list(a.shape)) for n, a in zip(names, inputs)]
    graph = helper.make_graph([node], "fused", info, [helper.make_empty_tensor_value_info("Y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = ORT_IR_VERSION
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip(names, inputs)))[0]


@settings(max_examples=40, deadline=None)
@given(conv_cases(), st.sampled_from(ACTS), st.booleans())
def test_fused_conv_is_conv_add_activation(case, act, with_z):
    (x, w, *b), attrs, _ = case
    activation, params = act
    y = ops.get("Conv").reference(x, w, *b, **attrs)
    inputs = [x, w, b[0] if b else None]
    if with_z:
        z = randn(np.random.default_rng(0), *y.shape)
        inputs.append(z)
        y = y + z
    fused = ops.get("FusedConv").reference(*inputs, **attrs, activation=activation,
                                            activation_params=params)
    assert_close(fused, unfused_activation(y, activation, params), rtol=TOL["FusedConv"][0],
                 atol=TOL["FusedConv"][1], what=f"FusedConv {activation} {attrs}")


@pytest.mark.parametrize(("activation", "params"), [a for a in ACTS if a[0] not in ("", "Gelu")])
def test_fused_conv_matches_ort_com_microsoft(activation, params):
    rng = np.random.default_rng(6)
    inputs = [randn(rng, 2, 4, 7, 7), randn(rng, 6, 2, 3, 3), randn(rng, 6),
              randn(rng, 2, 6, 4, 7)]
    attrs = {"group": 2, "strides": [2, 1], "pads": [1, 1, 1, 1], "activation": activation}
    if params:
        attrs["activation_params"] = params
    got = ops.get("FusedConv").reference(*inputs, **attrs)
    assert_close(got, run_ort_fused_conv(inputs, attrs), rtol=TOL["FusedConv"][0],
                 atol=TOL["FusedConv"][1], what=f"FusedConv {activation}")


def test_activation_table_errors():
    y = np.zeros(3, np.float32)
    with pytest.raises(UnsupportedOpError, match="Swish"):
        apply_activation(y, "Swish")
    with pytest.raises(ValueError, match="activation_params"):
        apply_activation(y, "Relu", [1.0])
    assert apply_activation(y, "Clip", np.array([0.5], np.float64)).dtype == np.float32


# --------------------------------------------------------------------------------------------
# Registration and FLOPs

def test_registration():
    for name in ("Conv", "ConvTranspose", "FusedConv"):
        assert ops.get(name).kind == "contraction"
    assert ops.get("FusedConv").domain == "taskflow"
    assert {"activation", "activation_params", "group"} <= ops.get("FusedConv").attributes


def test_flops_on_known_shapes():
    conv = ops.get("Conv").flops
    # ResNet-50 layer: 2 * 64 out * 56 * 56 pixels * 64 in * 3 * 3 taps; + 1 add per output.
    assert conv([(1, 64, 56, 56), (64, 64, 3, 3)], [(1, 64, 56, 56)]) == 231_211_008
    assert conv([(1, 64, 56, 56), (64, 64, 3, 3), (64,)], [(1, 64, 56, 56)]) == \
        231_211_008 + 200_704
    # Depthwise: Cin/group = 1.
    assert conv([(2, 32, 8, 8), (32, 1, 3, 3)], [(2, 32, 8, 8)]) == 2 * 2 * 32 * 64 * 9
    # ConvTranspose counts over the *input* pixels: 2 * N * Cin * 4 * 4 * Cout/group * taps.
    ct = ops.get("ConvTranspose").flops
    assert ct([(1, 8, 4, 4), (8, 3, 2, 2)], [(1, 3, 8, 8)]) == 2 * 8 * 16 * 3 * 4
    fused = ops.get("FusedConv").flops
    shapes = [(1, 64, 56, 56), (64, 64, 3, 3), (64,), (1, 64, 56, 56)]
    assert fused(shapes, [(1, 64, 56, 56)], activation="Relu") == 231_211_008 + 3 * 200_704


def test_fused_conv_channel_shuffle_is_the_shuffle_of_its_output():
    """``channel_shuffle`` (ShuffleNet's shuffle folded into the convolution before it) is
    ChannelShuffle applied to the unshuffled FusedConv."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    w = rng.standard_normal((12, 2, 1, 1)).astype(np.float32)
    attrs = {"group": 4, "activation": "Relu"}
    plain = ops.get("FusedConv").reference(x, w, **attrs)
    shuffled = ops.get("FusedConv").reference(x, w, **attrs, channel_shuffle=3)
    np.testing.assert_array_equal(shuffled, ops.get("ChannelShuffle").reference(plain, group=3))
    assert not np.array_equal(shuffled, plain)
