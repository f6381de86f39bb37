"""``workflows/image_classification``: uint8 images of several sizes in Zarr -> resize ->
normalise -> the colour CNN -> softmax -> top-3, streamed on a real cluster from the pipeline
file; labels and scores equal a hand-written numpy + ``Model.run`` reference, and follow the
images (every image's known dominant colour is found)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import taskflow as tf
from workflows import image_classification as ic
from workflows.image_classification.__main__ import main

from .workflow_helpers import address

pytestmark = pytest.mark.timeout(120)


def reference(images: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline by hand: bilinear resize (half-pixel centres) in numpy, scaling, the CNN
    through ``Model.run``, softmax and a full sort."""
    n, h, w, _ = images.shape

    def taps(n_in: int, n_out: int):
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        return pos - lo, lo, np.minimum(lo + 1, n_in - 1)

    (fy, y0, y1), (fx, x0, x1) = taps(h, ic.SIZE), taps(w, ic.SIZE)
    x = images.astype(np.float64)
    rows = x[:, y0] * (1 - fy)[:, None, None] + x[:, y1] * fy[:, None, None]
    small = rows[:, :, x0] * (1 - fx)[:, None] + rows[:, :, x1] * fx[:, None]
    small = np.clip(np.rint(small), 0, 255)
    feed = ((small / 255 - 0.5) / 0.5).transpose(0, 3, 1, 2).astype(np.float32)
    logits = tf.load(ic.model_file()).run(None, {"input": feed})[0].astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return labels, np.take_along_axis(p, labels, 1)


@pytest.mark.parametrize("shape", [(48, 64), (20, 24)])
def test_pipeline_file_streams_top3_equal_to_the_reference(tmp_path, cluster, shape):
    src = ic.make_data(tmp_path / "images.zarr", n=96, chunk=32, seed=len(shape) + shape[0],
                       height=shape[0], width=shape[1])
    dst = tmp_path / "labels.zarr"
    summary = tf.infer_zarr(ic.PIPELINE_FILE, src, dst, client=cluster, progress="none")
    assert summary.ok and summary.samples == 96
    out = zarr.open_group(str(dst), mode="r")
    labels, scores = out["labels"][:], out["scores"][:]
    assert labels.shape == scores.shape == (96, 3) and labels.dtype == np.int64
    images = zarr.open_group(src, mode="r")["images"][:]
    want_labels, want_scores = reference(images)
    np.testing.assert_array_equal(labels, want_labels)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-6)
    truth = zarr.open_group(src, mode="r")["truth"][:]
    assert ic.accuracy(dst, src) == 1.0 and len(set(truth)) == len(ic.CLASSES)
    assert (np.diff(scores, axis=1) <= 0).all() and (scores.sum(1) <= 1 + 1e-6).all()
    assert scores[:, 0].std() > 0.01  # confidence varies with the image


def test_module_cli_demo_data_and_classify(tmp_path, cluster, capsys):
    src, dst = str(tmp_path / "images.zarr"), str(tmp_path / "labels.zarr")
    assert main(["make-data", "-o", src, "-n", "64", "--chunk", "16"]) == 0
    assert main(["classify", "-i", src, "-o", dst, "--scheduler", address(cluster),
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "64 samples in 4 chunks" in text and "top-1 accuracy 1.000 on 64 images" in text
    first = zarr.open_group(src, mode="r")["truth"][0]
    assert f"image 0: {ic.CLASSES[first]} " in text


def test_bundled_model_file_is_the_built_cnn():
    rng = np.random.default_rng(0)
    corners = ic.corner_colors()
    x = corners[:, :, None, None] + rng.normal(0, 0.3, (8, 3, ic.SIZE, ic.SIZE))
    x = np.clip(x, -1, 1).astype(np.float32)  # each image: one class's colour and noise
    a = tf.load(ic.MODEL_FILE).run(None, {"input": x})[0]
    b = ic.build_cnn().run(None, {"input": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_array_equal(a.argmax(1), np.arange(8))
