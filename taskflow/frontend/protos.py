"""ONNX protobuf values as Python values: node attributes and Constant nodes.

Shared by the importer (:mod:`taskflow.frontend.onnx_import`) and the ``If`` inliner
(:mod:`taskflow.frontend.control_flow`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


class BadAttribute(Exception):
    """An attribute taskflow cannot represent (its message says which and why)."""


#: What onnx's numpy_helper raises on a tensor whose fields disagree (data shorter than its
#: dims, an undefined or unknown element type, undecodable strings).
_TENSOR_ERRORS = (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError,
                  OverflowError)


def tensor_array(t: onnx.TensorProto, where: str) -> np.ndarray:
    """``t`` as a writable numpy array, or a :class:`~taskflow.errors.ModelLoadError` naming
    the tensor and ``where`` it is (the file).

    numpy_helper reads raw data in place, read-only; Numba compiles a kernel once per
    argument type, and read-only is part of the type. A model's read-only biases and weight
    views took a compilation of their own for each kernel after ``taskflow warmup`` had
    compiled the writable ones (MobileNetV3's first run: 9 kernels, ~80 s), so initializers
    are copied once here (:func:`taskflow.ops.cpu.common.vector` did so per call for some
    kernels' biases only)."""
    try:
        a = numpy_helper.to_array(t)
        return a if a.flags.writeable else a.copy()
    except _TENSOR_ERRORS as exc:
        from taskflow.errors import ModelLoadError

        dims = list(t.dims)
        raise ModelLoadError(f"{where}: tensor {t.name!r} (dims {dims}, element type "
                             f"{t.data_type}) cannot be read: {exc}; the file is corrupt or was "
                             "written by a broken exporter") from exc


_SIMPLE = {
    onnx.AttributeProto.INT: lambda a: int(a.i),
    onnx.AttributeProto.FLOAT: lambda a: float(a.f),
    onnx.AttributeProto.STRING: lambda a: a.s.decode("utf-8"),
    onnx.AttributeProto.INTS: lambda a: [int(x) for x in a.ints],
    onnx.AttributeProto.FLOATS: lambda a: [float(x) for x in a.floats],
    onnx.AttributeProto.STRINGS: lambda a: [s.decode("utf-8") for s in a.strings],
    onnx.AttributeProto.TENSOR: lambda a: tensor_array(a.t, f"attribute {a.name!r}"),
    onnx.AttributeProto.TENSORS: lambda a: [tensor_array(t, f"attribute {a.name!r}")
                                            for t in a.tensors],
}


def attrs_of(proto: onnx.NodeProto, domain: str) -> dict:
    """A node's attributes as Python values; an ``If``'s branches stay ``GraphProto``s (for
    :func:`~taskflow.frontend.control_flow.inline_ifs`); any other subgraph attribute raises
    :class:`BadAttribute`."""
    if proto.op_type == "If" and not domain:
        return {a.name: _graph_copy(a.g) if a.type == onnx.AttributeProto.GRAPH
                else attr_value(a) for a in proto.attribute}
    return {a.name: attr_value(a) for a in proto.attribute}


def _graph_copy(g: onnx.GraphProto) -> onnx.GraphProto:
    """A branch of our own: inlining renames inside nested branches (the model is not ours)."""
    out = onnx.GraphProto()
    out.CopyFrom(g)
    return out


def attr_value(a: onnx.AttributeProto):
    fn = _SIMPLE.get(a.type)
    if fn is None:
        kind = onnx.AttributeProto.AttributeType.Name(a.type)
        raise BadAttribute(f"attribute {a.name!r} of type {kind} (subgraphs, sparse tensors and "
                       "types are not supported)")
    return fn(a)


def constant(attrs: dict) -> np.ndarray:
    (key, v), = attrs.items()
    if key == "value":
        return np.asarray(v)
    dtype = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
             "value_ints": np.int64, "value_string": object, "value_strings": object}[key]
    return np.asarray(v, dtype=dtype)
