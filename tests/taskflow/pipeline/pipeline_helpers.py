"""Small models and functions for the pipeline tests."""

from __future__ import annotations

import numpy as np

import taskflow as tf
from taskflow.frontend import nn

RNG = np.random.default_rng(11)


def mlp(seed: int, n_in: int = 8, n_out: int = 5) -> tf.Model:
    """A random 2-layer MLP whose outputs spread with its input (checked by the tests)."""
    net = nn.Sequential([nn.Dense(n_in, 16, seed=seed), nn.ReLU(),
                         nn.Dense(16, n_out, seed=seed + 100)], input_shape=(n_in,))
    return net.to_model()


def scale(raw: np.ndarray) -> np.ndarray:
    return (raw / np.float32(255)).astype(np.float32)


def average(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a + b) / 2


def raw_rows(n: int, width: int = 8) -> np.ndarray:
    return RNG.integers(0, 256, (n, width)).astype(np.uint8)


def ensemble(a: tf.Model, b: tf.Model, k: int = 2) -> tf.Pipeline:
    """scale -> (a, b) -> average -> top-k: fan-out, fan-in and a step with two outputs."""
    from taskflow.pipeline.steps import TopK

    return tf.Pipeline([
        tf.Stage("pre", scale, inputs=["raw"]),
        tf.Stage("a", a, inputs=["pre"]),
        tf.Stage("b", b, inputs=["pre"]),
        tf.Stage("avg", average, inputs=["a", "b"]),
        tf.Stage("top", TopK(k), outputs=["labels", "scores"]),
    ], name="ensemble", outputs=["labels", "scores", "avg"])


def reference(a: tf.Model, b: tf.Model, raw: np.ndarray, k: int = 2) -> dict[str, np.ndarray]:
    """The ensemble computed by hand, with numpy only around the models."""
    x = scale(raw)
    avg = (a.run(None, {"input": x})[0] + b.run(None, {"input": x})[0]) / 2
    labels = np.argsort(-avg, axis=1, kind="stable")[:, :k]
    return {"labels": labels, "scores": np.take_along_axis(avg, labels, 1), "avg": avg}
