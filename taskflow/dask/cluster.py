"""``Cluster``: an embedded Dask ``LocalCluster`` sized by the thread plan, or a connection to one.

The cluster is where taskflow's per-worker setup happens: kernel threads (``ThreadBudgetPlugin``)
on every worker, present and future, and the taskflow scheduler plugin once it exists.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Iterable
from typing import Any

import dask
from distributed import Client, LocalCluster, WorkerPlugin

from taskflow.dask.connect import CONNECT_TIMEOUT, client_security, connect, local_security
from taskflow.dask.memory import killed_worker_error, worker_deaths
from taskflow.dask.spawn import spawn_problem
from taskflow.dask.threads import (
    KERNEL_ENV_VARS,
    ThreadBudgetError,
    ThreadBudgetPlugin,
    ThreadPlan,
    detect_cores,
    make_plan,
    measure_plan,
)
from taskflow.errors import TaskflowError


def check_compression(codec: str | None) -> str | None:
    """``codec`` if Dask can compress with it in this process, else a ``TaskflowError``."""
    from distributed.protocol.compression import compressions

    if codec not in compressions:
        known = sorted(str(k) for k in compressions if isinstance(k, str) and k != "auto")
        raise TaskflowError(f"compression={codec!r} is not available here; Dask has {known} "
                            "(lz4 and zstd need `pip install lz4` / `pip install zstandard`)")
    return codec


class CompressionPlugin(WorkerPlugin):
    """Set Dask's ``distributed.comm.compression`` on every worker, present and future.

    Two peers compress only where both ask for the same codec, and Dask decides per
    connection when it opens; transfers between workers open theirs when data first moves.

    Examples
    --------
    >>> client.register_plugin(CompressionPlugin("lz4"))        # doctest: +SKIP
    """

    name = "taskflow-compression"

    def __init__(self, codec: str | None):
        self.codec = codec

    def setup(self, worker: Any, **kwargs: Any) -> None:
        dask.config.set({"distributed.comm.compression": check_compression(self.codec)})


class _HeartbeatNoise(logging.Filter):
    """Drops the traceback a worker logs when its heartbeat meets a scheduler already gone."""

    def filter(self, record: logging.LogRecord) -> bool:
        from distributed.comm import CommClosedError

        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, CommClosedError)
                    and str(record.msg).startswith("Failed to communicate with scheduler"))


class QuietShutdownPlugin(WorkerPlugin):
    """On the worker processes of a cluster taskflow started (and closes): no traceback when
    closing races a heartbeat.

    Closing a LocalCluster stops its scheduler, then its workers; a heartbeat in flight then
    fails, and ``distributed.worker`` logs the ``CommClosedError`` with its traceback to the
    stderr the worker shares with ``taskflow run`` (seen under load: a command that ends in one
    error line printed a traceback after it). Only for owned clusters: there the scheduler
    lives in this process, so its loss is the shutdown (or reported by the client in one line).

    Examples
    --------
    >>> client.register_plugin(QuietShutdownPlugin())           # doctest: +SKIP
    """

    name = "taskflow-quiet-shutdown"

    def setup(self, worker: Any, **kwargs: Any) -> None:
        logger = logging.getLogger("distributed.worker")
        if not any(isinstance(f, _HeartbeatNoise) for f in logger.filters):
            logger.addFilter(_HeartbeatNoise())


def _thread_report(dask_worker: Any) -> dict[str, Any] | None:
    plugin = dask_worker.plugins.get(ThreadBudgetPlugin.name)
    return None if plugin is None else plugin.report


class Cluster:
    """A Dask cluster ready for taskflow; a context manager.

    Without ``address``, starts a ``distributed.LocalCluster`` sized from the thread plan
    (:func:`taskflow.dask.threads.make_plan`: cgroup quota and CPU affinity respected) and owns it.
    With ``address``, connects a ``Client`` to a running scheduler and leaves that cluster
    running on close. Either way the plan's kernel threads are applied on every worker.

    Parameters
    ----------
    address : str, optional
        ``"tcp://host:port"`` of a running scheduler. The cluster is then not sized here:
        ``n_workers`` and ``threads_per_worker`` must be left out.
    n_workers, threads_per_worker, kernel_threads : int, optional
        Override the plan's counts; the others are filled in so that
        workers x threads x kernel threads fits the usable cores.
    processes : bool
        Workers in separate processes (default) or as threads of this process (whose kernel
        threads and ``OMP_NUM_THREADS``-style variables they then set, until closed).
    dashboard_address : str
        Where the Dask dashboard listens; ``127.0.0.1`` (this machine only) unless told otherwise.
    memory_limit : str or int
        Per-worker memory limit, passed to ``LocalCluster`` (``"auto"``: memory / workers).
    plugins : iterable
        More Dask plugins (worker, nanny or scheduler) to register.
    policies : list of str or taskflow.schedulers.Policy, optional
        Scheduling policies of the taskflow scheduler plugin (names as in
        :func:`taskflow.schedulers.policies_from_names`; ``[]``: Dask's own scheduling only).
        Default: Dask config ``taskflow.scheduler.policies``, or, on a running scheduler
        started with ``--preload taskflow.schedulers``, what it has.
    quiet : bool
        Do not print the one-line plan and dashboard link at start.
    threads : ThreadPlan, "static" or "auto"
        The plan: :func:`~taskflow.dask.threads.default_plan` (``"static"``), a given plan, or
        ``"auto"``: measured with :func:`~taskflow.dask.threads.measure_plan` on ``tune``.
    tune : (Model, sample), optional
        Model and first chunk to measure with when ``threads="auto"``.
    oversubscribe : bool
        Allow more threads than usable cores instead of raising ``ThreadBudgetError``.
    security : distributed.security.Security or bool, optional
        TLS between this client, the scheduler and the workers (Dask's ``Security``). With
        ``address``, the certificates to connect with (the scheduler must be ``tls://``).
        Without it, the embedded cluster listens on ``tls://`` with these certificates, or,
        given ``True``, with a fresh self-signed set (``Security.temporary()``) that only
        this process holds.
    connect_timeout : float
        Seconds to wait for the scheduler at ``address`` before a ``TaskflowError`` that
        says it could not be reached.
    compression : {"lz4", "zstd", "zlib"}, optional
        Compress what workers send each other (activations between pipeline stages and
        model-parallel blocks) with this codec, set on every worker (``CompressionPlugin``).
        Default: the workers' Dask config (``distributed.comm.compression``, off). Dask never
        compresses between peers on one IP, so an embedded cluster is unchanged by it; across
        hosts it pays on slow links only. ReLU activations went 1.4-1.9x smaller on the wire;
        a CNN pipeline ran 1.1-1.3x faster through a 100 Mbit/s link with lz4 or zstd, and
        mostly slower on loopback (``benchmarks/bench_comm.py``). The codec's package
        (``pip install "taskflow[compression]"``) must be on every worker.

    Raises
    ------
    taskflow.WorkerDiedError
        When workers die while taskflow sets them up (a memory limit too small for taskflow
        itself), and, on leaving a ``with`` block, for a ``KilledWorker`` raised inside it
        (``model.predict(x).compute()`` with chunks too big for the workers' memory): with the
        workers' memory limits, about what a chunk needs and the ``chunk_size`` that fits.

    Attributes
    ----------
    client : distributed.Client
    plan : ThreadPlan
    dashboard_link : str or None
        URL of the Dask dashboard (None if the scheduler serves none).

    Examples
    --------
    >>> import taskflow as tf                                   # doctest: +SKIP
    >>> with tf.Cluster() as cluster:                           # doctest: +SKIP
    ...     logits = model.predict(images).compute()
    taskflow: 2 workers x 1 thread x 1 kernel thread on 2 usable cores; dashboard http://127...
    >>> with tf.Cluster("tcp://10.0.0.5:8786", quiet=True) as cluster:   # doctest: +SKIP
    ...     cluster.client.ncores()
    """

    def __init__(self, address: str | None = None, *, n_workers: int | None = None,
                 threads_per_worker: int | None = None, kernel_threads: int | None = None,
                 processes: bool = True, dashboard_address: str = "127.0.0.1:0",
                 memory_limit: str | int | None = "auto", plugins: Iterable[Any] = (),
                 quiet: bool = False, threads: ThreadPlan | str = "static",
                 tune: tuple[Any, Any] | None = None, oversubscribe: bool = False,
                 policies: Iterable[Any] | None = None, security: Any = None,
                 connect_timeout: float = CONNECT_TIMEOUT, compression: str | None = None):
        self.address = address
        self.compression = None if compression is None else check_compression(compression)
        self._owned: LocalCluster | None = None
        self._processes = False  # an owned cluster of worker processes
        self.client: Client | None = None
        self._closed = False
        try:
            if address is None:
                self.plan = self._local_plan(n_workers, threads_per_worker, kernel_threads,
                                             threads, tune, oversubscribe)
                self._start_local(processes, dashboard_address, memory_limit,
                                  local_security(security, processes))
            else:
                if n_workers is not None or threads_per_worker is not None:
                    raise TaskflowError(
                        f"n_workers={n_workers!r}, threads_per_worker={threads_per_worker!r} "
                        f"given with address={address!r}; a running cluster is sized where it "
                        "was started (leave them out, or drop address to start one here)"
                    )
                self.client = connect(address, client_security(security), connect_timeout)
                with worker_deaths(self.client, "counting the cores of its workers"):
                    self.plan = self._remote_plan(kernel_threads, oversubscribe)
            # A worker too small for taskflow dies importing it here: say so, in one line.
            with worker_deaths(self.client, "registering its worker plugins"):
                self._register(plugins, policies)
            self.dashboard_link = self._find_dashboard_link()
        except BaseException:
            self.close()
            raise
        if not quiet:
            print(f"taskflow: {self.plan.split()} on {self.plan.cores} usable cores; "
                  f"dashboard {self.dashboard_link}", flush=True)

    # --- start ----------------------------------------------------------------------------------
    @staticmethod
    def _local_plan(n_workers, threads_per_worker, kernel_threads, threads, tune,
                    oversubscribe) -> ThreadPlan:
        if threads == "auto":
            if tune is None:
                raise TaskflowError("threads='auto' needs tune=(model, sample) to measure with; "
                                    "or use threads='static' or a ThreadPlan")
            base = measure_plan(*tune)
        elif threads == "static":
            base = None
        elif isinstance(threads, ThreadPlan):
            base = threads
        else:
            raise TaskflowError(f"threads={threads!r}; expected 'static', 'auto' or a ThreadPlan")
        if base is not None and (n_workers, threads_per_worker, kernel_threads) == (None,) * 3:
            return base
        if base is not None:
            n_workers = n_workers or base.workers
            threads_per_worker = threads_per_worker or base.threads_per_worker
            kernel_threads = kernel_threads or base.kernel_threads
        return make_plan(n_workers, threads_per_worker, kernel_threads,
                         oversubscribe=oversubscribe)

    def _start_local(self, processes: bool, dashboard_address: str, memory_limit: Any,
                     security: Any) -> None:
        plan = self.plan
        extra: dict[str, Any] = {}
        if security is not None:  # every listener on tls://, this machine only
            extra.update(protocol="tls://", security=security)
        if processes:  # (threads-only clusters talk inproc://, no host to bind)
            problem = spawn_problem()
            if problem is not None:
                raise TaskflowError(f"taskflow.Cluster() cannot start worker processes: "
                                    f"{problem}; or pass processes=False for workers as "
                                    "threads of this process")
            extra["host"] = "127.0.0.1"
            # Set before the worker interpreter imports anything: OpenBLAS/OpenMP read these
            # once at load, and Numba sizes its pool (the default of every thread) at import.
            k = str(plan.kernel_threads)
            extra["env"] = {**dict.fromkeys(KERNEL_ENV_VARS, k), "NUMBA_NUM_THREADS": k}
        self._processes = processes
        self._owned = LocalCluster(
            n_workers=plan.workers, threads_per_worker=plan.threads_per_worker,
            processes=processes, dashboard_address=dashboard_address,
            memory_limit=memory_limit, **extra,
        )
        self.client = Client(self._owned, security=security)

    def _remote_plan(self, kernel_threads: int | None, oversubscribe: bool) -> ThreadPlan:
        """Plan of a running cluster: its workers as they are, kernel threads fitted per host."""
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        if not info:
            raise TaskflowError(f"the scheduler at {self.address!r} has no workers; start some "
                                f"(dask worker {self.address}) and connect again")
        counts = self.client.run(detect_cores)
        hosts: dict[str, list[int]] = {}  # host -> [usable cores, worker threads]
        for addr, w in info.items():
            entry = hosts.setdefault(w["host"], [counts[addr].cores, 0])
            entry[1] += w["nthreads"]
        k = kernel_threads or min(max(1, cores // threads) for cores, threads in hosts.values())
        for host, (cores, threads) in hosts.items():
            if threads * k > cores and not oversubscribe:
                raise ThreadBudgetError(
                    f"host {host}: {threads} worker threads x {k} kernel threads = "
                    f"{threads * k} threads > {cores} usable cores; ask for fewer kernel "
                    "threads, or pass oversubscribe=True"
                )
        tpw = max(w["nthreads"] for w in info.values())
        cores = sum(c for c, _ in hosts.values())
        source = (f"{len(info)} workers on {len(hosts)} host(s) at {self.address}: "
                  + "; ".join(f"{h} {c} usable cores, {t} threads" for h, (c, t) in hosts.items()))
        return ThreadPlan(len(info), tpw, k, cores=cores, source=source,
                          oversubscribe=oversubscribe or len(info) * tpw * k > cores)

    def _register(self, plugins: Iterable[Any], policies: Iterable[Any] | None = None) -> None:
        if self.compression is not None:
            try:
                self.client.register_plugin(CompressionPlugin(self.compression),
                                            name=CompressionPlugin.name)
            except BaseException:  # a worker without the codec: never replay it to new ones
                self.client.unregister_worker_plugin(CompressionPlugin.name)
                raise
        try:
            self.client.register_plugin(ThreadBudgetPlugin(self.plan.kernel_threads),
                                        name=ThreadBudgetPlugin.name)
        except BaseException:
            # The scheduler keeps a plugin whose broadcast failed and replays it to every
            # restarted worker: one that killed its workers would kill each new one too.
            try:
                self.client.unregister_worker_plugin(ThreadBudgetPlugin.name)
            except Exception:  # noqa: BLE001 - not registered, or the scheduler is gone
                pass
            raise
        if self._owned is not None and self._processes:
            self.client.register_plugin(QuietShutdownPlugin(), name=QuietShutdownPlugin.name)
        schedulers = importlib.import_module("taskflow.schedulers")
        scheduler_plugin = getattr(schedulers, "TaskflowSchedulerPlugin", None)
        if scheduler_plugin is not None:  # given policies replace a preloaded plugin
            self._register_on_scheduler(
                lambda: scheduler_plugin() if policies is None else
                scheduler_plugin(list(policies), replace=True),
                "TaskflowSchedulerPlugin", "taskflow.schedulers")
        from taskflow.dashboard.extension import DashboardPlugin

        self._register_on_scheduler(DashboardPlugin, "the /taskflow dashboard page",
                                    "taskflow.dashboard.extension")
        for plugin in plugins:
            self.client.register_plugin(plugin)

    def _register_on_scheduler(self, make: Any, what: str, preload: str) -> None:
        """Register a scheduler plugin; on an attached cluster whose scheduler cannot import
        taskflow, warn how to preload it instead of failing."""
        try:
            self.client.register_plugin(make())
        except Exception as exc:  # a remote scheduler without taskflow installed
            if self._owned is not None:
                raise
            warnings.warn(f"could not add {what} on {self.address}: {exc!r}; start that "
                          f"scheduler with --preload {preload}", RuntimeWarning, stacklevel=4)

    # --- use ------------------------------------------------------------------------------------
    def _find_dashboard_link(self) -> str | None:
        if self._owned is not None:
            return self._owned.dashboard_link
        try:
            return self.client.dashboard_link if self.client is not None else None
        except (KeyError, AttributeError):
            return None

    def thread_reports(self) -> dict[str, dict[str, Any] | None]:
        """Per worker address, what :class:`ThreadBudgetPlugin` set there (see its ``report``).

        Returns
        -------
        dict of str to dict or None
            Per worker: ``kernel_threads``, Numba's threads, each BLAS/OpenMP pool's
            ``num_threads`` (threadpoolctl), the ``OMP_NUM_THREADS``-style variables and the
            process id; None where the plugin did not run.

        Examples
        --------
        >>> import taskflow as tf                                   # doctest: +SKIP
        >>> with tf.Cluster(quiet=True) as cluster:                 # doctest: +SKIP
        ...     for addr, report in cluster.thread_reports().items():
        ...         print(addr, report["kernel_threads"], report["numba"])
        tcp://127.0.0.1:40117 1 1
        tcp://127.0.0.1:43291 1 1
        """
        return self.client.run(_thread_report)

    def close(self) -> None:
        """Close the client and, if this object started it, the cluster. Safe to call twice.

        A cluster given by ``address`` keeps running; ``with tf.Cluster() as cluster:`` calls
        this on leaving the block.

        Examples
        --------
        >>> import taskflow as tf                                   # doctest: +SKIP
        >>> cluster = tf.Cluster(n_workers=1, quiet=True)           # doctest: +SKIP
        >>> logits = model.predict(images).compute()                # doctest: +SKIP
        >>> cluster.close()                                         # doctest: +SKIP
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self.client is not None:
                self.client.close()
        finally:
            if self._owned is not None:
                self._owned.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        # ``model.predict(x).compute()`` inside the block: a KilledWorker becomes a
        # WorkerDiedError naming the workers' memory limits and what a chunk needs.
        error = None
        if exc is not None and self.client is not None:
            try:
                error = killed_worker_error(self.client, exc)
            except Exception:  # noqa: BLE001 - explaining must never hide the first error
                error = None
        self.close()
        if error is not None:
            raise error from exc

    def __repr__(self) -> str:
        where = self.address or "local"
        return f"<taskflow.Cluster {where}: {self.plan if hasattr(self, 'plan') else '?'}>"
