"""Calibration on a Dask cluster: a map-reduce of statistics over the chunks of the data.

Static int8 needs the range of every quantised layer's input over the calibration data
(:mod:`taskflow.precision`). Here the data is a Dask array (or a Zarr store read as one),
rechunked along the batch to ``batch_size`` rows. The model to trace goes to every worker once
(``client.scatter(..., broadcast=True)``); each task runs it on one chunk and returns only
the chunk's statistics (:func:`taskflow.precision.calibration.chunk_stats`: a min and max per
value, or a histogram), which a tree of merges reduces (:func:`taskflow.ir.calibrate.merge`:
associative and commutative, so the result is exactly that of one pass in process).
Percentile and entropy calibration run a second pass for histograms over the merged ranges.
Activations never leave the worker that computed them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np

from taskflow.errors import InputError

if TYPE_CHECKING:
    from taskflow.model import Model
    from taskflow.precision.calibration import CalibrationTarget
    from taskflow.precision.report import CompressionReport

#: Partial statistics merged by one reduce task: a tree of height log8(chunks).
FAN_IN = 8


def calibration_arrays(model: Model, source: Any, input_name: str | None = None,
                       storage_options: Mapping[str, Any] | None = None
                       ) -> dict[str, da.Array]:
    """Model input name -> Dask array of the calibration data in ``source``: a Dask array, a
    Zarr path or URL (an array, or a group with one array per input, as ``taskflow run``
    reads it), or a dict of input name to either.

    Examples
    --------
    >>> import dask.array as da
    >>> from taskflow.demo import load_digits_model
    >>> x = da.zeros((10, 1, 8, 8), dtype="float32", chunks=5)
    >>> list(calibration_arrays(load_digits_model(), x))
    ['input']
    """
    from taskflow.precision.report import as_feed

    names = model.graph.input_names
    if isinstance(source, (str, os.PathLike)):
        wanted = [input_name] if input_name is not None else names
        if input_name is not None and input_name not in names:
            raise InputError(f"input_name {input_name!r} is not an input of the model; its "
                             f"inputs are {names}")
        return {name: _from_zarr(path, storage_options)
                for name, path in _zarr_paths(source, wanted, storage_options).items()}
    feed = as_feed(model, source, input_name, what="calibration data")
    out = {}
    for name, x in feed.items():
        if isinstance(x, (str, os.PathLike)):
            x = _from_zarr(_zarr_paths({name: x}, [name], storage_options)[name],
                           storage_options)
        out[name] = x if isinstance(x, da.Array) else da.from_array(np.asarray(x))
    return out


def _zarr_paths(source: Any, names: list[str],
                options: Mapping[str, Any] | None) -> dict[str, tuple[str, str]]:
    # The stream's resolution of a Zarr source (array or group, names, URLs, its errors), so
    # `taskflow quantize --calibration` reads a store exactly as `taskflow run --input` does.
    from taskflow.stream.sources import open_sources

    return {name: (s.location, s.path) for name, s in open_sources(source, names,
                                                                  options).items()}


def _from_zarr(where: tuple[str, str], options: Mapping[str, Any] | None) -> da.Array:
    loc, path = where
    return da.from_zarr(loc, component=path or None, storage_options=dict(options or {}) or None)


def cluster_stats(client: Any, target: CalibrationTarget, arrays: Mapping[str, da.Array],
                  batch_size: int, ranges: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One pass over ``arrays`` on ``client``'s cluster: per-chunk
    :func:`taskflow.precision.calibration.chunk_stats`, tree-merged; histograms when
    ``ranges`` is given.

    Examples
    --------
    >>> stats = cluster_stats(client, target, {"input": x}, 32)  # doctest: +SKIP
    >>> stats["input"]                                          # doctest: +SKIP
    RangeStats(lo=0.0, hi=1.0)
    """
    names = list(arrays)
    rows = {a.shape[0] for a in arrays.values()}
    if len(rows) != 1 or 0 in rows:
        raise InputError(f"calibration arrays have row counts {sorted(rows)}; expected one "
                         "count > 0 for every input")
    blocks = {}
    for name, a in arrays.items():
        a = a.rechunk({0: batch_size, **{k: -1 for k in range(1, a.ndim)}})
        blocks[name] = a.to_delayed().reshape(-1)
    [shipped] = client.scatter([target], broadcast=True, hash=False)
    tag = f"{target.token[:12]}-{'hist' if ranges is not None else 'range'}"
    parts = [dask.delayed(_chunk)(shipped, names, ranges, *[blocks[n][k] for n in names],
                                  dask_key_name=f"tf-calibrate-{tag}-{k}")
             for k in range(len(blocks[names[0]]))]
    level = 0
    while len(parts) > 1:
        level += 1
        parts = [dask.delayed(_merge_all)(*parts[k:k + FAN_IN],
                                          dask_key_name=f"tf-calibrate-merge-{tag}-{level}-{k}")
                 for k in range(0, len(parts), FAN_IN)]
    try:
        return client.compute(parts[0]).result()
    finally:
        shipped.release()


