"""Digits: the bundled handwritten-digits CNN as a pipeline, scale -> CNN -> top-1, with its
accuracy on the held-out test split; ``taskflow demo`` runs the same pipeline
(:func:`taskflow.demo.digits_pipeline`).

``train.py`` here trained the model (``taskflow/data/digits_cnn.onnx``) and wrote the data
(``digits.npz``: scikit-learn's 8x8 digits, grey levels 0..16, and the test split).

Examples
--------
>>> from workflows import digits                                       # doctest: +SKIP
>>> digits.make_data("digits.zarr")                                    # doctest: +SKIP
>>> digits.classify("digits.zarr", "predictions.zarr")                 # doctest: +SKIP
>>> digits.accuracy("predictions.zarr", "digits.zarr")                 # doctest: +SKIP
0.9888888888888889
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from workflows._common import stream, top1_accuracy, write_labelled

HERE = Path(__file__).resolve().parent
PIPELINE_FILE = HERE / "pipeline.yaml"


def build_pipeline(model: Any = None) -> Any:
    """``images`` (uint8 ``(N, 1, 8, 8)``) -> ``labels``, ``scores`` (``(N, 1)``)."""
    from taskflow.demo import digits_pipeline

    return digits_pipeline(model)


def training_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train images, train labels, test images, test labels)`` of the bundled digits, as
    ``train.py`` split them (uint8 ``(N, 1, 8, 8)``, int64)."""
    from taskflow.demo import load_digits

    images, labels, test_idx = load_digits()
    train = np.setdiff1d(np.arange(len(labels)), test_idx)
    return images[train], labels[train], images[test_idx], labels[test_idx]


def make_data(path: str | os.PathLike, chunk: int = 64) -> str:
    """The test split as a Zarr group: ``images`` (chunks of ``chunk`` rows) and ``truth``."""
    _, _, images, truth = training_split()
    return write_labelled(path, images, truth, chunk)


def classify(source: str | os.PathLike, target: str | os.PathLike, *, pipe: Any = None,
             **options: Any) -> Any:
    """Stream ``source``'s ``images`` into ``target`` (``labels``, ``scores``); ``options`` go
    to :func:`workflows._common.stream`. Returns the job summary."""
    return stream(pipe if pipe is not None else build_pipeline(), source, target, **options)


accuracy = top1_accuracy  # the streamed labels against the source's truth


__all__ = ["PIPELINE_FILE", "accuracy", "build_pipeline", "classify", "make_data",
           "training_split"]
