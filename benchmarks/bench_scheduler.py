"""Scheduling policies against Dask's default and its best configuration.

Dask's best configuration here is ``worker-saturation: 1.0`` with a 100 ms stealing interval
(docs/notes/dask-scheduler-plugins.md: it gets most of what a balancer gets); taskflow's
plugin (its default policy set unless named) runs on top of that same configuration, so the
difference is the plugin's. Tasks sleep
(the 2-core machine is shared: sleeping tasks measure scheduling, not CPU contention); a
"slow" worker multiplies every sleep by ``--slow``. A fresh in-process ``LocalCluster`` per
run; variants interleaved; each figure is the median of ``--repeats`` runs [min..max].

Scenarios:
  unequal   2 workers x 2 threads, one --slow times slower. Makespan of data-parallel
            inference (a fused dask.array map_blocks, root-ish tasks), of the same over a
            persisted input (tasks bound to their chunk), and of a 2-stage pipeline per chunk
            (stages not pinned), against ideal = work / sum(rates).
  priority  2 workers x 1 thread saturated by a streaming bulk job (windows of chunks, two in
            flight); a 4-task interactive job arrives 0.5 s later: its latency against running
            alone; the bulk job must still finish.
  branchy   branch-parallel graphs (per chunk a heavy chain beside chains of light tasks,
            joined) on 2 x 1 threads: CriticalPath (costs measured by a warm-up run, or
            FLOPs annotations) against dask.order.
  overhead  homogeneous 2 x 1: throughput with the plugin against without (<= 2 % loss), and
            the plugin's update_graph hook time for a 10,000-task graph (< 50 ms).

    python benchmarks/bench_scheduler.py [--repeats 5] [--only unequal,priority,...]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from contextlib import contextmanager

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from distributed import Client, LocalCluster, get_worker, wait
from taskflow.schedulers import CriticalPath, TaskflowSchedulerPlugin, ThroughputBalancer, job

DASK_BEST = {"distributed.scheduler.worker-saturation": 1.0,
             "distributed.scheduler.work-stealing-interval": "100ms"}
DASK_DEFAULT = {"distributed.scheduler.worker-saturation": 1.1,
                "distributed.scheduler.work-stealing-interval": "1s"}


def slowness():
    try:
        return getattr(get_worker(), "_tf_slow", 1.0)
    except ValueError:  # not on a worker
        return 1.0


def nap(block, cost):
    """A chunk of 'inference': sleeps ``cost`` seconds times the worker's slowness."""
    time.sleep(cost * slowness())
    return block[:, :1]


def step(cost, *deps):
    time.sleep(cost * slowness())
    return 1


@contextmanager
def cluster(config, threads, policies=None, slow=None):
    """An in-process cluster of ``len(threads)`` workers; worker ``i`` is ``slow[i]`` slower."""
    with dask.config.set(config), \
            LocalCluster(n_workers=len(threads), threads_per_worker=threads[0], processes=False,
                         dashboard_address=":0") as lc, Client(lc) as client:
        addrs = sorted(client.scheduler_info()["workers"])
        for addr, factor in zip(addrs, slow or ()):
            if factor != 1:
                client.run(lambda dask_worker, f=factor: setattr(dask_worker, "_tf_slow", f),
                           workers=[addr])
        if policies is not None:
            client.register_plugin(TaskflowSchedulerPlugin(policies, replace=True))
        yield client


def chunks_graph(n, cost, name, source=None):
    x = source if source is not None else da.zeros((n * 4, 8), chunks=(4, 8))
    return x.map_blocks(nap, cost, chunks=(4, 1), dtype=x.dtype,
                        name=f"{name}-{tokenize(x, cost, time.time())}")


def summary(xs):
    return f"{statistics.median(xs):6.3f} [{min(xs):.3f}..{max(xs):.3f}]"


def interleave(variants, repeats, fn):
    out = {v: [] for v in variants}
    for _ in range(repeats):
        for v in variants:
            out[v].append(fn(v))
    return out


