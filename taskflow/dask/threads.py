"""How many threads run where: worker processes x worker threads x kernel threads.

The invariant (docs/architecture.md, decision 5 "Threads"): ``workers * threads_per_worker *
kernel_threads`` never exceeds the cores this process may use, i.e. the CPU affinity mask capped by
the cgroup CPU quota. Oversubscription does not fail, it just makes every kernel slower (threads
wait for each other at barriers while the OS time-slices them), so it is refused unless asked for.

Kernel threads are set three ways, because no single knob reaches every library:
Numba (``numba.set_num_threads``, thread-local; new threads start at the pool size, so workers cap
the pool with ``NUMBA_NUM_THREADS`` before Numba is imported), BLAS/OpenMP via threadpoolctl, and
the ``OMP/MKL/OPENBLAS_NUM_THREADS`` variables that child processes read when they start.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin

from taskflow.errors import ThreadBudgetError

#: Variables that BLAS/OpenMP runtimes read once, when a (child) process loads them.
KERNEL_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: Up to this many cores the static plan uses one single-threaded worker per core; beyond it,
#: workers get more kernel threads instead, so the number of weight copies (one per worker
#: process) and the number of chunks needed to keep every core busy stay bounded.
MAX_STATIC_WORKERS = 4


@dataclass(frozen=True)
class CoreCount:
    """Usable cores and where the number came from."""

    cores: int
    affinity: int
    quota: float | None = None  # cgroup CPU quota in CPUs; None: no quota
    quota_file: str | None = None

    def describe(self) -> str:
        text = f"{self.cores} usable core{'s' * (self.cores != 1)}: {self.affinity} CPUs in " \
               "the affinity mask (sched_getaffinity)"
        if self.quota is None:
            return text + ", no cgroup CPU quota"
        return text + f", cgroup CPU quota {self.quota:g} CPUs ({self.quota_file})"


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _cgroup_dirs(base: Path, proc_cgroup: str | Path, v2: bool) -> list[Path]:
    """``base`` and each folder down to this process's own cgroup (nested limits all apply)."""
    own = "/"
    for line in _read(Path(proc_cgroup)).splitlines():
        ident, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if (v2 and ident == "0" and not controllers) or \
                (not v2 and "cpu" in controllers.split(",")):
            own = path
    dirs = [base]
    for part in [p for p in own.split("/") if p]:
        dirs.append(dirs[-1] / part)
    return dirs


def cgroup_cpu_quota(root: str | Path = "/sys/fs/cgroup",
                     proc_cgroup: str | Path = "/proc/self/cgroup") -> tuple[float, str] | None:
    """The tightest cgroup CPU quota in CPUs and the file it came from, or None if there is none.

    Reads cgroup v2 ``cpu.max`` (``"max 100000"`` or ``"150000 100000"``) and v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota ``-1``: none) under ``root``, in the
    root folder and along this process's own cgroup path; unreadable files are skipped.
    """
    root = Path(root)
    found: list[tuple[float, str]] = []
    files = [(d / "cpu.max", None) for d in _cgroup_dirs(root, proc_cgroup, v2=True)]
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu", "."):
        files += [(d / "cpu.cfs_quota_us", d / "cpu.cfs_period_us")
                  for d in _cgroup_dirs(root / mount, proc_cgroup, v2=False)]
    for quota_file, period_file in files:
        fields = _read(quota_file).split() + ([_read(period_file)] if period_file else [])
        try:
            quota, period = int(fields[0]), int(fields[1])
        except (ValueError, IndexError):  # missing, "max" (v2) or garbage
            continue
        if quota > 0 and period > 0:  # v1 writes -1 for "no quota"
            found.append((quota / period, str(quota_file)))
    return min(found) if found else None


def detect_cores(root: str | Path = "/sys/fs/cgroup",
                 proc_cgroup: str | Path = "/proc/self/cgroup",
                 affinity: int | None = None) -> CoreCount:
    """Cores this process may use: the affinity mask capped by the cgroup quota, at least 1.

    A fractional quota is rounded *down* (Dask rounds up): 2 busy threads under a 1.5-CPU quota
    are throttled every period, which is the oversubscription the plan exists to avoid.
    """
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 1
    quota = cgroup_cpu_quota(root, proc_cgroup)
    cores = affinity if quota is None else min(affinity, math.floor(quota[0]))
    return CoreCount(max(1, cores), affinity, *(quota or (None, None)))


