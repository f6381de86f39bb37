"""Throughput of a VGG-style CNN before and after 50% structured pruning (``Model.run``), and
of a wide MLP after 90% unstructured pruning with sparse kernels against dense ones.

Structured (default): six 3x3 convolutions (64, 64, 128, 128, 128, 128 channels, max-pool after
every second) on 64x64 images, batch 16, random He weights, 2 kernel threads; the unpruned and
pruned models run interleaved and the ratio of their median times is printed (issue 16's
target: >= 1.6x). Halving every inner layer's channels roughly quarters the FLOPs of the middle
convolutions, but the first and last layers only halve, and memory-bound ops do not shrink as
much.

``--unstructured``: an MLP of three 4096 x 4096 Dense+ReLU layers and a 4096 -> 1000 head,
batch 64, pruned to 90% zeros per weight by ``Model.prune(0.9, structured=False, sample=x)``
(which times each layer's sparse CSR kernel against its dense GEMM and keeps the faster); that
model and the same pruned graph on dense kernels run interleaved, and the ratio of their best
times is printed (issue 16's target: >= 2x, or the sparse path is not chosen).

    python benchmarks/bench_prune.py [--sparsity 0.5] [--batch 16] [--repeat 5] [--quick]
    python benchmarks/bench_prune.py --unstructured [--sparsity 0.9] [--batch 64] [--width 4096]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from taskflow import Model
from taskflow.bench.harness import interleaved
from taskflow.frontend import nn

#: (out channels, pool after) per conv; VGG's widths, cut to 128 to fit a 2-core run in ~1 min.
LAYERS = [(64, False), (64, True), (128, False), (128, True), (128, False), (128, True)]


def vgg_ish(size: int = 64, layers: list[tuple[int, bool]] = LAYERS) -> nn.Sequential:
    seq, c = [], 3
    for out, pool in layers:
        seq += [nn.Conv2d(c, out, 3, padding=1, seed=len(seq)), nn.ReLU()]
        seq += [nn.MaxPool2d(2)] if pool else []
        c = out
    seq += [nn.GlobalAvgPool2d(), nn.Flatten(), nn.Dense(c, 10)]
    return nn.Sequential(seq, input_shape=(3, size, size), name="vgg_ish")


def mlp(width: int = 4096, depth: int = 3, classes: int = 1000) -> nn.Sequential:
    seq, c = [], width
    for _ in range(depth):
        seq += [nn.Dense(c, width, seed=len(seq)), nn.ReLU()]
    seq += [nn.Dense(width, classes, seed=len(seq))]
    return nn.Sequential(seq, input_shape=(width,), name="mlp")


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unstructured", action="store_true",
                        help="the MLP, 90%% sparse: sparse vs dense kernels")
    parser.add_argument("--sparsity", type=float, default=None,
                        help="default 0.5 (structured), 0.9 (--unstructured)")
    parser.add_argument("--batch", type=int, default=None,
                        help="default 16 (structured), 64 (--unstructured)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=int, default=4096, help="MLP width (--unstructured)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved timed runs")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (tests)")
    args = parser.parse_args(argv)
    if args.unstructured:
        return unstructured(args)
    args.sparsity = 0.5 if args.sparsity is None else args.sparsity
    args.batch = 16 if args.batch is None else args.batch
    if args.quick:
        args.batch, args.size, args.repeat = 2, 16, 1
        layers = [(16, False), (16, True), (16, False)]
    else:
        layers = LAYERS

    from taskflow.dask import threads as thread_control

    thread_control.apply_kernel_threads(args.threads)
    try:
        model = vgg_ish(args.size, layers).to_model()
        pruned = model.prune(args.sparsity)
        x = np.random.default_rng(0).standard_normal(
            (args.batch, 3, args.size, args.size)).astype(np.float32)
        runners = {"dense": lambda: model.run(None, {"input": x}),
                   "pruned": lambda: pruned.run(None, {"input": x})}
        for fn in runners.values():  # warm-up: Numba cache, allocators
            fn()
        times = {k: statistics.median(v) for k, v in interleaved(runners, args.repeat).items()}
    finally:
        thread_control.reset_kernel_threads()
    report = pruned.prune_report
    ratio = times["dense"] / times["pruned"]
    print(f"vgg_ish {args.size}x{args.size}, batch {args.batch}, {args.threads} threads: "
          f"parameters {report.params_before} -> {report.params_after}")
    for name, t in times.items():
        print(f"  {name:7s} {args.batch / t:8.1f} images/s ({t * 1e3:.1f} ms/batch)")
    print(f"  ratio pruned/dense {ratio:.2f}x (target >= 1.6x at sparsity 0.5)")
    return ratio



def unstructured(args: argparse.Namespace) -> float:
    """The ``--unstructured`` run: dense / sparse best time of the pruned MLP."""
    sparsity = 0.9 if args.sparsity is None else args.sparsity
    batch = 64 if args.batch is None else args.batch
    width, classes = args.width, 1000
    if args.quick:
        batch, width, classes, args.repeat = 8, 256, 10, 2
    from taskflow.dask import threads as thread_control

    thread_control.apply_kernel_threads(args.threads)
    try:
        x = np.random.default_rng(0).standard_normal((batch, width)).astype(np.float32)
        pruned = mlp(width, classes=classes).to_model().prune(sparsity, structured=False,
                                                              sample=x)
        dense = Model(pruned.source_graph)
        runners = {"dense": lambda: dense.run(None, {"input": x}),
                   "sparse": lambda: pruned.run(None, {"input": x})}
        for fn in runners.values():
            fn()
        raw = interleaved(runners, args.repeat)
    finally:
        thread_control.reset_kernel_threads()
    best = {k: min(v) for k, v in raw.items()}
    ratio = best["dense"] / best["sparse"]
    chosen = sum(c.kernel == "sparse" for c in pruned.prune_report.kernels)
    print(f"mlp {width} wide, batch {batch}, {args.threads} threads, sparsity {sparsity:g}: "
          f"sparse kernels on {chosen}/{len(pruned.prune_report.kernels)} layers")
    for c in pruned.prune_report.kernels:
        print(f"  {c}")
    for name, t in best.items():
        print(f"  {name:7s} {batch / t:8.1f} rows/s (best {t * 1e3:.1f} ms/batch, median "
              f"{statistics.median(raw[name]) * 1e3:.1f} ms)")
    print(f"  ratio dense/sparse {ratio:.2f}x (target >= 2x, or the sparse path is not chosen)")
    return ratio


if __name__ == "__main__":
    main()
