"""``infer_zarr``: stream a Zarr dataset through a model on a Dask cluster, into a Zarr group.

docs/architecture.md, decision 9 (Streaming). A task covers whole output chunks; the *worker* reads
their input rows, applies the declared preprocessing, runs :meth:`Model.run` in-process and writes
each output region and then its done-marker (:mod:`taskflow.stream.manifest`,
:mod:`taskflow.stream.worker`), so no data passes through the client and no output chunk is written
by two tasks at once.

The client keeps at most ``window`` tasks in flight and submits the next as each finishes.
Tasks start as single chunks; once the first ones report how long a chunk takes, consecutive
chunks are grouped so a task lasts about ``TARGET_TASK_S`` (Dask's per-task cost, ~1-3 ms of
client and scheduler time on a small machine, then stops mattering), but never so many that the
last tasks leave a worker idle. A chunk that fails is retried on its own, then quarantined.
"""

from __future__ import annotations

import math
import numbers
import os
import time
import uuid
import warnings
from collections import deque
from typing import Any

import numpy as np

from taskflow.dashboard.telemetry import emit_job
from taskflow.dask.memory import chunk_killed_message, worker_deaths
from taskflow.errors import TaskflowError
from taskflow.stream import lease
from taskflow.stream import manifest as mf
from taskflow.stream.report import FailedChunk, JobSummary, Progress, job_name
from taskflow.stream.sources import (
    check_rows_independent,
    chunking_warnings,
    is_pipeline,
    location,
    model_name,
    output_specs,
    validate_feed,
    zeros_feed,
)
from taskflow.stream.stores import side_options
from taskflow.stream.worker import (
    JOB_PLUGIN_PREFIX,
    ChunkJob,
    JobPlugin,
    run_chunks,
    ship_model,
)

#: Tasks in flight per worker thread when ``window`` is not given. Queued tasks cost nothing on
#: workers (they hold no data until they start), and two per thread keeps every thread fed while
#: the next submission travels client -> scheduler -> worker.
WINDOW_PER_THREAD = 2
#: Seconds a task should last once chunks are grouped: long enough that Dask's per-task cost
#: is a few percent, short enough that progress, retries and the job's tail stay fine-grained.
TARGET_TASK_S = 0.2
#: Upper bound on chunks grouped into one task.
MAX_CHUNKS_PER_TASK = 256
EXIT_QUARANTINED = 3
#: ``taskflow run``'s exit code when chunks are neither done nor quarantined (a job was killed
#: and the rerun did not include --resume).
EXIT_INCOMPLETE = 4
#: Job progress events for the dashboard: each is a scheduler round trip, 2 a second is plenty.
JOB_EVENT_INTERVAL = 0.5


class SchedulerLostError(TaskflowError, ConnectionError):
    """The client lost its Dask scheduler mid-job (stopped, killed or restarted). Dask cancels
    every future with the connection; the chunks already done are kept, and ``resume=True``
    (``taskflow run --resume``) computes the rest once a scheduler is up."""


