"""End-to-end Zarr -> Zarr throughput of ``taskflow.infer_zarr``, and its peak memory.

For the bundled digits CNN (tiny compute, many chunks: I/O and scheduling dominate) and
light_resnet50 (kernels dominate), on the same Zarr source, writing the same Zarr output:

- **taskflow**: ``infer_zarr`` on a 2-worker x 1-thread embedded cluster (processes);
- **(a) ORT loop**: ONNX Runtime (2 intra-op threads) in a plain loop, reading and writing the
  same chunks in this process;
- **(b) dask+ORT**: ``da.from_zarr(...).map_blocks(<ORT session per worker>).to_zarr(...)`` on
  the same cluster (1 ORT thread per worker);
- **(c) dask+taskflow**: as (b) with taskflow's ``Model.run`` per block: the same kernels as
  taskflow, so ``taskflow / (c)`` is what streaming itself costs or gains;
- **(d) Model.run loop**: (a) with taskflow's kernels (2 kernel threads): ``(a) / (d)`` is the
  kernel gap that no streaming can close.

Ratios are ``time(baseline) / time(taskflow)``: above 1 taskflow is faster. Times are the best
of ``--repeats``, variants interleaved in rotated order, after a warm-up job (Numba and ORT
loading, worker start). Peak memory is the summed RSS of this process (client and
scheduler) and every worker process, sampled every 20 ms, for a dataset 1x and 8x larger, each
on a fresh cluster: the digits CNN (8x more chunks) and uint8 224x224 images through a pooling
model (8x more bytes). Not a test. About 5 min on an idle 2-core machine.

    python benchmarks/bench_stream.py [--cnn-images 16384] [--chunk 16] [--resnet-images 128]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import dask.array as da
import numpy as np
import onnx
import psutil
import zarr
from onnx import TensorProto, helper

import taskflow as tf
from taskflow.dask import threads
from taskflow.demo import load_digits

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
DIGITS = Path(tf.__file__).parent / "data" / "digits_cnn.onnx"
CORES = threads.usable_cores()


# --- baselines -----------------------------------------------------------------------------------
def ort_session(path: str, n_threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = n_threads, 1
    opts.log_severity_level = 3
    # Spinning idle threads make ORT collapse when other processes share the cores (this
    # machine is shared); not spinning costs it a few percent when idle.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def ort_loop(path: str, src: str, dst: str) -> None:
    sess = ort_session(path, CORES)
    name = sess.get_inputs()[0].name
    x = zarr.open_array(src, mode="r")
    y = None
    for lo in range(0, x.shape[0], x.chunks[0]):
        out = sess.run(None, {name: x[lo:lo + x.chunks[0]]})[0]
        if y is None:
            y = zarr.create_array(dst, shape=(x.shape[0], *out.shape[1:]), dtype=out.dtype,
                                  chunks=(x.chunks[0], *out.shape[1:]), overwrite=True)
        y[lo:lo + len(out)] = out


def model_loop(model: tf.Model, src: str, dst: str) -> None:
    name = model.get_inputs()[0].name
    x = zarr.open_array(src, mode="r")
    threads.apply_kernel_threads(CORES)
    try:
        y = None
        for lo in range(0, x.shape[0], x.chunks[0]):
            out = model.run(None, {name: x[lo:lo + x.chunks[0]]})[0]
            if y is None:
                y = zarr.create_array(dst, shape=(x.shape[0], *out.shape[1:]), dtype=out.dtype,
                                      chunks=(x.chunks[0], *out.shape[1:]), overwrite=True)
            y[lo:lo + len(out)] = out
    finally:
        threads.reset_kernel_threads()


def _block(x: np.ndarray, path: str, engine: str) -> np.ndarray:
    """One map_blocks call: the worker's ORT session or taskflow model, made once per worker
    (kept on the Worker object: this function is pickled by value, its globals with it)."""
    from distributed import get_worker

    worker = get_worker()
    cache = worker.__dict__.setdefault("_bench_models", {})
    if (path, engine) not in cache:
        cache[path, engine] = ort_session(path, 1) if engine == "ort" else tf.load(path)
    runner = cache[path, engine]
    if engine == "taskflow":
        # The plan's kernel threads, as infer_zarr's tasks set them: Numba's per-thread default
        # is its pool size, which is not the plan's when the parent imported Numba first.
        threads.ensure_kernel_threads()
    name = runner.get_inputs()[0].name
    return runner.run(None, {name: x})[0]


def dask_job(client, path: str, src: str, dst: str, out_shape: tuple, engine: str) -> None:
    x = da.from_zarr(src)
    y = x.map_blocks(_block, path, engine, dtype=np.float32,
                     drop_axis=list(range(1, x.ndim)), new_axis=list(range(1, 1 + len(out_shape))),
                     chunks=(x.chunks[0], *((n,) for n in out_shape)))
    y.to_zarr(dst, overwrite=True, compute=True)


# --- measuring -----------------------------------------------------------------------------------
class PeakRSS:
    """Peak of this process's RSS plus its children's, sampled in a thread."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def _total(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def __enter__(self) -> PeakRSS:
        self.start = self._total()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._total())
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._total())


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def write_source(path: str, x: np.ndarray, chunk: int) -> str:
    zarr.create_array(path, shape=x.shape, chunks=(chunk, *x.shape[1:]), dtype=x.dtype,
                      overwrite=True)[:] = x
    return path