def _chunk(target: CalibrationTarget, names: list[str], ranges: Mapping[str, Any] | None,
           *blocks: np.ndarray) -> dict[str, Any]:
    from taskflow.precision.calibration import chunk_stats

    return chunk_stats(target, dict(zip(names, blocks)), ranges)


def _merge_all(*stats: Mapping[str, Any]) -> dict[str, Any]:
    from taskflow.ir.calibrate import merge

    out: dict[str, Any] = {}
    for s in stats:
        out = merge(out, s)
    return out


@contextlib.contextmanager
def _cluster_client(client: Any) -> Iterator[Any]:
    """``client`` (a ``distributed.Client`` or a :class:`taskflow.Cluster`), else a temporary
    local cluster's."""
    if client is not None:
        yield getattr(client, "client", None) or client
        return
    with _local_cluster() as cluster:
        yield cluster.client


def cluster_ranges(model: Model, target: CalibrationTarget, source: Any, *,
                   method: str = "minmax", percentile: float = 99.999, client: Any = None,
                   batch_size: int = 32, input_name: str | None = None,
                   storage_options: Mapping[str, Any] | None = None
                   ) -> tuple[dict[str, tuple[float, float]], dict[str, np.ndarray]]:
    """:func:`taskflow.precision.calibrate` for a Dask array or a Zarr store: ranges (and, for
    ``"percentile"``/``"entropy"``, histograms) reduced on a cluster, then the ranges chosen.
    Also returns the first rows of the data (the per-layer timing sample).

    Examples
    --------
    >>> import taskflow as tf                                   # doctest: +SKIP
    >>> with tf.Cluster() as cluster:                           # doctest: +SKIP
    ...     int8 = model.quantize("calibration.zarr", client=cluster)
    """
    from taskflow.ir.calibrate import choose_ranges
    from taskflow.precision.measure import SAMPLE_BATCH

    arrays = calibration_arrays(model, source, input_name, storage_options)
    model.check_feed({k: _Meta(a.shape, a.dtype) for k, a in arrays.items()})
    with _cluster_client(client) as c:
        ranges = cluster_stats(c, target, arrays, batch_size)
        hist = cluster_stats(c, target, arrays, batch_size, ranges) \
            if method != "minmax" else None
        first = dict(zip(arrays, c.compute([a[:SAMPLE_BATCH] for a in arrays.values()],
                                           sync=True)))
    return choose_ranges(ranges, hist, method, percentile), first


class _Meta:
    """Shape and dtype only, for :meth:`Model.check_feed` before any chunk is read."""

    def __init__(self, shape: tuple[int, ...], dtype: Any):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)


#: Held-out rows ``taskflow quantize`` compares int8 with fp32 on, at most: both models run
#: them in the client's process, and a few hundred rows give agreement to about 0.5%.
EVAL_ROWS = 512
#: Without ``--eval``, the last 1/EVAL_SPLIT of the calibration rows are held out for the
#: comparison (20%): calibration uses the rest, so the report never grades the data it saw.
EVAL_SPLIT = 5


