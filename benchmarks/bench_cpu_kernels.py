"""taskflow's cpu kernels against ONNX Runtime and PyTorch on six CNNs, and op by op against the
numpy references.

For light_resnet50, vgg19, densenet121, inception_v1, squeezenet and shufflenet (the ONNX light
model zoo inside the onnx package; ConstantOfShape weights, real layer shapes), with 2 threads:

1. whole-model throughput: taskflow in process (``Model.run``) and on Dask (``Model.predict``
   on a one-worker LocalCluster whose task thread has the same 2 kernel threads), ONNX Runtime
   (ORT_ENABLE_ALL, ``intra_op_num_threads=2``) and PyTorch eager on the same graph when
   installed, interleaved (:func:`taskflow.bench.harness.bench_model`), as ratios; plus taskflow's
   GFLOP/s as a fraction of the machine's measured sgemm peak;
2. per op type: the cpu kernel's time against the numpy reference's on every node's own inputs
   (:func:`taskflow.bench.harness.op_speedups`), where >= 1.0x is the target.

Compile time (Numba, cold cache) is reported separately: run ``taskflow warmup`` first for a
warm one. Not a test. About 12 minutes on an idle 2-core machine, more on a busy one.

    python benchmarks/bench_cpu_kernels.py [--models resnet50,vgg19] [--repeat 5] [--no-ops]
                                           [--no-dask]
"""

from __future__ import annotations

import argparse
import time

from taskflow.bench.harness import bench_model, op_speedups

#: Batch per model: 32, or smaller where a run of all runtimes would pass ~60 s (VGG-19:
#: ~20 GFLOP/image, ~10 s per runtime per batch of 32 here).
MODELS = {
    "resnet50": 32,
    "vgg19": 8,
    "densenet121": 32,
    "inception_v1": 32,
    "squeezenet": 32,
    "shufflenet": 32,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved timed runs")
    parser.add_argument("--op-batch", type=int, default=8, help="batch of the per-op timing")
    parser.add_argument("--no-ops", action="store_true", help="skip the per-op table")
    parser.add_argument("--no-dask", action="store_true", help="skip taskflow on Dask")
    args = parser.parse_args()
    names = [m.strip() for m in args.models.split(",") if m.strip()]

    start = time.perf_counter()
    from taskflow.ops.cpu.warmup import warmup

    warmup()
    print(f"Numba kernels: {time.perf_counter() - start:.1f} s to compile or load from cache\n")

    results = []
    for name in names:
        r = bench_model(f"light_{name}", batch=MODELS.get(name, 32), threads=args.threads,
                        repeat=args.repeat, dask=not args.no_dask)
        results.append(r)
        print(r, "\n", flush=True)

    peers = ["onnxruntime", "torch"]
    print(f"{'model':18s} {'batch':>5s} {'img/s':>8s} {'GFLOP/s':>8s} {'% peak':>7s} "
          + " ".join(f"{'vs ' + p:>14s}" for p in peers) + f" {'dask vs ort':>12s}")
    for r in results:
        ratios = " ".join(f"{r.ratio(p):13.2f}x" if r.ratio(p) else f"{'-':>14s}"
                          for p in peers)
        on_dask = r.ratio("onnxruntime", "taskflow-dask")
        print(f"{r.model:18s} {r.batch:5d} {r.images_per_s['taskflow']:8.2f} {r.gflops:8.1f} "
              f"{r.gflops / r.gemm_peak_gflops:7.0%} {ratios} "
              + (f"{on_dask:11.2f}x" if on_dask else f"{'-':>12s}"))
    worst = min(results, key=lambda r: r.ratio("onnxruntime") or 1)
    print(f"worst vs ONNX Runtime: {worst.model} ({worst.ratio('onnxruntime'):.2f}x)")

    if args.no_ops:
        return
    print(f"\nper op: cpu kernel vs numpy reference, batch {args.op_batch}, each node's own "
          "inputs, best of 3 (kernel on the model's channels-last activations)")
    print(f"{'model':14s} {'op':22s} {'nodes':>5s} {'reference ms':>13s} {'kernel ms':>10s} "
          f"{'speedup':>8s}")
    slowest: dict[str, tuple[float, str]] = {}
    for name in names:
        timings = op_speedups(f"light_{name}", batch=args.op_batch, threads=args.threads)
        for op, t in sorted(timings.items(), key=lambda kv: -kv[1].reference_s):
            print(f"{name:14s} {op:22s} {t.calls:5d} {t.reference_s * 1e3:13.2f} "
                  f"{t.kernel_s * 1e3:10.2f} {t.speedup:7.2f}x")
            if op not in slowest or t.speedup < slowest[op][0]:
                slowest[op] = (t.speedup, name)
    print("\nlowest speedup per op over the models: " + ", ".join(
        f"{op} {s:.2f}x ({m})" for op, (s, m) in sorted(slowest.items())))


if __name__ == "__main__":
    main()
