"""The worker side of :func:`taskflow.infer_zarr`: the job each worker holds and the task.

The model reaches each worker once, inside a ``WorkerPlugin`` named by its content hash
(:class:`ModelPlugin`): the scheduler keeps the pickled bytes and replays them to workers that
join later (a nanny restarting a killed worker included), and registering the same model again
is a no-op, so later jobs with that model (a resume, a rerun) send nothing. At most
``MODEL_CACHE`` models stay registered: the oldest is removed when another arrives. A smaller
per-job plugin (:class:`JobPlugin`) says where to read and write, so a task carries only
``(job token, chunk indices)``.

A task covers one or more whole output chunks. It reads and writes them in blocks of
consecutive chunks (``BLOCK_BYTES``), runs the model chunk by chunk (``batch_size`` is the
model's batch), and overlaps the next block's read and the previous block's write with compute
on two I/O threads. At most ``PREFETCH`` blocks read ahead and ``WRITES_BEHIND`` waiting to be
written are held, so a task's memory does not grow with the chunks it covers.
"""

from __future__ import annotations

import errno
import math
import os
import pickle
import sys
import threading
import time
import weakref
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
from distributed import WorkerPlugin

from taskflow.dashboard.telemetry import LayerSampler, emit_chunk
from taskflow.dask.threads import sync_numba_env
from taskflow.dask.trace import node_labels
from taskflow.errors import ShapeError, TaskflowError
from taskflow.stream import manifest as mf
from taskflow.stream.stores import open_options

#: Models kept registered on a cluster (and built in each worker) across jobs: the one in use
#: and the one before it, so alternating jobs do not resend weights; more would pin memory.
MODEL_CACHE = 2
MODEL_PLUGIN_PREFIX = "taskflow-model-"
#: Prefix of a streamed job's worker plugin (:class:`JobPlugin`), followed by the job's token.
JOB_PLUGIN_PREFIX = "taskflow-job-"
#: I/O goes in blocks of consecutive chunks: one Zarr call reads (or writes, or marks) a whole
#: block, because Zarr's cost per call (~1 ms: event-loop and file-thread hand-offs, GIL-bound)
#: dwarfs a small model's compute. A block holds at most ``BLOCK_BYTES`` of inputs and outputs
#: (memory stays bounded) and ``MAX_BLOCK_CHUNKS`` chunks (the markers of a block are written
#: together, so a crash loses at most that much finished work).
BLOCK_BYTES = 8 << 20
MAX_BLOCK_CHUNKS = 64
#: Blocks read ahead of the one being computed, and runs waiting to be written behind it.
PREFETCH = 1
WRITES_BEHIND = 2
#: I/O threads per task thread of a worker: they mostly wait on Zarr's own threads, not on the CPU.
IO_THREADS = 2


class ChunkJob:
    """What a worker needs to run any chunk of one job: shipped once, in :class:`JobPlugin`."""

    def __init__(self, token: str, model_hash: str, inputs: dict[str, tuple[str, str]],
                 target: str, outputs: list[str], rows: int, batch: int, preprocess: Any,
                 source_options: dict[str, Any] | None = None,
                 target_options: dict[str, Any] | None = None):
        self.token, self.model_hash, self.target = token, model_hash, target
        self.inputs = inputs  # model input name -> (store location, array path)
        # fsspec storage options the stores are opened with (:mod:`taskflow.stream.stores`)
        self.source_options, self.target_options = source_options, target_options
        self.outputs, self.rows, self.batch = outputs, rows, batch
        # Preprocessing travels as bytes, its user code by value: unpacking this job (in the
        # worker plugin's setup) never imports a module the workers may lack, so a bad one
        # fails the job's tasks, with a message, instead of every worker joining later.
        self._pre = None if preprocess is None else pack_by_value(preprocess)
        self._pre_obj: Any = None

    @property
    def preprocess(self) -> Any:
        if self._pre is not None and self._pre_obj is None:
            try:
                self._pre_obj = pickle.loads(self._pre)
            except Exception as exc:  # noqa: BLE001 - whatever the user's code raises
                raise TaskflowError(f"job {self.token}: its preprocessing cannot be loaded on "
                                    f"this worker ({type(exc).__name__}: {exc}); install the "
                                    "packages it imports on the workers") from exc
        return self._pre_obj

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pre_obj": None}

    def rows_of(self, k: int) -> tuple[int, int]:
        return k * self.batch, min(self.rows, (k + 1) * self.batch)


