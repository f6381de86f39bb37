"""Reduced precision: bf16 and int8 layers chosen by measurement, calibration, the report.

:meth:`taskflow.Model.with_precision`, :meth:`taskflow.Model.quantize` and
``taskflow.load(precision=...)`` delegate here. The graph passes live in
:mod:`taskflow.ir.quantize` (mark layers, insert QDQ) and :mod:`taskflow.ir.calibrate` (range
and histogram statistics); the kernels in :mod:`taskflow.ops.cpu.lowp`. This package decides
*which* layers run reduced (each contraction's reduced kernel against its fp32 kernel, timed on
the layer's own inputs: whether bf16 or int8 pays depends on the CPU's matrix units and on the
layer's shape), calibrates (in process, or on a Dask cluster with
:mod:`taskflow.dask.calibrate`), and measures what the model lost and gained
(:func:`evaluate`, :class:`CompressionReport`).

Modules: :mod:`~taskflow.precision.measure` (per-layer choice, ``with_precision``),
:mod:`~taskflow.precision.calibration` (calibration, ``quantize``),
:mod:`~taskflow.precision.report` (the report, ``evaluate``),
:mod:`~taskflow.precision.sparse` (sparse or dense kernels after unstructured pruning).
"""

from __future__ import annotations

from taskflow.precision.calibration import calibrate, quantize
from taskflow.precision.measure import (
    PRECISIONS,
    check_precision,
    choose_by_measurement,
    sample_feed,
    with_precision,
)
from taskflow.precision.report import CompressionReport, LayerChoice, evaluate

__all__ = [
    "PRECISIONS",
    "CompressionReport",
    "LayerChoice",
    "calibrate",
    "check_precision",
    "choose_by_measurement",
    "evaluate",
    "quantize",
    "sample_feed",
    "with_precision",
]
