"""Chunks that are little work share a task; big ones keep one task each (structural, untimed).

``Model.predict`` joins consecutive batch chunks into one task of about
:data:`taskflow.dask.plan.TARGET_TASK_FLOPS` and splits the result back into the chunks the
input had, so the output is chunked as asked and equals ``Model.run``.
"""

from __future__ import annotations

import threading

import dask
import dask.array as da
import numpy as np
import pytest
from onnx import helper

import taskflow as tf
from taskflow.dask import plan as plan_mod
from taskflow.dask.plan import group_chunks
from taskflow.frontend import nn

from . import lower_models as lm
from .test_lower import name_of, optimized_keys

pytestmark = pytest.mark.timeout(120)


def issue_mlp() -> tf.Model:
    """The MLP of the issue: 256-1024-1024-10, 2.6 MFLOP per row."""
    return nn.Sequential(
        [nn.Dense(256, 1024), nn.ReLU(), nn.Dense(1024, 1024), nn.ReLU(), nn.Dense(1024, 10)],
        input_shape=(256,),
        name="mlp",
    ).to_model()


def key_counts(y: da.Array) -> dict[str, int]:
    """Keys of the optimised graph by kind: model tasks, joins, splits, weights, inputs."""
    counts = dict.fromkeys(("model", "group", "split", "weight", "other"), 0)
    for k in optimized_keys(y):
        name = name_of(k)
        kind = next(
            (kind for kind in ("group", "split", "weight") if name.startswith(f"tf-{kind}-")), None
        )
        counts[kind or ("model" if name.startswith("tf-") else "other")] += 1
    return counts


def as_dask(feed: dict[str, np.ndarray], rows: int) -> dict[str, da.Array]:
    return {k: da.from_array(v, chunks=(rows, *v.shape[1:])) for k, v in feed.items()}


def check_same(model: tf.Model, feed: dict[str, np.ndarray], got) -> None:
    got = got if isinstance(got, tuple) else (got,)
    for g, w in zip(dask.compute(*got), model.run(None, feed)):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


# --- the issue's MLP -----------------------------------------------------------------------------
def test_small_chunks_share_tasks_and_keep_their_chunks():
    """64 chunks of 16 rows (42 MFLOP each): 8 model tasks, not 64; 64 output chunks."""
    model = issue_mlp()
    x = np.random.default_rng(0).standard_normal((1024, 256)).astype(np.float32)
    y = model.predict(da.from_array(x, chunks=(16, 256)), threads=2)
    assert y.chunks == ((16,) * 64, (10,))
    counts = key_counts(y)
    assert counts["model"] == 2 * plan_mod.MIN_TASKS_PER_THREAD == 8, counts
    assert counts["group"] == 8 and counts["split"] == 64, counts
    check_same(model, {"input": x}, y)


def test_big_chunks_keep_one_task_each():
    """Chunks of 1024 rows (2.7 GFLOP, over TARGET_TASK_FLOPS) are never joined."""
    model = issue_mlp()
    x = da.zeros((8192, 256), dtype=np.float32, chunks=(1024, 256))
    y = model.predict(x, threads=1)
    assert y.chunks[0] == (1024,) * 8
    counts = key_counts(y)
    assert counts["model"] == 8 and counts["group"] == counts["split"] == 0, counts


def test_task_flops_zero_is_one_task_per_chunk():
    model = issue_mlp()
    x = da.zeros((1024, 256), dtype=np.float32, chunks=(16, 256))
    counts = key_counts(model.predict(x, threads=2, task_flops=0))
    assert counts["model"] == 64 and counts["group"] == counts["split"] == 0, counts


def test_each_thread_gets_tasks():
    """More threads, more (smaller) tasks: every thread gets MIN_TASKS_PER_THREAD."""
    model = issue_mlp()
    x = da.zeros((1024, 256), dtype=np.float32, chunks=(16, 256))
    assert key_counts(model.predict(x, threads=4))["model"] == 16
    assert key_counts(model.predict(x, threads=16))["model"] == 64  # nothing left to join


# --- other graphs through the grouped path -------------------------------------------------------
#: A target no chunk reaches: every test model is joined down to MIN_TASKS tasks.
JOIN_ALL = {"task_flops": 1e15, "threads": 1}


@pytest.mark.parametrize("build", [lm.cnn, lm.branchy, lm.torch_flatten])
def test_grouped_graphs_match_model_run(build):
    model = build()
    feed = lm.sample(model, 15)
    y = model.predict(as_dask(feed, 1), **JOIN_ALL)
    assert y.chunks[0] == (1,) * 15
    assert key_counts(y)["model"] == plan_mod.MIN_TASKS
    check_same(model, feed, y)


