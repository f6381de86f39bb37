"""Gemm, MatMul, Einsum, FusedGemm and FusedMatMul against ONNX Runtime and onnx's
ReferenceEvaluator (the fused ops against the unfused ops composed)."""

from __future__ import annotations

import numpy as np
import pytest
import taskflow.ops as ops
from hypothesis import given, settings
from hypothesis import strategies as st

from taskflow.errors import ShapeError

from .oracles import assert_close, run_onnx_reference, run_ort, spy_wide_rows
from .test_conv import ACTS, unfused_activation

DEFAULT_TOL = (1e-5, 1e-6)
#: (rtol, atol) per op; ops absent here use DEFAULT_TOL.
TOL: dict[str, tuple[float, float]] = {}

def tol(op):
    rtol, atol = TOL.get(op, DEFAULT_TOL)
    return {"rtol": rtol, "atol": atol}


ORACLES = {"ort": run_ort, "reference": run_onnx_reference}


def check(op, inputs, attrs, oracles=("ort", "reference")):
    got = ops.get(op)(*inputs, **attrs)
    for name in oracles:
        want = ORACLES[name](op, inputs, attrs)
        assert_close(got[0], want[0], **tol(op), what=f"{op} vs {name}, {attrs}")
    return got[0]


def randn(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@st.composite
def gemm_cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    m, k, n = (draw(st.integers(1, 8)) for _ in range(3))
    ta, tb = draw(st.integers(0, 1)), draw(st.integers(0, 1))
    a = randn(rng, *((k, m) if ta else (m, k)))
    b = randn(rng, *((n, k) if tb else (k, n)))
    c_shape = draw(st.sampled_from([None, (), (n,), (1, n), (m, 1), (m, n)]))
    attrs = {"alpha": draw(st.sampled_from([1.0, 0.5, -2.0])),
             "beta": draw(st.sampled_from([1.0, 0.0, 3.0])), "transA": ta, "transB": tb}
    return [a, b] + ([] if c_shape is None else [randn(rng, *c_shape)]), attrs


@settings(max_examples=80, deadline=None)
@given(gemm_cases())
def test_gemm_matches_oracles(case):
    check("Gemm", *case)


@st.composite
def matmul_shapes(draw):
    """Two numpy-matmul-compatible shapes: 1-D operands and broadcast batch dimensions."""
    m, k, n = (draw(st.integers(1, 6)) for _ in range(3))
    batch = draw(st.lists(st.integers(1, 3), max_size=2))

    def batch_of():
        keep = draw(st.integers(0, len(batch)))
        return [draw(st.sampled_from([d, 1])) for d in batch[len(batch) - keep:]]

    a = [k] if draw(st.booleans()) and len(batch) < 2 else batch_of() + [m, k]
    b = [k] if draw(st.booleans()) and len(a) > 1 else batch_of() + [k, n]
    return a, b


@settings(max_examples=80, deadline=None)
@given(matmul_shapes(), st.integers(0, 2**32 - 1))
def test_matmul_matches_oracles(shapes, seed):
    rng = np.random.default_rng(seed)
    a, b = (randn(rng, *s) for s in shapes)
    y = check("MatMul", [a, b], {})
    assert y.shape == np.matmul(a, b).shape


@pytest.mark.parametrize(("a", "b"), [((0, 3, 4), (4, 5)), ((3, 0), (0, 4)), ((1, 1), (1, 1)),
                                      ((2, 1, 3, 4), (5, 4, 2))])
def test_matmul_edge_shapes(a, b):
    rng = np.random.default_rng(0)
    check("MatMul", [randn(rng, *a), randn(rng, *b)], {})


@pytest.mark.parametrize(("m", "k", "n"), [(0, 3, 4), (1, 1, 1), (1, 5, 3)])
def test_gemm_edge_shapes(m, k, n):
    rng = np.random.default_rng(1)
    check("Gemm", [randn(rng, m, k), randn(rng, n, k), randn(rng, n)], {"transB": 1})


#: equation -> operand shapes, letters sized from a per-case random table.
EQUATIONS = {
    "ij,jk->ik": ["ij", "jk"],
    "bij,bjk->bik": ["bij", "bjk"],
    "bhqd,bhkd->bhqk": ["bhqd", "bhkd"],  # attention scores
    "ij->ji": ["ij"],
    "ii->i": ["ii"],
    "ii": ["ii"],  # implicit output: the trace
    "ij->": ["ij"],
    "i,j->ij": ["i", "j"],
    "ij,ij->ij": ["ij", "ij"],
    "ij,jk": ["ij", "jk"],  # implicit output "ik"
    "...ij,...jk->...ik": ["bij", "bjk"],  # ONNX wants every "..." to span the same rank
    "...ij->...ji": ["hbij"],
    "bi,bj,ij->b": ["bi", "bj", "ij"],
    "ij,jk,kl->il": ["ij", "jk", "kl"],
}


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(EQUATIONS)), st.integers(0, 2**32 - 1))
def test_einsum_matches_oracles(equation, seed):
    rng = np.random.default_rng(seed)
    size = dict(zip("bhijklqd", rng.integers(1, 5, 8)))
    inputs = [randn(rng, *(size[ch] for ch in term)) for term in EQUATIONS[equation]]
    check("Einsum", inputs, {"equation": equation})


