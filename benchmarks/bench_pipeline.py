"""Pipelines against their pieces (issue 15), on one machine, ratios from one run.

**(a) two models**: a CNN backbone (``(3, 32, 32)`` float32 -> ``(64, 16, 16)`` features,
64 KiB a row) and a head (-> 10 logits), streamed Zarr -> Zarr

- *pipeline*: ``infer_zarr(Pipeline([backbone, head]))``: one job, features stay in the
  worker's memory;
- *two jobs*: ``infer_zarr(backbone)`` into an intermediate Zarr store, then
  ``infer_zarr(head)`` from it, as two ``taskflow run`` commands would.

Reported: wall time of each (median of ``--repeats``, the two interleaved, after one warm-up
each), the ratio, and peak memory: each worker process's RSS sampled every 20 ms from this
process (psutil on the LocalCluster's worker pids), the peaks summed; also the intermediate
store's size on disk. The two final outputs must be equal.

**(b) text embedding**: sentences/s of the ``workflows/text_embedding`` pipeline (MiniLM
tokenizer, all-MiniLM-L6-v2 with its real weights, mean pooling, L2 norm), Zarr text column ->
Zarr embeddings, against a plain loop of ``tokenizers`` + ONNX Runtime (all usable cores) +
numpy pooling over the same Zarr chunks in this process: the same batches (``--batch`` rows),
the same ``--max-length``. The taskflow variants: *stream* (``infer_zarr``) and *dask*
(``Pipeline.predict`` + ``da.store``), on the same cluster; every variant's embeddings are
compared with the loop's.

    python benchmarks/bench_pipeline.py [--quick] [--rows 2048] [--sentences 512]
        [--repeats 3] [--json out.json]

``--quick`` (a test's size: 128 rows, 32 sentences of 32 tokens, one run, no warm-up) only
shows that everything runs. Part (b) needs ``pip install -e .[export,bench]``: torch exports
MiniLM once into ``~/.cache/taskflow`` (or ``$TASKFLOW_CACHE_DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zarr

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/bench_pipeline.py` imports workflows/
    sys.path.insert(0, str(ROOT))

import taskflow as tf  # noqa: E402
from taskflow.dask.threads import detect_cores  # noqa: E402

CHUNK = 64  # rows per chunk and task in (a)
SAMPLE_S = 0.02  # RSS sampling interval


class WorkerPeaks:
    """Peak RSS of each worker process of ``client``'s cluster while the block runs."""

    def __init__(self, client: Any):
        self.procs = [psutil.Process(p) for p in client.run(os.getpid).values()]
        self.peaks = [0] * len(self.procs)
        self.samples = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        for i, p in enumerate(self.procs):
            try:
                self.peaks[i] = max(self.peaks[i], p.memory_info().rss)
            except psutil.Error:
                pass
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def __enter__(self) -> WorkerPeaks:
        self._sample()
        self.start = self.total  # what the workers held before: Python, libraries, models
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def total(self) -> int:
        return sum(self.peaks)


