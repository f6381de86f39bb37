"""Thread plan: cgroup quota parsing (on fake files), affinity cap, the budget, applying it."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from taskflow import cli
from taskflow.dask import threads
from taskflow.dask.threads import (
    CoreCount,
    ThreadBudgetError,
    ThreadPlan,
    cgroup_cpu_quota,
    default_plan,
    detect_cores,
    make_plan,
    measure_plan,
)
from taskflow.errors import TaskflowError


def write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def proc(tmp_path):
    """A fake /proc/self/cgroup: the process sits at the root of both hierarchies."""
    return write(tmp_path, "proc_cgroup", "0::/\n3:cpu,cpuacct:/\n")


# --- cgroup parsing ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("150000 100000\n", 1.5),
    ("400000 100000", 4.0),
    ("max 100000\n", None),
    ("garbage", None),
    ("", None),
])
def test_cgroup_v2_cpu_max(tmp_path, proc, text, expected):
    root = tmp_path / "cg"
    write(root, "cpu.max", text)
    found = cgroup_cpu_quota(root, proc)
    assert (found and found[0]) == expected
    if expected is not None:
        assert found[1] == str(root / "cpu.max")


def test_cgroup_v2_nested_limits_take_the_tightest(tmp_path):
    root = tmp_path / "cg"
    proc = write(tmp_path, "proc_cgroup", "0::/kubepods/pod1\n")
    write(root, "cpu.max", "max 100000")
    write(root, "kubepods/cpu.max", "300000 100000")
    write(root, "kubepods/pod1/cpu.max", "max 100000")
    assert cgroup_cpu_quota(root, proc) == (3.0, str(root / "kubepods/cpu.max"))


@pytest.mark.parametrize("mount", ["cpu", "cpu,cpuacct", "cpuacct,cpu"])
@pytest.mark.parametrize("quota, expected", [("-1", None), ("250000", 2.5), ("50000", 0.5)])
def test_cgroup_v1_cfs_quota(tmp_path, proc, mount, quota, expected):
    root = tmp_path / "cg"
    write(root, f"{mount}/cpu.cfs_quota_us", quota + "\n")
    write(root, f"{mount}/cpu.cfs_period_us", "100000\n")
    found = cgroup_cpu_quota(root, proc)
    assert (found and found[0]) == expected


def test_no_cgroup_files_means_no_quota(tmp_path, proc):
    assert cgroup_cpu_quota(tmp_path / "missing", proc) is None
    assert cgroup_cpu_quota(tmp_path / "missing", tmp_path / "no_proc_file") is None


# --- usable cores --------------------------------------------------------------------------------
@pytest.mark.parametrize("affinity, quota, cores", [
    (8, None, 8),       # no quota: the affinity mask decides
    (8, "250000", 2),   # 2.5 CPUs rounds down: 3 threads would be throttled
    (8, "50000", 1),    # under one CPU still leaves one core
    (2, "400000", 2),   # affinity caps a larger quota
])
def test_detect_cores_caps_affinity_by_quota(tmp_path, proc, affinity, quota, cores):
    root = tmp_path / "cg"
    if quota is not None:
        write(root, "cpu.max", f"{quota} 100000")
    count = detect_cores(root, proc, affinity=affinity)
    assert count.cores == cores
    assert count.affinity == affinity
    text = count.describe()
    assert f"{cores} usable core" in text and f"{affinity} CPUs in the affinity mask" in text
    assert ("cpu.max" in text) == (quota is not None)


def test_detect_cores_on_this_machine_respects_affinity(tmp_path, proc):
    affinity = len(os.sched_getaffinity(0))
    assert detect_cores(tmp_path / "none", proc).cores == affinity
    assert 1 <= detect_cores().cores <= affinity
    assert threads.usable_cores() == detect_cores().cores


# --- the plan and its invariant ------------------------------------------------------------------
@pytest.mark.parametrize("cores, split", [(1, (1, 1, 1)), (2, (2, 1, 1)), (8, (4, 1, 2))])
def test_default_plan(cores, split):
    plan = default_plan(cores)
    assert (plan.workers, plan.threads_per_worker, plan.kernel_threads) == split
    assert plan.total_threads == cores


def test_default_plan_fits_and_uses_most_cores():
    for n in range(1, 129):
        plan = default_plan(n)
        assert plan.total_threads <= n
        assert plan.total_threads >= 0.75 * n, plan


def test_default_plan_on_this_machine_names_its_source():
    plan = default_plan()
    assert plan.cores == detect_cores().cores
    assert "affinity mask" in plan.source
    assert plan.total_threads <= plan.cores


def test_plan_over_budget_is_refused_with_the_numbers():
    with pytest.raises(ThreadBudgetError) as info:
        ThreadPlan(2, 1, 2, cores=2)
    message = str(info.value)
    assert "2 workers x 1 thread x 2 kernel threads = 4 threads > 2 usable cores" in message
    assert "oversubscribe=True" in message
    assert isinstance(info.value, (TaskflowError, ValueError))
    assert ThreadPlan(2, 1, 2, cores=2, oversubscribe=True).total_threads == 4


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_plan_rejects_non_positive_integers(bad):
    with pytest.raises(ThreadBudgetError, match="workers="):
        ThreadPlan(bad, 1, 1, cores=8)


def test_plan_without_cores_checks_this_machine():
    cores = detect_cores().cores
    assert ThreadPlan(1, 1, 1).cores == cores
    with pytest.raises(ThreadBudgetError, match="usable cores"):
        ThreadPlan(cores + 1, 1, 1)


@pytest.mark.parametrize("given, cores, split", [
    ({}, 2, (2, 1, 1)),
    ({"workers": 1}, 2, (1, 1, 2)),
    ({"kernel_threads": 2}, 8, (4, 1, 2)),
    ({"threads_per_worker": 2}, 8, (4, 2, 1)),
    ({"workers": 2, "threads_per_worker": 2}, 8, (2, 2, 2)),
])
def test_make_plan_fills_missing_counts(given, cores, split):
    plan = make_plan(**given, cores=cores)
    assert (plan.workers, plan.threads_per_worker, plan.kernel_threads) == split


def test_make_plan_refuses_or_oversubscribes():
    with pytest.raises(ThreadBudgetError, match="3 workers x 1 thread x 1 kernel thread"):
        make_plan(3, 1, 1, cores=2)
    assert make_plan(3, 1, 1, cores=2, oversubscribe=True).total_threads == 3
    assert make_plan(cores=CoreCount(2, 4, 2.0, "cpu.max")).source.endswith("(cpu.max)")


# --- applying kernel threads in this process -----------------------------------------------------
@pytest.fixture
def restore_threads():
    """Put env vars, threadpoolctl limits and Numba's setting back as they were."""
    import numba

    env = {v: os.environ.get(v) for v in (*threads.KERNEL_ENV_VARS, "NUMBA_NUM_THREADS")}
    limits = {lib["filepath"]: lib["num_threads"] for lib in threadpool_info()}
    before = numba.get_num_threads()
    yield
    threads.reset_kernel_threads()
    numba.set_num_threads(before)
    assert {v: os.environ.get(v) for v in env} == env
    after = {lib["filepath"]: lib["num_threads"] for lib in threadpool_info()}
    assert {path: after[path] for path in limits} == limits  # (libraries loaded since: new)


