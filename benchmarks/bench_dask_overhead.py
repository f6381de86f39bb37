"""What the Dask path costs against in-process ``Model.run``, and how data parallelism scales.

For a small MLP (256-1024-1024-10) and light_resnet50, on the same data and the same cores:

- ``Model.run`` in-process on the whole batch, with 2 and with 1 kernel thread, and with 1
  kernel thread over the same chunks one by one (a loop of ``Model.run``);
- ``Model.predict`` on a 2-worker and on a 1-worker cluster (1 task thread, 1 kernel thread
  each: no oversubscription), input persisted on the workers, weights placed with
  ``Model.to_cluster``; on 2 workers also with ``task_flops=0`` (one task per chunk, as before
  chunks were grouped into tasks of ``TARGET_TASK_FLOPS``).

Printed per chunk size: wall seconds, best of ``--repeats`` (with the CPU seconds the client,
the scheduler and the workers used in that run: the cost, less shaken by other load than the
wall time); ``run/predict`` = time(``Model.run``, 2 kernel threads) / time(predict on 2
workers), the target being >= 0.9 for a batch of >= 100 ms; ``2w/1w`` = time(1 worker) /
time(2 workers) on the same chunks, target >= 1.8 (efficiency = half of it); ``1w/run1`` =
time(1 worker) / time(``Model.run``, 1 kernel thread): the Dask path's own cost on one core.

What made the old baseline (one worker, one thread) faster than ``Model.run`` on one thread,
and what keeps it honest now:

- A worker's task threads ran every kernel on 2 threads. Numba's thread count is per thread;
  ``ThreadBudgetPlugin`` set 1 on the thread it ran on, and the task threads started at Numba's
  pool size, which is the core count when the script imports taskflow's kernels before the
  spawned worker applies ``NUMBA_NUM_THREADS=1``, as this one does. "1 worker x 1 thread" used
  both cores, and "2 workers x 1 thread" ran 4 kernel threads on 2. ``run_unit`` now holds its
  thread to the plan (``taskflow.dask.units._kernel_threads``); the in-process runs set
  theirs with the same call a worker uses (``apply_kernel_threads``).
- Warm-up: one chunk warmed one worker; the other loaded its Numba kernels inside the timing
  (+2 s on its first ResNet-50 chunk), and ``Model.run``, warmed on 2 rows, first touched its
  batch-sized buffers inside its only timed run (+7% CPU on ResNet-50 at batch 32). Now every
  configuration runs its own work once untimed first.
- Two workers ran at the speed of one. Dask's Active Memory Manager reduced the broadcast
  weights to one replica each between two runs, and the Locality policy pinned every chunk to
  that one holder. The taskflow scheduler plugin now keeps weight replicas
  (``KeepWeightReplicas``): at batch 64 in chunks of 16, ResNet-50's 2w/1w went from 1.00 to
  1.78 and run/predict from 0.60 to 1.02; the MLP's from 0.60 to 0.93 in chunks of 2048.
- Configurations timed minutes apart on a shared machine compared the load, not the code. Now
  they run in interleaved rounds, with both clusters up (idle when not timed) throughout.

The load average is printed with each table. Not a test. About 2-3 min for the MLP, plus about
4 x (resnet repeats + 1) x batch x 0.3 s for ResNet-50, on an idle 2-core machine.

    python benchmarks/bench_dask_overhead.py [--mlp-batch 8192] [--mlp-chunks 2048,512,128,16]
        [--resnet-batch 64] [--resnet-chunks 16] [--repeats 5] [--resnet-repeats 1]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import dask.array as da
import numpy as np
import onnx
import psutil
from distributed import Client

import taskflow as tf
from taskflow.dask import threads
from taskflow.dask.cluster import Cluster
from taskflow.frontend import nn

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def kernel_threads(n: int, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with ``n`` kernel threads in this process, as a worker's plugin sets them."""

    def run() -> None:
        threads.apply_kernel_threads(n)
        try:
            fn()
        finally:
            threads.reset_kernel_threads()

    return run


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes ``pids`` (all their threads) have used."""
    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)


def spread(client: Client, x: np.ndarray, rows: int) -> da.Array:
    """``x`` in chunks of ``rows``, held by the workers in contiguous blocks (the first half on
    one worker, the second on the other), as a Dask load spreads its chunks: the input transfer
    is not timed. (Scattering ``x`` whole and rechunking on the cluster, as this benchmark did,
    left every chunk on one worker, and the scheduler kept the tasks next to them: 2 workers
    ran at the speed of one once each ran one kernel thread.)"""
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    starts = range(0, len(x), rows)
    parts = []
    for j, i in enumerate(starts):
        block = x[i : i + rows]
        (fut,) = client.scatter([block], workers=[workers[j * len(workers) // len(starts)]])
        parts.append(da.from_delayed(fut, block.shape, dtype=x.dtype))
    return client.persist(da.concatenate(parts))


def rounds(
    configs: dict[str, tuple[Callable[[], object], list[int]]], repeats: int
) -> dict[str, tuple[float, float]]:
    """Per config, the best wall time over ``repeats`` interleaved rounds (after one warm-up
    round) and the CPU seconds of its processes in that round: the client (with the
    scheduler, a thread of this process) and the workers it used."""
    best = dict.fromkeys(configs, (float("inf"), 0.0))
    for r in range(repeats + 1):
        for name, (fn, pids) in configs.items():
            cpu, t = cpu_seconds(pids), time.perf_counter()
            fn()
            t, cpu = time.perf_counter() - t, cpu_seconds(pids) - cpu
            if r and t < best[name][0]:  # round 0 warms up every config with its own work
                best[name] = (t, cpu)
    return best


def bench(
    label: str, model: tf.Model, x: np.ndarray, chunks: list[int], repeats: int
) -> list[str]:
    name = model.get_inputs()[0].name
    me = [os.getpid()]
    configs: dict[str, tuple[Callable[[], object], list[int]]] = {
        "run2": (kernel_threads(2, lambda: model.run(None, {name: x})), me),
        "run1": (kernel_threads(1, lambda: model.run(None, {name: x})), me),
    }
    for c in chunks:
        configs[f"loop1/{c}"] = (
            kernel_threads(
                1, lambda c=c: [model.run(None, {name: x[i : i + c]}) for i in range(0, len(x), c)]
            ),
            me,
        )
    start = load()
    with (
        Cluster(n_workers=2, threads_per_worker=1, kernel_threads=1, quiet=True) as two,
        Cluster(n_workers=1, threads_per_worker=1, kernel_threads=1, quiet=True) as one,
    ):
        for tag, cluster in (("2w", two), ("1w", one)):
            client = cluster.client
            pids = me + list(client.run(os.getpid).values())
            model.to_cluster(client)
            for c in chunks:
                xc = spread(client, x, c)
                y = model.predict(xc, client=client)
                configs[f"{tag}/{c}"] = (lambda y=y, cl=client: cl.compute(y).result(), pids)
                before = model.predict(xc, client=client, task_flops=0)
                if tag == "2w" and before.name != y.name:  # else: no chunks were joined
                    configs[f"2w/1task/{c}"] = (
                        lambda y=before, cl=client: cl.compute(y).result(),
                        pids,
                    )
        t = rounds(configs, repeats)
    n = len(x)
    run2, run1 = t["run2"][0], t["run1"][0]
    rows = [
        f"{label}: batch {n}, best of {repeats} interleaved rounds; load average "
        f"{start} at start, {load()} at end (1/5/15 min; {os.cpu_count()} CPUs)",
        f"  Model.run whole batch: 2 kernel threads {run2:.3f} s ({n / run2:.0f}/s), "
        f"1 kernel thread {run1:.3f} s: 2 cores give {run1 / run2:.2f}x in-process, the "
        f"ceiling of 2w/1w on this machine",
        "  wall s (CPU s of client+scheduler+workers) | run/predict | 2w/1w | 1w/run1",
        "  chunk | loop 1 thr |  1 worker       |  2 workers      | 2w, 1 task/chunk "
        "| now (before) |       |",
    ]
    for c in chunks:
        (t1, c1), (t2, c2) = t[f"1w/{c}"], t[f"2w/{c}"]
        t2u, c2u = t.get(f"2w/1task/{c}", (t2, c2))
        rows.append(
            f"  {c:5d} | {t[f'loop1/{c}'][0]:8.3f}   | {t1:6.3f} ({c1:5.2f}) | "
            f"{t2:6.3f} ({c2:5.2f}) | {t2u:6.3f} ({c2u:5.2f})  | "
            f"{run2 / t2:4.2f} ({run2 / t2u:4.2f}) | {t1 / t2:5.2f} | {t1 / run1:5.2f}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mlp-batch", type=int, default=8192)
    parser.add_argument("--mlp-chunks", default="2048,512,128,16")
    parser.add_argument("--resnet-batch", type=int, default=64)
    parser.add_argument("--resnet-chunks", default="16")
    parser.add_argument("--repeats", type=int, default=5, help="MLP timing rounds")
    parser.add_argument("--resnet-repeats", type=int, default=1)
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--skip-mlp", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    lines = []
    if not args.skip_mlp:
        mlp = nn.Sequential(
            [nn.Dense(256, 1024), nn.ReLU(), nn.Dense(1024, 1024), nn.ReLU(), nn.Dense(1024, 10)],
            input_shape=(256,),
            name="mlp",
        ).to_model()
        x = rng.standard_normal((args.mlp_batch, 256)).astype(np.float32)
        lines += bench(
            "MLP 256-1024-1024-10",
            mlp,
            x,
            [int(c) for c in args.mlp_chunks.split(",")],
            args.repeats,
        )
        print("\n".join(lines), flush=True)
    if not args.skip_resnet:
        resnet = tf.load(LIGHT / "light_resnet50.onnx")
        x = rng.random((args.resnet_batch, 3, 224, 224), dtype=np.float32)
        rows = bench(
            "light_resnet50",
            resnet,
            x,
            [int(c) for c in args.resnet_chunks.split(",")],
            args.resnet_repeats,
        )
        print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
