"""Sparse-weight kernels (``ops/cpu/sparse.py``): FusedGemm, FusedMatMul and 1x1 FusedConv with
``sparse=1`` against their references (which ignore the attribute: the zeros are exact), on
oneMKL's sparse BLAS and on the Numba loop (``TASKFLOW_SPARSE=numba``, and a process with
``TASKFLOW_BLAS=numpy``), at 90% and 50% sparsity, with empty rows and columns, strided
outputs, and the kernel threads splitting the rows.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import taskflow.ops as ops
from taskflow.ops.cpu import sparse
from taskflow.ops.cpu.common import is_channels_last, packed
from taskflow.ops.cpu.warmup import channels_last

from taskflow.errors import ShapeError

from .oracles import assert_close

#: kernel vs reference: another float32 summation order (CSR rows vs BLAS blocking).
TOL = (1e-4, 1e-4)


@pytest.fixture(params=["mkl", "numba"])
def backend(request, monkeypatch):
    """Run on oneMKL's sparse BLAS, then on the Numba loop (read per call)."""
    if request.param == "numba":
        monkeypatch.setenv("TASKFLOW_SPARSE", "numba")
    else:
        monkeypatch.delenv("TASKFLOW_SPARSE", raising=False)
        if sparse._bindings() is None:
            pytest.skip("no oneMKL sparse BLAS (mkl wheel missing or TASKFLOW_BLAS=numpy)")
    assert sparse.sparse_backend() == request.param
    return request.param


def pruned(rng: np.random.Generator, shape: tuple[int, ...], sparsity: float) -> np.ndarray:
    w = rng.standard_normal(shape).astype(np.float32)
    w.reshape(-1)[rng.permutation(w.size)[:round(sparsity * w.size)]] = 0
    return w


def check(op: str, args: list, attrs: dict) -> np.ndarray:
    """The cpu kernel with ``sparse=1`` against the reference without it; returns the kernel's."""
    spec = ops.get(op)
    want = spec.reference(*[None if a is None else np.ascontiguousarray(a) for a in args],
                          **attrs)
    got = spec.kernels["cpu"](*args, **attrs, sparse=1)
    assert_close(got, want, rtol=TOL[0], atol=TOL[1], what=f"{op} {attrs}")
    return got


def uses_csr(w: np.ndarray, trans: bool) -> bool:
    """Whether a kernel converted ``w`` to CSR (it is then in the packed-weight cache)."""
    def not_packed(_: np.ndarray) -> None:
        return None

    return isinstance(packed(w, ("csr", trans), not_packed), sparse.PackedCSR)


@pytest.mark.parametrize("sparsity", [0.9, 0.5])
@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_matches_the_reference(backend, kernel_threads, sparsity, trans_b):
    """512 rows: MKL's path (and, with 2 threads, row blocks on both at 50%), bias, alpha,
    Relu."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((512, 96), dtype=np.float32)
    b = pruned(rng, (64, 96) if trans_b else (96, 64), sparsity)
    c = rng.standard_normal(64).astype(np.float32)
    check("FusedGemm", [a, b, c], {"transB": trans_b, "alpha": 0.5, "activation": "Relu"})
    assert uses_csr(b, bool(trans_b))


def test_gemm_transposed_a_and_few_rows(backend):
    rng = np.random.default_rng(2)
    b = pruned(rng, (48, 40), 0.9)
    check("FusedGemm", [rng.standard_normal((48, 70), dtype=np.float32), b, None],
          {"transA": 1})
    for rows in (1, 3, 0):
        check("FusedGemm", [rng.standard_normal((rows, 48), dtype=np.float32), b, None], {})


def test_empty_rows_columns_and_an_all_zero_weight(backend):
    """Output channels without any weight (empty CSR rows), inputs no weight reads, and a
    weight that is all zeros (no CSR entries at all)."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((130, 64), dtype=np.float32)
    b = pruned(rng, (64, 50), 0.9)
    b[:, ::3] = 0   # output channels with no weight
    b[10:30] = 0    # inputs nobody reads
    bias = rng.standard_normal(50).astype(np.float32)
    y = check("FusedGemm", [a, b, bias], {})
    np.testing.assert_array_equal(y[:, ::3], np.broadcast_to(bias[::3], y[:, ::3].shape))
    zero = np.zeros((64, 50), np.float32)
    assert not check("FusedGemm", [a, zero, None], {}).any()
    assert sparse.pack_csr(zero).nnz == 0


def test_matmul_with_a_3d_input(backend, kernel_threads):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((3, 70, 64), dtype=np.float32)
    b = pruned(rng, (64, 80), 0.9)
    y = check("FusedMatMul", [a, b, rng.standard_normal(80).astype(np.float32)],
              {"activation": "Gelu"})
    assert y.shape == (3, 70, 80) and uses_csr(b, False)
    # a 3-D B has no sparse path: the attribute is ignored
    check("FusedMatMul", [a, pruned(rng, (3, 64, 8), 0.9)], {})


