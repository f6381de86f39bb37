"""What the Dask path costs against in-process ``Model.run``, and how data parallelism scales.

For light_resnet50 and a small MLP, on the same data:

- ``Model.run`` in-process with 2 and with 1 kernel thread (BLAS/Numba);
- ``Model.predict`` on a 2-worker x 1-thread cluster (1 kernel thread each: no oversubscription)
  with chunks of 16 and 32 rows, weights placed once with ``Model.to_cluster``;
- scaling of data parallelism: 1x1, 1x2 (one worker, two task threads) and 2x1 workers x
  threads, chunks of 16; efficiency = time(1x1) / (2 x time(config)).

Times are the best of ``--repeats`` after a one-chunk warm-up (which absorbs the trace, Numba
loading and weight placement). Prints one table of seconds and ratios. Not a test. About 2 min
on an idle 2-core machine (ResNet-50 dominates: ~0.7 s per image per core).

    python benchmarks/bench_dask_overhead.py [--resnet-batch 32] [--mlp-batch 4096]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import dask.array as da
import numpy as np
import onnx

import taskflow as tf
from taskflow.dask import threads
from taskflow.dask.cluster import Cluster
from taskflow.frontend import nn

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def best_of(fn, repeats: int, warm_up=None) -> float:
    (warm_up or fn)()  # loads kernels and caches; a small warm-up keeps the benchmark short
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def in_process(model: tf.Model, x: np.ndarray, kernel_threads: int, repeats: int) -> float:
    name = model.get_inputs()[0].name
    threads.apply_kernel_threads(kernel_threads)
    try:
        return best_of(lambda: model.run(None, {name: x}), repeats,
                       lambda: model.run(None, {name: x[:2]}))
    finally:
        threads.reset_kernel_threads()


def on_cluster(model: tf.Model, x: np.ndarray, workers: int, per_worker: int,
               chunk_sizes: list[int], repeats: int) -> dict[int, float]:
    with Cluster(n_workers=workers, threads_per_worker=per_worker, kernel_threads=1,
                 processes=True, quiet=True) as cluster:
        client = cluster.client
        model.to_cluster(client)
        # scattered once, then rechunked on the workers: input transfer is not what we time
        xd = da.from_delayed(client.scatter(x), x.shape, dtype=x.dtype)
        xd = client.persist(xd.rechunk({0: min(chunk_sizes)}))
        out = {}
        for rows in chunk_sizes:
            xr = client.persist(xd.rechunk({0: rows}))  # input already on the workers
            y = model.predict(xr, client=client)
            first = model.predict(xr[:rows], client=client)
            out[rows] = best_of(lambda y=y: client.compute(y).result(), repeats,
                                lambda y=first: client.compute(y).result())
        return out


def bench(label: str, model: tf.Model, x: np.ndarray, repeats: int,
          extra_chunks: tuple[int, ...] = ()) -> list[str]:
    rows = []
    t_run2 = in_process(model, x, 2, repeats)
    t_run1 = in_process(model, x, 1, repeats)
    dask21 = on_cluster(model, x, 2, 1, [16, 32, *extra_chunks], repeats)
    t11 = on_cluster(model, x, 1, 1, [16], repeats)[16]
    t12 = on_cluster(model, x, 1, 2, [16], repeats)[16]
    n = len(x)
    rows.append(f"{label}: batch {n}")
    rows.append(f"  Model.run, 2 kernel threads       {t_run2:8.3f} s  {n / t_run2:9.1f} /s")
    rows.append(f"  Model.run, 1 kernel thread        {t_run1:8.3f} s  {n / t_run1:9.1f} /s")
    for c, t in dask21.items():
        rows.append(f"  predict 2x1, chunks of {c:<3d}        {t:8.3f} s  {n / t:9.1f} /s   "
                    f"dask/run(2 thr) = {t / t_run2:5.2f}   "
                    f"dask/run(1 thr) x2 = {2 * t / t_run1:5.2f}")
    t21 = dask21[16]
    rows.append(f"  scaling, chunks of 16: 1x1 {t11:.3f} s | 1x2 {t12:.3f} s "
                f"(efficiency {t11 / (2 * t12):.0%}) | 2x1 {t21:.3f} s "
                f"(efficiency {t11 / (2 * t21):.0%})")
    rows.append(f"  Dask overhead vs in-process, one worker one thread: 1x1/run(1 thr) = "
                f"{t11 / t_run1:.2f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resnet-batch", type=int, default=32)
    parser.add_argument("--mlp-batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3, help="MLP timing repeats")
    parser.add_argument("--resnet-repeats", type=int, default=1)
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    lines = []
    mlp = nn.Sequential([nn.Dense(256, 1024), nn.ReLU(), nn.Dense(1024, 1024), nn.ReLU(),
                         nn.Dense(1024, 10)], input_shape=(256,), name="mlp").to_model()
    x = rng.standard_normal((args.mlp_batch, 256)).astype(np.float32)
    # chunks of 512 too: where the ~1 ms per task of Dask stops dominating a small MLP
    lines += bench("MLP 256-1024-1024-10", mlp, x, args.repeats, extra_chunks=(512,))
    if not args.skip_resnet:
        resnet = tf.load(LIGHT / "light_resnet50.onnx")
        x = rng.random((args.resnet_batch, 3, 224, 224), dtype=np.float32)
        lines += bench("light_resnet50", resnet, x, args.resnet_repeats)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
