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
    result = run_demo(batch_size=50, quiet=True)
    assert result["images"] == 450
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


def test_cli_demo_prints_accuracy_line():
    script = shutil.which("taskflow", path=str(Path(sys.executable).parent))
    cmd = [script] if script else [sys.executable, "-m", "taskflow.cli"]
    proc = subprocess.run([*cmd, "demo", "--batch-size", "128"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"^digits_cnn: 450 test images, accuracy (\d\.\d{3}), [\d,]+ images/s "
                  r"\(in-process\)$", proc.stdout, re.MULTILINE)
    assert m, proc.stdout
    assert float(m.group(1)) >= MIN_ACCURACY
