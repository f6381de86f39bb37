"""A :class:`~taskflow.pipeline.Pipeline` as one lazy Dask graph.

Each model stage is lowered by :func:`taskflow.dask.lower.predict` (one task per chunk, weights
as keys), each function stage becomes one ``dask.array.apply_gufunc`` over the batch chunks
(the batch is the loop dimension, every other axis a core dimension, so a function sees whole
rows), and a nested pipeline recurses. All stages share the batch chunking, so chunk j of stage
s+1 can start as soon as chunk j of stage s is done: the stages overlap on the cluster
(pipeline parallelism) with no intermediate written anywhere. Computing several outputs
together (``dask.compute(*arrays.values())`` or ``da.to_zarr(..., compute=False)`` per
output, then one ``dask.compute``) runs every stage once.

A stage's ``priority`` and ``resources`` become Dask annotations of its layers, which the
scheduler plugin and Dask's own scheduling see per task.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import dask
import dask.array as da
import numpy as np

from taskflow.errors import InputError
from taskflow.pipeline.core import FUNCTION, MODEL, PIPELINE, Pipeline, Stage

#: Rows of the sample a pipeline runs in process to learn each function stage's output shapes
#: and dtypes (two: a stage that drops the batch axis for one row is caught).
SAMPLE_ROWS = 2


def predict(pipe: Pipeline, x: Any, *, outputs: list[str] | None = None, client: Any = None,
            chunk_size: int | None = None, **model_options: Any) -> dict[str, da.Array]:
    """Lazy Dask arrays of ``pipe``'s outputs over ``x``, chunked along the batch.

    Parameters
    ----------
    pipe : Pipeline
    x : dask.array.Array, numpy.ndarray or dict of name to array
        The pipeline's input (a dict for several).
    outputs : list of str, optional
        Values to return (default: the pipeline's outputs); any stage's value can be one.
    client : distributed.Client, optional
        Passed to every model stage (weights scattered once per cluster).
    chunk_size : int, optional
        Rows per chunk of the batch (default: the input's chunking).
    **model_options
        Passed to each model stage's :meth:`taskflow.Model.predict` (``mode``,
        ``task_flops``...).

    Returns
    -------
    dict of str to dask.array.Array
        In the order of ``outputs``.

    Examples
    --------
    >>> import dask, dask.array as da                                  # doctest: +SKIP
    >>> out = pipe.predict(da.from_zarr("images.zarr"))               # doctest: +SKIP
    >>> labels, scores = dask.compute(out["labels"], out["scores"])   # doctest: +SKIP
    """
    feed = _as_feed(pipe, x, chunk_size)
    wanted = list(outputs) if outputs else list(pipe.output_names)
    sample = {n: _sample(a) for n, a in feed.items()}
    pipe.run(wanted, sample)  # checks the names and the wiring, on two rows, in process
    metas = _value_metas(pipe, sample)
    arrays = _lower(pipe, feed, metas, set(wanted), client, model_options)
    return {n: arrays[n] for n in wanted}


def _as_feed(pipe: Pipeline, x: Any, chunk_size: int | None) -> dict[str, da.Array]:
    names = pipe.input_names
    if not isinstance(x, Mapping):
        if len(names) != 1:
            raise InputError(f"pipeline {pipe.name!r} has inputs {names}; pass a dict "
                             "name -> array")
        x = {names[0]: x}
    pipe.check_names(x)
    feed = {}
    for name, a in x.items():
        if not isinstance(a, da.Array):
            a = np.asarray(a)
            a = da.from_array(a, chunks=(chunk_size or max(len(a), 1), *a.shape[1:]))
        if a.ndim == 0:
            raise InputError(f"pipeline input {name!r} is a scalar; expected a batch (rows "
                             "on axis 0)")
        if chunk_size:
            a = a.rechunk({0: chunk_size})
        feed[name] = a
    first = next(iter(feed.values()))
    rows = {n: a.shape[0] for n, a in feed.items()}
    if len(set(rows.values())) != 1:
        raise InputError(f"pipeline inputs must share their batch axis; rows {rows}")
    return {n: a if a.chunks[0] == first.chunks[0] else a.rechunk({0: first.chunks[0]})
            for n, a in feed.items()}


def _sample(a: da.Array) -> np.ndarray:
    shape = (SAMPLE_ROWS, *a.shape[1:])
    if a.dtype.kind in "OUS":
        return np.full(shape, "", dtype=a.dtype)
    return np.zeros(shape, dtype=a.dtype)


def _value_metas(pipe: Pipeline, sample: dict[str, np.ndarray]
                 ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Per-row shape and dtype of every value, nested pipelines' as ``<stage>/<value>``."""
    values: dict[str, Any] = dict(sample)
    metas = {n: (np.shape(a)[1:], np.asarray(a).dtype) for n, a in sample.items()}
    for s in pipe.stages:
        args = [values[v] for v in s.input_values]
        ys = s.call(args)
        if s.kind == PIPELINE:
            inner = _value_metas(s.op, dict(zip(s.op.input_names, args)))
            metas.update({f"{s.name}/{k}": v for k, v in inner.items()})
        for v, y in zip(s.output_values, ys):
            values[v] = y
            metas[v] = (np.shape(y)[1:], np.asarray(y).dtype)
    return metas


def _lower(pipe: Pipeline, feed: dict[str, da.Array], metas: dict, wanted: set[str],
           client: Any, options: dict[str, Any]) -> dict[str, da.Array]:
    arrays: dict[str, da.Array] = dict(feed)
    needed = pipe._needed(list(wanted))
    for s in pipe.stages:
        if s.name not in needed:
            continue
        args = [arrays[v] for v in s.input_values]
        with _annotations(s):
            if s.kind == MODEL:
                feed_s = dict(zip(s.op_inputs(), args))
                ys = s.op.predict(feed_s, client=client, chunk_size=s.batch_size, **options)
                ys = list(ys) if isinstance(ys, tuple) else [ys]
            elif s.kind == PIPELINE:
                inner_metas = {k.split("/", 1)[1]: v for k, v in metas.items()
                               if k.startswith(s.name + "/")}
                sub = _lower(s.op, dict(zip(s.op.input_names, args)), inner_metas,
                             set(s.op.output_names), client, options)
                ys = [sub[o] for o in s.op.output_names]
            else:
                ys = _function(s, args, [metas[v] for v in s.output_values])
        arrays.update(zip(s.output_values, ys))
    return arrays


def _annotations(s: Stage) -> Any:
    resources = dict(s.resources or {})
    if s.device == "gpu":
        resources.setdefault("GPU", 1)
    given: dict[str, Any] = {}
    if s.priority:
        given["priority"] = s.priority
    if resources:
        given["resources"] = resources
    return dask.annotate(**given) if given else contextlib.nullcontext()


class _Call:
    """A function stage on one block of rows (picklable: it travels to the workers)."""

    def __init__(self, stage: Stage):
        self.stage = stage

    def __call__(self, *blocks: np.ndarray) -> Any:
        ys = self.stage.call(list(blocks))
        return ys[0] if len(ys) == 1 else tuple(ys)


def _function(s: Stage, args: list[da.Array], metas: list[tuple[tuple, np.dtype]]
              ) -> list[da.Array]:
    assert s.kind == FUNCTION
    ins = [f"({','.join(f'i{k}_{d}' for d in range(1, a.ndim))})" for k, a in enumerate(args)]
    sizes = {}
    outs = []
    for k, (shape, _) in enumerate(metas):
        dims = [f"o{k}_{d}" for d in range(len(shape))]
        sizes.update(zip(dims, shape))
        outs.append(f"({','.join(dims)})")
    signature = f"{','.join(ins)}->{','.join(outs)}"
    dtypes = [dt for _, dt in metas]
    if s.batch_size:
        args = [a.rechunk({0: s.batch_size}) for a in args]
    result = da.apply_gufunc(_Call(s), signature, *args, output_dtypes=dtypes if len(dtypes) > 1
                             else dtypes[0], output_sizes=sizes, allow_rechunk=True,
                             vectorize=False, token=f"tf_{s.name}".replace("-", "_"))
    return list(result) if isinstance(result, tuple) else [result]