#: Write errors no retry can fix: the target is full, read-only or not ours to write. They end
#: the job (the chunks stay missing, for --resume) instead of quarantining chunk after chunk.
FATAL_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES,
                                errno.EPERM, errno.EFBIG})


def is_fatal_write(exc: BaseException) -> bool:
    """Whether a failed output write means the whole target cannot be written."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in FATAL_WRITE_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def pack_by_value(obj: Any) -> bytes:
    """``obj`` pickled with cloudpickle, the functions of user modules (not installed
    packages) by value, so workers need not import them: ``--preprocess my_steps:fn`` works on
    a cluster whose workers never saw ``my_steps.py``."""
    import cloudpickle

    modules = {m for m in map(sys.modules.get, _function_modules(obj))
               if m is not None and _is_user_module(m)}
    for m in modules:
        cloudpickle.register_pickle_by_value(m)
    try:
        return cloudpickle.dumps(obj)
    finally:
        for m in modules:
            cloudpickle.unregister_pickle_by_value(m)


def _function_modules(obj: Any) -> set[str]:
    found = set()
    functions = getattr(obj, "functions", None)  # a pipeline's function stages, nested too
    extra = functions() if callable(functions) else []
    for value in [obj, *getattr(obj, "__dict__", {}).values(), *extra]:
        items = value.values() if isinstance(value, dict) else [value]
        for f in items:
            f = getattr(f, "func", f)  # a functools.partial: where its function lives
            if callable(f):
                found.add(getattr(f, "__module__", None) or type(f).__module__)
    return {m for m in found if m}


def _is_user_module(module: Any) -> bool:
    path = getattr(module, "__file__", None) or ""
    if not path or module.__name__.split(".")[0] in ("taskflow", "numpy"):
        return False
    return not any(part in ("site-packages", "dist-packages") for part in path.split(os.sep)) \
        and not path.startswith(sys.base_prefix)


_JOBS: dict[str, ChunkJob] = {}
_ARRAYS: dict[str, tuple] = {}
_PAYLOADS: dict[str, bytes] = {}  # model hash -> model_payload()
_MODELS: OrderedDict[str, Any] = OrderedDict()  # model hash -> built Model
_LOCK = threading.Lock()
_POOL: list[ThreadPoolExecutor] = []
_SHIPPED: Any = None  # client side: model -> payload, pickled once per model object


def model_payload(model: Any) -> bytes:
    """What a worker builds the job's model from: a model's ``(graph, device, strict)``, or
    a pipeline pickled whole (its models as graphs, its functions by value)."""
    if hasattr(model, "graph"):
        return pickle.dumps((model.graph, model.device, model.strict),
                            protocol=pickle.HIGHEST_PROTOCOL)
    return pack_by_value(model)


class ModelPlugin(WorkerPlugin):
    """One model on every worker, present and future; kept as bytes until a task needs it."""

    idempotent = True  # registering the same model twice changes nothing

    def __init__(self, model_hash: str, payload: bytes):
        self.model_hash, self.payload = model_hash, payload

    def setup(self, worker: Any = None, **kwargs: Any) -> None:
        _PAYLOADS[self.model_hash] = self.payload

    def teardown(self, worker: Any = None, **kwargs: Any) -> None:
        if not any(job.model_hash == self.model_hash for job in _JOBS.values()):
            _PAYLOADS.pop(self.model_hash, None)
            _MODELS.pop(self.model_hash, None)


def ship_model(client: Any, model: Any, model_hash: str) -> None:
    """Register ``model`` on ``client``'s cluster unless it already is; evict the oldest
    taskflow models beyond ``MODEL_CACHE``."""
    import weakref

    global _SHIPPED
    name = MODEL_PLUGIN_PREFIX + model_hash[:24]
    # (a lambda travels by value: the scheduler need not import taskflow)
    names = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins))
    registered = [n for n in names if n.startswith(MODEL_PLUGIN_PREFIX)]
    if name in registered:
        return
    if _SHIPPED is None:
        _SHIPPED = weakref.WeakKeyDictionary()
    payload = _SHIPPED.get(model)
    if payload is None:
        payload = _SHIPPED[model] = model_payload(model)
    try:
        client.register_plugin(ModelPlugin(model_hash, payload), name=name)
    except BaseException:
        # The scheduler keeps a plugin whose broadcast failed and replays it to every worker
        # that (re)starts: one whose workers died loading taskflow would kill each new one.
        try:
            client.unregister_worker_plugin(name)
        except Exception:  # noqa: BLE001 - not registered, or the scheduler is gone
            pass
        raise
    for old in registered[:max(0, len(registered) + 1 - MODEL_CACHE)]:
        client.unregister_worker_plugin(old)


class JobPlugin(WorkerPlugin):
    """Carries a :class:`ChunkJob` (model graph included) to every worker, present and future."""

    def __init__(self, job: ChunkJob):
        self.job = job

    def setup(self, worker: Any = None, **kwargs: Any) -> None:
        _JOBS[self.job.token] = self.job

    def teardown(self, worker: Any = None, **kwargs: Any) -> None:
        _JOBS.pop(self.job.token, None)
        _ARRAYS.pop(self.job.token, None)


def _state(token: str) -> tuple[ChunkJob, Any, tuple, ThreadPoolExecutor]:
    sync_numba_env()  # cheap; see its docstring
    job = _JOBS.get(token)
    if job is None:
        raise TaskflowError(f"job {token} is not registered on this worker (its plugin was "
                            "removed: the job ended or was cancelled)")
    with _LOCK:  # one build per process even with several task threads
        model = _MODELS.get(job.model_hash)
        if model is None:
            from taskflow.model import Model

            if job.model_hash not in _PAYLOADS:
                raise TaskflowError(f"model {job.model_hash[:12]} is not on this worker (its "
                                    "plugin was removed by a job with another model)")
            built = pickle.loads(_PAYLOADS[job.model_hash])
            model = built if not isinstance(built, tuple) else \
                Model(built[0], device=built[1], strict=built[2], optimize=False)
            _MODELS[job.model_hash] = model
            while len(_MODELS) > MODEL_CACHE:
                _MODELS.popitem(last=False)
        _MODELS.move_to_end(job.model_hash)
        arrays = _ARRAYS.get(token)
        if arrays is None:
            import zarr

            src = job.source_options
            dst = open_options(job.target, job.target_options)
            ins = {n: zarr.open_array(store=loc, path=path, mode="r", **open_options(loc, src))
                   for n, (loc, path) in job.inputs.items()}
            outs = [zarr.open_array(store=job.target, path=n, mode="r+", **dst)
                    for n in job.outputs]
            done = zarr.open_array(store=job.target, path=mf.DONE, mode="r+", **dst)
            arrays = _ARRAYS[token] = (ins, outs, done)
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(IO_THREADS * _task_threads(),
                                            thread_name_prefix="taskflow-io"))
    return job, model, arrays, _POOL[0]


def _task_threads() -> int:
    try:
        from distributed import get_worker

        return max(1, get_worker().state.nthreads)
    except ValueError:  # not on a worker (a test calling the task directly)
        return 1


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    return fn(*args), time.perf_counter() - t


def blocks_of(chunks: list[int], max_chunks: int) -> list[list[int]]:
    """Runs of consecutive chunk indices, each at most ``max_chunks`` long."""
    out: list[list[int]] = []
    for k in chunks:
        if out and out[-1][-1] == k - 1 and len(out[-1]) < max_chunks:
            out[-1].append(k)
        else:
            out.append([k])
    return out


def _block_chunks(job: ChunkJob, ins: dict, outs: list) -> int:
    """Chunks per I/O block: as many as fit ``BLOCK_BYTES`` (inputs and outputs), at least 1."""
    per_row = sum(np.dtype(a.dtype).itemsize * math.prod(a.shape[1:])
                  for a in (*ins.values(), *outs))
    return max(1, min(MAX_BLOCK_CHUNKS, BLOCK_BYTES // max(1, per_row * job.batch)))


def run_chunks(token: str, chunks: list[int]) -> dict[str, Any]:
    """The task: for each block of consecutive chunks, read the rows, then per chunk preprocess
    and run the model, then write each run of good chunks' outputs, then their markers. A chunk
    that fails is reported (not raised), so the others still count."""
    from taskflow.dask.threads import ensure_kernel_threads

    t0 = time.perf_counter()
    job, model, (ins, outs, done), pool = _state(token)
    ensure_kernel_threads()
    rows_of = job.rows_of
    sampler, sampled, n_sampled = _sampler(job, model), {}, 0  # per-layer time (the dashboard)

    def read(block: list[int]) -> dict[str, Any]:
        lo, hi = rows_of(block[0])[0], rows_of(block[-1])[1]
        return {name: a[lo:hi] for name, a in ins.items()}

    def write(run: list[int], bufs: list[np.ndarray], base: int) -> None:
        lo, hi = rows_of(run[0])[0], rows_of(run[-1])[1]
        for arr, buf in zip(outs, bufs):
            arr[lo:hi] = buf[lo - base:hi - base]
        done[run[0]:run[-1] + 1] = 1  # only now do these chunks count as done

    report: dict[str, Any] = {"done": [], "failed": {}, "rows": 0, "read_s": 0.0,
                              "compute_s": 0.0, "write_s": 0.0, "pid": os.getpid()}
    blocks = blocks_of(chunks, _block_chunks(job, ins, outs))
    reads: deque[Future] = deque(pool.submit(_timed, read, b) for b in blocks[:PREFETCH + 1])
    writes: deque[tuple[list[int], Future]] = deque()

    def fail(ks: list[int], exc: BaseException) -> None:
        report["failed"].update(dict.fromkeys(ks, f"{type(exc).__name__}: {exc}"))

    def settle(run: list[int], fut: Future) -> None:
        try:
            report["write_s"] += fut.result()[1]
        except Exception as exc:  # noqa: BLE001 - reported per chunk; the client retries them
            if is_fatal_write(exc):  # no chunk of this job can be written: stop the job
                report["fatal"] = f"{type(exc).__name__}: {exc}"
            # markers are written after all of the run's data, chunk by chunk: a write that
            # failed among them (a disk filling up) leaves the first ones set, and those
            # chunks are done; the summary must count what the target says
            marked = _marked(run)
            fail([k for k in run if k not in marked], exc)
            run = [k for k in run if k in marked]
            if not run:
                return
        report["done"] += run
        report["rows"] += sum(rows_of(k)[1] - rows_of(k)[0] for k in run)

    def _marked(run: list[int]) -> set[int]:
        try:
            flags = np.asarray(done[run[0]:run[-1] + 1])
        except Exception:  # noqa: BLE001 - unreadable: count none, resume re-lists markers
            return set()
        return {k for k, flag in zip(range(run[0], run[-1] + 1), flags) if flag}

    try:
        for i, block in enumerate(blocks):
            fut = reads.popleft()
            if i + PREFETCH + 1 < len(blocks):
                reads.append(pool.submit(_timed, read, blocks[i + PREFETCH + 1]))
            try:
                data, seconds = fut.result()
            except Exception as exc:  # noqa: BLE001 - retried chunk by chunk: finds the bad one
                fail(block, exc)
                continue
            report["read_s"] += seconds
            t = time.perf_counter()
            base = rows_of(block[0])[0]
            bufs = [np.empty((rows_of(block[-1])[1] - base, *a.shape[1:]), a.dtype)
                    for a in outs]
            good = []
            for k in block:
                lo, hi = rows_of(k)
                timed = sampler.due(sampled)
                n_sampled += timed
                try:
                    for buf, y in zip(bufs, _compute(job, model, outs, data, k, lo - base,
                                                     hi - base, (sampler, sampled) if timed
                                                     else None)):
                        buf[lo - base:hi - base] = y
                    good.append(k)
                except Exception as exc:  # noqa: BLE001 - as in settle()
                    fail([k], exc)
            report["compute_s"] += time.perf_counter() - t
            for run in blocks_of(good, len(good) or 1):
                writes.append((run, pool.submit(_timed, write, run, bufs, base)))
            del data, bufs
            while len(writes) > WRITES_BEHIND:
                settle(*writes.popleft())
    finally:
        while writes:  # also on the way out of an error: never leave writes running unowned
            settle(*writes.popleft())
    report["seconds"] = time.perf_counter() - t0
    if report["done"]:  # for the /taskflow dashboard; a no-op off a worker
        emit_chunk(token, report["done"], report["rows"], report["seconds"],
                   {"read": report["read_s"], **sampler.split(report["compute_s"], sampled),
                    "write": report["write_s"]}, sampled=n_sampled)
    return report


_SAMPLERS: weakref.WeakKeyDictionary[ChunkJob, LayerSampler] = weakref.WeakKeyDictionary()


def _sampler(job: ChunkJob, model: Any) -> LayerSampler:
    """This process's :class:`LayerSampler` for ``job`` (dropped with the job)."""
    sampler = _SAMPLERS.get(job)
    if sampler is None:
        sampler = _SAMPLERS.setdefault(job, LayerSampler(layer_labels(model)))
    return sampler


