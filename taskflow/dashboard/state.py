"""``TaskflowState``: the dashboard's figures, aggregated from telemetry events and the scheduler.

Pure bookkeeping (no Bokeh, no HTTP), so it can be tested on hand-fed events. Everything runs on
the scheduler's event loop (plugin hooks and periodic callbacks), so nothing here locks.
:meth:`TaskflowState.snapshot` is the one JSON-able dict the page, ``/taskflow/json`` and the
Prometheus collector all show; its keys are documented there.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from taskflow.dashboard.telemetry import CHUNK_TOPIC, JOB_TOPIC, THREADS_TOPIC, TOPICS

#: Samples/s is samples finished in this many seconds / the seconds: long enough to span several
#: chunks per worker (chunks take 0.1-2 s) so the line does not saw-tooth, short enough to
#: show a worker slowing down within a few seconds.
RATE_WINDOW_S = 5.0
#: Shortest span a rate is measured over (a first chunk that took almost no time).
MIN_SPAN_S = 0.1
#: Points kept for the throughput plot: 10 minutes at the 500 ms update interval.
HISTORY_POINTS = 1200
#: Snapshots kept for ``/taskflow/json?tick=N`` (a page and a script can compare one tick):
#: 30 s at the 500 ms update interval, so a page read on a loaded machine is still found.
SNAPSHOTS_KEPT = 60
#: Jobs shown; older finished jobs are dropped first.
MAX_JOBS = 50
#: Name under which the taskflow scheduler plugin registers (schedulers/plugin.py).
SCHEDULER_PLUGIN = "taskflow"
#: Workers that left and are still listed (adaptive clusters come and go all day).
MAX_GONE_WORKERS = 32
#: Job states after which a job does nothing more; the page shows such jobs collapsed.
FINISHED = frozenset({"done", "failed", "interrupted", "cancelled", "error", "abandoned"})
_JOB_COUNTS = ("total", "done", "failed", "quarantined", "in_flight")


def layer_of(prefix: str) -> str | None:
    """Layer name of a Dask key prefix ``tf-<layer>`` / ``tf_<layer>``; None for other keys."""
    if prefix.startswith(("tf-", "tf_")) and len(prefix) > 3:
        return prefix[3:]
    return None


class _Counts:
    """Running totals for one worker or one job, with the recent events for a windowed rate."""

    __slots__ = ("samples", "chunks", "seconds", "recent", "first")

    def __init__(self) -> None:
        self.samples = 0
        self.chunks = 0
        self.seconds = 0.0
        self.recent: deque[tuple[float, int]] = deque()  # (arrival time, samples)
        self.first: float | None = None  # when the first chunk started (arrival - its seconds)

    def add(self, t: float, samples: int, seconds: float) -> None:
        self.samples += samples
        self.chunks += 1
        self.seconds += seconds
        self.recent.append((t, samples))
        if self.first is None:
            self.first = t - seconds

    def rate(self, now: float, window: float) -> float:
        """Samples/s over the last ``window`` s, or since the first chunk began if later (so
        a job's first seconds are not under-counted by a window reaching back before it)."""
        while self.recent and self.recent[0][0] <= now - window:
            self.recent.popleft()
        if not self.recent or self.first is None:
            return 0.0
        span = max(min(window, now - self.first), MIN_SPAN_S)
        return sum(s for _, s in self.recent) / span


class TaskflowState:
    """Aggregates ``taskflow.*`` events plus scheduler and plugin state into snapshots.

    Parameters
    ----------
    scheduler : distributed.Scheduler, optional
        Read for worker state, Dask task durations and ``plugins["taskflow"].metrics()``.
    window : float
        Seconds over which samples/s is measured.

    Examples
    --------
    >>> state = TaskflowState()
    >>> state.feed("taskflow.chunk", {"job": "j", "chunk": 0, "samples": 8, "seconds": 0.5,
    ...                               "worker": "tcp://w1"}, t=100.0)
    >>> state.tick(now=101.0)["workers"]["tcp://w1"]["samples"]
    8
    """

    def __init__(self, scheduler: Any = None, *, window: float = RATE_WINDOW_S):
        self.scheduler = scheduler
        self.window = window
        self.workers: dict[str, _Counts] = {}
        self.jobs: dict[str, _Counts] = {}
        self.job_msgs: dict[str, tuple[float, dict]] = {}  # job -> (arrival, last message)
        self.threads: dict[str, dict] = {}
        self.layer_seconds: dict[str, float] = {}
        self.layer_sampled = 0  # chunks timed node by node (telemetry.LayerSampler)
        self.events = dict.fromkeys(TOPICS, 0)
        self.ignored = 0  # malformed messages (counted, never raised: hooks must not fail)
        self.history: deque[tuple[float, float, dict[str, float]]] = deque(maxlen=HISTORY_POINTS)
        self.snapshots: deque[dict] = deque(maxlen=SNAPSHOTS_KEPT)
        self.ticks = 0

    # --- input ----------------------------------------------------------------------------------
    def replay(self, scheduler: Any) -> int:
        """Feed the events the scheduler still holds (attach mid-job); returns how many."""
        n = 0
        for topic in TOPICS:
            for t, msg in scheduler.get_events(topic):
                self.feed(topic, msg, t=t)
                n += 1
        return n

    def feed(self, topic: str, msg: Any, t: float | None = None) -> None:
        """Take one event (the scheduler plugin ``log_event`` hook calls this)."""
        if topic not in self.events:
            return
        t = time.time() if t is None else t
        try:
            if topic == CHUNK_TOPIC:
                self._chunk(msg, t)
            elif topic == JOB_TOPIC:
                self._job(msg, t)
            elif topic == THREADS_TOPIC:
                self.threads[str(msg["worker"])] = dict(msg)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.ignored += 1
            return
        self.events[topic] += 1

    def _chunk(self, msg: dict, t: float) -> None:
        worker, job = str(msg.get("worker", "?")), str(msg["job"])
        samples, seconds = int(msg["samples"]), float(msg["seconds"])
        layers = {str(k): float(v) for k, v in (msg.get("layer_seconds") or {}).items()}
        self.workers.setdefault(worker, _Counts()).add(t, samples, seconds)
        self._job_counts(job).add(t, samples, seconds)
        for layer, spent in layers.items():
            self.layer_seconds[layer] = self.layer_seconds.get(layer, 0.0) + spent
        self.layer_sampled += int(msg.get("sampled") or 0)

    def _job(self, msg: dict, t: float) -> None:
        clean: dict[str, Any] = {k: int(msg.get(k) or 0) for k in _JOB_COUNTS}
        clean.update(total=int(msg["total"]), done=int(msg["done"]),  # required
                     state=str(msg.get("state", "running")),
                     started=float(msg.get("started", t)), t=float(msg.get("t", t)))
        for key in ("reason", "name"):
            if msg.get(key):
                clean[key] = str(msg[key])
        job = str(msg["job"])
        self._job_counts(job)
        self.job_msgs[job] = (t, clean)

    def _job_counts(self, job: str) -> _Counts:
        counts = self.jobs.get(job)
        if counts is None:
            counts = self.jobs[job] = _Counts()
            while len(self.jobs) > MAX_JOBS:  # drop the oldest finished job, else the oldest
                victim = next((j for j in self.jobs if j != job and self.job_msgs.get(
                    j, (0, {}))[1].get("state") in FINISHED), next(iter(self.jobs)))
                self.jobs.pop(victim)
                self.job_msgs.pop(victim, None)
        return counts

    def _prune_workers(self, live: Any) -> None:
        gone = [w for w in {**self.workers, **self.threads} if w not in live]
        for w in gone[:max(0, len(gone) - MAX_GONE_WORKERS)]:  # oldest first (dict order)
            self.workers.pop(w, None)
            self.threads.pop(w, None)

    # --- output ---------------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> dict[str, Any]:
        """Take a snapshot, add a point to the throughput history; returns the snapshot."""
        now = time.time() if now is None else now
        self.ticks += 1
        snap = self.snapshot(now)
        rates = {w: d["samples_per_s"] for w, d in snap["workers"].items() if d["present"]
                 or d["samples_per_s"] > 0}
        self.history.append((now, snap["throughput"]["samples_per_s"], rates))
        snap["throughput"]["history"] = self.history_columns()
        self.snapshots.append(snap)
        return snap

    @property
    def latest(self) -> dict[str, Any] | None:
        return self.snapshots[-1] if self.snapshots else None

    def find(self, tick: int) -> dict[str, Any] | None:
        return next((s for s in self.snapshots if s["tick"] == tick), None)

    def history_columns(self) -> dict[str, Any]:
        """``{"t": [...], "total": [...], "workers": {addr: {"t": [...], "rate": [...]}}}``."""
        workers: dict[str, dict[str, list]] = {}
        for t, _, rates in self.history:
            for w, r in rates.items():
                col = workers.setdefault(w, {"t": [], "rate": []})
                col["t"].append(t)
                col["rate"].append(r)
        return {"t": [h[0] for h in self.history], "total": [h[1] for h in self.history],
                "workers": workers}

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """The figures as one JSON-able dict.

        Keys: ``tick``, ``time``; ``throughput`` (``samples_per_s`` over ``window_s``,
        ``samples``, and ``history`` after :meth:`tick`); ``queue`` (tasks ``queued`` on the
        scheduler, ``no_worker``, ``processing`` on workers); ``workers`` (per address: scheduler
        state ``present``, ``name``, ``device``, ``nthreads``, ``memory``, ``memory_limit``,
        ``processing``, ``status``; telemetry ``samples``, ``chunks``, ``samples_per_s``,
        ``samples_per_busy_s``; ``threads``: the worker's thread report); ``layers``
        (``source``: ``"events"``, ``"dask-tasks"`` or None; ``seconds`` and ``share`` per layer;
        ``sampled``: chunks timed node by node, see ``telemetry.LayerSampler``);
        ``jobs`` (per job id: ``name`` (the id when the job sent none), ``total``, ``done``,
        ``in_flight``, ``failed``, ``quarantined``, ``remaining``, ``state`` (``"abandoned"``:
        its client went away; finished ones are in ``FINISHED``), ``reason``,
        ``eta_s``, ``started``, ``elapsed_s`` (to its last message, on the client's clock),
        ``samples``, ``chunks_reported``, ``samples_per_s``); ``policies``
        (``plugin``: whether the taskflow scheduler plugin is there, ``by_policy``: applied /
        rejected / suggestions / errors per policy);
        ``scheduler_plugin`` (its whole ``metrics()``, or None); ``events`` (counts by topic).
        """
        now = time.time() if now is None else now
        workers = self._workers(now)
        plugin_metrics = self._plugin_metrics()
        return {
            "tick": self.ticks, "time": now,
            "throughput": {"window_s": self.window, "samples": sum(
                c.samples for c in self.workers.values()),
                "samples_per_s": sum(w["samples_per_s"] for w in workers.values())},
            "queue": {"queued": len(getattr(self.scheduler, "queued", ())),
                      "no_worker": len(getattr(self.scheduler, "unrunnable", ())),
                      "processing": sum(w["processing"] for w in workers.values())},
            "workers": workers, "layers": self._layers(), "jobs": self._jobs(now),
            "policies": self._policies(plugin_metrics), "scheduler_plugin": plugin_metrics,
            "events": {**self.events, "ignored": self.ignored},
        }

    def _workers(self, now: float) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        live = getattr(self.scheduler, "workers", {}) or {}
        self._prune_workers(live)
        for addr, ws in list(live.items()):
            resources = dict(getattr(ws, "resources", {}) or {})
            memory = getattr(ws, "memory", None)
            out[addr] = {
                "present": True, "name": str(ws.name), "nthreads": ws.nthreads,
                "device": "gpu" if resources.get("GPU", 0) > 0 else "cpu",
                "resources": resources, "memory": getattr(memory, "process", None),
                "memory_limit": ws.memory_limit, "processing": len(ws.processing),
                "status": getattr(ws.status, "name", str(ws.status))}
        for addr in set(self.workers) | set(self.threads):
            out.setdefault(addr, {"present": False, "name": addr, "nthreads": None,
                                  "device": None, "resources": {}, "memory": None,
                                  "memory_limit": None, "processing": 0, "status": "gone"})
        for addr, w in out.items():
            c = self.workers.get(addr) or _Counts()
            w.update(samples=c.samples, chunks=c.chunks, samples_per_s=c.rate(now, self.window),
                     samples_per_busy_s=c.samples / c.seconds if c.seconds > 0 else None,
                     threads=self.threads.get(addr))
        return out

    def _layers(self) -> dict[str, Any]:
        seconds, source = dict(self.layer_seconds), "events" if self.layer_seconds else None
        if not seconds:  # fall back to Dask's own compute time per key prefix tf-<layer>
            prefixes = getattr(self.scheduler, "task_prefixes", {}) or {}
            for name, prefix in list(prefixes.items()):
                layer = layer_of(str(name))
                spent = prefix.all_durations.get("compute", 0.0) if layer else 0.0
                if spent > 0:
                    seconds[layer] = seconds.get(layer, 0.0) + spent
            source = "dask-tasks" if seconds else None
        total = sum(seconds.values())
        return {"source": source, "seconds": seconds, "sampled": self.layer_sampled,
                "share": {k: v / total for k, v in seconds.items()} if total > 0 else {}}

    def _jobs(self, now: float) -> dict[str, dict[str, Any]]:
        out = {}
        for job, c in self.jobs.items():
            arrival, msg = self.job_msgs.get(job, (None, {}))
            total = msg.get("total")
            done = msg.get("done", c.chunks)
            failed, quarantined = msg.get("failed", 0), msg.get("quarantined", 0)
            remaining = max(0, total - done - failed - quarantined) if total is not None else None
            elapsed = msg["t"] - msg["started"] if msg else None  # both on the client's clock
            eta = None
            if remaining == 0:
                eta = 0.0
            elif remaining and msg.get("state") == "running" and done > 0 and elapsed > 0:
                eta = max(0.0, remaining * elapsed / done - (now - arrival))
            out[job] = {"name": msg.get("name") or job,
                        "total": total, "done": done, "in_flight": msg.get("in_flight", 0),
                        "failed": failed, "quarantined": quarantined, "remaining": remaining,
                        "state": msg.get("state", "unknown"), "reason": msg.get("reason"),
                        "started": msg.get("started"), "elapsed_s": elapsed,
                        "eta_s": eta, "samples": c.samples, "chunks_reported": c.chunks,
                        "samples_per_s": c.rate(now, self.window)}
        return out

    def _plugin_metrics(self) -> dict[str, Any] | None:
        plugins = getattr(self.scheduler, "plugins", {}) or {}
        metrics = getattr(plugins.get(SCHEDULER_PLUGIN), "metrics", None)
        if not callable(metrics):
            return None
        try:
            result = metrics()
        except Exception as exc:  # a plugin bug must not take the page down; show it instead
            return {"error": repr(exc)}
        return result if isinstance(result, dict) else {"value": result}

    @staticmethod
    def _policies(metrics: dict[str, Any] | None) -> dict[str, Any]:
        by_policy = {}
        for name, m in ((metrics or {}).get("policies") or {}).items():
            if isinstance(m, dict):
                by_policy[str(name)] = {k: int(m.get(k, 0) or 0) for k in
                                        ("applied", "rejected", "suggestions", "errors")}
        return {"plugin": metrics is not None, "by_policy": by_policy,
                "error": (metrics or {}).get("error")}
