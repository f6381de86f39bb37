"""Faults in ``infer_zarr`` / ``taskflow run``: a worker SIGKILLed mid-job, the CLI process
SIGKILLed mid-job and resumed, a poisoned chunk quarantined and rerun. Outputs are compared
byte-for-byte with an in-process ``Model.run`` over the same rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import zarr

import taskflow as tf
from taskflow.dask.threads import detect_cores

from .stream_helpers import (
    ROOT,
    cli,
    cli_env,
    digits_images,
    digits_model,
    digits_scale,
    done_markers,
    reference,
    run_cli,
    slow,
    write_array,
)

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(detect_cores().cores < 2, reason="needs 2 usable cores")]
MODEL = str(ROOT / "taskflow" / "data" / "digits_cnn.onnx")
HELPERS = "tests.taskflow.stream.stream_helpers"


def wait_for(predicate, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def summary_of(stdout: str) -> dict:
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert events and events[-1]["event"] == "summary", stdout
    return events[-1]


def test_worker_killed_mid_job_output_identical(tmp_path):
    images = digits_images(480)
    src = write_array(tmp_path / "src.zarr", images, 12)          # 40 chunks, ~0.1 s each
    dst = tmp_path / "out.zarr"
    model = digits_model()
    killed = []
    with tf.Cluster(n_workers=2, threads_per_worker=1, quiet=True) as cluster:
        pids = cluster.client.run(os.getpid)

        def kill_one() -> None:
            wait_for(lambda: done_markers(dst) >= 6, what="6 chunks done")
            victim = next(iter(pids.values()))
            os.kill(victim, signal.SIGKILL)
            killed.append((victim, done_markers(dst)))

        killer = threading.Thread(target=kill_one, daemon=True)
        killer.start()
        s = tf.infer_zarr(model, src, dst, preprocess=slow, client=cluster, progress="none")
        killer.join(5)
        new_pids = set(cluster.client.run(os.getpid).values())
    assert killed and killed[0][1] < 40, "the worker died after the job, not during it"
    assert killed[0][0] not in new_pids
    assert s.ok and s.chunks_done == 40 and s.samples == 480 and not s.failed
    (want,) = reference(model, {"input": images}, 12, digits_scale)
    assert zarr.open_group(dst, mode="r")["output"][:].tobytes() == want.tobytes()


def test_cli_killed_mid_job_then_resumed(tmp_path):
    images = digits_images(600)
    src = write_array(tmp_path / "src.zarr", images, 10)          # 60 chunks, ~0.1 s each
    dst = tmp_path / "out.zarr"
    args = [MODEL, "--input", src, "--output", str(dst), "--preprocess", f"{HELPERS}:slow",
            "--progress", "json"]
    proc = subprocess.Popen([*cli(), "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=cli_env(), cwd=ROOT,
                            start_new_session=True)  # its own group: workers die with it
    try:
        wait_for(lambda: done_markers(dst) >= 5 or proc.poll() is not None, what="5 chunks")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = done_markers(dst)
    assert 5 <= before < 60

    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    summary = summary_of(resumed.stdout)
    assert summary["ok"] and summary["chunks_total"] == 60
    assert summary["chunks_skipped"] >= before and summary["chunks_done"] <= 60 - before
    assert summary["chunks_skipped"] + summary["chunks_done"] == 60
    assert done_markers(dst) == 60
    (want,) = reference(digits_model(), {"input": images}, 10, digits_scale)
    assert zarr.open_group(dst, mode="r")["output"][:].tobytes() == want.tobytes()


def test_poisoned_chunk_quarantined_then_rerun_failed(tmp_path):
    images = digits_images(160).copy()
    src = write_array(tmp_path / "src.zarr", images.astype(np.int16), 16)   # 10 chunks
    poisoned = images.astype(np.int16)
    poisoned[50] = -1                                               # inside chunk 3
    zarr.open_array(src, mode="r+")[:] = poisoned
    dst = tmp_path / "out.zarr"
    with tf.Cluster(n_workers=2, threads_per_worker=1, quiet=True) as cluster:
        # the three runs share one cluster: each embedded one costs seconds to start
        args = [MODEL, "--input", src, "--output", str(dst), "--preprocess",
                f"{HELPERS}:reject_negative", "--retries", "1",
                "--scheduler", cluster.client.scheduler.address]
        _poisoned_then_rerun(args, dst, src, images)


def _poisoned_then_rerun(args: list[str], dst, src: str, images: np.ndarray) -> None:
    first = run_cli(*args)
    assert first.returncode == 3, first.stderr
    assert "1 chunk(s) quarantined" in first.stdout
    assert "chunk 3 (rows 48..63): ValueError: input 'input' holds negative values" \
        in first.stdout
    assert "1 failed (1 retries)" in first.stdout and "--rerun-failed" in first.stdout
    assert done_markers(dst) == 9
    out = zarr.open_group(dst, mode="r")["output"]
    assert np.isnan(out[48:64]).all() and not np.isnan(out[:48]).any()
    manifest = zarr.open_group(dst, mode="r")[".taskflow"].attrs["failed"]
    assert list(manifest) == ["3"]

    resumed = run_cli(*args, "--resume")       # resume leaves quarantined chunks alone
    assert resumed.returncode == 3 and "0 chunks (9 already done" in resumed.stdout

    zarr.open_array(src, mode="r+")[:] = images.astype(np.int16)   # fix the data
    stamps = {k: os.stat(dst / "output" / "c" / str(k) / "0").st_mtime_ns for k in range(10)
              if k != 3}
    rerun = run_cli(*args, "--rerun-failed", "--progress", "json")
    assert rerun.returncode == 0, rerun.stderr
    summary = summary_of(rerun.stdout)
    assert (summary["chunks_done"], summary["chunks_skipped"], summary["failed"]) == (1, 9, [])
    assert {k: os.stat(dst / "output" / "c" / str(k) / "0").st_mtime_ns
            for k in stamps} == stamps                              # only chunk 3 rewritten
    assert zarr.open_group(dst, mode="r")[".taskflow"].attrs["failed"] == {}
    (want,) = reference(digits_model(), {"input": images.astype(np.int16)}, 16, digits_scale)
    assert out[:].tobytes() == want.tobytes()
