"""taskflow: batch neural-network inference as a Dask task graph.

Examples
--------
>>> import taskflow as tf                                       # doctest: +SKIP
>>> model = tf.load("resnet50.onnx")                            # doctest: +SKIP
>>> probs = model.run(None, {"data": x})[0]                     # doctest: +SKIP
"""

from __future__ import annotations

from . import errors
from .errors import (
    DTypeError,
    GraphError,
    InputError,
    ModelLoadError,
    ShapeError,
    TaskflowError,
    UnsupportedOpError,
)
from .graph import Graph, Node, Value
from .model import Model, ModelInfo, NodeArg, load

__version__ = "0.1.0"

__all__ = [
    "DTypeError",
    "Graph",
    "GraphError",
    "InputError",
    "Model",
    "ModelInfo",
    "ModelLoadError",
    "Node",
    "NodeArg",
    "ShapeError",
    "TaskflowError",
    "UnsupportedOpError",
    "Value",
    "errors",
    "load",
]
