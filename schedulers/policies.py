"""Scheduling policies: small classes that read a :class:`Snapshot` and yield suggestions.

A policy never touches ``distributed``; :class:`~taskflow.schedulers.TaskflowSchedulerPlugin`
builds the snapshot, then applies, rejects (with a logged reason) or counts what it suggests,
in the shape of Dask's Active Memory Manager. Each hook is optional:

- ``on_graph(snap)``: a graph was submitted; ``snap.fresh`` are its new tasks (still released).
- ``on_tick(snap)``: every ``interval`` seconds, with per-worker views.
- ``on_memory(snap)``: a task of a kind in ``watch`` landed in memory; ``snap.fresh`` are its
  dependents still waiting.
- ``on_worker_lost(snap)``: ``snap.fresh`` are tasks this plugin pinned to workers now gone.

Settings come from keyword arguments, else Dask config ``taskflow.scheduler.<name>.*``.
"""

from __future__ import annotations

import fnmatch
import itertools
import statistics
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from taskflow.errors import TaskflowError

from .balancer import ThroughputBalancer
from .base import Policy
from .config import seconds, setting
from .snapshot import EMPTY, Pin, Require, SetPriority, Snapshot, Suggestion, TaskView, Unpin

#: Annotations taskflow reads (set them with :func:`taskflow.schedulers.job`); global
#: annotations reach every task of a submission, also those made by graph optimisation.
JOB, CLASS = "taskflow_job", "taskflow_priority"
DEVICE, FLOPS = "taskflow_device", "taskflow_flops"
MAX_JOBS_KEPT = 256  # jobs remembered for metrics(); oldest forgotten first


def _kind_match(kind: str, patterns: Any) -> Any:
    for pattern, value in patterns:
        if fnmatch.fnmatchcase(kind, pattern):
            return value
    return None


