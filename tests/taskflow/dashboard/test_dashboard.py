"""The /taskflow dashboard page on a real embedded Cluster: JSON, page, metrics, workers joining
and leaving mid-job, the plugin replaced and removed, the --preload route; plus TaskflowState,
telemetry and the Prometheus collector on hand-fed events."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from bokeh.server.tornado import BokehTornado

import taskflow as tf
from taskflow.dashboard import extension as dashboard
from taskflow.dashboard import state as dashboard_state
from taskflow.dashboard import telemetry
from taskflow.dashboard.extension import DashboardPlugin, page_link, performance_report_context
from taskflow.dashboard.state import TaskflowState, layer_of
from tests.taskflow.dashboard.dashboard_helpers import (
    LAYER_SHARE,
    SAMPLES,
    FakeJob,
    get,
    get_json,
    page_url,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)
JOB_KEYS = ("name", "total", "done", "failed", "quarantined", "in_flight", "state", "started")


@pytest.fixture(scope="module")
def cluster():
    with tf.Cluster(n_workers=2, threads_per_worker=1, quiet=True) as c:
        yield c


def leak_report(dask_scheduler) -> dict:
    """What the dashboard has put on the scheduler (run there with run_on_scheduler)."""
    from distributed.dashboard.scheduler import template_variables

    d = dashboard._DASHBOARDS.get(dask_scheduler)
    live = d is not None and not d.closed
    return {
        "dashboard": id(d) if live else None,
        "owner_registered": live and d.owner is dask_scheduler.plugins.get(DashboardPlugin.name),
        "apps": sum(isinstance(a, BokehTornado) and "/taskflow" in a.app_paths
                    for a in dask_scheduler.http_application.applications),
        "callbacks": sorted(k for k in dask_scheduler.periodic_callbacks
                            if k.startswith("taskflow-dashboard")),
        "taps": sum(n == "taskflow-dashboard-events" for n in dask_scheduler.plugins),
        "menu": [p["url"] for p in template_variables(dask_scheduler)["plots"]].count("taskflow"),
    }


def present(snap: dict) -> dict:
    return {a: w for a, w in snap["workers"].items() if w["present"]}


# --- on a real cluster ---------------------------------------------------------------------------
def test_json_page_and_metrics_follow_a_running_job(cluster):
    url = page_url(cluster)
    assert page_link(cluster.dashboard_link) == url
    job = FakeJob(cluster.client, "alpha", 60, broken=frozenset({7}),
                  title="alpha-nightly").start()

    def busy():
        snap = get_json(url + "/json")
        workers, j = present(snap), snap["jobs"].get("alpha", {})
        ok = (len(workers) == 2 and all(w["samples_per_s"] > 0 for w in workers.values())
              and j.get("state") == "running" and j["done"] > 0)
        return ok and snap
    snap = wait_for(busy, what="samples/s on both workers while the job runs")
    assert snap["throughput"]["samples_per_s"] > 0 and snap["jobs"]["alpha"]["in_flight"] > 0
    for w in present(snap).values():  # thread plan, memory, device from worker state + telemetry
        assert w["threads"]["kernel_threads"] == 1 and w["nthreads"] == 1
        assert w["device"] == "cpu" and w["memory"] > 0 and w["memory_limit"] > 0

    status, body = get(url)
    assert status == 200 and b"bokeh" in body.lower() and b"taskflow" in body.lower()
    assert b'href="taskflow"' in get(url.replace("/taskflow", "/status"))[1]  # "More..." menu
    metrics = get(url.replace("/taskflow", "/metrics"))[1].decode()
    assert "taskflow_samples_total{worker=" in metrics
    assert 'taskflow_job_chunks{job="alpha",name="alpha-nightly",status="done"}' in metrics

    last = job.join()
    assert last["state"] == "done" and last["done"] == 59 and last["quarantined"] == 1

    def finished():
        j = get_json(url + "/json")["jobs"]["alpha"]
        return j["state"] == "done" and j
    j = wait_for(finished, what="the job's last emit_job on the page")
    assert {k: j[k] for k in JOB_KEYS} == {k: last[k] for k in JOB_KEYS}
    assert (j["chunks_reported"], j["samples"], j["remaining"], j["eta_s"]) == \
        (59, 59 * SAMPLES, 0, 0.0)
    layers = get_json(url + "/json")["layers"]
    assert layers["source"] == "events"
    assert layers["share"] == pytest.approx(LAYER_SHARE)


def test_workers_join_and_leave_mid_job(cluster):
    url, local = page_url(cluster), cluster._owned
    job = FakeJob(cluster.client, "beta", 2000).start()
    wait_for(lambda: get_json(url + "/json")["jobs"].get("beta", {}).get("done"), what="start")
    before = set(present(get_json(url + "/json")))
    local.scale(3)

    def joined():
        snap = get_json(url + "/json")
        new = {a: w for a, w in present(snap).items() if a not in before}
        return new and all(w["samples"] > 0 and w["threads"] for w in new.values()) and new
    new = wait_for(joined, timeout=30, what="a third worker computing chunks")
    local.scale(2)

    def left():
        snap = get_json(url + "/json")
        return len(present(snap)) == 2 and all(not snap["workers"][a]["present"] for a in new) \
            and snap
    snap = wait_for(left, timeout=30, what="the third worker gone")
    assert job.thread.is_alive(), "the job should still run while workers come and go"
    assert get(url)[0] == 200
    for a in new:  # what it did stays on the page, as a worker that left
        assert snap["workers"][a]["status"] == "gone" and snap["workers"][a]["samples"] > 0
    assert set(new) <= set(snap["throughput"]["history"]["workers"])

    last = job.stop()  # long enough for slow worker starts; no need to wait for the rest

    def stopped():
        j = get_json(url + "/json")["jobs"]["beta"]
        return j["state"] == "interrupted" and j
    j = wait_for(stopped, what="the job's last emit_job")
    assert {k: j[k] for k in JOB_KEYS} == {k: last[k] for k in JOB_KEYS}
    assert 0 < j["done"] <= j["chunks_reported"]  # a chunk may run twice when a worker leaves


def test_replacing_or_removing_the_plugin_leaks_nothing(cluster):
    client, url = cluster.client, page_url(cluster)
    scheduler = cluster._owned.scheduler
    before = client.run_on_scheduler(leak_report)
    assert before["dashboard"] and before["owner_registered"]
    assert (before["apps"], len(before["callbacks"]), before["taps"], before["menu"]) == \
        (1, 1, 1, 1)
    assert get(url)[0] == 200  # a page session, with its periodic callback
    docs = [doc for doc, _ in dashboard._DASHBOARDS[scheduler]._docs]
    assert docs and all(doc.session_callbacks for doc in docs)

    with pytest.warns(UserWarning, match="overwriting"):
        client.register_plugin(DashboardPlugin(replace=True))
    after = client.run_on_scheduler(leak_report)
    assert after == before  # same dashboard, now owned by the new plugin: nothing doubled
    assert get(url)[0] == 200 and get_json(url + "/json")["workers"]

    # Dask's unregister does not call close(); the dashboard sees its owner gone and detaches.
    client.unregister_scheduler_plugin(DashboardPlugin.name)
    wait_for(lambda: get(url)[0] == 404, what="/taskflow gone")
    gone = client.run_on_scheduler(leak_report)
    assert gone == {"dashboard": None, "owner_registered": False, "apps": 0, "callbacks": [],
                    "taps": 0, "menu": 0}
    assert get(url + "/json")[0] == 404
    assert not any(doc.session_callbacks for doc in docs)

    client.register_plugin(DashboardPlugin())  # re-attach: a fresh page, old events replayed
    again = client.run_on_scheduler(leak_report)
    assert again["dashboard"] and (again["apps"], again["taps"], again["menu"]) == (1, 1, 1)
    assert get(url)[0] == 200
    assert "alpha" in get_json(url + "/json")["jobs"]


def test_performance_report_context(cluster, tmp_path):
    with performance_report_context(None):
        pass
    path = tmp_path / "report.html"
    with performance_report_context(path):
        cluster.client.submit(sum, [1, 2]).result()
    assert path.stat().st_size > 0 and "Dask Performance Report" in path.read_text()


@pytest.mark.timeout(60)
def test_preloaded_scheduler_serves_the_page():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--dashboard-address", f"127.0.0.1:{port}",
         "--preload", "taskflow.dashboard.extension"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/taskflow"
        wait_for(lambda: proc.poll() is not None or get(url + "/json")[0] == 200, timeout=30,
                 interval=0.2, what="the preloaded scheduler's /taskflow/json")
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert get(url)[0] == 200
        assert b'href="taskflow"' in get(f"http://127.0.0.1:{port}/status")[1]
    finally:
        proc.terminate()
        proc.wait(10)


# --- without a cluster ---------------------------------------------------------------------------
def chunk(worker: str, job: str, samples: int = 8, seconds: float = 0.5, **kw) -> dict:
    return {"job": job, "chunk": 0, "samples": samples, "seconds": seconds, "worker": worker,
            **kw}


def test_state_counts_rates_eta_and_ignores_bad_messages():
    state = TaskflowState(window=5.0)
    for t in (100.0, 101.0, 102.0):
        state.feed("taskflow.chunk", chunk("w1", "j", layer_seconds={"conv": 0.3}), t=t)
    state.feed("taskflow.chunk", chunk("w2", "j", samples=4), t=102.0)
    state.feed("taskflow.job", {"job": "j", "total": 10, "done": 4, "failed": 1,
                                "quarantined": 1, "in_flight": 2, "started": 50.0,
                                "state": "running", "t": 52.0}, t=102.0)
    state.feed("taskflow.job", {"job": "k", "total": 1, "done": 0, "name": "resnet-nightly"})
    state.feed("taskflow.chunk", {"job": "j"}, t=102.0)  # no samples: counted, not raised
    state.feed("other.topic", {"x": 1})
    snap = state.tick(now=103.0)
    w1 = snap["workers"]["w1"]
    assert (w1["samples"], w1["chunks"], w1["present"], w1["status"]) == (24, 3, False, "gone")
    assert w1["samples_per_s"] == pytest.approx(24 / 3.5)  # since its first chunk began
    assert snap["workers"]["w2"]["samples_per_s"] == pytest.approx(4 / 1.5)
    j = snap["jobs"]["j"]
    assert (j["remaining"], j["chunks_reported"], j["samples"]) == (4, 4, 28)
    assert (j["name"], j["elapsed_s"]) == ("j", 2.0)  # no name sent: the id
    assert snap["jobs"]["k"]["name"] == "resnet-nightly"
    # 4 done in 2 s (client clock) -> 2 s for the 4 left, 1 s of it passed since arrival
    assert j["eta_s"] == pytest.approx(1.0)
    assert snap["layers"]["seconds"] == {"conv": pytest.approx(0.9)}
    assert snap["layers"]["share"] == {"conv": 1.0}
    assert snap["events"]["ignored"] == 1 and snap["events"]["taskflow.chunk"] == 4
    assert snap["policies"] == {"plugin": False, "by_policy": {}, "error": None}
    assert state.tick(now=110.0)["workers"]["w1"]["samples_per_s"] == 0
    assert [h["tick"] for h in state.snapshots] == [1, 2] and state.find(1)["time"] == 103.0


def test_state_falls_back_to_dask_durations_and_reads_plugin_metrics():
    prefix = SimpleNamespace
    ws = SimpleNamespace(name="a", nthreads=2, resources={"GPU": 1}, memory_limit=100,
                         memory=SimpleNamespace(process=40), processing={1: 1},
                         status=SimpleNamespace(name="running"))

    class Plugin:
        def metrics(self):
            return {"policies": {"locality": {"applied": 3, "rejected": 2, "reasons": {}}}}

    scheduler = SimpleNamespace(
        workers={"tcp://a": ws}, plugins={"taskflow": Plugin()},
        task_prefixes={"tf-conv": prefix(all_durations={"compute": 3.0}),
                       "tf_fc": prefix(all_durations={"compute": 1.0}),
                       "sum": prefix(all_durations={"compute": 9.0})})
    snap = TaskflowState(scheduler).tick()
    assert snap["layers"]["source"] == "dask-tasks"
    assert snap["layers"]["share"] == {"conv": 0.75, "fc": 0.25}
    assert snap["workers"]["tcp://a"]["device"] == "gpu"
    assert snap["workers"]["tcp://a"]["processing"] == 1
    assert snap["policies"]["by_policy"] == {
        "locality": {"applied": 3, "rejected": 2, "suggestions": 0, "errors": 0}}
    assert layer_of("tf-conv1") == "conv1" and layer_of("sum") is None

    def broken():
        raise RuntimeError("boom")
    scheduler.plugins["taskflow"].metrics = broken
    snap = TaskflowState(scheduler).tick()
    assert snap["policies"]["plugin"] and "boom" in snap["policies"]["error"]


def test_state_stays_bounded():
    state = TaskflowState()
    for i in range(dashboard_state.MAX_JOBS + 5):
        state.feed("taskflow.job", {"job": f"j{i}", "total": 1, "done": 1, "state": "done"})
        state.feed("taskflow.chunk", chunk(f"w{i}", f"j{i}"))
    state.feed("taskflow.job", {"job": "bad", "total": 1, "done": "many"})
    snap = state.tick()
    assert len(snap["jobs"]) == dashboard_state.MAX_JOBS and "j0" not in snap["jobs"]
    assert len(snap["workers"]) == dashboard_state.MAX_GONE_WORKERS
    assert snap["events"]["ignored"] == 1


def test_a_tick_stays_findable_for_30_seconds_of_updates():
    # A page read on a loaded machine may show a tick several seconds old; /json?tick=N must
    # still serve it (CI once asked for one 8 s old when only 16 snapshots were kept).
    state = TaskflowState()
    per_s = 1000 // dashboard.UPDATE_INTERVAL_MS
    for i in range(30 * per_s + 1):
        state.tick(now=100.0 + i / per_s)
    assert state.find(1) is None and state.find(2)["time"] == pytest.approx(100.5)
    assert len(state.snapshots) == dashboard_state.SNAPSHOTS_KEPT


def test_prometheus_collector_names():
    prometheus_client = pytest.importorskip("prometheus_client")
    from taskflow.dashboard.metrics import TaskflowCollector

    state = TaskflowState()
    state.feed("taskflow.chunk", chunk("w1", "j", layer_seconds={"conv": 0.5}), t=time.time())
    state.feed("taskflow.job", {"job": "j", "total": 3, "done": 1, "failed": 0, "quarantined": 0,
                                "in_flight": 2, "started": 1.0, "state": "running", "t": 2.0,
                                "name": "digits-20261205-2214"})
    state.tick()
    registry = prometheus_client.CollectorRegistry()
    registry.register(TaskflowCollector(lambda: state))
    text = prometheus_client.generate_latest(registry).decode()
    for line in ('taskflow_samples_total{worker="w1"} 8.0', 'taskflow_layer_seconds_total',
                 'taskflow_job_chunks{job="j",name="digits-20261205-2214",status="remaining"} 2.0',
                 'taskflow_job_eta_seconds{job="j",name="digits-20261205-2214"}',
                 'taskflow_events_total'):
        assert line in text, text


def test_page_shows_names_and_collapses_finished_jobs():
    from taskflow.dashboard.page import TaskflowPage

    state = TaskflowState()

    def job(token: str, state_: str, started: float, **kw) -> None:
        state.feed("taskflow.job", {"job": token, "total": 10, "done": 4, "in_flight": 2,
                                    "started": started, "t": started + 65.0, "state": state_,
                                    **kw})
    job("a1b2c3d4e5f6", "running", 3.0, name="resnet-20261205-2214")
    job("0f0f0f0f0f0f", "done", 1.0, name="digits-20261205-2200")
    job("e5e5e5e5e5e5", "abandoned", 2.0, name="digits-20261205-2200",
        reason="its client went away")
    job("9a9a9a9a9a9a", "starting", 4.0)  # no name: shown by its id
    page = TaskflowPage()
    page.update(state.tick())
    running = page.jobs.data
    assert running["job"] == ["resnet-20261205-2214", "9a9a9a9a9a9a"]  # running ones in full
    assert running["id"] == ["a1b2c3d4e5f6", "9a9a9a9a9a9a"]
    assert (running["done"], running["waiting"]) == ([4, 4], [4, 4])
    assert list(page.job_fig.y_range.factors) == running["job"]
    ended = page.finished.data  # one compact row each, newest first; equal names told apart
    assert ended["job"] == ["digits-20261205-2200 [e5e5e5]", "digits-20261205-2200 [0f0f0f]"]
    assert ended["state"] == ["abandoned", "done"] and ended["chunks"] == ["4/10", "4/10"]
    assert ended["took"] == ["0:01:05", "0:01:05"]
    assert ended["reason"] == ["its client went away", ""]
    assert page.finished_table.visible and "2" in page.finished_title.text

    state.feed("taskflow.job", {"job": "a1b2c3d4e5f6", "total": 10, "done": 10, "state": "done",
                                "name": "resnet-20261205-2214", "started": 3.0, "t": 9.0})
    page.update(state.tick())
    assert page.jobs.data["job"] == ["9a9a9a9a9a9a"]
    assert page.finished.data["job"][0] == "resnet-20261205-2214"


def test_telemetry_is_a_no_op_outside_workers_and_clients():
    code = ("import sys; from taskflow.dashboard import telemetry as t; "
            "assert t.emit_chunk('j', 0, 1, 0.1) is False; "
            "assert t.emit_job('j', total=1, done=0, failed=0, quarantined=0, in_flight=1, "
            "started=0.0, state='running') is False; "
            "assert t.emit_threads({'kernel_threads': 1}) is False; "
            "assert 'distributed' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert telemetry.emit_chunk("j", (1, 2), 1, 0.1) is False  # distributed loaded, no worker
    assert telemetry._chunk_id((1, 2)) == [1, 2] and telemetry._plain({"a": (1, object)})


def test_a_real_streaming_job_is_on_the_page(cluster, tmp_path):
    """infer_zarr's own telemetry (not a stand-in job) reaches /taskflow/json."""
    from tests.taskflow.stream.stream_helpers import digits_images, digits_model, write_array

    images = digits_images(512)
    src = write_array(tmp_path / "in.zarr", images, chunk=16)
    url = page_url(cluster) + "/json"
    before = {a: w["samples"] for a, w in get_json(url)["workers"].items()}  # earlier tests'
    summary = tf.infer_zarr(digits_model(), src, tmp_path / "out.zarr", client=cluster,
                            preprocess={"scale": 1 / 16}, progress="none", chunks_per_task=1)
    assert summary.samples == 512 and not summary.failed

    def finished_job():
        jobs = get_json(url)["jobs"]
        return next((j for j in jobs.values() if j["total"] == 32 and j["state"] == "done"),
                    None)

    job = wait_for(finished_job, what="the streaming job's final progress on /taskflow/json")
    assert job["done"] == 32 and job["quarantined"] == 0 and job["samples"] == 512

    def gained():  # chunk events come from the workers, job events from the client: either first
        now = {a: w["samples"] - before.get(a, 0) for a, w in get_json(url)["workers"].items()}
        return now if sum(now.values()) == 512 else None

    gained = wait_for(gained, what="all 512 samples reported by the workers")
    assert sum(1 for g in gained.values() if g > 0) == 2  # both present workers computed
