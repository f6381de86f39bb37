"""Throughput of taskflow, in-process and on Dask, next to ONNX Runtime and PyTorch, as ratios
from one run.

Used by ``taskflow bench`` and ``benchmarks/bench_cpu_kernels.py``. One call of
:func:`bench_model` loads a model, sets the kernel threads once for the whole run (Numba and
BLAS through :func:`taskflow.dask.threads.apply_kernel_threads`; ONNX Runtime's
``intra_op_num_threads``; ``torch.set_num_threads``), warms every runtime up, then times the
runtimes *interleaved* (taskflow, taskflow-dask, ORT, torch, taskflow, ...) and reports
medians, so load from other processes on a shared machine hits every runtime alike; each
runtime's timed call comes after ~0.1 s of its own untimed calls (:func:`interleaved`), so it
is timed in its steady state, not in the slow start a core has after another's turn.

``taskflow`` is :meth:`Model.run` in this process. ``taskflow-dask`` is :meth:`Model.predict`
on an embedded :class:`taskflow.dask.cluster.Cluster` of one worker process with one task thread
and the same kernel threads as every other runtime; weights and input are placed on the worker
once, so a timed call is graph building, scheduling, the whole batch as one chunk, and fetching
the result. Its output is checked against ``Model.run`` once, after warm-up. "Dask overhead" is
its time over the in-process time.

Peers are optional: ONNX Runtime, OpenVINO (fp32, and its own default precision for this CPU;
:mod:`taskflow.bench.openvino_peer`) and PyTorch are imported only here, inside functions, and
skipped quietly when missing. They never appear on taskflow's runtime path.

Examples
--------
>>> result = bench_model("light_resnet50", batch=8, threads=2)        # doctest: +SKIP
>>> print(result)                                                     # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from taskflow.bench.openvino_peer import openvino_runner
from taskflow.bench.peak import PEAK_GEMM_SIZE, sgemm_peak

#: Peers compared by default, in report order.
PEERS = ("onnxruntime", "openvino", "openvino-default", "torch")
#: taskflow's own runners; every other runner in a result is a peer.
TASKFLOW_RUNNERS = ("taskflow", "taskflow-dask")
#: Length given to a model's symbolic dimensions other than the batch (a transformer's
#: sequence): what the issues measure MiniLM at.
SEQUENCE = 128
#: How far the Dask output may stray from ``Model.run``'s: the same kernels on the same input
#: and thread count, so anything past float32 noise is a bug, not a rounding difference.
DASK_TOLERANCE = 1e-5


def light_model_dir() -> str:
    import onnx

    return os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def resolve_model(spec: str) -> str:
    """A model path from a path, or from a name of the ONNX light model zoo shipped with the
    ``onnx`` package (``light_resnet50`` or ``resnet50``)."""
    if os.path.exists(spec):
        return spec
    name = spec.removesuffix(".onnx")
    name = name if name.startswith("light_") else f"light_{name}"
    path = os.path.join(light_model_dir(), f"{name}.onnx")
    if os.path.exists(path):
        return path
    known = sorted(f[:-5] for f in os.listdir(light_model_dir()) if f.endswith(".onnx"))
    raise FileNotFoundError(f"model {spec!r} is neither a file nor a light model zoo name "
                            f"(known: {', '.join(known)})")


def gemm_peak(repeat: int = 3, size: int = PEAK_GEMM_SIZE, threads: int = 1) -> float:
    """Measured fp32 peak (GFLOP/s) on ``threads`` threads: :func:`~.peak.sgemm_peak`."""
    return sgemm_peak(threads, repeat, size).gflops


def feed_dims(graph: Any, feed: dict[str, np.ndarray]) -> dict[str, int]:
    """Sizes ``feed`` gives the graph's symbolic input dims other than the batch
    (``{"sequence": 128}``): what :meth:`Model.info` needs to count a transformer's FLOPs."""
    dims, batch = {}, set()
    for v in graph.inputs:
        for k, d in enumerate(v.shape or ()):
            if isinstance(d, int) or v.name not in feed:
                continue
            name = d if isinstance(d, str) and d else f"{v.name}[{k}]"  # as Model.info names it
            if k == 0:
                batch.add(name)
            else:
                dims[name] = int(feed[v.name].shape[k])
    return {n: size for n, size in dims.items() if n not in batch}


