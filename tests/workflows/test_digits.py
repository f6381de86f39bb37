"""``workflows/digits``: the bundled CNN as a pipeline, streamed Zarr -> Zarr on a real
cluster by ``taskflow run workflows/digits/pipeline.yaml`` and by ``python -m workflows.digits``;
labels and scores equal ``Model.run``'s argmax and max, and the accuracy is the model's."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from taskflow.demo import PIXEL_MAX, load_digits_model
from workflows import digits
from workflows.digits.__main__ import main

from .workflow_helpers import address, run_cli

pytestmark = pytest.mark.timeout(120)
MIN_ACCURACY = 0.95  # the model scores 0.989 on this split


@pytest.fixture(scope="module")
def reference():
    _, _, images, truth = digits.training_split()
    probs = load_digits_model().run(None, {"input": images.astype(np.float32) / PIXEL_MAX})[0]
    return images, truth, probs


def test_pipeline_file_on_the_cli_matches_model_run(tmp_path, cluster, reference):
    images, truth, probs = reference
    src = digits.make_data(tmp_path / "digits.zarr", chunk=100)
    dst = tmp_path / "predictions.zarr"
    proc = run_cli("run", "workflows/digits/pipeline.yaml", "-i", src, "-o", str(dst),
                   "--scheduler", address(cluster), "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    assert "450 samples in 5 chunks" in proc.stdout, proc.stdout
    out = zarr.open_group(str(dst), mode="r")
    assert sorted(out.array_keys()) == ["labels", "scores"]
    labels, scores = out["labels"][:], out["scores"][:]
    assert labels.shape == scores.shape == (450, 1)
    np.testing.assert_array_equal(labels[:, 0], probs.argmax(1))
    np.testing.assert_allclose(scores[:, 0], probs.max(1), rtol=1e-5)
    assert set(labels[:, 0]) == set(range(10))  # the answers follow the images
    assert digits.accuracy(dst, src) == pytest.approx((probs.argmax(1) == truth).mean())
    assert digits.accuracy(dst, src) >= MIN_ACCURACY


def test_module_cli_classifies_and_reports_the_accuracy(tmp_path, cluster, reference, capsys):
    _, truth, probs = reference
    src, dst = str(tmp_path / "digits.zarr"), str(tmp_path / "out.zarr")
    assert main(["make-data", "-o", src, "--chunk", "64"]) == 0
    assert main(["classify", "-i", src, "-o", dst, "--scheduler", address(cluster),
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    want = (probs.argmax(1) == truth).mean()
    assert f"digits: accuracy {want:.4f} on 450 test images" in text, text
    assert "450 samples in 8 chunks" in text
    assert main(["score", dst, src]) == 0
    assert f"accuracy {want:.4f}" in capsys.readouterr().out


def test_python_pipeline_equals_the_file(reference):
    images, _, _ = reference
    import taskflow as tf

    a = digits.build_pipeline()({"images": images[:40]})
    b = tf.load_pipeline(digits.PIPELINE_FILE)({"images": images[:40]})
    assert list(a) == list(b) == ["labels", "scores"]
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
