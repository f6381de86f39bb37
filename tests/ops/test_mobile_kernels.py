"""Mobile-CNN kernels against their references: depthwise convolutions with fused HardSwish /
HardSigmoid / ReLU epilogues, the HardSwish kernel, and FusedSqueezeExcite.

Edge shapes on purpose: odd spatial sizes, stride 2 over an odd input, one sample, channel
counts that are no multiple of a vector width, channels-last and NCHW inputs, one and two
kernel threads.
"""

from __future__ import annotations

import numpy as np
import pytest
import taskflow.ops as ops
from taskflow.ops.cpu.common import is_channels_last
from taskflow.ops.cpu.warmup import channels_last

from .oracles import assert_close

#: GEMM-free depthwise sums in another order than the reference's: a few float32 ulps of
#: sums of 9-25 terms; squeeze-excite sums in float64 against numpy's float32 mean.
TOL = {"FusedConv": (1e-5, 1e-5), "FusedSqueezeExcite": (1e-5, 1e-6), "HardSwish": (0, 0)}


def _check(op: str, args: list, attrs: dict) -> np.ndarray:
    spec = ops.get(op)
    want = spec.reference(*[None if a is None else np.ascontiguousarray(a) for a in args],
                          **attrs)
    got = spec.kernels["cpu"](*args, **attrs)
    rtol, atol = TOL[op] if args[0].dtype == np.float32 else (1e-11, 1e-11)
    assert_close(got, want, rtol=rtol, atol=atol, what=f"{op} {attrs}")
    return got


ACTS = {"HardSwish": [], "HardSigmoid": [1 / 6, 0.5], "Relu": [], "": []}


@pytest.mark.parametrize("activation", list(ACTS), ids=lambda a: a or "none")
@pytest.mark.parametrize("k,stride,size", [(3, 1, 9), (3, 2, 9), (5, 1, 7), (5, 2, 11),
                                           (3, 2, 8), (5, 2, 5)])
@pytest.mark.parametrize("batch,channels", [(1, 13), (3, 20)])
def test_depthwise_with_fused_epilogue(activation, k, stride, size, batch, channels,
                                       kernel_threads):
    rng = np.random.default_rng(k * 100 + stride * 10 + batch)
    x = rng.standard_normal((batch, channels, size, size + 2)).astype(np.float32)
    w = rng.standard_normal((channels, 1, k, k)).astype(np.float32)
    b = rng.standard_normal(channels).astype(np.float32)
    attrs = {"group": channels, "pads": [k // 2] * 4, "strides": [stride, stride],
             "kernel_shape": [k, k], "activation": activation,
             "activation_params": ACTS[activation]}
    for inp in (x, channels_last(x)):
        _check("FusedConv", [inp, w, b], attrs)


def test_depthwise_hardswish_float64_and_residual():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 7, 9, 9))
    w = rng.standard_normal((7, 1, 3, 3))
    z = rng.standard_normal((2, 7, 5, 5))
    _check("FusedConv", [x, w, None, z], {"group": 7, "pads": [1, 1, 1, 1], "strides": [2, 2],
                                          "activation": "HardSwish"})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_hardswish_kernel_is_bit_identical(dtype, layout, kernel_threads):
    x = (np.random.default_rng(2).standard_normal((3, 13, 31, 33)) * 4).astype(dtype)
    x.reshape(-1)[:4] = [np.nan, np.inf, -np.inf, -3.0]
    if layout == "channels_last":
        x = channels_last(x)
    y = _check("HardSwish", [x], {})
    assert is_channels_last(y) == is_channels_last(x)  # the layout is kept
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == np.inf and y[0, 0, 0, 3] == 0


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("pool", ["GlobalAveragePool", "ReduceMean"])
# the excitation's products in vector blocks of 32 and 8 outputs, then one by one: 72 -> 24
# (32 + 32 + 8, 8 x 3), 100 -> 36 (3 x 32 + 4, 32 + 4), 13 -> 3 (8 + 5, 3)
@pytest.mark.parametrize("batch,c,cr,h,w", [(1, 13, 3, 7, 5), (3, 16, 8, 1, 1),
                                            (5, 72, 24, 14, 15), (2, 100, 36, 3, 4)])
