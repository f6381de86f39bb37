"""ops/cpu/blas.py: the kernels' GEMM (MKL's sequential cblas_?gemm, else numpy) against numpy."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from taskflow.ops.cpu import blas


@pytest.fixture(params=["mkl", "numpy"])
def backend(request):
    """Each backend in turn (MKL only where it is installed)."""
    handle = blas._mkl()
    if request.param == "mkl" and handle is None:
        pytest.skip("MKL is not installed here (taskflow then runs every GEMM on numpy)")
    saved = blas._state["mkl"]
    blas._state["mkl"] = handle if request.param == "mkl" else None
    yield request.param
    blas._state["mkl"] = saved


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_matches_numpy_for_every_operand_layout(backend, dtype):
    rng = np.random.default_rng(0)
    big = rng.standard_normal((70, 90)).astype(dtype)
    a_plain = rng.standard_normal((37, 23)).astype(dtype)
    b_plain = rng.standard_normal((23, 19)).astype(dtype)
    operands = {
        "plain": (a_plain, b_plain),
        "transposed": (np.ascontiguousarray(a_plain.T).T, np.ascontiguousarray(b_plain.T).T),
        "blocks of a larger array": (big[3:40, 5:28], big[40:63, 50:69]),
    }
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for what, (a, b) in operands.items():
        want = np.matmul(np.array(a, np.float64), np.array(b, np.float64))
        out = np.full((37, 19), np.nan, dtype)
        assert blas.gemm(a, b, out) is out
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol * 10, err_msg=what)
        # into the columns of a wider output, as a convolution writes a Concat's buffer
        wide = np.zeros((37, 40), dtype)
        blas.gemm(a, b, wide[:, 7:26])
        np.testing.assert_allclose(wide[:, 7:26], want, rtol=tol, atol=tol * 10, err_msg=what)
        assert not wide[:, :7].any() and not wide[:, 26:].any()


def test_operands_blas_cannot_take_go_to_numpy(backend):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((8, 12)).astype(np.float32)[:, ::2]  # no unit stride
    b = rng.standard_normal((6, 5)).astype(np.float32)
    out = np.empty((8, 5), np.float32)
    np.testing.assert_allclose(blas.gemm(a, b, out), a @ b, rtol=1e-5)
    ints = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(blas.gemm(ints, ints.T, np.empty((2, 2), int)), ints @ ints.T)


@pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64",
                    reason="taskflow depends on the mkl wheel on x86-64 Linux only")
def test_mkl_is_what_the_kernels_use_where_it_is_a_dependency():
    """Losing MKL silently (a moved library, a changed wheel layout) would cost 15-40% on
    every convolution: on x86-64 Linux it is installed with taskflow and must load."""
    assert blas._find_mkl() is not None, "the mkl wheel is a dependency on this platform"
    assert blas.backend() == "mkl"


def test_taskflow_blas_numpy_keeps_gemms_on_numpy():
    env = {**os.environ, "TASKFLOW_BLAS": "numpy"}
    out = subprocess.run([sys.executable, "-c", "from taskflow.ops.cpu import blas; "
                          "print(blas.backend())"], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "numpy"