def sample_feed(graph: Any, batch: int, seq: int = SEQUENCE,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Valid random inputs for every graph input: the first symbolic dimension is ``batch``,
    the others ``seq``. Floats are standard normal; integer inputs named like a mask are ones;
    other integer inputs are token ids below the row count of the embedding tables they
    index (Gather of an initializer), else below 2.
    """
    rng = np.random.default_rng(seed)
    feed = {}
    for v in graph.inputs:
        dims, first = [], True
        for d in v.shape or ():
            dims.append(d if isinstance(d, int) else batch if first else seq)
            first = first and isinstance(d, int)
        dtype = np.dtype(v.dtype or np.float32)
        if dtype.kind == "f":
            feed[v.name] = rng.standard_normal(dims).astype(dtype)
        elif "mask" in v.name.lower() or dtype.kind == "b":
            feed[v.name] = np.ones(dims, dtype)
        else:
            rows = [graph.initializers[n.inputs[0]].shape[0] for n in graph.nodes
                    if n.op == "Gather" and n.inputs[1:2] == [v.name]
                    and n.inputs[0] in graph.initializers]
            feed[v.name] = rng.integers(0, min(rows, default=2), dims).astype(dtype)
    return feed


# --- peers --------------------------------------------------------------------------------
def ort_runner(model: Any, threads: int) -> Callable[[np.ndarray], Any] | None:
    """ONNX Runtime (CPU provider, ORT_ENABLE_ALL, ``threads`` intra-op threads) on the
    model's source graph (batch made symbolic as taskflow loaded it); None if not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from taskflow.frontend.onnx_export import to_onnx

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    session = ort.InferenceSession(to_onnx(model.source_graph).SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, x if isinstance(x, dict) else {name: x})


def torch_runner(model: Any, threads: int) -> Callable[[np.ndarray], Any] | None:
    """PyTorch eager (``torch.nn.functional``) on taskflow's optimised graph, node by node;
    None if torch is missing or the graph uses an op this small interpreter lacks."""
    try:
        import torch
    except ImportError:
        return None
    from taskflow.bench.torch_peer import TorchGraph

    torch.set_num_threads(threads)
    try:
        graph = TorchGraph(model.graph)
    except NotImplementedError:
        return None
    return graph


# --- taskflow on Dask ----------------------------------------------------------------------
@contextmanager
def dask_runner(model: Any, x: np.ndarray, threads: int) -> Iterator[Callable[[], list]]:
    """A call computing ``model.predict`` of ``x`` on an embedded one-worker cluster and
    fetching its outputs (a list, in ``Model.run``'s order); the cluster closes on exit.

    One worker process with one task thread running the kernels on ``threads`` kernel
    threads: the thread count every peer gets. Weights and input are placed on the worker
    once, so a call times ``predict(...).compute()`` without the input's transfer.
    """
    import dask.array as da

    from taskflow.dask.cluster import Cluster

    # oversubscribe: ``threads`` is what every runtime gets, cores or not; they take turns.
    with Cluster(n_workers=1, threads_per_worker=1, kernel_threads=threads, processes=True,
                 quiet=True, oversubscribe=True) as cluster:
        client = cluster.client
        model.to_cluster(client)
        xd = client.persist(da.from_delayed(client.scatter(x), x.shape, dtype=x.dtype))

        def run() -> list:
            y = model.predict(xd, client=client)  # one chunk: the whole batch
            return client.gather(client.compute(list(y) if isinstance(y, tuple) else [y]))

        yield run


def check_outputs(expected: Sequence[np.ndarray], got: Sequence[np.ndarray], names: Sequence[str],
                  runner: str, tolerance: float = DASK_TOLERANCE) -> float:
    """Largest absolute difference between ``runner``'s outputs and ``expected``; raises
    :class:`TaskflowError` past ``tolerance`` (scaled by the output's magnitude when above 1),
    since a benchmark must not time wrong results."""
    from taskflow.errors import TaskflowError

    if len(got) != len(expected):
        raise TaskflowError(f"{runner} gave {len(got)} output(s); Model.run gives "
                            f"{len(expected)} ({', '.join(names)})")
    worst = 0.0
    for name, want, have in zip(names, expected, got):
        want, have = np.asarray(want), np.asarray(have)
        if want.shape != have.shape:
            raise TaskflowError(f"{runner} output {name!r} has shape {have.shape}; Model.run "
                                f"gives {want.shape}")
        diff = float(np.max(np.abs(want - have), initial=0.0))
        scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
        if not diff <= tolerance * scale:  # (NaN fails too)
            raise TaskflowError(f"{runner} output {name!r} differs from Model.run's by "
                                f"{diff!r} (max abs); expected at most {tolerance * scale:.2g}")
        worst = max(worst, diff)
    return worst


# --- timing --------------------------------------------------------------------------------
@dataclass
class BenchResult:
    """Images per second of each runtime, from interleaved runs of one process."""

    model: str
    batch: int
    threads: int
    flops_per_image: float
    images_per_s: dict[str, float] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=dict)
    first_run_s: float = 0.0
    warm_run_s: float = 0.0
    compile_s: float = 0.0
    gemm_peak_gflops: float = 0.0
    #: Which sgemm gave the peak (:class:`~.peak.SgemmPeak`'s ``how``).
    gemm_peak_how: str = ""
    #: Sizes of the symbolic non-batch input dims in the timed feed (a transformer's sequence).
    dims: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    #: Largest absolute difference of the Dask output from ``Model.run``'s (None: no Dask run).
    dask_max_abs_diff: float | None = None

    def ratio(self, peer: str, runner: str = "taskflow") -> float | None:
        """Throughput of ``runner`` over ``peer``'s (above 1: ``runner`` is faster)."""
        if peer not in self.images_per_s or runner not in self.images_per_s:
            return None
        return self.images_per_s[runner] / self.images_per_s[peer]

    @property
    def dask_overhead(self) -> float | None:
        """taskflow-dask time over taskflow in-process time (1.0: Dask costs nothing)."""
        return self.ratio("taskflow-dask")

    @property
    def gflops(self) -> float:
        return self.images_per_s.get("taskflow", 0.0) * self.flops_per_image / 1e9

    def __str__(self) -> str:
        sizes = "".join(f", {k} {v}" for k, v in self.dims.items())
        lines = [f"{self.model}: batch {self.batch}{sizes}, {self.threads} thread(s), "
                 f"{self.flops_per_image / 1e9:.2f} GFLOP/image"]
        for name, rate in self.images_per_s.items():
            t = self.times[name]
            lines.append(f"  {name:16s} {rate:8.2f} img/s  (median of {len(t)}: "
                         f"{statistics.median(t):.3f} s, best {min(t):.3f} s)")
        peers = [p for p in self.images_per_s if p not in TASKFLOW_RUNNERS]
        for runner in TASKFLOW_RUNNERS:
            for peer in peers:
                r = self.ratio(peer, runner)
                if r is not None:
                    lines.append(f"  {runner + ' / ' + peer:28s} {r:6.2f}x")
        if self.dask_overhead is not None:
            lines.append(f"  Dask overhead {self.dask_overhead:.2f}x (taskflow-dask time / "
                         f"taskflow in-process time; outputs agree to "
                         f"{self.dask_max_abs_diff:.1e})")
        if self.gemm_peak_gflops:
            lines.append(f"  taskflow {self.gflops:.1f} GFLOP/s = "
                         f"{self.gflops / self.gemm_peak_gflops:.0%} of measured sgemm peak "
                         f"({self.gemm_peak_gflops:.1f} GFLOP/s, {self.gemm_peak_how})")
        lines.append(f"  kernel compile/cache load: {self.compile_s:.2f} s (warm-up), first "
                     f"batch-1 run {self.first_run_s:.2f} s vs warm {self.warm_run_s:.3f} s")
        lines += [f"  skipped {s}" for s in self.skipped]
        return "\n".join(lines)