# --- client side ---------------------------------------------------------------------------------
def infer_zarr(model: Any, source: Any, target: str | os.PathLike, *,
               batch_size: int | None = None, window: int | None = None, resume: bool = False,
               overwrite: bool = False, rerun_failed: bool = False, preprocess: Any = None,
               outputs: list[str] | None = None, progress: Any = "bar", client: Any = None,
               retries: int = 2, chunks_per_task: int | None = None,
               priority: int = 0, postprocess: Any = None,
               storage_options: dict[str, Any] | None = None,
               source_options: dict[str, Any] | None = None,
               target_options: dict[str, Any] | None = None,
               name: str | None = None) -> JobSummary:
    """Run ``model`` over every sample of a Zarr ``source``; write its outputs to ``target``.

    Parameters
    ----------
    model : Model, Pipeline or path
        A :class:`taskflow.Model` or :class:`taskflow.Pipeline` (every stage runs on the
        worker that reads the chunk; intermediates stay in its memory), or a file to load: an
        ONNX model, or a pipeline file (``.yaml``, ``.yml``, ``.toml``).
    source : path, URL, or dict
        A Zarr (v2 or v3) array feeding a one-input model, a group with one array per model
        input (by name), or ``{input name: array location}``. Local paths or fsspec URLs
        (``file://``, ``s3://``...; see ``storage_options``). ``memory://`` only works with
        in-process workers.
    target : path or URL
        The Zarr group to create: one array per output, chunked along the batch like the tasks,
        and a ``.taskflow`` manifest; missing folders (or prefixes in a bucket) are created, a
        missing bucket is refused. An existing target is refused unless ``resume``,
        ``rerun_failed`` or ``overwrite``.
    batch_size : int, optional
        Rows per model call and per output chunk (default: the source's chunking along axis
        0); tasks cover whole output chunks, so no output chunk is written by two tasks.
    window : int, optional
        Tasks in flight at most (default ``WINDOW_PER_THREAD`` x worker threads). Memory does
        not grow with the dataset: the client holds ``window`` futures, and a running task at
        most a few blocks of rows (:data:`taskflow.stream.worker.BLOCK_BYTES`).
    resume : bool
        Compute only chunks not yet done (quarantined ones too with ``rerun_failed``); refused
        when the model, inputs, preprocessing, batch size or outputs differ from the manifest.
    rerun_failed : bool
        Recompute the chunks a previous run quarantined (alone: only those).
    preprocess : dict or callable, optional
        Declared steps (``{"scale": "uint8", "mean": [...], "std": [...], "layout":
        "NHWC->NCHW"}``), per input (``{name: steps or fn(array)}``), or ``fn(feed) -> feed``;
        see :mod:`taskflow.stream.preprocess`.
    outputs : list of str, optional
        Model outputs to write (default: all).
    progress : {"bar", "json", "none"} or callable
        On stderr a bar (percent, samples/s, ETA after the warm-up) where it is a terminal,
        else a plain line every 10 s and every 10 % (:class:`~taskflow.stream.report.Progress`);
        one JSON object per update on stdout; nothing; or ``fn(update: dict)``.
    client : distributed.Client, taskflow.Cluster, str, optional
        Where to run: a client, a cluster, a scheduler address, or None: the current client if
        there is one, else an embedded :class:`taskflow.Cluster` for the job's duration.
    retries : int
        Extra attempts for a failing chunk before it is quarantined and listed in the summary;
        none for a chunk whose workers died (``KilledWorker``: Dask has tried it on
        ``allowed-failures + 1`` workers already), quarantined with the workers' memory limit
        and about what a chunk needs.
    chunks_per_task : int, optional
        Output chunks per task (default: grouped adaptively to tasks of ``TARGET_TASK_S``;
        1: one task per chunk).
    postprocess : callable or Stage, optional
        Applied to each chunk's outputs on the worker before they are written:
        ``fn(*model outputs)`` returning an array (written as ``postprocess``), a tuple
        (``postprocess.0``, ...) or a dict (one array per key, e.g. ``{"labels": ...,
        "scores": ...}``). It must keep rows apart. With it, ``outputs`` picks among its
        results, and the model's own outputs are not written.
    priority : int
        Dask priority of every task the job submits: higher runs first when jobs share a
        cluster, as ``client.submit(priority=...)`` (default 0, Dask's own default).
    storage_options : dict, optional
        fsspec options for the URLs of the sources and the target, as in Dask's
        ``to_zarr(storage_options=...)``: e.g. ``{"key": ..., "secret": ..., "client_kwargs":
        {"endpoint_url": ...}}`` for ``s3://``. The client and every worker open the stores
        with them. They are never stored in the manifest nor shown in messages; they do travel
        to the workers inside the job. Ignored for local paths (``file://`` included).
    source_options, target_options : dict, optional
        Options for one side only, used there *instead of* ``storage_options`` (not merged
        with them), e.g. ``source_options={"anon": True}`` to read a public bucket and
        write with credentials.
    name : str, optional
        The job's name on the dashboard (``/taskflow``, ``/taskflow/json``, the ``name`` label
        of the ``taskflow_job_*`` metrics), in the progress bar and the summary. Default: the
        model's file stem or name and the start time, ``squeezenet-20261205-2214``
        (:func:`~taskflow.stream.report.job_name`).

    Returns
    -------
    JobSummary

    Warns
    -----
    UserWarning
        Once per source chunked against the batch: without ``batch_size``, a first chunk that
        holds every row while another axis is chunked, or whose rows pass
        :data:`taskflow.stream.sources.LARGE_TASK_BYTES` (one task would take them all); with
        it, a source chunked along a non-batch axis (each task's reads come in pieces).

    Examples
    --------
    >>> import taskflow as tf                                           # doctest: +SKIP
    >>> with tf.Cluster() as cluster:                                   # doctest: +SKIP
    ...     s = tf.infer_zarr("cnn.onnx", "images.zarr", "logits.zarr",
    ...                       preprocess={"scale": "uint8"}, client=cluster)
    >>> s.ok, s.samples, s.failed                                       # doctest: +SKIP
    (True, 10000, [])

    On an S3-compatible store (credentials from ``AWS_*`` variables, or ``key``/``secret``):

    >>> tf.infer_zarr("cnn.onnx", "s3://bucket/images.zarr",           # doctest: +SKIP
    ...               "s3://bucket/runs/logits.zarr", preprocess={"scale": "uint8"},
    ...               storage_options={"client_kwargs": {"endpoint_url": "http://minio:9000"}})
    """
    started = time.perf_counter()
    if overwrite and (resume or rerun_failed):
        raise TaskflowError("overwrite=True replaces the target; it cannot be combined with "
                            "resume or rerun_failed")
    if not isinstance(retries, int) or retries < 0:
        raise TaskflowError(f"retries={retries!r}; expected an integer >= 0")
    if not isinstance(priority, numbers.Integral) or isinstance(priority, bool):
        raise TaskflowError(f"priority={priority!r}; expected an integer (higher runs first, "
                            "as Dask's client.submit(priority=...); default 0)")
    priority = int(priority)
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise TaskflowError(f"name={name!r}; expected a non-empty string (default: the model's "
                            "name and the start time)")
    job_label = name or job_name(model)  # before load(): a path gives its file's stem
    for name, value in (("window", window), ("chunks_per_task", chunks_per_task)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise TaskflowError(f"{name}={value!r}; expected an integer >= 1")
    if not hasattr(model, "run"):
        from taskflow.pipeline.config import is_pipeline_file, load_pipeline

        if is_pipeline_file(model):
            model = load_pipeline(model)
        else:
            from taskflow.model import load

            model = load(model)
    dst = location(target)
    src_options, dst_options = side_options(storage_options, source_options, target_options)
    sources, pre, rows = validate_feed(model, source, preprocess, dst, src_options)
    if postprocess is not None:  # the model and its postprocessing: a two-stage pipeline
        from taskflow.pipeline import with_postprocess

        model = with_postprocess(model, postprocess, zeros_feed(sources, pre))
    out_specs = output_specs(model, sources, pre, outputs)
    first = next(iter(sources.values()))
    batch = batch_size or first.chunks[0] or 1
    if not isinstance(batch, int) or batch < 1:
        raise TaskflowError(f"batch_size={batch_size!r}; expected an integer >= 1")
    for message in chunking_warnings(sources, batch_size):
        warnings.warn(message, UserWarning, stacklevel=2)
    trace = check_rows_independent(model, sources, pre, batch)
    need = trace if is_pipeline(model) else (model, trace)  # what sizes a chunk's memory
    n_chunks = -(-rows // batch)
    identity = {
        "model": {"name": model_name(model), "sha256": mf.model_hash(model),
                  "device": model.device},
        "inputs": {name: s.identity() for name, s in sources.items()},
        "preprocess": None if pre is None else pre.describe(),
        "batch_size": batch,
        "outputs": {n: {"shape": list(s), "dtype": d} for n, (s, d) in out_specs.items()},
    }
    todo, failed_before, fresh, already = _plan_chunks(dst, identity, n_chunks, resume,
                                                       overwrite, rerun_failed, dst_options)
    report = Progress(progress, n_chunks, already, len(todo), name=job_label)
    if any(s.location.startswith("memory://") for s in sources.values()) or \
            dst.startswith("memory://"):
        _refuse_memory_urls(client)

    if not todo:  # nothing to compute: no cluster needed
        if fresh:
            mf.create_target(dst, out_specs, rows, batch, identity, overwrite=overwrite,
                             options=dst_options)
        return JobSummary(dst, n_chunks, 0, already, 0, time.perf_counter() - started,
                          [FailedChunk(k, k * batch, min(rows, (k + 1) * batch), msg)
                           for k, msg in sorted(failed_before.items())], name=job_label)
    cluster, owned = _connect(client)
    c = cluster.client if hasattr(cluster, "client") else cluster
    token = uuid.uuid4().hex[:12]
    plugin_name = JOB_PLUGIN_PREFIX + token
    registered, ended = False, False
    try:
        if fresh:
            mf.create_target(dst, out_specs, rows, batch, identity, overwrite=overwrite,
                             options=dst_options)
        job = ChunkJob(token, identity["model"]["sha256"],
                       {n: (s.location, s.path) for n, s in sources.items()}, dst,
                       list(out_specs), rows, batch, pre, src_options, dst_options)
        nthreads = sum(c.nthreads().values())
        window = window or max(2, WINDOW_PER_THREAD * nthreads)
        dashboard = getattr(cluster, "dashboard_link", None) or _dashboard(c)
        report.start({"target": dst, "chunks": n_chunks, "todo": len(todo), "rows": rows,
                      "batch_size": batch, "window": window, "workers": len(c.nthreads()),
                      "threads": nthreads, "dashboard": dashboard, "name": job_label})
        with worker_deaths(c, "sending the model to its workers"):  # too small for taskflow
            ship_model(c, model, job.model_hash)
        if lease.install(c):  # the lease first: a client killed from here on leaves nothing
            emit_job(token, total=len(todo), done=0, failed=0, quarantined=0, in_flight=0,
                     started=time.time(), state="starting", client=c, plugin=plugin_name,
                     name=job_label)
        registered = True  # before: a registration failing on some workers still leaves it
        with worker_deaths(c, "registering the job on its workers"):
            c.register_plugin(JobPlugin(job), name=plugin_name)
        ended = True  # from here _stream reports how the job ended, with its counts
        loop = _stream(c, job, todo, window, retries, chunks_per_task, nthreads, report,
                       priority, killed=lambda exc: chunk_killed_message(c, exc, *need, batch))
        failed = {k: v for k, v in failed_before.items() if k not in loop["done"]}
        failed.update(loop["failed"])
        unrecorded = _record(dst, failed, token, dst_options)
    except SchedulerLostError:
        registered = False  # no scheduler to unregister from: asking would only wait
        raise
    finally:
        report.close()
        if registered:
            try:
                c.unregister_worker_plugin(plugin_name)
                if not ended:  # an error before the job ran: its lease and dashboard row end
                    emit_job(token, total=len(todo), done=0, failed=0, quarantined=0,
                             in_flight=0, started=time.time(), state="interrupted", client=c,
                             plugin=plugin_name, name=job_label)
            except Exception:  # noqa: BLE001 - the cluster may be gone; nothing left to clean
                pass
        if owned:
            cluster.close()
    seconds = time.perf_counter() - started
    return JobSummary(
        target=dst, chunks_total=n_chunks, chunks_done=len(loop["done"]),
        chunks_skipped=already, samples=loop["samples"], seconds=seconds,
        failed=[FailedChunk(k, *job.rows_of(k), msg) for k, msg in sorted(failed.items())],
        dashboard_link=dashboard, window=window, max_in_flight=loop["max_in_flight"],
        retried=loop["retried"], task_seconds=loop["task_seconds"], tasks=loop["tasks"],
        fatal=loop.get("fatal"), unrecorded=unrecorded, name=job_label)


def _plan_chunks(dst: str, identity: dict, n: int, resume: bool, overwrite: bool,
                 rerun_failed: bool, options: dict[str, Any] | None = None
                 ) -> tuple[list[int], dict[int, str], bool, int]:
    """Chunks to compute, chunks quarantined before, whether the target is new, and how many
    chunks are done already (their markers, the only proof of a finished write, are set).

    A chunk is done (marker set), quarantined (listed in the manifest) or missing (neither: a
    killed job never finished it); ``rerun_failed`` alone recomputes the quarantined ones and
    leaves missing ones missing, which the summary then reports as not ok.
    """
    exists = mf.target_exists(dst, options)
    if not exists:
        if rerun_failed and not resume:
            raise mf.ResumeError(f"rerun_failed=True but {dst!r} does not exist: nothing failed "
                                 "there yet")
        return list(range(n)), {}, True, 0
    if overwrite:
        mf.check_replaceable(dst, options)
        return list(range(n)), {}, True, 0
    if not (resume or rerun_failed):
        raise mf.TargetExistsError(
            f"target {dst!r} exists; pass resume=True (--resume) to finish it, "
            "rerun_failed=True (--rerun-failed) to recompute its quarantined chunks, or "
            "overwrite=True (--overwrite) to replace it")
    meta = mf.read_manifest(dst, options)
    old = meta.get("identity", {})
    if rerun_failed and not resume and _contents(old) != _contents(identity):
        # The quarantine workflow: fix the inputs of the failed chunks, then rerun them. Only
        # those are recomputed; say so, since the done ones keep results of the earlier data.
        warnings.warn(f"the inputs of {dst!r} changed since it was written; rerun_failed "
                      "recomputes only the quarantined chunks, the others keep results of the "
                      "earlier data (overwrite=True recomputes everything)", stacklevel=3)
        old = {**old, "inputs": {k: {**v, "content": identity["inputs"].get(k, {})
                                     .get("content")} for k, v in old.get("inputs", {}).items()}}
    mf.check_identity(old, identity, dst)
    done = mf.done_chunks(dst, n, options)
    failed = {int(k): v for k, v in meta.get("failed", {}).items() if not done[int(k)]}
    todo = [k for k in np.flatnonzero(~done).tolist()
            if (resume and k not in failed) or (rerun_failed and k in failed)]
    return todo, failed, False, int(done.sum())


def _record(dst: str, failed: dict[int, str], token: str,
            options: dict[str, Any] | None = None) -> str | None:
    """Write the quarantine list into the manifest; where the target cannot take it (full,
    read-only), into a file beside this process instead. Returns that file's path, if used."""
    try:
        mf.record(dst, failed=failed, options=options)
        return None
    except OSError as exc:
        import json
        import tempfile

        path = os.path.join(tempfile.gettempdir(), f"taskflow-quarantine-{token}.json")
        with open(path, "w") as f:
            json.dump({"target": dst, "error": f"{type(exc).__name__}: {exc}",
                       "failed": {str(k): v for k, v in sorted(failed.items())}}, f, indent=1)
        return path


def _contents(identity: dict) -> dict:
    return {k: v.get("content") for k, v in identity.get("inputs", {}).items()}


def _stream(client: Any, job: ChunkJob, todo: list[int], window: int, retries: int,
            chunks_per_task: int | None, threads: int, report: Progress,
            priority: int = 0, killed: Any = None) -> dict[str, Any]:
    """Submit ``todo`` with at most ``window`` tasks in flight, each with Dask ``priority``;
    retry, then quarantine. ``killed(exc)`` explains a ``KilledWorker`` (the chunk's memory).

    A task of one chunk whose workers all died (``KilledWorker``) is quarantined without our
    ``retries``: Dask has already run it on ``allowed-failures + 1`` workers and each died, so
    every retry would kill as many again (and the tasks beside it on those workers) for a
    chunk that needs the same memory each time. A task of several chunks retries each alone,
    to find the chunk that kills."""
    from distributed import KilledWorker, as_completed

    queue, attempts, solo = deque(todo), dict.fromkeys(todo, 0), set()
    in_flight: dict[str, list[int]] = {}
    done: set[int] = set()
    failed: dict[int, str] = {}
    times = dict.fromkeys(("read", "compute", "write"), 0.0)
    out = {"done": done, "failed": failed, "samples": 0, "max_in_flight": 0, "retried": 0,
           "task_seconds": times, "tasks": 0}
    per_chunk_s: float | None = None
    pending = as_completed(loop=client.loop, with_results=True, raise_errors=False)

    def group() -> list[int]:
        if queue[0] in solo:
            return [queue.popleft()]
        size = chunks_per_task or 1
        if chunks_per_task is None and per_chunk_s is not None:
            size = min(math.ceil(TARGET_TASK_S / max(per_chunk_s, 1e-6)), MAX_CHUNKS_PER_TASK,
                       math.ceil(len(queue) / (2 * threads)))  # a fair tail for every thread
        ks = []
        while queue and len(ks) < size and queue[0] not in solo:
            ks.append(queue.popleft())
        return ks

    def fill() -> None:
        while queue and len(in_flight) < window:
            ks = group()
            fut = client.submit(run_chunks, job.token, ks, pure=False, priority=priority,
                                key=f"tf-stream-{job.token}-{ks[0]}-{out['tasks']}")
            out["tasks"] += 1
            in_flight[fut.key] = ks
            pending.add(fut)
        out["max_in_flight"] = max(out["max_in_flight"], len(in_flight))

    def retry_or_quarantine(k: int, error: str) -> None:
        attempts[k] += 1
        if attempts[k] <= retries:
            out["retried"] += 1
            solo.add(k)  # alone, so a chunk that kills its task cannot take others with it
            queue.appendleft(k)
        else:
            failed[k] = error

    started, last = time.time(), [0.0]

    def publish(state: str, force: bool = False) -> None:
        """Job progress for the /taskflow dashboard, at most every JOB_EVENT_INTERVAL."""
        if not force and time.time() - last[0] < JOB_EVENT_INTERVAL:
            return
        last[0] = time.time()
        # chunks that failed are retried; only those past their retries count (quarantined)
        emit_job(job.token, total=len(todo), done=len(done), failed=0,
                 quarantined=len(failed), in_flight=len(in_flight), started=started,
                 state=state, client=client, plugin=JOB_PLUGIN_PREFIX + job.token,
                 name=report.name)

    fill()
    try:
        for fut, result in pending:
            ks = in_flight.pop(fut.key)
            if fut.status == "finished" and (result.get("fatal") or out.get("fatal")):
                # the target cannot be written (full, read-only): submit nothing more and let
                # the tasks in flight finish, so every chunk they did write is counted; what
                # is not done stays missing for --resume, none quarantined for the disk's fault
                done.update(result["done"])
                out["samples"] += result["rows"]
                out.setdefault("fatal", result.get("fatal"))
                queue.clear()
            elif out.get("fatal"):
                pass  # a task lost after the stop: its chunks stay missing
            elif fut.status == "finished":
                done.update(result["done"])
                out["samples"] += result["rows"]
                for phase in times:
                    times[phase] += result[f"{phase}_s"]
                for k, error in result["failed"].items():
                    retry_or_quarantine(k, error)
                rate = result["seconds"] / len(ks)
                per_chunk_s = rate if per_chunk_s is None else 0.5 * (per_chunk_s + rate)
            elif fut.status == "cancelled":
                raise _cancelled(client, ks, result, len(done), len(todo))
            else:
                exc = result[1]
                error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, KilledWorker) and killed is not None:
                    error = f"{type(exc).__name__}: {killed(exc)}"
                    if len(ks) == 1:  # no retries: see the docstring
                        attempts[ks[0]] = retries
                for k in ks:
                    retry_or_quarantine(k, error)
            fut.release()
            fill()
            report.update(len(done), len(failed), out["samples"])
            publish("running")
        report.update(len(done), len(failed), out["samples"], force=True)
        publish("failed" if failed or out.get("fatal") else "done", force=True)
    except SchedulerLostError:
        raise  # nothing to cancel or tell: each call would wait out Dask's reconnect timeout
    except BaseException:
        client.cancel(list(pending.futures), force=True)
        try:  # an error or ^C: the job's lease and dashboard row end too
            publish("interrupted", force=True)
        except Exception:  # noqa: BLE001 - the scheduler may be what failed
            pass
        raise
    return out


def _cancelled(client: Any, ks: list[int], exc: Any, done: int, todo: int) -> TaskflowError:
    """The error for a task Dask cancelled: a lost scheduler (Dask cancels every future when
    the connection drops), or someone else's cancel or restart."""
    reason = getattr(exc, "reason", "unknown")
    if reason == "scheduler-connection-lost":
        address = getattr(getattr(client, "scheduler", None), "address", None) or "?"
        return SchedulerLostError(
            f"lost the Dask scheduler at {address!r} mid-job (it was stopped, killed or "
            f"restarted) after {done} of this run's {todo} chunks; the chunks done are kept: "
            "once a scheduler and workers are up, rerun with --resume (resume=True) to compute "
            "the rest")
    return TaskflowError(f"chunks {ks} were cancelled on the cluster (reason {reason!r}: "
                         "another client cancelled them, or the scheduler restarted); rerun "
                         "with --resume (resume=True) to compute the chunks not done")


def _connect(client: Any) -> tuple[Any, bool]:
    """``(Cluster or Client, owned)`` from the ``client`` argument of :func:`infer_zarr`."""
    from taskflow.dask.cluster import Cluster

    if isinstance(client, str):
        return Cluster(client, quiet=True), True
    if client is not None:
        return client, False
    from distributed import default_client

    try:
        return default_client(), False
    except ValueError:
        return Cluster(quiet=True), True


def _dashboard(client: Any) -> str | None:
    try:
        return client.dashboard_link
    except Exception:  # noqa: BLE001 - a scheduler without a dashboard
        return None


def _refuse_memory_urls(client: Any) -> None:
    pids = None
    if client is None:
        from distributed import default_client

        try:
            client = default_client()
        except ValueError:  # an embedded cluster would be started: worker processes
            pass
    if client is not None and not isinstance(client, str):
        c = client.client if hasattr(client, "client") else client
        pids = set(c.run(os.getpid).values())
    if pids != {os.getpid()}:
        raise TaskflowError("memory:// stores live inside one process and the workers run in "
                            "other processes, which cannot see them; use a local path or a "
                            "shared filesystem URL (file://, s3://, ...), or in-process workers "
                            "(taskflow.Cluster(processes=False))")