class JobPriority(Policy):
    """A job's priority class reaches every task it submits; waiting ages every job alike.

    A job is what was submitted under :func:`taskflow.schedulers.job` (annotations
    ``taskflow_job`` / ``taskflow_priority``); if graph optimisation dropped the annotation
    from some tasks of a submission, they join the submission's annotated job. Work without
    annotations gets a class from ``prefixes`` (key-kind glob -> class) or ``default_class``.

    Aging is static, so it also holds for tasks already sent to workers: a submission at time
    ``t`` gets the shift ``base(class) - t * rate`` with ``rate = (top - bottom) /
    max_wait``. Every queued task gains priority at the same rate, so comparing two tasks is
    comparing these numbers: a bulk job that has waited ``max_wait`` goes before any newly
    submitted interactive one, and is never starved. The shift orders tasks of equal Dask
    user priority (``submit/compute(priority=...)``, ``taskflow run --priority``), in place of
    Dask's submission order; a higher user priority still runs first, as in Dask.

    Parameters
    ----------
    classes : dict of str to float, optional
        Base priority per class (default config: interactive 100, normal 0, bulk -100).
    default_class : str, optional
        Class of work without annotation or matching prefix.
    max_wait : float or str, optional
        Seconds (or ``"10 minutes"``) after which a job of the lowest class overtakes a new one
        of the highest.
    prefixes : dict of str to str, optional
        Key-kind glob to class, for work submitted without :func:`job`.

    Unset arguments come from Dask config ``taskflow.scheduler.job-priority.*``.

    Examples
    --------
    >>> from taskflow.schedulers import JobPriority, job
    >>> policy = JobPriority(max_wait="10 minutes")
    >>> policy.classes, policy.max_wait
    ({'interactive': 100.0, 'normal': 0.0, 'bulk': -100.0}, 600.0)
    >>> with job("ask-1", priority="interactive"):                  # doctest: +SKIP
    ...     answer = client.compute(model.predict(x))
    """

    name = "job-priority"

    def __init__(self, classes: Mapping[str, float] | None = None,
                 default_class: str | None = None, max_wait: float | str | None = None,
                 prefixes: Mapping[str, str] | None = None):
        self.classes = {k: float(v) for k, v in setting(self.name, "classes", classes).items()}
        self.default_class = setting(self.name, "default-class", default_class)
        self.max_wait = seconds(setting(self.name, "max-wait", max_wait))
        self.prefixes = tuple(setting(self.name, "prefixes", prefixes).items())
        spread = max(self.classes.values()) - min(self.classes.values()) if self.classes else 0
        self.rate = spread / self.max_wait if self.max_wait > 0 else 0.0
        self.epoch: float | None = None
        self.jobs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.unknown_classes: set[str] = set()

    def base(self, cls: Any) -> float:
        if isinstance(cls, (int, float)) and not isinstance(cls, bool):
            return float(cls)
        if cls in self.classes:
            return self.classes[cls]
        self.unknown_classes.add(str(cls))
        return self.classes.get(self.default_class, 0.0)

    def _groups(self, snap: Snapshot) -> dict[tuple, list]:
        jobs = snap.annotations.get(JOB, EMPTY)
        classes = snap.annotations.get(CLASS, EMPTY)
        if not jobs and not classes and not self.prefixes:
            return {(None, None): list(snap.fresh)}
        groups: dict[tuple, list] = {}
        untagged = []
        for key in snap.fresh:
            job, cls = jobs.get(key), classes.get(key)
            if job is None and cls is None:
                untagged.append(key)
            else:
                groups.setdefault((job, cls), []).append(key)
        if untagged and groups:  # optimisation dropped the annotation: same submission, same job
            max(groups.values(), key=len).extend(untagged)
        elif untagged and self.prefixes:
            for key in untagged:
                kind = snap.tasks[key].prefix
                cls = _kind_match(kind, self.prefixes)
                groups.setdefault((None if cls is None else kind, cls), []).append(key)
        elif untagged:
            groups[(None, None)] = untagged
        return groups

    def on_graph(self, snap: Snapshot) -> Iterator[Suggestion]:
        if not snap.fresh:
            return
        if self.epoch is None:
            self.epoch = snap.now
        age = snap.now - self.epoch
        for (job, cls), keys in self._groups(snap).items():
            cls = self.default_class if cls is None else cls
            job = str(job) if job is not None else f"client {snap.client}"
            shift = round(self.base(cls) - age * self.rate, 3)
            info = self.jobs.pop(job, None) or {"class": cls, "first_seen": snap.now, "tasks": 0}
            info.update(priority=shift, last_seen=snap.now, tasks=info["tasks"] + len(keys))
            self.jobs[job] = info
            if len(self.jobs) > MAX_JOBS_KEPT:
                self.jobs.popitem(last=False)
            yield SetPriority(tuple(keys), shift=shift, reason=f"job {job!r}: class {cls!r}")

    def metrics(self) -> dict[str, Any]:
        return {"jobs": {k: dict(v) for k, v in self.jobs.items()},
                "rate_per_s": self.rate, "unknown_classes": sorted(self.unknown_classes)}


