"""Multi-stage, multi-model inference: :class:`Pipeline` and :class:`Stage`.

A pipeline runs in process (:meth:`Pipeline.run`), lazily as one Dask graph
(:meth:`Pipeline.predict`, :mod:`taskflow.dask.pipeline`) and streamed Zarr -> Zarr
(``taskflow.infer_zarr(pipeline, ...)``); ``taskflow run pipeline.yaml`` reads one from a file
(:mod:`taskflow.pipeline.config`). Ready steps are in :mod:`taskflow.pipeline.steps`.
"""

from __future__ import annotations

from taskflow.pipeline.config import load_pipeline
from taskflow.pipeline.core import Pipeline, PipelineError, Stage, with_postprocess

__all__ = ["Pipeline", "PipelineError", "Stage", "load_pipeline", "with_postprocess"]