def test_einsum_integers_spaces_and_owned_output():
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    check("Einsum", [a, np.arange(4, dtype=np.int64)], {"equation": "ij,j->i"})
    assert ops.get("Einsum").reference(a, equation="ij -> ji").dtype == np.int64
    y = ops.get("Einsum").reference(a, equation="ij->ij")
    assert not np.shares_memory(y, a)  # never a view of an input


# --------------------------------------------------------------------------------------------
# Fused ops: compared with the unfused references plus the ONNX activation op run by ORT.

@settings(max_examples=40, deadline=None)
@given(gemm_cases(), st.sampled_from(ACTS))
def test_fused_gemm_is_gemm_then_activation(case, act):
    inputs, attrs = case
    activation, params = act
    want = unfused_activation(ops.get("Gemm").reference(*inputs, **attrs), activation, params)
    got = ops.get("FusedGemm").reference(*inputs, **attrs, activation=activation,
                                         activation_params=params)
    assert_close(got, want, **tol("FusedGemm"),
                 what=f"FusedGemm {activation} {attrs}")


@settings(max_examples=40, deadline=None)
@given(matmul_shapes(), st.sampled_from(ACTS), st.booleans(), st.integers(0, 2**32 - 1))
def test_fused_matmul_is_matmul_add_activation(shapes, act, with_bias, seed):
    rng = np.random.default_rng(seed)
    a, b = (randn(rng, *s) for s in shapes)
    y = ops.get("MatMul").reference(a, b)
    bias = randn(rng, *y.shape[-1:]) if with_bias else None
    activation, params = act
    want = unfused_activation(y + bias if with_bias else y, activation, params)
    got = ops.get("FusedMatMul").reference(a, b, bias, activation=activation,
                                           activation_params=params)
    assert_close(got, want, **tol("FusedMatMul"),
                 what=f"FusedMatMul {activation}")


def test_dtype_is_preserved():
    rng = np.random.default_rng(1)
    a, b = randn(rng, 3, 4), randn(rng, 4, 5)
    c64 = randn(rng, 5, dtype=np.float64)  # a float64 C or bias must not upcast
    assert ops.get("Gemm").reference(a, b, c64, alpha=0.5, beta=2.0).dtype == np.float32
    assert ops.get("FusedMatMul").reference(a, b, c64, activation="Relu").dtype == np.float32
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    assert check("Gemm", [a64, b64], {"alpha": 0.5}).dtype == np.float64
    assert check("MatMul", [a64, b64], {}).dtype == np.float64


def test_gemm_shape_errors():
    with pytest.raises(ShapeError, match="inner dimensions"):
        ops.get("Gemm").reference(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32))
    with pytest.raises(ShapeError, match="2-D"):
        ops.get("Gemm").reference(np.zeros(3, np.float32), np.zeros((3, 2), np.float32))


