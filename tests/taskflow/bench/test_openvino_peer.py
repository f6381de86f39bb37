"""OpenVINO as a peer of ``taskflow bench``: it runs the model taskflow loaded and agrees."""

from __future__ import annotations

import numpy as np
import pytest

from taskflow.bench.openvino_peer import openvino_runner
from taskflow.demo import load_digits, load_digits_model

ov = pytest.importorskip("openvino", reason="openvino is a benchmark peer (pip install .[bench])")


@pytest.mark.parametrize("precision", ["f32", None])
def test_openvino_runs_the_model_and_agrees(precision):
    model = load_digits_model()
    images, _, test_idx = load_digits()
    x = images[test_idx[:32]].astype(np.float32) / 16
    run = openvino_runner(model, threads=1, precision=precision)
    assert run is not None
    (got,) = run(x)
    (want,) = model.run(None, {"input": x})
    assert want.std(axis=0).max() > 1e-3  # the inputs matter
    tol = 1e-4 if precision == "f32" else 2e-2  # the default may be bf16 on AMX machines
    np.testing.assert_allclose(got, want, atol=tol)