def test_apply_kernel_threads(restore_threads):
    report = threads.apply_kernel_threads(1)
    assert report["kernel_threads"] == 1 and report["numba"] == 1
    assert report["threadpools"], "numpy's BLAS should be visible to threadpoolctl"
    assert all(lib["num_threads"] == 1 for lib in report["threadpools"])
    assert all(report["env"][v] == "1" for v in threads.KERNEL_ENV_VARS)
    with pytest.raises(ThreadBudgetError):
        threads.apply_kernel_threads(0)


def test_ensure_kernel_threads_fixes_a_thread_started_elsewhere(restore_threads):
    import numba

    threads.apply_kernel_threads(1)
    seen = {}

    def body():  # Numba's setting is thread-local: a new thread starts at the pool size
        seen["before"] = numba.get_num_threads()
        threads.ensure_kernel_threads()
        seen["after"] = numba.get_num_threads()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen["before"] == numba.config.NUMBA_NUM_THREADS
    assert seen["after"] == 1


# --- measure_plan --------------------------------------------------------------------------------
class FakeModel:
    """Duck-typed Model: one input, a small GEMM; records the Numba threads each call saw."""

    def __init__(self):
        self.weight = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
        self.seen: list[int] = []

    def get_inputs(self):
        return [type("Arg", (), {"name": "x"})()]

    def run(self, output_names, feed):
        import numba

        self.seen.append(numba.get_num_threads())
        return [feed["x"] @ self.weight]


@pytest.mark.skipif(detect_cores().cores < 2, reason="needs 2 usable cores for both splits")
def test_measure_plan_times_each_split_and_keeps_the_fastest():
    import numba

    model, before = FakeModel(), numba.get_num_threads()
    sample = np.ones((8, 64), np.float32)
    plan = measure_plan(model, sample, cores=2, repeats=2)
    assert [(w, k) for w, k, _ in plan.measured] == [(2, 1), (1, 2)]
    assert all(rate > 0 for _, _, rate in plan.measured)
    best = max(plan.measured, key=lambda m: m[2])
    assert (plan.workers, plan.threads_per_worker, plan.kernel_threads) == (best[0], 1, best[1])
    assert set(model.seen) == {1, min(2, numba.config.NUMBA_NUM_THREADS)}
    assert numba.get_num_threads() == before  # the caller's own setting is untouched
    with pytest.raises(ThreadBudgetError):
        measure_plan(model, {"x": sample}, [(2, 2)], cores=2)


# --- taskflow info MODEL --plan ------------------------------------------------------------------
def test_cli_info_plan(monkeypatch, capsys):
    from taskflow.model import ModelInfo

    class Stub:
        def info(self):
            return ModelInfo("stub", [], [], {"Relu": 1}, 0, 0)

    monkeypatch.setattr("taskflow.model.load", lambda path: Stub())
    assert cli.main(["info", "stub.onnx", "--plan"]) == 0
    out = capsys.readouterr().out
    plan = default_plan()
    assert f"threads   {plan}" in out and "affinity mask" in out
    assert cli.main(["info", "stub.onnx", "--plan", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["thread_plan"]
    assert data["usable_cores"] == plan.cores and data["workers"] == plan.workers
