"""Every Numba/BLAS ``cpu`` kernel against its numpy reference (the definition).

One parametrised suite covers every op with a cpu kernel, on the inputs of
``taskflow.ops.cpu.warmup.CASES`` (one per compiled path: NCHW and channels-last inputs, fused
activations and residuals, depthwise, grouped and Winograd convolutions), in float32 and
float64, at the case's own batch and at the edge shapes: an empty batch, one sample and a
ragged batch of 3; with one kernel thread and with two (the task-splitting path). Then the
fused epilogues, one activation at a time; the layout contract; the weight cache; the
fallbacks. The conformance suite (tests/conformance) runs whole models on these kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
import taskflow.ops as ops
from numba.core.registry import CPUDispatcher as Dispatcher
from taskflow.ops.conv import ACTIVATIONS
from taskflow.ops.cpu import (
    attention,
    blas,
    common,
    conv,
    dense_wide,
    depthwise,
    direct,
    eltwise,
    epilogue,
    fewrows,
    lowp,
    lowp_rows,
    matmul,
    movement,
    native_pool,
    norm,
    pointwise_wide,
    pool,
    skip_norm,
    sparse,
    squeeze_excite,
    winograd,
)
from taskflow.ops.cpu.common import is_channels_last
from taskflow.ops.cpu.warmup import CASES, channels_last, warmup
from taskflow.ops.quant import from_handoff

from taskflow.dask import threads
from taskflow.errors import ShapeError

from .oracles import assert_close

#: (rtol, atol) of kernel vs reference in float32, per op; float64 uses FLOAT64_TOL. Inputs are
#: standard normal, so outputs are O(1) to O(sqrt(fan-in)).
TOL: dict[str, tuple[float, float]] = {
    # GEMM summation order differs from numpy's (NHWC rows vs NCHW columns, BLAS blocking),
    # and Winograd F(2x2, 3x3) adds its transforms' roundings: a few ulps of sums of ~144 terms.
    "Conv": (1e-4, 1e-4),
    "FusedConv": (1e-4, 1e-4),
    # MKL's sgemm (or OpenBLAS's) against numpy's OpenBLAS call: another summation order over
    # K: ~1e-5 absolute on outputs of O(sqrt(K)); the sigmoid epilogue uses libm (1 ulp), the
    # float32 gelu one erf_fast (1e-7 absolute).
    "Gemm": (1e-4, 1e-4),
    "FusedGemm": (1e-4, 1e-4),
    "FusedMatMul": (1e-4, 1e-4),
    "MatMul": (1e-4, 1e-4),
    # two GEMMs in MKL's order, float64 softmax sums against numpy's float32 ones
    "FusedAttention": (1e-5, 1e-5),
    # float64 statistics against the reference's float32 two-pass ones (as LayerNormalization)
    "FusedAddLayerNorm": (1e-5, 1e-6),
    # float64 channel sums and GEMVs against the reference's float32 mean and 1x1 convs
    "FusedSqueezeExcite": (1e-5, 1e-6),
    # Same taps in the same order: bit-identical.
    "MaxPool": (0, 0),
    "AveragePool": (0, 0),
    "GlobalMaxPool": (0, 0),
    # float64 sum against numpy's pairwise float32 sum: ~1 ulp of the mean.
    "GlobalAveragePool": (1e-6, 1e-7),
    # libm powf vs numpy's power: 1 ulp.
    "LRN": (1e-6, 1e-7),
    # The reference's own folded scale and shift, one multiply-add: bit-identical.
    "BatchNormalization": (0, 0),
    # ... and its activation, one IEEE operation (or libm's exp/tanh: 1-2 ulp)
    "FusedBatchNormalization": (1e-6, 1e-7),
    # float64 statistics against the reference's float32 two-pass ones.
    "LayerNormalization": (1e-5, 1e-6),
    "InstanceNormalization": (1e-5, 1e-6),
    # Copies and single IEEE operations: bit-identical.
    "Concat": (0, 0),
    "ChannelShuffle": (0, 0),
    "Gather": (0, 0),
    "Relu": (0, 0),
    "LeakyRelu": (0, 0),
    "HardSigmoid": (0, 0),
    "HardSwish": (0, 0),
    "Clip": (0, 0),
    "Add": (0, 0),
    "Sub": (0, 0),
    "Mul": (0, 0),
    "Div": (0, 0),
    # libm expf/tanhf against numpy's SIMD versions: 1-2 ulp.
    "Sigmoid": (1e-6, 1e-7),
    "Tanh": (1e-6, 1e-7),
    # float64 row sums against numpy's float32 ones.
    "Softmax": (1e-6, 1e-8),
    # float32: erf_fast/tanh_fast (1e-7, 3e-7 absolute); float64 and Erf: libm's, against the
    # reference's rational erf (both ~1e-16 in float64).
    "Gelu": (1e-6, 1e-7),
    "Erf": (1e-6, 1e-7),
}
#: float64: the same orderings, 2^29 times finer.
FLOAT64_TOL = (1e-11, 1e-11)
CPU_MODULES = (attention, blas, common, conv, dense_wide, depthwise, direct, eltwise, epilogue,
               fewrows, lowp, lowp_rows, matmul, movement, native_pool, norm, pointwise_wide,
               pool, skip_norm, sparse, squeeze_excite, winograd)
#: Batch sizes besides each case's own: empty, one sample, a ragged last chunk.
EDGE_BATCHES = (None, 0, 1, 3)


def kernel_ops() -> list[str]:
    return sorted(spec.name for spec in ops.specs() if "cpu" in spec.kernels)


def check(op: str, args: list, attrs: dict, dtype=np.float32, what: str = "") -> tuple:
    """Run kernel and reference (on C-ordered copies) and compare every output."""
    spec = ops.get(op)
    plain = [None if a is None else np.array(a, order="C") for a in args]  # 0-d stays 0-d
    want = ops.as_outputs(spec.reference(*plain, **attrs))
    got = ops.as_outputs(spec.kernels["cpu"](*args, **attrs))
    rtol, atol = TOL[op] if np.dtype(dtype) == np.float32 else FLOAT64_TOL
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        if attrs.get("y_precision"):  # handed on narrow: decoded, one rounding step apart
            p, scale = attrs["y_precision"], attrs.get("y_scale", 0.0)
            assert g.dtype == w.dtype and g.shape == w.shape, what
            g, w = (from_handoff(np.ascontiguousarray(a), p, scale, attrs.get("y_zero_point", 0))
                    for a in (g, w))
            step = np.abs(w) * 2.0**-7 if p == "bf16" else np.float32(scale)
            assert np.all(np.abs(g - w) <= step), f"{op} output {k} {what}"
            continue
        assert_close(g, w, rtol=rtol, atol=atol, what=f"{op} output {k} {what}")
    return got


def test_every_kernel_has_a_case_and_a_tolerance():
    assert {op for op, _, _ in CASES} == set(kernel_ops())
    assert set(TOL) == set(kernel_ops())


def test_the_cases_reach_every_compiled_kernel():
    """Each Numba function is compiled by the cases (the suite tests compiled code, not only
    reference fallbacks), which is also what ``taskflow warmup`` relies on."""
    warmup()
    # the functions that call a BLAS's GEMMs compile only where it runs them: sgemm wherever
    # MKL or OpenBLAS runs the float GEMMs, MKL's bf16 and int8 GEMMs where lowp uses them
    # (not with TASKFLOW_LOWP=emulate, nor int8 where MKL's sums saturate: TASKFLOW_ISA=avx2
    # on Intel)
    sequential = blas.backend() != "numpy"
    skip = set() if sequential else {attention._attention_heads, matmul._gemm_epilogue_rows,
                              blas.gemm_rows}
    if direct.vector_lanes() != 16:  # the 16-lane-only kernels run only with AVX-512F
        skip |= {dense_wide.dense_wide_rows, pointwise_wide.pointwise_wide_rows,
                 fewrows.fewrows_cols}
    for precision, fns in (("bf16", {lowp_rows._bf16_rows, lowp_rows._bf16_conv_rows,
                                     lowp_rows._narrow_bf16_rows}),
                           ("int8", {lowp_rows._int8_rows, lowp_rows._int8_conv_rows,
                                     lowp_rows._narrow_int8_rows})):
        if lowp.mkl_functions(precision, 1) is None:
            skip |= fns
    # the native pool's, only where it runs (MKL, and not TASKFLOW_NATIVE_POOL=0)
    native = native_pool.pool() is not None
    dispatchers = [(f"{mod.__name__}.{name}", fn)
                   for mod in CPU_MODULES if native or mod is not native_pool
                   for name, fn in vars(mod).items()
                   if isinstance(fn, Dispatcher) and fn.__module__ == mod.__name__
                   and fn.targetoptions.get("inline") != "always" and fn not in skip]
    assert len(dispatchers) > 15
    assert [name for name, fn in dispatchers if not fn.signatures] == []


def _compiled(dispatchers) -> dict:
    return {name: set(fn.signatures) for name, fn in dispatchers}


def test_an_imported_models_first_run_compiles_nothing_after_warmup(tmp_path):
    """An ONNX model's initializers arrive read-only from onnx's numpy_helper, and read-only
    is part of a Numba type: a kernel would compile again for them on the first real run,
    after ``taskflow warmup`` (MobileNetV3's took ~80 s). The importer hands the kernels
    writable copies; here a conv -> relu -> conv -> maxpool network with biases, loaded from
    a file and run, must find every kernel already compiled by warmup."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import taskflow

    warmup()
    dispatchers = [(f"{mod.__name__}.{name}", fn) for mod in CPU_MODULES
                   for name, fn in vars(mod).items()
                   if isinstance(fn, Dispatcher) and fn.__module__ == mod.__name__]
    before = _compiled(dispatchers)
    rng = np.random.default_rng(5)

    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
             helper.make_node("MaxPool", ["c2"], ["y"], kernel_shape=[3, 3], strides=[2, 2])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [init("w1", 24, 8, 3, 3), init("b1", 24), init("w2", 16, 24, 1, 1), init("b2", 16)])
    path = tmp_path / "small.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    model = taskflow.load(str(path))
    (y,) = model.run(None, {"x": rng.standard_normal((2, 8, 9, 9)).astype(np.float32)})
    assert y.shape == (2, 16, 4, 4) and np.ptp(y) > 0.1
    after = _compiled(dispatchers)
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", EDGE_BATCHES, ids=lambda b: "own" if b is None else f"n{b}")
@pytest.mark.parametrize("case", range(len(CASES)), ids=lambda i: f"{CASES[i][0]}-{i}")
def test_kernel_matches_reference(case, batch, dtype, kernel_threads):
    op, make, attrs = CASES[case]
    args = make(np.random.default_rng(case), np.dtype(dtype), batch)
    check(op, args, attrs, dtype, f"batch={batch} {attrs}")


