"""The taskflow page of the Dask dashboard: ``/taskflow``, its JSON, and ``taskflow_*`` metrics.

:class:`TaskflowDashboard` attaches to a running ``distributed.Scheduler`` and serves, from the
Dask dashboard's own HTTP server:

- ``/taskflow``: a Bokeh page (a second ``BokehTornado`` on ``scheduler.http_application``) with
  live panels: samples/s per worker and in total, time share per layer, job progress with ETA,
  scheduler-policy decisions, and each worker's thread plan, memory and device;
- ``/taskflow/json``: the same figures as one JSON object (``?tick=N``: a recent snapshot by
  number, as shown on a page);
- ``taskflow_*`` metrics on Dask's ``/metrics`` when ``prometheus_client`` is installed.

The figures come from :class:`~taskflow.dashboard.state.TaskflowState`, fed by ``taskflow.*``
telemetry events (:mod:`taskflow.dashboard.telemetry`), the scheduler's worker state and, when
loaded,
``scheduler.plugins["taskflow"].metrics()``. Everything runs on the scheduler's event loop.

A "Taskflow" link is added to the dashboard's "More..." menu. Dask builds that menu once per
scheduler from ``distributed.dashboard.scheduler.template_variables(scheduler)`` (memoised) and
every page shares its ``plots`` list, so the link is added to that list in place: it works
after the scheduler started, and pages rendered from then on show it.

Examples
--------
>>> client.register_plugin(DashboardPlugin())                   # doctest: +SKIP
>>> # or: dask scheduler --preload taskflow.dashboard.extension
>>> # then open http://127.0.0.1:8787/taskflow
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import weakref
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin
from tornado import web

from taskflow.dashboard.state import TaskflowState
from taskflow.dashboard.telemetry import TOPICS

logger = logging.getLogger(__name__)

ROUTE = "/taskflow"
#: Panels refresh this often; Dask's own live plots use 500 ms too.
UPDATE_INTERVAL_MS = 500
MENU_ENTRY = {"url": ROUTE.strip("/"), "name": "Taskflow"}
_DASHBOARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # scheduler -> dashboard
_LIVE: list[TaskflowDashboard] = []  # attached dashboards, newest last (for Prometheus)
_COLLECTOR: Any = None


class _EventTap(SchedulerPlugin):
    """Hands ``taskflow.*`` events to the state; closes the dashboard with the scheduler."""

    name = "taskflow-dashboard-events"

    def __init__(self, dashboard: TaskflowDashboard):
        self.dashboard = dashboard

    def log_event(self, topic: str, msg: Any, **kwargs: Any) -> None:
        if topic in TOPICS:
            self.dashboard.state.feed(topic, msg)

    async def close(self, **kwargs: Any) -> None:
        self.dashboard.close()


class _JsonHandler(web.RequestHandler):
    def initialize(self, dashboard: TaskflowDashboard) -> None:
        self.dashboard = dashboard

    def get(self) -> None:
        state = self.dashboard.state
        tick = self.get_argument("tick", None)
        snap = state.find(int(tick)) if tick is not None and tick.isdigit() else state.latest
        if snap is None and tick is not None:
            raise web.HTTPError(404, f"tick {tick} is no longer kept; ask without ?tick")
        if snap is None:
            snap = state.tick()
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps(snap, default=str))


class TaskflowDashboard:
    """The page, JSON and metrics of one scheduler; use :func:`attach_dashboard` to make one.

    Parameters
    ----------
    scheduler : distributed.Scheduler
    owner : SchedulerPlugin, optional
        When this plugin is later unregistered (without ``close``, which Dask does not call),
        the dashboard notices on its next update and detaches itself.
    interval_ms : int
        Refresh interval of the panels.

    Attributes
    ----------
    state : TaskflowState
    url : str or None
        The page's address, once attached.
    """

    def __init__(self, scheduler: Any, *, owner: Any = None,
                 interval_ms: int = UPDATE_INTERVAL_MS):
        self.scheduler = scheduler
        self.owner = owner
        self.interval_ms = interval_ms
        self.state = TaskflowState(scheduler)
        self.closed = False
        self._owner_seen = False
        self._app: Any = None
        self._tap = _EventTap(self)
        self._pc_name = f"taskflow-dashboard-{id(self):x}"
        self._docs: list[tuple[Any, Any]] = []  # (bokeh document, its periodic callback)

    # --- attach / close -------------------------------------------------------------------------
    def attach(self) -> TaskflowDashboard:
        from tornado.ioloop import IOLoop, PeriodicCallback

        s = self.scheduler
        self.state.replay(s)  # events from before we came (workers' thread reports, a job)
        s.add_plugin(self._tap, name=self._tap.name, idempotent=False)
        pc = PeriodicCallback(self._tick, self.interval_ms)
        s.periodic_callbacks[self._pc_name] = pc
        pc.start()
        self.state.tick()
        if getattr(s, "http_application", None) is not None and s.http_server is not None:
            self._app = self._bokeh_app()
            s.http_application.add_application(self._app)
            self._app.initialize(IOLoop.current())
            self._app.start()
            _menu(s, add=True)
        _LIVE.append(self)
        _register_collector()
        return self

    def _bokeh_app(self) -> Any:
        from distributed.dashboard.core import BokehApplication
        from distributed.dashboard.scheduler import template_variables

        from taskflow.dashboard.page import page_doc

        app = BokehApplication({ROUTE: functools.partial(page_doc, self)}, self.scheduler,
                               prefix=self.prefix, template_variables=template_variables(
                                   self.scheduler))
        app.add_handlers(r".*", [(f"{self.prefix}{ROUTE.strip('/')}/json", _JsonHandler,
                                  {"dashboard": self})])
        return app

    def close(self) -> None:
        """Remove the page, routes, callbacks, menu link and event tap. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        s = self.scheduler
        pc = s.periodic_callbacks.pop(self._pc_name, None)
        if pc is not None:
            pc.stop()
        for doc, callback in self._docs:
            with contextlib.suppress(ValueError, KeyError):
                doc.remove_periodic_callback(callback)
        self._docs.clear()
        if self._app is not None:
            with contextlib.suppress(ValueError):
                s.http_application.applications.remove(self._app)
            for conn in list(getattr(self._app, "_clients", ())):  # open pages: disconnect
                with contextlib.suppress(Exception):
                    conn._socket.close()
            self._app.stop()
            _menu(s, add=False)
        if s.plugins.get(self._tap.name) is self._tap:
            s.remove_plugin(self._tap.name)
        if _DASHBOARDS.get(s) is self:
            del _DASHBOARDS[s]
        if self in _LIVE:
            _LIVE.remove(self)

    # --- running --------------------------------------------------------------------------------
    def _see_owner(self) -> bool:
        """Whether the owner plugin is registered now; remembered once it was."""
        if any(p is self.owner for p in self.scheduler.plugins.values()):
            self._owner_seen = True
            return True
        return False

    def _tick(self) -> None:
        if self.owner is not None and not self._see_owner() and self._owner_seen:
            # unregistered (Dask does not call close then) or replaced by a plain plugin
            logger.info("taskflow dashboard: owner plugin is gone; detaching")
            self.close()
            return
        try:
            self.state.tick()
        except Exception:  # keep the callback alive; the error shows in the scheduler log
            logger.exception("taskflow dashboard: update failed")

    def track(self, doc: Any, callback: Any) -> None:
        """Remember a page's periodic callback (removed on :meth:`close` or session end)."""
        if self.closed:
            doc.remove_periodic_callback(callback)
            return
        self._docs.append((doc, callback))

        def forget(_: Any) -> None:
            with contextlib.suppress(ValueError):
                self._docs.remove((doc, callback))
        doc.on_session_destroyed(forget)

    @property
    def prefix(self) -> str:
        """The dashboard's URL prefix (``--dashboard-prefix``), taken from Dask's own page."""
        from bokeh.server.tornado import BokehTornado

        apps = getattr(self.scheduler.http_application, "applications", [])
        theirs = next((a for a in apps if isinstance(a, BokehTornado) and a is not self._app),
                      None)
        prefix = getattr(theirs, "prefix", "") or ""
        return "/" + prefix.strip("/") + "/" if prefix.strip("/") else "/"

    @property
    def url(self) -> str | None:
        server = getattr(self.scheduler, "http_server", None)
        if self._app is None or server is None or self.closed:
            return None
        host = self.scheduler.address.split("://")[-1].rsplit(":", 1)[0]
        if self.scheduler.address.startswith("inproc"):
            host = "127.0.0.1"
        return f"http://{host}:{server.port}{self.prefix}{ROUTE.strip('/')}"

    def __repr__(self) -> str:
        return f"<TaskflowDashboard {self.url or 'detached'}>"