def quantize_files(model_path: str | os.PathLike, output: str | os.PathLike, *,
                   calibration: Any = None, eval_data: Any = None, mode: str = "static",
                   method: str = "minmax", percentile: float = 99.999, per_channel: bool = True,
                   input_name: str | None = None, batch_size: int = 32,
                   cluster: Any = None, reduce_range: bool | None = None) -> CompressionReport:
    """``taskflow quantize``: load ``model_path``, quantise it calibrated on the Zarr store
    ``calibration`` (on a Dask cluster), save it, and compare the saved model (every quantised
    layer int8, as :func:`taskflow.load` and ONNX Runtime run it) with fp32 on held-out rows.

    Held-out rows are the first :data:`EVAL_ROWS` of ``eval_data``, or else the last
    1/:data:`EVAL_SPLIT` of the calibration rows (at most :data:`EVAL_ROWS`), which static
    calibration then leaves out. Dynamic mode calibrates nothing, so it is compared on the
    calibration rows themselves.

    Parameters
    ----------
    model_path, output : str or os.PathLike
        The fp32 ONNX model, and where to write the QDQ model.
    calibration, eval_data : str, optional
        Zarr paths or URLs (array, or group with one array per input).
    mode, method, percentile, per_channel, input_name, batch_size, reduce_range
        As in :meth:`taskflow.Model.quantize`.
    cluster : callable, optional
        Returns the :class:`taskflow.Cluster` to calibrate on (a context manager); default:
        an embedded one.

    Returns
    -------
    CompressionReport
        Sizes, per-layer choices, accuracy and speed.

    Examples
    --------
    >>> report = quantize_files("cnn.onnx", "cnn-int8.onnx",      # doctest: +SKIP
    ...                         calibration="images.zarr")
    >>> report.size_ratio > 3.5                                 # doctest: +SKIP
    True
    """
    from taskflow.model import load
    from taskflow.precision import evaluate

    if mode == "static" and calibration is None:
        raise InputError("static quantisation needs --calibration DATA.zarr (representative "
                         "input rows); or use --mode dynamic")
    model = load(model_path)
    calib = None if calibration is None else calibration_arrays(model, calibration, input_name)
    held = None if eval_data is None else calibration_arrays(model, eval_data, input_name)
    for arrays in (calib, held):
        if arrays is not None:
            model.check_feed({k: _Meta(a.shape, a.dtype) for k, a in arrays.items()})
    if calib is not None and held is None:
        rows = next(iter(calib.values())).shape[0]
        cut = rows - rows // EVAL_SPLIT
        if mode == "static" and cut < rows:
            held = {k: a[cut:] for k, a in calib.items()}
            calib = {k: a[:cut] for k, a in calib.items()}
        elif mode == "dynamic":
            held = calib
    if held is not None:
        held = {k: a[:EVAL_ROWS] for k, a in held.items()}
    with contextlib.ExitStack() as stack:
        client = None
        if mode == "static":
            made = cluster() if cluster is not None else _local_cluster()
            client = stack.enter_context(made).client
        quantized = model.quantize(calib, mode=mode, method=method, percentile=percentile,
                                   per_channel=per_channel, client=client,
                                   batch_size=batch_size, reduce_range=reduce_range)
        if held is not None:
            names = list(held)
            got = client.compute(list(held.values()), sync=True) if client is not None else \
                dask.compute(*held.values(), scheduler="threads")
            held = dict(zip(names, got))
    quantized.save(output)
    report = quantized.precision_report
    if held:
        # graded as the file runs: every quantised layer int8 (taskflow.load, ONNX Runtime)
        report = evaluate(model, load(output), held, batch_size=batch_size, report=report)
        kept = sum(c.precision == "int8" for c in report.layers)
        report.notes = [n for n in report.notes if not n.startswith("save()")] + [
            f"accuracy and speed are the saved file's, every quantised layer int8; "
            f"taskflow.load(..., precision='int8') runs int8 only where measured faster "
            f"here ({kept} of {len(report.layers)} layers)"]
    return report


def _local_cluster() -> Any:
    from taskflow.dask.cluster import Cluster

    return Cluster(quiet=True)
