"""The plugin on real clusters: in-process ``gen_cluster`` ones, a ``taskflow.Cluster``, and a
``dask scheduler --preload taskflow.schedulers`` subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import dask.array as da
import pytest
from dask.base import tokenize
from distributed import Client, get_worker, wait
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils_test import async_poll_for, gen_cluster
from taskflow.schedulers import (
    Locality,
    TaskflowSchedulerPlugin,
    ThroughputBalancer,
    job,
    metrics,
)
from taskflow.schedulers.plugin import KeepWeightReplicas

pytestmark = pytest.mark.timeout(60)
LOCAL = "127.0.0.1"


def nap(x, cost=0.0):
    time.sleep(cost * getattr(get_worker(), "_tf_slow", 1.0))
    return x


def layer(x, weight, cost=0.0):
    return nap(x, cost)


class PriorityRecorder(SchedulerPlugin):
    """Records each task's priority as it leaves the scheduler for a worker or the queue."""

    def __init__(self, scheduler):
        self.scheduler, self.seen, self.restrictions = scheduler, {}, {}

    def transition(self, key, start, finish, *args, **kwargs):
        if finish in ("processing", "queued"):
            ts = self.scheduler.tasks[key]
            self.seen.setdefault(key, ts.priority)
            self.restrictions.setdefault(key, ts.worker_restrictions)


async def use(c, s, policies, **kw):
    await c.register_plugin(TaskflowSchedulerPlugin(policies, replace=True, **kw))
    return s.plugins["taskflow"]


@gen_cluster(client=True, nthreads=[(LOCAL, 1)] * 2)
async def test_job_priority_reaches_every_task_of_an_optimised_array_graph(c, s, a, b):
    plugin = await use(c, s, ["job-priority"])
    recorder = PriorityRecorder(s)
    s.add_plugin(recorder, name="recorder")
    x = da.ones((40, 4), chunks=(4, 4))
    y = ((x + 1) * 2).sum()  # blockwise fusion and a tree reduction: new keys, no annotations
    with job("ask", "interactive"):
        assert await c.compute(y) == 40 * 4 * 4
    n = len(recorder.seen)  # the class (minus aging) takes the place of Dask's generation
    assert n >= 11 and all(p[0] == 0 and -100 <= p[1] < -99 for p in recorder.seen.values())
    assert plugin.counts["job-priority"]["applied"] == n
    assert plugin.policies[0].jobs["ask"]["tasks"] == n
    recorder.seen.clear()
    assert await c.compute(y + 1) == 40 * 4 * 4 + 1  # untagged: the normal class
    assert all(0 <= p[1] < 10 for p in recorder.seen.values()), recorder.seen  # normal class
    recorder.seen.clear()
    with job("backfill", "bulk"):  # Dask's own priority= still goes first, as in Dask
        assert await c.compute((x * 3).sum(), priority=1) == 40 * 4 * 3
    assert recorder.seen and all(p[0] == -1 and 100 <= p[1] < 110
                                 for p in recorder.seen.values()), recorder.seen


@gen_cluster(client=True, nthreads=[(LOCAL, 2)] * 2,
             config={"distributed.scheduler.worker-saturation": 1.0})
async def test_balancer_moves_tasks_off_a_slow_worker(c, s, a, b):
    plugin = await use(c, s, [ThroughputBalancer(place=False)])
    b._tf_slow = 4.0
    tok = tokenize(time.time())
    await wait(c.map(nap, range(8), cost=0.05, key=[(f"tf-infer-{tok}", i) for i in range(8)]))
    seeds = [c.submit(nap, i, key=(f"tf-load-{tok}", i), workers=[(a, b)[i % 2].address])
             for i in range(40)]
    await wait(seeds)  # chunks already on both workers: Dask runs the work next to them
    tok = tokenize(tok)
    work = c.map(nap, seeds, cost=0.05, key=[(f"tf-infer-{tok}", i) for i in range(40)])
    await wait(work)
    on_fast = sum(s.tasks[f.key].who_has == {s.workers[a.address]} for f in work)
    assert plugin.moves["confirmed"] > 0 and on_fast >= 26  # the fast worker has 4x the rate
    rates = plugin.metrics()["workers"]
    assert rates[b.address]["seconds_per_task"]["tf-infer"] > \
        2 * rates[a.address]["seconds_per_task"]["tf-infer"]
    assert "stealing" not in s.periodic_callbacks  # paused while the balancer runs