def _menu(scheduler: Any, *, add: bool) -> None:
    try:
        from distributed.dashboard.scheduler import template_variables

        plots = template_variables(scheduler)["plots"]
    except Exception:  # no bokeh dashboard here, or distributed changed: the page still works
        return
    present = [p for p in plots if p.get("url") == MENU_ENTRY["url"]]
    if add and not present:
        plots.append(dict(MENU_ENTRY))
        plots.sort(key=lambda d: d["name"])
    elif not add:
        for p in present:
            plots.remove(p)


def attach_dashboard(scheduler: Any, *, owner: Any = None) -> TaskflowDashboard:
    """The scheduler's :class:`TaskflowDashboard`, attached now if it is not already.

    Idempotent: attaching again returns the dashboard already there (open pages keep working);
    a given ``owner`` takes it over. Call on the scheduler's event loop (a plugin's ``start``,
    ``dask_setup``, or ``client.run_on_scheduler``).
    """
    dashboard = _DASHBOARDS.get(scheduler)
    if dashboard is None or dashboard.closed:
        dashboard = TaskflowDashboard(scheduler, owner=owner)
        _DASHBOARDS[scheduler] = dashboard
        try:
            dashboard.attach()
        except BaseException:
            dashboard.close()
            raise
    elif owner is not None and dashboard.owner is not owner:
        dashboard.owner, dashboard._owner_seen = owner, False
    if owner is not None:
        # A plugin's start() runs just before Dask adds it to scheduler.plugins: look on the
        # next loop turn, so that removing it soon after (before a tick) is noticed too.
        from tornado.ioloop import IOLoop

        IOLoop.current().add_callback(dashboard._see_owner)
    return dashboard


