"""The dot-instruction GEMMs (``ops/cpu/dotgemm.py``): exact int32 sums of uint8 x int8 and
float32 sums of bf16 x bf16 products, against numpy in int64 / float64, on shapes that cut
the 4-row x 64-column register block, the 16-column panels and the 4-byte K groups
everywhere; strided outputs; and the same kernel compiled without the dot instructions (their
plain-vector form, what a CPU without VNNI / AVX512-BF16 runs) agreeing bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit
from taskflow.ops.cpu import dotgemm, lowp_rows
from taskflow.ops.cpu.epilogue import NONE, RELU

RAW = dotgemm.raw_epilogue()

#: (M, K, N): single elements, every remainder of rows (4), panels (16 columns), blocks (64)
#: and groups (4 bytes: 4 int8 or 2 bf16), and a ResNet-sized K
SHAPES = [(1, 1, 1), (3, 5, 17), (5, 7, 3), (6, 130, 70), (9, 4, 64), (13, 66, 129),
          (4, 1153, 48)]


def _bf16(rng, shape):
    """Random bf16 bits of values in [-4, 4] (uint16), and those values in float64."""
    f = rng.uniform(-4, 4, shape).astype(np.float32)
    bits = ((f.view(np.uint32) + 0x8000) >> 16).astype(np.uint16)
    return bits, (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


@pytest.mark.parametrize("m, k, n", SHAPES)
def test_int8_sums_are_exact(m, k, n):
    rng = np.random.default_rng(m * 1000 + k + n)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.integers(-127, 128, (k, n), dtype=np.int8)
    w[0, :] = -127  # the extremes: 255 * -127 in every group of the first rows
    a[:, 0] = 255
    offset = rng.integers(-10**6, 10**6, n).astype(np.int32)
    out = np.full((m, n), -7, np.int32)
    dotgemm.gemm_groups(a, dotgemm.pack_groups(w), dotgemm.padded_init(offset, n, np.int32),
                        out, RAW)
    np.testing.assert_array_equal(out, a.astype(np.int64) @ w.astype(np.int64) + offset)


@pytest.mark.parametrize("m, k, n", SHAPES)
def test_bf16_sums_match_float64(m, k, n):
    rng = np.random.default_rng(m * 1000 + k + n)
    (a, af), (b, bf) = _bf16(rng, (m, k)), _bf16(rng, (k, n))
    out = np.full((m, n), np.nan, np.float32)
    dotgemm.gemm_groups(a, dotgemm.pack_groups(b), dotgemm.padded_init(None, n, np.float32),
                        out, RAW)
    # float32 sums of exact products: within the classic bound k * u * sum |a| |b|
    bound = k * 2.0 ** -24 * (np.abs(af) @ np.abs(bf))
    assert np.all(np.abs(out - af @ bf) <= bound + 1e-30)
    if out.size > 8:
        assert np.std(out) > 1  # the output depends on the inputs


def test_outputs_can_be_column_blocks_of_wider_arrays():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (7, 40), dtype=np.uint8)[:, 3:]  # a strided A too
    w = rng.integers(-127, 128, (37, 21), dtype=np.int8)
    wide = np.zeros((7, 50), np.int32)
    dotgemm.gemm_groups(a, dotgemm.pack_groups(w), dotgemm.padded_init(None, 21, np.int32),
                        wide[:, 11:32], RAW)
    np.testing.assert_array_equal(wide[:, 11:32], a.astype(np.int64) @ w)
    assert not wide[:, :11].any() and not wide[:, 32:].any()  # nothing written beside it


@pytest.mark.parametrize("code", [NONE, RELU])
@pytest.mark.parametrize("bias, residual", [(True, True), (True, False), (False, False)])
def test_the_epilogue_in_registers_is_the_two_pass_one(code, bias, residual):
    """int8 sums dequantised, biased, added to a residual and activated on the accumulators
    (float32 out), then quantised for the next layer (uint8 out): bit for bit what
    lowp_rows' separate passes compute from the same sums, partial panels included."""
    rng = np.random.default_rng(code * 10 + bias * 2 + residual)
    m, k, n = 11, 40, 37  # 37 columns: two whole panels and a partial one
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.integers(-127, 128, (k, n), dtype=np.int8)
    b, init = dotgemm.pack_groups(w), dotgemm.padded_init(
        rng.integers(-3000, 3000, n).astype(np.int32), n, np.int32)
    mult = rng.uniform(1e-4, 1e-3, n).astype(np.float32)
    bias_ = rng.standard_normal(n).astype(np.float32) if bias else np.zeros(0, np.float32)
    z = rng.standard_normal((m, n)).astype(np.float32) if residual else \
        np.zeros((0, 0), np.float32)
    ys, yzp = np.float32(0.02), np.float32(100)
    acc = np.empty((m, n), np.int32)
    dotgemm.gemm_groups(a, b, init, acc, RAW)
    want = np.empty((m, n), np.float32)
    lowp_rows._dequant_epilogue(acc, want, 0, mult, bias_, z, residual, code, np.float32(0),
                                np.float32(0))
    want8 = np.empty((m, n), np.uint8)
    lowp_rows._to_narrow(want, want8, ys, yzp)
    ep = (mult, bias_, z, code, ys, yzp)
    got = np.full((m, n), np.nan, np.float32)
    dotgemm.gemm_groups(a, b, init, got, ep)
    np.testing.assert_array_equal(got, want)
    got8 = np.zeros((m, n + 5), np.uint8)[:, 2:n + 2]  # a column block of a wider array
    dotgemm.gemm_groups(a, b, init, got8, ep)
    np.testing.assert_array_equal(got8, want8)
    assert np.ptp(want8) > 50  # the quantised outputs use the range
    if code == RELU:
        assert (want == 0).any() and (want > 0).any()


