"""``Cluster`` on real LocalClusters: kernel threads per plan on every worker, attach, close."""

from __future__ import annotations

import multiprocessing
import os
import threading
from urllib.parse import urlparse
from urllib.request import urlopen

import psutil
import pytest
from distributed import Client, LocalCluster, SchedulerPlugin

from taskflow import schedulers
from taskflow.dask import threads
from taskflow.dask.cluster import Cluster
from taskflow.dask.threads import ThreadBudgetError, detect_cores
from taskflow.errors import TaskflowError

CORES = detect_cores().cores
needs_two_cores = pytest.mark.skipif(CORES < 2, reason="needs 2 usable cores")


def task_report() -> dict:
    """What a task sees on its worker's executor thread (not the event-loop thread)."""
    report = threads.kernel_thread_report()
    report["thread"] = threading.current_thread().name
    return report


def reports_from_tasks(client: Client) -> dict[str, dict]:
    futures = {w: client.submit(task_report, workers=[w], pure=False)
               for w in client.scheduler_info()["workers"]}
    return {w: f.result() for w, f in futures.items()}


def assert_kernel_threads(report: dict, k: int) -> None:
    assert report["numba"] == k, report
    assert report["threadpools"] and all(t["num_threads"] == k for t in report["threadpools"])
    assert all(report["env"][v] == str(k) for v in threads.KERNEL_ENV_VARS), report


def _heartbeat_noise_dropped() -> tuple[bool, bool, bool]:
    """On a worker: (is the shutdown-race heartbeat record dropped, is the same message with
    another error dropped, is a CommClosedError with another message dropped)."""
    import logging

    from distributed.comm import CommClosedError

    logger = logging.getLogger("distributed.worker")

    def dropped(msg: str, exc: BaseException) -> bool:
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, msg, (),
                                   (type(exc), exc, None))
        return not logger.filter(record)

    msg = "Failed to communicate with scheduler during heartbeat."
    return (dropped(msg, CommClosedError("in <TCP (closed)>: Stream is closed")),
            dropped(msg, OSError("disk")),
            dropped("Unexpected exception during heartbeat.", CommClosedError("x")))