@gen_cluster(client=True, nthreads=[(LOCAL, 1)] * 2)
async def test_data_parallel_chunks_are_placed_by_measured_rate(c, s, a, b):
    plugin = await use(c, s, [ThroughputBalancer(place=True)])
    b._tf_slow = 3.0
    x = da.ones((8, 4), chunks=(1, 4))
    await c.compute(x.map_blocks(nap, 0.02, dtype=float, name=f"tf-infer-{tokenize(1)}"))
    y = da.ones((48, 4), chunks=(1, 4)).map_blocks(nap, 0.02, dtype=float,
                                                   name=f"tf-infer-{tokenize(2)}")
    recorder = PriorityRecorder(s)
    s.add_plugin(recorder, name="recorder")
    await c.compute(y)
    placed = [r for k, r in recorder.restrictions.items() if "infer" in str(k)]
    on_fast = sum(r == {a.address} for r in placed)
    assert len(placed) == 48 and 30 <= on_fast <= 42  # 3:1 by rate
    assert plugin.counts["throughput-balancer"]["applied"] >= 48


@gen_cluster(client=True, nthreads=[(LOCAL, 1), (LOCAL, 1, {"resources": {"GPU": 1}})])
async def test_gpu_tasks_run_only_on_gpu_workers(c, s, cpu, gpu):
    await use(c, s, ["resources"])
    x = da.ones((40, 4), chunks=(4, 4)).map_blocks(nap, 0.01, dtype=float)
    with job("g", device="gpu"):
        futures = c.compute(x.to_delayed().ravel().tolist())
    await wait(futures)
    assert {w.address for f in futures for w in s.tasks[f.key].who_has} == {gpu.address}


@gen_cluster(client=True, nthreads=[(LOCAL, 1)] * 2,
             config={"distributed.scheduler.work-stealing-interval": "10ms"})
async def test_locality_pins_stage_tasks_next_to_their_weights(c, s, a, b):
    plugin = await use(c, s, [Locality()])
    tok = tokenize(time.time())
    w = c.submit(nap, 1, key=f"tf-weight-fc-{tok}", workers=[a.address])
    await w
    stage = c.map(layer, range(20), [w] * 20, key=[(f"tf-fc.s1-{tok}", i) for i in range(20)])
    await wait(stage)
    assert {ws.address for f in stage for ws in s.tasks[f.key].who_has} == {a.address}
    assert s.tasks[w.key].who_has == {s.workers[a.address]}  # the weight never moved
    # a weight computed beside its stage pins the stage when it lands
    w2 = c.submit(nap, 2, 0.1, key=f"tf-weight-fc2-{tok}", workers=[b.address])
    stage2 = c.map(layer, range(10), [w2] * 10, key=[(f"tf-fc2.s1-{tok}", i) for i in range(10)])
    await wait(stage2)
    assert {ws.address for f in stage2 for ws in s.tasks[f.key].who_has} == {b.address}
    assert plugin.counts["locality"]["applied"] == 30


@gen_cluster(client=True, nthreads=[(LOCAL, 1)] * 2)
async def test_pins_are_lifted_when_their_worker_is_lost(c, s, a, b):
    plugin = await use(c, s, [Locality()])
    tok = tokenize(time.time())
    w = c.submit(nap, 1, key=f"tf-weight-fc-{tok}", workers=[a.address],
                 allow_other_workers=True)
    await w
    stage = c.map(layer, range(6), [w] * 6, cost=0.1, key=[(f"tf-fc-{tok}", i) for i in range(6)])
    await async_poll_for(lambda: len(plugin._pins) == 6 and a.state.executing_count, 5)
    await a.close()
    await wait(stage)  # the weight is recomputed on b and the stage follows it there
    assert {ws.address for f in stage for ws in s.tasks[f.key].who_has} == {b.address}
    assert plugin.counts["locality"]["applied"] >= 6 + 1 and not plugin._pins