# --- scenarios ---------------------------------------------------------------------------------
def unequal(repeats, slow, n=60, cost=0.1):
    ideal = n * cost / (2 / 1 + 2 / slow)
    variants = {"dask-default": (DASK_DEFAULT, None), "dask-best": (DASK_BEST, None),
                "taskflow (dask-best cfg)": (DASK_BEST, "default"),
                "taskflow (dask-default cfg)": (DASK_DEFAULT, "default"),
                "taskflow, no placement": (DASK_BEST, [ThroughputBalancer(place=False)])}

    def run(case, v):
        config, policies = variants[v]
        with cluster(config, [2, 2], policies, slow=[1, slow]) as client:
            wait(client.compute(chunks_graph(8, cost, "tf-infer")))  # everyone learns durations
            source, optimize = None, True
            if case == "persisted input":
                source = da.zeros((n * 4, 8), chunks=(4, 8)).persist()
                wait(source)
            if case == "2-stage pipeline":  # stage 1 of chunk j runs after stage 0 of chunk j
                y = chunks_graph(n, cost / 2, "tf-stage1", chunks_graph(n, cost / 2, "tf-stage0"))
                optimize = False  # (fused, it would be data-parallel again)
            else:
                y = chunks_graph(n, cost, "tf-infer", source)
            t = time.perf_counter()
            wait(client.compute(y, optimize_graph=optimize))
            return time.perf_counter() - t

    print(f"\n## unequal workers: 2 x 2 threads, one {slow:g}x slower; {n} chunks x {cost} s; "
          f"ideal {ideal:.3f} s")
    for case in ("data-parallel", "persisted input", "2-stage pipeline"):
        res = interleave(variants, repeats, lambda v, c=case: run(c, v))
        for v, xs in res.items():
            print(f"{case:16s} {v:27s} makespan {summary(xs)} s  "
                  f"x ideal {statistics.median(xs) / ideal:.3f}")


def backfill(client, windows, size, cost, tagged, in_flight=2):
    """A streaming bulk job: windows of ``size`` chunks, ``in_flight`` windows at a time (as
    ``taskflow.stream.infer`` does), so fresh bulk work keeps arriving beside the interactive
    job."""
    pending = []
    for _ in range(windows):
        with job("backfill", "bulk") if tagged else dask.annotate():
            pending.append(client.compute(chunks_graph(size, cost, "tf-bulk")))
        if len(pending) >= in_flight:
            wait(pending.pop(0))
    wait(pending)


def priority(repeats, windows=15, size=4, ask_n=4, cost=0.1):
    variants = ["dask-best (no priority)", "dask-best priority=10", "taskflow default (job())"]

    def run(v):
        policies = "default" if v.startswith("taskflow") else None
        with cluster(DASK_BEST, [1, 1], policies) as client:
            wait(client.compute(chunks_graph(4, 0.01, "tf-ask")))
            t = time.perf_counter()
            wait(client.compute(chunks_graph(ask_n, cost, "tf-ask")))
            alone = time.perf_counter() - t
            t0 = time.perf_counter()
            bulk = threading.Thread(target=backfill,
                                    args=(client, windows, size, cost, bool(policies)))
            bulk.start()
            time.sleep(0.5)
            t = time.perf_counter()
            if v == "dask-best priority=10":
                ask = client.compute(chunks_graph(ask_n, cost, "tf-ask"), priority=10)
            else:
                with job("ask", "interactive") if policies else dask.annotate():
                    ask = client.compute(chunks_graph(ask_n, cost, "tf-ask"))
            wait(ask)
            latency = time.perf_counter() - t
            bulk.join(timeout=120)
            return alone, latency, time.perf_counter() - t0, not bulk.is_alive()

    print(f"\n## priority: 2 x 1 threads; a bulk backfill of {windows} windows x {size} chunks "
          f"x {cost} s (2 windows in flight); after 0.5 s an interactive job of {ask_n} x "
          f"{cost} s")
    res = interleave(variants, repeats, run)
    for v, rs in res.items():
        alone, lat, bulk = ([r[i] for r in rs] for i in range(3))
        print(f"{v:26s} alone {summary(alone)}  under load {summary(lat)}  "
              f"x alone {statistics.median(lat) / statistics.median(alone):5.2f}  "
              f"bulk done {summary(bulk)} ({sum(r[3] for r in rs)}/{len(rs)})")


def branchy_graph(chunks, heavy, heavy_n, light, chain, branches):
    """Per chunk: a chain of ``heavy_n`` heavy tasks beside ``branches`` chains of ``chain``
    light ones, joined (an Inception-like block, branch-parallel)."""
    tok = tokenize(time.time())
    flops = {"tf-heavy": heavy * 1e9, **{f"tf-light{b}": light * 1e9 for b in range(branches)}}

    def chain_of(kind, n, cost, c):
        x = None
        for i in range(n):
            x = dask.delayed(step)(cost, *([x] if x is not None else []),
                                   dask_key_name=(f"{kind}-{tok}", c, i))
        return x

    outs = []
    for c in range(chunks):
        parts = [chain_of("tf-heavy", heavy_n, heavy, c)]
        parts += [chain_of(f"tf-light{b}", chain, light, c) for b in range(branches)]
        outs.append(dask.delayed(step)(0.0, *parts, dask_key_name=(f"tf-join-{tok}", c)))
    return dask.delayed(list)(outs, dask_key_name=f"tf-out-{tok}"), flops