# --- fused epilogues ----------------------------------------------------------------------------
PARAMS = {"LeakyRelu": [0.1], "Clip": [-0.5, 0.7], "HardSigmoid": [0.3, 0.4]}
#: (weight shape, attributes, input channels, spatial size): each convolution path.
CONV_PATHS = {
    "1x1": ((24, 16, 1, 1), {}, 16, 6),  # direct.pointwise_rows
    "1x1-grouped": ((32, 4, 1, 1), {"group": 4}, 16, 6),  # pointwise_rows, 8 per group
    # 2 groups of 20 outputs: blocks of 16 and of 8 holding 4 (pointwise_rows' partial block)
    "1x1-partial": ((40, 12, 1, 1), {"group": 2}, 24, 6),
    "1x1-gemm": ((264, 256, 1, 1), {}, 256, 3),  # a weight of 64K elements and more: the GEMM
    # pointwise_wide (16 lanes, where the CPU has AVX-512F): a block of 64 outputs and one of
    # 16; 75 rows, so blocks of 6 and a last one of 3
    "1x1-wide": ((80, 16, 1, 1), {}, 16, 5),
    "1x1-strided": ((24, 16, 1, 1), {"strides": [2, 2]}, 16, 7),
    # strided 1x1 layers run as 1x1 layers on their subsampled pixels: the wide kernel (a
    # block of 64 and one of 16 outputs), and grouped with unequal strides
    "1x1-strided-wide": ((80, 24, 1, 1), {"strides": [2, 2]}, 24, 9),
    "1x1-strided-grouped": ((24, 4, 1, 1), {"group": 4, "strides": [2, 1]}, 16, 7),
    "im2col": ((24, 8, 5, 5), {"pads": [2, 1, 2, 1], "dilations": [1, 2]}, 8, 9),
    "winograd": ((24, 64, 3, 3), {"pads": [1, 1, 1, 1]}, 64, 9),
    "winograd-valid": ((16, 48, 3, 3), {}, 48, 8),
    "depthwise": ((16, 1, 3, 3), {"group": 16, "pads": [1, 1, 1, 1], "strides": [2, 2]}, 16, 9),
    # 24 channels: with 16 lanes (the wide-gemm routing) a block of 16 and an 8-lane one
    "depthwise-5x5": ((24, 1, 5, 5), {"group": 24, "pads": [2, 2, 2, 2]}, 24, 11),
    "grouped": ((24, 4, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}, 16, 6),
    # direct.dense_rows: 22 / 21 columns wide (blocks of 4, border columns one by one), 24
    # outputs (a block of 16 and one of 8); strided with uneven pads
    "dense": ((24, 8, 3, 3), {"pads": [1, 1, 1, 1]}, 8, 22),
    "dense-strided": ((16, 12, 3, 3), {"pads": [1, 0, 1, 1], "strides": [2, 2]}, 12, 41),
    # dense_wide (16 lanes, where the CPU has AVX-512F): two blocks of 64 outputs, 9 interior
    # columns (a block of 6, then one overlapping it); strided, 13 interior columns
    "dense-wide": ((128, 16, 3, 3), {"pads": [1, 1, 1, 1]}, 16, 11),
    "dense-wide-strided": ((64, 12, 3, 3), {"pads": [1, 0, 1, 1], "strides": [2, 2]}, 12, 29),
    # 720 taps: past MAX_STRIDED_TAPS, dense_wide only where OpenBLAS runs the GEMMs
    "dense-wide-strided-many": ((64, 80, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, 80,
                                17),
    # wide enough for dense_rows, but 180 taps x 96 outputs: im2col + GEMM (and 96 outputs
    # are no whole 64-output blocks for dense_wide; 20 channels are too few for Winograd)
    "im2col-3x3": ((96, 20, 3, 3), {"pads": [1, 1, 1, 1]}, 20, 22),
    # direct.few_channels_rows on an NCHW input (channels-last input goes to im2col)
    "few-channels": ((24, 3, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, 3, 11),
    # SqueezeNet's stem: 64 outputs, with 16 lanes two vectors a block
    "few-channels-64": ((64, 3, 3, 3), {"strides": [2, 2]}, 3, 13),
}


@pytest.mark.parametrize("residual", [False, True], ids=["", "residual"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS), ids=lambda a: a or "none")
@pytest.mark.parametrize("path", sorted(CONV_PATHS))
def test_fused_conv_epilogues(path, activation, residual, conv_routing):
    shape, attrs, c, size = CONV_PATHS[path]
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, c, size, size), dtype=np.float32)
    w = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.3)
    b = rng.standard_normal(shape[0], dtype=np.float32)
    y = ops.get("Conv").reference(x, w, **attrs)
    z = channels_last(rng.standard_normal(y.shape, dtype=np.float32)) if residual else None
    attrs = {**attrs, "activation": activation, "activation_params": PARAMS.get(activation, [])}
    xin = x if path.startswith("few-channels") else channels_last(x)
    (out,) = check("FusedConv", [xin, w, b, z], attrs, what=path)
    assert is_channels_last(out)