@pytest.mark.filterwarnings("ignore:Scheduler already contains a plugin:UserWarning")
@gen_cluster(client=True, nthreads=[(LOCAL, 1)] * 2)
async def test_replaced_or_removed_plugin_cleans_up(c, s, a, b):
    amm = s.extensions["amm"].policies
    (dasks,) = amm
    first = await use(c, s, [ThroughputBalancer()])
    (keeper,) = amm  # Dask's ReduceReplicas swapped for one that keeps weights replicated
    assert isinstance(keeper, KeepWeightReplicas) and keeper.replaced is dasks
    await async_poll_for(lambda: "stealing" not in s.periodic_callbacks, 5)
    assert first._pc_name in s.periodic_callbacks
    second = await use(c, s, [ThroughputBalancer()])
    assert second is not first
    await async_poll_for(lambda: first._pc_name not in s.periodic_callbacks, 5)
    assert first.scheduler is None and s.handlers["taskflow_metrics"].__self__ is second
    assert "stealing" not in s.periodic_callbacks  # the successor still wants it paused
    assert amm == {keeper}  # adopted, not swapped twice
    await c.register_plugin(TaskflowSchedulerPlugin())  # idempotent: keeps the one there
    assert s.plugins["taskflow"] is second
    await c.unregister_scheduler_plugin("taskflow")
    await async_poll_for(lambda: second._pc_name not in s.periodic_callbacks, 5)
    await async_poll_for(lambda: "stealing" in s.periodic_callbacks, 5)  # Dask's is back
    assert "taskflow_metrics" not in s.handlers
    s.extensions["amm"].run_once()  # the keeper sees no plugin left and puts Dask's back
    assert amm == {dasks}
    third = await use(c, s, [ThroughputBalancer()])
    await third.close()
    assert third._pc_name not in s.periodic_callbacks


@gen_cluster(client=True, nthreads=[(LOCAL, 1)] * 2)
async def test_metrics_are_json(c, s, a, b):
    await use(c, s, ["job-priority", "critical-path", "locality", "throughput-balancer",
                     "resources"])
    with job("m", "bulk"):
        await c.compute(da.ones((20, 4), chunks=(4, 4)).sum())
    m = json.loads(json.dumps(await c.scheduler.taskflow_metrics()))
    assert set(m["policies"]) == {"job-priority", "critical-path", "locality",
                                  "throughput-balancer", "resources"}
    assert m["jobs"]["m"]["class"] == "bulk" and set(m["workers"]) == {a.address, b.address}
    assert m["update_graph_ms"]["max"] < 50


def policy_names(dask_scheduler):
    return [p.name for p in dask_scheduler.plugins["taskflow"].policies]


def test_cluster_takes_policies():
    from taskflow import Cluster

    with Cluster(n_workers=1, threads_per_worker=1, kernel_threads=1, processes=False,
                 quiet=True, policies=["critical-path", "resources"]) as cluster:
        names = cluster.client.run_on_scheduler(policy_names)
        assert names == ["critical-path", "resources"]
        assert metrics(cluster.client)["policies"]["critical-path"]["applied"] == 0


def test_preload_registers_the_plugin_on_a_scheduler_process(tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_TASKFLOW__SCHEDULER__POLICIES": '["job-priority", "locality"]'}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dask", "scheduler", "--preload", "taskflow.schedulers",
         "--scheduler-file", str(scheduler_file), "--host", LOCAL, "--port", "0",
         "--dashboard-address", ":0"], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while not scheduler_file.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert scheduler_file.exists(), proc.stderr.read().decode()[-2000:]
        with Client(scheduler_file=str(scheduler_file), timeout="20s") as client:
            names = client.run_on_scheduler(policy_names)
            assert names == ["job-priority", "locality"]
            assert metrics(client)["policies"]["locality"]["errors"] == 0
            # the /taskflow page comes with it
            page = client.dashboard_link.replace("/status", "/taskflow/json")
            with urllib.request.urlopen(page, timeout=10) as resp:
                assert json.load(resp)["policies"]["plugin"] is True
    finally:
        proc.terminate()
        proc.wait(10)


def test_import_is_light():
    code = ("import sys, taskflow.schedulers; "
            "print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.stdout.strip() == "[]"
