"""Static and dynamic int8: calibration in process (:func:`calibration_stats`; on a Dask
cluster: :mod:`taskflow.dask.calibrate`) and :meth:`taskflow.Model.quantize`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from taskflow import ops
from taskflow.errors import InputError
from taskflow.executor import ExecutionPlan
from taskflow.ir.calibrate import (
    METHODS,
    choose_ranges,
    collect_histograms,
    collect_ranges,
    merge,
)
from taskflow.ir.graph import Graph, Node
from taskflow.ir.quantize import CONTRACTIONS, ineligible_reason, mark_precision, quantize_graph
from taskflow.ops.cpu.lowp import int8_weight_max
from taskflow.ops.quant import INT8_REDUCED_WEIGHT_MAX, INT8_WEIGHT_MAX
from taskflow.precision.measure import (
    CHOICES,
    SAMPLE_BATCH,
    _choose,
    drop_precision,
    lowp_backend,
    reduced_layers,
)
from taskflow.precision.report import CompressionReport, as_feed, weight_bytes

if TYPE_CHECKING:
    from taskflow.model import Model

MODES = ("static", "dynamic")
#: The graph passes run before quantising that keep standard ONNX ops (what ONNX Runtime's
#: ``quant_pre_process`` does): a BatchNorm or channel affine folded into its convolution
#: gives one int8 weight instead of an int8 weight then an fp32 rescale, so ONNX Runtime and
#: taskflow compute the same thing; the file also loses the BatchNorm parameters.
PREPARE_PASSES = ("fold_constants", "remove_identities", "fold_batchnorm", "fold_channel_affine",
                  "eliminate_dead")


@dataclass
class CalibrationTarget:
    """What calibration runs: ``graph`` (the optimised graph, or the source graph where the
    optimiser renamed a value that needs a range), and ``names``: traced value -> the source
    graph's name for it. Built by :func:`calibration_target`; sent once to each Dask worker.
    """

    graph: Graph
    names: dict[str, str]
    token: str
    device: str = "cpu"


def range_names(graph: Graph) -> list[str]:
    """The values of ``graph`` that static int8 needs ranges of: the data input of every
    contraction :func:`taskflow.ir.quantize.quantize_graph` quantises.

    Examples
    --------
    >>> from taskflow.demo import load_digits_model
    >>> range_names(load_digits_model().source_graph)
    ['input', '3_maxpool', '8_flatten', '11_dropout']
    """
    names = [n.inputs[0] for n in graph.toposort()
             if n.op in CONTRACTIONS and not n.domain and ineligible_reason(graph, n) is None]
    return list(dict.fromkeys(names))


def prepare(graph: Graph) -> Graph:
    """``graph`` after :data:`PREPARE_PASSES`: the graph :func:`quantize` quantises.

    Examples
    --------
    >>> from taskflow.demo import load_digits_model
    >>> prepare(load_digits_model().source_graph).op_counts()["Conv"]
    2
    >>> "BatchNormalization" in prepare(load_digits_model().source_graph).op_counts()
    False
    """
    from taskflow.ir.optimize import optimize

    return optimize(graph, passes=list(PREPARE_PASSES))[0]


def calibration_target(model: Model, graph: Graph | None = None) -> CalibrationTarget:
    """The graph to trace for the ranges of :func:`range_names` of ``graph`` (default:
    ``model.source_graph``), a graph ``model`` computes.

    The optimised graph runs faster, so it is traced where it still has every value: a value
    that only an identity op (Dropout, Identity) removed is traced under the name it aliases.
    Where the optimiser folded a value away (an affine folded into the next convolution), the
    source graph runs unoptimised instead.

    Examples
    --------
    >>> from taskflow.demo import load_digits_model
    >>> target = calibration_target(load_digits_model())
    >>> target.names["10_relu"], target.graph.name == "digits_cnn" or True
    ('11_dropout', True)
    """
    source, run = model.source_graph if graph is None else graph, model.graph
    wanted = range_names(source)
    produced = set(run.input_names) | {o for n in run.nodes for o in n.outputs if o}
    producers = source.producers()
    names: dict[str, str] = {}
    for name in wanted:
        alias = name
        while alias not in produced and alias in producers and \
                ops.get(producers[alias].op).kind == "identity":
            alias = producers[alias].inputs[0]
        if alias not in produced or alias in names:
            run, names = source, {n: n for n in wanted}
            break
        names[alias] = name
    return CalibrationTarget(run, names, _token(run, names), model.device)


def _token(graph: Graph, names: Mapping[str, str]) -> str:
    import hashlib

    from taskflow.ir.fingerprint import update

    h = hashlib.sha256()
    update(h, [graph, dict(names)])
    return h.hexdigest()


_TARGET_MODELS: dict[str, Any] = {}


def _target_model(target: CalibrationTarget) -> Model:
    """The target's graph as a model, built once per process (each Dask worker keeps its own)."""
    from taskflow.model import Model

    model = _TARGET_MODELS.get(target.token)
    if model is None:
        _TARGET_MODELS.clear()  # one calibration at a time: drop the last one's model
        model = _TARGET_MODELS[target.token] = Model(target.graph, device=target.device,
                                                     optimize=False)
    return model


