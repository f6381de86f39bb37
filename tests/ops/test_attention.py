"""FusedAttention, the batched MatMul and the fast erf/tanh of the epilogues against their
numpy references, on the layouts exporters produce and on edge shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numba import njit
from taskflow.ops.cpu import attention as attention_cpu
from taskflow.ops.cpu.blas import gemm_batch
from taskflow.ops.cpu.epilogue import erf_fast, exp32_nonpositive, exp_nonpositive, tanh_fast

from taskflow import ops

#: Largest error allowed, relative to the output's largest magnitude: float32 GEMMs summed in
#: another order, and the softmax's float64 sums.
RTOL = 1e-5


#: every test here runs with 1, then 2 kernel threads (tests/ops/conftest.py)
pytestmark = pytest.mark.usefixtures("kernel_threads")


def _close(got, want, rtol=RTOL):
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = max(1.0, float(np.nanmax(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale, equal_nan=True)


def _heads(rng, b, s, h, d, layout):
    """Q (B, H, S, D), K as the product's right operand (B, H, D, S) and V, in ``layout``."""
    x = [rng.standard_normal((b, s, h, d), dtype=np.float32) for _ in range(3)]
    if layout == "views":  # the exporters' Transpose of (B, S, H, D): strided views
        return x[0].transpose(0, 2, 1, 3), x[1].transpose(0, 2, 3, 1), x[2].transpose(0, 2, 1, 3)
    q, k, v = (np.ascontiguousarray(t.transpose(0, 2, 1, 3)) for t in x)
    if layout == "contiguous":
        return q, np.ascontiguousarray(k.transpose(0, 1, 3, 2)), v
    # merged heads (B*H, S, D), K given as a transposed view of (B*H, S, D)
    return (q.reshape(b * h, s, d), k.reshape(b * h, s, d).transpose(0, 2, 1),
            v.reshape(b * h, s, d))


def _mask(rng, kind, b, h, s, merged):
    neg = {"inf": -np.inf, "large": np.float32(-1e9), "bert": np.float32(-1e4)}
    if kind is None:
        return None
    if kind == "causal":
        m = np.triu(np.full((s, s), -np.inf, np.float32), 1)[None, None]
    elif kind == "full":
        m = rng.standard_normal((b, h, s, s), dtype=np.float32)
    else:  # padding mask per sample, broadcast over heads and query rows
        keep = rng.random((b, 1, 1, s)) < 0.7
        keep[..., 0] = True  # every row keeps a key
        m = np.where(keep, np.float32(0), np.float32(neg[kind])).astype(np.float32)
    if merged:
        m = np.broadcast_to(m, (b, h, s, s)).reshape(b * h, s, s)
    return m


SHAPES = [(2, 16, 3, 8), (1, 7, 1, 5), (3, 13, 4, 32), (2, 64, 2, 16)]