def compare(title: str, model_path: str, x: np.ndarray, chunk: int, repeats: int,
            variants: tuple[str, ...], tmp: str) -> dict[str, float]:
    model = tf.load(model_path)
    onnx_path = os.path.join(tmp, "model.onnx")
    model.save(onnx_path)  # batch made symbolic: ORT then takes any chunk size
    src = write_source(os.path.join(tmp, f"{title}-src.zarr"), x, chunk)
    warm = write_source(os.path.join(tmp, f"{title}-warm.zarr"), x[:4 * chunk], chunk)
    out_shape = tuple(model.run(None, {model.get_inputs()[0].name: x[:1]})[0].shape[1:])
    dst = os.path.join(tmp, f"{title}-dst.zarr")
    best: dict[str, float] = {}
    with tf.Cluster(n_workers=2, threads_per_worker=1, kernel_threads=1, quiet=True) as cluster:
        client = cluster.client
        runs = {
            "taskflow": lambda s: tf.infer_zarr(model, s, dst, overwrite=True, client=cluster,
                                                progress="none"),
            "(a) ORT loop": lambda s: ort_loop(onnx_path, s, dst),
            "(b) dask+ORT": lambda s: dask_job(client, onnx_path, s, dst, out_shape, "ort"),
            "(c) dask+taskflow": lambda s: dask_job(client, onnx_path, s, dst, out_shape,
                                                    "taskflow"),
            "(d) Model.run loop": lambda s: model_loop(model, s, dst),
        }
        for name in variants:
            runs[name](warm)
        for r in range(repeats):  # rotated, so background load hits every variant alike
            for name in variants[r % len(variants):] + variants[:r % len(variants)]:
                shutil.rmtree(dst, ignore_errors=True)
                best[name] = min(best.get(name, float("inf")), timed(partial(runs[name], src)))
    n = len(x)
    print(f"\n{title}: {n} samples {x.shape[1:]} {x.dtype}, chunks of {chunk} "
          f"({-(-n // chunk)} chunks), best of {repeats}")
    print(f"  {'variant':<22}{'seconds':>9}{'samples/s':>12}{'taskflow ratio':>16}")
    for name, seconds in best.items():
        ratio = seconds / best["taskflow"]
        print(f"  {name:<22}{seconds:>9.2f}{n / seconds:>12,.0f}{ratio:>15.2f}x")
    return best


def pool_model() -> tf.Model:
    nodes = [helper.make_node("GlobalAveragePool", ["images"], ["p"]),
             helper.make_node("Flatten", ["p"], ["means"], axis=1)]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info(
        "images", TensorProto.FLOAT, ["N", 3, 224, 224])], [helper.make_tensor_value_info(
            "means", TensorProto.FLOAT, ["N", 3])])
    return tf.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def memory(title: str, model: tf.Model, make, sizes: tuple[int, int], chunk: int,
           preprocess, tmp: str) -> None:
    peaks = []
    for n in sizes:
        src = write_source(os.path.join(tmp, f"mem-{title}-{n}.zarr"), make(n), chunk)
        dst = os.path.join(tmp, f"mem-{title}-{n}-out.zarr")
        with tf.Cluster(n_workers=2, threads_per_worker=1, quiet=True) as cluster:
            tf.infer_zarr(model, src, dst + "-warm", client=cluster, progress="none",
                          preprocess=preprocess)  # loads the model and kernels in the workers
            with PeakRSS() as rss:
                s = tf.infer_zarr(model, src, dst, client=cluster, progress="none",
                                  preprocess=preprocess)
        shutil.rmtree(src)
        peaks.append(rss.peak)
        print(f"  {title}, {n:>7,} samples: {s.chunks_total:>5} chunks, {s.tasks:>4} tasks, "
              f"{s.seconds:6.2f} s; peak RSS {rss.peak / 2**20:7.0f} MiB (before "
              f"{rss.start / 2**20:.0f} MiB)")
    print(f"  {title}: peak 8x / 1x = {peaks[1] / peaks[0]:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cnn-images", type=int, default=16384)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--resnet-images", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip", nargs="*", default=[], choices=["cnn", "resnet", "memory"])
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-stream-")
    all_variants = ("taskflow", "(a) ORT loop", "(b) dask+ORT", "(c) dask+taskflow",
                    "(d) Model.run loop")
    try:
        print(f"{CORES} usable cores; taskflow {tf.__version__}; zarr {zarr.__version__}")
        images = load_digits()[0]
        if "cnn" not in args.skip:
            reps = -(-args.cnn_images // len(images))
            x = (np.tile(images, (reps, 1, 1, 1))[:args.cnn_images] / 16).astype(np.float32)
            compare("digits CNN", str(DIGITS), x, args.chunk, args.repeats, all_variants, tmp)
        if "resnet" not in args.skip:
            x = np.random.default_rng(0).random((args.resnet_images, 3, 224, 224), np.float32)
            compare("light_resnet50", str(LIGHT / "light_resnet50.onnx"), x, args.chunk,
                    args.repeats, all_variants[:4], tmp)
        if "memory" not in args.skip:
            print("\npeak memory (client + scheduler + 2 workers), 1x and 8x the data:")
            digits = tf.load(str(DIGITS))
            memory("digits CNN", digits,
                   lambda n: np.resize(images, (n, *images.shape[1:])), (16384, 131072), 64,
                   {"scale": 1 / 16}, tmp)
            rng = np.random.default_rng(1)
            memory("uint8 224x224 images", pool_model(),
                   lambda n: rng.integers(0, 256, (n, 3, 224, 224), dtype=np.uint8),
                   (256, 2048), 16, {"scale": "uint8"}, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