def test_squeeze_excite_kernel(layout, pool, batch, c, cr, h, w, kernel_threads):
    rng = np.random.default_rng(c + h)
    x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
    if layout == "channels_last":
        x = channels_last(x)
    w1 = rng.standard_normal((cr, c, 1, 1)).astype(np.float32)
    b1 = rng.standard_normal(cr).astype(np.float32)
    w2 = rng.standard_normal((c, cr, 1, 1)).astype(np.float32)
    b2 = rng.standard_normal(c).astype(np.float32)
    attrs = {"pool": pool, "activation": "Relu", "gate": "HardSigmoid",
             "gate_params": [1 / 6, 0.5]}
    y = _check("FusedSqueezeExcite", [x, w1, b1, w2, b2], attrs)
    assert y.strides == x.strides or h * w == 1  # channels-last in, channels-last out
    _check("FusedSqueezeExcite", [x, w1, None, w2, None],
           {"pool": pool, "activation": "HardSwish", "gate": "Sigmoid"})


def test_squeeze_excite_falls_back_to_the_reference_outside_its_fast_path():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 8, 5, 5)).astype(np.float16)
    w1 = rng.standard_normal((4, 8, 1, 1)).astype(np.float16)
    w2 = rng.standard_normal((8, 4, 1, 1)).astype(np.float16)
    spec = ops.get("FusedSqueezeExcite")
    np.testing.assert_array_equal(spec.kernels["cpu"](x, w1, None, w2),
                                  spec.reference(x, w1, None, w2))
    with pytest.raises(ValueError, match="pool"):
        spec.kernels["cpu"](x.astype(np.float32), w1.astype(np.float32), None,
                            w2.astype(np.float32), pool="Max")


@pytest.mark.parametrize("lanes", [8, 16])
@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (5, 1), (5, 2), (7, 1)])
@pytest.mark.parametrize("width", [3, 5, 7, 14])
@pytest.mark.parametrize("activation", ["HardSwish", "Sigmoid"])
def test_depthwise_rows_planes_and_in_place(lanes, k, stride, width, activation):
    """The depthwise kernel itself, on both of its paths (stride 1 and 5+ columns: through a
    zero-padded plane per block of channels, a row's last 4-pixel block overlapping the one
    before it; else reading NHWC in place, its last pixels one by one): rows 5, 7, 14 wide
    and one narrower than a block (3), 24 channels (with 16 lanes a block of 16, then one of
    8), an activation in registers and one after the stores, a range of rows that starts and
    ends inside images, into channels 8:32 of a 40-channel buffer whose other channels stay
    as they were."""
    from taskflow.ops.cpu import depthwise, direct, epilogue, lowp

    if lanes == 16 and "avx512f" not in lowp.cpu_features():
        pytest.skip("the 16-lane kernels run only where the CPU has AVX-512F")
    rng = np.random.default_rng(k * 1000 + stride * 100 + width)
    n, h, c, p = 3, 6 + k, 24, k // 2
    x = rng.standard_normal((n, h, width, c), dtype=np.float32)  # NHWC
    w = rng.standard_normal((c, 1, k, k), dtype=np.float32)
    b = rng.standard_normal(c, dtype=np.float32)
    want = ops.get("FusedConv").reference(
        np.ascontiguousarray(x.transpose(0, 3, 1, 2)), w, b, None, group=c, pads=[p] * 4,
        strides=[stride] * 2, activation=activation)
    ho, wo = want.shape[2:]
    full = np.full((n, ho, wo, 40), 7.0, np.float32)
    lo, hi = ho - 2, 2 * ho + 1  # the last 2 rows of image 0, all of image 1, 1 row of 2
    t = np.float32
    act, p0, p1 = epilogue.activation_code(activation, None)
    depthwise.depthwise_rows(x, np.ascontiguousarray(w[:, 0].transpose(1, 2, 0)), b, full, 8,
                             stride, (0,) * stride, p, p, act, t(p0), t(p1), t(1), lo, hi,
                             direct.lanes_tag(lanes), (0,) * k)
    rows = full.reshape(n * ho, wo, 40)
    got = rows[lo:hi, :, 8:32]
    expect = want.transpose(0, 2, 3, 1).reshape(n * ho, wo, c)[lo:hi]
    assert_close(got, expect, rtol=1e-5, atol=1e-5, what=f"depthwise rows k{k} s{stride}")
    assert np.ptp(expect) > 0.5
    assert np.all(rows[:, :, :8] == 7) and np.all(rows[:, :, 32:] == 7)  # others untouched
    assert np.all(rows[:lo] == 7) and np.all(rows[hi:] == 7)  # rows outside the range too
