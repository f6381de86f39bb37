"""End-to-end Zarr -> Zarr throughput of ``taskflow.infer_zarr``, and its peak memory.

Issue 13's target: ``taskflow run`` Zarr -> Zarr at least as fast as the dask + ORT
``map_blocks`` peer (b) on SqueezeNet, ResNet-50 and the encoder over tokenised text.
``--models`` picks among ``digits`` (the bundled digits CNN: tiny compute, many chunks, so I/O
and scheduling dominate); ``squeezenet`` and ``resnet50`` (``light_*`` from ONNX's light model
zoo: kernels dominate; 1024 / 256 random images in chunks of 32); ``encoder``
(all-MiniLM-L6-v2 with mean pooling, real weights, over sentences tokenised and padded to 128
tokens: three int64 arrays of one group in chunks of 32, made by ``bench_stream_text.py``); and
``memory`` (peak memory for a dataset 1x and 8x larger). Every source is a Zarr group with one
array per model input; every variant writes a group holding the model's output:

- **taskflow**: ``infer_zarr`` on a 2-worker x 1-thread embedded cluster (processes);
- **(a) ORT loop**: ONNX Runtime (2 intra-op threads) in a plain loop over the same chunks in
  this process;
- **(b) dask+ORT**: ``da.map_blocks(<ORT session per worker>, *inputs).to_zarr(...)`` over
  ``da.from_zarr`` of each input, on the same cluster (1 ORT thread per worker);
- **(c) dask+taskflow**: (b) with taskflow's ``Model.run`` per block: the same kernels, so
  ``taskflow / (c)`` is what streaming itself costs or gains;
- **(d) Model.run loop** (digits only): (a) with taskflow's kernels: ``(a) / (d)`` is the
  kernel gap that no streaming can close.

Ratios are ``time(baseline) / time(taskflow)``: above 1 taskflow is faster. Times are the best
of ``--repeats``, variants interleaved in rotated order, after a warm-up on 2 chunks of 4 rows
(Numba and ORT loading, worker start) whose outputs are checked against the ORT loop's. The
last lines give taskflow vs (b) per model, PASS/FAIL against the target. Peak memory is the
summed RSS of this process (client, scheduler) and the workers, sampled every 20 ms, each size
on a fresh cluster: the digits CNN (8x more chunks) and uint8 224x224 images through a pooling
model (8x more bytes). Not a test: at full size, minutes per model on 2 cores (ResNet-50 and
the encoder most); the size flags shrink it. Over 400 lines: the peers, the table and the
memory section belong together; the text data lives apart.

    python benchmarks/bench_stream.py [--models digits squeezenet resnet50 encoder memory]
        [--repeats 3] [--cnn-images 16384] [--squeezenet-images 1024] [--resnet-images 256]
        [--sentences 512] [--chunk N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
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

if not __package__:  # run as a script: make ``benchmarks.*`` importable (the encoder needs it)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
DIGITS = Path(tf.__file__).parent / "data" / "digits_cnn.onnx"
CORES = threads.usable_cores()
VARIANTS = ("taskflow", "(a) ORT loop", "(b) dask+ORT", "(c) dask+taskflow",
            "(d) Model.run loop")
PEER = "(b) dask+ORT"  # issue 13's peer, and its target ratio
TARGET = 1.0
# Warm-up: a chunk per worker loads the model and kernels; small, as it is not timed
WARM_CHUNKS, WARM_CHUNK = 2, 4


# --- the models ----------------------------------------------------------------------------------
@dataclass
class Case:
    """One model and its data: ``inputs`` by model input name ("": a one-input model's input),
    samples along axis 0."""

    title: str
    model_path: str
    inputs: dict[str, np.ndarray]
    chunk: int
    variants: tuple[str, ...] = VARIANTS
    # the file ONNX Runtime runs; None: the model re-saved by taskflow (batch made symbolic)
    ort_path: str | None = None
    notes: list[str] = field(default_factory=list)


def digits_case(args, tmp: str) -> Case:
    images = load_digits()[0]
    reps = -(-args.cnn_images // len(images))
    x = (np.tile(images, (reps, 1, 1, 1))[:args.cnn_images] / 16).astype(np.float32)
    return Case("digits CNN", str(DIGITS), {"": x}, args.chunk or 16)


def light_case(name: str, n: int, chunk: int) -> Case:
    x = np.random.default_rng(0).random((n, 3, 224, 224), np.float32)
    # (d) left out: a Model.run loop over these is minutes on 2 cores and shows what (c) shows
    return Case(f"light_{name}", str(LIGHT / f"light_{name}.onnx"), {"": x}, chunk,
                VARIANTS[:4])


def encoder_case(args, tmp: str) -> Case:
    from benchmarks import bench_stream_text as text

    path = text.export_encoder(os.path.join(tmp, "encoder.onnx"))
    feed = text.tokenised_sentences(args.sentences, text.SEQ)
    real = feed["attention_mask"].sum(1)
    return Case(f"{text.ENCODER}", str(path), feed, args.chunk or 32, VARIANTS[:4],
                ort_path=str(path),
                notes=[f"tokens per row: {real.min()}-{real.max()}, mean {real.mean():.0f} "
                       f"of {text.SEQ}"])


CASES = {
    "digits": digits_case,
    "squeezenet": lambda args, tmp: light_case("squeezenet", args.squeezenet_images,
                                               args.chunk or 32),
    "resnet50": lambda args, tmp: light_case("resnet50", args.resnet_images, args.chunk or 32),
    "encoder": encoder_case,
}


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


def run_loop(runner, src: str, dst: str) -> None:
    """Chunk by chunk in this process: read every input's rows, run, write the first output."""
    names = [i.name for i in runner.get_inputs()]
    out_name = runner.get_outputs()[0].name
    group = zarr.open_group(src, mode="r")
    xs = [group[n] for n in names]
    n, step = xs[0].shape[0], xs[0].chunks[0]
    y = None
    for lo in range(0, n, step):
        out = runner.run(None, {name: x[lo:lo + step] for name, x in zip(names, xs)})[0]
        if y is None:
            y = zarr.open_group(dst, mode="w").create_array(
                out_name, shape=(n, *out.shape[1:]), dtype=out.dtype,
                chunks=(step, *out.shape[1:]))
        y[lo:lo + len(out)] = out


def ort_loop(path: str, src: str, dst: str) -> None:
    run_loop(ort_session(path, CORES), src, dst)


def model_loop(model: tf.Model, src: str, dst: str) -> None:
    threads.apply_kernel_threads(CORES)
    try:
        run_loop(model, src, dst)
    finally:
        threads.reset_kernel_threads()


def _block(*xs: np.ndarray, names: list[str], path: str, engine: str) -> np.ndarray:
    """One map_blocks call, a block per input in ``names``: the worker's ORT session or taskflow
    model, made once per worker (kept on the Worker object: this function is pickled by value,
    its globals with it)."""
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
    return runner.run(None, dict(zip(names, xs)))[0]


def dask_job(path: str, names: list[str], src: str, dst: str, output: tuple[str, tuple, str],
             engine: str) -> None:
    """``map_blocks`` over ``da.from_zarr`` of every input (blocks aligned: same chunking)."""
    out_name, out_shape, out_dtype = output
    xs = [da.from_zarr(src, component=n) for n in names]
    y = da.map_blocks(_block, *xs, names=names, path=path, engine=engine, dtype=out_dtype,
                      drop_axis=list(range(1, xs[0].ndim)),
                      new_axis=list(range(1, 1 + len(out_shape))),
                      chunks=(xs[0].chunks[0], *((n,) for n in out_shape)))
    y.to_zarr(dst, component=out_name, overwrite=True, compute=True)


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


def write_group(path: str, arrays: dict[str, np.ndarray], chunk: int) -> str:
    group = zarr.open_group(path, mode="w")
    for name, x in arrays.items():
        group.create_array(name, shape=x.shape, chunks=(chunk, *x.shape[1:]),
                           dtype=x.dtype)[:] = x
    return path


def check_outputs(outs: dict[str, str], out_name: str, reference: str) -> str:
    """Largest difference of each variant's warm-up output from ``reference``'s, relative to
    the reference's largest magnitude; raises when one is off by more than float32 noise."""
    want = zarr.open_group(outs[reference], mode="r")[out_name][:]
    scale = float(np.abs(want).max()) or 1.0
    worst = max(float(np.abs(zarr.open_group(d, mode="r")[out_name][:] - want).max()) / scale
                for d in outs.values())
    if worst > 1e-3:
        raise RuntimeError(f"warm-up outputs differ from {reference!r}'s by {worst:.2e} "
                           "(relative): a variant computes something else")
    # the light zoo's weights are constants, so its softmax outputs are all 0.001
    constant = " (outputs constant: a vacuous check)" if np.ptp(want) == 0 else ""
    return f"outputs agree with {reference} to {worst:.1e} (relative){constant}"


def compare(case: Case, repeats: int, tmp: str) -> tuple[dict[str, float], tf.JobSummary]:
    """Best time of each variant of ``case``; the taskflow job's summary of its best run."""
    model = tf.load(case.model_path)
    inputs = {name or model.get_inputs()[0].name: x for name, x in case.inputs.items()}
    ort_path = case.ort_path
    if ort_path is None:
        ort_path = os.path.join(tmp, "model.onnx")
        model.save(ort_path)  # batch made symbolic: ORT then takes any chunk size
    key = case.title.replace(" ", "-")
    src = write_group(os.path.join(tmp, f"{key}-src.zarr"), inputs, case.chunk)
    warm = write_group(os.path.join(tmp, f"{key}-warm.zarr"),
                       {k: v[:WARM_CHUNKS * WARM_CHUNK] for k, v in inputs.items()}, WARM_CHUNK)
    first = model.run(None, {k: v[:1] for k, v in inputs.items()})[0]
    out_name = model.get_outputs()[0].name
    output = (out_name, tuple(first.shape[1:]), first.dtype.str)
    dst = os.path.join(tmp, f"{key}-dst.zarr")
    best: dict[str, float] = {}
    summaries: dict[float, tf.JobSummary] = {}

    def taskflow_job(s: str, d: str) -> None:
        summary = tf.infer_zarr(model, s, d, overwrite=True, client=cluster, progress="none",
                                outputs=[out_name])
        summaries[summary.seconds] = summary

    with tf.Cluster(n_workers=2, threads_per_worker=1, kernel_threads=1, quiet=True) as cluster:
        runs = {
            "taskflow": taskflow_job,
            "(a) ORT loop": partial(ort_loop, ort_path),
            "(b) dask+ORT": partial(dask_job, ort_path, list(inputs), output=output,
                                    engine="ort"),
            "(c) dask+taskflow": partial(dask_job, ort_path, list(inputs), output=output,
                                         engine="taskflow"),
            "(d) Model.run loop": partial(model_loop, model),
        }
        outs = {v: os.path.join(tmp, f"{key}-warm-{i}.zarr") for i, v in enumerate(case.variants)}
        for name in case.variants:
            runs[name](warm, outs[name])
        case.notes.append(check_outputs(outs, out_name, "(a) ORT loop"))
        summaries.clear()
        variants = case.variants
        for r in range(repeats):  # rotated, so background load hits every variant alike
            for name in variants[r % len(variants):] + variants[:r % len(variants)]:
                shutil.rmtree(dst, ignore_errors=True)
                best[name] = min(best.get(name, float("inf")),
                                 timed(partial(runs[name], src, dst)))
    return best, summaries[min(summaries)]


def print_table(case: Case, best: dict[str, float], summary: tf.JobSummary,
                repeats: int) -> None:
    x = next(iter(case.inputs.values()))
    n = len(x)
    shapes = ", ".join(f"{k or 'x'} {v.shape[1:]} {v.dtype}" for k, v in case.inputs.items())
    print(f"\n{case.title}: {n} samples ({shapes}), chunks of {case.chunk} "
          f"({-(-n // case.chunk)} chunks), best of {repeats}")
    for note in case.notes:
        print(f"  {note}")
    print(f"  {'variant':<22}{'seconds':>9}{'samples/s':>12}{'taskflow ratio':>16}")
    for name, seconds in best.items():
        ratio = seconds / best["taskflow"]
        print(f"  {name:<22}{seconds:>9.2f}{n / seconds:>12,.0f}{ratio:>15.2f}x")
    parts = ", ".join(f"{k} {v:.2f}" for k, v in summary.task_seconds.items())
    print(f"  taskflow's best job: {summary.tasks} tasks; task seconds summed over both "
          f"workers: {parts}")


def print_verdicts(results: dict[str, dict[str, float]]) -> None:
    print(f"\ntaskflow vs {PEER} (target >= {TARGET:.1f}x):")
    for title, best in results.items():
        ratio = best[PEER] / best["taskflow"]
        verdict = "PASS" if ratio >= TARGET else "FAIL"
        print(f"  {title:<32} taskflow {best['taskflow']:7.2f} s  {PEER} {best[PEER]:7.2f} s"
              f"  {ratio:5.2f}x  {verdict}")


# --- memory --------------------------------------------------------------------------------------
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


def memory_section(tmp: str) -> None:
    print("\npeak memory (client + scheduler + 2 workers), 1x and 8x the data:")
    images = load_digits()[0]
    memory("digits CNN", tf.load(str(DIGITS)),
           lambda n: np.resize(images, (n, *images.shape[1:])), (16384, 131072), 64,
           {"scale": 1 / 16}, tmp)
    rng = np.random.default_rng(1)
    memory("uint8 224x224 images", pool_model(),
           lambda n: rng.integers(0, 256, (n, 3, 224, 224), dtype=np.uint8),
           (256, 2048), 16, {"scale": "uint8"}, tmp)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=[*CASES, "memory"],
                   choices=[*CASES, "memory"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cnn-images", type=int, default=16384)
    p.add_argument("--squeezenet-images", type=int, default=1024)
    p.add_argument("--resnet-images", type=int, default=256)
    p.add_argument("--sentences", type=int, default=512)
    p.add_argument("--chunk", type=int, default=None,
                   help="rows per chunk for every model (default: 16 for digits, else 32)")
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-stream-")
    results: dict[str, dict[str, float]] = {}
    try:
        print(f"{CORES} usable cores; taskflow {tf.__version__}; zarr {zarr.__version__}")
        for name in (m for m in CASES if m in args.models):
            case = CASES[name](args, tmp)
            best, summary = compare(case, args.repeats, tmp)
            print_table(case, best, summary, args.repeats)
            results[case.title] = best
        if results:
            print_verdicts(results)
        if "memory" in args.models:
            memory_section(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
