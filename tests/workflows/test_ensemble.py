"""``workflows/ensemble``: the digits CNN and the linear classifier on the same images, their
probabilities averaged (fan-out, fan-in), streamed on a real cluster from the pipeline file;
every output equals the two ``Model.run`` calls averaged in numpy, and the ensemble scores
at least as well as its better member."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import taskflow as tf
from taskflow.demo import PIXEL_MAX, load_digits_model
from workflows import ensemble
from workflows.ensemble.__main__ import main

from .workflow_helpers import address

pytestmark = pytest.mark.timeout(120)


def test_pipeline_file_streams_the_average_of_both_models(tmp_path, cluster):
    src = ensemble.make_data(tmp_path / "digits.zarr", chunk=90)
    dst = tmp_path / "predictions.zarr"
    summary = tf.infer_zarr(ensemble.PIPELINE_FILE, src, dst, client=cluster, progress="none")
    assert summary.ok and summary.samples == 450
    out = zarr.open_group(str(dst), mode="r")
    assert sorted(out.array_keys()) == ["labels", "probabilities", "scores"]

    images = zarr.open_group(src, mode="r")["images"][:]
    x = {"input": images.astype(np.float32) / PIXEL_MAX}
    cnn = load_digits_model().run(None, x)[0]
    linear = tf.load(ensemble.LINEAR_FILE).run(None, x)[0]
    average = (cnn + linear) / 2
    np.testing.assert_allclose(out["probabilities"][:], average, rtol=1e-5, atol=1e-7)
    labels = np.argsort(-average, axis=1, kind="stable")[:, :3]
    np.testing.assert_array_equal(out["labels"][:], labels)
    np.testing.assert_allclose(out["scores"][:], np.take_along_axis(average, labels, 1),
                               rtol=1e-5)
    # the two members disagree somewhere, so the average is not either of them
    assert (cnn.argmax(1) != linear.argmax(1)).sum() >= 10
    acc = ensemble.accuracies(dst, src)
    truth = zarr.open_group(src, mode="r")["truth"][:]
    assert acc["ensemble"] == (labels[:, 0] == truth).mean()
    assert acc["ensemble"] >= max(acc["cnn"], acc["linear"]) and acc["linear"] >= 0.9


def test_module_cli_reports_each_models_accuracy(tmp_path, cluster, capsys):
    src, dst = str(tmp_path / "digits.zarr"), str(tmp_path / "out.zarr")
    assert main(["make-data", "-o", src]) == 0
    assert main(["classify", "-i", src, "-o", dst, "--scheduler", address(cluster),
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "450 samples in 8 chunks" in text
    assert "top-1 accuracy: cnn 0.98" in text and ", ensemble 0.99" in text, text


def test_linear_model_file_is_reproduced_by_the_fit():
    _, _, images, _ = ensemble.training_split()
    x = {"input": images[:50].astype(np.float32) / PIXEL_MAX}
    stored = tf.load(ensemble.LINEAR_FILE).run(None, x)[0]
    np.testing.assert_allclose(stored, ensemble.fit_linear().run(None, x)[0], rtol=1e-4,
                               atol=1e-6)