def test_1x1_convolution(backend, kernel_threads):
    """Channels-last in and out, bias, residual and activation; other convolutions ignore
    ``sparse``."""
    rng = np.random.default_rng(5)
    x = channels_last(rng.standard_normal((2, 48, 9, 9), dtype=np.float32))
    w = pruned(rng, (40, 48, 1, 1), 0.9)
    b = rng.standard_normal(40).astype(np.float32)
    z = channels_last(rng.standard_normal((2, 40, 9, 9), dtype=np.float32))
    y = check("FusedConv", [x, w, b, z], {"activation": "Relu"})
    assert is_channels_last(y) and uses_csr(w, False)
    w3 = pruned(rng, (40, 48, 3, 3), 0.9)
    check("FusedConv", [x, w3, b], {"pads": [1, 1, 1, 1]})
    w_strided = pruned(rng, (40, 48, 1, 1), 0.9)
    check("FusedConv", [x, w_strided, b], {"strides": [2, 2]})
    assert not uses_csr(w3, False) and not uses_csr(w_strided, False)


def test_float64_and_reduced_precision_keep_their_kernels():
    rng = np.random.default_rng(6)
    b = pruned(rng, (32, 16), 0.9).astype(np.float64)
    check("FusedGemm", [rng.standard_normal((8, 32)), b, None], {})
    assert not uses_csr(b, False)
    b32 = pruned(rng, (32, 16), 0.9)
    check("FusedGemm", [rng.standard_normal((8, 32), dtype=np.float32), b32, None],
          {"precision": "bf16"})
    assert not uses_csr(b32, False)


def test_csr_matmul_writes_a_strided_output_and_checks_shapes(backend):
    rng = np.random.default_rng(7)
    w = pruned(rng, (30, 64), 0.8)  # (N, K): CSR rows are output channels
    a = rng.standard_normal((300, 64), dtype=np.float32)
    out = np.full((300, 50), 7.0, np.float32)
    sparse.csr_matmul(a, sparse.pack_csr(w), out[:, 10:40])
    assert_close(out[:, 10:40], a @ w.T, rtol=TOL[0], atol=TOL[1])
    assert (out[:, :10] == 7).all() and (out[:, 40:] == 7).all()
    with pytest.raises(ShapeError, match="float32"):
        sparse.csr_matmul(a[:, :10], sparse.pack_csr(w), out[:, :30])
    with pytest.raises(ShapeError, match="2-D"):
        sparse.pack_csr(np.ones((2, 2, 2), np.float32))


def test_sparsity_and_block_rows():
    assert sparse.sparsity(np.zeros((0, 3))) == 0.0
    assert sparse.sparsity(np.eye(4)) == 0.75
    assert sparse.block_rows(4096, 4096) == 32 and sparse.block_rows(256, 64) == 256
    assert all(sparse.block_rows(k, k) % 8 == 0 for k in (1, 100, 1000, 10000))


def test_without_mkl_the_numba_loop_runs():
    """``TASKFLOW_BLAS=numpy`` (read when blas.py loads, so in a fresh process): no MKL, the
    Numba loop multiplies, and the kernel still agrees with the reference."""
    code = (
        "import numpy as np\n"
        "from taskflow import ops\n"
        "from taskflow.ops.cpu import sparse\n"
        "rng = np.random.default_rng(0)\n"
        "a = rng.standard_normal((100, 64), dtype=np.float32)\n"
        "b = rng.standard_normal((64, 32), dtype=np.float32)\n"
        "b[rng.random(b.shape) < 0.9] = 0\n"
        "y = ops.get('FusedGemm').kernels['cpu'](a, b, None, sparse=1)\n"
        "print(sparse.sparse_backend(), bool(np.allclose(y, a @ b, rtol=1e-4, atol=1e-4)))\n")
    env = {**os.environ, "TASKFLOW_BLAS": "numpy"}
    env.pop("TASKFLOW_SPARSE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["numba", "True"], out.stderr[-2000:]


def test_the_csr_copy_and_its_mkl_handle_live_as_long_as_the_weight(backend):
    import gc
    import weakref

    rng = np.random.default_rng(8)
    w = pruned(rng, (64, 48), 0.9)
    sparse.sparse_matmul(rng.standard_normal((300, 64), dtype=np.float32), w)
    csr = weakref.ref(packed(w, ("csr", False), lambda _: None))
    assert isinstance(csr(), sparse.PackedCSR)
    assert (csr()._handle is not None) == (backend == "mkl")
    del w
    gc.collect()
    assert csr() is None