@pytest.mark.parametrize("kind, shape, attrs, x_shape", [
    ("depthwise", (64, 1, 3, 3), {"group": 64, "pads": [1, 1, 1, 1]}, (2, 64, 56, 56)),
    ("few-channels", (16, 3, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, (4, 3, 128, 128)),
    ("dense", (32, 16, 3, 3), {"pads": [1, 1, 1, 1]}, (8, 16, 32, 32)),
    # tasks whose rows start and end mid-image: runs of rows cut at a task's bounds
    ("dense-wide", (64, 16, 3, 3), {"pads": [1, 1, 1, 1]}, (8, 16, 19, 20)),
])
def test_direct_kernels_split_into_row_tasks(kind, shape, attrs, x_shape, kernel_threads,
                                             direct_kernels):
    """Layers big enough for several MIN_TASK_MACS tasks: each task's output rows must be
    the reference's (the small cases above run as one task)."""
    if kind == "dense-wide" and "avx512f" not in lowp.cpu_features():
        pytest.skip("the 16-lane kernels run only where the CPU has AVX-512F")
    rng = np.random.default_rng(21)
    x = rng.standard_normal(x_shape, dtype=np.float32)
    x = x if kind == "few-channels" else channels_last(x)
    w = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.3)
    b = rng.standard_normal(shape[0], dtype=np.float32)
    with direct.routed_as(kind == "dense-wide"):
        (out,) = check("FusedConv", [x, w, b], {**attrs, "activation": "Relu"}, what=kind)
    assert np.ptp(out[:, :, -1]) > 0.1  # the last rows too: no task left out


