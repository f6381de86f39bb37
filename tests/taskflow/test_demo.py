"""The bundled digits CNN and data: accuracy on the test split, and ``taskflow demo``.

The accuracy floor (0.95; the model scores ~0.99) makes this an end-to-end check of the Conv,
BatchNormalization, MaxPool, Gemm and Softmax kernels on a real trained network.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from taskflow.demo import load_digits, load_digits_model, run_demo

MIN_ACCURACY = 0.95


def test_bundled_data_is_the_digits_set():
    images, labels, test_idx = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == np.uint8
    assert images.max() == 16
    assert labels.dtype == np.int64 and set(np.unique(labels)) == set(range(10))
    assert len(test_idx) == 450 and len(np.unique(test_idx)) == 450


def test_bundled_model_accuracy_on_test_split():
    result = run_demo(batch_size=50, quiet=True, mode="in-process")
    assert result["images"] == 450 and result["mode"] == "in-process"
    assert result["accuracy"] >= MIN_ACCURACY, result


def test_bundled_model_agrees_with_reference_kernels():
    images, _, test_idx = load_digits()
    x = {"input": images[test_idx[:64]].astype(np.float32) / 16}
    (fast,) = load_digits_model().run(None, x)
    (ref,) = load_digits_model(device="reference").run(None, x)
    np.testing.assert_allclose(fast, ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(fast.sum(1), 1, rtol=1e-5)


def test_bundled_model_matches_onnxruntime():
    """Accuracy alone misses subtle kernel bugs (a dropped BatchNorm shift still scores 0.98)."""
    ort = pytest.importorskip("onnxruntime")
    from importlib import resources

    images, _, test_idx = load_digits()
    x = {"input": images[test_idx].astype(np.float32) / 16}
    path = resources.files("taskflow.data").joinpath("digits_cnn.onnx")
    sess = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    (want,) = sess.run(None, x)
    (got,) = load_digits_model().run(None, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def run_cli_demo(*args: str) -> str:
    script = shutil.which("taskflow", path=str(Path(sys.executable).parent))
    cmd = [script] if script else [sys.executable, "-m", "taskflow.cli"]
    proc = subprocess.run([*cmd, "demo", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.timeout(120)
def test_cli_demo_streams_zarr_on_a_cluster_and_scores_the_output():
    """The main job: images in a Zarr store -> embedded cluster -> output Zarr -> accuracy."""
    out = run_cli_demo("--batch-size", "128")
    assert re.search(r"^digits_cnn: embedded cluster \d+ workers? x", out, re.MULTILINE), out
    assert re.search(r"^digits_cnn: wrote <tmp>/predictions.zarr: 4 chunks in", out,
                     re.MULTILINE), out
    m = re.search(r"^digits_cnn: 450 test images, accuracy (\d\.\d{3}), [\d,]+ images/s "
                  r"\(zarr -> zarr, \d+ workers?\)$", out, re.MULTILINE)
    assert m, out
    assert float(m.group(1)) >= MIN_ACCURACY


def test_cli_demo_in_process_prints_accuracy_line():
    out = run_cli_demo("--batch-size", "128", "--in-process")
    m = re.search(r"^digits_cnn: 450 test images, accuracy (\d\.\d{3}), [\d,]+ images/s "
                  r"\(in-process\)$", out, re.MULTILINE)
    assert m, out
    assert float(m.group(1)) >= MIN_ACCURACY
