"""Job leases: a streamed job's worker plugin goes when its client does.

docs/architecture.md, decision 9 (Streaming). :func:`taskflow.infer_zarr` registers a
``taskflow-job-<token>`` worker plugin on the cluster for the job's duration and removes it when
the job ends, fails or is interrupted. A client that is killed (SIGKILL, OOM killer, a lost
laptop) never gets to: its plugin would stay registered on a shared scheduler forever and its job
would show "running" on ``/taskflow`` and ``/metrics``. The lease is the scheduler's side of the
job: :class:`JobLeasePlugin` learns of every job from the ``taskflow.job`` events its client
sends (which carry the client id and the plugin name), and ends the lease of a job whose client

- disconnects (Dask's ``remove_client`` hook: a killed process closes its sockets at once), or
- stops heartbeating for ``timeout`` seconds while its connection stays half-open (a network
  partition; Dask clients heartbeat every few seconds whether or not they compute).

Ending a lease removes the worker plugin, and logs one more ``taskflow.job`` event with state
``"abandoned"``, which the dashboard shows. The job's tasks need no cleanup: Dask releases the
keys a departed client wanted, and a resumed job recomputes the chunks they did not finish.

The plugin must be importable on the scheduler (a taskflow install there). Where it is not,
:func:`install` warns once and jobs run without a lease, as they did before it existed.
"""

from __future__ import annotations

import asyncio
import time
import warnings
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from taskflow.dashboard.telemetry import JOB_TOPIC, SCHEMA_VERSION

#: Name of the lease plugin on the scheduler (one per cluster, shared by all jobs).
LEASE_PLUGIN = "taskflow-job-leases"
#: Seconds without a client heartbeat before its jobs are abandoned. Dask clients heartbeat
#: every 5 s (``distributed.client.heartbeat``) even while they wait on a long task, so 60 s is
#: twelve missed beats: a client that busy is not coming back, and a partition that short heals.
LEASE_TIMEOUT_S = 60.0
#: How often the scheduler looks for expired leases.
CHECK_INTERVAL_S = 2.0
#: States in which a job holds no lease (its client removed the plugin itself).
ENDED = frozenset({"done", "failed", "interrupted", "cancelled", "error", "abandoned"})