def chunk_stats(target: CalibrationTarget, feed: Mapping[str, Any],
                ranges: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Statistics of one chunk of calibration rows: the ranges of the target's values, or,
    given the merged ``ranges`` of all chunks, their histograms. Each value is reduced to its
    statistic the moment it is computed, so no activation outlives its layer.

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow.demo import load_digits_model
    >>> target = calibration_target(load_digits_model())
    >>> stats = chunk_stats(target, {"input": np.ones((4, 1, 8, 8), np.float32)})
    >>> stats["input"]
    RangeStats(lo=1.0, hi=1.0)
    """
    model = _target_model(target)

    def collect(values: dict[str, Any]) -> dict[str, Any]:
        if ranges is None:
            return collect_ranges(values)
        return collect_histograms(values, ranges)

    feed = model.check_feed({k: np.asarray(v) for k, v in feed.items()})
    stats = collect({target.names[k]: v for k, v in feed.items() if k in target.names})

    def trace(node: Node, args: list[Any], results: tuple) -> None:
        nonlocal stats
        seen = {target.names[o]: np.asarray(r) for o, r in zip(node.outputs, results)
                if o in target.names}
        if seen:
            stats = merge(stats, collect(seen))

    ExecutionPlan(model.graph, device=target.device).run(feed, trace=trace)
    return stats


def calibration_stats(target: CalibrationTarget, feed: Mapping[str, Any], batch_size: int = 32,
                      ranges: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:func:`chunk_stats` over the rows of in-memory ``feed``, ``batch_size`` at a time,
    merged.

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow.demo import load_digits_model
    >>> target = calibration_target(load_digits_model())
    >>> x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 1, 8, 8).repeat(5, 0)
    >>> calibration_stats(target, {"input": x}, batch_size=2)["input"]
    RangeStats(lo=-1.0, hi=1.0)
    """
    n = len(next(iter(feed.values())))
    stats: dict[str, Any] = {}
    for k in range(0, n, batch_size):
        stats = merge(stats, chunk_stats(target, {name: v[k:k + batch_size]
                                                  for name, v in feed.items()}, ranges))
    return stats


# --- Model.quantize ----------------------------------------------------------------------------
def quantize(model: Model, calibration: Any = None, *, mode: str = "static",
             per_channel: bool = True, method: str = "minmax", percentile: float = 99.999,
             client: Any = None, batch_size: int = 32, input_name: str | None = None,
             choose: str = "measure", sample: Any = None,
             reduce_range: bool | None = None) -> Model:
    """What :meth:`taskflow.Model.quantize` does (see there).

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow.demo import load_digits, load_digits_model
    >>> images, labels, test_idx = load_digits()
    >>> x = (images[:256] / 16).astype(np.float32)
    >>> q = quantize(load_digits_model(), x, choose="all")
    >>> q.precision_report.size_ratio > 3.5
    True
    """
    from taskflow.model import Model

    if mode not in MODES:
        raise InputError(f"mode={mode!r} is unknown; expected one of {MODES}")
    if method not in METHODS:
        raise InputError(f"calibration method {method!r} is unknown; expected one of "
                         f"{METHODS}")
    if choose not in CHOICES:
        raise InputError(f"choose={choose!r} is unknown; expected one of {CHOICES}")
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size!r}: expected an integer >= 1")
    if reduce_range not in (None, True, False):
        raise InputError(f"reduce_range={reduce_range!r}: expected True, False or None "
                         "(7-bit weights where this CPU's int8 GEMM needs them)")
    if reduce_range is None:
        reduce_range = 0 < int8_weight_max() < INT8_WEIGHT_MAX
    wmax = INT8_REDUCED_WEIGHT_MAX if reduce_range else INT8_WEIGHT_MAX
    size = weight_bytes(model.source_graph)
    source = prepare(model.source_graph)
    first_rows = None
    if mode == "static":
        if calibration is None:
            raise InputError("static quantisation needs calibration data (a few hundred "
                             "representative rows); or use mode='dynamic'")
        ranges, first_rows = calibrate(model, calibration, method=method, percentile=percentile,
                                       client=client, batch_size=batch_size,
                                       input_name=input_name, graph=source)
        qgraph, layers = quantize_graph(source, ranges, per_channel=per_channel, mode="static",
                                        weight_max=wmax)
        qmodel = Model(qgraph, device=model.device, strict=model.strict)
    else:
        qgraph, layers = quantize_graph(source, per_channel=per_channel, mode="dynamic",
                                        weight_max=wmax)
        qmodel = Model(qgraph, device=model.device, strict=model.strict)
        qmodel = qmodel._derived(mark_precision(qmodel.graph, "int8"))
    names = reduced_layers(qmodel.graph)
    if sample is None and first_rows is not None:
        sample = first_rows
    choices = _choose(qmodel, names, "int8", choose, sample)
    slower = [name for name, c in choices.items() if c.precision == "fp32"]
    out = qmodel._derived(drop_precision(qmodel.graph, slower)) if slower else qmodel
    out.precision_report = CompressionReport(
        "int8", mode=mode, method=method if mode == "static" else "", per_channel=per_channel,
        bytes_before=size, bytes_after=weight_bytes(qgraph), layers=list(choices.values()),
        backend=lowp_backend("int8"),
        notes=[f"{name} not quantised: {info['reason']}" for name, info in layers.items()
               if not info["quantized"]]
        + (["7-bit weights (reduce_range): without VNNI, int8 GEMMs sum 8-bit weights' "
            "products in saturating int16"] if reduce_range else [])
        + (["save() writes every layer quantised (QDQ); which run int8 is this machine's "
            "choice"] if slower else []))
    return out