#: Untimed calls of a runtime before each of its timed calls add up to this much (seconds).
#: On a shared VM a core that idled, even for a few milliseconds, comes back slow for the next
#: 10-50 ms (the host's frequency and scheduling): GPT's first call after another runtime's
#: took 47-54 ms, its next ones 28-34. Runtimes whose pools spin (ONNX Runtime, OpenMP, TBB)
#: keep both cores busy and pay it less, so timing calls back to back in turn measured that,
#: not what a batch job runs at. Settling first times every runtime in its steady state.
SETTLE_S = 0.1
#: A call this long (seconds) is timed without settling: the slow start is a few percent of it.
SETTLE_MAX_CALL_S = 0.5


def interleaved(runners: dict[str, Callable[[], Any]], repeat: int,
                settle_s: float = SETTLE_S) -> dict[str, list[float]]:
    """Seconds per call of each runner, taking them in turn ``repeat`` times.

    Each turn first calls the runner untimed until ``settle_s`` has passed (at least once,
    unless its last call took ``SETTLE_MAX_CALL_S`` or more), then times one call: the
    runtimes alternate, so load from other processes hits each alike, and each is timed in
    its steady state, as a batch job runs it, not in the slow start after another's turn.
    """
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeat):
        for name, fn in runners.items():
            if settle_s > 0 and (times[name] or [0.0])[-1] < SETTLE_MAX_CALL_S:
                start = time.perf_counter()
                while True:
                    fn()
                    if time.perf_counter() - start >= settle_s:
                        break
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def warmup_model(model: Any, batch: int = 1) -> tuple[float, float]:
    """(first run, second run) seconds of ``model`` on a zero batch: the difference is JIT
    compilation or Numba cache loading, and first-touch allocation."""
    from taskflow.executor import dummy_feed

    feed = dummy_feed(model.graph, batch)
    start = time.perf_counter()
    model.run(None, feed)
    first = time.perf_counter() - start
    start = time.perf_counter()
    model.run(None, feed)
    return first, time.perf_counter() - start


