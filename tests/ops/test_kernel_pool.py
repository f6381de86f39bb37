"""The kernel pool (``run_tasks``) and the GEMM row tasks that run without Python in them.

The pool hands a call's tasks to the caller and the kernel threads from one counter; the GEMM
row blocks of FusedMatMul/FusedGemm run MKL and the epilogue in one Numba call per task
(``_gemm_epilogue_rows``), falling back to the Python block where MKL cannot read an operand.
These check the results on both routes, in float32 and float64, and the pool's contract:
every task exactly once, errors raised on the caller, concurrent callers, nested calls.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import taskflow.ops as ops
from taskflow.ops.cpu import blas, common, lowp, native_pool
from taskflow.ops.cpu import matmul as matmul_cpu

from taskflow.dask import threads


@pytest.fixture
def two_threads():
    threads.apply_kernel_threads(2)
    yield
    threads.reset_kernel_threads()


def reference(op: str, args: list, attrs: dict) -> np.ndarray:
    return ops.get(op).reference(*[np.array(a, order="C") for a in args], **attrs)


@pytest.mark.parametrize("route", ["python", "native"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["", "Relu", "Gelu", "HardSwish"])
def test_split_gemm_with_its_epilogue_matches_the_reference(two_threads, monkeypatch, dtype,
                                                           act, route):
    """A (512, 128) x (128, 384) product is split into row blocks, each a GEMM and the bias and
    activation in one task (a Python pool task, or a block of the native pool's job, float32
    only); every block's rows must be the reference's."""
    tasks: list[int] = []
    real = matmul_cpu.run_tasks
    monkeypatch.setattr(matmul_cpu, "run_tasks",
                        lambda fn, n: (tasks.append(n), real(fn, n))[1])
    jobs: list[bool] = []
    if route == "python":
        monkeypatch.setattr(native_pool, "ENABLED", False)
    else:
        shared = native_pool.pool()
        if shared is None:
            pytest.skip("no native pool without MKL")
        gemm = shared.gemm
        monkeypatch.setattr(shared, "gemm", lambda *args: (jobs.append(gemm(*args)), jobs[-1])[1])
    rng = np.random.default_rng(3)
    a = rng.standard_normal((8, 64, 128)).astype(dtype)
    w = rng.standard_normal((128, 384)).astype(dtype) / 8
    bias = rng.standard_normal(384).astype(dtype)
    attrs = {"activation": act} if act else {}
    got = ops.get("FusedMatMul").kernels["cpu"](a, w, bias, **attrs)
    want = reference("FusedMatMul", [a, w, bias], attrs)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    if route == "native" and dtype == np.float32:
        assert jobs == [True] and not tasks  # one native job, no Python pool tasks
    else:
        assert not any(jobs) and tasks and tasks[0] > 1  # split over the Python pool
    assert np.ptp(got[:, 0]) > 0.1  # the rows differ: each block wrote its own


def test_native_pool_blocks_run_once_and_helpers_take_some(two_threads):
    """Jobs of varied shapes in a row: every result right (no block lost, none run on a
    stale job's operands), and the helper thread ran some of the blocks."""
    shared = native_pool.pool()
    if shared is None:
        pytest.skip("no native pool without MKL")
    rng = np.random.default_rng(6)
    helped, start = 0, time.perf_counter()
    for i in range(400):
        m, k, n = 256 + 8 * (i % 40), 64 + i % 50, 96 + 4 * (i % 7)
        a = rng.standard_normal((m, k)).astype(np.float32)
        w = rng.standard_normal((k, n)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        y = np.full((m, n + 3), np.nan, np.float32)[:, :n]  # a block of a wider buffer
        assert shared.gemm(a, w, y, bias, (0, 0.0, 0.0), 32, 1)
        np.testing.assert_allclose(y, a @ w + bias, rtol=1e-4, atol=1e-3)
        helped += -(-m // 32) - shared.caller_blocks
        if helped and i >= 40 or time.perf_counter() - start > 20:
            break
    assert helped > 0


def test_native_bf16_jobs_run_once_match_the_row_blocks_and_helpers_take_some(two_threads):
    """bf16 jobs (each block rounds its rows of A into the shared bits buffer, then MKL's
    packed bf16 GEMM and the epilogue) in a row, interleaved with float32 jobs: each equals
    the Python route's blocks (lowp.gemm_bf16 + the epilogue) bit for bit up to summation
    order, and the helper ran some blocks."""
    shared = native_pool.pool()
    fns = lowp.mkl_functions("bf16", 64)
    if shared is None or fns is None or not shared.has_bf16:
        pytest.skip("no native pool or no MKL bf16 GEMM")
    rng = np.random.default_rng(8)
    helped, start = 0, time.perf_counter()
    for i in range(300):
        m, k, n = 256 + 8 * (i % 30), 64 + 16 * (i % 5), 64 + 32 * (i % 4)
        a = rng.standard_normal((m, k)).astype(np.float32)
        w = lowp.pack_bf16(rng.standard_normal((k, n)).astype(np.float32))
        bias = rng.standard_normal(n).astype(np.float32)
        y = np.full((m, n + 5), np.nan, np.float32)[:, :n]
        bits = np.empty((m, k), np.uint16)
        assert shared.gemm_bf16(a, bits, w.mkl(fns), y, bias, (1, 0.0, 0.0), 32, 1)  # ReLU
        want = np.maximum(lowp.gemm_bf16(a, w, np.empty((m, n), np.float32)) + bias, 0)
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(bits, lowp.to_bf16(a))
        helped += -(-m // 32) - shared.caller_blocks
        f = rng.standard_normal((k, n)).astype(np.float32)  # and a float32 job after it
        assert shared.gemm(a, f, y, None, (0, 0.0, 0.0), 64, 1)
        np.testing.assert_allclose(y, a @ f, rtol=1e-4, atol=1e-3)
        if helped and i >= 30 or time.perf_counter() - start > 20:
            break
    assert helped > 0


def test_native_wide_jobs_run_once_match_and_helpers_take_some(two_threads):
    """Jobs of pointwise_wide's kernel on a packed weight (a weight MatMul's route) in a row,
    interleaved with float32 GEMM jobs, with varied shapes (a last 8-lane block, K past the
    prefetch threshold) and activations: every result right, and the helper ran some."""
    from taskflow.ops.cpu import epilogue, pointwise_wide

    shared = native_pool.pool()
    if shared is None:
        pytest.skip("no native pool without a sequential BLAS")
    if "avx512f" not in lowp.cpu_features():
        pytest.skip("the 16-lane kernels run only where the CPU has AVX-512F")
    rng = np.random.default_rng(9)
    helped, start = 0, time.perf_counter()
    for i in range(200):
        m, k, n = 250 + 7 * (i % 30), 48 + 40 * (i % 4), 40 + 16 * (i % 5)  # n % 16 == 8
        a = rng.standard_normal((m, k)).astype(np.float32)
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        name = ["", "Relu", "Gelu"][i % 3]
        act = epilogue.activation_code(name, [])
        y = np.full((m, n), np.nan, np.float32)
        assert shared.wide(a, pointwise_wide.pack(w.T), y, bias, act, 36, 1)
        want = a @ w + bias
        want = ops.get(name).reference(want) if name else want
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
        helped += -(-m // 36) - shared.caller_blocks
        f = rng.standard_normal((k, n)).astype(np.float32)  # and a float32 GEMM job after it
        assert shared.gemm(a, f, y, None, (0, 0.0, 0.0), 64, 1)
        np.testing.assert_allclose(y, a @ f, rtol=1e-4, atol=1e-3)
        if helped and i >= 30 or time.perf_counter() - start > 20:
            break
    assert helped > 0
    assert not shared.wide(a, pointwise_wide.pack(w.T)[:-1], y, bias, act, 36, 1)  # refused


def test_gemm_rows_refuses_what_mkl_cannot_read_and_the_block_route_takes_it(two_threads):
    """Columns of A two elements apart are not a cblas matrix: ``gemm_rows`` must do nothing
    and say so, and FusedGemm must still be right (the Python block route)."""
    fn = blas.gemm_pointer(np.float32)
    if fn is None:
        pytest.skip("MKL is not loaded (TASKFLOW_BLAS=numpy or no mkl wheel)")
    rng = np.random.default_rng(4)
    wide = rng.standard_normal((512, 256)).astype(np.float32)
    a = wide[:, ::2]  # (512, 128), strides (1024, 8)
    w = rng.standard_normal((128, 256)).astype(np.float32)
    out = np.full((512, 256), 7.0, np.float32)
    assert not blas.gemm_rows(fn, a, w, out, 0, 512)
    assert (out == 7.0).all()
    assert blas.gemm_rows(fn, np.ascontiguousarray(a), w, out, 100, 300)
    np.testing.assert_allclose(out[100:300], a[100:300] @ w, rtol=1e-4, atol=1e-4)
    assert (out[:100] == 7.0).all() and (out[300:] == 7.0).all()
    bias = rng.standard_normal(256).astype(np.float32)
    got = ops.get("FusedGemm").kernels["cpu"](a, w, bias, activation="Relu")
    np.testing.assert_allclose(got, np.maximum(a @ w + bias, 0), rtol=1e-4, atol=1e-4)


def test_transposed_and_strided_operands_through_gemm(two_threads):
    """``blas.gemm`` on a transposed A, a transposed B and an output that is a column block of
    a wider array (a Concat's buffer) leaves the other columns alone."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((64, 300)).astype(np.float32).T  # (300, 64), column-major
    b = rng.standard_normal((48, 64)).astype(np.float32).T  # (64, 48), column-major
    buf = np.zeros((300, 100), np.float32)
    blas.gemm(a, b, buf[:, 20:68])
    np.testing.assert_allclose(buf[:, 20:68], a @ b, rtol=1e-4, atol=1e-4)
    assert not buf[:, :20].any() and not buf[:, 68:].any()


def test_every_task_runs_once_and_errors_reach_the_caller(two_threads):
    seen: list[int] = []
    lock = threading.Lock()

    def task(i: int) -> None:
        with lock:
            seen.append(i)

    common.run_tasks(task, 37)
    assert sorted(seen) == list(range(37))

    def failing(i: int) -> None:
        if i == 5:
            raise ValueError("task 5")

    with pytest.raises(ValueError, match="task 5"):
        common.run_tasks(failing, 8)
    common.run_tasks(task, 3)  # the pool still works after a failure
    assert sorted(seen[37:]) == [0, 1, 2]


def test_concurrent_and_nested_callers_share_the_pool(two_threads):
    """Two caller threads (a Dask worker's task threads) at once, each task itself calling
    ``run_tasks`` (a kernel inside a kernel): nothing deadlocks, every task runs once."""
    counts = np.zeros((2, 16, 4), np.int64)

    def caller(c: int) -> None:
        threads.apply_kernel_threads(2)

        def outer(i: int) -> None:
            def inner(j: int) -> None:
                counts[c, i, j] += 1
            common.run_tasks(inner, 4)
        for _ in range(20):
            common.run_tasks(outer, 16)

    workers = [threading.Thread(target=caller, args=(c,)) for c in range(2)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    assert not any(t.is_alive() for t in workers)
    assert (counts == 20).all()