#: (chunks, heavy s, heavy chain length, light s, light chain length, light branches)
BRANCHY = {"A: 3 chunks, 1 x 0.6 s | 3 x (3 x 0.1 s)": (3, 0.6, 1, 0.1, 3, 3),
           "B: 2 chunks, 1 x 1.0 s | 5 x (2 x 0.1 s)": (2, 1.0, 1, 0.1, 2, 5),
           "C: 1 chunk, 2 x 0.6 s | 4 x (3 x 0.1 s)": (1, 0.6, 2, 0.1, 3, 4)}


def branchy(repeats):
    variants = {"dask.order (dask-best)": None, "CriticalPath (measured)": "measured",
                "CriticalPath (FLOPs)": "flops"}

    def run(v, shape):
        mode = variants[v]
        with cluster(DASK_BEST, [1, 1], [CriticalPath()] if mode else None) as client:
            if mode != "flops":  # warm-up: Dask and the plugin both learn the durations
                client.compute(branchy_graph(1, *shape[1:])[0]).result()
            g, flops = branchy_graph(*shape)
            with dask.annotate(taskflow_flops=flops) if mode == "flops" else dask.annotate():
                t = time.perf_counter()
                client.compute(g).result()
            return time.perf_counter() - t

    print("\n## branchy: 2 x 1 threads; per chunk a heavy chain beside light chains, joined")
    for name, shape in BRANCHY.items():
        chunks, heavy, heavy_n, light, chain, branches = shape
        bound = max(chunks * (heavy * heavy_n + light * chain * branches) / 2, heavy * heavy_n)
        print(f"{name}  (lower bound {bound:.2f} s)")
        for v, xs in interleave(variants, repeats, lambda v, sh=shape: run(v, sh)).items():
            print(f"  {v:26s} makespan {summary(xs)} s  x bound "
                  f"{statistics.median(xs) / bound:.3f}")


def overhead(repeats, n=400, cost=0.02):
    variants = {"dask-best (no plugin)": None, "taskflow default": "default",
                "taskflow all policies": ["job-priority", "resources", "locality",
                                          "critical-path", "throughput-balancer"]}

    def run(v):
        with cluster(DASK_BEST, [1, 1], variants[v]) as client:
            wait(client.compute(chunks_graph(8, cost, "tf-infer")))
            t = time.perf_counter()
            wait(client.compute(chunks_graph(n, cost, "tf-infer")))
            return n / (time.perf_counter() - t)

    print(f"\n## overhead: homogeneous 2 x 1 threads, {n} chunks x {cost} s")
    res = interleave(variants, repeats, run)
    base = statistics.median(res["dask-best (no plugin)"])
    for v, xs in res.items():
        print(f"{v:26s} throughput {summary(xs)} tasks/s  loss "
              f"{100 * (1 - statistics.median(xs) / base):+5.1f} %")

    print("update_graph hook on a 10,000-task graph (ms):")
    sets = {"default": "default", "all policies": variants["taskflow all policies"]}
    for label, policies in sets.items():
        for annotated in (False, True):
            times = [_hook_ms(policies, annotated) for _ in range(repeats)]
            print(f"  {label:13s} {'with job()' if annotated else 'plain':10s} "
                  f"{summary(times)}")


def _hook_ms(policies, annotated, n=5_000):
    """Hook time for ``n`` zeros + ``n`` tf-a tasks (unfused): two kinds whose measured
    durations differ, so that CriticalPath really ranks the graph."""
    def graph(n, cost):
        x = da.zeros((n, 8), chunks=(1, 8))
        return x.map_blocks(nap, cost, chunks=(1, 1), dtype=x.dtype,
                            name=f"tf-a-{tokenize(n, time.time())}")

    def hook_times(dask_scheduler):
        return list(dask_scheduler.plugins["taskflow"].graph_ms)

    with cluster(DASK_BEST, [1, 1], policies) as client:
        wait(client.compute(graph(4, 0.02), optimize_graph=False))
        before = len(client.run_on_scheduler(hook_times))
        with job("big", "bulk") if annotated else dask.annotate():
            f = client.compute(graph(n, 0.0), optimize_graph=False)
        end = time.time() + 60
        while len(ms := client.run_on_scheduler(hook_times)) == before and time.time() < end:
            time.sleep(0.05)
        client.cancel(f)
        return max(ms[before:])


SCENARIOS = {"unequal": unequal, "priority": priority, "branchy": branchy,
             "overhead": overhead}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--slow", type=float, default=3.0, help="slowdown of the slow worker")
    p.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    args = p.parse_args(argv)
    np.seterr(all="ignore")
    for name in args.only.split(","):
        fn = SCENARIOS[name.strip()]
        fn(args.repeats, args.slow) if fn is unequal else fn(args.repeats)


if __name__ == "__main__":
    main()
