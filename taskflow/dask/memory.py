"""Why Dask workers died: their memory limits, what taskflow and a chunk need, and the errors.

A worker past its memory limit is stopped by its nanny (at Dask's ``terminate`` fraction, 95%)
and restarted; Dask then says only ``KilledWorker ... all those workers died`` or, where a
broadcast was under way, ``CommClosedError``. The helpers here turn that into a
:class:`~taskflow.errors.WorkerDiedError` naming the workers, their memory limits, about how much
memory taskflow and a chunk need, and what to change:

- :func:`memory_need` estimates a chunk's memory from the batch trace
  (:mod:`taskflow.dask.trace`): the largest set of activations alive at once, per row, plus the
  weights and :data:`WORKER_BASE_BYTES`;
- :func:`killed_message` explains a ``KilledWorker`` (``infer_zarr`` quarantines the chunk with
  it; :class:`taskflow.Cluster` raises it for ``Model.predict`` computed inside its block);
- :func:`worker_deaths` guards the calls that set workers up (plugins, ``client.run``), where a
  worker too small for taskflow itself dies while importing it.

The nanny's own evidence, its ``worker-restart-memory`` event with the worker's RSS, is read
from the scheduler; without it (no nanny, the OS's OOM killer) the message says "most likely".
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from taskflow.errors import WorkerDiedError

#: Memory of a taskflow worker before its first chunk: the RSS of a fresh ``LocalCluster``
#: worker process (63 MiB bare) after importing taskflow (numpy, Numba, ONNX), loading the bundled
#: digits CNN, running it once at batch 1 (Numba kernels loaded from the on-disk cache: +73 MiB)
#: and importing the streaming side (Zarr): 224 MiB, measured with ``psutil`` via ``client.run``
#: (Python 3.11, numpy 2.4, distributed 2026.8, x86-64 Linux). Larger models add their weights.
WORKER_BASE_BYTES = 224 << 20
#: The smallest memory limit the messages suggest for a worker: the base and room for chunks.
MIN_WORKER_MEMORY = 512 << 20
#: A chunk's live activations are not all it holds: kernels' scratch buffers (im2col, NHWC
#: copies) and the I/O blocks of its task come on top, so a chunk size is suggested that needs
#: at most 1/HEADROOM of the memory left after the base and the weights.
HEADROOM = 2
#: Seconds to wait for a nanny's memory event to reach the scheduler after a worker died.
EVENT_WAIT_S = 2.0
MEMORY_EVENT = "worker-restart-memory"


def _fmt(n: float) -> str:
    from dask.utils import format_bytes

    return format_bytes(int(n))


def _terminate_fraction() -> float:
    import dask

    value = dask.config.get("distributed.worker.memory.terminate", 0.95)
    return float(value) if value else 1.0


# --- what a chunk needs --------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryNeed:
    """About how much memory a worker needs for a model: ``per_row`` bytes of activations (the
    largest set alive at once, per batch row) and ``weights`` bytes, on top of
    :data:`WORKER_BASE_BYTES`.

    Examples
    --------
    >>> need = MemoryNeed(per_row=1 << 20, weights=0)
    >>> need.chunk(64) == WORKER_BASE_BYTES + (64 << 20)
    True
    >>> need.rows_that_fit(1 << 30)
    256
    """

    per_row: int
    weights: int

    def chunk(self, rows: int) -> int:
        """Bytes a worker needs to run a chunk of ``rows`` rows (the weights held twice: as
        shipped and as built)."""
        return WORKER_BASE_BYTES + 2 * self.weights + rows * self.per_row

    def rows_that_fit(self, limit: int) -> int:
        """A chunk size (a power of two) that fits a worker of ``limit`` bytes with
        :data:`HEADROOM`; 0 if not even one row does."""
        left = limit * _terminate_fraction() - WORKER_BASE_BYTES - 2 * self.weights
        rows = int(left // (HEADROOM * max(1, self.per_row)))
        return 0 if rows < 1 else 1 << (rows.bit_length() - 1)


def memory_need(model: Any, trace: Any) -> MemoryNeed:
    """Estimate a worker's memory for ``model`` from its batch ``trace``
    (:func:`taskflow.dask.lower.get_trace`): walk the execution plan, adding each value's bytes
    per row when it is made and dropping them when the plan frees it; the peak is ``per_row``.
    """
    grow = {}
    for name, (s2, s3) in trace.shapes.items():
        itemsize = np.dtype(trace.dtypes.get(name, np.float32)).itemsize
        grow[name] = max(0, (math.prod(s3) - math.prod(s2)) * itemsize)
    live = sum(grow.get(n, 0) for n in trace.batch_inputs)
    peak = live
    for step in model._plan.steps:
        live += sum(grow.get(o, 0) for o in step.node.outputs if o)
        peak = max(peak, live)
        live -= sum(grow.get(r, 0) for r in step.release)
    weights = sum(np.asarray(w).nbytes for w in model.graph.initializers.values())
    return MemoryNeed(int(peak), int(weights))


#: ``Model.predict`` graphs recently built: model -> (trace, rows of its largest chunk), so that
#: a ``KilledWorker`` on one of its ``tf-<node label>-...`` tasks can be explained.
_PREDICTED: weakref.WeakKeyDictionary[Any, tuple[Any, int]] = weakref.WeakKeyDictionary()


def note_predict(model: Any, trace: Any, rows: int) -> None:
    """Remember ``model``'s trace and chunk rows for :func:`killed_worker_error`."""
    try:
        _PREDICTED.pop(model, None)  # the latest last
        _PREDICTED[model] = (trace, int(rows))
    except (TypeError, ValueError):  # no weak reference, or unknown chunks (nan): skip
        pass


