"""Each policy on hand-built snapshots: no cluster, no distributed."""

from __future__ import annotations

import dask
import pytest
from taskflow.schedulers import (
    CriticalPath,
    JobPriority,
    Locality,
    Move,
    Pin,
    Require,
    Resources,
    SetPriority,
    Snapshot,
    TaskView,
    ThroughputBalancer,
    Unpin,
    WorkerView,
    policies_from_names,
)
from taskflow.schedulers.snapshot import task_kind

from taskflow.errors import TaskflowError

pytestmark = pytest.mark.timeout(30)
A, B, C = "tcp://a:1", "tcp://b:1", "tcp://c:1"


def snap(tasks=(), workers=(A, B), fresh=None, **kw):
    """A snapshot of ``tasks`` (all fresh unless told), with the plugin's aggregates."""
    views = {t.key: t for t in tasks}
    ws = {w.address: w for w in (WorkerView(w) if isinstance(w, str) else w for w in workers)}
    fresh = tuple(views) if fresh is None else tuple(fresh)
    ready: dict[str, list] = {}
    for k in fresh:
        v = views[k]
        if v.restrictions is None and not v.resources and all(
                d in views and views[d].state == "memory" for d in v.dependencies):
            ready.setdefault(v.prefix, []).append(v)
    kw.setdefault("input_kinds", frozenset(v.prefix for k, v in views.items()
                                           if k not in fresh))
    kw.setdefault("ready", {k: tuple(v.key for v in sorted(vs, key=lambda v: v.priority))
                            for k, vs in ready.items()})
    return Snapshot(tasks=views, workers=ws, fresh=fresh, **kw)


# --- JobPriority --------------------------------------------------------------------------------
def test_job_reaches_tasks_whose_annotation_optimisation_dropped():
    keys = [("tf-a", i) for i in range(5)]
    s = snap([TaskView(k, "tf-a") for k in keys], client="c1", now=100.0,
             annotations={"taskflow_job": {keys[0]: "ask", keys[1]: "ask"},
                          "taskflow_priority": {keys[0]: "interactive", keys[1]: "interactive"}})
    policy = JobPriority()
    (sug,) = policy.on_graph(s)
    assert isinstance(sug, SetPriority) and set(sug.keys) == set(keys)
    assert sug.shift == 100.0 and sug.orders is None
    assert policy.metrics()["jobs"]["ask"]["tasks"] == 5


def test_classes_order_and_untagged_work_is_normal():
    policy = JobPriority()
    shifts = {}
    for cls in ("bulk", "interactive", None, 7):
        ann = {} if cls is None else {"taskflow_priority": {"k": cls}}
        (sug,) = policy.on_graph(snap([TaskView("k", "x")], now=0.0, annotations=ann))
        shifts[cls] = sug.shift
    assert shifts == {"bulk": -100.0, "interactive": 100.0, None: 0.0, 7: 7.0}


def test_aging_a_waiting_bulk_job_goes_before_new_interactive_work():
    policy = JobPriority(max_wait="20s")

    def submit(t, cls):
        s = snap([TaskView(("k", t), "x")], now=t, annotations={"taskflow_priority":
                                                                 {("k", t): cls}})
        return next(iter(policy.on_graph(s))).shift

    bulk = submit(0.0, "bulk")
    assert submit(10.0, "interactive") > bulk  # waited half of max_wait: still overtaken
    assert submit(21.0, "interactive") < bulk  # waited longer than max_wait: goes first
    assert policy.rate == pytest.approx(200 / 20)


def test_prefix_rules_and_unknown_classes():
    policy = JobPriority(prefixes={"tf-ask*": "interactive"})
    s = snap([TaskView("q1", "tf-ask"), TaskView("b1", "tf-bulk")], now=0.0)
    by_keys = {sug.keys: sug.shift for sug in policy.on_graph(s)}
    assert by_keys == {("q1",): 100.0, ("b1",): 0.0}
    s = snap([TaskView("x", "x")], now=0.0, annotations={"taskflow_priority": {"x": "urgent"}})
    assert next(iter(policy.on_graph(s))).shift == 0.0
    assert policy.metrics()["unknown_classes"] == ["urgent"]


def test_settings_come_from_dask_config():
    with dask.config.set({"taskflow.scheduler.job-priority.max-wait": "10s",
                          "taskflow.scheduler.job-priority.classes": {"hi": 1, "lo": 0}}):
        policy = JobPriority()
    assert policy.max_wait == 10 and policy.classes == {"hi": 1.0, "lo": 0.0}
    assert JobPriority(max_wait=5).max_wait == 5


# --- CriticalPath -------------------------------------------------------------------------------
def branchy(durations=None, **annotations):
    """heavy -> join <- l2 <- l1 <- l0, dask.order running the light chain first."""
    tasks = [TaskView("l0", "light", priority=(0, 0, 0), dependents=("l1",)),
             TaskView("l1", "light", priority=(0, 0, 1), dependencies=("l0",),
                      dependents=("l2",)),
             TaskView("l2", "light", priority=(0, 0, 2), dependencies=("l1",),
                      dependents=("join",)),
             TaskView("heavy", "heavy", priority=(0, 0, 3), dependents=("join",),
                      annotations=annotations),
             TaskView("join", "join", priority=(0, 0, 4), dependencies=("l2", "heavy"))]
    return snap(tasks, durations=durations or {})


