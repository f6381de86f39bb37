"""taskflow's scheduler plugin and policies (installed as ``taskflow.schedulers``).

:class:`TaskflowSchedulerPlugin` runs an ordered list of policies on the Dask scheduler. A
policy reads a read-only :class:`Snapshot` and yields suggestions; the plugin applies them,
rejects them with a logged reason, and counts both (``metrics()``, also served to clients as
``client.scheduler.taskflow_metrics()``, see :func:`metrics`).

========================  ==============================================================  =====
policy                    what it does                                                    on
========================  ==============================================================  =====
``job-priority``          a job's class (interactive/normal/bulk) reaches all its tasks,  yes
                          with aging so bulk work is never starved
``resources``             GPU tasks run only on workers declaring resource ``GPU``        yes
``locality``              tasks reading weights run where the weights are; pinned         yes
``throughput-balancer``   per-worker rates; places big groups of ready chunks by rate     yes
                          and moves queued tasks off the worker that will finish last
``critical-path``         upward-rank order from measured costs or FLOPs annotations      no
========================  ==============================================================  =====

The default set (Dask config ``taskflow.scheduler.policies``, file ``taskflow.yaml``) is what
``benchmarks/bench_scheduler.py`` showed (2-core shared machine, sleeping tasks, medians of 5):

- unequal workers (2 x 2 threads, one 3x slower; ideal = work / sum of rates): data-parallel
  1.06x ideal against 1.09x for Dask's best configuration (worker-saturation 1.0, stealing
  every 100 ms) and 1.22x for Dask's default; over a persisted input 1.08x against 1.23x and
  1.66x; a 2-stage pipeline per chunk ties with Dask's best (1.12x both).
- an interactive job beside a streaming bulk backfill: 1.5x its latency alone (2.4x without
  priorities), the backfill finishing 12 % sooner. Dask's own ``priority=10`` gets 1.3x: its
  stream leaves idle gaps the interactive job slips into.
- homogeneous cluster: no measurable throughput loss; the hook takes 30-45 ms for a
  10,000-task graph.
- ``critical-path`` is off: on branch-parallel graphs it gained 2-5 % on two shapes and lost 8 %
  on a third against ``dask.order``, which needs no costs and also keeps memory low.

Usage: a scheduler you start yourself loads it with ``dask scheduler --preload
taskflow.schedulers`` (policies from its Dask config); ``taskflow.Cluster`` registers it
(``Cluster(policies=[...])``); ``taskflow run --policy`` maps names with
:func:`policies_from_names`. Importing this package is light (no Dask, no distributed).

Examples
--------
>>> from taskflow.schedulers import job, policies_from_names          # doctest: +SKIP
>>> with job("ask-42", priority="interactive"):                       # doctest: +SKIP
...     answer = client.compute(model.predict(images))
"""

from __future__ import annotations

import uuid
from typing import Any

_LAZY = {
    "TaskflowSchedulerPlugin": "plugin",
    "Policy": "policies", "JobPriority": "policies", "CriticalPath": "policies",
    "Locality": "policies", "Resources": "policies", "ThroughputBalancer": "balancer",
    "POLICIES": "policies", "policies_from_names": "policies", "configured_names": "policies",
    "Snapshot": "snapshot", "TaskView": "snapshot", "WorkerView": "snapshot",
    "SetPriority": "snapshot", "Pin": "snapshot", "Unpin": "snapshot", "Require": "snapshot",
    "Place": "snapshot",
    "Move": "snapshot",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dask_setup(scheduler: Any) -> None:
    """``--preload`` entry point: register the plugin with the configured policies, and the
    ``/taskflow`` dashboard page that shows what it decides.

    Preloaded into anything but a scheduler (``dask worker --preload ...``) it does nothing.

    Parameters
    ----------
    scheduler : distributed.Scheduler
        The scheduler being started (Dask passes it).

    Examples
    --------
    Dask calls it when the module is preloaded; the policies come from the Dask config:

    .. code-block:: bash

       DASK_TASKFLOW__SCHEDULER__POLICIES='["job-priority", "locality"]' \\
           dask scheduler --preload taskflow.schedulers

    or, for a ``LocalCluster`` of your own:

    >>> from distributed import Client, LocalCluster                  # doctest: +SKIP
    >>> cluster = LocalCluster(scheduler_kwargs={"preload": ["taskflow.schedulers"]})
    ... # doctest: +SKIP
    >>> Client(cluster).run_on_scheduler(
    ...     lambda dask_scheduler: dask_scheduler.plugins["taskflow"].policies)  # doctest: +SKIP
    [JobPriority(), Resources(), Locality(), ThroughputBalancer()]
    """
    from distributed import Scheduler

    from .plugin import TaskflowSchedulerPlugin

    if isinstance(scheduler, Scheduler):
        scheduler.add_plugin(TaskflowSchedulerPlugin(), name=TaskflowSchedulerPlugin.name,
                             idempotent=True)
        from taskflow.dashboard.extension import dask_setup as attach_dashboard_page

        attach_dashboard_page(scheduler)


def job(name: str | None = None, priority: str | int = "interactive", *,
        device: str | None = None, flops: dict[str, float] | None = None):
    """Context manager: what is computed inside is one job with this priority class.

    Sets Dask annotations (``taskflow_job``, ``taskflow_priority`` and, if given,
    ``taskflow_device``, ``taskflow_flops``). Dask sends the annotations active at
    ``compute``/``submit``/``persist`` time with every task of the submission, including tasks
    made by graph optimisation (which drops layer annotations); the ``JobPriority``,
    ``Resources`` and ``CriticalPath`` policies read them on the scheduler.

    Parameters
    ----------
    name : str, optional
        Job id (default: a new one); submissions under the same name are one job in metrics.
    priority : str or int
        A class of ``taskflow.scheduler.job-priority.classes`` (``interactive``, ``normal``,
        ``bulk``) or a number on the same scale.
    device : str, optional
        ``"gpu"``: the tasks need a worker declaring resource ``GPU``.
    flops : dict, optional
        FLOPs per task by key kind (``{"tf-conv1": 2.3e8}``) for ``CriticalPath``.

    Examples
    --------
    >>> with job("backfill", priority="bulk"):                        # doctest: +SKIP
    ...     client.compute(model.predict(archive))
    """
    import dask

    ann: dict[str, Any] = {"taskflow_job": name or f"job-{uuid.uuid4().hex[:8]}",
                           "taskflow_priority": priority}
    if device is not None:
        ann["taskflow_device"] = device
    if flops is not None:
        ann["taskflow_flops"] = dict(flops)
    return dask.annotate(**ann)


def metrics(client: Any) -> dict[str, Any]:
    """The plugin's :meth:`~TaskflowSchedulerPlugin.metrics` from a ``distributed.Client``.

    Parameters
    ----------
    client : distributed.Client
        A client of a cluster whose scheduler runs :class:`TaskflowSchedulerPlugin`.

    Returns
    -------
    dict
        Per policy counts, per worker rates and queues, jobs, moves (empty without the plugin).

    Examples
    --------
    >>> import taskflow as tf                                         # doctest: +SKIP
    >>> from taskflow.schedulers import metrics
    >>> with tf.Cluster(policies=["job-priority"]) as cluster:        # doctest: +SKIP
    ...     cluster.client.compute(model.predict(x)).result()
    ...     print(metrics(cluster.client)["policies"]["job-priority"]["applied"])
    """
    return client.sync(client.scheduler.taskflow_metrics)


__all__ = sorted([*_LAZY, "dask_setup", "job", "metrics"])