def usable_cores() -> int:
    """Number of cores this process may use (see :func:`detect_cores`)."""
    return detect_cores().cores


@dataclass(frozen=True)
class ThreadPlan:
    """Worker processes x threads per worker x kernel threads per worker thread.

    ``cores=None`` detects this machine's usable cores. A plan whose product exceeds ``cores``
    raises :class:`ThreadBudgetError` unless ``oversubscribe=True``.

    Examples
    --------
    >>> str(ThreadPlan(2, 1, 1, cores=2))
    '2 workers x 1 thread x 1 kernel thread = 2 of 2 usable cores'
    >>> ThreadPlan(2, 1, 2, cores=2)                    # doctest: +SKIP
    ThreadBudgetError: 2 workers x 1 thread x 2 kernel threads = 4 threads > 2 usable cores ...
    """

    workers: int
    threads_per_worker: int
    kernel_threads: int
    cores: int | None = None
    source: str = field(default="", compare=False, repr=False)
    oversubscribe: bool = field(default=False, compare=False, repr=False)
    #: ``((workers, kernel_threads, samples_per_second), ...)`` when chosen by measure_plan.
    measured: tuple = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("workers", "threads_per_worker", "kernel_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ThreadBudgetError(f"{name}={value!r}; expected an integer >= 1")
        if self.cores is None:
            count = detect_cores()
            object.__setattr__(self, "cores", count.cores)
            object.__setattr__(self, "source", self.source or count.describe())
        if self.total_threads > self.cores and not self.oversubscribe:
            raise ThreadBudgetError(
                f"{self.split()} = {self.total_threads} threads > {self.cores} usable cores "
                f"({self.source or 'as given'}); ask for fewer workers, threads or kernel "
                "threads, or pass oversubscribe=True"
            )

    @property
    def total_threads(self) -> int:
        return self.workers * self.threads_per_worker * self.kernel_threads

    def split(self) -> str:
        def n(k: int, what: str) -> str:
            return f"{k} {what}{'s' * (k != 1)}"
        return (f"{n(self.workers, 'worker')} x {n(self.threads_per_worker, 'thread')} x "
                f"{n(self.kernel_threads, 'kernel thread')}")

    def __str__(self) -> str:
        return f"{self.split()} = {self.total_threads} of {self.cores} usable cores"


def default_plan(cores: int | CoreCount | None = None) -> ThreadPlan:
    """The static split for ``cores`` usable cores (None: detect them).

    Up to ``MAX_STATIC_WORKERS`` cores: one process per core, one thread, one kernel thread
    (on 2 cores: 2 x 1 x 1). Batch inference is data parallel over chunks, and whole chunks in
    separate processes scale better than threads inside one kernel: no GIL shared with the Python
    glue between kernels, no fork/join barrier per layer, and small per-chunk GEMMs and convs
    gain little from a second thread. One thread per worker also keeps Numba's threading layer
    from being entered concurrently (the ``workqueue`` layer aborts on that). Beyond that, kernel
    threads grow instead of workers (8 cores: 4 x 1 x 2). :func:`measure_plan` checks the choice.
    """
    n, source = _count(cores)
    kernel = math.ceil(n / MAX_STATIC_WORKERS)
    return ThreadPlan(max(1, n // kernel), 1, kernel, cores=n, source=source)


def _count(cores: int | CoreCount | None) -> tuple[int, str]:
    count = detect_cores() if cores is None else cores
    if isinstance(count, CoreCount):
        return count.cores, count.describe()
    return int(count), "as given"


def make_plan(workers: int | None = None, threads_per_worker: int | None = None,
              kernel_threads: int | None = None, *, cores: int | CoreCount | None = None,
              oversubscribe: bool = False) -> ThreadPlan:
    """A plan with the given counts; the missing ones are filled from :func:`default_plan`."""
    (n, source), tpw = _count(cores), threads_per_worker or 1
    if workers is None and kernel_threads is None:
        base = default_plan(max(1, n // tpw))
        workers, kernel_threads = base.workers, base.kernel_threads
    elif kernel_threads is None:
        kernel_threads = max(1, n // (workers * tpw))
    elif workers is None:
        workers = max(1, n // (tpw * kernel_threads))
    return ThreadPlan(workers, tpw, kernel_threads, cores=n, source=source,
                      oversubscribe=oversubscribe)


# --- applying kernel threads ---------------------------------------------------------------------
_LIMITER: Any = None  # the threadpoolctl limiter in force (kept so the limits can be restored)
_KERNEL_THREADS: int | None = None
_ORIGINAL_ENV: dict[str, str | None] = {}
_ORIGINAL_BLAS: list[int] = []  # BLAS thread counts before the first apply_kernel_threads


def apply_kernel_threads(n: int, *, cap_numba_pool: bool = False) -> dict[str, Any]:
    """Limit Numba, BLAS and OpenMP in this process (and its future children) to ``n`` threads.

    ``cap_numba_pool`` sets ``NUMBA_NUM_THREADS=n`` if Numba is not imported yet, so every thread
    (not only this one) defaults to ``n``; workers do this, the client process does not.
    Returns :func:`kernel_thread_report`.
    """
    global _LIMITER, _KERNEL_THREADS
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ThreadBudgetError(f"kernel_threads={n!r}; expected an integer >= 1")
    env = dict.fromkeys(KERNEL_ENV_VARS, str(n))
    if cap_numba_pool and "numba" not in sys.modules:
        env["NUMBA_NUM_THREADS"] = str(n)
    for var, value in env.items():
        _ORIGINAL_ENV.setdefault(var, os.environ.get(var))
        os.environ[var] = value
    import numba
    from threadpoolctl import threadpool_limits

    sync_numba_env()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    from taskflow.ops.cpu.common import blas_threads, set_blas_threads

    if _LIMITER is not None:  # so restoring goes back to the limits before the first call
        _LIMITER.restore_original_limits()
    else:
        _ORIGINAL_BLAS[:] = blas_threads()
    _LIMITER = threadpool_limits(limits=n)
    # threadpoolctl changes OpenBLAS only from the first thread that limited it (a Dask
    # worker's plugin runs on its event loop, an in-process worker beside the main thread)
    set_blas_threads(n)
    _KERNEL_THREADS = n
    return kernel_thread_report()


def sync_numba_env() -> None:
    """Keep ``NUMBA_NUM_THREADS`` equal to the pool size Numba started with.

    A spawned worker imports its parent's ``__main__`` before the nanny applies the cluster's
    env; when that imports taskflow, Numba sizes its pool from the core count then, and the
    ``NUMBA_NUM_THREADS`` set afterwards makes Numba's next compile raise "Cannot set
    NUMBA_NUM_THREADS to a different value once the threads have been launched". Kernel threads
    are limited with ``numba.set_num_threads`` anyway, so the variable only has to agree.
    """
    numba = sys.modules.get("numba")
    if numba is None:
        return
    n = str(numba.config.NUMBA_NUM_THREADS)
    if os.environ.get("NUMBA_NUM_THREADS") != n:
        _ORIGINAL_ENV.setdefault("NUMBA_NUM_THREADS", os.environ.get("NUMBA_NUM_THREADS"))
        os.environ["NUMBA_NUM_THREADS"] = n


def reset_kernel_threads() -> None:
    """Undo :func:`apply_kernel_threads`: limits and env vars as before its first call."""
    global _LIMITER, _KERNEL_THREADS
    if _LIMITER is not None:
        _LIMITER.restore_original_limits()
        from taskflow.ops.cpu.common import set_blas_threads

        set_blas_threads(_ORIGINAL_BLAS)
    for var, value in _ORIGINAL_ENV.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
    _ORIGINAL_ENV.clear()
    _LIMITER = _KERNEL_THREADS = None


def ensure_kernel_threads() -> None:
    """Re-apply kernel threads to this thread's (thread-local) Numba setting; cheap.

    For task code on a thread whose Numba default predates the plan (a worker whose Numba pool
    started before the plugin ran: an attached cluster, or in-process workers).
    """
    n = _KERNEL_THREADS
    if n is not None and "numba" in sys.modules:
        import numba

        n = min(n, numba.config.NUMBA_NUM_THREADS)
        if numba.get_num_threads() != n:
            numba.set_num_threads(n)


def kernel_thread_report() -> dict[str, Any]:
    """Kernel threads as this thread sees them: Numba, threadpoolctl's libraries, env vars."""
    import numba
    from threadpoolctl import threadpool_info

    return {
        "kernel_threads": _KERNEL_THREADS,
        "numba": numba.get_num_threads(),
        "numba_pool": numba.config.NUMBA_NUM_THREADS,
        "threadpools": [{k: lib[k] for k in ("user_api", "internal_api", "num_threads")}
                        for lib in threadpool_info()],
        "env": {v: os.environ.get(v) for v in (*KERNEL_ENV_VARS, "NUMBA_NUM_THREADS")},
        "pid": os.getpid(),
    }


class ThreadBudgetPlugin(WorkerPlugin):
    """Apply a plan's kernel threads on every worker; ``report`` records what was set.

    Examples
    --------
    >>> client.register_plugin(ThreadBudgetPlugin(1))            # doctest: +SKIP
    >>> client.run(lambda dask_worker: dask_worker.plugins[ThreadBudgetPlugin.name].report)
    ... # doctest: +SKIP
    """

    name = "taskflow-threads"

    def __init__(self, kernel_threads: int):
        self.kernel_threads = kernel_threads
        self.report: dict[str, Any] | None = None

    def setup(self, worker: Any = None, **kwargs: Any) -> None:
        from taskflow.dashboard.telemetry import emit_threads

        self.report = apply_kernel_threads(self.kernel_threads, cap_numba_pool=True)
        emit_threads(self.report, worker=worker)  # for the dashboard's worker table

    def teardown(self, worker: Any = None, **kwargs: Any) -> None:
        reset_kernel_threads()  # matters for in-process workers, which share the client's


# --- threads="auto" ------------------------------------------------------------------------------
def measure_plan(model: Any, sample: Any, candidates: Sequence[tuple[int, int]] | None = None,
                 *, cores: int | None = None, repeats: int = 2) -> ThreadPlan:
    """Time a few (workers, kernel threads) splits on ``sample`` and return the fastest plan.

    Each candidate runs ``model.run`` on ``sample`` (the first chunk: an array for a one-input
    model, or a feed dict) from ``workers`` threads at once, each with ``kernel_threads`` Numba
    and BLAS threads, after one untimed warm-up call per thread (JIT, caches). Threads stand in
    for worker processes, so Python glue shares one GIL: this slightly favours kernel threads,
    and where it matters the static plan is the safer default. Candidates default to every exact
    split of the usable cores (2 cores: (2, 1) and (1, 2)); ties keep the earlier candidate.
    This process's own settings are left as they were.

    Examples
    --------
    >>> plan = measure_plan(model, images[:32])                 # doctest: +SKIP
    >>> plan.measured                                            # doctest: +SKIP
    ((2, 1, 410.2), (1, 2, 377.9))
    """
    import numba
    from threadpoolctl import threadpool_limits

    n, source = _count(cores)
    if candidates is None:
        candidates = [(n // k, k) for k in range(1, n + 1) if n % k == 0]
    feed = dict(sample) if isinstance(sample, Mapping) else {model.get_inputs()[0].name: sample}
    batch = len(next(iter(feed.values())))
    model.run(None, feed)  # compile once before any timing
    measured = []
    for workers, kernel in candidates:
        plan = ThreadPlan(workers, 1, kernel, cores=n)  # refuses candidates over budget
        numba_threads = min(kernel, numba.config.NUMBA_NUM_THREADS)  # thread-local: per thread
        with threadpool_limits(limits=kernel), ThreadPoolExecutor(
                workers, initializer=numba.set_num_threads, initargs=(numba_threads,)) as pool:
            list(pool.map(lambda _: model.run(None, feed), range(workers)))
            start = time.perf_counter()
            list(pool.map(lambda _: model.run(None, feed), range(workers * repeats)))
            elapsed = time.perf_counter() - start
        measured.append((plan.workers, plan.kernel_threads, workers * repeats * batch / elapsed))
    workers, kernel, _ = max(measured, key=lambda m: m[2])
    return replace(ThreadPlan(workers, 1, kernel, cores=n), source=source,
                   measured=tuple(measured))
