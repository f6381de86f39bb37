"""Pipelines on Dask: one lazy graph (``predict``) and streamed Zarr -> Zarr (``infer_zarr``,
the ``postprocess`` hook, pipeline files on the CLI), on one real LocalCluster."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import dask
import numpy as np
import pytest
import zarr

import taskflow as tf
from taskflow.pipeline.steps import TopK
from taskflow.stream.manifest import ResumeError
from tests.taskflow.stream.stream_helpers import ROOT, write_array

from .pipeline_helpers import ensemble, mlp, raw_rows, reference, scale

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def models():
    return mlp(1), mlp(2)


@pytest.fixture(scope="module")
def cluster():
    with tf.Cluster(n_workers=2, threads_per_worker=1, quiet=True) as c:
        yield c


def _check(got: dict, want: dict) -> None:
    for name, w in want.items():
        g = np.asarray(got[name])
        assert g.shape == w.shape, name
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=name)


# --- predict: one graph ------------------------------------------------------------------------
def test_predict_on_the_cluster_equals_run(cluster, models):
    a, b = models
    raw = raw_rows(70)
    lazy = ensemble(a, b).predict(raw, chunk_size=16, client=cluster.client)
    assert list(lazy) == ["labels", "scores", "avg"]
    assert all(x.chunks[0] == (16, 16, 16, 16, 6) for x in lazy.values())
    got = dict(zip(lazy, cluster.client.compute(list(lazy.values()), sync=True)))
    _check(got, reference(a, b, raw))


def test_every_output_computed_together_runs_each_stage_once(models):
    a, b = models
    calls = []

    def counted(raw):
        calls.append(len(raw))
        return scale(raw)

    pipe = tf.Pipeline([tf.Stage("pre", counted, inputs=["raw"]),
                        tf.Stage("a", a, inputs=["pre"]), tf.Stage("b", b, inputs=["pre"]),
                        tf.Stage("top", TopK(2), inputs=["a"], outputs=["labels", "scores"])],
                       outputs=["labels", "scores", "b"])
    raw = raw_rows(40)
    lazy = pipe.predict(raw, chunk_size=10)
    calls.clear()  # predict ran the pipeline once on a two-row sample to learn shapes
    with dask.config.set(scheduler="synchronous"):  # in this process: the calls are counted
        labels, scores, b_out = dask.compute(*lazy.values())
    assert sorted(calls) == [10, 10, 10, 10]  # once per chunk, not once per output
    np.testing.assert_allclose(b_out, b.run(None, {"input": scale(raw)})[0], rtol=1e-5)
    assert labels.shape == scores.shape == (40, 2)


def test_stage_priority_and_resources_annotate_its_layers(models):
    a, _ = models
    pipe = tf.Pipeline([tf.Stage("pre", scale, inputs=["raw"], priority=7),
                        tf.Stage("m", a, resources={"GPU": 1})])
    lazy = pipe.predict(raw_rows(8), chunk_size=4)["m"]
    layers = lazy.__dask_graph__().layers
    annotated = {name: layer.annotations or {} for name, layer in layers.items()}
    assert any(v.get("priority") == 7 for k, v in annotated.items() if "tf_pre" in k)
    assert any(v.get("resources") == {"GPU": 1} for v in annotated.values())


# --- streaming ---------------------------------------------------------------------------------
def test_infer_zarr_streams_a_pipeline_and_resume_knows_it(tmp_path, cluster, models):
    a, b = models
    raw = raw_rows(100)
    src = write_array(tmp_path / "raw.zarr", raw, 16)
    pipe = ensemble(a, b)
    s = tf.infer_zarr(pipe, src, tmp_path / "out.zarr", client=cluster, progress="none")
    assert s.ok and s.samples == 100 and s.chunks_done == 7
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    _check({n: out[n][:] for n in ("labels", "scores", "avg")}, reference(a, b, raw))
    assert out["labels"].dtype == np.int64

    again = tf.infer_zarr(ensemble(a, b), src, tmp_path / "out.zarr", client=cluster,
                          resume=True, progress="none")
    assert again.ok and again.chunks_done == 0 and again.chunks_skipped == 7
    with pytest.raises(ResumeError, match="sha256"):  # another k: another pipeline
        tf.infer_zarr(ensemble(a, b, k=3), src, tmp_path / "out.zarr", client=cluster,
                      resume=True, progress="none")


def test_postprocess_hook_writes_only_its_results(tmp_path, cluster, models):
    a, _ = models
    raw = raw_rows(50)
    src = write_array(tmp_path / "raw.zarr", raw, 8)
    s = tf.infer_zarr(a, src, tmp_path / "top.zarr", client=cluster, progress="none",
                      preprocess={"scale": "uint8"}, postprocess=TopK(3))
    assert s.ok
    out = zarr.open_group(str(tmp_path / "top.zarr"), mode="r")
    assert sorted(out.array_keys()) == ["labels", "scores"]  # no raw logits written
    logits = a.run(None, {"input": raw.astype(np.float32) / 255})[0]
    want = TopK(3)(logits)
    np.testing.assert_array_equal(out["labels"][:], want["labels"])
    np.testing.assert_allclose(out["scores"][:], want["scores"], rtol=1e-5, atol=1e-6)


PIPELINE_YAML = """\
name: yaml-ensemble
inputs: [raw]
outputs: [labels, probs]
stages:
  - name: pre
    function: my_steps.py:scale
    args: {divisor: 255.0}
  - {name: model, model: a.onnx}
  - {name: probs, function: softmax}
  - name: top
    function: top_k
    args: {k: 2}
    inputs: [probs]
    outputs: [labels, scores]
