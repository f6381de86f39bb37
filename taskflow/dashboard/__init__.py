"""The ``/taskflow`` page on the Dask dashboard: the scheduler extension
(:mod:`~taskflow.dashboard.extension`), its state (:mod:`~taskflow.dashboard.state`), the Bokeh
page (:mod:`~taskflow.dashboard.page`), Prometheus metrics (:mod:`~taskflow.dashboard.metrics`)
and the telemetry events workers and clients send it (:mod:`~taskflow.dashboard.telemetry`).

``dask scheduler --preload taskflow.dashboard`` adds the page (``dask_setup``).
"""

from __future__ import annotations

from typing import Any

_LAZY = ("DashboardPlugin", "attach_dashboard", "dask_setup", "page_link",
         "performance_report_context")


def __getattr__(name: str) -> Any:
    # Bokeh and distributed load on first use: telemetry emitters import this package too
    if name in _LAZY:
        from taskflow.dashboard import extension

        return getattr(extension, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