def test_upward_rank_runs_the_longest_remaining_path_first():
    s = branchy({"light": 0.1, "heavy": 1.0, "join": 0.01})
    (sug,) = CriticalPath().on_graph(s)
    assert sug.keys[0] == "heavy" and sug.orders == tuple(range(5))
    assert sug.keys.index("l0") < sug.keys.index("l1") < sug.keys.index("l2")
    assert sug.keys[-1] == "join"


def test_even_or_unknown_costs_keep_dask_order():
    policy = CriticalPath()
    assert not list(policy.on_graph(branchy({"light": 0.1, "heavy": 0.1, "join": 0.1})))
    assert not list(policy.on_graph(branchy()))
    assert policy.metrics()["skipped"] == {"even or unknown costs": 2}


def test_flops_annotations_then_measured_durations():
    policy = CriticalPath(flops_per_second=1e9)
    s = branchy({"light": 0.1}, taskflow_flops={"heavy": 2e9})
    assert policy.cost(s.tasks["heavy"], s) == 2.0
    assert next(iter(policy.on_graph(s))).keys[0] == "heavy"
    measured = branchy({"light": 0.1, "heavy": 0.05}, taskflow_flops=2e9)
    assert policy.cost(measured.tasks["heavy"], measured) == 0.05  # measurement wins


def test_big_graphs_are_time_boxed():
    policy = CriticalPath(max_tasks=4)
    assert not list(policy.on_graph(branchy({"light": 0.1, "heavy": 1.0})))
    assert policy.metrics()["skipped"] == {"more than 4 tasks": 1}


# --- Locality -----------------------------------------------------------------------------------
def stage(deps=("w1",), restrictions=None):
    return TaskView("t", "tf-stage", dependencies=deps, restrictions=restrictions)


def weight(key, holders, nbytes=100):
    return TaskView(key, "tf-weight-fc", state="memory", who_has=frozenset(holders),
                    nbytes=nbytes)


def test_tasks_go_where_their_weights_are():
    (sug,) = Locality().on_graph(snap([stage(), weight("w1", [B])], fresh=["t"]))
    assert sug == Pin("t", frozenset([B]), reason="weights held there")
    # the task reads two weights on different workers: it goes to the bigger one
    s = snap([stage(("w1", "w2")), weight("w1", [A], 10), weight("w2", [B], 1000)], fresh=["t"],
             workers=(A, B, C))
    assert next(iter(Locality().on_graph(s))).workers == {B}


def test_replicated_weights_or_agreeing_restrictions_need_no_pin():
    assert not list(Locality().on_graph(snap([stage(), weight("w1", [A, B])], fresh=["t"])))
    s = snap([stage(restrictions=frozenset([B])), weight("w1", [B])], fresh=["t"])
    assert not list(Locality().on_graph(s))
    s = snap([stage(deps=("x",)), TaskView("x", "other", who_has=frozenset([B]))], fresh=["t"])
    assert not list(Locality().on_graph(s))


def test_lost_workers_lift_or_move_pins():
    s = snap([stage(), weight("w1", [A])], fresh=["t"], workers=(B,))
    assert [type(x) for x in Locality().on_worker_lost(s)] == [Unpin]
    s = snap([stage(), weight("w1", [A, C])], fresh=["t"], workers=(B, C))
    assert next(iter(Locality().on_worker_lost(s))) == Pin("t", frozenset([C]),
                                                           reason="weights held there")


# --- Resources ----------------------------------------------------------------------------------
def test_gpu_tasks_require_the_resource():
    s = snap([TaskView("g", "tf-conv"), TaskView("c", "tf-conv")],
             annotations={"taskflow_device": {"g": "gpu", "c": "cpu"}})
    assert list(Resources().on_graph(s)) == [Require("g", {"GPU": 1.0}, reason="needs a GPU")]
    s = snap([TaskView("g", "tf-conv-gpu"), TaskView("c", "tf-conv")])
    assert [x.key for x in Resources(gpu_prefixes=["*-gpu"]).on_graph(s)] == ["g"]


# --- ThroughputBalancer -------------------------------------------------------------------------
def queued(worker, n, kind="tf-infer", **kw):
    return tuple(TaskView((worker, i), kind, state="processing", processing_on=worker,
                          priority=(0, 0, i), **kw) for i in reversed(range(n)))


def cluster_view(n_slow=12, n_fast=2, rates=None, fast_kw=None, **kw):
    slow = WorkerView(A, 2, prefix_counts={"tf-infer": n_slow}, candidates=queued(A, n_slow, **kw))
    fast = WorkerView(B, 2, prefix_counts={"tf-infer": n_fast}, **(fast_kw or {}))
    rates = rates or {(A, "tf-infer"): 0.3, (B, "tf-infer"): 0.1}
    return snap(workers=(slow, fast), rates=rates, durations={"tf-infer": 0.2})