class CriticalPath(Policy):
    """Run tasks with the longest remaining path first (upward rank, as in HEFT).

    ``rank(t) = cost(t) + max(rank(d) for d in dependents(t))``; new tasks are reordered by
    decreasing rank. ``cost`` is the measured duration of the task's kind when known, else
    its ``taskflow_flops`` annotation (a number, or a mapping kind -> FLOPs) over
    ``flops_per_second``, else Dask's estimate for its prefix. Graphs whose costs are even
    (spread below ``min_spread``) keep ``dask.order``, which already runs the longest chain
    first and also minimises memory; graphs above ``max_tasks`` keep it too (time box).

    Off by default: on branch-parallel graphs it did not beat ``dask.order`` consistently
    (see :mod:`taskflow.schedulers`).

    Parameters
    ----------
    flops_per_second : float, optional
        Converts ``taskflow_flops`` annotations into seconds.
    min_spread : float, optional
        Largest over smallest cost below which the graph keeps ``dask.order``.
    max_tasks : int, optional
        Graphs with more tasks keep ``dask.order``.

    Examples
    --------
    >>> from taskflow.schedulers import CriticalPath, job
    >>> CriticalPath(flops_per_second=5e10).flops_per_second
    50000000000.0
    >>> with job("branches", flops={"tf-conv1": 2.3e8}):          # doctest: +SKIP
    ...     client.compute(model.predict(x, mode="model"))
    """

    name = "critical-path"

    def __init__(self, flops_per_second: float | None = None, min_spread: float | None = None,
                 max_tasks: int | None = None):
        self.flops_per_second = float(setting(self.name, "flops-per-second", flops_per_second))
        self.min_spread = float(setting(self.name, "min-spread", min_spread))
        self.max_tasks = int(setting(self.name, "max-tasks", max_tasks))
        self.skipped: dict[str, int] = {}

    def cost(self, view: TaskView, snap: Snapshot) -> float | None:
        measured = snap.durations.get(view.prefix)
        if measured is not None:
            return measured
        flops = view.annotations.get(FLOPS)
        if isinstance(flops, Mapping):
            flops = flops.get(view.prefix)
        if flops is not None:
            return float(flops) / self.flops_per_second
        return None

    def _skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def on_graph(self, snap: Snapshot) -> Iterator[Suggestion]:
        if len(snap.fresh) < 3:
            return
        if len(snap.fresh) > self.max_tasks:
            return self._skip(f"more than {self.max_tasks} tasks")
        views = [snap.tasks[k] for k in snap.fresh]
        costs = [self.cost(v, snap) for v in views]
        known = [c for c in costs if c is not None]
        if not known or max(known) < self.min_spread * max(min(known), 1e-9):
            return self._skip("even or unknown costs")
        fill = statistics.median(known)
        # dask.order is a topological order: walking it backwards sees dependents first
        by_order = sorted(range(len(views)), key=lambda i: views[i].priority[2], reverse=True)
        rank: dict[Any, float] = {}
        for i in by_order:
            v = views[i]
            below = [rank[d] for d in v.dependents if d in rank]
            rank[v.key] = (fill if costs[i] is None else costs[i]) + (max(below) if below else 0)
        ordered = sorted(views, key=lambda v: (-rank[v.key], v.priority[2]))
        yield SetPriority(tuple(v.key for v in ordered), orders=tuple(range(len(ordered))),
                          reason="upward rank")

    def metrics(self) -> dict[str, Any]:
        return {"skipped": dict(self.skipped)}


class Locality(Policy):
    """Tasks that read model weights run on the worker holding those weights.

    A new task depending on a weight key (kind in ``weight_prefixes``) held by some but not all
    workers is pinned (hard restriction) to the holders: model-parallel blocks and pipeline
    stages stay next to their weights, and neither Dask's stealing nor the balancer moves them.
    Weights computed in the same graph pin their dependents when they land in memory. Pins are
    lifted (or moved to another holder) only when the pinned workers are lost.

    Parameters
    ----------
    weight_prefixes : sequence of str, optional
        Key kinds that are weights (default config: ``tf-weight``, what
        :meth:`taskflow.Model.to_cluster` and the lowering name them).

    Examples
    --------
    >>> from taskflow.schedulers import Locality
    >>> Locality().weight_prefixes
    ('tf-weight',)
    >>> tf.Cluster(policies=["locality", "throughput-balancer"])  # doctest: +SKIP
    """

    name = "locality"

    def __init__(self, weight_prefixes: Any = None):
        self.weight_prefixes = tuple(setting(self.name, "weight-prefixes", weight_prefixes))
        self.watch = self.weight_prefixes

    def holders(self, view: TaskView, snap: Snapshot) -> frozenset | None:
        """Workers holding all weights of ``view`` (else those with its largest one)."""
        weights = [w for d in view.dependencies
                   if (w := snap.tasks.get(d)) is not None and w.who_has
                   and w.prefix.startswith(self.weight_prefixes)]
        if not weights:
            return None
        common = frozenset.intersection(*(w.who_has for w in weights))
        if not common:
            common = max(weights, key=lambda w: w.nbytes).who_has
        return common & frozenset(snap.workers)

    def _pins(self, snap: Snapshot, lost: bool) -> Iterator[Suggestion]:
        running = frozenset(snap.workers)
        for key in snap.fresh:
            view = snap.tasks[key]
            where = self.holders(view, snap)
            if where and where != running:
                if view.restrictions is None or not view.restrictions <= where:
                    yield Pin(key, where, reason="weights held there")
            elif lost:
                yield Unpin(key, reason="its workers are lost" + (" and no other holds its weights"
                                                                  if not where else ""))

    def on_graph(self, snap: Snapshot) -> Iterator[Suggestion]:
        # weights submitted with the graph pin their readers when they land (on_memory)
        if any(k.startswith(self.weight_prefixes) for k in snap.input_kinds):
            yield from self._pins(snap, lost=False)

    def on_memory(self, snap: Snapshot) -> Iterator[Suggestion]:
        yield from self._pins(snap, lost=False)

    def on_worker_lost(self, snap: Snapshot) -> Iterator[Suggestion]:
        yield from self._pins(snap, lost=True)


