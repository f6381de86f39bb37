"""Reduced-precision kernels (``ops/cpu/lowp.py``): FusedConv, FusedGemm and FusedMatMul with
``precision`` "bf16" / "int8" against their references (the float32 op on fake-quantised
operands, ``ops/quant.py``), on oneMKL's bf16 and s8u8s32 GEMMs, on the dot-instruction
kernels (``ops/cpu/dotgemm.py``) and on the emulation (``TASKFLOW_LOWP=mkl|dot|emulate``).
Then: the precision really applies (results differ from float32, within the format's error),
MKL, the dot kernels and the emulation agree, the attributes are checked, the CPU
features are read, and ``TASKFLOW_ISA=avx2`` reaches MKL.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import taskflow.ops as ops
from taskflow.ops.cpu import blas, lowp
from taskflow.ops.cpu.common import is_channels_last
from taskflow.ops.cpu.warmup import channels_last
from taskflow.ops.quant import (
    dynamic_qparams,
    fake_quant_bf16,
    fake_quant_u8,
    quantize_weight_per_channel,
)

from taskflow.errors import UnsupportedOpError

from .oracles import assert_close

#: kernel vs reference: the same fake-quantised operands, another float32 summation order
#: (MKL's blocking, NHWC rows; int8: an exact integer sum scaled once against a float32 sum of
#: float32 products), on outputs of O(sqrt(K)).
TOL = (1e-4, 1e-4)
#: (precision, x_scale, x_zero_point): bf16, static int8 (a zero point far from 0, so a
#: padding mistake shows), dynamic int8
PRECISIONS = {"bf16": ("bf16", 0.0, 0), "int8": ("int8", 0.03, 200),
              "int8-dynamic": ("int8", 0.0, 0)}


@pytest.fixture(params=["mkl", "dot", "emulate"])
def mode(request, monkeypatch):
    """Run on oneMKL's reduced GEMMs, on .dotgemm's kernels (VNNI / AVX512-BF16 where the CPU
    has them, their plain-vector form elsewhere), then on the emulation (read per call)."""
    monkeypatch.setenv("TASKFLOW_LOWP", request.param)
    if request.param == "emulate":
        assert lowp.lowp_backend("int8") == "emulated"
    else:
        if lowp._bindings() is None:
            pytest.skip("no oneMKL reduced-precision GEMMs (mkl wheel missing or "
                        "TASKFLOW_BLAS=numpy)")
        assert lowp.lowp_backend("bf16").startswith(f"{request.param}-")
    return request.param


def attrs_of(precision: str) -> dict:
    p, scale, zp = PRECISIONS[precision]
    return {"precision": p, "x_scale": scale, "x_zero_point": zp}


def check(op: str, args: list, attrs: dict) -> np.ndarray:
    """The cpu kernel against the reference (on C-ordered copies); returns the kernel's."""
    spec = ops.get(op)
    want = spec.reference(*[None if a is None else np.ascontiguousarray(a) for a in args],
                          **attrs)
    got = spec.kernels["cpu"](*args, **attrs)
    assert_close(got, want, rtol=TOL[0], atol=TOL[1], what=f"{op} {attrs}")
    return got


def rand(rng, *shape, cl=False):
    x = rng.standard_normal(shape).astype(np.float32)
    return channels_last(x) if cl else x


