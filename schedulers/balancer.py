"""``ThroughputBalancer``: move queued tasks from the worker that will finish last to the one
that will finish first, by measured per-worker rates."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from typing import Any

from .base import Policy
from .config import seconds, setting
from .snapshot import Move, Place, Snapshot, Suggestion, TaskView, WorkerView

#: Seconds per task assumed for a kind nobody has measured yet (Dask's unknown-task-duration
#: is 0.5 s; any value works while all workers share it: it cancels out of the comparison).
UNKNOWN_DURATION = 0.5


class ThroughputBalancer(Policy):
    """Balance finish times across unequal workers (fewer threads, slower machine, GPU).

    The plugin measures every task's compute time per worker and per key kind (EWMA,
    ``snap.rates``). Every ``interval`` this policy estimates each worker's finish time,
    ``sum(duration(worker, kind) * count) / nthreads`` over the tasks it holds, and moves the
    lowest-priority queued task of the worker finishing last to the one finishing first while
    that brings the later of the two forward by at least ``min_gain`` seconds and by at least
    the time it adds to the thief (hysteresis: no ping-pong, no last-minute move to a slow
    worker), at most ``max_moves`` per tick. Tasks being moved count on their thief. A worker
    with no measurement of a kind is scaled by its speed on the kinds it has run. Moves go
    through Dask's stealing handshake: a task that has already started is not moved. Tasks
    with worker or resource restrictions move only within them.

    Parameters
    ----------
    interval : float or str, optional
        Seconds between two balancing rounds.
    min_gain : float or str, optional
        Seconds a move must bring the later worker's finish forward.
    max_moves : int, optional
        Moves per round at most.
    candidates : int, optional
        Queued tasks per worker considered for a move.
    pause_stealing : bool, optional
        Pause Dask's own work stealing while the policy runs.
    place : bool, optional
        Also place big groups of ready chunks across workers by rate when a graph arrives.

    Unset arguments come from Dask config ``taskflow.scheduler.throughput-balancer.*``.

    Examples
    --------
    >>> from taskflow.schedulers import ThroughputBalancer
    >>> balancer = ThroughputBalancer(interval="200ms")
    >>> balancer.interval, balancer.replaces_stealing
    (0.2, True)
    >>> tf.Cluster(policies=[balancer, "locality"])              # doctest: +SKIP
    """

    name = "throughput-balancer"

    def __init__(self, interval: float | str | None = None, min_gain: float | str | None = None,
                 max_moves: int | None = None, candidates: int | None = None,
                 pause_stealing: bool | None = None, place: bool | None = None):
        self.interval = seconds(setting(self.name, "interval", interval))
        self.min_gain = seconds(setting(self.name, "min-gain", min_gain))
        self.max_moves = int(setting(self.name, "max-moves", max_moves))
        self.candidates = int(setting(self.name, "candidates", candidates))
        self.replaces_stealing = bool(setting(self.name, "pause-stealing", pause_stealing))
        self.place = bool(setting(self.name, "place", place))
        self.last_estimate: dict[str, float] = {}

    def speeds(self, snap: Snapshot) -> dict[str, float]:
        """Per worker, its measured durations relative to the cluster's (2.0: half as fast)."""
        ratios: dict[str, list[float]] = {}
        for (worker, kind), d in snap.rates.items():
            mean = snap.durations.get(kind)
            if mean:
                ratios.setdefault(worker, []).append(d / mean)
        return {w: statistics.median(r) for w, r in ratios.items()}

    def duration(self, snap: Snapshot, speeds: dict[str, float], worker: str, kind: str) -> float:
        d = snap.rates.get((worker, kind))
        if d is not None:
            return d
        return snap.durations.get(kind, UNKNOWN_DURATION) * speeds.get(worker, 1.0)

    def finish(self, snap: Snapshot, speeds: dict[str, float], w: WorkerView) -> float:
        work = sum(self.duration(snap, speeds, w.address, kind) * n
                   for kind, n in w.prefix_counts.items())
        return work / max(w.nthreads, 1)

    @staticmethod
    def allowed(task: TaskView, thief: WorkerView) -> bool:
        if task.restrictions is not None and not task.loose \
                and thief.address not in task.restrictions:
            return False
        return all(thief.resources.get(r, 0) >= n for r, n in task.resources.items())

    def on_graph(self, snap: Snapshot) -> Iterator[Suggestion]:
        """With ``place``: spread big groups of ready tasks over the workers by measured rate.

        Dask keeps such root-ish tasks in its queue and hands them out as threads free up,
        which already follows worker speed but leaves the last tasks wherever a thread was
        free. Placed tasks (a loose restriction) are sent at once, and the tick moves them.
        """
        if not self.place:
            return
        workers = {a: w for a, w in snap.workers.items() if w.status == "running"}
        threads = sum(w.nthreads for w in workers.values())
        speeds = self.speeds(snap)
        load = dict.fromkeys(workers, 0.0)
        for kind, keys in snap.ready.items():
            if len(keys) <= 2 * threads:  # Dask places small groups eagerly by itself
                continue
            cost = {a: self.duration(snap, speeds, a, kind) / w.nthreads
                    for a, w in workers.items()}
            placed: dict[str, list] = {a: [] for a in workers}
            for key in keys:  # list scheduling: each to the worker that would finish it first
                a = min(load, key=lambda a: load[a] + cost[a])
                load[a] += cost[a]
                placed[a].append(key)
            for a, ks in placed.items():
                if ks:
                    yield Place(tuple(ks), a, reason=f"by rate: {kind}")

    def on_tick(self, snap: Snapshot) -> Iterator[Suggestion]:
        workers = {a: w for a, w in snap.workers.items() if w.status == "running"}
        if len(workers) < 2:
            return
        speeds = self.speeds(snap)
        est = {a: self.finish(snap, speeds, w) for a, w in workers.items()}
        self.last_estimate = dict(est)
        offered = {a: [c for c in w.candidates if c.key not in snap.in_flight]
                   for a, w in workers.items()}
        for _ in range(self.max_moves):
            victim = max(est, key=est.__getitem__)
            if not offered[victim]:
                return
            # the thief: the worker on which the victim's next candidate would finish first
            task = offered[victim][0]
            dv = self.duration(snap, speeds, victim, task.prefix) / workers[victim].nthreads
            transfer = task.input_nbytes / snap.bandwidth  # its inputs travel with it
            best, best_after, best_dt = None, est[victim], 0.0
            for a, w in workers.items():
                if a == victim or not self.allowed(task, w):
                    continue
                dt = self.duration(snap, speeds, a, task.prefix) / w.nthreads + transfer
                if est[a] + dt < best_after:
                    best, best_after, best_dt = a, est[a] + dt, dt
            gain = est[victim] - max(est[victim] - dv, best_after)
            # Estimates are off by up to a task per thread (started tasks count whole), and a
            # task sent to a slow worker cannot come back once started: a move must gain at
            # least the time it adds to the thief (transfer of its inputs included).
            if best is None or gain < max(self.min_gain, best_dt):
                offered[victim].pop(0)  # this one stays; a cheaper one may still fit elsewhere
                continue
            yield Move(task.key, victim, best, gain=gain,
                       reason=f"finish {est[victim]:.3f}s -> {est[victim] - dv:.3f}s")
            offered[victim].pop(0)
            est[victim] -= dv
            est[best] = best_after

    def metrics(self) -> dict[str, Any]:
        return {"estimated_finish_s": dict(self.last_estimate)}