@pytest.mark.parametrize("path", sorted(CONV_PATHS))
def test_fused_conv_with_a_folded_channel_shuffle(path, kernel_threads, direct_kernels):
    """Every convolution path with ShuffleNet's shuffle folded in (rows permuted right after
    the epilogue, or a separate pass where there is no GEMM), with and without a residual."""
    shape, attrs, c, size = CONV_PATHS[path]
    rng = np.random.default_rng(13)
    x = channels_last(rng.standard_normal((3, c, size, size), dtype=np.float32))
    w = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.3)
    b = rng.standard_normal(shape[0], dtype=np.float32)
    y = ops.get("Conv").reference(x, w, **attrs)
    z = channels_last(rng.standard_normal(y.shape, dtype=np.float32))
    for groups in (2, 4):
        fused = {**attrs, "activation": "Relu", "channel_shuffle": groups}
        (out,) = check("FusedConv", [x, w, b, z], fused, what=f"{path} shuffle {groups}")
        assert is_channels_last(out)
        check("FusedConv", [x, w, b], fused, what=f"{path} shuffle {groups}")


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS), ids=lambda a: a or "none")
def test_fused_gemm_and_matmul_epilogues(activation):
    rng = np.random.default_rng(8)
    params = {"activation": activation, "activation_params": PARAMS.get(activation, [])}
    a = rng.standard_normal((300, 256), dtype=np.float32)  # row blocks over the threads
    w = rng.standard_normal((256, 256), dtype=np.float32) * np.float32(0.1)
    c = rng.standard_normal(256, dtype=np.float32)
    check("FusedGemm", [a, w, c], {"transB": 1, "alpha": 0.5, **params})
    check("FusedGemm", [a[:3], w.T.copy(), c[None]], params)  # small: one BLAS call
    check("FusedMatMul", [a.reshape(2, 150, 256), w.T, c], params)
    check("FusedMatMul", [a, w.T, None], params)


def test_omitted_activation_params_take_the_onnx_defaults():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 16, 6, 6), dtype=np.float32)
    w = rng.standard_normal((8, 16, 1, 1), dtype=np.float32)
    for act in ("LeakyRelu", "HardSigmoid", "Clip"):
        check("FusedConv", [x, w], {"activation": act})
        check("FusedConv", [x, w], {"activation": act, "activation_params": [0.3]})


# --- layout, caches, fallbacks -----------------------------------------------------------------
def test_convolutions_return_channels_last_and_keep_it_downstream():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 8, 10, 10), dtype=np.float32)  # NCHW in
    y = ops.get("Conv").kernels["cpu"](x, rng.standard_normal((16, 8, 3, 3), dtype=np.float32))
    assert is_channels_last(y) and y.shape == (2, 16, 8, 8)
    for op, args, attrs in [("Relu", [y], {}), ("MaxPool", [y], {"kernel_shape": [2, 2]}),
                            ("Concat", [y, y], {"axis": 1}),
                            ("BatchNormalization", [y] + [np.ones(16, np.float32)] * 4, {})]:
        (out,) = check(op, args, attrs)
        assert is_channels_last(out), op


def test_a_new_weight_array_is_never_served_a_stale_packed_copy():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 16, 8, 8), dtype=np.float32)
    for shape in [(16, 16, 3, 3), (16, 16, 5, 5), (16, 1, 3, 3)]:
        group = 16 if shape[1] == 1 else 1
        for _ in range(3):  # fresh arrays, possibly at a freed array's address
            w = rng.standard_normal(shape, dtype=np.float32)
            check("Conv", [x, w], {"group": group, "pads": [1, 1, 1, 1]})


def test_unsupported_cases_fall_back_to_the_reference():
    rng = np.random.default_rng(12)
    conv = ops.get("Conv").kernels["cpu"]
    x1 = rng.standard_normal((2, 3, 11), dtype=np.float32)  # 1-D convolution
    w1 = rng.standard_normal((4, 3, 3), dtype=np.float32)
    check("Conv", [x1, w1], {"pads": [1, 1]})
    xi = rng.integers(-5, 5, (2, 3, 6, 6)).astype(np.int32)  # no compiled integer path
    check("Relu", [xi], {})
    check("MaxPool", [xi], {"kernel_shape": [2, 2]})
    xh = rng.standard_normal((2, 4, 6, 6)).astype(np.float16)
    check("Gelu", [xh], {})
    with pytest.raises(ShapeError):  # the reference's own error, from the fallback
        conv(rng.standard_normal((1, 3, 5, 5), dtype=np.float32),
             rng.standard_normal((4, 2, 3, 3), dtype=np.float32))


def test_recycled_outputs_are_reused_only_once_unreferenced(monkeypatch):
    monkeypatch.setattr(common, "RECYCLE_MAX_BYTES", 20 << 20)
    monkeypatch.setattr(common, "ENABLE_RECYCLING", True)
    monkeypatch.setattr(common, "_RECYCLED", [])
    a = common.new_output((1 << 20,), np.float32)  # 4 MiB: pooled
    a[:] = 1
    b = common.new_output((1 << 20,), np.float32)
    assert not np.shares_memory(a, b)  # a is alive: never handed out twice
    view = a[::2]
    del a
    c = common.new_output((1 << 20,), np.float32)
    assert not np.shares_memory(c, view)  # a view keeps the buffer alive
    del view
    d = common.new_output((3 << 18,), np.float32)  # 3 MiB fits the freed 4 MiB buffer
    assert len(common._RECYCLED) == 3
    e = common.new_output((3 << 20,), np.float32)  # 12 MiB: over the cap, no free buffer
    assert len(common._RECYCLED) == 3 and not any(np.shares_memory(e, x) for x in (b, c, d))
    del b
    f = common.new_output((3 << 20,), np.float32)  # over the cap: the free buffer is evicted
    assert len(common._RECYCLED) == 3 and f.nbytes == 12 << 20


