"""Telemetry: what workers and clients tell the taskflow dashboard, over Dask's event log.

Messages travel as Dask events: ``Worker.log_event`` on workers (batched with the worker's other
messages, no extra round trip) and ``Client.log_event`` on clients. The scheduler keeps the last
``distributed.admin.low-level-log-length`` events per topic (``scheduler.get_events(topic)``) and
hands each one to every scheduler plugin's ``log_event(topic, msg)`` hook, which is where
:class:`taskflow.dashboard.state.TaskflowState` reads them. Every function here is a cheap no-op
(returns False) where there is nobody to tell: outside a Dask worker, or without a client.

Schema (version ``SCHEMA_VERSION``; every message is a msgpack-able dict with ``"v"``; readers
ignore keys they do not know, so fields may be added without a version bump):

``taskflow.chunk`` (from the worker, once per finished chunk; :func:`emit_chunk`)
    ``job`` str, ``chunk`` int or list[int] (block index), ``samples`` int (rows in the chunk),
    ``seconds`` float (compute time of the chunk), ``layer_seconds`` dict[str, float] (seconds per
    layer, keys as in Dask keys ``tf-<layer>``; absent when not measured; a streamed task also
    sends its phases ``read``, ``preprocess`` and ``write``, and its layers are estimates: see
    :class:`LayerSampler`), ``sampled`` int (chunks of this message timed node by node; absent
    when none), ``t`` float (worker wall clock, epoch seconds). The scheduler adds ``worker``
    (the worker's address).
``taskflow.job`` (from the client driving a job, whenever its counts change; :func:`emit_job`)
    ``job`` str, ``total`` int (chunks in the job), ``done``, ``failed``, ``quarantined``,
    ``in_flight`` int (chunks), ``started`` float (client epoch seconds), ``state`` str
    (``"running"``, ``"done"``, ``"failed"``, ``"interrupted"``, ``"abandoned"``...), ``t`` float
    (client clock when sent; ETA is computed from ``started`` and ``t``, so client-scheduler clock
    skew cancels), ``client`` str (the sending client's id), ``plugin`` str (the job's worker
    plugin, when it has one: the job lease of :mod:`taskflow.stream.lease` removes it if the
    client goes away; that plugin then sends ``state="abandoned"`` with a ``reason``),
    ``name`` str (the job's name, shown in place of its id; absent: the id is shown).
``taskflow.dask.threads`` (from each worker when its kernel threads are set; :func:`emit_threads`)
    The :func:`taskflow.dask.threads.kernel_thread_report` dict (``kernel_threads``, ``numba``,
    ``numba_pool``, ``threadpools``, ``env``, ``pid``) plus ``nthreads`` (worker threads) and
    ``t``. The scheduler adds ``worker``.

Examples
--------
>>> def run_chunk(job, i, x):                                    # doctest: +SKIP
...     start = time.perf_counter()
...     y = model.run(None, {"x": x})[0]
...     emit_chunk(job, i, len(x), time.perf_counter() - start, {"conv1": 0.01})
...     return y
>>> emit_job("job-1", total=100, done=3, failed=0, quarantined=0, in_flight=4,
...          started=t0, state="running")                       # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

SCHEMA_VERSION = 1
CHUNK_TOPIC = "taskflow.chunk"
JOB_TOPIC = "taskflow.job"
THREADS_TOPIC = "taskflow.dask.threads"
TOPICS = (CHUNK_TOPIC, JOB_TOPIC, THREADS_TOPIC)
#: One chunk in this many is timed node by node (:class:`LayerSampler`). Timing costs about
#: 1-2 us per node (two clock reads and a Python call): +2-3 % on a sampled chunk of the
#: digits CNN (8 nodes, ~1 ms a chunk), and up to ~30 % on a model of ~5 us nodes. One in 32
#: keeps the whole job's overhead under 1 % even then, and a 0.2 s task of small chunks still
#: holds a few samples.
LAYER_SAMPLE_EVERY = 32


def _current_worker(worker: Any = None) -> Any:
    if worker is not None:
        return worker
    if "distributed" not in sys.modules:  # distributed never imported: surely not on a worker
        return None
    from distributed import get_worker

    try:
        return get_worker()
    except ValueError:
        return None


def _current_client(client: Any = None) -> Any:
    if client is not None:
        return client
    if "distributed" not in sys.modules:
        return None
    from distributed.client import default_client

    try:
        return default_client()
    except ValueError:
        return None


def _chunk_id(chunk: Any) -> int | str | list[int]:
    if isinstance(chunk, Sequence) and not isinstance(chunk, str):
        return [int(c) for c in chunk]
    return chunk if isinstance(chunk, str) else int(chunk)


def emit_chunk(job: str, chunk: Any, samples: int, seconds: float,
               layer_seconds: Mapping[str, float] | None = None, worker: Any = None,
               sampled: int = 0) -> bool:
    """Report one finished chunk from inside the task that computed it.

    Parameters
    ----------
    job : str
        Job id, the same one the driving client passes to :func:`emit_job`.
    chunk : int or tuple of int
        The chunk's (block) index.
    samples : int
        Rows in the chunk.
    seconds : float
        Time spent computing it.
    layer_seconds : dict, optional
        Seconds per layer (``{"conv1": 0.012, ...}``) for the dashboard's time-share panel.
    worker : distributed.Worker, optional
        The worker to report through (default: the one running this task).
    sampled : int
        Chunks among these timed node by node (:class:`LayerSampler`).

    Returns
    -------
    bool
        Whether a message was sent (False outside a worker).
    """
    w = _current_worker(worker)
    if w is None:
        return False
    msg: dict[str, Any] = {"v": SCHEMA_VERSION, "job": str(job), "chunk": _chunk_id(chunk),
                           "samples": int(samples), "seconds": float(seconds), "t": time.time()}
    if layer_seconds:
        msg["layer_seconds"] = {str(k): float(v) for k, v in layer_seconds.items()}
    if sampled:
        msg["sampled"] = int(sampled)
    w.log_event(CHUNK_TOPIC, msg)
    return True


def emit_job(job: str, *, total: int, done: int, failed: int, quarantined: int, in_flight: int,
             started: float, state: str, client: Any = None, plugin: str | None = None,
             name: str | None = None) -> Any:
    """Report a job's progress from the client that drives it (one scheduler round trip).

    Counts are in chunks. ``started`` is ``time.time()`` when the job started. ``plugin`` names
    the job's worker plugin, for the scheduler's job lease; ``name`` is what the dashboard and
    ``/metrics`` call the job (``job`` stays its id). Returns False without a client, True once
    sent, or, for an asynchronous client, an awaitable to await.

    Examples
    --------
    >>> t0 = time.time()                                              # doctest: +SKIP
    >>> emit_job("3f2a9c0d1e4b", total=10, done=10, failed=0, quarantined=0, in_flight=0,
    ...          started=t0, state="done", name="squeezenet-20261205-2214")  # doctest: +SKIP
    True
    """
    c = _current_client(client)
    if c is None:
        return False
    msg = {"v": SCHEMA_VERSION, "job": str(job), "total": int(total), "done": int(done),
           "failed": int(failed), "quarantined": int(quarantined), "in_flight": int(in_flight),
           "started": float(started), "state": str(state), "t": time.time(),
           "client": str(getattr(c, "id", ""))}
    if plugin:
        msg["plugin"] = str(plugin)
    if name:
        msg["name"] = str(name)
    result = c.log_event(JOB_TOPIC, msg)
    return result if getattr(c, "asynchronous", False) else True


def emit_threads(report: Mapping[str, Any] | None, worker: Any = None) -> bool:
    """Report a worker's kernel-thread settings
    (:class:`~taskflow.dask.threads.ThreadBudgetPlugin`)."""
    w = _current_worker(worker)
    if w is None or report is None:
        return False
    msg = {"v": SCHEMA_VERSION, **_plain(dict(report)),
           "nthreads": getattr(w, "nthreads", None), "t": time.time()}
    w.log_event(THREADS_TOPIC, msg)
    return True


class LayerSampler:
    """Time one chunk in ``every`` node by node, and split the model time of the others.

    Only a sampled chunk runs under :func:`taskflow.executor.node_timer`, so the others pay
    nothing per node. A task's model time is then split over the layers in the shares its own
    sampled chunks measured, or, for a task without one, the shares of the last task that had
    one. The values sent are therefore *estimates* of seconds per layer that add up to the
    measured model time (not the sampled seconds alone), so they sit on one scale with the
    measured ``read`` and ``write`` phases. Until a task has ended with shares, each task's
    first chunk is sampled too, so no task sends its model time unsplit (several task threads
    may start together); keep one sampler per job and worker process.

    Parameters
    ----------
    labels : mapping
        ``id(node)`` to the node's name in Dask keys (``tf-<label>-…``); a node not in it is
        named by its ``name``, else its op.
    every : int
        Sample one chunk in this many.

    Examples
    --------
    >>> sampler = LayerSampler({}, every=4)
    >>> sampler.due({}), sampler.due({})  # no shares yet: a task's first chunk is sampled
    (True, True)
    >>> [sampler.due({"conv": 0.03}) for _ in range(5)]  # a task that has a sample
    [False, False, True, False, False]
    >>> sampler.split(2.0, {"conv": 0.03, "fc": 0.01})
    {'conv': 1.5, 'fc': 0.5}
    >>> sampler.split(1.0, {})             # no sampled chunk in this task: the last shares
    {'conv': 0.75, 'fc': 0.25}
    """

    def __init__(self, labels: Mapping[int, str], every: int = LAYER_SAMPLE_EVERY):
        self.labels, self.every = labels, max(1, int(every))
        self._count = itertools.count()  # next() is atomic: task threads may share a sampler
        self.shares: dict[str, float] = {}  # of the last task with a sampled chunk

    def due(self, task: Mapping[str, float]) -> bool:
        """Whether to time a task's next chunk node by node; ``task`` is what its sampled
        chunks measured so far."""
        return next(self._count) % self.every == 0 or not (self.shares or task)

    @contextmanager
    def timing(self, into: MutableMapping[str, float]) -> Iterator[None]:
        """Add the seconds of each node the block runs (in this thread) to ``into``, by layer."""
        from taskflow.executor import node_timer

        with node_timer() as times:
            yield
        for node, spent in times:
            layer = self.labels.get(id(node)) or node.name or node.op
            into[layer] = into.get(layer, 0.0) + spent

    def split(self, seconds: float, sampled: Mapping[str, float]) -> dict[str, float]:
        """``seconds`` of model time by layer, in the shares of ``sampled`` (this task's
        sampled seconds by layer) when it has any, else the last shares; ``{"model": seconds}``
        before any chunk was sampled."""
        total = sum(sampled.values())
        if total > 0:
            self.shares = {k: v / total for k, v in sampled.items()}
        shares = self.shares  # one read: another task thread may replace it meanwhile
        if not shares:
            return {"model": seconds}
        return {k: share * seconds for k, share in shares.items()}


def _plain(value: Any) -> Any:
    """Keep what msgpack takes (Worker.log_event refuses the rest); anything else as text."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
