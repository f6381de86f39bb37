"""A job killed midway leaves chunks that are neither done nor quarantined; no later run may
count them as done. Reproduces issue 14's first case from the command line."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

import taskflow as tf
from taskflow.dask.threads import detect_cores
from taskflow.stream.infer import EXIT_INCOMPLETE
from tests.taskflow.stream.stream_helpers import (
    ROOT,
    cli,
    cli_env,
    digits_images,
    done_markers,
    run_cli,
    write_array,
)
from tests.taskflow.stream.test_stream_faults import HELPERS, MODEL, summary_of, wait_for

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(detect_cores().cores < 2, reason="needs 2 usable cores")]


def test_rerun_failed_after_a_kill_reports_the_missing_chunks(tmp_path):
    src = write_array(tmp_path / "src.zarr", digits_images(400), 10)      # 40 chunks
    dst = tmp_path / "out.zarr"
    args = [MODEL, "--input", src, "--output", str(dst), "--preprocess", f"{HELPERS}:slow",
            "--progress", "json"]
    proc = subprocess.Popen([*cli(), "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=cli_env(), cwd=ROOT,
                            start_new_session=True)
    try:
        wait_for(lambda: done_markers(dst) >= 3 or proc.poll() is not None, what="3 chunks")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.communicate(timeout=30)
    done = done_markers(dst)
    assert 3 <= done < 40

    # the killed run took its embedded cluster with it; the two reruns share a new one
    with tf.Cluster(n_workers=2, threads_per_worker=1, quiet=True) as cluster:
        args += ["--scheduler", cluster.client.scheduler.address]
        rerun = run_cli(*args, "--rerun-failed")  # nothing was quarantined: computes nothing
        assert rerun.returncode == EXIT_INCOMPLETE, rerun.stdout + rerun.stderr
        summary = summary_of(rerun.stdout)
        assert not summary["ok"]
        assert summary["chunks_skipped"] == done and summary["chunks_done"] == 0
        assert summary["chunks_missing"] == 40 - done
        assert done_markers(dst) == done

        finished = run_cli(*args, "--resume")
        assert finished.returncode == 0, finished.stderr
        last = summary_of(finished.stdout)
        assert last["ok"] and last["chunks_missing"] == 0 and done_markers(dst) == 40


def test_the_summary_says_what_is_missing_and_how_to_finish():
    from taskflow.stream import JobSummary

    summary = JobSummary("out.zarr", chunks_total=40, chunks_done=0, chunks_skipped=12,
                         samples=0, seconds=1.0)
    assert not summary.ok and summary.chunks_missing == 28
    assert "28 chunk(s) are neither done nor quarantined" in str(summary)
    assert "--resume" in str(summary)