def bench_model(spec: str, *, batch: int = 32, threads: int = 2, repeat: int = 5,
                peers: Sequence[str] = PEERS, dask: bool = True, seed: int = 0,
                seq: int = SEQUENCE, feed: Mapping[str, np.ndarray] | None = None,
                extra_peers: Mapping[str, Callable[[Any], Any]] | None = None,
                measure_peak: bool = True, precision: str = "fp32") -> BenchResult:
    """Throughput of ``spec`` (path or light-model name) in taskflow, in-process and (with
    ``dask``) on an embedded one-worker Dask cluster, and in its peers.

    Inputs are ``feed`` (of ``batch`` rows), else :func:`sample_feed` (``seq``: the sequence
    length of a transformer). A model with several inputs (token ids and a mask) runs
    in-process, in ONNX Runtime and OpenVINO: the Dask runner and the PyTorch peer built from
    the graph take one input. ``extra_peers`` are further runners by name, each called with
    what the built-in peers get (the one input array, or the feed); they are timed
    interleaved with the rest, after the built-in ones (a model's own PyTorch module, for one).
    FLOPs per image are counted at the feed's sizes (:func:`feed_dims`). ``measure_peak``
    measures the sgemm peak for :attr:`BenchResult.gflops`' share (a suite measures it once).
    ``precision`` ``"bf16"``/``"int8"`` runs taskflow's layers that are measured faster so
    (:meth:`taskflow.Model.with_precision`); the peers stay fp32.

    Kernel threads are applied once for the whole run and restored at the end; the cluster is
    closed at the end, whatever happens.

    Raises
    ------
    TaskflowError
        The Dask run's output differs from ``Model.run``'s (see :func:`check_outputs`).
    """
    from taskflow.dask import threads as thread_control
    from taskflow.model import load
    from taskflow.ops.cpu.warmup import warmup

    path = resolve_model(spec)
    thread_control.apply_kernel_threads(threads)
    try:
        with ExitStack() as stack:  # closes the Dask cluster, whatever happens
            start = time.perf_counter()
            warmup()
            compile_s = time.perf_counter() - start
            model = load(path, precision=precision)
            first, warm = warmup_model(model)
            if feed is None:
                feed = sample_feed(model.graph, batch, seq, seed)
            feed = dict(feed)
            dims = feed_dims(model.graph, feed)
            info = model.info(dims)
            single = len(feed) == 1
            x = next(iter(feed.values())) if single else feed
            runners: dict[str, Callable[[], Any]] = {"taskflow": lambda: model.run(None, feed)}
            skipped = []
            if dask and not single:
                dask = False
                skipped.append("taskflow-dask (one input only)")
            if dask:
                runners["taskflow-dask"] = stack.enter_context(dask_runner(model, x, threads))
            for peer in peers:
                if peer == "torch" and not single:
                    skipped.append(f"{peer} (one input only)")
                    continue
                make = {"onnxruntime": ort_runner, "torch": torch_runner,
                        "openvino": openvino_runner,
                        "openvino-default": partial(openvino_runner, precision=None)}[peer]
                run = make(model, threads)
                if run is None:
                    skipped.append(f"{peer} (not installed, or an op it lacks)")
                    continue
                runners[peer] = lambda run=run: run(x)
            for name, run in (extra_peers or {}).items():
                runners[name] = lambda run=run: run(x)
            # warm-up: caches, allocators, thread pools; the Dask worker loads Numba's cache
            outputs = {name: fn() for name, fn in runners.items()}
            diff = None
            if dask:
                diff = check_outputs(outputs["taskflow"], outputs["taskflow-dask"],
                                     model.graph.output_names, "taskflow-dask")
            del outputs
            times = interleaved(runners, repeat)
            result = BenchResult(os.path.basename(path).removesuffix(".onnx"), batch, threads,
                                 info.flops_per_sample, times=times, first_run_s=first,
                                 warm_run_s=warm, compile_s=compile_s, skipped=skipped,
                                 dask_max_abs_diff=diff, dims=dims)
            result.images_per_s = {k: batch / statistics.median(v) for k, v in times.items()}
        if measure_peak:
            peak = sgemm_peak(threads)
            result.gemm_peak_gflops, result.gemm_peak_how = peak.gflops, peak.how
        return result
    finally:
        thread_control.reset_kernel_threads()