def test_narrow_grouped_1x1_keeps_groups_apart_even_for_non_finite_inputs():
    """The block-diagonal GEMM of a narrow grouped 1x1 multiplies other groups' inputs by 0;
    an inf there would make nan, so such inputs take the per-group path."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 8, 5, 5), dtype=np.float32)
    w = rng.standard_normal((8, 2, 1, 1), dtype=np.float32)
    (finite,) = check("Conv", [x, w], {"group": 4})
    x[0, 0, 1, 1] = np.inf  # group 0's input
    (got,) = check("Conv", [x, w], {"group": 4})
    assert np.isfinite(got[:, 2:]).all() and not np.isfinite(got[0, :2, 1, 1]).all()
    np.testing.assert_array_equal(got[:, 2:], finite[:, 2:])


def test_blas_is_single_threaded_inside_kernels_on_any_thread():
    """threadpoolctl lets only the first thread that limited OpenBLAS change it again; kernels
    run on other threads too (a Dask worker's task threads), and must still get 1 BLAS thread
    inside their parallel tasks, and the count back afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):  # this thread takes control
        before = common.blas_threads()
        assert before and max(before) == 2

        def inside() -> tuple[list[int], list[int]]:
            with common.blas_single_threaded():
                seen = common.blas_threads()
            return seen, common.blas_threads()

        with ThreadPoolExecutor(1) as pool:
            seen, after = pool.submit(inside).result()
        assert seen == [1] * len(before) and after == before


def test_apply_kernel_threads_reaches_blas_from_any_thread():
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):
        before = common.blas_threads()
        assert max(before) == 2
        with ThreadPoolExecutor(1) as pool:
            seen = pool.submit(lambda: (threads.apply_kernel_threads(1),
                                        common.blas_threads())[1]).result()
            pool.submit(threads.reset_kernel_threads).result()
        assert seen == [1] * len(seen) and common.blas_threads() == before


def test_a_classifier_split_over_threads_keeps_equal_logits_equal(kernel_threads):
    """A few-row Gemm (a classifier at small batch) is split into column blocks over the
    kernel threads; every column must still round alike: constant weights give exactly equal
    logits, as one BLAS call does (the light models' expected outputs are uniform softmaxes)."""
    rng = np.random.default_rng(12)
    a = rng.standard_normal((3, 1024), dtype=np.float32)
    w = np.full((1000, 1024), 0.02, np.float32)
    (y,) = check("Gemm", [a, w, np.full(1000, 0.02, np.float32)], {"transB": 1})
    assert (y == y[:, :1]).all()
    check("Gemm", [a, rng.standard_normal((1000, 1024), dtype=np.float32)], {"transB": 1})


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's own 1/0 and 0/0
def test_non_finite_values_follow_numpy_through_the_compiled_loops():
    """The compiled loops divide without Python's zero check (numpy's error model, so they
    vectorise): x / 0 is +-inf and 0 / 0 nan, as in numpy, where Div's same-shape loop used
    to raise ZeroDivisionError; MaxPool's vector max keeps nan, padded or not."""
    rng = np.random.default_rng(13)
    a = rng.standard_normal((4, 3000), dtype=np.float32)
    b = rng.standard_normal((4, 3000), dtype=np.float32)
    b[0, :3] = 0
    a[0, 2] = 0
    (q,) = check("Div", [a, b], {})
    assert np.isinf(q[0, :2]).all() and np.isnan(q[0, 2]) and np.isfinite(q[1:]).all()
    x = rng.standard_normal((2, 24, 9, 9), dtype=np.float32)
    x[0, 3, 0, 0] = np.nan  # in a padded corner window
    x[1, 5, 4, 4] = np.nan  # inside
    x[1, 6] = -np.inf  # a channel of -inf: -inf inside, the padding's fill on the border
    (y,) = check("MaxPool", [channels_last(x)], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                 "pads": [1, 1, 1, 1]})
    assert np.isnan(y[0, 3, 0, 0]) and np.isnan(y[1, 5, 2, 2])
    assert (y[1, 6, 1:4, 1:4] == -np.inf).all() and (y[1, 6, 0] == np.finfo(np.float32).min).all()
    assert np.isnan(y).sum() == 2  # each nan lies in one window (stride 2)
    (g,) = check("GlobalMaxPool", [channels_last(x)], {})
    assert np.isnan(g[:, :, 0, 0]).sum() == 2
    # 32 channels: two vectors of 16 lanes where the CPU has AVX-512F; 6: the scalar loop
    for c in (32, 6):
        x2 = rng.standard_normal((2, c, 9, 9), dtype=np.float32)
        x2[0, 3, 0, 0] = np.nan
        x2[1, 5, 4, 4] = np.nan
        (y2,) = check("MaxPool", [channels_last(x2)], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                       "pads": [1, 1, 1, 1]})
        assert np.isnan(y2[0, 3, 0, 0]) and np.isnan(y2[1, 5, 2, 2]) and np.isnan(y2).sum() == 2


