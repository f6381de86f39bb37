"""Parallel modes on a real 2-worker LocalCluster: where each block/stage ran, same numbers."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster, get_task_stream

from taskflow.dask.plan import make_plan
from taskflow.dask.units import INLINE_CONST_BYTES

from . import lower_models as lm

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as c:
        yield c


def workers_of(client: Client) -> list[str]:
    return sorted(client.scheduler_info()["workers"])


def run_recorded(client: Client, y: da.Array) -> tuple[np.ndarray, dict[str, set[str]]]:
    """Compute ``y``; return it and, per task name (key without chunk), the workers used."""
    with get_task_stream(client) as ts:
        result = client.compute(y).result()
    ran: dict[str, set[str]] = {}
    for rec in ts.data:
        key = rec["key"]
        name = key[0] if isinstance(key, tuple) else key
        ran.setdefault(name, set()).add(rec["worker"])
    return result, ran


def stage_of(name: str, tag: str) -> int | None:
    """``tf-<label>.<tag><k>-<token>`` -> k."""
    label = name.rsplit("-", 1)[0]
    if "." + tag in label:
        return int(label.rsplit("." + tag, 1)[1])
    return None


def test_data_parallel_weights_placed_once_and_chunks_spread(client):
    model = lm.mlp((64, 512, 512, 10))
    feed = lm.sample(model, 64)
    model.to_cluster(client)
    ws = workers_of(client)
    placed = [k for k in client.who_has() if str(k).startswith("('tf-weight-")]
    big = [w for w in model.graph.initializers.values() if w.nbytes > INLINE_CONST_BYTES]
    assert len(placed) == len(big) == 5  # b2 (40 bytes) travels inside the task
    assert all(sorted(v) == ws for k, v in client.who_has().items() if k in placed)
    y = model.predict(da.from_array(feed["x"], chunks=(8, 64)), client=client)
    (opt,) = dask.optimize(y)
    assert not [k for k in opt.__dask_graph__() if "tf-weight" in str(k)]  # only references
    result, ran = run_recorded(client, y)
    compute = {n: w for n, w in ran.items() if n.startswith("tf-")}
    assert len(compute) == 1  # one fused layer...
    assert set().union(*compute.values()) == set(ws)  # ...whose 8 tasks ran on both workers
    np.testing.assert_allclose(result, model.run(None, feed)[0], rtol=1e-5, atol=1e-5)


def test_model_parallel_blocks_pinned_with_their_weights(client):
    model = lm.mlp((64, 512, 512, 10))
    feed = lm.sample(model, 24)
    ws = workers_of(client)
    plan = make_plan(model, client, split_bytes=512 * 512 * 4)  # W1 is 1 MiB: split it
    assert plan.mode == "model", plan.reason
    y = model.predict(da.from_array(feed["x"], chunks=(8, 64)), plan=plan, client=client)
    result, ran = run_recorded(client, y)
    blocks = {stage_of(n, "b"): w for n, w in ran.items() if stage_of(n, "b") is not None}
    assert blocks == {0: {ws[0]}, 1: {ws[1]}}, ran
    sliced = {str(k): sorted(v) for k, v in client.who_has().items()
              if "_b0of2" in str(k) or "_b1of2" in str(k)}
    # each half of W1 (the 1 KiB bias halves travel inside the tasks)...
    assert {k.split("-")[2] for k in sliced} == {"W1_b0of2", "W1_b1of2"}, sliced
    for key, where in sliced.items():
        assert where == [ws[0] if "b0of2" in key else ws[1]], sliced  # ...only on its worker
    np.testing.assert_allclose(result, model.run(None, feed)[0], rtol=1e-5, atol=1e-5)


def test_model_parallel_conv_split_along_output_channels(client):
    model = lm.cnn()
    feed = lm.sample(model, 6)
    ws = workers_of(client)
    y = model.predict(da.from_array(feed["x"], chunks=(2, 3, 8, 8)), mode="model",
                      split=("conv1", "fc"), client=client)
    result, ran = run_recorded(client, y)
    placed = {(n.split("-")[1], stage_of(n, "b")): w for n, w in ran.items()
              if stage_of(n, "b") is not None}
    assert placed == {("conv1.b0", 0): {ws[0]}, ("conv1.b1", 1): {ws[1]},
                      ("fc.b0", 0): {ws[0]}, ("fc.b1", 1): {ws[1]}}
    np.testing.assert_allclose(result, model.run(None, feed)[0], rtol=1e-5, atol=1e-5)


def test_pipeline_stages_pinned_to_worker_groups(client):
    model = lm.mlp((64, 256, 256, 256, 10))
    feed = lm.sample(model, 48)
    ws = workers_of(client)
    y = model.predict(da.from_array(feed["x"], chunks=(8, 64)), mode="pipeline",
                      client=client)
    result, ran = run_recorded(client, y)
    stages = {}
    for name, w in ran.items():
        s = stage_of(name, "s")
        if s is not None:
            stages.setdefault(s, set()).update(w)
    assert stages == {0: {ws[0]}, 1: {ws[1]}}, ran
    np.testing.assert_allclose(result, model.run(None, feed)[0], rtol=1e-5, atol=1e-5)


def test_branch_parallel_branches_are_separate_tasks(client):
    model = lm.branchy()
    feed = lm.sample(model, 8)
    y = model.predict(da.from_array(feed["x"], chunks=(2, 16, 6, 6)), mode="branch",
                      client=client)
    (opt,) = dask.optimize(y)
    names = {k[0] for k in opt.__dask_graph__() if isinstance(k, tuple)
             and k[0].startswith("tf-") and not k[0].startswith("tf-weight")}
    labels = {n.rsplit("-", 1)[0] for n in names}

    def branch(labels, name):  # the chain is named after its last node (Relu, or FusedConv)
        return [x for x in labels if x.startswith(f"tf-{name}")]

    # squeeze chain, the two expand branches, and the concat..fc chain: 4 tasks per chunk
    assert len(labels) == 4 and len(names) == 4, labels
    assert branch(labels, "expand1x1") and branch(labels, "expand3x3"), labels
    result, ran = run_recorded(client, y)
    by_label = {n.rsplit("-", 1)[0]: w for n, w in ran.items() if n.startswith("tf-")}
    assert branch(by_label, "expand1x1") and branch(by_label, "expand3x3"), by_label
    np.testing.assert_allclose(result, model.run(None, feed)[0], rtol=1e-5, atol=1e-5)


def test_plan_defaults():
    model = lm.mlp((64, 512, 512, 10))
    assert make_plan(model).mode == "data"
    assert make_plan(model, workers=("a", "b"), split_bytes=1 << 20).mode == "model"
    assert make_plan(model, workers=("a",), split_bytes=1 << 20).mode == "data"
    with pytest.raises(ValueError, match="unknown parallel mode"):
        make_plan(model, mode="tensor")


def test_pipeline_on_worker_processes():
    """Programs, kernels and weights survive pickling to separate worker processes."""
    model = lm.cnn()
    feed = lm.sample(model, 6)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as c:
        ws = workers_of(c)
        model.to_cluster(c)
        y = model.predict(da.from_array(feed["x"], chunks=(2, 3, 8, 8)), mode="pipeline",
                          client=c)
        result, ran = run_recorded(c, y)
        stages = {stage_of(n, "s"): w for n, w in ran.items() if stage_of(n, "s") is not None}
        assert stages == {0: {ws[0]}, 1: {ws[1]}}, ran
        np.testing.assert_allclose(result, model.run(None, feed)[0], rtol=1e-5, atol=1e-5)
        data = model.predict(da.from_array(feed["x"], chunks=(2, 3, 8, 8)), client=c)
        np.testing.assert_allclose(c.compute(data).result(), result, rtol=1e-6)
    # the placed weights died with the cluster: later graphs carry the weights again, or
    # place them anew on whichever client is current (another test's, in a full run)
    local = model.predict(da.from_array(feed["x"], chunks=(2, 3, 8, 8)), client=None)
    np.testing.assert_allclose(local.compute(), result, rtol=1e-6)