def layer_labels(model: Any) -> dict[int, str]:
    """``id(node)`` to the name the node's Dask keys carry (``tf-<label>-…``), so the dashboard
    shows a streamed job's layers under the names ``Model.predict``'s tasks have."""
    if not hasattr(model, "graph"):  # a pipeline is timed stage by stage instead
        return {}
    order = model.graph.toposort()  # the plan's order, as in the trace
    return {id(n): label for n, label in zip(order, node_labels(order))}


def _compute(job: ChunkJob, model: Any, outs: list, data: dict[str, Any], k: int, a: int,
             b: int, timed: tuple[LayerSampler, dict[str, float]] | None = None) -> list[Any]:
    feed = {name: x[a:b] for name, x in data.items()}
    if timed is None:
        if job.preprocess is not None:
            feed = job.preprocess.apply(feed)
        results = model.run(job.outputs, feed)
    else:  # a sampled chunk: its preprocessing and each node timed, by layer, into timed[1]
        sampler, into = timed
        if job.preprocess is not None:
            t = time.perf_counter()
            feed = job.preprocess.apply(feed)
            into["preprocess"] = into.get("preprocess", 0.0) + time.perf_counter() - t
        if hasattr(model, "graph"):
            with sampler.timing(into):
                results = model.run(job.outputs, feed)
        else:  # a pipeline: seconds by stage, the unit its users think in
            results = model.run(job.outputs, feed, stage_seconds=into)
    for name, arr, y in zip(job.outputs, outs, results):
        want = (b - a, *arr.shape[1:])
        if tuple(y.shape) != want or y.dtype != arr.dtype:
            raise ShapeError(f"output {name!r} of chunk {k} has shape {tuple(y.shape)} and "
                             f"dtype {y.dtype}; the target array expects {want} {arr.dtype}")
    return results
