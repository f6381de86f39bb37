"""Resume checks what the inputs hold, not only their shape: data replaced at the same path
(same shape, dtype and chunks) is refused instead of mixing old and new results (issue 14,
case 4)."""

from __future__ import annotations

import numpy as np
import pytest

import taskflow as tf
from taskflow.stream.manifest import ResumeError
from tests.taskflow.stream.stream_helpers import digits_images, digits_model, write_array


@pytest.fixture(scope="module")
def cluster():
    with tf.Cluster(n_workers=1, threads_per_worker=1, processes=False, quiet=True) as c:
        yield c


def test_resume_refuses_replaced_input_data(tmp_path, cluster):
    images = digits_images(64)
    src = write_array(tmp_path / "src.zarr", images, 16)
    dst = str(tmp_path / "out.zarr")
    model = digits_model()
    first = tf.infer_zarr(model, src, dst, client=cluster, progress="none",
                          preprocess={"scale": "uint8"})
    assert first.ok
    again = tf.infer_zarr(model, src, dst, client=cluster, progress="none", resume=True,
                          preprocess={"scale": "uint8"})
    assert again.ok and again.chunks_done == 0           # same data: nothing to redo

    write_array(src, images[::-1].copy(), 16)             # same shape, dtype, chunks
    with pytest.raises(ResumeError, match="content"):
        tf.infer_zarr(model, src, dst, client=cluster, progress="none", resume=True,
                      preprocess={"scale": "uint8"})


def test_the_fingerprint_follows_the_bytes_not_the_metadata(tmp_path):
    from taskflow.stream.sources import content_fingerprint

    data = np.arange(40, dtype=np.float32).reshape(10, 4)
    src = write_array(tmp_path / "a.zarr", data, 5)
    before = content_fingerprint(src)
    assert content_fingerprint(src) == before            # stable while nothing is written
    write_array(src, data + 1, 5)
    assert content_fingerprint(src) != before