# --- per-op kernel vs reference ------------------------------------------------------------------
@dataclass
class OpTiming:
    op: str
    calls: int = 0
    reference_s: float = 0.0
    kernel_s: float = 0.0
    shapes: set = field(default_factory=set)

    @property
    def speedup(self) -> float:
        return self.reference_s / self.kernel_s if self.kernel_s else math.inf


def op_speedups(spec: str, *, batch: int = 8, threads: int = 2,
                repeat: int = 3) -> dict[str, OpTiming]:
    """Per op type: the cpu kernel's time and the numpy reference's on the model's own layer
    inputs (best of ``repeat`` each, summed over the model's nodes).

    Inputs are captured while the model runs on its cpu kernels, so a kernel sees what it sees
    in the network (channels-last activations); the reference gets C-ordered copies, as in a
    reference-only run.
    """
    from taskflow import ops
    from taskflow.dask import threads as thread_control
    from taskflow.model import load

    def best(fn: Callable[[], Any]) -> float:
        fn()
        t, spent, runs = math.inf, 0.0, 0
        while runs < repeat or (spent < 0.05 and runs < 50):  # small ops: more samples
            start = time.perf_counter()
            fn()
            took = time.perf_counter() - start
            t, spent, runs = min(t, took), spent + took, runs + 1
        return t

    timings: dict[str, OpTiming] = {}

    def trace(node: Any, args: list[Any], results: tuple) -> None:
        spec_ = ops.get(node.op)
        kernel = spec_.kernels.get("cpu")
        if kernel is None:
            return
        plain = [None if a is None else np.ascontiguousarray(a) for a in args]
        t = timings.setdefault(node.op, OpTiming(node.op))
        t.calls += 1
        t.shapes.add(tuple(tuple(a.shape) for a in args if a is not None))
        t.kernel_s += best(lambda: kernel(*args, **node.attrs))
        t.reference_s += best(lambda: spec_.reference(*plain, **node.attrs))

    thread_control.apply_kernel_threads(threads)
    try:
        model = load(resolve_model(spec))
        feed = sample_feed(model.graph, batch)
        model.run(None, feed)
        model._plan.run(feed, trace=trace)
    finally:
        thread_control.reset_kernel_threads()
    return timings
