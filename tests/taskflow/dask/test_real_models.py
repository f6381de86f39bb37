"""Real PyTorch exports through ``Model.predict``: MiniLM (real weights) eager and sdpa with
both exporters, a small ViT (``nn.MultiheadAttention``), a causal decoder (plain and packed
qkv). Chunks of 1 and 2 rows (ragged), threaded scheduler: every node runs per chunk and the
numbers are ``Model.run``'s."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest

import taskflow as tf

from . import real_models as rm

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("name", rm.NAMES)
def test_predict_equals_run(name):
    model = tf.load(rm.exported(name))
    feed = rm.feed(name)
    want = model.run(None, feed)
    x = {k: da.from_array(v, chunks=((1, 2), *v.shape[1:])) for k, v in feed.items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = model.predict(x)
    messages = [str(w.message) for w in caught if "batch-local" in str(w.message)]
    assert messages == []  # every node of these models keeps rows independent
    got = got if isinstance(got, tuple) else (got,)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        value = g.compute(scheduler="threads")
        scale = float(np.max(np.abs(w))) or 1.0
        np.testing.assert_allclose(value, w, rtol=1e-4, atol=1e-5 * scale)
