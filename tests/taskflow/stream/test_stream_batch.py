"""``infer_zarr`` and the batch analysis: a multi-input transformer streams from a group with
one array per input (token ids, token types, mask) and gives ``Model.run``'s and
``Model.predict``'s numbers; a model whose rows mix is refused before any task runs."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import Client, LocalCluster

import taskflow as tf
from taskflow.errors import ShapeError
from tests.taskflow.dask import layout_models as lm

from .stream_helpers import write_array

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


def test_multi_input_encoder_streams_like_predict(tmp_path, client):
    model = lm.bert_layer(torchscript=True, sdpa=True)
    feed = lm.sample(model, 11)
    src = tmp_path / "tokens.zarr"
    for (name, a), chunk in zip(feed.items(), (4, 3, 5)):  # chunking may differ per input
        write_array(src, a, chunk, name=name)
    s = tf.infer_zarr(model, str(src), tmp_path / "out.zarr", batch_size=4, client=client,
                      progress="none")
    assert s.ok and s.chunks_done == 3
    (out_name,) = model.graph.output_names
    got = zarr.open_group(tmp_path / "out.zarr", mode="r")[out_name][:]
    (want,) = model.run(None, feed)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    lazy = model.predict({n: da.from_array(a, chunks=(4, *a.shape[1:]))
                          for n, a in feed.items()})
    np.testing.assert_allclose(lazy.compute(), got, rtol=1e-4, atol=1e-5)


def test_rows_that_mix_are_refused_naming_the_node(tmp_path, client):
    model = lm.softmax_over_batch()
    x = lm.sample(model, 8)["x"]
    src = write_array(tmp_path / "x.zarr", x, 4)
    with pytest.raises(ShapeError, match=r"'softmax_over_batch' \(Softmax\) is not "
                                         r"batch-local.*infer_zarr runs each chunk of 4 rows"):
        tf.infer_zarr(model, src, tmp_path / "out.zarr", client=client, progress="none")
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("name", ["minilm-torchscript-sdpa", "minilm-dynamo-sdpa",
                                  "vit-tiny-torchscript"])
def test_real_export_streams_like_run(name, tmp_path, client):
    """Real PyTorch exports (``benchmarks.models``) through ``infer_zarr``: chunks of 3 rows
    and a ragged one of 1, every input an array of one group."""
    from tests.taskflow.dask import real_models as rm

    model = tf.load(rm.exported(name))
    feed = rm.feed(name, batch=7)
    src = tmp_path / "src.zarr"
    for n, a in feed.items():
        write_array(src, a, 3, name=n)
    s = tf.infer_zarr(model, str(src), tmp_path / "out.zarr", client=client, progress="none")
    assert s.ok and s.chunks_done == 3
    out = zarr.open_group(tmp_path / "out.zarr", mode="r")
    for n, want in zip(model.graph.output_names, model.run(None, feed)):
        scale = float(np.max(np.abs(want))) or 1.0
        np.testing.assert_allclose(out[n][:], want, rtol=1e-4, atol=1e-5 * scale)
