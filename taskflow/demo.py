"""``taskflow demo``: classify the bundled handwritten-digits test split with the bundled CNN.

The model (``taskflow/data/digits_cnn.onnx``) and data (``digits.npz``) come with the package;
``workflows/digits/train.py`` made both (PyTorch training on scikit-learn's digits), so the demo
needs neither sklearn nor torch.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .model import Model

MODEL_FILE = "digits_cnn.onnx"
DATA_FILE = "digits.npz"
#: Grey levels in ``digits.npz`` run 0..16; training fed ``images / 16`` as float32.
PIXEL_MAX = 16.0


def load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The bundled dataset: ``images`` uint8 (1797, 1, 8, 8), ``labels`` int64, ``test_idx``."""
    with resources.files("taskflow.data").joinpath(DATA_FILE).open("rb") as f, \
            np.load(f) as data:
        return data["images"], data["labels"], data["test_idx"]


def load_digits_model(**kw: Any) -> Model:
    """The bundled CNN as a :class:`taskflow.Model` (``kw`` goes to :func:`taskflow.load`)."""
    from .model import load

    with resources.as_file(resources.files("taskflow.data").joinpath(MODEL_FILE)) as path:
        return load(path, **kw)


def _predict(model: Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Class index per image, running ``model`` in-process one batch at a time."""
    return np.concatenate([
        model.run(None, {"input": images[k:k + batch_size]})[0].argmax(axis=1)
        for k in range(0, len(images), batch_size)
    ])


def run_demo(*, batch_size: int = 64, quiet: bool = False) -> dict[str, Any]:
    """Classify the bundled digits test split; print one line per phase; return the figures.

    Parameters
    ----------
    batch_size : int
        Images per ``Model.run`` call.
    quiet : bool
        Print nothing.

    Returns
    -------
    dict
        ``model``, ``images``, ``correct``, ``accuracy``, ``seconds``, ``images_per_s``,
        ``batch_size``, ``mode``.

    Examples
    --------
    >>> from taskflow.demo import run_demo
    >>> run_demo()["accuracy"] > 0.95                           # doctest: +SKIP
    digits_cnn: loaded model (14 nodes, 13,899 parameters) in 0.02 s
    ...
    True
    """
    say = (lambda *a: None) if quiet else print
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size!r}")
    t0 = time.perf_counter()
    model = load_digits_model()
    say(f"digits_cnn: loaded model ({len(model.graph.nodes)} nodes, "
        f"{model.graph.parameter_count():,} parameters) in {time.perf_counter() - t0:.2f} s")
    images, labels, test_idx = load_digits()
    x = images[test_idx].astype(np.float32) / np.float32(PIXEL_MAX)
    y = labels[test_idx]
    say(f"digits_cnn: loaded {len(images)} images, {len(x)} in the test split, "
        f"batches of {batch_size}")
    t0 = time.perf_counter()
    predicted = _predict(model, x, batch_size)
    seconds = time.perf_counter() - t0
    correct = int((predicted == y).sum())
    result = {"model": "digits_cnn", "images": len(x), "correct": correct,
              "accuracy": correct / len(x), "seconds": seconds,
              "images_per_s": len(x) / seconds, "batch_size": batch_size,
              "mode": "in-process"}
    say(f"digits_cnn: {len(x)} test images, accuracy {result['accuracy']:.3f}, "
        f"{result['images_per_s']:,.0f} images/s ({result['mode']})")
    return result
