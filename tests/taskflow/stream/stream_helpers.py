"""Helpers for the streaming tests: small models, Zarr sources, references, and preprocess
callables that workers import by name (``tests.taskflow.stream.stream_helpers:slow`` on the
CLI)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import zarr
from onnx import TensorProto, helper, numpy_helper

import taskflow as tf
from taskflow.dask import threads
from taskflow.demo import load_digits
from taskflow.stream.manifest import done_chunks

ROOT = Path(__file__).resolve().parents[3]
#: More chunks than any test dataset has: the count :func:`done_markers` reads markers up to.
MAX_TEST_CHUNKS = 1 << 16
RNG = np.random.default_rng(7)
#: Seconds the ``slow`` preprocess sleeps per chunk: long enough to kill things mid-job.
SLOW_S = 0.08


# --- preprocess callables (importable on workers) ------------------------------------------------
def digits_scale(feed: dict) -> dict:
    return {k: v.astype(np.float32) / np.float32(16) for k, v in feed.items()}


def slow(feed: dict) -> dict:
    time.sleep(SLOW_S)
    return digits_scale(feed)


def reject_negative(feed: dict) -> dict:
    """Poison detector: a chunk holding a negative value raises (the test's bad chunk)."""
    for name, x in feed.items():
        if (x < 0).any():
            raise ValueError(f"input {name!r} holds negative values")
    return {k: v.astype(np.float32) / np.float32(16) for k, v in feed.items()}


# --- models --------------------------------------------------------------------------------------
def _model(nodes, inputs, outputs, weights, name) -> tf.Model:
    graph = helper.make_graph(nodes, name, inputs, outputs,
                              initializer=[numpy_helper.from_array(w, k)
                                           for k, w in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return tf.load(model)


def _vi(name, *shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, list(shape))


def rgb_model() -> tf.Model:
    """NCHW float32 (N, 3, 4, 5) -> 1x1 Conv + Relu "features" (N, 2, 4, 5) and pooled
    "scores" (N, 2): a model that needs uint8 NHWC images scaled, normalised and transposed."""
    w = (RNG.standard_normal((2, 3, 1, 1)) * 0.5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["images", "W"], ["c"]),
             helper.make_node("Relu", ["c"], ["features"]),
             helper.make_node("GlobalAveragePool", ["features"], ["p"]),
             helper.make_node("Flatten", ["p"], ["scores"], axis=1)]
    return _model(nodes, [_vi("images", "N", 3, 4, 5)],
                  [_vi("features", "N", 2, 4, 5), _vi("scores", "N", 2)], {"W": w}, "rgb")


def two_input_model() -> tf.Model:
    """Inputs "a" (N, 4) and "b" (N, 4): outputs "mixed" = a @ M + b and "prod" = a * b."""
    m = (RNG.standard_normal((4, 4))).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["a", "M"], ["am"]),
             helper.make_node("Add", ["am", "b"], ["mixed"]),
             helper.make_node("Mul", ["a", "b"], ["prod"])]
    return _model(nodes, [_vi("a", "N", 4), _vi("b", "N", 4)],
                  [_vi("mixed", "N", 4), _vi("prod", "N", 4)], {"M": m}, "two_in")


def digits_model() -> tf.Model:
    from taskflow.demo import load_digits_model

    return load_digits_model()


def other_digits_model() -> tf.Model:
    """The digits CNN with one weight nudged: same interface, different content hash."""
    from taskflow.demo import load_digits_model

    model = load_digits_model(optimize=False)
    name = next(iter(model.graph.initializers))
    model.graph.initializers[name] = model.graph.initializers[name] + np.float32(1e-3)
    return tf.Model(model.graph)


# --- data and references -------------------------------------------------------------------------
def digits_images(n: int | None = None) -> np.ndarray:
    images = load_digits()[0]
    return images if n is None else images[:n]


def write_array(path: Path | str, data: np.ndarray, chunk: int, zarr_format: int = 3,
                name: str | None = None) -> str:
    """``data`` as a Zarr array (or as array ``name`` of a group) chunked ``chunk`` rows."""
    chunks = (chunk, *data.shape[1:])
    if name is None:
        arr = zarr.open_array(str(path), mode="w", shape=data.shape, chunks=chunks,
                              dtype=data.dtype, zarr_format=zarr_format)
    else:
        group = zarr.open_group(str(path), mode="a", zarr_format=zarr_format)
        arr = group.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype,
                                 overwrite=True)
    arr[:] = data
    return str(path)


def reference(model: tf.Model, feed: dict[str, np.ndarray], batch: int, preprocess=None,
              outputs=None) -> list[np.ndarray]:
    """In-process ``Model.run`` over the same row ranges as the job's tasks, with 1 kernel
    thread like the workers, so bytes can be compared."""
    from taskflow.stream.preprocess import parse_preprocess

    pre = parse_preprocess(preprocess, [v.name for v in model.graph.inputs])
    rows = len(next(iter(feed.values())))
    threads.apply_kernel_threads(1)
    try:
        parts = []
        for lo in range(0, rows, batch):
            chunk = {k: v[lo:lo + batch] for k, v in feed.items()}
            parts.append(model.run(outputs, pre.apply(chunk) if pre else chunk))
    finally:
        threads.reset_kernel_threads()
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def done_markers(target: Path | str) -> int:
    """Chunks marked done in a target's manifest, read as a resume reads them
    (:func:`taskflow.stream.manifest.done_chunks`: a marker write that a kill interrupted can
    leave a temporary file there, which marks nothing)."""
    return int(done_chunks(str(target), MAX_TEST_CHUNKS).sum())


def cli() -> list[str]:
    script = shutil.which("taskflow", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "taskflow.cli"]


def cli_env() -> dict[str, str]:
    """So the CLI and its workers import ``tests.taskflow.stream.stream_helpers``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """``taskflow run ARGS``; output decoded without newline translation (keeps the ``\r``
    of the progress line)."""
    proc = subprocess.run([*cli(), "run", *args], capture_output=True, timeout=timeout,
                          env=cli_env(), cwd=ROOT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(),
                                       proc.stderr.decode())
