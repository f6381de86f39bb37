"""Applying suggestions: the half of the plugin that changes scheduler state.

Every suggestion is validated against the live state, then applied or rejected with a reason;
both are counted per policy (``counts``) and rejections are logged (DEBUG) and kept in
``recent``. Mixed into :class:`~taskflow.schedulers.TaskflowSchedulerPlugin`, which provides
``scheduler``, ``counts``, ``recent``, ``moves``, ``_pins``, ``_pending``, ``_warned`` and
``_stealing()``.
"""

from __future__ import annotations

import logging
from typing import Any

from .base import Policy
from .snapshot import Move, Pin, Place, Require, SetPriority, Snapshot, Unpin

logger = logging.getLogger("taskflow.schedulers")
ADJUSTABLE = ("released", "waiting", "no-worker", "queued")  # not yet sent to a worker
RESTRICTABLE = ADJUSTABLE[:3]  # queued tasks are placed ignoring restrictions
MAX_PENDING_MOVES = 10_000  # handshakes whose answer never came (worker lost) are forgotten


class SuggestionApplier:
    def _run(self, policy: Policy, hook: Any, snap: Snapshot, stimulus_id: Any) -> None:
        counts = self.counts[policy.name]
        requeue = False
        try:
            for sug in hook(snap) or ():
                counts["suggestions"] += 1
                requeue |= bool(self._apply(policy.name, sug, stimulus_id or "taskflow"))
        except Exception:
            counts["errors"] += 1
            logger.exception("taskflow policy %s failed in %s", policy.name, hook.__name__)
        if requeue:  # the queue is a heap keyed on the priority at insertion: rebuild it
            queued = self.scheduler.queued
            items = list(queued)
            queued.clear()
            for ts in items:
                queued.add(ts)

    def _count(self, policy: str, outcome: str, reason: str = "", n: int = 1) -> None:
        c = self.counts[policy]
        c[outcome] += n
        if outcome == "rejected":
            c["reasons"][reason] = c["reasons"].get(reason, 0) + n
            self.recent.append({"policy": policy, "reason": reason, "tasks": n})
            logger.debug("taskflow policy %s: rejected (%d tasks): %s", policy, n, reason)

    def _apply(self, policy: str, sug: Any, stimulus_id: str) -> bool:
        s = self.scheduler
        if isinstance(sug, SetPriority):
            return self._set_priority(policy, sug)
        if isinstance(sug, Place):
            return self._place(policy, sug)
        ts = s.tasks.get(sug.key)
        if ts is None:
            return self._count(policy, "rejected", "task is gone")
        if isinstance(sug, Move):
            return self._move(policy, sug, ts)
        if isinstance(sug, Unpin):
            return self._unpin(policy, ts, stimulus_id)
        if ts.state not in RESTRICTABLE:
            return self._count(policy, "rejected", f"task is already {ts.state}")
        if isinstance(sug, Pin):
            prior = self._pins.get(ts.key)
            own = prior[1] if prior else (set(ts.worker_restrictions)
                                          if ts.worker_restrictions else None)
            alive = {w for w in sug.workers if w in s.workers} & (own or set(s.workers))
            if not alive:
                return self._count(policy, "rejected", "conflicts with the task's own "
                                   "restrictions" if own else "pinned workers are gone")
            self._pins[ts.key] = (frozenset(alive), own,
                                  prior[2] if prior else ts.loose_restrictions)
            ts.worker_restrictions = alive
            ts.loose_restrictions = False
        elif isinstance(sug, Require):
            ts.resource_restrictions = {**(ts.resource_restrictions or {}), **sug.resources}
            for r in sug.resources:
                if not s.resources.get(r) and r not in self._warned:
                    self._warned.add(r)
                    logger.warning("taskflow: tasks need resource %r but no worker declares it;"
                                   " they wait for one (start workers with --resources "
                                   "'%s=1')", r, r)
        else:
            return self._count(policy, "rejected", f"unknown suggestion {type(sug).__name__}")
        self._count(policy, "applied")
        if ts.state == "no-worker" and isinstance(sug, Pin):
            s.transitions({ts.key: "processing"}, stimulus_id)
        return False

    def _set_priority(self, policy: str, sug: SetPriority) -> bool:
        tasks = self.scheduler.tasks
        applied, rejected, queued = 0, {}, False
        orders, shift = sug.orders, sug.shift
        for i, key in enumerate(sug.keys):
            ts = tasks.get(key)
            state = ts.state if ts is not None else "gone"
            if state not in ADJUSTABLE or ts.priority is None:
                rejected[state] = rejected.get(state, 0) + 1
                continue
            p0, p1, p2 = ts.priority
            if shift is not None:
                # Dask's user priority (p0, from submit/compute(priority=...)) stays first, as
                # in Dask: a policy never undoes it. The shift takes the place of Dask's
                # submission generation, ordering tasks of equal user priority: idempotent.
                p1 = -shift
            ts.priority = (p0, p1, p2 if orders is None else orders[i])
            if state == "queued":
                queued = True
            applied += 1
        if applied:
            self._count(policy, "applied", n=applied)
        for state, n in rejected.items():
            self._count(policy, "rejected", f"task is already {state}", n)
        return queued

    def _place(self, policy: str, sug: Place) -> None:
        s = self.scheduler
        if sug.worker not in s.workers:
            return self._count(policy, "rejected", "worker is gone", len(sug.keys))
        tasks, applied, rejected = s.tasks, 0, {}
        where = {sug.worker}
        for key in sug.keys:
            ts = tasks.get(key)
            if ts is None or ts.state not in RESTRICTABLE:
                why = f"task is already {ts.state if ts is not None else 'gone'}"
            elif ts.worker_restrictions or ts.host_restrictions or ts.resource_restrictions:
                why = "task has its own restrictions"
            else:
                ts.worker_restrictions = set(where)
                ts.loose_restrictions = True
                applied += 1
                continue
            rejected[why] = rejected.get(why, 0) + 1
        if applied:
            self._count(policy, "applied", n=applied)
        for why, n in rejected.items():
            self._count(policy, "rejected", why, n)

    def _move(self, policy: str, sug: Move, ts: Any) -> None:
        s = self.scheduler
        victim, thief = s.workers.get(sug.victim), s.workers.get(sug.thief)
        ext = self._stealing()
        if ts.state != "processing" or ts.processing_on is None or ts.processing_on is not victim:
            why = "task is no longer queued on the victim"
        elif thief is None or thief.status.name != "running":
            why = "thief is not running"
        elif ts.key in self._pins:
            why = "task is pinned next to its weights"
        elif (valid := s.valid_workers(ts)) is not None and thief not in valid and not (
                ts.loose_restrictions and not ts.resource_restrictions):
            why = "thief not allowed by the task's restrictions"
        elif ts in victim.executing or ts in ext.in_flight:
            why = "task is executing or already being moved"
        else:
            sid = ext.move_task_request(ts, victim, thief)
            if sid in ("in-flight", "comm-closed"):
                why = f"stealing refused: {sid}"
            else:
                if len(self._pending) > MAX_PENDING_MOVES:
                    self._pending.pop(next(iter(self._pending)))
                self._pending[sid] = policy
                self.moves["requested"] += 1
                return self._count(policy, "applied")
        self._count(policy, "rejected", why)

    def _unpin(self, policy: str, ts: Any, stimulus_id: str) -> None:
        pinned = self._pins.pop(ts.key, None)
        if pinned is None:
            return self._count(policy, "rejected", "not pinned by taskflow")
        _, own, loose = pinned
        ts.worker_restrictions = own
        ts.loose_restrictions = loose
        self._count(policy, "applied")
        if ts.state == "no-worker":
            self.scheduler.transitions({ts.key: "processing"}, stimulus_id)

