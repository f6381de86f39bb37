"""taskflow: batch neural-network inference as a Dask task graph.

Examples
--------
>>> import taskflow as tf                                       # doctest: +SKIP
>>> model = tf.load("resnet50.onnx")                            # doctest: +SKIP
>>> probs = model.run(None, {"data": x})[0]                     # doctest: +SKIP
"""

from __future__ import annotations

from taskflow import errors
from taskflow._version import __version__  # noqa: F401  (taskflow.__version__)
from taskflow.errors import (
    DTypeError,
    GraphError,
    InputError,
    ModelLoadError,
    ShapeError,
    TaskflowError,
    ThreadBudgetError,
    UnsupportedOpError,
    WorkerDiedError,
)
from taskflow.frontend import nn  # noqa: F401  (tf.nn.Sequential, the layer builder)
from taskflow.ir.graph import Graph, Node, Value
from taskflow.model import Model, ModelInfo, NodeArg, load
from taskflow.pipeline import Pipeline, PipelineError, Stage, load_pipeline


def __getattr__(name: str):
    # Cluster pulls in distributed: import it on first use so `import taskflow` stays light.
    if name == "Cluster":
        from taskflow.dask.cluster import Cluster

        return Cluster
    if name == "infer_zarr":  # likewise: distributed and zarr load on first use
        from taskflow.stream.infer import infer_zarr

        return infer_zarr
    raise AttributeError(f"module 'taskflow' has no attribute {name!r}")


__all__ = [
    "Cluster",
    "ThreadBudgetError",
    "DTypeError",
    "Graph",
    "GraphError",
    "InputError",
    "Model",
    "ModelInfo",
    "ModelLoadError",
    "Node",
    "NodeArg",
    "Pipeline",
    "PipelineError",
    "Stage",
    "load_pipeline",
    "ShapeError",
    "TaskflowError",
    "UnsupportedOpError",
    "Value",
    "WorkerDiedError",
    "errors",
    "infer_zarr",
    "load",
]
