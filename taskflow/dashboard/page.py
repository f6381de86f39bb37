"""The Bokeh document behind ``/taskflow``: five live panels fed from ``TaskflowState`` snapshots.

Every data source has a ``name`` (``tf-meta``, ``tf-tick-begin``, ``tf-rate-total``,
``tf-rate-workers``, ``tf-layers``, ``tf-jobs``, ``tf-jobs-finished``, ``tf-policies``,
``tf-workers``) so scripts and browser tests can find it with
``Bokeh.documents[0].get_model_by_name(...)``. ``tf-meta`` carries the snapshot ``tick``, which
``/taskflow/json?tick=N`` serves unchanged, so a page and the JSON can be compared exactly.

Jobs show by name (their id in a column beside it). Running jobs have a bar and a full row;
finished ones (``state.FINISHED``: done, failed, interrupted, abandoned...) collapse into one
compact row each in a table of their own, newest first, so a long-lived cluster's page stays
about the jobs that are running.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bokeh.layouts import column, row
from bokeh.models import (
    ColumnDataSource,
    DataTable,
    Div,
    FactorRange,
    NumberFormatter,
    TableColumn,
)
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from taskflow.dashboard.state import FINISHED

MIB = 2**20
#: Layers the time-share panel names; the rest are summed into one "other" bar. A ResNet-50
#: has ~70 layers, which would not fit in the panel's height, and the tail of small layers is
#: not what a reader looks for there.
TOP_LAYERS = 12
JOB_COUNTS = ("done", "in_flight", "failed", "quarantined", "remaining")
# Bars add up to the job's total: "remaining" (not finished) is split into in flight + waiting.
JOB_STACK = ("done", "failed", "quarantined", "in_flight", "waiting")
JOB_COLORS = ("#2ca02c", "#d62728", "#ff7f0e", "#1f77b4", "#dddddd")
#: One compact row per finished job.
FINISHED_COLUMNS = ("job", "state", "chunks", "quarantined", "took", "reason", "id")
POLICY_STACK = ("applied", "rejected")
POLICY_COLORS = ("#2ca02c", "#d62728")
WORKER_COLUMNS = ("worker", "name", "device", "nthreads", "kernel_threads", "numba_threads",
                  "memory_mib", "memory_limit_mib", "processing", "samples_per_s", "samples",
                  "chunks", "status")


def _source(name: str, columns: tuple[str, ...] | list[str]) -> ColumnDataSource:
    return ColumnDataSource({c: [] for c in columns}, name=name)


def _bars(title: str, stack: tuple[str, ...], colors: tuple[str, ...], source: ColumnDataSource,
          y: str) -> Any:
    fig = figure(title=title, y_range=FactorRange(factors=[]), height=260,
                 sizing_mode="stretch_width", toolbar_location=None, tools="")
    fig.hbar_stack(list(stack), y=y, height=0.6, source=source, color=list(colors),
                   legend_label=[s.replace("_", " ") for s in stack])
    fig.legend.orientation = "horizontal"
    fig.add_layout(fig.legend[0], "below")  # beside the bars it would hide them
    fig.x_range.start = 0
    return fig


class TaskflowPage:
    """The widgets of one browser session; :meth:`update` copies a snapshot into them."""

    def __init__(self) -> None:
        self.tick = -1
        self.colors: dict[str, str] = {}
        self.meta = ColumnDataSource({"tick": [0], "samples_per_s": [0.0], "samples": [0]},
                                     name="tf-meta")
        self.begin = ColumnDataSource({"tick": [0]}, name="tf-tick-begin")
        self.rate_total = _source("tf-rate-total", ("t", "total"))
        self.rate_workers = _source("tf-rate-workers", ("xs", "ys", "worker", "color"))
        self.layers = _source("tf-layers", ("layer", "share", "seconds"))
        self.jobs = _source("tf-jobs", ("job", "id", *JOB_COUNTS, "waiting", "total", "state",
                                         "eta"))
        self.finished = _source("tf-jobs-finished", FINISHED_COLUMNS)
        self.policies = _source("tf-policies", ("policy", *POLICY_STACK))
        self.workers = _source("tf-workers", WORKER_COLUMNS)
        # tags: the two bookkeeping sources reach the browser with the Div that refers to them
        self.summary = Div(text="taskflow: waiting for data", name="tf-summary",
                           tags=[self.begin, self.meta])

        self.rate_fig = figure(title="Samples/s (total and per worker)", x_axis_type="datetime",
                               height=280, sizing_mode="stretch_width", tools="",
                               toolbar_location=None)
        self.rate_fig.multi_line("xs", "ys", color="color", source=self.rate_workers,
                                 line_width=1.5, legend_field="worker")
        self.rate_fig.line("t", "total", source=self.rate_total, color="black", line_width=2.5,
                           legend_label="total")
        self.rate_fig.legend.location = "top_left"
        self.rate_fig.y_range.start = 0

        self.layer_fig = figure(title="Time share per layer (%)", y_range=FactorRange(factors=[]),
                                height=280, sizing_mode="stretch_width", tools="",
                                toolbar_location=None)
        self.layer_fig.hbar(y="layer", right="share", height=0.6, source=self.layers,
                            color="#1f77b4")
        self.layer_fig.x_range.start = 0

        self.job_fig = _bars("Running jobs (chunks)", JOB_STACK, JOB_COLORS, self.jobs, "job")
        self.policy_fig = _bars("Policy decisions", POLICY_STACK, POLICY_COLORS, self.policies,
                                "policy")
        fmt = NumberFormatter(format="0,0.0")
        self.job_table = DataTable(source=self.jobs, height=110, sizing_mode="stretch_width",
                                   index_position=None, columns=[
            TableColumn(field=f, title="ETA" if f == "eta" else f.replace("_", " "))
            for f in ("job", "state", "total", *JOB_COUNTS, "eta", "id")])
        self.finished_title = Div(text="<b>Finished jobs</b>: none yet", name="tf-finished")
        self.finished_table = DataTable(
            source=self.finished, height=110, sizing_mode="stretch_width", index_position=None,
            visible=False, columns=[TableColumn(field=f, title=f) for f in FINISHED_COLUMNS])
        self.worker_table = DataTable(source=self.workers, height=160, index_position=None,
                                         sizing_mode="stretch_width", columns=[
            TableColumn(field=f, title=f.replace("_", " "), **(
                {"formatter": fmt} if f in ("samples_per_s", "memory_mib", "memory_limit_mib")
                else {})) for f in WORKER_COLUMNS])
        self.root = column(
            self.summary, row(self.rate_fig, self.layer_fig, sizing_mode="stretch_width"),
            row(self.job_fig, self.policy_fig, sizing_mode="stretch_width"), self.job_table,
            self.finished_title, self.finished_table,
            Div(text="<b>Workers</b>: thread plan, memory, device"), self.worker_table,
            sizing_mode="stretch_width", name="tf-root")

    # --- update ---------------------------------------------------------------------------------
    def update(self, snap: dict[str, Any] | None) -> None:
        if snap is None or snap["tick"] == self.tick:
            return
        self.tick = snap["tick"]
        tp = snap["throughput"]
        # A browser applies each source change as its own message. ``tf-tick-begin`` is set
        # first and ``tf-meta`` last, so a reader seeing the same tick in both has read all
        # panels of that one snapshot (a sequence lock); otherwise it reads again.
        self.begin.data = {"tick": [snap["tick"]]}
        hist = tp.get("history") or {"t": [], "total": [], "workers": {}}
        self.rate_total.data = {"t": [t * 1000 for t in hist["t"]], "total": hist["total"]}
        names = sorted(hist["workers"])
        for w in names:
            self.colors.setdefault(w, Category10_10[len(self.colors) % 10])
        self.rate_workers.data = {
            "xs": [[t * 1000 for t in hist["workers"][w]["t"]] for w in names],
            "ys": [hist["workers"][w]["rate"] for w in names], "worker": names,
            "color": [self.colors[w] for w in names]}
        self._update_layers(snap["layers"])
        self._update_jobs(snap["jobs"])
        self._update_policies(snap["policies"])
        self._update_workers(snap["workers"])
        for table in (self.job_table, self.finished_table, self.worker_table):
            # BokehJS (3.9) redraws a DataTable on new data only when the row count changes
            # (its CDSView emits no change for equal indices); any change to the table itself
            # makes it redraw.
            table.tags = [snap["tick"]]
        running = sum(j["state"] == "running" for j in snap["jobs"].values())
        present = sum(w["present"] for w in snap["workers"].values())
        plugin = "on" if snap["policies"]["plugin"] else "not loaded"
        q = snap["queue"]
        self.summary.text = (
            f"<b>{tp['samples_per_s']:,.1f} samples/s</b> (last {tp['window_s']:g} s) &middot; "
            f"{tp['samples']:,} samples &middot; {present} workers &middot; {running} of "
            f"{len(snap['jobs'])} jobs running &middot; tasks: {q['processing']} on workers, "
            f"{q['queued']} queued &middot; taskflow scheduler plugin: {plugin}")
        self.meta.data = {"tick": [snap["tick"]], "samples_per_s": [tp["samples_per_s"]],
                          "samples": [tp["samples"]]}

    def _update_layers(self, layers: dict[str, Any]) -> None:
        share, seconds = layers["share"], layers["seconds"]
        names = sorted(share, key=share.get, reverse=True)
        if len(names) > TOP_LAYERS + 1:  # one "other" bar must stand for two layers at least
            names, rest = names[:TOP_LAYERS], names[TOP_LAYERS:]
            other = f"other ({len(rest)} layers)"  # no layer has this name: keys have no spaces
            share = {**share, other: sum(share[n] for n in rest)}
            seconds = {**seconds, other: sum(seconds[n] for n in rest)}
            names.append(other)
        names.reverse()  # the first factor is drawn at the bottom: the largest bar on top
        self.layers.data = {"layer": names, "share": [100 * share[n] for n in names],
                            "seconds": [seconds[n] for n in names]}
        self.layer_fig.y_range.factors = names
        source = {"events": "chunk telemetry", "dask-tasks": "Dask task durations"}
        sampled = layers.get("sampled") or 0
        self.layer_fig.title.text = (
            "Time share per layer (%)"
            f" from {source.get(layers['source'], 'no data yet')}"
            + (f", {sampled:,} chunks timed per layer" if sampled else ""))

    def _update_jobs(self, jobs: dict[str, Any]) -> None:
        labels = job_labels(jobs)
        ids = [j for j in jobs if jobs[j]["state"] not in FINISHED]
        data: dict[str, list] = {"job": [labels[j] for j in ids], "id": ids}
        for k in JOB_COUNTS:
            data[k] = [jobs[j][k] or 0 for j in ids]
        data["waiting"] = [max(0, r - f) for r, f in zip(data["remaining"], data["in_flight"])]
        data["total"] = [jobs[j]["total"] for j in ids]
        data["state"] = [jobs[j]["state"] for j in ids]
        data["eta"] = [_duration(jobs[j]["eta_s"]) for j in ids]
        self.jobs.data = data
        self.job_fig.y_range.factors = data["job"]
        ended = sorted((j for j in jobs if jobs[j]["state"] in FINISHED),
                       key=lambda j: -(jobs[j].get("started") or 0.0))
        self.finished.data = {
            "job": [labels[j] for j in ended], "state": [jobs[j]["state"] for j in ended],
            "chunks": [f"{jobs[j]['done']}/{jobs[j]['total']}" for j in ended],
            "quarantined": [jobs[j]["quarantined"] or 0 for j in ended],
            "took": [_duration(jobs[j].get("elapsed_s")) for j in ended],
            "reason": [jobs[j].get("reason") or "" for j in ended], "id": ended}
        self.finished_table.visible = bool(ended)
        self.finished_title.text = (f"<b>Finished jobs</b>: {len(ended)}, newest first"
                                    if ended else "<b>Finished jobs</b>: none yet")

    def _update_policies(self, policies: dict[str, Any]) -> None:
        by = policies["by_policy"]
        names = sorted(by)
        self.policies.data = {"policy": names,
                              **{k: [by[p][k] for p in names] for k in POLICY_STACK}}
        self.policy_fig.y_range.factors = names
        self.policy_fig.title.text = (
            "Policy decisions (applied / rejected)" if policies["plugin"]
            else "Policy decisions: taskflow scheduler plugin not loaded")

    def _update_workers(self, workers: dict[str, Any]) -> None:
        addrs = sorted(workers, key=lambda a: (not workers[a]["present"], a))
        rows = [_worker_row(a, workers[a]) for a in addrs]
        self.workers.data = {c: [r[c] for r in rows] for c in WORKER_COLUMNS}


def job_labels(jobs: dict[str, Any]) -> dict[str, str]:
    """Each job's label on the page: its name, with the start of its id where names repeat.

    Examples
    --------
    >>> labels = job_labels({"3f2a9c0d1e4b": {"name": "digits"}, "a81b77c2": {"name": "digits"},
    ...                      "c0ffee000001": {"name": "squeezenet"}, "j-old": {}})
    >>> list(labels.values())
    ['digits [3f2a9c]', 'digits [a81b77]', 'squeezenet', 'j-old']
    """
    names = {j: v.get("name") or j for j, v in jobs.items()}
    counts = Counter(names.values())
    repeated = {n for n, k in counts.items() if k > 1}
    return {j: f"{n} [{j[:6]}]" if n in repeated else n for j, n in names.items()}


def _worker_row(addr: str, w: dict[str, Any]) -> dict[str, Any]:
    threads = w.get("threads") or {}

    def mib(v: Any) -> float:
        return v / MIB if v else float("nan")

    return {"worker": addr, "name": w["name"], "device": w["device"] or "",
            "nthreads": w["nthreads"] or 0, "kernel_threads": threads.get("kernel_threads") or 0,
            "numba_threads": threads.get("numba") or 0, "memory_mib": mib(w["memory"]),
            "memory_limit_mib": mib(w["memory_limit"]), "processing": w["processing"],
            "samples_per_s": w["samples_per_s"], "samples": w["samples"], "chunks": w["chunks"],
            "status": w["status"]}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def page_doc(dashboard: Any, scheduler: Any, extra: dict, doc: Any) -> None:
    """Bokeh app function (``BokehApplication`` passes ``scheduler, extra, doc``)."""
    page = TaskflowPage()
    doc.title = "Dask: taskflow"
    doc.add_root(page.root)
    try:  # Dask's own page frame: navigation bar with the "More..." menu, and its theme
        from distributed.dashboard.components.scheduler import BOKEH_THEME, env

        doc.template = env.get_template("simple.html")
        doc.template_variables.update(extra)
        doc.theme = BOKEH_THEME
    except ImportError:  # pragma: no cover - distributed moved its internals; page still works
        pass
    page.update(dashboard.state.latest)
    callback = doc.add_periodic_callback(lambda: page.update(dashboard.state.latest),
                                         dashboard.interval_ms)
    dashboard.track(doc, callback)