def du(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# --- (a) two models --------------------------------------------------------------------------
def two_models() -> tuple[Any, Any]:
    from taskflow.frontend import nn

    backbone = nn.Sequential([
        nn.Conv2d(3, 32, 3, padding=1, seed=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1, seed=2), nn.ReLU(),
    ], input_shape=(3, 32, 32), name="backbone").to_model()
    head = nn.Sequential([
        nn.Conv2d(64, 64, 3, padding=1, seed=3), nn.ReLU(), nn.GlobalAvgPool2d(),
        nn.Flatten(), nn.Dense(64, 10, seed=4),
    ], input_shape=(64, 16, 16), name="head").to_model()
    return backbone, head


def bench_two_models(client: Any, tmp: Path, rows: int, repeats: int,
                     warmup: bool = True) -> dict[str, Any]:
    backbone, head = two_models()
    logits = head.get_outputs()[0].name  # both variants write it under the model's name
    pipe = tf.Pipeline([tf.Stage("backbone", backbone),
                        tf.Stage("head", head, outputs=[logits])], name="backbone_head")
    x = np.random.default_rng(0).standard_normal((rows, 3, 32, 32), dtype=np.float32)
    src = str(tmp / "images.zarr")
    zarr.create_array(src, shape=x.shape, chunks=(CHUNK, *x.shape[1:]), dtype=x.dtype)[:] = x
    feature = backbone.get_outputs()[0].name
    quiet = {"client": client, "progress": "none", "overwrite": True}

    def pipeline() -> dict[str, Any]:
        tf.infer_zarr(pipe, src, tmp / "pipe.zarr", **quiet)
        return {"out": tmp / "pipe.zarr"}

    def two_jobs() -> dict[str, Any]:
        mid = tmp / "features.zarr"
        tf.infer_zarr(backbone, src, mid, **quiet)
        tf.infer_zarr(head, {head.get_inputs()[0].name: f"{mid}/{feature}"},
                      tmp / "two.zarr", **quiet)
        return {"out": tmp / "two.zarr", "intermediate_bytes": du(mid)}

    variants = {"pipeline": pipeline, "two_jobs": two_jobs}
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    peaks: dict[str, list[int]] = {k: [] for k in variants}
    grown: dict[str, list[int]] = {k: [] for k in variants}
    extra: dict[str, Any] = {}
    for fn in variants.values() if warmup else ():  # models reach the workers, Numba compiles
        fn()
    for _ in range(repeats):
        for k, fn in variants.items():
            with WorkerPeaks(client) as mem:
                t = time.perf_counter()
                extra[k] = fn()
                seconds[k].append(time.perf_counter() - t)
            peaks[k].append(mem.total)
            grown[k].append(mem.total - mem.start)
            extra[k]["samples"] = mem.samples
    final = {k: zarr.open_group(str(v["out"]), mode="r")[logits][:] for k, v in extra.items()}
    want = head.run(None, {head.get_inputs()[0].name:
                           backbone.run(None, {"input": x[:CHUNK]})[0]})[0]
    t = {k: statistics.median(v) for k, v in seconds.items()}
    m = {k: statistics.median(v) for k, v in peaks.items()}
    g = {k: statistics.median(v) for k, v in grown.items()}
    return {"rows": rows, "chunk": CHUNK, "repeats": repeats, "seconds": t,
            "peak_worker_rss": m, "peak_above_start": g,
            "samples": {k: v["samples"] for k, v in extra.items()},
            "intermediate_bytes": extra["two_jobs"]["intermediate_bytes"],
            "time_ratio": t["two_jobs"] / t["pipeline"],
            "memory_ratio": m["two_jobs"] / m["pipeline"],
            "outputs_equal": bool(np.array_equal(final["pipeline"], final["two_jobs"])),
            "max_diff_vs_model_run": float(np.abs(final["pipeline"][:CHUNK] - want).max()),
            "output_std": float(final["pipeline"].std(axis=0).mean()),
            "output_shape": list(final["pipeline"].shape)}


# --- (b) text embedding ----------------------------------------------------------------------
def ort_loop(model: Path, src: str, dst: str, max_length: int, batch: int) -> None:
    """tokenizers + ONNX Runtime + numpy pooling, chunk by chunk, Zarr to Zarr."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from workflows.text_embedding import tokenizer_file

    tok = Tokenizer.from_file(str(tokenizer_file()))
    tok.enable_truncation(max_length)
    tok.enable_padding(length=max_length)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = detect_cores().cores
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    text = zarr.open_group(src, mode="r")["text"]
    out = zarr.open_group(dst, mode="w").create_array(
        "embedding", shape=(text.shape[0], 384), chunks=(batch, 384), dtype="float32")
    for lo in range(0, text.shape[0], batch):
        rows = tok.encode_batch([str(t) for t in text[lo:lo + batch]])
        feed = {"input_ids": np.array([r.ids for r in rows], np.int64),
                "attention_mask": np.array([r.attention_mask for r in rows], np.int64),
                "token_type_ids": np.array([r.type_ids for r in rows], np.int64)}
        hidden = sess.run(None, feed)[0]
        mask = feed["attention_mask"][..., None].astype(np.float32)
        mean = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
        out[lo:lo + len(rows)] = mean / np.maximum(
            np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def bench_text(client: Any, tmp: Path, n: int, max_length: int, batch: int,
               repeats: int, warmup: bool = True) -> dict[str, Any]:
    from benchmarks.bench_stream_text import sentences
    from workflows import text_embedding as te

    model = te.model_file()
    pipe = te.build_pipeline(model, max_length=max_length)
    src = te.write_texts(sentences(n, seed=0), tmp / "texts.zarr", chunk=batch)
    out = {k: str(tmp / f"{k}.zarr") for k in ("stream", "dask", "ort_loop")}
    variants = {
        "stream": lambda: te.embed(src, out["stream"], pipe=pipe, client=client, quiet=True,
                                   overwrite=True),
        "dask": lambda: te.embed(src, out["dask"], pipe=pipe, client=client, engine="dask",
                                 overwrite=True),
        "ort_loop": lambda: ort_loop(model, src, out["ort_loop"], max_length, batch),
    }
    errors: dict[str, str] = {}
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(repeats + warmup):
        for k, fn in list(variants.items()):
            t = time.perf_counter()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - a broken variant is a result
                errors[k] = f"{type(exc).__name__}: {exc}"[:300]
                del variants[k], seconds[k]
                continue
            if i >= warmup:
                seconds[k].append(time.perf_counter() - t)
    t = {k: statistics.median(v) for k, v in seconds.items()}
    ref = zarr.open_group(out["ort_loop"], mode="r")["embedding"][:]
    got = {k: zarr.open_group(out[k], mode="r")["embedding"][:] for k in variants}
    return {"sentences": n, "max_length": max_length, "batch": batch, "repeats": repeats,
            "seconds": t, "sentences_per_s": {k: n / v for k, v in t.items()},
            "vs_ort_loop": {k: t["ort_loop"] / v for k, v in t.items() if k != "ort_loop"},
            "max_diff_vs_ort_loop": {k: float(np.abs(v - ref).max()) for k, v in got.items()},
            "norms": {k: [float(x) for x in np.linalg.norm(v, axis=1)[[0, -1]]]
                      for k, v in got.items()},
            "errors": errors}


# --- report ----------------------------------------------------------------------------------
def report(result: dict[str, Any]) -> None:
    a = result.get("two_models")
    if a:
        mib = 2**20
        print(f"(a) two models, {a['rows']} rows in chunks of {a['chunk']}, median of "
              f"{a['repeats']}: outputs equal: {a['outputs_equal']}")
        for k in ("pipeline", "two_jobs"):
            print(f"    {k:9s} {a['seconds'][k]:7.2f} s   peak worker RSS (sum) "
                  f"{a['peak_worker_rss'][k] / mib:6.0f} MiB, "
                  f"{a['peak_above_start'][k] / mib:5.0f} MiB above the start")
        print(f"    pipeline is {a['time_ratio']:.2f}x faster, {a['memory_ratio']:.2f}x less "
              f"peak memory; the intermediate store holds "
              f"{a['intermediate_bytes'] / mib:.0f} MiB on disk")
    b = result.get("text")
    if b:
        print(f"(b) text embedding, {b['sentences']} sentences, {b['max_length']} tokens, "
              f"batches of {b['batch']}, median of {b['repeats']}:")
        for k, v in b["sentences_per_s"].items():
            ratio = f"  {b['vs_ort_loop'][k]:.2f}x the ORT loop" if k in b["vs_ort_loop"] \
                else ""
            diff = b["max_diff_vs_ort_loop"].get(k, 0.0)
            print(f"    {k:9s} {v:8.1f} sentences/s{ratio}  (max |diff| {diff:.1e})")
        for k, why in b["errors"].items():
            print(f"    {k:9s} failed: {why}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    ap.add_argument("--parts", default="a,b", help="a (two models), b (text), or both")
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--sentences", type=int, default=512)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, help="default: taskflow's thread plan")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    if args.quick:
        args.rows, args.sentences, args.max_length, args.repeats = 128, 32, 32, 1
    parts = set(args.parts.split(","))
    result: dict[str, Any] = {"cores": detect_cores().cores, "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp, \
            tf.Cluster(n_workers=args.workers, quiet=True) as cluster:
        result["cluster"] = cluster.plan.split()
        if "a" in parts:
            (Path(tmp) / "a").mkdir()
            result["two_models"] = bench_two_models(cluster.client, Path(tmp) / "a",
                                                    args.rows, args.repeats, not args.quick)
        if "b" in parts:
            (Path(tmp) / "b").mkdir()
            result["text"] = bench_text(cluster.client, Path(tmp) / "b", args.sentences,
                                        args.max_length, args.batch, args.repeats,
                                        not args.quick)
    print(f"taskflow {tf.__version__}, {result['cores']} usable cores, cluster "
          f"{result['cluster']}")
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