def test_grouped_with_a_whole_batch_node():
    """A node that mixes rows runs whole; the per-chunk parts around it are grouped."""
    model = lm.batch_mixing()
    feed = lm.sample(model, 17)
    with pytest.warns(UserWarning, match="not batch-local"):
        y = model.predict(as_dask(feed, 2), **JOIN_ALL)
    assert y.chunks[0] == (2,) * 8 + (1,)
    assert key_counts(y)["group"] == plan_mod.MIN_TASKS
    check_same(model, feed, y)


def test_grouped_two_inputs_two_outputs_and_a_fixed_input():
    model = lm.two_in_two_out()
    feed = lm.sample(model, 17)
    ys = model.predict(as_dask(feed, 2), **JOIN_ALL)
    assert all(y.chunks[0] == (2,) * 8 + (1,) for y in ys)
    assert key_counts(ys[0])["group"] == 2 * plan_mod.MIN_TASKS  # a join per input and run
    check_same(model, feed, ys)
    model = lm.with_fixed_input()
    feed = lm.sample(model, 9)
    y = model.predict(
        {"x": da.from_array(feed["x"], chunks=(1, 5)), "scale": feed["scale"]}, **JOIN_ALL
    )
    assert y.chunks[0] == (1,) * 9
    assert key_counts(y)["group"] == plan_mod.MIN_TASKS
    check_same(model, feed, y)


def batch_elsewhere() -> tf.Model:
    """Outputs whose batch is not plain axis 0: ``t`` (4, N) and ``m`` (N*3, 2)."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["m"]),
    ]
    shape = np.array([-1, 2], np.int64)
    return lm._model(
        nodes,
        [lm._in("x", "N", 6)],
        [lm._in("t", 6, "N"), lm._in("m", "N3", 2)],
        {"shape": shape},
        "elsewhere",
    )


def test_outputs_with_the_batch_on_another_axis_or_scaled():
    model = batch_elsewhere()
    feed = lm.sample(model, 10)
    t, m = model.predict(as_dask(feed, 1), **JOIN_ALL)
    assert t.chunks == ((6,), (1,) * 10)
    assert m.chunks == ((3,) * 10, (2,))
    assert key_counts(t)["split"] == key_counts(m)["split"] == 10
    check_same(model, feed, (t, m))


# --- kernel threads ------------------------------------------------------------------------------
def test_a_task_holds_its_thread_to_the_planned_kernel_threads():
    """A worker's task thread starts at Numba's pool size, whatever the thread plan set on the
    thread its plugin ran on; the task must bring it down to the plan (here: 1)."""
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("Numba's pool has one thread: every thread already runs one")
    from taskflow.dask import threads as plan_threads

    model = lm.cnn()
    feed = lm.sample(model, 4)
    seen = []

    def worker_thread() -> None:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)  # a fresh thread's default
        model.predict(as_dask(feed, 2)).compute(scheduler="sync")  # tasks on this thread
        seen.append(numba.get_num_threads())

    before = numba.get_num_threads()
    plan_threads.apply_kernel_threads(1)
    try:
        thread = threading.Thread(target=worker_thread)
        thread.start()
        thread.join()
    finally:
        plan_threads.reset_kernel_threads()
        numba.set_num_threads(before)
    assert seen == [1]


# --- group_chunks --------------------------------------------------------------------------------
def test_group_chunks_splits_rows_evenly_at_chunk_boundaries():
    groups = group_chunks([100] * 10 + [5], 1.0, threads=1, target=1e15)
    assert groups[0][0] == 0 and groups[-1][1] == 11
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    assert len(groups) == plan_mod.MIN_TASKS
    rows = [sum(([100] * 10 + [5])[a:b]) for a, b in groups]
    assert max(rows) - min(rows) <= 100, rows


def test_group_chunks_leaves_big_chunks_and_respects_memory():
    assert group_chunks([16] * 8, 8.2e9, threads=1) == tuple((j, j + 1) for j in range(8))
    # 16 chunks of 512 MLP rows want 12 tasks on 2 threads: under 2 chunks a run, none joined
    assert len(group_chunks([512] * 16, 2.6e6, threads=2)) == 16
    assert len(group_chunks([16] * 64, 2.6e6, threads=1, target=0)) == 64
    # 64 x 16 rows of 1 MiB each: no group may hold more than GROUP_MAX_BYTES
    groups = group_chunks([16] * 64, 1.0, threads=1, target=1e15, row_bytes=1 << 20)
    assert max(b - a for a, b in groups) * 16 * (1 << 20) <= plan_mod.GROUP_MAX_BYTES
    assert len(group_chunks([16] * 64, 1.0, threads=3, target=1e15)) % 3 == 0