@pytest.mark.parametrize("skip_shape", [(1, 6, 16), (6, 16), (16,), (1, 1, 16)])
def test_fused_add_layernorm_with_a_skip_broadcast_over_the_leading_axes(skip_shape,
                                                                         kernel_threads,
                                                                         monkeypatch):
    """Position embeddings (1, S, D) added to (N, S, D) run the compiled kernel, each skip row
    against its own rows of x, also when the rows are split into tasks (4 rows each here)."""
    monkeypatch.setattr(skip_norm, "MIN_TASK_ELEMENTS", 4 * 16)

    def no_fallback(*args, **kwargs):
        raise AssertionError("the broadcast skip took the reference fallback")

    monkeypatch.setattr(skip_norm, "fused_add_layernorm", no_fallback)
    rng = np.random.default_rng(14)
    x = rng.standard_normal((5, 6, 16), dtype=np.float32)
    skip = rng.standard_normal(skip_shape, dtype=np.float32)
    scale = rng.uniform(0.5, 1.5, 16).astype(np.float32)
    bias = rng.standard_normal(16, dtype=np.float32)
    y, s = check("FusedAddLayerNorm", [x, skip, scale, bias], {})
    np.testing.assert_array_equal(s, x + skip)  # the sum output, exactly
    assert np.std(y.reshape(-1, 16), axis=0).min() > 0.1  # every column varies over the rows


@pytest.mark.parametrize("kind", ["depthwise", "depthwise-16", "few-channels",
                                  "few-channels-16", "pointwise", "dense"])
def test_direct_kernels_write_only_their_channels_of_a_wider_buffer(kind):
    """The register-blocked kernels write channels c0:c0 + M of a Concat's buffer and leave
    the others alone, with the activation applied pixel by pixel there."""
    if kind.endswith("-16") and "avx512f" not in lowp.cpu_features():
        pytest.skip("the 16-lane kernels run only where the CPU has AVX-512F")
    rng = np.random.default_rng(15)
    if kind.startswith("depthwise"):
        x = channels_last(rng.standard_normal((2, 16, 9, 10), dtype=np.float32))
        w = rng.standard_normal((16, 1, 3, 3), dtype=np.float32)
        attrs = {"group": 16, "pads": [1, 1, 1, 1], "strides": [2, 1]}
    elif kind.startswith("few-channels"):  # 16 outputs: with 16 lanes, one vector per pixel
        x = rng.standard_normal((2, 3, 9, 10), dtype=np.float32)
        w = rng.standard_normal((16, 3, 3, 3), dtype=np.float32)  # (3x3: what stems use,
        attrs = {"pads": [1, 1, 1, 1], "strides": [1, 2]}  # and one specialisation fewer)
    elif kind == "dense":
        x = channels_last(rng.standard_normal((2, 6, 9, 23), dtype=np.float32))
        w = rng.standard_normal((16, 6, 3, 3), dtype=np.float32)
        attrs = {"pads": [1, 1, 1, 1], "strides": [1, 1]}
    else:  # two groups of 8 outputs, with a residual
        x = channels_last(rng.standard_normal((2, 12, 9, 5), dtype=np.float32))
        w = rng.standard_normal((16, 6, 1, 1), dtype=np.float32)
        attrs = {"group": 2}
    b = rng.standard_normal(16, dtype=np.float32)
    z = rng.standard_normal((2, 16, 9, 5), dtype=np.float32) if kind == "pointwise" else None
    want = ops.get("FusedConv").reference(x, w, b, z, activation="Relu", **attrs)
    full = np.full((2, *want.shape[2:], 40), 7.0, np.float32)  # NHWC, 40 channels
    t = np.float32
    if kind.startswith("depthwise"):
        wd = np.ascontiguousarray(w[:, 0].transpose(1, 2, 0))
        depthwise.depthwise_rows(x.transpose(0, 2, 3, 1), wd, b, full, 20, 2, (0,), 1, 1,
                                 epilogue.RELU, t(0), t(0), t(1), 0, 2 * want.shape[2],
                                 direct.T16 if kind == "depthwise-16" else direct.T8, (0,) * 3)
    elif kind == "pointwise":
        wp = direct.pack_pointwise(w, 2)
        zr = np.ascontiguousarray(z.transpose(0, 2, 3, 1)).reshape(-1, 16)
        direct.pointwise_rows(x.transpose(0, 2, 3, 1).reshape(-1, 12), wp, b, zr,
                              full.reshape(-1, 40), 20, 2, 16, 1, epilogue.RELU, t(0), t(0),
                              t(1), 0, 2 * 9 * 5)
    elif kind == "dense":
        direct.dense_rows(x.transpose(0, 2, 3, 1), direct.pack_dense(w), b, full, 20, 3, 3, 1,
                          1, 1, 1, epilogue.RELU, t(0), t(0), t(1), 0, 2 * want.shape[2])
    else:
        wp = np.ascontiguousarray(w.transpose(1, 2, 3, 0)).ravel()
        direct.few_channels_rows(x, wp, b, full, 20, 3, 3, 1, 2, 1, 1, epilogue.RELU, t(0),
                                 t(0), t(1), 0, 2 * want.shape[2],
                                 direct.T16 if kind == "few-channels-16" else direct.T8, (0,) * 3)
    assert_close(full[..., 20:36].transpose(0, 3, 1, 2), want, rtol=1e-5, atol=1e-5)
    assert (full[..., :20] == 7).all() and (full[..., 36:] == 7).all()
    assert (want > 0).mean() > 0.3  # the activation had something to do


@pytest.mark.parametrize("activation", ["HardSwish", "LeakyRelu"])
def test_dense_wide_writes_only_its_channels_of_a_wider_buffer(activation):
    """dense_wide_rows into channels 20:148 of a Concat's buffer: two blocks of 64 outputs,
    rows with and without their top and bottom taps, 8 interior columns (a block of 6, then
    one overlapping it) and the border columns; HardSwish in registers, LeakyRelu afterwards,
    pixel by pixel."""
    if "avx512f" not in lowp.cpu_features():
        pytest.skip("the 16-lane kernels run only where the CPU has AVX-512F")
    rng = np.random.default_rng(16)
    x = rng.standard_normal((2, 16, 7, 10), dtype=np.float32)
    w = rng.standard_normal((128, 16, 3, 3), dtype=np.float32) * np.float32(0.3)
    b = rng.standard_normal(128, dtype=np.float32)
    params = {"LeakyRelu": [0.1]}.get(activation, [])
    want = ops.get("FusedConv").reference(x, w, b, pads=[1, 1, 1, 1], activation=activation,
                                          activation_params=params)
    full = np.full((2, 7, 10, 160), 7.0, np.float32)
    act, p0, p1 = epilogue.activation_code(activation, params)
    t = np.float32
    dense_wide.dense_wide_rows(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), dense_wide.pack(w),
                               b, full, 20, 3, 3, 1, 1, 1, 1, act, t(p0), t(p1), t(1), 0, 14,
                               False)
    assert_close(full[..., 20:148].transpose(0, 3, 1, 2), want, rtol=1e-5, atol=1e-5)
    assert (full[..., :20] == 7).all() and (full[..., 148:] == 7).all()
    assert np.ptp(want[:, :, :, 1:9], axis=(2, 3)).min() > 0.1  # outputs vary over the pixels