@pytest.mark.parametrize("layout", ["views", "contiguous", "merged"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask", [None, "inf", "large", "bert", "causal", "full"])
def test_fused_attention_matches_reference(layout, shape, mask):
    rng = np.random.default_rng(sum(shape))
    b, s, h, d = shape
    q, k, v = _heads(rng, b, s, h, d, layout)
    m = _mask(rng, mask, b, h, s, layout == "merged")
    spec = ops.get("FusedAttention")
    for attrs in ({}, {"scale": 1 / math.sqrt(d)}, {"scale": math.sqrt(d), "divide": 1}):
        want = spec.reference(q, k, v, m, **attrs)
        _close(spec.kernel("cpu")(q, k, v, m, **attrs), want)


def test_fused_attention_output_merges_heads_as_a_view():
    q, k, v = _heads(np.random.default_rng(0), 2, 8, 3, 4, "views")
    y = ops.get("FusedAttention").kernel("cpu")(q, k, v)
    assert y.transpose(0, 2, 1, 3).flags.c_contiguous  # (B, S, H, D) memory
    _close(y, ops.get("FusedAttention").reference(q, k, v))


def test_fully_masked_row_is_nan_as_in_the_reference():
    q, k, v = _heads(np.random.default_rng(1), 1, 4, 2, 3, "contiguous")
    m = np.zeros((1, 1, 4, 4), np.float32)
    m[..., 2, :] = -np.inf
    want = ops.get("FusedAttention").reference(q, k, v, m)
    got = ops.get("FusedAttention").kernel("cpu")(q, k, v, m)
    assert np.isnan(want[..., 2, :]).all() and np.isnan(got[..., 2, :]).all()
    _close(got, want)


@pytest.mark.parametrize("t", [5, 8, 67, 130])
def test_rows_with_nan_or_inf_scores_and_ragged_lengths_follow_the_reference(t):
    """The row maximum and sum run 8 lanes wide (a tail of t % 8, blocks of 64): a nan score
    anywhere in a row (first lane, a vector, the tail) makes the row nan, a +inf score too
    (inf - inf), a -inf one a zero weight; the other rows are untouched."""
    rng = np.random.default_rng(t)
    q, k, v = _heads(rng, 1, t, 2, 4, "contiguous")
    m = np.zeros((1, 1, t, t), np.float32)
    bad = {0: np.nan, t - 1: np.nan, t // 2: np.inf, min(9, t - 1): -np.inf}
    for row, (col, value) in enumerate(bad.items()):
        m[0, 0, row + 1, col] = value
    want = ops.get("FusedAttention").reference(q, k, v, m)
    got = ops.get("FusedAttention").kernel("cpu")(q, k, v, m)
    assert np.isnan(want).any() and np.isfinite(want[:, :, 0]).all()
    _close(got, want)


@pytest.mark.parametrize("layout", ["views", "merged"])
def test_nan_to_zero_gives_fully_masked_rows_zero_weights(layout):
    rng = np.random.default_rng(7)
    q, k, v = _heads(rng, 2, 6, 3, 4, layout)
    m = np.zeros((2, 3, 6, 6), np.float32)
    m[0, :, 1, :] = -np.inf
    m[1, 2, 4, :] = -np.inf
    m = m.reshape(6, 6, 6) if layout == "merged" else m
    spec = ops.get("FusedAttention")
    want = spec.reference(q, k, v, m, nan_to_zero=1)
    got = spec.kernel("cpu")(q, k, v, m, nan_to_zero=1)
    assert not np.isnan(want).any()
    if layout == "views":
        assert (want[0, :, 1] == 0).all() and (want[1, 2, 4] == 0).all()
    _close(got, want)


@pytest.mark.parametrize("case", ["float64", "broadcast", "empty", "2d", "mask64"])
def test_fused_attention_outside_the_fast_path_runs_the_reference(case):
    rng = np.random.default_rng(2)
    q, k, v = _heads(rng, 2, 5, 2, 3, "contiguous")
    m = None
    if case == "float64":
        q, k, v = (t.astype(np.float64) for t in (q, k, v))
    elif case == "broadcast":
        k, v = k[:1], v[:1]
    elif case == "empty":
        q = q[:, :, :0]
    elif case == "2d":
        q, k, v = q[0, 0], k[0, 0], v[0, 0]
    else:
        m = np.zeros((1, 1, 1, 5))
    want = ops.get("FusedAttention").reference(q, k, v, m, scale=0.5)
    got = ops.get("FusedAttention").kernel("cpu")(q, k, v, m, scale=0.5)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shapes", [
    ((2, 3, 7, 5), (2, 3, 5, 9)),          # 4-D batched
    ((6, 33, 17), (6, 17, 1)),             # 3-D, one column
    ((1, 1, 1, 4), (1, 1, 4, 3)),          # batch 1, one row
    ((4, 65, 130), (130, 70)),             # 2-D right operand: row blocks of one GEMM
    ((2, 1, 4, 5), (3, 5, 6)),             # broadcast batch: numpy's matmul
])
def test_matmul_kernel_matches_reference(shapes):
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal(s, dtype=np.float32) for s in shapes)
    _close(ops.get("MatMul").kernel("cpu")(a, b), ops.get("MatMul").reference(a, b))


def test_matmul_kernel_reads_transposed_views():
    x = np.random.default_rng(4).standard_normal((2, 11, 3, 6), dtype=np.float32)
    q, kt = x.transpose(0, 2, 1, 3), x.transpose(0, 2, 3, 1)
    _close(ops.get("MatMul").kernel("cpu")(q, kt), np.matmul(q, kt))


def test_gemm_batch_interleaved_output_and_alpha():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((3, 4, 5), dtype=np.float32)
    b = rng.standard_normal((3, 5, 6), dtype=np.float32).transpose(0, 2, 1).copy()
    out = np.zeros((4, 3, 6), np.float32).transpose(1, 0, 2)  # heads interleaved per row
    gemm_batch(a, b.transpose(0, 2, 1), out, alpha=0.25)
    _close(out, 0.25 * np.matmul(a, b.transpose(0, 2, 1)))


