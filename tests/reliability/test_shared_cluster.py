"""A shared cluster stays as a job found it (issue 14, case 6): custom preprocessing from the
user's folder reaches the workers, and no job leaves a worker plugin behind."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr
from distributed import LocalCluster

import taskflow as tf
from tests.taskflow.stream.stream_helpers import ROOT, digits_images, digits_model, write_array

MODEL = str(ROOT / "taskflow" / "data" / "digits_cnn.onnx")
STEPS = textwrap.dedent("""
    import numpy as np

    def scale(feed):
        return {k: (v / 16).astype(np.float32) for k, v in feed.items()}

    def broken(feed):  # passes the client's check on zeros, fails on the workers' real rows
        if any(v.any() for v in feed.values()):
            raise RuntimeError("this step always fails")
        return scale(feed)
""")


def _job_plugins(client) -> list[str]:
    names = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins))
    return [n for n in names if n.startswith("taskflow-job-")]


@pytest.fixture(scope="module")
def shared():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster:
        yield cluster


def test_preprocessing_from_the_working_folder_runs_on_workers_without_it(tmp_path, shared):
    (tmp_path / "mysteps.py").write_text(STEPS)
    images = digits_images(48)
    src = write_array(tmp_path / "src.zarr", images, 16)
    result = subprocess.run(
        [sys.executable, "-m", "taskflow.cli", "run", MODEL, "-i", src, "-o",
         str(tmp_path / "out.zarr"), "--preprocess", "mysteps:scale", "--scheduler",
         shared.scheduler_address, "--progress", "none"],
        cwd=tmp_path, capture_output=True, text=True, timeout=180)   # workers lack tmp_path
    assert result.returncode == 0, result.stdout + result.stderr
    got = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["output"][:]
    (want,) = digits_model().run(None, {"input": images.astype(np.float32) / 16})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_failed_job_leaves_no_plugin_and_new_workers_start(tmp_path, shared):
    sys.path.insert(0, str(tmp_path))
    try:
        (tmp_path / "brokensteps.py").write_text(STEPS)
        import brokensteps

        src = write_array(tmp_path / "src.zarr", digits_images(32), 16)
        with tf.Cluster(shared.scheduler_address, quiet=True) as cluster:
            summary = tf.infer_zarr(digits_model(), src, str(tmp_path / "out.zarr"),
                                    client=cluster, preprocess=brokensteps.broken,
                                    progress="none", retries=0)
            assert not summary.ok and len(summary.failed) == 2
            assert "this step always fails" in summary.failed[0].error
            assert _job_plugins(cluster.client) == []
        shared.scale(2)                                   # a worker joining after the job
        with tf.Cluster(shared.scheduler_address, quiet=True) as cluster:
            cluster.client.wait_for_workers(2, timeout=60)
            assert cluster.client.submit(sum, [1, 2], pure=False).result() == 3
    finally:
        sys.path.remove(str(tmp_path))
        shared.scale(1)
