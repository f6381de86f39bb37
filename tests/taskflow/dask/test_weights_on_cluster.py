"""Weights live on the cluster: ``predict`` with a client scatters them once per cluster (keys
by content hash) and every later graph, of this model or of another with equal weights, only
references their keys."""

from __future__ import annotations

import cloudpickle
import dask
import dask.array as da
import numpy as np
import pytest
from distributed import Client, LocalCluster

import taskflow as tf
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
                      dashboard_address=None) as cluster, Client(cluster) as c:
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
