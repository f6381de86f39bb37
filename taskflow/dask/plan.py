"""Execution plans: which parallel mode, how big a chunk, which layers to split.

``make_plan`` chooses; :func:`units_for` turns a plan into units (:mod:`taskflow.dask.units`):

- ``data``      batch chunks spread over workers, one task per chunk (default);
- ``model``     a contraction whose weights exceed ``split_bytes`` (or named in ``split``) is cut
  along output channels into blocks, each block's weights and tasks on one worker;
- ``pipeline``  the layer chain cut into stages of about equal FLOPs, stage s pinned to worker
  group s, so stage s works on chunk j while stage s+1 works on chunk j-1;
- ``branch``    parallel branches (Inception, fire modules, shortcuts) as separate tasks.

How much work one task gets is part of the plan too: :func:`group_chunks` joins consecutive
batch chunks into one task where a chunk is too little work to be worth Dask's per-task cost
(:data:`TARGET_TASK_FLOPS`); the lowering splits the results back into the chunks asked for.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from taskflow import ops
from taskflow.dask.trace import GraphTrace, NodeInfo
from taskflow.dask.units import Unit, partition

MODES = ("data", "model", "pipeline", "branch")

#: A layer whose weights exceed this is split across workers in the automatic plan. Weights are
#: replicated to every worker in data mode; 256 MiB per layer is where one copy per worker
#: starts to crowd a worker with a few GiB (a ResNet-50 has 100 MiB of weights in *all* layers).
MODEL_SPLIT_BYTES = 256 << 20
#: Work one task should get when chunks are grouped. Dask costs 1-2 ms per task on a small
#: machine (client, scheduler and worker together; 1000 no-op tasks on a 2-worker LocalCluster
#: take 2-3 s on 2 cores), and one core runs taskflow's kernels at 12-33 GFLOP/s (measured on
#: this 2-core EPYC: ResNet-50's convolutions ~12, an MLP's GEMMs ~33). 2 GFLOP is then a task
#: of 60-170 ms: the per-task cost is 1-3% of it, and a batch of a few seconds still makes
#: enough tasks to balance over the workers. A ResNet-50 image is 8 GFLOP, so CNN chunks are
#: never grouped; a 256-1024-1024-10 MLP row is 2.6 MFLOP, so its chunks of 16 rows are.
TARGET_TASK_FLOPS = 2e9
#: Grouping leaves at least this many tasks per worker thread (and at least
#: :data:`MIN_TASKS`). Equal tasks balance only on equal workers; on a shared machine one
#: worker is often slowed, and the scheduler evens that out only by handing the queued tasks
#: to whoever is free: with 4 per thread, a worker at half speed costs the batch at most about
#: one task (1/8 of a 2-thread batch), where 2 per thread would cost 1/4.
MIN_TASKS_PER_THREAD = 4
#: Never fewer tasks than this from grouping: results stream back to the client while later
#: tasks still compute, even on one thread.
MIN_TASKS = 4
#: Chunks are joined only where a task gets this many of them on average. Joining costs two
#: tasks per run (one joins the input chunks, one runs the model) plus one slicing task per
#: chunk in place of its model task, so it pays only through the work saved inside the model
#: (16-row GEMMs run 3x slower per row than 1024-row ones); and runs of 1 and 2 chunks side by
#: side would be uneven work for equal threads.
MIN_CHUNKS_PER_TASK = 2
#: A group's largest single value stays under this (a worker thread holds its task's values,
#: several times the largest, with a few GiB per thread): grouping never makes a task hold more
#: than the input chunks a user could have asked for (:data:`taskflow.dask.lower.MAX_CHUNK_BYTES`
#: bounds one input chunk at 512 MiB).
GROUP_MAX_BYTES = 256 << 20


@dataclass
class Plan:
    """How a model runs on a cluster.

    Parameters
    ----------
    mode : {"data", "model", "pipeline", "branch"}
    chunk_size : int or None
        Batch rows per chunk (None: keep the input's chunks).
    fuse : bool
        Data mode: one task per chunk (True) or one Dask layer per node (False).
    split : tuple of str
        Model mode: names of the nodes to split (empty: every contraction whose largest weight
        is at least ``split_bytes``).
    split_bytes : int
    blocks : int
        Model mode: blocks per split node (0: one per worker).
    stages : int
        Pipeline mode: number of stages (0: one per worker).
    workers : tuple of str
        Worker addresses blocks and stages are pinned to (sorted).
    task_flops : float or None
        Data and branch modes: consecutive batch chunks are grouped into one task of about this
        many FLOPs where a chunk has fewer (None: :data:`TARGET_TASK_FLOPS`; 0: one task per
        chunk). The output keeps the input's chunks.
    threads : int
        Task threads of the cluster (0: unknown; the local scheduler's count is used). Grouping
        leaves every thread :data:`MIN_TASKS_PER_THREAD` tasks.
    reason : str
        Why the plan is what it is (for ``taskflow info`` and the dashboard).
    """

    mode: str = "data"
    chunk_size: int | None = None
    fuse: bool = True
    split: tuple[str, ...] = ()
    split_bytes: int = MODEL_SPLIT_BYTES
    blocks: int = 0
    stages: int = 0
    workers: tuple[str, ...] = ()
    reason: str = ""
    task_flops: float | None = None
    threads: int = 0


def make_plan(model: Any, client: Any = None, *, mode: str | None = None,
              chunk_size: int | None = None, fuse: bool = True, split: tuple[str, ...] = (),
              split_bytes: int = MODEL_SPLIT_BYTES, blocks: int = 0, stages: int = 0,
              workers: tuple[str, ...] | None = None, task_flops: float | None = None,
              threads: int | None = None) -> Plan:
    """Choose a plan for ``model`` on ``client``'s cluster (or none).

    Without ``mode``: model parallel when the cluster has two workers or more and a contraction
    has an initializer of at least ``split_bytes``; data parallel otherwise.

    Examples
    --------
    >>> plan = make_plan(model, client, mode="pipeline")            # doctest: +SKIP
    >>> model.predict(x, plan=plan)                                 # doctest: +SKIP
    """
    info = None
    if workers is None or threads is None:
        info = client.scheduler_info(n_workers=-1)["workers"] if client is not None else {}
    if workers is None:
        workers = tuple(sorted(info))
    if threads is None:
        threads = sum(int(w.get("nthreads", 1)) for w in info.values())
    reason = f"mode={mode!r} requested" if mode else ""
    if mode is None:
        big = _largest_contraction_weight(model)
        if len(workers) >= 2 and big[1] >= split_bytes:
            mode = "model"
            reason = (f"node {big[0]!r} has {big[1] / 2**20:.0f} MiB of weights "
                      f">= {split_bytes / 2**20:.0f} MiB: split over {len(workers)} workers")
        else:
            mode, reason = "data", "default: batch chunks over workers"
    if mode not in MODES:
        raise ValueError(f"unknown parallel mode {mode!r}; expected one of {MODES}")
    return Plan(mode, chunk_size, fuse, tuple(split), split_bytes, blocks, stages,
                tuple(workers), reason, task_flops, threads)


def _largest_contraction_weight(model: Any) -> tuple[str, int]:
    graph = model.graph
    best = ("", 0)
    for n in graph.nodes:
        spec = ops.lookup(n.op)
        if spec is None or spec.kind != "contraction":
            continue
        size = max((np.asarray(graph.initializers[i]).nbytes for i in n.inputs
                    if i in graph.initializers), default=0)
        if size > best[1]:
            best = (n.name or n.op, size)
    return best


def units_for(plan: Plan, trace: GraphTrace,
              device: str = "cpu") -> tuple[list[Unit], dict[str, np.ndarray], dict[str, int]]:
    """The units of ``plan`` for ``trace``, every constant they read, and the concatenation
    axis of each split node's output."""
    consts = dict(trace.consts)
    if plan.mode == "data":
        return partition(trace, "segments" if plan.fuse else "nodes"), consts, {}
    if plan.mode == "branch":
        return partition(trace, "chains"), consts, {}
    if plan.mode == "pipeline":
        k = plan.stages or max(len(plan.workers), 2)
        units = partition(trace, "stages", stages=k)
        groups = worker_groups(plan.workers, k)
        for u in units:
            u.workers = groups[u.block] if groups else None
            u.label = f"{u.label}.s{u.block}"
        return units, consts, {}
    # model parallel
    chosen = []
    for info in trace.compute_nodes:
        if info.kind != "contraction" or info.role != "local":
            continue
        size = max((trace.consts[i].nbytes for i in info.inputs if i in trace.consts),
                   default=0)
        named = info.label in plan.split or info.node.name in plan.split
        if named or (not plan.split and size >= plan.split_bytes):
            split = find_split(trace, info, device)
            if split is None:
                warnings.warn(f"node {info.label!r} ({info.node.op}) cannot be split along "
                              f"output channels; it stays whole", UserWarning, stacklevel=3)
            else:
                chosen.append((info, split))
    if not chosen:
        warnings.warn(f"model-parallel plan found no layer to split (none named in "
                      f"{plan.split!r} nor with weights >= {plan.split_bytes} bytes); running "
                      f"data parallel", UserWarning, stacklevel=3)
        return partition(trace, "segments"), consts, {}
    k = plan.blocks or max(len(plan.workers), 2)
    base = partition(trace, "segments", barriers=[i.index for i, _ in chosen])
    by_index = {i.index: (i, s) for i, s in chosen}
    units, split_axis = [], {}
    for u in base:
        if len(u.nodes) == 1 and u.nodes[0].index in by_index:
            info, split = by_index[u.nodes[0].index]
            blocks, slices = split_units(trace, info, split, min(k, split.size),
                                         plan.workers)
            units += blocks
            consts.update(slices)
            split_axis[info.outputs[0]] = split.out_axis
        else:
            units.append(u)
    return units, consts, split_axis


def group_chunks(chunks: Sequence[int], row_flops: float, *, threads: int = 0,
                 target: float | None = None, row_bytes: int = 0
                 ) -> tuple[tuple[int, int], ...]:
    """Consecutive runs ``(first, stop)`` of the batch ``chunks`` that each become one task.

    A run covers about ``target`` FLOPs (:data:`TARGET_TASK_FLOPS` if None) at ``row_flops``
    per row, but there are at least :data:`MIN_TASKS_PER_THREAD` runs per thread (and
    :data:`MIN_TASKS`), a multiple of ``threads`` where chunks allow (so no thread gets one
    run more than the others), and none whose largest value (``row_bytes`` per row) passes
    :data:`GROUP_MAX_BYTES`. Runs split the rows as evenly as chunk boundaries allow. Every
    chunk stays a run of its own when that leaves fewer than :data:`MIN_CHUNKS_PER_TASK`
    chunks per run (chunks of ``target`` or more, few chunks), or when ``target`` is 0.

    Examples
    --------
    >>> group_chunks([16] * 64, 2.6e6, threads=1)   # 64 chunks of an MLP's 16 rows
    ((0, 16), (16, 32), (32, 48), (48, 64))
    >>> len(group_chunks([16] * 64, 8.2e9, threads=2))  # ResNet-50: 131 GFLOP per chunk
    64
    """
    n = len(chunks)
    target = TARGET_TASK_FLOPS if target is None else target
    total = int(sum(chunks))
    if n <= 1 or not target or total == 0:
        return tuple((j, j + 1) for j in range(n))
    threads = max(int(threads or _local_threads()), 1)
    tasks = math.ceil(total * max(row_flops, 1.0) / target)
    tasks = max(tasks, MIN_TASKS_PER_THREAD * threads, MIN_TASKS)
    if row_bytes:
        tasks = max(tasks, math.ceil(total * row_bytes / GROUP_MAX_BYTES))
    tasks = math.ceil(tasks / threads) * threads
    if tasks * MIN_CHUNKS_PER_TASK > n:
        return tuple((j, j + 1) for j in range(n))
    # cut at the chunk boundary nearest to each even share of the rows
    ends = np.cumsum(chunks)
    cuts = {int(np.abs(ends - total * k / tasks).argmin()) + 1 for k in range(1, tasks)}
    bounds = [0, *sorted(cuts - {0, n}), n]
    return tuple(zip(bounds[:-1], bounds[1:]))


def _local_threads() -> int:
    """Threads of Dask's local (threaded) scheduler: its ``num_workers`` setting, else the
    CPU count Dask detects."""
    import dask
    from dask.system import CPU_COUNT

    return int(dask.config.get("num_workers", None) or CPU_COUNT)


def worker_groups(workers: tuple[str, ...], k: int) -> list[tuple[str, ...]]:
    """``k`` groups of workers: contiguous slices, or round-robin when fewer workers than k."""
    if not workers:
        return []
    if len(workers) >= k:
        return [tuple(g) for g in np.array_split(np.array(workers, dtype=object), k)]
    return [(workers[i % len(workers)],) for i in range(k)]


# --- model parallel -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """How to cut a node along output channels: slice input ``k`` along ``axes[k]``; the
    outputs concatenate along ``out_axis``."""

    axes: tuple[tuple[int, int], ...]
    out_axis: int
    size: int


def find_split(trace: GraphTrace, info: NodeInfo, device: str = "cpu") -> Split | None:
    """Find, by running the node on a sample, a weight axis that maps to an output axis.

    Tries each axis of the largest constant input whose length equals an output dim (other
    than the batch); 1-d constants of that length (a bias) are sliced with it. The candidate
    is kept when running on the two halves reproduces the two halves of the full output.
    """
    n = info.node
    if len(info.outputs) != 1:
        return None
    consts = [(k, trace.consts[i]) for k, i in enumerate(n.inputs) if i in trace.consts]
    if not consts:
        return None
    wk, w = max(consts, key=lambda kv: kv[1].size)
    rng = np.random.default_rng(0)
    args = []
    for i in n.inputs:
        if not i:
            args.append(None)
        elif i in trace.consts:
            args.append(trace.consts[i])
        else:
            shape = trace.shapes[i][0]
            args.append(rng.random(shape).astype(trace.dtypes[i]) if trace.dtypes[i].kind == "f"
                        else np.zeros(shape, trace.dtypes[i]))
    fn = ops.get(n.op).kernel(device)
    with np.errstate(all="ignore"):
        full = np.asarray(ops.as_outputs(fn(*args, **n.attrs))[0])
    for a, size in enumerate(w.shape):
        if size < 2:
            continue
        for o in range(1, full.ndim):
            if full.shape[o] != size:
                continue
            axes = [(wk, a)] + [(k, 0) for k, c in consts
                                if k != wk and c.ndim == 1 and c.shape[0] == size]
            if _split_matches(fn, args, n.attrs, axes, o, size, full):
                return Split(tuple(axes), o, size)
    return None


def _split_matches(fn: Any, args: list, attrs: dict, axes: list[tuple[int, int]], o: int,
                   size: int, full: np.ndarray) -> bool:
    half = size // 2
    for lo, hi in ((0, half), (half, size)):
        sub = list(args)
        for k, a in axes:
            sub[k] = np.take(args[k], np.arange(lo, hi), axis=a)
        try:
            with np.errstate(all="ignore"):
                got = np.asarray(ops.as_outputs(fn(*sub, **attrs))[0])
        except Exception:
            return False
        want = np.take(full, np.arange(lo, hi), axis=o)
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            return False
    return True


def split_units(trace: GraphTrace, info: NodeInfo, split: Split, k: int,
                workers: Sequence[str]) -> tuple[list[Unit], dict[str, np.ndarray]]:
    """``k`` block units for ``info`` and the weight slices they read (new constant names)."""
    bounds = np.linspace(0, split.size, k + 1).astype(int)
    units, slices = [], {}
    for b in range(k):
        rename = {}
        for pos, axis in split.axes:
            name = info.node.inputs[pos]
            new = f"{name}@b{b}of{k}"
            slices[new] = np.take(trace.consts[name], np.arange(bounds[b], bounds[b + 1]),
                                  axis=axis)
            rename[name] = new
        w = (workers[b % len(workers)],) if workers else None
        units.append(Unit(f"{info.label}.b{b}", [info], workers=w, rename=rename, block=b))
    return units, slices
