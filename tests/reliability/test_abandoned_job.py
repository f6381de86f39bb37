"""A killed client leaves a shared cluster as it found it (issue 14, case 6): the scheduler's job
lease removes the job's worker plugin and the dashboard marks the job "abandoned"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import taskflow as tf
from taskflow.stream import lease
from taskflow.stream import manifest as mf
from tests.taskflow.dashboard.dashboard_helpers import get_json, page_url, wait_for
from tests.taskflow.stream.stream_helpers import ROOT, digits_images, write_array

pytestmark = pytest.mark.timeout(180)
MODEL = str(ROOT / "taskflow" / "data" / "digits_cnn.onnx")
SLOW = textwrap.dedent("""
    import time

    import numpy as np

    def slow(feed):  # a job that lasts long enough to be killed in the middle
        time.sleep(0.1)
        return {k: (v / 16).astype(np.float32) for k, v in feed.items()}
""")


def _job_plugins(client) -> list[str]:
    names = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins))
    return [n for n in names if n.startswith("taskflow-job-")]


@pytest.fixture(scope="module")
def shared():
    with tf.Cluster(n_workers=1, threads_per_worker=1, quiet=True) as cluster:
        yield cluster


def test_a_killed_client_leaves_no_plugin_and_its_job_shows_abandoned(tmp_path, shared):
    (tmp_path / "slowsteps.py").write_text(SLOW)
    src = write_array(tmp_path / "src.zarr", digits_images(480), 8)
    out = tmp_path / "out.zarr"
    cli = subprocess.Popen(
        [sys.executable, "-m", "taskflow.cli", "run", MODEL, "-i", src, "-o", str(out),
         "--preprocess", "slowsteps:slow", "--scheduler", shared.client.scheduler.address,
         "--progress", "none", "--chunks-per-task", "1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = shared.client
    try:
        held = wait_for(lambda: client.run_on_scheduler(lease.leases), timeout=90,
                        what="the job's lease on the scheduler")
        (token,) = held
        assert held[token]["plugin"] == f"taskflow-job-{token}"
        wait_for(lambda: _job_plugins(client) == [f"taskflow-job-{token}"], timeout=60,
                 what="the job's worker plugin (registered after its lease)")
        wait_for(lambda: mf.done_chunks(str(out), 60).sum() >= 3, timeout=60,
                 what="the job's first chunks")                # mid-job: chunks in flight
    finally:
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait(timeout=30)
    started = time.monotonic()
    wait_for(lambda: _job_plugins(client) == [], timeout=30,
             what="the killed client's job plugin to be removed")
    removed_after = time.monotonic() - started
    assert client.run_on_scheduler(lease.leases) == {}
    def final_state():
        job = get_json(page_url(shared) + "/json")["jobs"].get(token, {})
        return job if job.get("state") not in (None, "starting", "running") else None

    job = wait_for(final_state, timeout=30, what="the job's final state on /taskflow/json")
    assert job["state"] == "abandoned", job
    assert "disconnected" in job["reason"] or "not connected" in job["reason"]
    assert job["in_flight"] == 0 and job["eta_s"] is None
    # nothing of the job runs on afterwards: the cluster takes new work at once
    assert client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
    assert removed_after < 10, f"the plugin outlived its client by {removed_after:.1f} s"


def test_a_finished_job_ends_its_lease_without_abandoning(tmp_path, shared):
    src = write_array(tmp_path / "src.zarr", digits_images(32), 16)
    summary = tf.infer_zarr(MODEL, src, str(tmp_path / "out.zarr"), client=shared,
                            preprocess={"scale": 1 / 16}, progress="none")
    assert summary.ok
    wait_for(lambda: client_leases(shared) == {}, timeout=20, what="the lease to end")

    def ended():  # the page's snapshot is taken every 0.5 s: the first may predate the end
        states = [j["state"] for j in get_json(page_url(shared) + "/json")["jobs"].values()
                  if j["total"] == 2]
        return states if states and states[0] not in ("starting", "running") else None

    assert wait_for(ended, timeout=20, what="the job's final state") == ["done"]


def client_leases(shared) -> dict:
    return shared.client.run_on_scheduler(lease.leases)


def test_a_silent_client_loses_its_lease_after_the_timeout(shared):
    """A half-open client (a partition: connected, no heartbeats) is timed out, not kept."""
    def plant(dask_scheduler, client_id):
        plugin = dask_scheduler.plugins[lease.LEASE_PLUGIN]
        plugin.log_event("taskflow.job", {"job": "silent", "client": client_id, "total": 1,
                                          "done": 0, "state": "running",
                                          "plugin": "taskflow-job-silent"})
        old, plugin.timeout = plugin.timeout, 0.5
        dask_scheduler.clients[client_id].last_seen -= 5    # five seconds without a beat
        plugin.check()
        plugin.timeout = old
        return plugin.jobs.get("silent"), plugin.abandoned.get("silent")

    lease.install(shared.client)
    held, abandoned = shared.client.run_on_scheduler(plant, client_id=shared.client.id)
    assert held is None and abandoned == "taskflow-job-silent"
    job = wait_for(lambda: get_json(page_url(shared) + "/json")["jobs"].get("silent"),
                   timeout=10, what="the timed-out job on /taskflow/json")  # first seen abandoned
    assert job["state"] == "abandoned" and "no heartbeat" in job["reason"]