class JobLeasePlugin(SchedulerPlugin):
    """Removes the worker plugin of a job whose client is gone; see the module docstring.

    Parameters
    ----------
    timeout : float
        Seconds without a heartbeat from a job's client before the job is abandoned.

    Examples
    --------
    >>> install(client)                                  # doctest: +SKIP
    >>> client.run_on_scheduler(leases)                  # doctest: +SKIP
    {'a1b2c3d4e5f6': {'client': 'Client-…', 'plugin': 'taskflow-job-a1b2c3d4e5f6', ...}}
    """

    name = LEASE_PLUGIN
    idempotent = True

    def __init__(self, timeout: float = LEASE_TIMEOUT_S):
        self.timeout = float(timeout)
        self.jobs: dict[str, dict[str, Any]] = {}  # token -> last job message with a lease
        self.abandoned: dict[str, str] = {}  # token -> plugin name, to catch a late register
        self.scheduler: Any = None
        self._callback: Any = None

    async def start(self, scheduler: Any) -> None:
        from tornado.ioloop import PeriodicCallback

        self.scheduler = scheduler
        self._callback = PeriodicCallback(self.check, CHECK_INTERVAL_S * 1000)
        self._callback.start()

    async def close(self, **kwargs: Any) -> None:
        if self._callback is not None:
            self._callback.stop()

    def log_event(self, topic: str, msg: Any, **kwargs: Any) -> None:
        if topic != JOB_TOPIC or not isinstance(msg, dict) or not msg.get("plugin"):
            return
        token = str(msg.get("job"))
        if msg.get("client") and token not in self.abandoned:
            # an ended job keeps its lease until its client has removed the plugin: a client
            # killed between its last event and that removal still leaves nothing behind
            self.jobs[token] = dict(msg)

    def remove_client(self, scheduler: Any = None, client: str | None = None,
                      **kwargs: Any) -> None:
        for token, msg in list(self.jobs.items()):
            if msg.get("client") == client:
                self.abandon(token, f"its client {client} disconnected")

    def check(self) -> None:
        """End the leases of jobs whose client is gone or silent for ``timeout`` s, and of
        ended jobs whose plugin is gone; remove any plugin of an abandoned job that was
        registered after its lease ended."""
        clients = getattr(self.scheduler, "clients", {})
        plugins = getattr(self.scheduler, "worker_plugins", {})
        now = time.time()
        for token, msg in list(self.jobs.items()):
            cs = clients.get(msg.get("client"))
            if msg.get("state") in ENDED and msg["plugin"] not in plugins:
                del self.jobs[token]  # a job that ended and cleaned up after itself
            elif cs is None:
                self.abandon(token, f"its client {msg.get('client')} is not connected")
            elif now - cs.last_seen > self.timeout:
                self.abandon(token, f"its client {msg.get('client')} sent no heartbeat for "
                                    f"{now - cs.last_seen:.0f} s (lease {self.timeout:.0f} s)")
        for name in list(self.abandoned.values()):
            if name in plugins:
                self._unregister(name)

    def abandon(self, token: str, why: str) -> None:
        """Remove the job's worker plugin; a job that had not ended is marked abandoned."""
        msg = self.jobs.pop(token, None)
        if msg is None:
            return
        if msg.get("state") in ENDED:  # it ended; its client died before removing the plugin
            self._unregister(msg["plugin"])
            return
        self.abandoned[token] = msg["plugin"]
        while len(self.abandoned) > 256:  # a bounded memory of late registrations to catch
            self.abandoned.pop(next(iter(self.abandoned)))
        self._unregister(msg["plugin"])
        if self.scheduler is not None:
            self.scheduler.log_event(JOB_TOPIC, {
                **msg, "v": SCHEMA_VERSION, "state": "abandoned", "in_flight": 0,
                "reason": why, "t": time.time()})

    def _unregister(self, name: str) -> None:
        scheduler = self.scheduler
        if scheduler is None or name not in scheduler.worker_plugins:
            return

        async def remove() -> None:
            try:
                await scheduler.unregister_worker_plugin(comm=None, name=name)
            except (ValueError, OSError):  # removed meanwhile, or a worker left mid-broadcast
                pass

        asyncio.ensure_future(remove())


async def _install(dask_scheduler: Any = None, timeout: float = LEASE_TIMEOUT_S) -> bool:
    if LEASE_PLUGIN in dask_scheduler.plugins:
        return False
    plugin = JobLeasePlugin(timeout)
    dask_scheduler.add_plugin(plugin, name=LEASE_PLUGIN)
    await plugin.start(dask_scheduler)
    return True


def install(client: Any, timeout: float = LEASE_TIMEOUT_S) -> bool:
    """Put a :class:`JobLeasePlugin` on ``client``'s scheduler unless one is there; returns
    whether leases work there (False, with one warning, where the scheduler cannot import
    taskflow)."""
    try:
        client.run_on_scheduler(_install, timeout=timeout)
        return True
    except (ImportError, AttributeError, TypeError) as exc:
        warnings.warn(
            f"the scheduler cannot run taskflow's job lease ({type(exc).__name__}: {exc}); a "
            "job whose client is killed will leave its worker plugin registered there. Install "
            "taskflow where the scheduler runs to have such jobs cleaned up", stacklevel=3)
        return False


def leases(dask_scheduler: Any = None) -> dict[str, dict[str, Any]]:
    """The jobs holding a lease on ``dask_scheduler`` (``client.run_on_scheduler(leases)``)."""
    plugin = dask_scheduler.plugins.get(LEASE_PLUGIN)
    return {} if plugin is None else {k: dict(v) for k, v in plugin.jobs.items()}
