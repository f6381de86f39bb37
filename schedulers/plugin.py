"""``TaskflowSchedulerPlugin``: runs the policies on the scheduler and applies what they suggest.

The only module here that touches ``distributed`` internals. Hooks it uses (distributed 2026.8,
see docs/notes/dask-scheduler-plugins.md): ``update_graph`` runs while new tasks are still
``released``, so priorities and restrictions set there count; ``transition`` measures compute
times (processing -> memory) and lets Locality pin dependents of weights as they land; a
``PeriodicCallback`` runs the policies with an ``interval``; moves go through the stealing
handshake, whose outcome arrives through ``log_event("stealing", ...)``; the Active Memory
Manager's ``ReduceReplicas`` is swapped for :class:`KeepWeightReplicas` while the plugin runs.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from collections.abc import Iterator, Mapping
from operator import attrgetter
from statistics import median
from types import MappingProxyType
from typing import Any

from distributed.active_memory_manager import ReduceReplicas
from distributed.diagnostics.plugin import SchedulerPlugin

from .apply import RESTRICTABLE, SuggestionApplier
from .base import Policy
from .config import setting
from .policies import Locality, policies_from_names
from .snapshot import EMPTY, LazyMapping, LazySet, Snapshot, TaskView, WorkerView, task_kind

logger = logging.getLogger("taskflow.schedulers")
KIND_CACHE_SIZE = 10_000


class _Tasks(Mapping):
    """Read-only task views built on first access (a 10,000-task graph costs only what the
    policies read)."""

    def __init__(self, plugin: TaskflowSchedulerPlugin, keys: tuple):
        self._plugin, self._keys, self._views = plugin, keys, {}

    def __getitem__(self, key: Any) -> TaskView:
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = self._plugin._view(self._plugin.scheduler.tasks[key])
        return view

    def __iter__(self) -> Iterator:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class KeepWeightReplicas(ReduceReplicas):
    """Dask's ``ReduceReplicas``, less the keys of model weights.

    :meth:`taskflow.Model.to_cluster` broadcasts the weights so that every worker runs its
    chunks without first fetching them (about 100 MB for ResNet-50). ``ReduceReplicas`` drops
    every replica but one of a key no queued task waits for, every 2 s by default: between two
    jobs all weights ended up on single workers, the next job moved them again, and Locality
    pinned each reader to the one holder, so 2 workers ran at the speed of one. Weights stay
    replicated until their futures are released; every other key is reduced as before. Once
    no taskflow plugin is left on the scheduler, the policy puts ``replaced`` back.
    """

    def __init__(self, prefixes: tuple[str, ...], replaced: ReduceReplicas):
        super().__init__()
        self.prefixes, self.replaced = prefixes, replaced

    def run(self) -> Iterator[Any]:
        if not any(isinstance(p, TaskflowSchedulerPlugin)
                   for p in self.manager.scheduler.plugins.values()):
            self.give_back()  # the plugin was removed (Dask does not close it)
            return
        for suggestion in super().run():  # drops only: the manager sends nothing it reads
            if not suggestion.ts.prefix.name.startswith(self.prefixes):
                yield suggestion

    def give_back(self) -> None:
        """Put Dask's ``ReduceReplicas`` back in this policy's place."""
        manager = self.manager
        if self in manager.policies:
            manager.policies.discard(self)
            manager.add_policy(self.replaced)


class TaskflowSchedulerPlugin(SuggestionApplier, SchedulerPlugin):
    """Runs taskflow's scheduling policies on a Dask scheduler.

    Parameters
    ----------
    policies : list of Policy or str, optional
        In order; names as in :func:`taskflow.schedulers.policies_from_names`. Default: Dask
        config ``taskflow.scheduler.policies``.
    replace : bool
        Replace a ``"taskflow"`` plugin already on the scheduler (e.g. from ``--preload``);
        by default registering again is a no-op (``idempotent``).
    alpha : float, optional
        Weight of the newest measurement in the duration EWMAs.

    Examples
    --------
    >>> from taskflow.schedulers import TaskflowSchedulerPlugin, CriticalPath   # doctest: +SKIP
    >>> client.register_plugin(TaskflowSchedulerPlugin(["job-priority", CriticalPath()],
    ...                                                replace=True))       # doctest: +SKIP
    >>> client.sync(client.scheduler.taskflow_metrics)["policies"]       # doctest: +SKIP
    """

    name = "taskflow"
    idempotent = True

    def __init__(self, policies: list[Policy | str] | str | None = None, *, replace: bool = False,
                 alpha: float | None = None):
        if policies is None:
            policies = ["default"]
        elif isinstance(policies, str):
            policies = [policies]
        self.policies: list[Policy] = []
        for p in policies:
            self.policies.extend(policies_from_names([p]) if isinstance(p, str) else [p])
        self.idempotent = not replace
        self.alpha = float(setting("", "alpha", alpha))
        self.recent: deque = deque(maxlen=int(setting("", "recent-rejections")))
        self.counts = {p.name: {"suggestions": 0, "applied": 0, "rejected": 0, "errors": 0,
                                "reasons": {}} for p in self.policies}
        self.rates: dict[tuple[str, str], float] = {}  # (worker, kind) -> s/task, one thread
        self.durations: dict[str, float] = {}  # kind -> s/task, all workers
        self.done: dict[str, int] = {}  # worker -> tasks finished
        self.moves = {"requested": 0, "confirmed": 0, "refused_started": 0, "rescheduled": 0}
        self.graph_ms: deque = deque(maxlen=100)
        self.tick_ms: deque = deque(maxlen=100)
        self.scheduler: Any = None
        self._pins: dict[Any, tuple] = {}  # key -> (workers, its own restrictions, loose)
        self._pending: dict[str, str] = {}  # stealing stimulus id -> policy name
        self._kinds: dict[str, str | None] = {}
        self._next_tick: dict[str, float] = {}
        self._pc_name: str | None = None
        self._paused_stealing = False
        self._own_stealing: Any = None
        self._warned: set[str] = set()
        self._watch = tuple(w for p in self.policies for w in p.watch)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "scheduler": None}

    # --- life cycle -----------------------------------------------------------------------------
    async def start(self, scheduler: Any) -> None:
        from tornado.ioloop import PeriodicCallback

        self.scheduler = scheduler
        intervals = [p.interval for p in self.policies if p.interval]
        if intervals:
            self._pc_name = f"taskflow-{id(self):x}"
            pc = PeriodicCallback(self._tick, min(intervals) * 1000)
            scheduler.periodic_callbacks[self._pc_name] = pc
            pc.start()
        scheduler.handlers["taskflow_metrics"] = self._metrics_handler
        self._keep_weight_replicas()

    def _keep_weight_replicas(self) -> None:
        """Swap the Active Memory Manager's ``ReduceReplicas`` for :class:`KeepWeightReplicas`,
        or adopt the one a predecessor plugin put there (nothing to do where the AMM or its
        policy is off)."""
        amm = self.scheduler.extensions.get("amm")
        policies = getattr(amm, "policies", ())
        prefixes = next((p.weight_prefixes for p in self.policies if isinstance(p, Locality)),
                        None) or tuple(setting("locality", "weight-prefixes"))
        keeper = next((p for p in policies if isinstance(p, KeepWeightReplicas)), None)
        theirs = next((p for p in policies if type(p) is ReduceReplicas), None)
        if keeper is None and theirs is not None:
            keeper = KeepWeightReplicas(prefixes, theirs)
            amm.policies.discard(theirs)
            amm.add_policy(keeper)
        if keeper is not None:
            keeper.prefixes = prefixes

    async def close(self) -> None:
        self._detach()

    def _attached(self) -> bool:
        s = self.scheduler
        return s is not None and any(p is self for p in s.plugins.values())

    def _detach(self) -> None:
        """Stop callbacks and give back what this instance took (it was closed or replaced)."""
        s = self.scheduler
        if s is None:
            return
        pc = s.periodic_callbacks.get(self._pc_name) if self._pc_name else None
        if pc is not None:
            pc.stop()
            del s.periodic_callbacks[self._pc_name]
        if getattr(s.handlers.get("taskflow_metrics"), "__self__", None) is self:
            successor = s.plugins.get(self.name)
            if isinstance(successor, TaskflowSchedulerPlugin) and successor is not self:
                s.handlers["taskflow_metrics"] = successor._metrics_handler
            else:
                del s.handlers["taskflow_metrics"]
        if self._paused_stealing and s.status.name not in ("closing", "closed"):
            others = [p for p in s.plugins.values() if isinstance(p, TaskflowSchedulerPlugin)
                      and p is not self and any(q.replaces_stealing for q in p.policies)]
            ext = s.extensions.get("stealing")
            if others:  # a successor that also replaces stealing inherits the pause
                others[0]._paused_stealing = True
            elif ext is not None:
                import asyncio

                asyncio.ensure_future(ext.start())
        self._paused_stealing = False
        self._give_back_replicas(s)
        self.scheduler = None

    def _give_back_replicas(self, s: Any) -> None:
        """Put Dask's ``ReduceReplicas`` back unless another taskflow plugin still runs."""
        if any(isinstance(p, TaskflowSchedulerPlugin) and p is not self
               for p in s.plugins.values()):
            return
        policies = getattr(s.extensions.get("amm"), "policies", ())
        for keeper in [p for p in policies if isinstance(p, KeepWeightReplicas)]:
            keeper.give_back()

    def _stealing(self) -> Any:
        ext = self.scheduler.extensions.get("stealing") or self._own_stealing
        if ext is None:  # stealing off in config: an idle instance gives us the handshake
            from distributed.stealing import WorkStealing

            ext = self._own_stealing = WorkStealing(self.scheduler)
        return ext

    # --- views ----------------------------------------------------------------------------------
    def _kind(self, ts: Any) -> str:
        group = ts.group.name
        kind = self._kinds.get(group, "")
        if kind == "":
            if len(self._kinds) > KIND_CACHE_SIZE:
                self._kinds.clear()
            # tf-conv1-<token> string keys all fall in group "tf": their kind is per key
            kind = self._kinds[group] = (None if group == "tf" else task_kind(group)
                                         if group.startswith("tf-") else ts.prefix.name)
        return kind if kind is not None else task_kind(str(ts.key))

    def _view(self, ts: Any) -> TaskView:
        return TaskView(
            ts.key, self._kind(ts), ts.state, ts.priority or (0, 0, 0),
            tuple(d.key for d in ts.dependencies), tuple(d.key for d in ts.dependents),
            MappingProxyType(ts.annotations) if ts.annotations else EMPTY,
            frozenset(ts.worker_restrictions) if ts.worker_restrictions else None,
            bool(ts.loose_restrictions),
            MappingProxyType(ts.resource_restrictions) if ts.resource_restrictions else EMPTY,
            ts.processing_on.address if ts.processing_on else None,
            frozenset(w.address for w in ts.who_has) if ts.who_has else frozenset(),
            max(ts.nbytes, 0), ts.get_nbytes_deps() if ts.dependencies else 0)

    def _workers(self, candidates: int = 0, moving: Any = EMPTY) -> dict[str, WorkerView]:
        """Worker views; with ``candidates``, also per-kind counts (tasks being moved count on
        their thief) and that many lowest-priority tasks that have probably not started."""
        out = {}
        for addr, ws in self.scheduler.workers.items():
            counts: dict[str, int] = {}
            offered: tuple = ()
            if candidates:
                for ts in ws.processing:
                    if ts not in moving:
                        k = self._kind(ts)
                        counts[k] = counts.get(k, 0) + 1
                for ts, info in moving.items():
                    if info["thief"] is ws:
                        k = self._kind(ts)
                        counts[k] = counts.get(k, 0) + 1
                spare = len(ws.processing) - ws.nthreads  # the rest have probably started
                if spare > 0:
                    low = heapq.nlargest(min(spare, candidates), ws.processing,
                                         key=attrgetter("priority"))
                    offered = tuple(self._view(ts) for ts in low if ts not in ws.executing
                                    and ts not in ws.long_running)
            out[addr] = WorkerView(addr, ws.nthreads, dict(ws.resources), ws.status.name,
                                   counts, offered, ws.nbytes)
        return out

    def _snapshot(self, fresh: tuple = (), *, client: Any = None, annotations: Any = EMPTY,
                  candidates: int = 0) -> Snapshot:
        s = self.scheduler
        moving: Any = EMPTY
        if candidates:
            ext = s.extensions.get("stealing") or self._own_stealing
            moving = ext.in_flight if ext is not None else EMPTY
        durations = {name: tp.duration_average for name, tp in s.task_prefixes.items()
                     if tp.duration_average > 0}
        durations.update(self.durations)
        return Snapshot(time.time(), _Tasks(self, fresh), self._workers(candidates, moving),
                        fresh, durations, MappingProxyType(self.rates), client,
                        frozenset(ts.key for ts in moving), annotations or EMPTY,
                        LazySet(lambda: self._input_kinds(fresh)),
                        LazyMapping(lambda: self._ready(fresh)), s.bandwidth)

    def _group_kind(self, tg: Any) -> str:
        name = tg.name
        return task_kind(name) if name.startswith("tf-") else tg.prefix.name

    def _input_kinds(self, fresh: tuple) -> frozenset:
        """Kinds of the task groups the fresh tasks' groups read (Dask tracks group edges, so
        this costs one lookup per fresh task, not one per edge)."""
        tasks = self.scheduler.tasks
        groups = {tasks[k].group for k in fresh}
        return frozenset(self._group_kind(d) for g in groups for d in g.dependencies)

    def _ready(self, fresh: tuple) -> dict[str, tuple]:
        """Per kind, fresh unrestricted tasks whose inputs are in memory and whose dependents
        (if any) gather many tasks: the last step of a chunk, not a stage its chunk's next
        stage will follow."""
        tasks = self.scheduler.tasks
        by_group: dict[Any, list] = {}
        for key in fresh:
            ts = tasks[key]
            if ts.worker_restrictions or ts.host_restrictions or ts.resource_restrictions:
                continue
            if ts.dependencies and any(d.state != "memory" for d in ts.dependencies):
                continue
            if ts.dependents and any(len(d.dependencies) < 3 for d in ts.dependents):
                continue
            by_group.setdefault(ts.group, []).append(ts)
        by_kind: dict[str, list] = {}
        for members in by_group.values():
            for ts in members:
                by_kind.setdefault(self._kind(ts), []).append(ts)
        return {k: tuple(ts.key for ts in sorted(v, key=attrgetter("priority")))
                for k, v in by_kind.items()}

    # --- hooks ----------------------------------------------------------------------------------
    def update_graph(self, scheduler: Any, *, client: str | None = None, tasks: Any = (),
                     annotations: dict | None = None, stimulus_id: str | None = None,
                     **kwargs: Any) -> None:
        t0 = time.perf_counter()
        if self.scheduler is None:  # add_plugin without start(): adopt the scheduler
            self.scheduler = scheduler
        all_tasks = scheduler.tasks
        fresh = tuple(k for k in tasks if (ts := all_tasks.get(k)) is not None
                      and ts.state == "released" and ts.run_spec is not None)
        if fresh:
            snap = self._snapshot(fresh, client=client, annotations=annotations)
            for policy in self.policies:
                self._run(policy, policy.on_graph, snap, stimulus_id)
        self.graph_ms.append((time.perf_counter() - t0) * 1000)

    def transition(self, key: Any, start: str, finish: str, *args: Any,
                   stimulus_id: str | None = None, **kwargs: Any) -> None:
        if start == "processing" and finish == "memory":
            ts = self.scheduler.tasks.get(key) if self.scheduler else None
            if ts is None:
                return
            kind = self._kind(ts)
            self._measure(kind, kwargs.get("worker"), kwargs.get("startstops"))
            if self._watch and kind.startswith(self._watch):
                waiting = tuple(d.key for d in ts.dependents if d.state in RESTRICTABLE)
                if waiting:
                    snap = self._snapshot(waiting)
                    for policy in self.policies:
                        if policy.watch and kind.startswith(policy.watch):
                            self._run(policy, policy.on_memory, snap, stimulus_id)
        if self._pins and finish in ("memory", "erred", "forgotten"):  # not released: a lost
            # worker releases its tasks before remove_worker, which still needs their pins
            self._pins.pop(key, None)

    def _measure(self, kind: str, worker: str | None, startstops: Any) -> None:
        if not worker or not startstops:
            return
        d = sum(ss["stop"] - ss["start"] for ss in startstops if ss.get("action") == "compute")
        if d <= 0:
            return
        a = self.alpha
        old = self.rates.get((worker, kind))
        self.rates[(worker, kind)] = d if old is None else (1 - a) * old + a * d
        old = self.durations.get(kind)
        self.durations[kind] = d if old is None else (1 - a) * old + a * d
        self.done[worker] = self.done.get(worker, 0) + 1

    def remove_worker(self, scheduler: Any, worker: str, *, stimulus_id: str | None = None,
                      **kwargs: Any) -> None:
        for wk in [wk for wk in self.rates if wk[0] == worker]:
            del self.rates[wk]
        lost = tuple(k for k, (ws, _, _) in self._pins.items()
                     if not any(w in scheduler.workers for w in ws))
        if lost:
            snap = self._snapshot(lost)
            for policy in self.policies:
                self._run(policy, policy.on_worker_lost, snap, stimulus_id)

    def log_event(self, topic: str, msg: Any) -> None:
        if topic != "stealing" or not isinstance(msg, tuple) or not self._pending:
            return
        name = self._pending.pop(msg[-1], None)
        if name is not None:
            outcome = {"confirm": "confirmed", "already-computing": "refused_started",
                       "reschedule": "rescheduled"}.get(msg[0])
            if outcome:
                self.moves[outcome] += 1
            if msg[0] == "already-computing":
                self._count(name, "rejected", "task had started on the victim (handshake)")

    def _tick(self) -> None:
        if not self._attached():
            return self._detach()
        t0 = time.perf_counter()
        now = time.monotonic()
        due = [p for p in self.policies if p.interval and now >= self._next_tick.get(p.name, 0)]
        if not due:
            return
        if any(p.replaces_stealing for p in self.policies):
            self._pause_stealing()
        snap = self._snapshot(candidates=max(getattr(p, "candidates", 0) for p in due) or 16)
        for policy in due:
            self._next_tick[policy.name] = now + policy.interval
            self._run(policy, policy.on_tick, snap, f"taskflow-tick-{now}")
        self.tick_ms.append((time.perf_counter() - t0) * 1000)

    def _pause_stealing(self) -> None:
        pc = self.scheduler.periodic_callbacks.pop("stealing", None)
        if pc is not None:
            pc.stop()
            self._paused_stealing = True

    # --- metrics --------------------------------------------------------------------------------
    def _metrics_handler(self, comm: Any = None) -> dict[str, Any]:
        if not self._attached():  # unregistered, with no tick to notice it
            self._detach()
            return {}
        return self.metrics()

    def metrics(self) -> dict[str, Any]:
        """JSON-able state: per policy counts, per worker measured rates and queues, jobs.

        What the ``/taskflow`` dashboard page and :func:`taskflow.schedulers.metrics` show.

        Examples
        --------
        >>> from taskflow.schedulers import TaskflowSchedulerPlugin
        >>> plugin = TaskflowSchedulerPlugin(["job-priority", "locality"])
        >>> plugin.metrics()["policies"]["locality"]                 # not on a scheduler yet
        {'suggestions': 0, 'applied': 0, 'rejected': 0, 'errors': 0, 'reasons': {}}
        >>> sorted(plugin.metrics())[:4]
        ['jobs', 'moves', 'no_worker', 'pinned_tasks']
        """
        s = self.scheduler
        workers = {}
        for addr, ws in (s.workers.items() if s else ()):
            per = {k: d for (w, k), d in self.rates.items() if w == addr}
            workers[addr] = {
                "nthreads": ws.nthreads, "processing": len(ws.processing),
                "waiting_on_worker": max(0, len(ws.processing) - ws.nthreads),
                "tasks_done": self.done.get(addr, 0),
                "seconds_per_task": per,
                "tasks_per_second": {k: ws.nthreads / d for k, d in per.items() if d > 0}}
        policies = {p.name: {**self.counts[p.name], **p.metrics(),
                             "reasons": dict(self.counts[p.name]["reasons"])}
                    for p in self.policies}
        jobs = policies.get("job-priority", {}).get("jobs", {})

        def ms(xs: deque) -> dict[str, float]:
            return {"last": xs[-1], "median": median(xs), "max": max(xs)} if xs else {}

        return {"policies": policies, "workers": workers, "jobs": jobs,
                "queued": len(s.queued) if s else 0, "no_worker": len(s.unrunnable) if s else 0,
                "moves": dict(self.moves), "stealing_paused": self._paused_stealing,
                "update_graph_ms": ms(self.graph_ms), "tick_ms": ms(self.tick_ms),
                "recent_rejections": list(self.recent),
                "pinned_tasks": len(self._pins)}

    def __repr__(self) -> str:
        return f"<TaskflowSchedulerPlugin {[p.name for p in self.policies]}>"