def _predict_need(key: Any) -> tuple[MemoryNeed, int] | None:
    """The memory of the ``Model.predict`` graph task ``key`` belongs to: the model with a node
    labelled as in its ``tf-<label>-<token>`` name, else, for a key Dask renamed when it fused
    the graph (``ones_like-tf-...-finalize-...``), the latest model predicted."""
    name = key[0] if isinstance(key, tuple) else str(key)
    if "tf-" not in name:
        return None
    label = name.partition("tf-")[2].rpartition("-")[0]
    found = list(_PREDICTED.items())
    for model, (trace, rows) in found:
        if any(info.label == label for info in trace.nodes):
            return memory_need(model, trace), rows
    if not found:
        return None
    model, (trace, rows) = found[-1]
    return memory_need(model, trace), rows


# --- what the cluster says -----------------------------------------------------------------------
def worker_limits(client: Any) -> dict[str, int | None]:
    """Worker address -> memory limit in bytes (None: no limit), from the scheduler."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {addr: (w.get("memory_limit") or None) for addr, w in workers.items()}


def memory_kills(client: Any) -> list[tuple[float, dict[str, Any]]]:
    """The nannies' memory restarts the scheduler has logged: ``(time, {worker, pid, rss})``."""
    try:
        return list(client.get_events(MEMORY_EVENT))
    except Exception:  # noqa: BLE001 - an old or locked-down scheduler: no evidence, not an error
        return []


def _limits_text(limits: dict[str, int | None]) -> str:
    """``memory limit 1.00 GiB on each of 2 workers``, or each worker's where they differ."""
    values = set(limits.values())
    if len(values) == 1:
        v = values.pop()
        shown = "no memory limit" if v is None else f"memory limit {_fmt(v)}"
        return f"{shown} on each of {len(limits)} worker(s)"
    return "memory limits " + ", ".join(
        f"{a} {'none' if v is None else _fmt(v)}" for a, v in sorted(limits.items())
    )


