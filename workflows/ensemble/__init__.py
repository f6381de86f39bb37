"""Ensemble: two models on the same input, their class probabilities averaged (fan-out,
fan-in), then top-k, on the bundled handwritten digits.

The two models are the bundled digits CNN (``taskflow/data/digits_cnn.onnx``, trained with
PyTorch by ``workflows/digits/train.py``) and a linear classifier (``digits_linear.onnx``:
ridge regression on the same training split, closed form in numpy, with a softmax whose
temperature is fitted on that split). The pipeline::

    images ──> scale ──┬──> cnn ────┬──> probabilities (average) ──> top3 ──> labels, scores
                       └──> linear ─┘

Examples
--------
>>> from workflows import ensemble                                      # doctest: +SKIP
>>> ensemble.make_data("digits.zarr")                                   # doctest: +SKIP
>>> ensemble.classify("digits.zarr", "predictions.zarr")                # doctest: +SKIP
>>> ensemble.accuracies("predictions.zarr", "digits.zarr")              # doctest: +SKIP
{'cnn': 0.98, 'linear': 0.95, 'ensemble': 0.98}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from workflows._common import cached, stream
from workflows.digits import make_data, training_split

HERE = Path(__file__).resolve().parent
PIPELINE_FILE = HERE / "pipeline.yaml"
LINEAR_FILE = HERE / "digits_linear.onnx"
#: Grey levels of the bundled digits run 0..16 (``taskflow.demo.PIXEL_MAX``).
PIXEL_MAX = 16.0
#: Ridge penalty: a light one (the 64 pixel features are few and correlated); the fit scores
#: 0.94 on the test split, against the CNN's 0.99.
RIDGE = 1.0
TOP_K = 3


def fit_linear() -> Any:
    """The linear classifier: ridge regression onto one-hot targets, softmax temperature by
    least log-loss on the training split; a :class:`taskflow.Model` taking ``(N, 1, 8, 8)``."""
    from taskflow.frontend import nn

    images, labels, _, _ = training_split()
    x = images.reshape(len(images), -1).astype(np.float64) / PIXEL_MAX
    x1 = np.hstack([x, np.ones((len(x), 1))])
    y = np.eye(10)[labels]
    w = np.linalg.solve(x1.T @ x1 + RIDGE * np.eye(x1.shape[1]), x1.T @ y)
    logits = x1 @ w

    def loss(t: float) -> float:
        z = t * logits
        z -= z.max(1, keepdims=True)
        return float(-(z[np.arange(len(z)), labels] - np.log(np.exp(z).sum(1))).mean())

    temperature = min(np.geomspace(0.5, 100, 200), key=loss)
    w *= temperature
    net = nn.Sequential([nn.Flatten(), nn.Dense(64, 10), nn.Softmax(axis=-1)],
                        input_shape=(1, 8, 8), name="digits_linear")
    net.load_state({"1.weight": w[:-1].T.astype(np.float32),
                    "1.bias": w[-1].astype(np.float32)})
    return net.to_model()


def linear_file() -> Path:
    """``digits_linear.onnx`` beside this file (fitted by :func:`fit_linear` if missing)."""
    return cached(LINEAR_FILE, lambda tmp: fit_linear().save(tmp))


def build_pipeline(cnn: Any = None, linear: Any = None, *, k: int = TOP_K,
                   weights: Any = None) -> Any:
    """``images`` (uint8 ``(N, 1, 8, 8)``) -> ``labels``, ``scores`` (top ``k``) and the
    averaged ``probabilities``; the two models' own outputs are values ``cnn``, ``linear``.

    Examples
    --------
    >>> pipe = build_pipeline()
    >>> [s.name for s in pipe.stages], pipe.output_names
    (['scale', 'cnn', 'linear', 'probabilities', 'top'], ['labels', 'scores', 'probabilities'])
    """
    import taskflow as tf
    from taskflow.demo import load_digits_model
    from taskflow.pipeline.steps import Average, Normalize, TopK

    return tf.Pipeline([
        tf.Stage("scale", Normalize(scale=1 / PIXEL_MAX), inputs=["images"]),
        tf.Stage("cnn", cnn if cnn is not None else load_digits_model(), inputs=["scale"]),
        tf.Stage("linear", linear if linear is not None else linear_file(), inputs=["scale"]),
        tf.Stage("probabilities", Average(weights), inputs=["cnn", "linear"]),
        tf.Stage("top", TopK(k), outputs=["labels", "scores"]),
    ], name="digits_ensemble", outputs=["labels", "scores", "probabilities"])


def classify(source: str | os.PathLike, target: str | os.PathLike, *, pipe: Any = None,
             **options: Any) -> Any:
    """Stream ``source``'s ``images`` into ``target``; ``options`` go to
    :func:`workflows._common.stream`. Returns the job summary."""
    return stream(pipe if pipe is not None else build_pipeline(), source, target, **options)


def accuracies(target: str | os.PathLike, source: str | os.PathLike,
               pipe: Any = None) -> dict[str, float]:
    """Top-1 accuracy of the ensemble (read from ``target``) and, for comparison, of each
    model alone (run in this process on ``source``'s images)."""
    import zarr

    src = zarr.open_group(str(source), mode="r")
    images, truth = src["images"][:], src["truth"][:]
    pipe = pipe if pipe is not None else build_pipeline()
    cnn, linear = pipe.run(["cnn", "linear"], {"images": images})
    labels = zarr.open_group(str(target), mode="r")["labels"][:, 0]
    return {"cnn": float((cnn.argmax(1) == truth).mean()),
            "linear": float((linear.argmax(1) == truth).mean()),
            "ensemble": float((labels == truth).mean())}


__all__ = ["PIPELINE_FILE", "accuracies", "build_pipeline", "classify", "fit_linear",
           "linear_file", "make_data", "training_split"]
