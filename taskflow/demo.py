"""``taskflow demo``: classify the bundled handwritten-digits test split with the bundled CNN.

The model (``taskflow/data/digits_cnn.onnx``) and data (``digits.npz``) come with the package;
``workflows/digits/train.py`` made both (PyTorch training on scikit-learn's digits), so the demo
needs neither sklearn nor torch.

The demo runs :func:`digits_pipeline`: scale (grey levels / 16) -> CNN -> top-1 label and score,
a :class:`taskflow.Pipeline` (``workflows/digits`` is the same pipeline as a file). By default
it is the main job in miniature: the test images (uint8, as stored) and labels go into a
temporary Zarr group, :func:`taskflow.infer_zarr` streams them through the pipeline on an
embedded cluster, and the accuracy is computed from the *output* Zarr's ``labels``.
``mode="in-process"`` runs :meth:`Pipeline.run` batch by batch instead.
"""

from __future__ import annotations

import os
import tempfile
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from taskflow.model import Model
    from taskflow.pipeline import Pipeline

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
    from taskflow.model import load

    with resources.as_file(resources.files("taskflow.data").joinpath(MODEL_FILE)) as path:
        return load(path, **kw)


def digits_pipeline(model: Model | None = None) -> Pipeline:
    """``images`` (uint8 grey levels 0..16, ``(N, 1, 8, 8)``) -> ``labels`` and ``scores``
    (``(N, 1)``: the top class and its probability; the CNN ends in a softmax).

    Examples
    --------
    >>> from taskflow.demo import digits_pipeline, load_digits
    >>> images, labels, test_idx = load_digits()
    >>> out = digits_pipeline()({"images": images[test_idx[:8]]})
    >>> bool((out["labels"][:, 0] == labels[test_idx[:8]]).mean() > 0.8)
    True
    """
    from taskflow.pipeline import Pipeline, Stage
    from taskflow.pipeline.steps import Normalize, TopK

    return Pipeline([
        Stage("scale", Normalize(scale=1 / PIXEL_MAX), inputs=["images"]),
        Stage("cnn", model if model is not None else load_digits_model()),
        Stage("top1", TopK(1), outputs=["labels", "scores"]),
    ], name="digits")


def _predict(pipe: Pipeline, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Class index per image, running ``pipe`` in-process one batch at a time."""
    return np.concatenate([
        pipe.run(["labels"], {"images": images[k:k + batch_size]})[0][:, 0]
        for k in range(0, len(images), batch_size)
    ])


def run_demo(*, batch_size: int = 64, quiet: bool = False, mode: str = "zarr",
             workers: int | None = None) -> dict[str, Any]:
    """Classify the bundled digits test split; print one line per phase; return the figures.

    Parameters
    ----------
    batch_size : int
        Images per ``Model.run`` call (per task and output chunk in ``"zarr"`` mode).
    quiet : bool
        Print nothing.
    mode : {"zarr", "in-process"}
        Zarr -> Zarr on an embedded :class:`taskflow.Cluster`, or in this process.
    workers : int, optional
        Worker processes of the embedded cluster (default: the thread plan's).

    Returns
    -------
    dict
        ``model``, ``images``, ``correct``, ``accuracy``, ``seconds``, ``images_per_s``,
        ``batch_size``, ``mode``.

    Examples
    --------
    >>> from taskflow.demo import run_demo
    >>> run_demo()["accuracy"] > 0.95                           # doctest: +SKIP
    digits_cnn: loaded model (8 nodes, 13,899 parameters) in 0.02 s
    ...
    digits_cnn: 450 test images, accuracy 0.998, 2,104 images/s (zarr -> zarr, 2 workers)
    True
    """
    say = (lambda *a: None) if quiet else print
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size!r}")
    if mode not in ("zarr", "in-process"):
        raise ValueError(f"mode={mode!r}; expected 'zarr' or 'in-process'")
    t0 = time.perf_counter()
    model = load_digits_model()
    say(f"digits_cnn: loaded model ({len(model.graph.nodes)} nodes, "
        f"{model.graph.parameter_count():,} parameters) in {time.perf_counter() - t0:.2f} s")
    images, labels, test_idx = load_digits()
    say(f"digits_cnn: loaded {len(images)} images, {len(test_idx)} in the test split, "
        f"batches of {batch_size}")
    pipe = digits_pipeline(model)
    if mode == "zarr":
        predicted, y, seconds, mode = _zarr_job(pipe, images[test_idx], labels[test_idx],
                                                batch_size, workers, say)
    else:
        y = labels[test_idx]
        t0 = time.perf_counter()
        predicted = _predict(pipe, images[test_idx], batch_size)
        seconds = time.perf_counter() - t0
    correct = int((predicted == y).sum())
    result = {"model": "digits_cnn", "images": len(y), "correct": correct,
              "accuracy": correct / len(y), "seconds": seconds,
              "images_per_s": len(y) / seconds, "batch_size": batch_size, "mode": mode}
    say(f"digits_cnn: {len(y)} test images, accuracy {result['accuracy']:.3f}, "
        f"{result['images_per_s']:,.0f} images/s ({result['mode']})")
    return result


def _zarr_job(pipe: Pipeline, images: np.ndarray, labels: np.ndarray, batch_size: int,
              workers: int | None, say: Any) -> tuple[np.ndarray, np.ndarray, float, str]:
    """Images -> temporary Zarr -> infer_zarr on an embedded cluster -> predictions read back
    from the output Zarr (with the labels, from the input Zarr)."""
    import zarr

    from taskflow.dask.cluster import Cluster
    from taskflow.stream.infer import infer_zarr

    with tempfile.TemporaryDirectory(prefix="taskflow-demo-") as tmp:
        src, dst = os.path.join(tmp, "digits.zarr"), os.path.join(tmp, "predictions.zarr")
        group = zarr.open_group(src, mode="w")
        group.create_array("images", data=images, chunks=(batch_size, *images.shape[1:]))
        group.create_array("labels", data=labels, chunks=(batch_size,))
        with Cluster(n_workers=workers, quiet=True) as cluster:
            say(f"digits_cnn: embedded cluster {cluster.plan.split()}; dashboard "
                f"{cluster.dashboard_link}")
            summary = infer_zarr(pipe, src, dst, client=cluster, progress="none")
        if not summary.ok:
            raise RuntimeError(f"the demo job did not finish:\n{summary}")
        say(f"digits_cnn: wrote {dst.replace(tmp, '<tmp>')}: {summary.chunks_done} chunks in "
            f"{summary.seconds:.2f} s")
        predicted = zarr.open_group(dst, mode="r")["labels"][:, 0]
        y = zarr.open_group(src, mode="r")["labels"][:]
        mode = f"zarr -> zarr, {cluster.plan.workers} workers"
    return predicted, y, summary.seconds, mode