@pytest.mark.parametrize("m", [112, 120], ids=["m112", "m120-tail8"])
@pytest.mark.parametrize("k", [24, 136], ids=["k24", "k136-prefetch"])
@pytest.mark.parametrize("residual", [False, True], ids=["", "residual"])
@pytest.mark.parametrize("activation", ["HardSwish", "LeakyRelu"])
def test_pointwise_wide_writes_only_its_rows_and_channels(activation, residual, k, m):
    """pointwise_wide_rows on rows 5:28 into channels 20:20 + m of a wider buffer: 112
    outputs (a block of 64, then three of 16) or 120 (and a last 8-lane block of 8), blocks of
    6 rows and a last one of 5 (its missing row computed again, stored once), with and
    without a residual; HardSwish in registers, LeakyRelu afterwards, row by row. The rows
    and channels around stay as they were. With 136 input channels, the blocks prefetch the
    next block's rows (the last two do not)."""
    if "avx512f" not in lowp.cpu_features():
        pytest.skip("the 16-lane kernels run only where the CPU has AVX-512F")
    assert (k > pointwise_wide.PREFETCH_MIN_CHANNELS) == (k == 136)
    rng = np.random.default_rng(17)
    x = rng.standard_normal((40, k), dtype=np.float32)
    w = rng.standard_normal((m, k), dtype=np.float32) * np.float32(0.3 * np.sqrt(24 / k))
    b = rng.standard_normal(m, dtype=np.float32)
    z = rng.standard_normal((23, m), dtype=np.float32) if residual else None
    params = {"LeakyRelu": [0.1]}.get(activation, [])
    act, p0, p1 = epilogue.activation_code(activation, params)
    want = x[5:28].astype(np.float64) @ w.T.astype(np.float64) + b
    if residual:
        want += z
    want = ops.get(activation).reference(want, **({"alpha": 0.1} if params else {}))
    full = np.full((40, 150), 7.0, np.float32)
    t = np.float32
    zin = z if residual else np.zeros((0, m), np.float32)
    # the kernel reads rows lo:hi of x and writes the same rows of the output buffer; the
    # residual is indexed from the range's first row
    out = full[5:28]
    pointwise_wide.pointwise_wide_rows(np.ascontiguousarray(x[5:28]), pointwise_wide.pack(w),
                                       b, zin, out, 20, m, act, t(p0), t(p1), t(1), 0, 23)
    assert_close(full[5:28, 20:20 + m], want.astype(np.float32), rtol=1e-5, atol=1e-5)
    assert (full[:5] == 7).all() and (full[28:] == 7).all()
    assert (full[:, :20] == 7).all() and (full[:, 20 + m:] == 7).all()
    assert np.ptp(want, axis=0).min() > 0.1  # every output varies over the rows


@pytest.mark.parametrize("library", ["mkl", "openblas", "numpy"])
def test_wide_pointwise_takes_wide_inputs_unless_mkl_runs_the_gemms(monkeypatch, library):
    """A 1x1 layer on 136 input channels (a SqueezeNet-style squeeze to 48, with a residual):
    the 16-lane kernel takes it where OpenBLAS or numpy runs the GEMMs (it beat OpenBLAS on
    every 1x1 shape measured), the GEMM where oneMKL does; both match the reference."""
    if "avx512f" not in lowp.cpu_features():
        pytest.skip("the 16-lane kernels run only where the CPU has AVX-512F")
    if library == "mkl" and blas._mkl() is None:
        pytest.skip("MKL is not installed here")
    if library == "openblas" and not blas._load_openblas():
        pytest.skip("the scipy-openblas32 wheel is not installed here")
    monkeypatch.setitem(blas._state, "backend", library)
    calls = []
    kernel = pointwise_wide.pointwise_wide_rows
    monkeypatch.setattr(pointwise_wide, "pointwise_wide_rows",
                        lambda *a: (calls.append(a[-1] - a[-2]), kernel(*a))[1])
    rng = np.random.default_rng(18)
    x = rng.standard_normal((3, 9, 11, 136), dtype=np.float32).transpose(0, 3, 1, 2)
    w = rng.standard_normal((48, 136, 1, 1), dtype=np.float32) * np.float32(0.1)
    b = rng.standard_normal(48, dtype=np.float32)
    z = rng.standard_normal((3, 48, 9, 11), dtype=np.float32)
    got = ops.get("FusedConv").kernels["cpu"](x, w, b, z, activation="Relu")
    want = ops.get("FusedConv").reference(np.ascontiguousarray(x), w, b, z, activation="Relu")
    assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert np.ptp(want, axis=(2, 3)).min() > 0.1  # the outputs vary over the pixels
    assert (sum(calls) == 3 * 9 * 11) == (library != "mkl") and bool(calls) == (library != "mkl")