def test_exp_nonpositive_within_its_bound():
    xs = np.concatenate([-np.linspace(0, 87, 200001), [-0.0, -1e-30, -86.99, -87.0]])
    rel = max(abs(exp_nonpositive(v) - math.exp(v)) / math.exp(v) for v in xs)
    assert rel <= 1e-8, rel
    assert exp_nonpositive(-87.5) == 0.0 and exp_nonpositive(-math.inf) == 0.0
    assert exp_nonpositive(-3.4e38) == 0.0 and math.isnan(exp_nonpositive(math.nan))


@njit(cache=False)
def _exp32_all(x):
    y = np.empty_like(x)
    for j in range(x.shape[0]):
        y[j] = exp32_nonpositive(x[j])
    return y


def test_exp32_nonpositive_within_three_ulp():
    """The float32 exp of the per-head softmax: within 3 float32 ulp of exp over [-87, 0]
    (checked in float64), in the compiled loop it runs in; 0 below -87; NaN stays NaN."""
    xs = np.concatenate([-np.linspace(0, 87, 400001), [-0.0, -1e-30, -86.99, -87.0],
                         -np.random.default_rng(5).exponential(8, 100000)]).astype(np.float32)
    xs = xs[xs >= -87]
    want = np.exp(xs.astype(np.float64))
    rel = np.abs(_exp32_all(xs) - want) / want
    assert rel.max() <= 3 * 2.0**-24 * 2, rel.max()  # 3 ulp of a float32 in [1, 2): 3 * 2**-23
    odd = _exp32_all(np.array([-87.5, -np.inf, -3.4e38, np.nan, 0.0], np.float32))
    assert (odd[:3] == 0).all() and np.isnan(odd[3]) and odd[4] == 1


@pytest.mark.parametrize("mask", [None, "bert", "causal"])
def test_fused_attention_without_mkl_matches_reference(monkeypatch, mask):
    # the per-head kernel needs MKL's sgemm; without it (TASKFLOW_BLAS=numpy, no MKL) the
    # groups of heads go through gemm_batch and numpy's exp
    monkeypatch.setattr(attention_cpu, "gemm_pointer", lambda dtype: None)
    rng = np.random.default_rng(8)
    q, k, v = _heads(rng, 2, 9, 3, 4, "views")
    m = _mask(rng, mask, 2, 3, 9, False)
    spec = ops.get("FusedAttention")
    _close(spec.kernel("cpu")(q, k, v, m, scale=0.5), spec.reference(q, k, v, m, scale=0.5))


def test_fast_erf_and_tanh_within_their_bounds():
    xs = np.linspace(-12, 12, 240001)
    erf_err = max(abs(erf_fast(v) - math.erf(v)) for v in xs)
    tanh_err = max(abs(tanh_fast(v) - math.tanh(v)) for v in xs)
    assert erf_err <= 2e-7 and tanh_err <= 3e-7
    assert math.isnan(erf_fast(math.nan)) and math.isnan(tanh_fast(math.nan))


@pytest.mark.parametrize("form", [[], [1.0]], ids=["erf", "tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 17, 40), (64, 96)])
def test_fused_matmul_gelu_epilogue_matches_reference(shape, dtype, form):
    rng = np.random.default_rng(6)
    a = 2 * rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((shape[-1], 33)).astype(dtype)
    bias = rng.standard_normal(33).astype(dtype)
    spec = ops.get("FusedMatMul")
    want = spec.reference(a, w, bias, activation="Gelu", activation_params=form)
    unfused = ops.get("Gelu").reference(np.matmul(a, w) + bias,
                                        approximate="tanh" if form else "none")
    _close(want, unfused)
    _close(spec.kernel("cpu")(a, w, bias, activation="Gelu", activation_params=form), want)
    if form:  # the two forms differ by up to ~1e-3 here: the parameter is really read
        other = spec.kernel("cpu")(a, w, bias, activation="Gelu")
        assert np.abs(other - want).max() > 1e-5


@pytest.mark.parametrize("bias_shape", [None, (300,), (1, 1, 300)])
def test_fused_matmul_epilogue_inside_split_gemm_blocks(bias_shape):
    # big enough to be split into row blocks over 2 kernel threads: each block applies the
    # bias and activation itself
    rng = np.random.default_rng(9)
    a = rng.standard_normal((4, 96, 128), dtype=np.float32)
    w = rng.standard_normal((128, 300), dtype=np.float32) / 8
    bias = None if bias_shape is None else rng.standard_normal(bias_shape, dtype=np.float32)
    spec = ops.get("FusedMatMul")
    for attrs in ({"activation": "Gelu", "activation_params": [1.0]}, {"activation": "Relu"},
                  {}):
        want = spec.reference(a, w, bias, **attrs)
        got = spec.kernel("cpu")(a, w, bias, **attrs)
        _close(got, want)
        assert np.std(want) > 0.1
