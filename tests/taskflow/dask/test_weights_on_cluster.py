"""Weights live on the cluster: ``predict`` with a client scatters them once per cluster (keys
by content hash) and every later graph, of this model or of another with equal weights, only
references their keys."""

from __future__ import annotations

import time

import cloudpickle
import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster, get_task_stream

import taskflow as tf
from taskflow.dask.parallel import _state
from taskflow.dask.units import INLINE_CONST_BYTES

from . import lower_models as lm

pytestmark = pytest.mark.timeout(120)


def sent_bytes(y: da.Array) -> int:
    """What the client would ship to the scheduler: the optimised graph, pickled (a weight
    already on the cluster pickles as its key)."""
    (opt,) = dask.optimize(y)
    return len(cloudpickle.dumps(dict(opt.__dask_graph__())))


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as cluster, Client(cluster) as c:
        yield c


def weight_keys(client: Client) -> set:
    return {k for k in client.who_has() if str(k).startswith("('tf-weight-")}


def test_second_predict_ships_no_weights(client):
    model = lm.mlp((64, 512, 512, 10))
    weight_bytes = sum(np.asarray(w).nbytes for w in model.graph.initializers.values())
    x = np.random.default_rng(0).random((32, 64), dtype=np.float32)
    lazy = da.from_array(x, chunks=(8, 64))
    before = weight_keys(client)
    y1 = model.predict(lazy)
    placed = weight_keys(client) - before
    big = [w for w in model.graph.initializers.values()
           if np.asarray(w).nbytes > INLINE_CONST_BYTES]
    assert len(placed) == len(big) == 5  # each once (the last bias travels inline)
    y2 = model.predict(lazy)
    assert weight_keys(client) - before == placed  # nothing scattered again
    assert sent_bytes(y2) < 50_000 < weight_bytes
    assert sent_bytes(y1) < 50_000
    np.testing.assert_allclose(y2.compute(), model.run(None, {"x": x})[0], rtol=1e-5,
                               atol=1e-5)


def test_a_model_with_equal_weights_reuses_them(client):
    model = lm.mlp((64, 256, 10))
    x = da.from_array(np.ones((8, 64), np.float32), chunks=(4, 64))
    model.predict(x)
    before = weight_keys(client)
    twin = tf.Model(model.source_graph)  # loaded again: same content, same keys
    y = twin.predict(x)
    assert weight_keys(client) == before
    assert sent_bytes(y) < 50_000
    np.testing.assert_allclose(y.compute(), model.run(None, {"x": np.ones((8, 64),
                                                                          np.float32)})[0],
                               rtol=1e-5, atol=1e-5)


def holders(client: Client, futures: list) -> list[int]:
    return [len(v) for v in client.who_has(futures).values()]


def wait_for(check, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def test_broadcast_weights_outlive_the_active_memory_manager():
    """Dask's Active Memory Manager reduces every idle key to one replica. With the taskflow
    plugin on, the weights ``to_cluster`` broadcast stay on every worker between jobs, and the
    next job's chunks run on both workers (they ran on one: Locality pinned them to the one
    holder left). Without the plugin, Dask's own policy is back and reduces them."""
    model = lm.mlp((64, 512, 512, 10))
    x = np.random.default_rng(1).random((64, 64), dtype=np.float32)
    with dask.config.set({"distributed.scheduler.active-memory-manager.interval": "50ms"}):
        cluster = tf.Cluster(n_workers=2, threads_per_worker=1, processes=False, quiet=True)
    with cluster, cluster.client as c:
        model.to_cluster(c)
        weights = [f for f in _state(model).placed.values() if f.client is c]
        assert len(weights) == 5 and holders(c, weights) == [2] * 5
        control = c.scatter(np.ones(4096), broadcast=True, hash=False)
        assert wait_for(lambda: holders(c, [control]) == [1])  # the AMM runs...
        assert holders(c, weights) == [2] * 5  # ...and leaves the weights alone
        with get_task_stream(c) as ts:
            y = c.compute(model.predict(da.from_array(x, chunks=(8, 64)), client=c)).result()
        used = {r["worker"] for r in ts.data if str(r["key"]).startswith("('tf-")}
        assert len(used) == 2, used
        np.testing.assert_allclose(y, model.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
        c.unregister_scheduler_plugin("taskflow")
        assert wait_for(lambda: holders(c, weights) == [1] * 5)  # Dask's policy is back
