"""ops/cpu/blas.py: the kernels' GEMM (MKL's or OpenBLAS's sequential cblas_?gemm, else numpy)
against numpy, and which library runs it."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from taskflow.ops.cpu import blas


@pytest.fixture(params=["mkl", "openblas", "numpy"])
def backend(request):
    """Each library in turn (MKL and OpenBLAS only where they are installed)."""
    if request.param == "mkl" and blas._mkl() is None:
        pytest.skip("MKL is not installed here (taskflow then runs the GEMMs on OpenBLAS)")
    if request.param == "openblas" and not blas._load_openblas():
        pytest.skip("the scipy-openblas32 wheel is not installed here")
    saved = blas.backend()
    blas._state["backend"] = request.param
    yield request.param
    blas._state["backend"] = saved


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


def test_gemm_batch_matches_numpy_for_every_layout(backend):
    """The batched product of Winograd and attention: plain, transposed (a view), and into
    heads interleaved in a (B, S, H, D) output, through the library of each backend."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((6, 33, 20)).astype(np.float32)
    b = rng.standard_normal((6, 20, 17)).astype(np.float32)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    out = np.full((6, 33, 17), np.nan, np.float32)
    np.testing.assert_allclose(blas.gemm_batch(a, b, out), want, rtol=1e-4, atol=1e-4)
    bt = np.ascontiguousarray(b.transpose(0, 2, 1)).transpose(0, 2, 1)
    np.testing.assert_allclose(blas.gemm_batch(a, bt, out, alpha=0.5), 0.5 * want, rtol=1e-4,
                               atol=1e-4)
    heads = np.full((33, 6, 17), np.nan, np.float32)  # (S, H, D): heads 17 floats apart
    blas.gemm_batch(a, b, heads.transpose(1, 0, 2))
    np.testing.assert_allclose(heads.transpose(1, 0, 2), want, rtol=1e-4, atol=1e-4)
    assert (blas.batch_function() is None) == (backend == "numpy")


def test_operands_blas_cannot_take_go_to_numpy(backend):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((8, 12)).astype(np.float32)[:, ::2]  # no unit stride
    b = rng.standard_normal((6, 5)).astype(np.float32)
    out = np.empty((8, 5), np.float32)
    np.testing.assert_allclose(blas.gemm(a, b, out), a @ b, rtol=1e-5)
    ints = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(blas.gemm(ints, ints.T, np.empty((2, 2), int)), ints @ ints.T)


def _fresh(code: str, **env: str) -> str:
    """``code``'s output in a fresh process (the library is chosen once, at first use), with
    ``env`` over this one's (``TASKFLOW_BLAS`` and ``TASKFLOW_ISA`` unset unless given)."""
    base = {k: v for k, v in os.environ.items() if k not in ("TASKFLOW_BLAS", "TASKFLOW_ISA")}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env},
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(sys.platform != "linux" or platform.machine() != "x86_64",
                    reason="taskflow depends on the mkl wheel on x86-64 Linux only")
def test_a_sequential_blas_is_what_the_kernels_use_where_it_is_a_dependency():
    """Losing the sequential GEMM silently (a moved library, a changed wheel layout) would
    cost 15-40% on every convolution: on x86-64 Linux MKL and OpenBLAS are installed with
    taskflow, and the kernels take MKL on Intel CPUs, OpenBLAS on others."""
    assert blas._find_mkl() is not None, "the mkl wheel is a dependency on this platform"
    want = "mkl" if blas.is_intel() else "openblas"
    assert _fresh("from taskflow.ops.cpu import blas; print(blas.backend(), blas.has_mkl())") \
        == f"{want} True"


@pytest.mark.parametrize("value, want", [("numpy", "numpy False"), ("mkl", "mkl True"),
                                         ("openblas", "openblas True")])
def test_taskflow_blas_forces_a_library(value, want):
    if value != "numpy" and blas._mkl() is None:
        pytest.skip("MKL is not installed here")
    if value == "openblas" and not blas._load_openblas():
        pytest.skip("the scipy-openblas32 wheel is not installed here")
    code = ("import numpy as np; from taskflow.ops.cpu import blas; "
            "a = np.arange(12, dtype=np.float32).reshape(3, 4); "
            "ok = np.allclose(blas.gemm(a, a.T, np.empty((3, 3), np.float32)), a @ a.T); "
            "print(blas.backend(), blas.has_mkl(), ok)")
    assert _fresh(code, TASKFLOW_BLAS=value) == f"{want} True"


def test_an_isa_cap_keeps_the_float_gemms_on_mkl():
    """``TASKFLOW_ISA`` caps MKL only; it is how the AVX2 paths are tested, so ``auto`` must
    not hand the GEMMs to OpenBLAS (which ignores the cap) under it."""
    if blas._mkl() is None:
        pytest.skip("MKL is not installed here")
    assert _fresh("from taskflow.ops.cpu import blas; print(blas.backend())",
                  TASKFLOW_ISA="avx2") == "mkl"


def test_openblas_stays_on_one_thread_and_leaves_numpys_alone():
    """The kernels' OpenBLAS runs on the calling thread even after threadpoolctl raised every
    BLAS library's thread count (two tasks would otherwise put 2 x 2 threads on 2 cores),
    and loading it does not change numpy's own BLAS threads."""
    if not blas._load_openblas():
        pytest.skip("the scipy-openblas32 wheel is not installed here")
    code = """
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
from taskflow.ops.cpu import blas, openblas
def numpy_threads():
    return sorted(i["num_threads"] for i in threadpool_info()
                  if i["user_api"] == "blas" and i["filepath"] != openblas.find())
before = numpy_threads()
blas._load_openblas()
after = numpy_threads()
fn = blas._state["openblas-sgemm"]
a = np.ones((64, 32), np.float32); out = np.empty((64, 64), np.float32)
with threadpool_limits(limits=2):
    raised = openblas.LIB.scipy_openblas_get_num_threads()
    assert blas.gemm_rows(fn, a, a.T, out, 0, 64)
    pinned = openblas.LIB.scipy_openblas_get_num_threads()
blas._state["backend"] = "openblas"  # the batched product is pinned too
batch = np.empty((3, 64, 64), np.float32)
with threadpool_limits(limits=2):
    blas.gemm_batch(np.ones((3, 64, 32), np.float32), np.ones((3, 32, 64), np.float32), batch)
    batch_pinned = openblas.LIB.scipy_openblas_get_num_threads()
print(before == after, raised, pinned, batch_pinned, bool((out == 32).all()),
      bool((batch == 32).all()))
"""
    assert _fresh(code, TASKFLOW_BLAS="numpy") == "True 2 1 1 True True"


def test_without_mkl_the_float_gemms_take_openblas(monkeypatch):
    """Where oneMKL is missing (another platform, or uninstalled), ``auto`` takes OpenBLAS on
    any CPU, and a forced ``mkl`` says it is missing and does the same."""
    if not blas._load_openblas():
        pytest.skip("the scipy-openblas32 wheel is not installed here")
    monkeypatch.setattr(blas, "_mkl", lambda: None)
    monkeypatch.setenv("TASKFLOW_BLAS", "auto")
    assert blas._pick() == "openblas"
    monkeypatch.setenv("TASKFLOW_BLAS", "mkl")
    with pytest.warns(RuntimeWarning, match="TASKFLOW_BLAS=mkl but that library is not"):
        assert blas._pick() == "openblas"
