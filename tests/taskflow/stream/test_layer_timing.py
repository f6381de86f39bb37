"""Per-layer time of streamed jobs: one chunk in ``LAYER_SAMPLE_EVERY`` is timed node by node, and
the dashboard's time-per-layer panel shows the model's real layers (named as ``Model.predict``'s
Dask keys name them), next to the read, preprocess and write phases."""

from __future__ import annotations

import math

import numpy as np
import pytest

import taskflow as tf
from taskflow import executor
from taskflow.dashboard.page import TOP_LAYERS, TaskflowPage
from taskflow.dashboard.telemetry import LAYER_SAMPLE_EVERY, LayerSampler
from taskflow.dask.threads import detect_cores
from taskflow.dask.trace import trace_graph
from taskflow.stream.worker import layer_labels
from tests.taskflow.dashboard.dashboard_helpers import wait_for

from .stream_helpers import digits_images, digits_model, rgb_model, write_array

pytestmark = pytest.mark.timeout(60)
CHUNK = 8  # rows per chunk: 1797 digits make 225 chunks, ~7 samples at one in 32


def dashboard_snapshot(dask_scheduler) -> dict:
    """The scheduler's ``TaskflowState`` snapshot, as ``/taskflow/json`` serves it."""
    from taskflow.dashboard.extension import _DASHBOARDS

    return _DASHBOARDS[dask_scheduler].state.snapshot()


def trace_labels(model: tf.Model, shape: tuple[int, ...]) -> dict[int, str]:
    """``id(node)`` -> label, as the Dask lowering's trace names nodes (``tf-<label>-…``)."""
    name = model.graph.inputs[0].name
    trace = trace_graph(model._plan, {name: shape}, {}, {name: np.dtype(np.float32)})
    return {id(info.node): info.label for info in trace.nodes}


@pytest.mark.parametrize("make, shape", [(digits_model, (1, 8, 8)), (rgb_model, (3, 4, 5))])
def test_layer_names_are_the_dask_key_names(make, shape):
    model = make()
    assert layer_labels(model) == trace_labels(model, shape)


def test_node_timer_times_each_node_and_untimed_runs_never_wrap(monkeypatch):
    model = digits_model()
    x = {"input": np.ones((4, 1, 8, 8), np.float32)}
    with executor.node_timer() as times:
        want = model.run(None, x)
    assert [n.name for n, _ in times] == [n.name for n in model.graph.toposort()]
    assert all(s > 0 for _, s in times)

    def boom(*args):
        raise AssertionError("an untimed run must not wrap its nodes")
    monkeypatch.setattr(executor, "_timing", boom)  # outside node_timer: not even looked up
    assert np.array_equal(model.run(None, x)[0], want[0])


def test_sampler_splits_model_time_in_the_sampled_shares():
    sampler = LayerSampler({}, every=3)
    assert [sampler.due({"a": 1.0}) for _ in range(7)] == [True, False, False] * 2 + [True]
    assert sampler.due({})  # no shares yet: a task without a sample samples its next chunk
    assert sampler.split(1.0, {}) == {"model": 1.0}  # nothing sampled yet: one bar
    assert sampler.split(3.0, {"a": 0.2, "b": 0.1}) == pytest.approx({"a": 2.0, "b": 1.0})
    assert sampler.split(6.0, {}) == pytest.approx({"a": 4.0, "b": 2.0})  # the last shares
    assert [sampler.due({}) for _ in range(3)] == [False, True, False]  # shares: one in 3 only


@pytest.mark.skipif(detect_cores().cores < 2, reason="needs 2 usable cores")
def test_streamed_job_shows_the_models_layers_on_the_dashboard(tmp_path):
    images = digits_images()
    chunks = math.ceil(len(images) / CHUNK)
    model = digits_model()
    layers = set(layer_labels(model).values())
    assert {"0_Conv", "4_Conv", "9_Gemm", "12_Gemm"} <= layers  # the graph's Conv/Gemm nodes
    src = write_array(tmp_path / "in.zarr", images, CHUNK, name="input")
    # workers as threads: starts in a second where two processes take 3-15 s on a busy runner
    # (the worker processes of the other stream tests cover the task's pickling)
    with tf.Cluster(n_workers=2, threads_per_worker=1, processes=False, quiet=True) as cluster:
        s = tf.infer_zarr(model, src, tmp_path / "out.zarr", preprocess={"scale": 1 / 16},
                          client=cluster)
        assert s.ok and s.chunks_done == chunks
        snap = wait_for(lambda: (lambda j: j["throughput"]["samples"] == len(images) and j)(
            cluster.client.run_on_scheduler(dashboard_snapshot)),
            what="every chunk's telemetry on the scheduler")

    got = snap["layers"]
    assert got["source"] == "events"
    assert set(got["seconds"]) == layers | {"read", "preprocess", "write"}  # no "model" bar
    assert all(v > 0 for v in got["seconds"].values()), got["seconds"]
    assert sum(got["share"].values()) == pytest.approx(1.0)
    # one in LAYER_SAMPLE_EVERY, the first included, per job and worker process (here one)
    least = math.ceil(chunks / LAYER_SAMPLE_EVERY)
    assert least <= got["sampled"] <= least + 1, (got["sampled"], chunks)

    page = TaskflowPage()  # the panel: every layer named (fewer than TOP_LAYERS), largest on top
    page.update(snap)
    shown = page.layers.data
    assert set(shown["layer"]) == set(got["seconds"]) and len(shown["layer"]) <= TOP_LAYERS
    assert shown["share"] == sorted(shown["share"])
    assert f"{got['sampled']} chunks timed per layer" in page.layer_fig.title.text


def test_page_names_the_top_layers_and_sums_the_rest():
    seconds = {f"conv{i}": float(i + 1) for i in range(30)}
    total = sum(seconds.values())
    page = TaskflowPage()
    page._update_layers({"source": "events", "seconds": seconds, "sampled": 3,
                         "share": {k: v / total for k, v in seconds.items()}})
    data = page.layers.data
    rest = 30 - TOP_LAYERS
    assert data["layer"][0] == f"other ({rest} layers)"
    assert data["seconds"][0] == pytest.approx(sum(range(1, rest + 1)))
    assert data["layer"][1:] == [f"conv{i}" for i in range(rest, 30)]
    assert sum(data["share"]) == pytest.approx(100.0)
    assert list(page.layer_fig.y_range.factors) == data["layer"]