def test_balancer_moves_lowest_priority_tasks_off_the_slow_worker():
    moves = list(ThroughputBalancer(min_gain=0.01).on_tick(cluster_view()))
    assert moves and all(isinstance(m, Move) and (m.victim, m.thief) == (A, B) for m in moves)
    assert [m.key[1] for m in moves] == sorted((m.key[1] for m in moves), reverse=True)
    # 14 tasks at rates 2/0.3 and 2/0.1: about a quarter stay on the slow worker
    assert 7 <= len(moves) <= 10 and all(m.gain > 0 for m in moves)


def test_balanced_or_single_worker_clusters_are_left_alone():
    balancer = ThroughputBalancer()
    assert not list(balancer.on_tick(cluster_view(n_slow=3, n_fast=9)))
    s = cluster_view()
    assert not list(balancer.on_tick(s._replace(workers={A: s.workers[A]})))


def test_no_move_that_only_loads_the_slow_worker():
    # fast worker slightly behind: moving one of its tasks to the 3x slower one would gain
    # less than the task costs there (hysteresis)
    s = cluster_view(n_slow=0, n_fast=6, fast_kw={"candidates": queued(B, 6)})
    s = s._replace(workers={**s.workers, A: s.workers[A]._replace(
        prefix_counts={"tf-infer": 1})})
    assert not list(ThroughputBalancer(min_gain=0.0).on_tick(s))


def test_restrictions_resources_and_moves_in_flight_are_respected():
    balancer = ThroughputBalancer()
    assert not list(balancer.on_tick(cluster_view(restrictions=frozenset([A]))))
    assert list(balancer.on_tick(cluster_view(restrictions=frozenset([A]), loose=True)))
    assert not list(balancer.on_tick(cluster_view(resources={"GPU": 1})))
    gpu = cluster_view(resources={"GPU": 1}, fast_kw={"resources": {"GPU": 1}})
    assert list(balancer.on_tick(gpu))
    s = cluster_view()
    s = s._replace(in_flight=frozenset(c.key for c in s.workers[A].candidates))
    assert not list(balancer.on_tick(s))


def test_unmeasured_worker_is_scaled_by_its_speed_on_other_kinds():
    balancer = ThroughputBalancer()
    s = cluster_view(rates={(A, "tf-other"): 0.6, (B, "tf-other"): 0.2})
    s = s._replace(durations={"tf-infer": 0.2, "tf-other": 0.4})
    speeds = balancer.speeds(s)
    assert speeds[A] == pytest.approx(1.5) and speeds[B] == pytest.approx(0.5)
    assert balancer.duration(s, speeds, A, "tf-infer") == pytest.approx(0.3)
    assert list(balancer.on_tick(s))


def test_placement_splits_big_groups_by_measured_rate():
    tasks = [TaskView(("tf-infer", i), "tf-infer", priority=(0, 0, i)) for i in range(40)]
    workers = (WorkerView(A, 2), WorkerView(B, 2))
    s = snap(tasks, workers=workers, rates={(A, "tf-infer"): 0.3, (B, "tf-infer"): 0.1},
             durations={"tf-infer": 0.2})
    places = {p.worker: p.keys for p in ThroughputBalancer(place=True).on_graph(s)}
    assert len(places[A]) == 10 and len(places[B]) == 30  # a third of the rate, a quarter
    assert all(list(ks) == sorted(ks) for ks in places.values())  # each in priority order
    assert places[B][:2] == (("tf-infer", 0), ("tf-infer", 1))  # the fast one starts first
    assert not list(ThroughputBalancer(place=False).on_graph(s))
    small = snap(tasks[:8], workers=workers)
    assert not list(ThroughputBalancer(place=True).on_graph(small))  # Dask places those well


# --- names --------------------------------------------------------------------------------------
def test_policies_from_names():
    names = [p.name for p in policies_from_names(["balancer,critical", "JobPriority"])]
    assert names == ["throughput-balancer", "critical-path", "job-priority"]
    assert policies_from_names(["dask"]) == [] == policies_from_names("none")
    with dask.config.set({"taskflow.scheduler.policies": ["locality"]}):
        assert [p.name for p in policies_from_names("default")] == ["locality"]
    with pytest.raises(TaskflowError, match="unknown scheduler policy 'fast'.*job-priority"):
        policies_from_names(["fast"])


def test_task_kind_keeps_layer_names():
    assert task_kind("tf-conv1-0123456789abcdef0123456789abcdef") == "tf-conv1"
    assert task_kind("tf-layer1.s0-2b3c4d5e6f708192a3b4c5d6e7f8091a") == "tf-layer1.s0"
    assert task_kind("tf-ask") == "tf-ask"


def test_moving_big_inputs_must_pay_for_their_transfer():
    # 200 MB of inputs at 100 MB/s: 2 s of transfer, more than any gain here
    assert not list(ThroughputBalancer().on_tick(cluster_view(input_nbytes=200_000_000)))
    assert list(ThroughputBalancer().on_tick(cluster_view(input_nbytes=1_000)))