def killed_message(
    client: Any,
    exc: Any,
    what: str,
    rows: int | None = None,
    need: MemoryNeed | None = None,
    option: str = "batch_size",
    flag: str | None = "--batch-size",
) -> str:
    """One line explaining a ``distributed.KilledWorker``: the workers that ran ``what`` died,
    out of memory (the nanny said so) or most likely so; the workers' memory limits; about how
    much a chunk of ``rows`` needs (from ``need``) and the ``option`` value that would fit.

    Examples
    --------
    >>> killed_message(client, exc, "its task", rows=4096, need=memory_need(model, trace))
    ... # doctest: +SKIP
    'the 1 worker(s) that ran its task died (the last, tcp://10.0.0.7:40331, stopped by its...'
    """
    worker = getattr(exc, "last_worker", None)
    last = worker if isinstance(worker, str) else getattr(worker, "address", None)
    last_limit = getattr(worker, "memory_limit", None) or None
    tried = getattr(exc, "allowed_failures", None)
    try:
        limits = worker_limits(client)
    except Exception:  # noqa: BLE001 - the scheduler is gone too: say what is known
        limits = {}
    if not limits and last is not None:
        limits = {last: last_limit}
    kill = next((m for _, m in reversed(memory_kills(client)) if m.get("worker") == last), None)
    who = "its worker" if tried is None else f"the {tried + 1} worker(s) that ran {what}"
    if kill is not None and last_limit:
        cause = (
            f"{who} died (the last, {last}, stopped by its nanny at {_fmt(kill['rss'])}, "
            f"past {_terminate_fraction():.0%} of its {_fmt(last_limit)} memory limit): "
            "out of memory"
        )
    else:
        cause = f"{who} died (the last was {last}): most likely out of memory"
    parts = [cause, _limits_text(limits) if limits else "no workers are left"]
    if need is not None and rows:
        held = f"{_fmt(WORKER_BASE_BYTES)} for taskflow"
        if 2 * need.weights >= 1 << 20:
            held += f" and {_fmt(2 * need.weights)} for the weights"
        parts.append(
            f"a chunk of {rows} rows needs about {_fmt(need.chunk(rows))} "
            f"({_fmt(need.per_row)} of activations a row, {held})"
        )
        limit = last_limit or min((v for v in limits.values() if v), default=None)
        fit = min(need.rows_that_fit(limit), max(1, rows // 2)) if limit else 0
        if limit is None:
            parts.append(f"give the workers a memory limit, or use a smaller {option}")
        elif fit:
            how = f"{option}={fit}" + (f" ({flag} {fit})" if flag else "")
            parts.append(f"{how} would fit, or give the workers more memory")
        else:
            parts.append(
                "not even one row fits: give each worker at least "
                f"{_fmt(max(MIN_WORKER_MEMORY, 2 * need.chunk(1)))}"
            )
    else:
        parts.append(f"use fewer rows per chunk ({option}), or give the workers more memory")
    return "; ".join(parts)


def chunk_killed_message(client: Any, exc: Any, model: Any, trace: Any, rows: int) -> str:
    """:func:`killed_message` for a streamed chunk of ``rows`` rows (``infer_zarr``)."""
    try:
        need = memory_need(model, trace)
    except Exception:  # noqa: BLE001 - an estimate that fails leaves the rest of the message
        need = None
    return killed_message(client, exc, "its task", rows, need)


def killed_worker_error(client: Any, exc: BaseException) -> WorkerDiedError | None:
    """A :class:`WorkerDiedError` explaining ``exc`` if it is a ``KilledWorker`` (for a
    ``Model.predict`` task, with its chunk's memory when the graph was built here), else None.
    """
    from distributed import KilledWorker

    if not isinstance(exc, KilledWorker):
        return None
    found = _predict_need(exc.task)
    need, rows = found if found else (None, None)
    what = f"Model.predict's task {exc.task!r}" if found else f"task {exc.task!r}"
    return WorkerDiedError(
        killed_message(client, exc, what, rows, need, option="chunk_size", flag=None)
    )


# --- workers dying while taskflow sets them up ---------------------------------------------------
@contextmanager
def worker_deaths(client: Any, doing: str) -> Iterator[None]:
    """Turn a worker dying inside the block (a ``CommClosedError`` from a broadcast to the
    workers: a plugin, ``client.run``) into one :class:`WorkerDiedError` line naming the
    workers, their memory limits and what taskflow needs; ``doing`` says what was under way.
    Other errors, and comm errors where no worker died, pass unchanged.
    """
    try:
        limits = worker_limits(client)
        seen = {(t, m.get("pid")) for t, m in memory_kills(client)}
    except Exception:  # noqa: BLE001 - cannot watch: let the block fail as it would
        limits = None
    if limits is None:
        yield
        return
    try:
        yield
    except OSError as exc:  # distributed's CommClosedError is an OSError
        error = _setup_death(client, limits, seen, doing)
        if error is None:
            raise
        _remove_setup_plugins(client)
        raise error from exc


#: Worker plugins taskflow's setup registers that every (re)started worker unpickles, which
#: imports taskflow: on workers too small for it, each restart would die again. (Jobs' own
#: ``taskflow-job-*`` plugins are their clients' to remove.)
SETUP_PLUGINS = ("taskflow-threads", "taskflow-model-")


def _remove_setup_plugins(client: Any) -> None:
    """Unregister taskflow's setup plugins after workers died taking them, so the restarted
    workers stay up; a broadcast that fails halfway can leave one registered, so look again."""
    for _ in range(3):
        try:
            names = client.run_on_scheduler(
                lambda dask_scheduler: list(dask_scheduler.worker_plugins))
        except Exception:  # noqa: BLE001 - the scheduler is gone: nothing left to clean
            return
        ours = [n for n in names if n.startswith(SETUP_PLUGINS)]
        if not ours:
            return
        for name in ours:
            try:
                client.unregister_worker_plugin(name)
            except Exception:  # noqa: BLE001 - removed meanwhile, or a worker left mid-way
                pass


def _setup_death(
    client: Any, limits: dict[str, int | None], seen: set, doing: str
) -> WorkerDiedError | None:
    """The error for workers of ``limits`` that died inside a :func:`worker_deaths` block, or
    None if none did. A nanny's memory event counts when it is new, or when its worker is gone
    now: a worker can be stopped just after a call it took part in returned."""
    deadline = time.monotonic() + EVENT_WAIT_S
    while True:
        try:
            now = set(worker_limits(client))
        except Exception:  # noqa: BLE001 - the scheduler went too: not a worker's death
            return None
        gone = {a for a in limits if a not in now}
        kills = {
            m.get("worker"): m
            for t, m in memory_kills(client)
            if m.get("worker") in limits and ((t, m.get("pid")) not in seen or m["worker"] in gone)
        }
        if kills or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    dead = sorted(set(kills) | gone)
    if not dead:
        return None

    def told(a: str) -> str:
        limit = f"{_fmt(limits[a])} memory limit" if limits[a] else "no memory limit"
        if a in kills:
            return (
                f"{a} stopped by its nanny at {_fmt(kills[a]['rss'])}, past "
                f"{_terminate_fraction():.0%} of its {limit}"
            )
        return f"{a} left the cluster ({limit})"

    small = all(a in kills or (limits[a] or 1 << 62) < MIN_WORKER_MEMORY for a in dead)
    why = (
        f"{'out of memory' if kills else 'most likely out of memory'}: a taskflow worker needs "
        f"about {_fmt(WORKER_BASE_BYTES)} once it has imported taskflow (numpy, Numba, ONNX, "
        "Zarr) and loaded a model, before its first chunk; give each worker at least "
        f"{_fmt(MIN_WORKER_MEMORY)} (taskflow run --memory-limit, "
        "taskflow.Cluster(memory_limit=...), or dask worker --memory-limit for a running "
        "cluster)"
        if small
        else "see their logs for why (a memory limit, the OS's OOM killer, a crash)"
    )
    return WorkerDiedError(
        f"worker(s) died while taskflow was {doing}: {'; '.join(map(told, dead))}; {why}"
    )