def test_packing_puts_a_group_of_a_column_together():
    w = np.arange(6 * 18, dtype=np.int32).reshape(6, 18).astype(np.int8)
    p = dotgemm.pack_groups(w)
    assert p.shape == (2, 2, 64)  # 18 columns: 2 panels; 6 rows: 2 groups of 4
    np.testing.assert_array_equal(p[0, 0, :8], [w[0, 0], w[1, 0], w[2, 0], w[3, 0],
                                                 w[0, 1], w[1, 1], w[2, 1], w[3, 1]])
    np.testing.assert_array_equal(p[1, 1, :4], [w[4, 16], w[5, 16], 0, 0])  # zero-padded
    assert not p[1, :, 8:].any()  # columns 18-31 do not exist


def test_the_plain_vector_form_agrees(monkeypatch):
    """The kernel compiled as on a CPU without the dot instructions (a fresh compilation with
    them switched off) gives the same int32 sums, and the same float32 sums: it adds the odd
    then the even product with fused multiply-adds, and a bf16 product is exact."""
    monkeypatch.setattr(dotgemm, "HAS_VNNI", False)
    monkeypatch.setattr(dotgemm, "HAS_BF16", False)
    plain = njit(nogil=True)(dotgemm.gemm_groups.py_func)
    rng = np.random.default_rng(5)
    m, k, n = 9, 35, 40
    a8, w8 = rng.integers(0, 256, (m, k), dtype=np.uint8), rng.integers(-127, 128, (k, n),
                                                                         dtype=np.int8)
    got = np.empty((m, n), np.int32)
    plain(a8, dotgemm.pack_groups(w8), dotgemm.padded_init(None, n, np.int32), got, RAW)
    np.testing.assert_array_equal(got, a8.astype(np.int64) @ w8)
    (a16, af), (b16, bf) = _bf16(rng, (m, k)), _bf16(rng, (k, n))
    zeros = dotgemm.padded_init(None, n, np.float32)
    outs = [np.empty((m, n), np.float32) for _ in range(2)]
    plain(a16, dotgemm.pack_groups(b16), zeros, outs[0], RAW)
    dotgemm.gemm_groups(a16, dotgemm.pack_groups(b16), zeros, outs[1], RAW)
    np.testing.assert_allclose(outs[0], af @ bf, rtol=0, atol=1e-3)
    if dotgemm.HAS_BF16 is False or not dotgemm._HOST.get("avx512bf16"):
        return  # nothing native to compare with here
    # vdpbf16ps rounds once per pair where two FMAs round twice: within one ulp per group
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=k * 2.0 ** -20)


@pytest.mark.parametrize("code", [NONE, RELU])
def test_bf16_epilogue_in_registers_is_the_two_pass_one(code):
    """bf16 sums biased, added to a residual and activated on the accumulators (float32 out),
    then rounded to bf16 bits for the next layer (uint16 out): bit for bit epilogue_rows then
    lowp's rounding."""
    from taskflow.ops.cpu.epilogue import epilogue_rows
    from taskflow.ops.cpu.lowp import _to_bf16

    rng = np.random.default_rng(code + 40)
    m, k, n = 7, 33, 45
    (a, _), (b, _) = _bf16(rng, (m, k)), _bf16(rng, (k, n))
    bias = rng.standard_normal(n).astype(np.float32)
    z = rng.standard_normal((m, n)).astype(np.float32)
    packed, zeros = dotgemm.pack_groups(b), dotgemm.padded_init(None, n, np.float32)
    want = np.empty((m, n), np.float32)
    dotgemm.gemm_groups(a, packed, zeros, want, RAW)
    epilogue_rows(want, 0, n, bias, z, code, np.float32(0), np.float32(0), np.float32(1))
    want16 = np.empty((m, n), np.uint16)
    _to_bf16(want.view(np.uint32), want16)
    ep = (bias[:0], bias, z, code, np.float32(1), np.float32(0))
    got = np.empty((m, n), np.float32)
    dotgemm.gemm_groups(a, packed, zeros, got, ep)
    np.testing.assert_array_equal(got, want)
    got16 = np.empty((m, n), np.uint16)
    dotgemm.gemm_groups(a, packed, zeros, got16, ep)
    np.testing.assert_array_equal(got16, want16)


def test_bf16_bits_round_ties_to_even_and_keep_nan():
    """1 + 2**-8 and 1 + 3 * 2**-8 lie halfway between two bf16 values: they round to the
    even one (0x3F80, 0x3F82); a NaN product stays a quiet NaN."""
    one = 0x3F80
    a = np.array([[one, one]], np.uint16)
    b = np.array([[one, one, 0x7FC1], [0x3B80, 0x3C40, one]], np.uint16)  # 2**-8, 3 * 2**-8
    out = np.zeros((1, 3), np.uint16)
    dotgemm.gemm_groups(a, dotgemm.pack_groups(b), dotgemm.padded_init(None, 3, np.float32),
                        out, RAW)
    np.testing.assert_array_equal(out[0, :2], [0x3F80, 0x3F82])
    assert out[0, 2] & 0x7FC0 == 0x7FC0  # quiet NaN
