"""``bench_model`` and ``taskflow bench`` end to end on the bundled digits CNN: taskflow in-process
and on a real embedded Dask cluster next to ONNX Runtime, with the Dask output checked against
``Model.run``. A few seconds each (most of it the cluster's start)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest

from taskflow import cli
from taskflow.bench import harness
from taskflow.bench.harness import DASK_TOLERANCE, bench_model, check_outputs, interleaved
from taskflow.errors import TaskflowError
from tests.taskflow.test_cli import taskflow

pytestmark = pytest.mark.timeout(120)

DIGITS = str(resources.files("taskflow.data").joinpath("digits_cnn.onnx"))


@pytest.fixture(scope="module")
def ort():
    return pytest.importorskip("onnxruntime", reason="the bench compares with ONNX Runtime")


def test_bench_model_times_taskflow_on_dask_next_to_ort(ort):
    result = bench_model(DIGITS, batch=4, threads=1, repeat=1, peers=("onnxruntime",))
    for name in ("taskflow", "taskflow-dask", "onnxruntime"):
        assert result.images_per_s[name] > 0, name
        assert len(result.times[name]) == 1
    # the Dask run computed what Model.run computes (bench_model raises otherwise)
    assert result.dask_max_abs_diff is not None and result.dask_max_abs_diff <= DASK_TOLERANCE
    assert result.dask_overhead == pytest.approx(
        result.images_per_s["taskflow"] / result.images_per_s["taskflow-dask"])
    report = str(result)
    assert "taskflow / onnxruntime" in report
    assert "taskflow-dask / onnxruntime" in report
    assert "Dask overhead" in report
    assert "taskflow / taskflow-dask" not in report  # that is the overhead line's, inverted


def test_check_outputs_refuses_a_wrong_result():
    want = [np.linspace(-3, 3, 40, dtype=np.float32).reshape(4, 10)]
    assert check_outputs(want, [want[0].copy()], ["logits"], "taskflow-dask") == 0.0
    off = want[0].copy()
    off[2, 3] += 1e-3
    with pytest.raises(TaskflowError, match=r"taskflow-dask output 'logits' differs"):
        check_outputs(want, [off], ["logits"], "taskflow-dask")
    with pytest.raises(TaskflowError, match=r"shape \(4, 5\)"):
        check_outputs(want, [want[0][:, :5]], ["logits"], "taskflow-dask")
    with pytest.raises(TaskflowError, match=r"gave 0 output\(s\)"):
        check_outputs(want, [], ["logits"], "taskflow-dask")
    nan = want[0].copy()
    nan[0, 0] = np.nan
    with pytest.raises(TaskflowError, match="differs"):
        check_outputs(want, [nan], ["logits"], "taskflow-dask")


def test_cli_bench_reports_dask_next_to_ort(ort):
    result = taskflow("bench", DIGITS, "--batch-size", "4", "--threads", "1", "--repeat", "1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("digits_cnn: batch 4, 1 thread(s)"), out
    for line in ("taskflow / onnxruntime", "taskflow-dask / onnxruntime", "Dask overhead"):
        assert line in out, out


def test_cli_bench_no_dask_starts_no_cluster(ort, capsys):
    assert cli.main(["bench", DIGITS, "--batch-size", "4", "--threads", "1", "--repeat", "1",
                     "--no-dask"]) == 0
    out = capsys.readouterr().out
    assert "taskflow / onnxruntime" in out
    assert "taskflow-dask" not in out and "Dask overhead" not in out


def test_interleaved_settles_each_runtime_before_its_timed_call(monkeypatch):
    """Each turn runs a runtime untimed for ``settle_s`` first, then times one call; the
    turns alternate between runtimes; a call past SETTLE_MAX_CALL_S is not settled."""
    import itertools
    import time

    monkeypatch.setattr(harness, "SETTLE_MAX_CALL_S", 0.015)
    log: list[str] = []
    starts: list[float] = []

    def runner(name: str, seconds: float):
        def call() -> None:
            log.append(name)
            starts.append(time.perf_counter())
            time.sleep(seconds)
        return call

    times = interleaved({"fast": runner("fast", 0.002), "slow": runner("slow", 0.02)},
                        repeat=3, settle_s=0.01)
    assert [len(v) for v in times.values()] == [3, 3]
    assert min(times["slow"]) >= 0.02 > max(times["fast"])
    # turns alternate: fast's calls, slow's calls, fast's ...
    turns = [name for k, name in enumerate(log) if k == 0 or log[k - 1] != name]
    assert turns == ["fast", "slow"] * 3
    # fast: untimed calls until 10 ms have passed, then 1 timed, per turn; slow: settled in
    # its first turn only (1 untimed + 1 timed), then timed alone once its call is known long
    runs = [sum(1 for _ in group) for name, group in itertools.groupby(log) if name == "fast"]
    assert len(runs) == 3 and min(runs) >= 2
    # each fast turn's timed (last) call starts settle_s after the turn's first call (less the
    # microsecond between the harness's clock read and the call's own)
    for name, group in itertools.groupby(range(len(log)), key=lambda k: log[k]):
        calls = list(group)
        if name == "fast":
            assert starts[calls[-1]] - starts[calls[0]] >= 0.0099, calls
    assert log.count("slow") == 2 + 1 + 1
    log.clear()
    starts.clear()
    assert len(interleaved({"x": runner("x", 0)}, repeat=2, settle_s=0)["x"]) == 2
    assert log == ["x", "x"]  # settle_s=0: timed calls only