def test_registration():
    for name in ("Gemm", "MatMul", "Einsum", "FusedGemm", "FusedMatMul"):
        assert ops.get(name).kind == "contraction"
    assert ops.get("FusedGemm").domain == ops.get("FusedMatMul").domain == "taskflow"
    assert ops.get("Einsum").check(3, {"equation": "i,i,i->"}) is None


def test_flops_on_known_shapes():
    gemm = ops.get("Gemm").flops
    # ResNet-50 classifier: 2 * 1 * 1000 * 2048, + 1000 bias adds.
    assert gemm([(1, 2048), (1000, 2048), (1000,)], [(1, 1000)], transB=1) == 4_097_000
    assert gemm([(2048, 1), (2048, 1000)], [(1, 1000)], transA=1) == 4_096_000
    matmul = ops.get("MatMul").flops
    assert matmul([(8, 128, 64), (64, 128)], [(8, 128, 128)]) == 2 * 8 * 128 * 128 * 64
    assert matmul([(64,), (64, 10)], [(10,)]) == 2 * 64 * 10
    fused = ops.get("FusedMatMul").flops
    assert fused([(4, 8), (8, 16), (16,)], [(4, 16)], activation="Gelu") == 2 * 4 * 8 * 16 + 128
    einsum = ops.get("Einsum").flops
    assert einsum([(8, 4, 5), (8, 5, 6)], [(8, 4, 6)], equation="bij,bjk->bik") == 2 * 960
    assert einsum([(2, 3, 4, 5), (5, 6)], [(2, 3, 4, 6)],
                  equation="...ij,...jk->...ik") == 2 * 2 * 3 * 4 * 5 * 6
    assert einsum([(3, 4), (3, 4)], [(3, 4)], equation="ij,ij->ij") == 12  # products only
    assert einsum([(3, 4)], [(4,)], equation="ij->j") == 12  # one add per element
    # A chain is costed along numpy's contraction path: two n^3 products, not one n^4 loop.
    assert einsum([(6, 6)] * 3, [(6, 6)], equation="ij,jk,kl->il") == 2 * (2 * 6**3)


@pytest.mark.parametrize("registered", [True, False], ids=["weight", "activation"])
@pytest.mark.parametrize("act", ACTS, ids=lambda a: a[0] or "none")
def test_fused_matmul_on_a_registered_weight_runs_the_wide_kernel(monkeypatch, act,
                                                                   registered):
    """FusedMatMul whose B is a model's weight (registered as the plan registers its
    initializers) with whole 16-lane vectors of columns runs the 16-lane 1x1 kernel where the
    CPU has AVX-512F (and oneMKL does not run the GEMMs: there only on K <= 64); a B that is
    not registered (an activation) takes the GEMM. Both match the unfused ops: 203 rows (row
    tasks and a last block of 5), 136 inputs (prefetched rows), 80 outputs (64 + 16)."""
    from taskflow.ops.cpu import blas, common, lowp, matmul

    monkeypatch.setattr(matmul, "WIDE_MIN_MACS", 0)  # a small case: the size floor lowered
    rng = np.random.default_rng(30)
    a = randn(rng, 7, 29, 136)  # 203 rows: at least 2 * MIN_BLOCK
    b = randn(rng, 136, 80) * np.float32(0.1)
    bias = randn(rng, 80)
    if registered:
        common.mark_constant([b])
    assert common.is_constant(b) == registered and not common.is_constant(b.T)
    calls = spy_wide_rows(monkeypatch)
    activation, params = act
    got = ops.get("FusedMatMul").kernels["cpu"](a, b, bias, activation=activation,
                                                activation_params=params)
    pre = a @ b + bias
    want = unfused_activation(pre, activation, params)
    assert_close(got, want, rtol=1e-4, atol=1e-5, what=f"FusedMatMul {activation}")
    assert np.ptp(pre.reshape(-1, 80), axis=0).min() > 0.1  # every output varies over rows
    assert np.ptp(want) > 0.5
    wide = registered and "avx512f" in lowp.cpu_features() and blas.backend() != "mkl"
    assert sum(calls) == (7 * 29 if wide else 0)
