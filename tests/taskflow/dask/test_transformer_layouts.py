"""Transformer graphs through ``Model.predict``: every attention layout exporters write.

Each graph of :data:`layout_models.BATCH_LOCAL` keeps rows independent, so it must run fully
per chunk (no warning, one task per chunk) and give ``Model.run``'s numbers with chunks of 1,
2 and a ragged last chunk; ``Model.run`` itself is checked against ONNX Runtime.
"""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest

from . import layout_models as lm
from .test_lower import name_of, optimized_keys

pytestmark = pytest.mark.timeout(120)

#: (batch, rows per chunk): one-row chunks, two-row chunks, a ragged last chunk.
CHUNKINGS = [(3, 1), (4, 2), (5, 2)]


def as_dask(feed: dict[str, np.ndarray], rows: int) -> dict[str, da.Array]:
    return {k: da.from_array(v, chunks=(rows, *v.shape[1:])) for k, v in feed.items()}


@pytest.fixture(scope="module", params=sorted(lm.BATCH_LOCAL))
def layout_model(request):
    return request.param, lm.BATCH_LOCAL[request.param]()


@pytest.mark.parametrize("batch,rows", CHUNKINGS)
def test_predict_equals_run_per_chunk(layout_model, batch, rows):
    name, model = layout_model
    feed = lm.sample(model, batch)
    (want,) = model.run(None, feed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no node may fall back to the whole batch
        y = model.predict(as_dask(feed, rows))
    assert y.shape == want.shape and y.dtype == want.dtype
    got = y.compute(scheduler="threads")
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_one_task_per_chunk(layout_model):
    name, model = layout_model
    feed = lm.sample(model, 5)
    y = model.predict(as_dask(feed, 2))
    compute = {name_of(k) for k in optimized_keys(y)} - {
        name_of(k) for k in optimized_keys(y) if name_of(k).startswith(("tf-weight-", "array-"))}
    tasks = [k for k in optimized_keys(y) if name_of(k) in compute]
    assert len(tasks) == 3, (name, sorted(map(str, tasks)))


def test_run_matches_onnxruntime(layout_model):
    ort = pytest.importorskip("onnxruntime")
    name, model = layout_model
    feed = lm.sample(model, 3)
    proto = lm.BUILT[name]
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = sess.run(None, feed)
    np.testing.assert_allclose(model.run(None, feed)[0], want, rtol=1e-4, atol=1e-5)


def test_rows_that_mix_run_whole_with_one_warning():
    model = lm.softmax_over_batch()
    feed = lm.sample(model, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = model.predict(as_dask(feed, 2))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "'softmax_over_batch' (Softmax) is not batch-local" in messages[0]
    assert "axis 1" in messages[0]
    np.testing.assert_allclose(y.compute(scheduler="threads"), model.run(None, feed)[0],
                               rtol=1e-4, atol=1e-5)
    assert y.chunks[0] == (2, 2, 1)


def test_inputs_chunked_differently_share_one_batch_chunking():
    """Token ids, token types and mask chunked three ways: one chunking (the first input's)
    for all, the same numbers."""
    model = lm.BATCH_LOCAL["bert_ts_sdpa"]()
    feed = lm.sample(model, 7)
    x = {n: da.from_array(a, chunks=(c, *a.shape[1:])) for (n, a), c in zip(feed.items(),
                                                                               (3, 2, 7))}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = model.predict(x)
    assert y.chunks[0] == (3, 3, 1)
    np.testing.assert_allclose(y.compute(scheduler="threads"), model.run(None, feed)[0],
                               rtol=1e-4, atol=1e-5)


def test_outputs_keep_the_batch_where_the_graph_puts_it():
    """An output with the batch on axis 1 (sequence-first) is chunked along axis 1."""
    g = lm._G()
    t = g.op("Transpose", "x", perm=[1, 0, 2])
    model = g.model([lm._fin("x", "N", lm.S, lm.E)], g.op("Relu", t), "seq_first_out")
    feed = lm.sample(model, 5)
    y = model.predict(as_dask(feed, 2))
    assert y.shape == (lm.S, 5, lm.E) and y.chunks[1] == (2, 2, 1)
    np.testing.assert_allclose(y.compute(), model.run(None, feed)[0])


def test_output_with_the_batch_inner_on_its_axis():
    """(S, B, E) -> (S*B, E): no chunk is a block of the output; it comes back whole, right."""
    g = lm._G()
    t = g.op("Reshape", g.op("Transpose", "x", perm=[1, 0, 2]), g.const([-1, lm.E]))
    model = g.model([lm._fin("x", "N", lm.S, lm.E)], g.op("Relu", t), "inner_out")
    feed = lm.sample(model, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = model.predict(as_dask(feed, 2))
    assert y.shape == (lm.S * 5, lm.E)
    np.testing.assert_allclose(y.compute(scheduler="threads"), model.run(None, feed)[0])


def test_merged_output_is_chunked_by_batch_times_factor():
    g = lm._G()
    r = g.op("Reshape", "x", g.const([-1, lm.E]))  # (B*S, E)
    model = g.model([lm._fin("x", "N", lm.S, lm.E)], g.op("Relu", r), "merged_out")
    feed = lm.sample(model, 5)
    y = model.predict(as_dask(feed, 2))
    assert y.chunks[0] == (2 * lm.S, 2 * lm.S, lm.S)
    (got,) = dask.compute(y)
    np.testing.assert_allclose(got, model.run(None, feed)[0])


@pytest.fixture(scope="module")
def two_workers():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield client


@pytest.mark.parametrize("name", ["mha_sequence_first", "qkv_packed", "softmax_over_batch"])
@pytest.mark.parametrize("mode", ["pipeline", "branch"])
def test_pinned_modes_follow_the_batch_too(name, mode, two_workers):
    """Pipeline and branch plans submit units per chunk with ``client.submit``: the same
    layouts, resplits and joins as the lazy graph."""
    model = lm.BATCH_LOCAL[name]() if name in lm.BATCH_LOCAL else lm.softmax_over_batch()
    feed = lm.sample(model, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # softmax_over_batch warns: tested above
        y = model.predict(as_dask(feed, 2), mode=mode, client=two_workers)
    np.testing.assert_allclose(y.compute(), model.run(None, feed)[0], rtol=1e-4, atol=1e-5)