class Resources(Policy):
    """Tasks whose kernels need a GPU run only on workers declaring resource ``GPU``.

    A task needs one if it carries annotation ``taskflow_device="gpu"`` (:func:`job` with
    ``device="gpu"``) or its kind matches ``gpu_prefixes``. If no such worker is connected the
    task waits for one, as with Dask's own ``resources=``, and the plugin logs a warning.

    Parameters
    ----------
    gpu_prefixes : sequence of str, optional
        Key-kind globs that always need a GPU.
    resource, amount : str and float, optional
        The worker resource required and how much (default ``GPU``, 1).

    Examples
    --------
    Start GPU workers with ``dask worker ... --resources GPU=1``; then

    >>> from taskflow.schedulers import Resources, job
    >>> policy = Resources()
    >>> policy.resource, policy.amount
    ('GPU', 1.0)
    >>> with job("gpu-batch", device="gpu"):                      # doctest: +SKIP
    ...     client.compute(model.predict(x))
    """

    name = "resources"

    def __init__(self, gpu_prefixes: Any = None, resource: str | None = None,
                 amount: float | None = None):
        self.gpu_prefixes = tuple((p, True) for p in setting(self.name, "gpu-prefixes",
                                                             gpu_prefixes))
        self.resource = setting(self.name, "resource", resource)
        self.amount = float(setting(self.name, "amount", amount))

    def on_graph(self, snap: Snapshot) -> Iterator[Suggestion]:
        device = snap.annotations.get(DEVICE, EMPTY)
        if not device and not self.gpu_prefixes:
            return
        need = {self.resource: self.amount}
        for key in snap.fresh:
            gpu = str(device.get(key, "")).lower() in ("gpu", "cuda")
            if not gpu and self.gpu_prefixes:
                gpu = bool(_kind_match(snap.tasks[key].prefix, self.gpu_prefixes))
            if gpu:
                yield Require(key, need, reason=f"needs a {self.resource}")


POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (JobPriority, CriticalPath, Locality, ThroughputBalancer, Resources)
}
ALIASES = {"priority": "job-priority", "critical": "critical-path", "balancer":
           "throughput-balancer", "balanced": "throughput-balancer", "gpu": "resources"}


def policies_from_names(names: Any) -> list[Policy]:
    """Policies from names, e.g. the values of ``taskflow run --policy``.

    Accepts policy names (``job-priority``, ``critical-path``, ``locality``,
    ``throughput-balancer``, ``resources``), their class names, short aliases
    (``priority``, ``critical``, ``balancer``/``balanced``, ``gpu``), comma-separated lists,
    ``default`` (the configured set, ``taskflow.scheduler.policies``) and ``dask`` / ``none``
    (no taskflow policy: Dask's own scheduling only).

    Examples
    --------
    >>> [p.name for p in policies_from_names(["priority,locality"])]
    ['job-priority', 'locality']
    """
    if isinstance(names, str):
        names = [names]
    wanted = [n.strip() for n in itertools.chain.from_iterable(str(n).split(",") for n in names)]
    if any(n.lower() == "default" for n in wanted):
        i = next(i for i, n in enumerate(wanted) if n.lower() == "default")
        wanted[i:i + 1] = configured_names()
    by_class = {c.__name__.lower(): n for n, c in POLICIES.items()}
    out: dict[str, Policy] = {}
    for name in wanted:
        key = name.lower().replace("_", "-")
        if key in ("", "none", "dask", "default"):
            continue
        key = ALIASES.get(key, by_class.get(key.replace("-", ""), key))
        if key not in POLICIES:
            raise TaskflowError(
                f"unknown scheduler policy {name!r}; available: {', '.join(POLICIES)} "
                f"(aliases {', '.join(ALIASES)}; 'default' for the configured set, 'dask' "
                "for none)")
        if key not in out:
            out[key] = POLICIES[key]()
    return list(out.values())


def configured_names() -> list[str]:
    """The policy names in Dask config ``taskflow.scheduler.policies``."""
    names = setting("", "policies")
    return [names] if isinstance(names, str) else list(names)
