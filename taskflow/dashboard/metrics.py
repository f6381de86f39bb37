"""``taskflow_*`` Prometheus metrics, served on Dask's ``/metrics`` (needs ``prometheus_client``).

Dask registers its collectors once per process in ``prometheus_client.REGISTRY``, which its
``/metrics`` handler serves; this collector joins them there. Like Dask's, it reports the newest
attached scheduler when one process runs several (tests). Names:

- ``taskflow_samples_total{worker}``, ``taskflow_chunks_total{worker}`` (counters),
  ``taskflow_samples_per_second{worker}`` (gauge, over the rate window)
- ``taskflow_layer_seconds_total{layer}`` (counter, from chunk telemetry)
- ``taskflow_job_chunks{job,name,status}`` (gauge; status done/in_flight/failed/quarantined/
  remaining), ``taskflow_job_eta_seconds{job,name}`` (gauge, running jobs with an estimate);
  ``job`` is the job's id, ``name`` its name (one per id, so it adds no series)
- ``taskflow_policy_decisions_total{policy,outcome}`` (counter; outcome applied/rejected)
- ``taskflow_worker_kernel_threads{worker}`` (gauge), ``taskflow_events_total{topic}`` (counter)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class TaskflowCollector:
    """Prometheus collector reading the latest snapshot of ``get_state()``."""

    def __init__(self, get_state: Callable[[], Any]):
        self.get_state = get_state

    def collect(self) -> Iterator[Any]:
        state = self.get_state()
        snap = state.latest if state is not None else None
        if snap is None:
            return
        workers = snap["workers"]
        samples = CounterMetricFamily("taskflow_samples", "Samples finished, by worker.",
                                      labels=["worker"])
        chunks = CounterMetricFamily("taskflow_chunks", "Chunks finished, by worker.",
                                     labels=["worker"])
        rate = GaugeMetricFamily("taskflow_samples_per_second",
                                 f"Samples/s over the last {snap['throughput']['window_s']:g} s.",
                                 labels=["worker"])
        kernel = GaugeMetricFamily("taskflow_worker_kernel_threads",
                                   "Kernel (Numba/BLAS) threads per worker thread.",
                                   labels=["worker"])
        for addr, w in workers.items():
            samples.add_metric([addr], w["samples"])
            chunks.add_metric([addr], w["chunks"])
            rate.add_metric([addr], w["samples_per_s"])
            k = (w.get("threads") or {}).get("kernel_threads")
            if w["present"] and k is not None:
                kernel.add_metric([addr], k)
        yield from (samples, chunks, rate, kernel)

        layers = CounterMetricFamily("taskflow_layer_seconds", "Compute seconds per layer.",
                                     labels=["layer"])
        for layer, s in snap["layers"]["seconds"].items():
            layers.add_metric([layer], s)
        yield layers

        progress = GaugeMetricFamily("taskflow_job_chunks", "Chunks of a job by status.",
                                     labels=["job", "name", "status"])
        eta = GaugeMetricFamily("taskflow_job_eta_seconds", "Estimated seconds left.",
                                labels=["job", "name"])
        for job, j in snap["jobs"].items():
            name = j.get("name") or job
            for status in ("done", "in_flight", "failed", "quarantined", "remaining"):
                if j[status] is not None:
                    progress.add_metric([job, name, status], j[status])
            if j["eta_s"] is not None and j["state"] == "running":
                eta.add_metric([job, name], j["eta_s"])
        yield from (progress, eta)

        decisions = CounterMetricFamily("taskflow_policy_decisions",
                                        "Scheduler-policy suggestions by outcome.",
                                        labels=["policy", "outcome"])
        for policy, counts in snap["policies"]["by_policy"].items():
            for outcome in ("applied", "rejected"):
                decisions.add_metric([policy, outcome], counts[outcome])
        yield decisions

        events = CounterMetricFamily("taskflow_events", "Telemetry events received, by topic.",
                                     labels=["topic"])
        for topic, n in snap["events"].items():
            events.add_metric([topic], n)
        yield events
