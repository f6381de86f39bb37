"""Image classification: uint8 images ``(N, H, W, 3)`` in Zarr -> resize -> normalise -> CNN ->
softmax -> top-k labels and scores in Zarr.

The bundled CNN (``colors_cnn.onnx``, built here with :mod:`taskflow.frontend.nn`) names an
image's dominant colour, one of :data:`CLASSES`: a depthwise 3x3 blur, a 1x1 convolution that
scores each pixel against the eight corner colours of the RGB cube, a global average pool and
a temperature. Its weights are set by hand rather than trained, so its answers can be checked
(``make-data`` writes images with a known dominant colour). Any ONNX classifier that takes
``(N, 3, S, S)`` float32 fits in its place: ``build_pipeline(model="mobilenet.onnx", size=224,
mean=IMAGENET_MEAN, std=IMAGENET_STD)``, or edit ``pipeline.yaml``.

Examples
--------
>>> from workflows import image_classification as ic                 # doctest: +SKIP
>>> ic.make_data("images.zarr", n=256)                               # doctest: +SKIP
>>> ic.classify("images.zarr", "labels.zarr")                        # doctest: +SKIP
>>> ic.accuracy("labels.zarr", "images.zarr")                        # doctest: +SKIP
1.0
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from workflows._common import cached, stream, top1_accuracy, write_labelled

HERE = Path(__file__).resolve().parent
PIPELINE_FILE = HERE / "pipeline.yaml"
MODEL_FILE = HERE / "colors_cnn.onnx"
#: The CNN's classes: the corners of the RGB cube, in the order of its outputs.
CLASSES = ("black", "blue", "green", "cyan", "red", "magenta", "yellow", "white")
SIZE = 32  # the CNN's input side; images of any size are resized to it
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # pixels / 255 -> [-1, 1]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: Logit scale: mean colours a class apart differ by ~1 along an axis in [-1, 1] units, so 2
#: gives a clear top-1 on clean images and a spread softmax on mixed ones.
TEMPERATURE = 2.0
TOP_K = 3


def corner_colors() -> np.ndarray:
    """``(8, 3)`` RGB corners in [-1, 1], ordered as :data:`CLASSES` (bit 2 red, 1 green,
    0 blue)."""
    return np.array([[(c >> 2) & 1, (c >> 1) & 1, c & 1] for c in range(8)],
                    np.float32) * 2 - 1


def build_cnn() -> Any:
    """The colour CNN as a :class:`taskflow.Model`; ``logit_c = T * 2 * corner_c . mean colour``
    (the nearest corner wins: ``|x - c|^2 = |x|^2 - 2 x.c + 3`` for every corner)."""
    from taskflow.frontend import nn

    net = nn.Sequential([
        nn.Conv2d(3, 3, 3, padding=1, groups=3),  # per-channel blur: noise out, colour kept
        nn.Conv2d(3, len(CLASSES), 1),            # each pixel scored against each corner
        nn.GlobalAvgPool2d(), nn.Flatten(),
    ], input_shape=(3, SIZE, SIZE), name="colors_cnn")
    blur = np.full((3, 1, 3, 3), 1 / 9, np.float32)
    net.load_state({"0.weight": blur, "0.bias": np.zeros(3, np.float32),
                    "1.weight": (2 * TEMPERATURE * corner_colors())[:, :, None, None],
                    "1.bias": np.zeros(len(CLASSES), np.float32)})
    return net.to_model()


def model_file() -> Path:
    """``colors_cnn.onnx`` beside this file (written by :func:`build_cnn` if missing)."""
    return cached(MODEL_FILE, lambda tmp: build_cnn().save(tmp))


def build_pipeline(model: Any = None, *, size: int = SIZE, mean: Any = MEAN, std: Any = STD,
                   k: int = TOP_K) -> Any:
    """``images`` (uint8 ``(N, H, W, 3)``) -> ``labels``, ``scores`` (``(N, k)``), as
    ``pipeline.yaml`` declares it.

    Examples
    --------
    >>> pipe = build_pipeline()
    >>> x = np.zeros((2, 40, 50, 3), np.uint8); x[1, ..., 0] = 255
    >>> [CLASSES[i] for i in pipe({"images": x})["labels"][:, 0]]
    ['black', 'red']
    """
    import taskflow as tf
    from taskflow.pipeline.steps import Normalize, Resize, Softmax, TopK

    return tf.Pipeline([
        tf.Stage("resize", Resize(size, size), inputs=["images"]),
        tf.Stage("normalize", Normalize(scale=1 / 255, mean=list(mean), std=list(std),
                                        layout="NHWC->NCHW")),
        tf.Stage("cnn", model if model is not None else model_file()),
        tf.Stage("softmax", Softmax()),
        tf.Stage("top", TopK(k), outputs=["labels", "scores"]),
    ], name="image_classification")


def make_images(n: int, height: int = 48, width: int = 64, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images ``(n, height, width, 3)`` and their class: a background of one
    corner colour (each channel in 0..80 or 175..255), up to three rectangles of other colours
    over at most a quarter of it, and noise."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, len(CLASSES), n)
    corners = (corner_colors() > 0).astype(np.int16)  # (8, 3) of 0/1

    def shade(cls: np.ndarray) -> np.ndarray:
        return np.where(corners[cls], rng.integers(175, 256, (len(cls), 3)),
                        rng.integers(0, 81, (len(cls), 3)))

    images = np.empty((n, height, width, 3), np.int16)
    images[:] = shade(truth)[:, None, None, :]
    for i in range(n):
        for _ in range(rng.integers(0, 4)):
            h, w = rng.integers(2, height // 3), rng.integers(2, width // 3)
            y, x = rng.integers(0, height - h), rng.integers(0, width - w)
            images[i, y:y + h, x:x + w] = shade(rng.integers(0, len(CLASSES), 1))[0]
    images += rng.normal(0, 12, images.shape).astype(np.int16)
    return np.clip(images, 0, 255).astype(np.uint8), truth.astype(np.int64)


def make_data(path: str | os.PathLike, n: int = 256, chunk: int = 64, seed: int = 0,
              **size: int) -> str:
    """A Zarr group at ``path``: ``images`` (:func:`make_images`, chunks of ``chunk`` rows) and
    ``truth``, the class of each."""
    images, truth = make_images(n, seed=seed, **size)
    return write_labelled(path, images, truth, chunk)


def classify(source: str | os.PathLike, target: str | os.PathLike, *, pipe: Any = None,
             **options: Any) -> Any:
    """Stream ``source``'s ``images`` into ``target`` (``labels``, ``scores``); ``options`` go
    to :func:`workflows._common.stream`. Returns the job summary."""
    return stream(pipe if pipe is not None else build_pipeline(), source, target, **options)


accuracy = top1_accuracy  # the streamed labels against the source's truth


__all__ = ["CLASSES", "PIPELINE_FILE", "accuracy", "build_cnn", "build_pipeline", "classify",
           "make_data", "make_images", "model_file"]