def calibrate(model: Model, calibration: Any, *, method: str = "minmax",
              percentile: float = 99.999, client: Any = None, batch_size: int = 32,
              input_name: str | None = None, graph: Graph | None = None
              ) -> tuple[dict[str, tuple[float, float]], dict[str, np.ndarray]]:
    """The ``(lo, hi)`` range of every value static int8 quantises in ``graph`` (default:
    ``model.source_graph``; a graph ``model`` computes), from ``calibration``.

    In-memory data runs in this process; a Dask array or a Zarr path/URL as a map-reduce on a
    Dask cluster (``client``, else a temporary local one: :mod:`taskflow.dask.calibrate`).
    Returns the ranges and the first :data:`SAMPLE_BATCH` rows (the per-layer timing sample).

    Examples
    --------
    >>> import numpy as np
    >>> from taskflow.demo import load_digits_model
    >>> ranges, _ = calibrate(load_digits_model(), np.ones((4, 1, 8, 8), np.float32))
    >>> ranges["input"]
    (0.0, 1.0)
    """
    target = calibration_target(model, graph)
    if isinstance(calibration, (str, os.PathLike)) or _is_dask(calibration) or (
            isinstance(calibration, Mapping) and any(_is_dask(v) or isinstance(v, (
                str, os.PathLike)) for v in calibration.values())):
        from taskflow.dask.calibrate import cluster_ranges

        return cluster_ranges(model, target, calibration, method=method, percentile=percentile,
                              client=client, batch_size=batch_size, input_name=input_name)
    feed = {k: np.asarray(v) for k, v in
            as_feed(model, calibration, input_name, what="calibration data").items()}
    if any(len(v) == 0 for v in feed.values()):
        raise InputError("calibration data has no rows")
    ranges = calibration_stats(target, feed, batch_size)
    hist = calibration_stats(target, feed, batch_size, ranges) if method != "minmax" else None
    first = {k: v[:SAMPLE_BATCH] for k, v in feed.items()}
    return choose_ranges(ranges, hist, method, percentile), first


def _is_dask(x: Any) -> bool:
    return type(x).__module__.startswith("dask.array")