"""

MY_STEPS = """\
import numpy as np


def scale(raw, divisor):
    return (raw / divisor).astype(np.float32)
"""


def _pipeline_files(tmp_path, model, suffix=".yaml"):
    model.save(tmp_path / "a.onnx")
    (tmp_path / "my_steps.py").write_text(MY_STEPS)  # a user file the workers never saw
    text = PIPELINE_YAML
    if suffix == ".toml":
        text = textwrap.dedent("""\
            name = "toml-chain"
            [[stages]]
            name = "pre"
            function = "my_steps.py:scale"
            args = {divisor = 255.0}
            [[stages]]
            name = "model"
            model = "a.onnx"
            """)
    path = tmp_path / f"pipeline{suffix}"
    path.write_text(text)
    return path


def test_taskflow_run_takes_a_pipeline_file(tmp_path, cluster, models):
    a, _ = models
    raw = raw_rows(60)
    src = write_array(tmp_path / "raw.zarr", raw, 16)
    spec = _pipeline_files(tmp_path, a)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    address = cluster.client.scheduler.address  # the module's cluster: no second start-up
    done = subprocess.run([sys.executable, "-m", "taskflow.cli", "run", str(spec), "-i", src,
                           "-o", str(tmp_path / "out.zarr"), "--progress", "none",
                           "--scheduler", address],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "yaml-ensemble" in done.stdout  # the job is named after the pipeline
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert sorted(out.array_keys()) == ["labels", "probs"]
    logits = a.run(None, {"input": (raw / 255.0).astype(np.float32)})[0]
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    np.testing.assert_allclose(out["probs"][:], probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["labels"][:], np.argsort(-probs, 1, kind="stable")[:, :2])

    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  - {name: m, model: a.onnx, bacth_size: 4}\n")
    done = subprocess.run([sys.executable, "-m", "taskflow.cli", "run", str(bad), "-i", src,
                           "-o", str(tmp_path / "bad.zarr")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "stage 'm': unknown key(s) ['bacth_size']" in done.stderr
    assert not (tmp_path / "bad.zarr").exists()


def test_a_toml_pipeline_loads_and_streams(tmp_path, cluster, models):
    a, _ = models
    pipe = tf.load_pipeline(_pipeline_files(tmp_path, a, ".toml"))
    assert pipe.name == "toml-chain" and pipe.output_names == ["model"]
    raw = raw_rows(20)
    src = write_array(tmp_path / "raw.zarr", raw, 8)
    s = tf.infer_zarr(pipe, src, tmp_path / "o.zarr", client=cluster, progress="none")
    assert s.ok
    got = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["model"][:]
    np.testing.assert_allclose(got, a.run(None, {"input": (raw / 255.0).astype(np.float32)})[0],
                               rtol=1e-5, atol=1e-6)


def test_a_streamed_pipeline_shows_its_stages_on_the_dashboard(tmp_path, models):
    from taskflow.dashboard.telemetry import LAYER_SAMPLE_EVERY
    from tests.taskflow.dashboard.dashboard_helpers import wait_for
    from tests.taskflow.stream.test_layer_timing import dashboard_snapshot

    a, b = models
    raw = raw_rows(8 * LAYER_SAMPLE_EVERY)
    src = write_array(tmp_path / "raw.zarr", raw, 8)
    with tf.Cluster(n_workers=1, threads_per_worker=1, processes=False, quiet=True) as c:
        s = tf.infer_zarr(ensemble(a, b), src, tmp_path / "out.zarr", client=c,
                          progress="none", chunks_per_task=4)
        assert s.ok
        snap = wait_for(lambda: (lambda j: j["throughput"]["samples"] == len(raw) and j)(
            c.client.run_on_scheduler(dashboard_snapshot)), what="the job's telemetry")
    seconds = snap["layers"]["seconds"]
    assert {"pre", "a", "b", "avg", "top"} <= set(seconds), seconds  # by stage, not by node
    assert all(seconds[k] > 0 for k in ("pre", "a", "b", "avg", "top"))
    job = next(iter(snap["jobs"].values()))
    assert job["name"].startswith("ensemble-")
