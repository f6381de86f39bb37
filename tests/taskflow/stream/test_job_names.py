"""Job names on a real 2-worker LocalCluster and real Zarr stores: ``infer_zarr(name=...)`` and
``taskflow run --name`` reach ``/taskflow/json``, the ``name`` label of ``/metrics`` (read over
HTTP from the cluster's dashboard) and the summary; the default is the model's name plus the
start time; ``taskflow run`` piped to a file logs plain percent lines, no carriage return."""

from __future__ import annotations

import json
import re
import shutil

import pytest

import taskflow as tf
from taskflow.dask.threads import detect_cores
from tests.taskflow.dashboard.dashboard_helpers import get, get_json, page_url, wait_for

from .stream_helpers import ROOT, digits_images, digits_model, run_cli, write_array

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(detect_cores().cores < 2, reason="needs 2 usable cores")]
SCALE = {"scale": 1 / 16}
MODEL = str(ROOT / "taskflow" / "data" / "digits_cnn.onnx")
STAMP = r"-\d{8}-\d{4}"
LINE = re.compile(r"^taskflow cli-named: +(\d+)% (\d+)/8 chunks, [\d,]+ samples, "
                  r"(?:[\d,]+ samples/s, )?ETA (\?|\d+:\d\d)$")


@pytest.fixture(scope="module")
def cluster():
    with tf.Cluster(n_workers=2, threads_per_worker=1, quiet=True) as c:
        yield c


def job_named(url: str, name: str) -> tuple[str, dict] | None:
    """``(id, job)`` of the finished job called ``name`` on ``/taskflow/json``."""
    jobs = get_json(url + "/json")["jobs"]
    return next(((k, j) for k, j in jobs.items() if j["name"] == name
                 and j["state"] == "done"), None)


def test_names_reach_the_dashboard_json_and_metrics(cluster, tmp_path):
    pytest.importorskip("prometheus_client")
    url = page_url(cluster)
    src = write_array(tmp_path / "in.zarr", digits_images(96), 16)
    named = tf.infer_zarr(digits_model(), src, tmp_path / "a.zarr", preprocess=SCALE,
                          client=cluster, progress="none", name="digits-nightly")
    default = tf.infer_zarr(digits_model(), src, tmp_path / "b.zarr", preprocess=SCALE,
                            client=cluster, progress="none")
    assert named.ok and named.name == "digits-nightly"
    assert str(named).startswith("taskflow run digits-nightly: 96 samples in 6 chunks")
    assert re.fullmatch("digits_cnn" + STAMP, default.name)  # Model: its graph's name

    token, job = wait_for(lambda: job_named(url, "digits-nightly"), what="the named job")
    assert re.fullmatch(r"[0-9a-f]{12}", token) and job["done"] == 6 and job["samples"] == 96
    other, _ = wait_for(lambda: job_named(url, default.name), what="the default-named job")
    assert other != token

    metrics = get(url.replace("/taskflow", "/metrics"))[1].decode()
    assert f'taskflow_job_chunks{{job="{token}",name="digits-nightly",status="done"}} 6.0' \
        in metrics
    assert f'taskflow_job_chunks{{job="{other}",name="{default.name}",status="done"}} 6.0' \
        in metrics

    with pytest.raises(tf.TaskflowError, match="name=''"):
        tf.infer_zarr(digits_model(), src, tmp_path / "c.zarr", client=cluster, name="")


def test_cli_names_the_job_and_logs_plain_progress_lines(cluster, tmp_path):
    src = write_array(tmp_path / "in.zarr", digits_images(200), 25)
    address = cluster.client.scheduler.address
    args = ["--input", src, "--scheduler", address, "--preprocess", '{"scale": 0.0625}',
            "--chunks-per-task", "1"]
    proc = run_cli(MODEL, *args, "--output", str(tmp_path / "a.zarr"), "--name", "cli-named")
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout.splitlines()[1]
    assert summary.startswith("taskflow run cli-named: 200 samples in 8 chunks"), proc.stdout
    # stderr is a pipe here: whole lines, no carriage return, one per 10 % step at least
    assert "\r" not in proc.stderr and proc.stderr.endswith("\n")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("taskflow cli-named")]
    parsed = [LINE.match(line) for line in lines]
    assert len(lines) >= 3 and all(parsed), proc.stderr
    percents = [int(m[1]) for m in parsed]
    assert percents[0] == 0 and percents[-1] == 100 and percents == sorted(percents)
    assert parsed[-1][3] == "0:00"
    url = page_url(cluster)
    assert wait_for(lambda: job_named(url, "cli-named"), what="the CLI job on the page")

    model = shutil.copy(MODEL, tmp_path / "my_digits.onnx")  # the default: the file's stem
    default = run_cli(str(model), *args, "--output", str(tmp_path / "b.zarr"), "--progress",
                      "json")
    assert default.returncode == 0, default.stderr
    events = [json.loads(line) for line in default.stdout.splitlines()]
    name = events[0]["name"]                                 # the start event
    assert events[0]["event"] == "start" and re.fullmatch("my_digits" + STAMP, name)
    assert {e["name"] for e in events[1:]} == {name}         # progress events and the summary
    assert events[-1]["event"] == "summary" and events[-1]["ok"]
    assert wait_for(lambda: job_named(url, name), what="the default-named CLI job")
