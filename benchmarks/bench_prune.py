"""Throughput of a VGG-style CNN before and after 50% structured pruning (``Model.run``).

Six 3x3 convolutions (64, 64, 128, 128, 128, 128 channels, max-pool after every second) on
64x64 images, batch 16, random He weights, 2 kernel threads; the unpruned and pruned models
run interleaved and the ratio of their median times is printed (issue 16's target: >= 1.6x).
Halving every inner layer's channels roughly quarters the FLOPs of the middle convolutions,
but the first and last layers only halve, and memory-bound ops do not shrink as much.

    python benchmarks/bench_prune.py [--sparsity 0.5] [--batch 16] [--repeat 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

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


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved timed runs")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (tests)")
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    main()