class DashboardPlugin(SchedulerPlugin):
    """Scheduler plugin that attaches the taskflow dashboard in ``start``, detaches in ``close``.

    Parameters
    ----------
    replace : bool
        Register even if one is there (the new one takes over the same dashboard); by default
        registering again is a no-op.

    Examples
    --------
    >>> from distributed import Client
    >>> from taskflow.dashboard import DashboardPlugin, page_link
    >>> client = Client("tcp://scheduler-host:8786")              # doctest: +SKIP
    >>> client.register_plugin(DashboardPlugin())                 # doctest: +SKIP
    >>> page_link(client.dashboard_link)                          # doctest: +SKIP
    'http://scheduler-host:8787/taskflow'

    :class:`taskflow.Cluster` and ``dask scheduler --preload taskflow.dashboard`` register it
    themselves.
    """

    name = "taskflow-dashboard"
    idempotent = True

    def __init__(self, *, replace: bool = False):
        self.idempotent = not replace
        self.dashboard: TaskflowDashboard | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "dashboard": None}

    async def start(self, scheduler: Any) -> None:
        self.dashboard = attach_dashboard(scheduler, owner=self)

    async def close(self, **kwargs: Any) -> None:
        if self.dashboard is not None and self.dashboard.owner is self:
            self.dashboard.close()
        self.dashboard = None


def dask_setup(scheduler: Any) -> None:
    """``dask scheduler --preload taskflow.dashboard``: the scheduler starts it with the others."""
    scheduler.add_plugin(DashboardPlugin(), name=DashboardPlugin.name, idempotent=True)


def page_link(dashboard_link: str | None) -> str | None:
    """The /taskflow page's address from Dask's dashboard link (``http://host:port/status``).

    Examples
    --------
    >>> page_link("http://127.0.0.1:8787/status")
    'http://127.0.0.1:8787/taskflow'
    """
    if not dashboard_link:
        return None
    return dashboard_link.rsplit("/", 1)[0] + ROUTE


def performance_report_context(path: str | None) -> Any:
    """``distributed.performance_report(filename=path)``, or a do-nothing context for None.

    What ``taskflow run --report report.html`` uses: the report is Dask's standalone HTML page
    (task stream, worker profiles, bandwidth) of everything computed inside the block.

    Parameters
    ----------
    path : str or None
        The HTML file to write when the block ends; None: no report.

    Examples
    --------
    >>> import taskflow as tf
    >>> from taskflow.dashboard import performance_report_context
    >>> with performance_report_context("report.html"):          # doctest: +SKIP
    ...     tf.infer_zarr(model, "in.zarr", "out.zarr")
    >>> with performance_report_context(None):                   # nothing recorded
    ...     pass
    """
    if path is None:
        return contextlib.nullcontext()
    from distributed import performance_report

    return performance_report(filename=str(path))


# --- Prometheus ----------------------------------------------------------------------------------
def _register_collector() -> None:
    """Add ``taskflow_*`` metrics to the registry Dask's ``/metrics`` serves (once a process)."""
    global _COLLECTOR
    if _COLLECTOR is not None:
        return
    try:
        import prometheus_client
    except ImportError:
        return
    from taskflow.dashboard.metrics import TaskflowCollector

    _COLLECTOR = TaskflowCollector(lambda: _LIVE[-1].state if _LIVE else None)
    prometheus_client.REGISTRY.register(_COLLECTOR)