def listening_ips(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process().net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


@needs_two_cores
@pytest.mark.timeout(120)
def test_embedded_cluster_applies_plan_and_closes_everything(capsys):
    with Cluster(n_workers=2, threads_per_worker=1) as cluster:
        client = cluster.client
        plan = cluster.plan
        assert (plan.workers, plan.threads_per_worker, plan.kernel_threads) == (2, 1, 1)
        assert plan.total_threads <= CORES == plan.cores
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2 and all(w["nthreads"] == 1 for w in workers.values())

        for report in cluster.thread_reports().values():       # set by the plugin
            assert_kernel_threads(report, 1)
            assert report["numba_pool"] == 1
        for report in reports_from_tasks(client).values():    # seen where kernels run
            assert_kernel_threads(report, 1)
            assert "Dask" in report["thread"]

        out = capsys.readouterr().out.splitlines()
        assert len(out) == 1 and cluster.dashboard_link in out[0]
        assert "2 workers x 1 thread x 1 kernel thread on" in out[0]
        url = urlparse(cluster.dashboard_link)
        assert url.hostname == "127.0.0.1"
        assert listening_ips(url.port) == {"127.0.0.1"}
        assert urlopen(cluster.dashboard_link, timeout=10).status == 200
        pids = set(client.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids
        # closing races the workers' heartbeats: that traceback is dropped, nothing else
        assert set(client.run(_heartbeat_noise_dropped).values()) == {(True, False, False)}

    assert client.status == "closed"
    assert multiprocessing.active_children() == []
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    assert listening_ips(url.port) == set()


@needs_two_cores
@pytest.mark.timeout(120)
def test_kernel_threads_other_than_the_default_reach_task_threads():
    # 1 x 1 x 2: differs from Dask's own OMP_NUM_THREADS=1, so passing shows the plan applied
    with Cluster(n_workers=1, kernel_threads=2, quiet=True) as cluster:
        assert cluster.plan.total_threads == 2 <= CORES
        (report,) = cluster.thread_reports().values()
        assert_kernel_threads(report, 2)
        assert report["numba_pool"] == 2
        (report,) = reports_from_tasks(cluster.client).values()
        assert_kernel_threads(report, 2)


@pytest.mark.timeout(60)
def test_over_budget_is_refused_before_starting_anything():
    before = multiprocessing.active_children()
    with pytest.raises(ThreadBudgetError, match=f"> {CORES} usable cores"):
        Cluster(n_workers=CORES + 1, threads_per_worker=1, kernel_threads=1)
    assert multiprocessing.active_children() == before


class RecordingSchedulerPlugin(SchedulerPlugin):
    name = "taskflow-test-scheduler"

    async def start(self, scheduler, **kwargs):
        scheduler.taskflow_test_started = True


@pytest.mark.timeout(120)
def test_scheduler_plugin_is_registered_once_it_exists(monkeypatch):
    env_before = os.environ.get("OMP_NUM_THREADS")
    monkeypatch.setattr(schedulers, "TaskflowSchedulerPlugin",
                        RecordingSchedulerPlugin, raising=False)
    with Cluster(n_workers=1, threads_per_worker=1, kernel_threads=1, processes=False,
                 quiet=True) as cluster:
        names = cluster.client.run_on_scheduler(lambda dask_scheduler: [*dask_scheduler.plugins])
        assert RecordingSchedulerPlugin.name in names
        (report,) = cluster.thread_reports().values()
        assert report["kernel_threads"] == 1
        assert os.environ.get("OMP_NUM_THREADS") == "1"
    # in-process workers set this process's kernel threads; closing puts them back
    assert os.environ.get("OMP_NUM_THREADS") == env_before
    assert threads._KERNEL_THREADS is None


@pytest.mark.timeout(120)
def test_attach_to_running_cluster_leaves_it_running(capsys):
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as existing:
        with pytest.raises(TaskflowError, match="sized where it was started"):
            Cluster(existing.scheduler_address, n_workers=2)

        with Cluster(existing.scheduler_address) as cluster:
            assert cluster.plan.workers == 1 and cluster.plan.threads_per_worker == 1
            # its one thread may use every other core of its host for kernels
            k = cluster.plan.kernel_threads
            assert k == max(1, CORES) and cluster.plan.total_threads <= CORES
            (report,) = cluster.thread_reports().values()
            assert report["kernel_threads"] == k
            (report,) = reports_from_tasks(cluster.client).values()
            assert_kernel_threads(report, k)
            assert cluster.client.submit(sum, [1, 2], pure=False).result() == 3
            assert cluster.dashboard_link == existing.dashboard_link
            assert existing.scheduler_address in cluster.plan.source
        assert cluster.dashboard_link in capsys.readouterr().out

        assert existing.status.name == "running"
        assert len(existing.scheduler.workers) == 1
        with Client(existing) as client:
            assert client.submit(sum, [3, 4], pure=False).result() == 7


@needs_two_cores
@pytest.mark.timeout(120)
def test_threads_auto_measures_then_sizes_the_cluster():
    import numpy as np

    from .test_threads import FakeModel

    with pytest.raises(TaskflowError, match="needs tune="):
        Cluster(threads="auto")
    sample = np.ones((8, 64), np.float32)
    with Cluster(threads="auto", tune=(FakeModel(), sample), processes=False,
                 quiet=True) as cluster:
        plan = cluster.plan
        assert len(plan.measured) >= 2 and plan.total_threads <= CORES
        workers = cluster.client.scheduler_info()["workers"].values()
        assert len(workers) == plan.workers
        assert {w["nthreads"] for w in workers} == {plan.threads_per_worker}
