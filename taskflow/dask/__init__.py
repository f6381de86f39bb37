"""Everything that maps a graph onto Dask: the batch trace (:mod:`~taskflow.dask.trace`),
task units (:mod:`~taskflow.dask.units`), execution plans (:mod:`~taskflow.dask.plan`), the
lowering of ``Model.predict`` (:mod:`~taskflow.dask.lower`), model and pipeline parallelism
(:mod:`~taskflow.dask.parallel`), thread budgets (:mod:`~taskflow.dask.threads`) and the
embedded cluster (:mod:`~taskflow.dask.cluster`).

Named after the library it targets; inside it ``import dask`` is still the real Dask, since
every import in taskflow is absolute.
"""