# --- kernel vs reference ------------------------------------------------------------------------
CONVS = {  # (input shape, weight shape, attributes): each GEMM path of conv_nhwc
    "1x1": ((2, 16, 7, 7), (24, 16, 1, 1), {}),
    "3x3-pad": ((2, 8, 9, 9), (16, 8, 3, 3), {"pads": [1, 1, 1, 1]}),
    "3x3-stride2": ((2, 8, 9, 9), (16, 8, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "grouped": ((2, 16, 8, 8), (32, 4, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}),
    # Winograd's shape (3x3, stride 1, >= 40 channels): skipped for im2col + reduced GEMM
    "winograd-shape": ((1, 48, 6, 6), (16, 48, 3, 3), {"pads": [1, 1, 1, 1]}),
}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("path", CONVS)
def test_fused_conv_matches_the_reference(path, precision, mode):
    rng = np.random.default_rng(len(path))
    xs, ws, attrs = CONVS[path]
    m = ws[0]
    x, w, b = rand(rng, *xs, cl=True), rand(rng, *ws), rand(rng, m)
    y0 = ops.get("Conv").reference(x, w, None, **attrs)
    z = rand(rng, *y0.shape, cl=True)
    y = check("FusedConv", [x, w, b, z],
              {**attrs, **attrs_of(precision), "activation": "LeakyRelu",
               "activation_params": [0.1]})
    assert is_channels_last(y)


def test_int8_padding_is_the_zero_point(mode):
    """Padding reads as 0, which quantises to the zero point: an input far from 0 (every pixel
    positive, zero point 0) against one whose zero point is 255 (every pixel negative)."""
    rng = np.random.default_rng(1)
    w = rand(rng, 8, 4, 3, 3)
    for x, zp in ((np.abs(rand(rng, 1, 4, 6, 6)) + 1, 0), (-np.abs(rand(rng, 1, 4, 6, 6)) - 1,
                                                           255)):
        check("FusedConv", [x, w], {"pads": [1, 1, 1, 1], "precision": "int8",
                                    "x_scale": 0.02, "x_zero_point": zp})


def test_dynamic_int8_takes_its_range_from_the_whole_input(mode, kernel_threads):
    """Big enough that the kernel splits rows over threads: one scale for all slices."""
    rng = np.random.default_rng(2)
    x = rand(rng, 2, 32, 28, 28, cl=True)
    x[1] *= 10  # the second sample alone decides the range
    w, b = rand(rng, 64, 32, 3, 3), rand(rng, 64)
    check("FusedConv", [x, w, b], {"pads": [1, 1, 1, 1], "precision": "int8",
                                   "activation": "Relu"})
    a = rand(rng, 300, 128)
    a[-1] *= 10
    check("FusedGemm", [a, rand(rng, 128, 96), None], {"precision": "int8"})


@pytest.mark.parametrize("precision", PRECISIONS)
def test_split_products_run_their_epilogue_in_each_row_block(precision, mode, kernel_threads):
    """A product big enough to be split into row blocks over the kernel threads
    (lowp_rows.gemm_rows: conversion, GEMM, bias and GELU in one call per block) against the
    reference, rows of very different ranges so a block-local scale would show."""
    rng = np.random.default_rng(11)
    a = rand(rng, 2, 160, 96)
    a[1] *= 4
    check("FusedMatMul", [a, rand(rng, 96, 80), rand(rng, 80)],
          {"activation": "Gelu", **attrs_of(precision)})


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("trans_b", [0, 1])
def test_fused_gemm_matches_the_reference(trans_b, precision, mode):
    rng = np.random.default_rng(trans_b)
    a, bias = rand(rng, 70, 40), rand(rng, 30)
    b = rand(rng, 30, 40) if trans_b else rand(rng, 40, 30)
    check("FusedGemm", [a, b, bias], {"transB": trans_b, "alpha": 0.5, "beta": 2.0,
                                      "activation": "Sigmoid", **attrs_of(precision)})


@pytest.mark.parametrize("precision", PRECISIONS)
def test_fused_matmul_matches_the_reference(precision, mode):
    rng = np.random.default_rng(3)
    check("FusedMatMul", [rand(rng, 3, 20, 40), rand(rng, 40, 24), rand(rng, 24)],
          {"activation": "Gelu", **attrs_of(precision)})
    # a transposed (non-contiguous) A is copied to rows first
    check("FusedMatMul", [rand(rng, 40, 20).T, rand(rng, 40, 24)], attrs_of(precision))


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_depthwise_runs_float32_on_fake_quantised_operands(precision, mode):
    rng = np.random.default_rng(4)
    check("FusedConv", [rand(rng, 2, 8, 7, 7, cl=True), rand(rng, 8, 1, 3, 3), rand(rng, 8)],
          {"group": 8, "pads": [1, 1, 1, 1], "precision": precision, "activation": "Relu"})


def test_matmul_with_a_batched_weight_ignores_the_precision(mode):
    rng = np.random.default_rng(5)
    a, b = rand(rng, 2, 6, 16), rand(rng, 2, 16, 8)
    y = check("FusedMatMul", [a, b], {"precision": "int8"})
    assert_close(y, ops.get("FusedMatMul").reference(a, b), rtol=TOL[0], atol=TOL[1])


def test_one_weight_packed_for_each_precision(mode):
    rng = np.random.default_rng(6)
    x, w = rand(rng, 2, 8, 6, 6, cl=True), rand(rng, 16, 8, 3, 3)
    for precision in ("bf16", "int8", "", "bf16"):
        check("FusedConv", [x, w], {"pads": [1, 1, 1, 1], "precision": precision})


# --- the precision really applies ---------------------------------------------------------------
def test_bf16_differs_from_float32_within_bf16_error(mode):
    rng = np.random.default_rng(7)
    a, b = rand(rng, 64, 256), rand(rng, 256, 48)
    y = ops.get("FusedGemm").kernels["cpu"](a, b, precision="bf16")
    exact = a.astype(np.float64) @ b.astype(np.float64)
    assert np.abs(y - exact).max() > 1e-3  # float32 would be ~1e-5
    # each operand is off by at most 2**-9 relatively, so each product by 2**-8
    bound = 2.0 ** -8 * (np.abs(a) @ np.abs(b)) + 1e-4
    assert np.all(np.abs(y - exact) <= bound)


def test_int8_is_within_quantisation_error_of_float32(mode):
    rng = np.random.default_rng(8)
    a, b = rand(rng, 64, 256), rand(rng, 256, 48)
    y = ops.get("FusedMatMul").kernels["cpu"](a, b, precision="int8")
    exact = a.astype(np.float64) @ b.astype(np.float64)
    xs, _ = dynamic_qparams(a)
    _, ws = quantize_weight_per_channel(b, 1)
    assert np.abs(y - exact).max() > 1e-2
    # |x' - x| <= xs/2 (no saturation: the range is a's own), |w' - w| <= ws/2 per column
    bound = (xs / 2 * np.abs(b).sum(0) + np.abs(a) @ (np.ones_like(b) * ws / 2)
             + a.shape[1] * xs * ws / 4 + 1e-4)
    assert np.all(np.abs(y - exact) <= bound)
    assert np.linalg.norm(y - exact) / np.linalg.norm(exact) < 0.02


def test_int8_sums_exactly_where_pairs_of_products_overflow_int16(mode):
    """A row of 255s times a column of 127s: each pair of products (64770) overflows int16,
    which MKL's s8u8s32 saturates on CPUs without VNNI (an Intel CPU capped at AVX2:
    ``TASKFLOW_ISA=avx2``); the int8 GEMM must then run the emulation, and
    ``lowp_backend`` say so."""
    k, n = 256, 48
    w = np.full((k, n), 0.5, np.float32)
    w[:, 1::2] = -0.5  # int8 +-127 in every column
    w[-1] /= 127  # and +-1 in its last row: the column is on no coarser grid (63 levels)
    packed = lowp.pack_int8(w)
    x = np.full((70, k), 2.55, np.float32)  # x_scale 0.01, zero point 0: u8 255
    got = lowp.gemm_int8(x, packed, np.empty((70, n), np.float32), 0.01, 0)
    assert packed.wmax == 127
    sums = np.where(np.arange(n) % 2, -1, 1) * (127 * (k - 1) + 1)
    want = (255 * 0.01) * (sums * packed.scale)
    assert_close(got, np.broadcast_to(want.astype(np.float32), got.shape), rtol=1e-5, atol=0)
    assert (lowp.lowp_backend("int8") == "emulated") == (mode == "emulate"
                                                         or not lowp.int8_weight_max())


def test_mkl_the_dot_kernels_and_the_emulation_agree(monkeypatch):
    """int8 bit for bit (all sum the same integers exactly); bf16 to summation order."""
    if lowp._bindings() is None:
        pytest.skip("no oneMKL reduced-precision GEMMs")
    rng = np.random.default_rng(9)
    a, b = rand(rng, 33, 70)[:, 3:], rand(rng, 67, 19)  # a strided A
    p8, p16 = lowp.pack_int8(b), lowp.pack_bf16(b)
    out = {}
    for env in ("mkl", "dot", "emulate"):
        monkeypatch.setenv("TASKFLOW_LOWP", env)
        c = np.zeros((33, 40), np.float32)[:, 5:24]  # a strided output, as a group's columns
        out[env] = (lowp.gemm_int8(a, p8, c, 0.05, 17).copy(),
                    lowp.gemm_bf16(a, p16, np.zeros((33, 40), np.float32)[:, 7:26]).copy())
    for env in ("mkl", "dot"):
        np.testing.assert_array_equal(out[env][0], out["emulate"][0])
        assert_close(out[env][1], out["emulate"][1], rtol=1e-5, atol=1e-5)
    ref = fake_quant_u8(a, 0.05, 17) @ (p8.values * p8.scale)
    assert_close(out["dot"][0], ref, rtol=1e-5, atol=1e-5)
    assert_close(out["dot"][1], fake_quant_bf16(a) @ fake_quant_bf16(b), rtol=1e-5, atol=1e-5)


def test_conversions_round_like_the_reference():
    """bf16: ties to even, overflow to inf, NaN kept; uint8: ties to even, saturation."""
    bits = np.array([0x3F808000, 0x3F818000, 0x7F7FFFFF, 0xFF800000, 0x7FC00001, 0x00018000],
                    np.uint32)
    out = np.empty((1, 6), np.uint16)
    lowp._to_bf16(bits.reshape(1, 6), out)
    np.testing.assert_array_equal(out[0], [0x3F80, 0x3F82, 0x7F80, 0xFF80, 0x7FC0, 0x0002])
    ref = fake_quant_bf16(bits.view(np.float32))
    got = (out[0].astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(got, ref)
    a = np.float32([[-0.5, 0.5, 1.5, 2.5, -600.0, 600.0, 126.5, -1e30]])
    q = np.empty(a.shape, np.uint8)
    lowp._quantize_u8(a, q, np.float32(1.0), np.float32(128))
    np.testing.assert_array_equal(q[0], np.clip(np.rint(a[0]) + 128, 0, 255))


# --- attributes, features, backends -------------------------------------------------------------
@pytest.mark.parametrize("op, args", [
    ("FusedConv", lambda rng: [rand(rng, 1, 4, 5, 5), rand(rng, 8, 4, 3, 3)]),
    ("FusedGemm", lambda rng: [rand(rng, 4, 6), rand(rng, 6, 3)]),
    ("FusedMatMul", lambda rng: [rand(rng, 4, 6), rand(rng, 6, 3)]),
])
@pytest.mark.parametrize("bad, match", [
    ({"precision": "fp8"}, r"precision='fp8' is not supported \(allowed: '', 'bf16', 'int8'\)"),
    ({"precision": "int8", "x_zero_point": 300}, r"x_zero_point=300"),
    ({"precision": "int8", "x_scale": -1.0}, r"x_scale=-1.0"),
])
def test_invalid_precision_attributes_are_named(op, args, bad, match):
    spec = ops.get(op)
    inputs = args(np.random.default_rng(0))
    for fn in (spec.reference, spec.kernels["cpu"]):
        with pytest.raises(UnsupportedOpError, match=match):
            fn(*inputs, **bad)


def test_cpu_features_come_from_proc_cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((set(line.split(":")[1].split()) for line in f
                          if line.startswith("flags")), set())
    except OSError:
        flags = set()
    assert lowp.cpu_features() == {name for name in lowp.FEATURES if name in flags}
    if "avx2" in flags:  # this machine: AVX2 and FMA, no VNNI or AMX
        assert "avx2" in lowp.cpu_features()


def test_backends_name_what_runs(monkeypatch):
    assert lowp.lowp_backend("") == blas.backend()
    monkeypatch.setenv("TASKFLOW_LOWP", "emulate")
    assert lowp.lowp_backend("bf16") == lowp.lowp_backend("int8") == "emulated"
    with pytest.raises(UnsupportedOpError, match="precision='fp16'"):
        lowp.lowp_backend("fp16")


def test_isa_cap_reaches_mkl_before_it_loads():
    """``TASKFLOW_ISA=avx2`` is read when MKL loads, so in a fresh process (that loads only
    blas.py: importing taskflow would take seconds): MKL's variable is set, MKL still runs
    sequentially, and its GEMMs are right."""
    if lowp._bindings() is None:
        pytest.skip("no oneMKL")
    code = (
        "import importlib.util, os, sys, numpy as np\n"
        "spec = importlib.util.spec_from_file_location('blas', sys.argv[1])\n"
        "blas = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(blas)\n"
        "a, b = np.ones((5, 7), np.float32), np.arange(21, dtype=np.float32).reshape(7, 3)\n"
        "y = blas.gemm(a, b, np.empty((5, 3), np.float32))\n"
        "print(blas.isa_cap(), os.environ['MKL_ENABLE_INSTRUCTIONS'], blas.backend(),"
        " np.array_equal(y, a @ b))\n")
    env = {**os.environ, "TASKFLOW_ISA": "avx2"}
    out = subprocess.run([sys.executable, "-c", code, blas.__file__], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["avx2", "AVX2", "mkl", "True"], out.stderr[-2000:]


def test_a_capped_mkl_reports_its_capped_path(monkeypatch):
    if lowp._bindings() is None:
        pytest.skip("no oneMKL")
    monkeypatch.setitem(blas._state, "isa", "avx2")
    assert lowp.lowp_backend("bf16") == "mkl-avx2"
    # MKL's int8 saturates without VNNI on Intel CPUs: 7-bit weights only run on it there
    assert lowp.lowp_backend("int8") == (
        "mkl-avx2" if lowp._int8_exact() else "mkl-avx2-7bit" if lowp._int8_exact(63)
        else "emulated")


def test_the_dot_kernels_run_where_the_cpu_has_their_instructions(monkeypatch):
    """Forced either way by TASKFLOW_LOWP; by default only with the instruction, no AMX and no
    AVX2 cap (a capped run models a CPU without VNNI / AVX512-BF16), and then the backend's
    name says so."""
    if lowp._bindings() is None:
        pytest.skip("no oneMKL")
    for mode, want in (("dot", True), ("mkl", False)):
        monkeypatch.setenv("TASKFLOW_LOWP", mode)
        assert lowp.dot_kernels("int8") is want and lowp.dot_kernels("bf16") is want
        assert lowp.lowp_backend("int8").startswith(mode)
    monkeypatch.delenv("TASKFLOW_LOWP")
    features = lowp.cpu_features()
    for precision, flag in (("int8", "avx512_vnni"), ("bf16", "avx512_bf16")):
        if flag not in features or features & {"amx_int8", "amx_bf16"}:
            assert not lowp.dot_kernels(precision)
        elif lowp.dot_kernels(precision):
            assert lowp.lowp_backend(precision) == f"dot-{flag.replace('_', '-')}"
    monkeypatch.setitem(blas._state, "isa", "avx2")
    assert not lowp.dot_kernels("int8") and not lowp.dot_kernels("bf16")


def test_seven_bit_weights_run_on_mkl_where_eight_bit_ones_saturate():
    """Capped at AVX2 (no VNNI: pairs of u8 x s8 products summed in saturating int16), MKL's
    int8 GEMM is exact for 7-bit weights (2 * 255 * 63 fits int16), so a layer with them runs
    on MKL while one with 8-bit weights runs the emulation; both give the exact sums. In a
    fresh process: the cap is read when MKL loads."""
    if lowp._bindings() is None:
        pytest.skip("no oneMKL")
    code = (
        "import numpy as np\n"
        "from taskflow.ops.cpu import lowp\n"
        "from taskflow.ops.quant import quantize_weight_per_channel\n"
        "k, n = 256, 48\n"
        "sign = np.where(np.arange(n) % 2, -1.0, 1.0).astype(np.float32)\n"
        "x = np.full((70, k), 2.55, np.float32)\n"
        "w = np.tile(sign * 0.5, (k, 1))\n"
        "w[-1] /= 127\n"  # on 127 levels, not on 63
        "for wmax in (63, 64, 127):\n"  # ours; ONNX Runtime's reduce_range; 8-bit
        "    q, s = quantize_weight_per_channel(w, 1, wmax)\n"
        "    p = lowp.pack_int8(q * s)\n"
        "    got = lowp.gemm_int8(x, p, np.empty((70, n), np.float32), 0.01, 0)\n"
        "    want = np.float32(2.55) * p.scale * q.astype(np.float32).sum(0)\n"
        "    print(wmax, p.wmax, lowp.mkl_functions('int8', k, p.wmax) is not None,\n"
        "          bool(np.allclose(got, want, rtol=1e-5, atol=0)))\n"
        "print(lowp.int8_weight_max(), lowp.lowp_backend('int8'))\n")
    env = {**os.environ, "TASKFLOW_ISA": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line.split() for line in out.stdout.splitlines()]
    wmax, backend = int(lines[3][0]), lines[3][1]
    assert lines[0] == ["63", "63", str(wmax >= 64), "True"]  # 7-bit: on MKL wherever it is
    assert lines[1] == ["64", "64", str(wmax >= 64), "True"]
    assert lines[2] == ["127", "127", str(wmax == 127), "True"]  # exact, MKL or emulated
    assert backend == {127: "mkl-avx2", 64: "mkl-avx2-7bit", 0: "emulated"}[wmax]
    if "avx512_vnni" in lowp.cpu_features() and "GenuineIntel" in open("/proc/cpuinfo").read():
        assert wmax == 64  # an Intel CPU capped at AVX2 saturates 8-bit pairs, not 7-bit


def test_seven_bit_weights_stay_seven_bit():
    """A 7-bit weight (reduce_range) folded back to float lies on 63 levels and also on 126:
    re-quantised by the kernels it must keep the 63 (the smallest exact grid), or its
    integers would overflow what MKL sums exactly without VNNI."""
    rng = np.random.default_rng(12)
    w = rand(rng, 40, 24) * np.float32(3)
    q7, s7 = quantize_weight_per_channel(w, 1, 63)
    assert np.abs(q7).max() == 63 and np.all(np.abs(q7).max(0) == 63)
    folded = (q7 * s7).astype(np.float32)
    q, s = quantize_weight_per_channel(folded, 1)
    np.testing.assert_array_equal(q, q7)
    np.testing.assert_array_equal(q * s, folded)
    assert lowp.pack_int8(folded).wmax == 63 and lowp.pack_int8(w).wmax == 127


def test_weights_quantise_per_channel_and_dequantised_ones_stay_exact():
    """max|w| / 127 per output channel for a float weight; a channel already on a coarser
    symmetric grid (ONNX Runtime's 7-bit reduce_range, a per-tensor scale) keeps it."""
    rng = np.random.default_rng(10)
    w = rand(rng, 6, 20)
    q, scale = quantize_weight_per_channel(w, 1)
    np.testing.assert_array_equal(scale, np.abs(w).max(0) / np.float32(127))
    assert np.abs(q).max() == 127
    on_grid = rng.integers(-64, 65, (6, 20)).astype(np.float32)
    on_grid[0] = 64  # each column reaches 64 somewhere
    step = rng.uniform(1e-3, 1e-2, 20).astype(np.float32)
    for w in (on_grid * step, on_grid * np.float32(0.003)):
        q, scale = quantize_weight_per_channel(w, 1)
        np.testing.assert_array_equal(q * scale, w)
        np.testing.assert_array_equal(lowp.pack_int8(w).values, q)


# --- narrow hand-offs between reduced layers ----------------------------------------------------
HANDOFF_CONVS = {  # (input shape, weight shape, attributes)
    "1x1": ((2, 16, 7, 7), (24, 16, 1, 1), {}),
    "1x1-stride2": ((2, 16, 9, 9), (24, 16, 1, 1), {"strides": [2, 2]}),
    "3x3-pad": ((2, 8, 9, 9), (16, 8, 3, 3), {"pads": [1, 1, 1, 1]}),
    "3x3-stride2": ((2, 8, 9, 9), (16, 8, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    # 3 channels 7x7: 2 x 20 x 20 = 800 output rows, two of the narrow kernel's row blocks
    "stem": ((2, 3, 40, 40), (16, 3, 7, 7), {"strides": [2, 2], "pads": [3, 3, 3, 3]}),
}
#: (precision, x_scale, x_zero_point, y_scale, y_zero_point): the next layer's int8 input
#: scale and zero point differ from this layer's
HANDOFFS = {"bf16": ("bf16", 0.0, 0, 0.0, 0), "int8": ("int8", 0.03, 200, 0.05, 7)}


@pytest.mark.parametrize("precision", HANDOFFS)
@pytest.mark.parametrize("path", HANDOFF_CONVS)
def test_narrow_handoffs_are_exact(path, precision, mode, kernel_threads):
    """A reduced layer given its input narrow (as the layer before hands it over) computes
    bit for bit what it computes from float32; one that writes its output narrow writes what
    the next layer would have made of its float32 output: the reference's
    :func:`~taskflow.ops.quant.to_handoff`, to one rounding step (another summation order can
    flip a value that lies on a rounding boundary). Both against the reference, which decodes
    and encodes with numpy."""
    from taskflow.ops.quant import from_handoff, to_handoff

    p, xs, xzp, ys, yzp = HANDOFFS[precision]
    rng = np.random.default_rng(len(path) + len(precision))
    shape, wshape, geo = HANDOFF_CONVS[path]
    x, w, b = rand(rng, *shape, cl=True), rand(rng, *wshape) * 0.3, rand(rng, wshape[0])
    z = rand(rng, *ops.get("Conv").reference(x, w, None, **geo).shape, cl=True)
    attrs = {**geo, "precision": p, "x_scale": xs, "x_zero_point": xzp, "activation": "Relu"}
    kernel, reference = ops.get("FusedConv").kernels["cpu"], ops.get("FusedConv").reference
    xn = channels_last(to_handoff(np.ascontiguousarray(x), p, xs, xzp))
    assert xn.dtype == (np.uint16 if p == "bf16" else np.uint8)
    wide = kernel(x, w, b, z, **attrs)
    np.testing.assert_array_equal(kernel(xn, w, b, z, **attrs), wide)
    np.testing.assert_array_equal(reference(xn, w, b, z, **attrs),
                                  reference(np.ascontiguousarray(x), w, b, z, **attrs))
    out = {**attrs, "y_precision": p, "y_scale": ys, "y_zero_point": yzp}
    for given in (x, xn):
        got = kernel(given, w, b, z, **out)
        want = to_handoff(np.ascontiguousarray(wide), p, ys, yzp)
        assert got.dtype == want.dtype and got.shape == want.shape and is_channels_last(got)
        values = from_handoff(np.ascontiguousarray(got), p, ys, yzp)
        expected = from_handoff(want, p, ys, yzp)
        step = np.abs(expected) * 2.0**-7 if p == "bf16" else np.float32(ys)
        assert np.all(np.abs(values - expected) <= step), path
        assert np.mean(values == expected) > 0.99  # one rounding step at most, and rarely
        assert np.ptp(values) > 0  # the output depends on the input
    ref = reference(np.ascontiguousarray(xn), w, b, np.ascontiguousarray(z), **out)
    assert ref.dtype == got.dtype
    np.testing.assert_array_equal(ref, to_handoff(
        reference(np.ascontiguousarray(x), w, b, np.ascontiguousarray(z), **attrs), p, ys, yzp))


def test_an_int8_handoff_needs_the_next_layers_scale():
    x, w = np.ones((1, 2, 3, 3), np.float32), np.ones((4, 2, 1, 1), np.float32)
    with pytest.raises(UnsupportedOpError, match="y_scale"):
        ops.get("FusedConv").kernels["cpu"](x, w, precision="int8", x_scale=0.1,
                                           y_precision="int8")


@pytest.mark.parametrize("activation", ["", "Relu", "Clip"])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_dequantisation_and_epilogue_in_one_pass(activation, residual, bias, mode,
                                                      kernel_threads):
    """An int8 layer dequantises its sums in the epilogue's pass where it can (a bias, no
    activation or ReLU) and in a pass of its own otherwise: every combination, into float32
    and into the next layer's uint8, over several row blocks, against the reference."""
    rng = np.random.default_rng(5)
    x, w = rand(rng, 2, 16, 24, 24, cl=True), rand(rng, 32, 16, 1, 1)  # 1152 rows: 3 blocks
    b = rand(rng, 32) if bias else None
    z = rand(rng, 2, 32, 24, 24, cl=True) if residual else None
    attrs = {"precision": "int8", "x_scale": 0.03, "x_zero_point": 100,
             "activation": activation, **({"activation_params": [-0.5, 0.5]}
                                          if activation == "Clip" else {})}
    y = check("FusedConv", [x, w, b, z], attrs)
    assert np.ptp(y) > 0
    kernel = ops.get("FusedConv").kernels["cpu"]
    narrow = kernel(x, w, b, z, **attrs, y_precision="int8", y_scale=0.02, y_zero_point=9)
    from taskflow.ops.quant import to_handoff

    want = to_handoff(np.ascontiguousarray(y), "int8", 0.02, 9)
    assert np.abs(np.ascontiguousarray(narrow).astype(int) - want).max() <= 1