@pytest.mark.parametrize("library", ["mkl", "openblas", "numpy"])
def test_wide_pointwise_shapes_by_library(monkeypatch, library):
    """Where pointwise_wide runs: whole 16-lane outputs on at most 64 inputs against oneMKL;
    elsewhere any multiple of 8 outputs from 16 (an 8-lane last block) on up to 2048
    inputs."""
    monkeypatch.setitem(blas._state, "backend", library)
    shapes = [(24, 48), (24, 40), (136, 48), (136, 1000), (2048, 64), (2049, 64), (24, 8),
              (24, 12)]
    taken = [pointwise_wide.usable(k, m) for k, m in shapes]
    if library == "mkl":
        assert taken == [True, False, False, False, False, False, False, False]
    else:
        assert taken == [True, True, True, True, True, False, False, False]


@pytest.mark.parametrize("library", ["mkl", "openblas"])
def test_winograd_starts_at_fewer_channels_on_openblas(monkeypatch, library):
    """3x3 layers on 24-39 input channels go to Winograd where OpenBLAS's batch call runs its
    GEMMs (measured faster there), not where oneMKL's does; 16 channels never, 40 always."""
    monkeypatch.setitem(blas._state, "backend", library)
    taken = {c: winograd.usable(np.zeros((64, c, 3, 3), np.float32), 1, (1, 1), (1, 1))
             for c in (16, 24, 32, 40)}
    assert taken == {16: False, 24: library == "openblas", 32: library == "openblas", 40: True}


@pytest.mark.parametrize("library", ["mkl", "openblas", "numpy"])
def test_strided_dense_wide_has_no_tap_limit_off_mkl(monkeypatch, library):
    """Strided layers past MAX_STRIDED_TAPS (ResNet-50's 3x3 / 2 on 128-512 channels) run
    dense_wide where OpenBLAS (or no BLAS) runs the GEMMs, im2col + GEMM against oneMKL;
    stride 1 keeps MAX_TAPS everywhere."""
    monkeypatch.setitem(blas._state, "backend", library)
    taken = {(c, s): dense_wide.usable(c, 128, 3, 3, (s, s), 28 // s, 28, 1)
             for c in (64, 65, 512) for s in (1, 2)}
    assert taken == {(64, 1): False, (64, 2): True, (65, 1): False,
                     (65, 2): library != "mkl", (512, 1): False, (512, 2): library != "mkl"}


@pytest.mark.parametrize("shuffle", [1, 4])
def test_pointwise_partial_blocks_write_only_their_channels(shuffle):
    """Groups of 10 outputs (a block of 8 holding 2, read and written through a buffer), with
    a residual and a folded channel shuffle, into channels 12:52 of a wider buffer: the
    channels around them and the rows past the range stay as they were."""
    rng = np.random.default_rng(16)
    x = rng.standard_normal((37, 12), dtype=np.float32)  # 37 rows: blocks of 4 and one single
    w = rng.standard_normal((40, 3, 1, 1), dtype=np.float32)  # 4 groups of 10 outputs
    b = rng.standard_normal(40, dtype=np.float32)
    z = rng.standard_normal((37, 40), dtype=np.float32)
    want = np.maximum(np.concatenate([x[:, 3 * g:3 * g + 3] @ w[10 * g:10 * g + 10, :, 0, 0].T
                                      for g in range(4)], axis=1) + b + z, 0)
    if shuffle > 1:
        want = want.reshape(37, shuffle, 40 // shuffle).transpose(0, 2, 1).reshape(37, 40)
    full = np.full((38, 64), 7.0, np.float32)
    t = np.float32
    direct.pointwise_rows(x, direct.pack_pointwise(w, 4), direct.pad_groups(b, 4, 40, t), z,
                          full, 12, 4, 40, shuffle, epilogue.RELU, t(0), t(0), t(1), 0, 37)
    assert_close(full[:37, 12:52], want, rtol=1e-5, atol=1e-5)
    assert (full[:, :12] == 7).all() and (full[:, 52:] == 7).all() and (full[37] == 7).all()
    assert (want > 0).mean() > 0.3


def test_small_products_stay_on_the_calling_thread(monkeypatch):
    """A pool hand-off costs ~0.1 ms, a decoding step's GEMM (8 rows) or attention (8 tokens)
    ~0.02 ms: those run on the caller; the same products at a batch's size are split."""
    from taskflow.ops.cpu import attention as attention_cpu
    from taskflow.ops.cpu import matmul as matmul_cpu
    from taskflow.ops.cpu.blas import backend

    splits: list[int] = []
    for module in (matmul_cpu, attention_cpu):
        real = module.run_tasks
        monkeypatch.setattr(module, "run_tasks",
                            lambda fn, n, real=real: (splits.append(n), real(fn, n))[1])
    shared = native_pool.pool()  # float32 GEMMs split there: a job with helpers is a split
    if shared is not None:
        gemm = shared.gemm
        monkeypatch.setattr(shared, "gemm", lambda *args: (
            splits.append(args[-1] + 1) if args[-1] > 0 else None, gemm(*args))[1])
    rng = np.random.default_rng(14)
    threads.apply_kernel_threads(2)
    try:
        for rows, split in ((8, False), (512, True)):
            splits.clear()
            a = rng.standard_normal((rows, 128), dtype=np.float32)
            w = rng.standard_normal((128, 512), dtype=np.float32)
            np.testing.assert_allclose(matmul_cpu.parallel_matmul(a, w), a @ w, rtol=1e-4,
                                       atol=1e-4)
            assert bool(splits) == split, (rows, backend(), splits)
        for tokens, split in ((8, False), (128, True)):
            splits.clear()
            q, k, v = (rng.standard_normal((2, 4, tokens, 32), dtype=np.float32)
                       for _ in range(3))
            check("FusedAttention", [q, k.transpose(0, 1, 3, 2), v], {"scale": 0.125})
            assert (max(splits, default=1) > 1) == split, (tokens, backend(), splits)
    finally:
        threads.reset_kernel_threads()
