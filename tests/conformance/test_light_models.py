"""The nine light model-zoo models: expected outputs, any batch size, and random weights vs ORT.

ONNX's expected outputs for these models are nearly uniform (every weight is 0.02), so each
architecture is also run with seeded random weights on random inputs and its pre-softmax
logits compared with ONNX Runtime's (relative error <= 1e-4, the issue's bar).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import taskflow as tf

from .light_models import (
    LIGHT_MODELS,
    dummy_input,
    expected_output,
    light_path,
    with_random_weights,
)

#: ORT's CPU provider (MLAS) and our kernels sum in different orders; 1e-4 relative to the
#: largest logit is the bar the issue sets.
LOGIT_RTOL = 1e-4


def test_all_nine_models_present():
    assert LIGHT_MODELS == ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2",
                            "resnet50", "shufflenet", "squeezenet", "vgg19", "zfnet512"]


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_expected_output_with_symbolic_batch(name):
    proto = onnx.load(light_path(name))
    model = tf.load(light_path(name))
    x_name, x = dummy_input(proto)
    (inp,) = model.get_inputs()
    assert inp.shape[0] == "N", f"{name}: batch not made symbolic: {inp.shape}"
    assert any("batch" in note for note in model.graph.notes)
    (y,) = model.run(None, {inp.name: x})
    np.testing.assert_allclose(y, expected_output(name), rtol=1e-3, atol=1e-7)
    # Same sample three times in one batch: three identical rows equal to the batch-1 result.
    (y3,) = model.run(None, {inp.name: np.concatenate([x, x, x])})
    assert y3.shape == (3,) + y.shape[1:]
    np.testing.assert_allclose(y3, np.concatenate([y, y, y]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_random_weights_match_onnxruntime(name):
    ort = pytest.importorskip("onnxruntime")
    proto = with_random_weights(onnx.load(light_path(name)), seed=1)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    x_name, x = dummy_input(proto)
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal(x.shape, dtype=np.float32) for _ in range(2)]
    expected = np.concatenate([sess.run(None, {x_name: xi})[0] for xi in xs])
    model = tf.load(proto)
    inp = model.get_inputs()[0].name
    (logits,) = model.run(None, {inp: np.concatenate(xs)})
    assert logits.shape == expected.shape
    assert np.std(expected) > 1e-3, "random weights should give non-uniform logits"
    err = np.max(np.abs(logits - expected)) / np.max(np.abs(expected))
    assert err <= LOGIT_RTOL, f"{name}: relative logit error {err:.2e} > {LOGIT_RTOL}"
