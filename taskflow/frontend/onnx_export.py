"""Write a taskflow :class:`~taskflow.ir.graph.Graph` back to ONNX.

Canonical nodes are valid at the newest opset; the default export opset is the oldest one at
which every node's canonical form and op exist, but at least :data:`BASE_OPSET`, so ONNX Runtime
(1.31 loads opsets <= 26 and IR <= 11) runs the result.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from taskflow.frontend.opsets import canonical_since
from taskflow.ir.graph import Graph, Node, Value

#: Default floor for the export opset: widely supported and newer than every adapter but one.
BASE_OPSET = 21
#: IR version ONNX Runtime 1.31 accepts (onnx 1.23 would write 14, which it refuses).
DEFAULT_IR_VERSION = 11
#: Opset version written for non-default domains such as ``"taskflow"`` (fused ops).
CUSTOM_DOMAIN_VERSION = 1


def to_onnx(graph: Graph, *, opset: int | None = None,
            ir_version: int = DEFAULT_IR_VERSION) -> onnx.ModelProto:
    """Convert ``graph`` to an ``onnx.ModelProto``.

    Parameters
    ----------
    graph : Graph
        Canonical graph (as :func:`taskflow.frontend.onnx_import.load_onnx` returns).
    opset : int, optional
        Default-domain opset to declare; by default the oldest that fits every node, at
        least :data:`BASE_OPSET`.
    ir_version : int
        IR version to declare (11: what ONNX Runtime 1.31 loads).

    Examples
    --------
    >>> model = to_onnx(load_onnx("resnet50.onnx"))        # doctest: +SKIP
    >>> onnx.checker.check_model(model, full_check=True)   # doctest: +SKIP
    """
    if opset is None:
        opset = default_opset(graph)
    nodes = [_node(n, opset) for n in graph.nodes]
    interface = set(graph.input_names) | set(graph.output_names)
    produced = {o for n in graph.nodes for o in n.outputs if o}
    value_info = [_value_info(v) for name, v in graph.values.items()
                  if name in produced and name not in interface and v.dtype is not None]
    g = helper.make_graph(nodes, graph.name, [_value_info(v) for v in graph.inputs],
                          [_value_info(v) for v in graph.outputs], value_info=value_info)
    for name, array in graph.initializers.items():
        _add_initializer(g, name, np.asarray(array))
    imports = [helper.make_opsetid("", opset)]
    imports += [helper.make_opsetid(d, CUSTOM_DOMAIN_VERSION)
                for d in sorted({n.domain for n in graph.nodes if n.domain})]
    model = helper.make_model(g, opset_imports=imports, producer_name="taskflow")
    model.ir_version = ir_version
    return model


def default_opset(graph: Graph) -> int:
    """The oldest opset >= :data:`BASE_OPSET` at which every default-domain node is valid."""
    introduced = _introduced()
    return max([BASE_OPSET] + [max(canonical_since(n.op), introduced.get(n.op, 1))
                               for n in graph.nodes if not n.domain])


_INTRODUCED: dict[str, int] = {}


def _introduced() -> dict[str, int]:
    """Op -> the first default-domain opset that has it."""
    if not _INTRODUCED:
        for s in onnx.defs.get_all_schemas_with_history():
            if s.domain in ("", "ai.onnx"):
                _INTRODUCED[s.name] = min(_INTRODUCED.get(s.name, s.since_version),
                                          s.since_version)
    return _INTRODUCED


def _node(n: Node, opset: int) -> onnx.NodeProto:
    proto = helper.make_node(n.op, list(n.inputs), list(n.outputs), name=n.name or None,
                             domain=n.domain or None)
    for key, value in n.attrs.items():
        proto.attribute.append(_attribute(n, key, value, opset))
    return proto


def _attribute(n: Node, key: str, value, opset: int) -> onnx.AttributeProto:
    if isinstance(value, np.ndarray):
        return helper.make_attribute(key, numpy_helper.from_array(value))
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        value = [v.item() if isinstance(v, np.generic) else v for v in value]
        if not value:  # an empty list has no element to infer the type from: ask the schema
            return helper.make_attribute(key, value, attr_type=_schema_type(n, key, opset))
        if isinstance(value[0], np.ndarray):
            return helper.make_attribute(key, [numpy_helper.from_array(v) for v in value])
    return helper.make_attribute(key, value)


def _schema_type(n: Node, key: str, opset: int) -> int:
    try:
        return onnx.defs.get_schema(n.op, opset, n.domain).attributes[key].type
    except (onnx.defs.SchemaError, KeyError):
        return onnx.AttributeProto.INTS


def _add_initializer(g: onnx.GraphProto, name: str, array: np.ndarray) -> None:
    """Append in place: ``make_graph(initializer=...)`` would copy every weight once more."""
    if array.dtype.kind not in "iuf":  # bool, strings, exotic floats: let onnx encode them
        g.initializer.append(numpy_helper.from_array(array, name))
        return
    t = g.initializer.add()
    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    t.dims.extend(array.shape)
    t.raw_data = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()


def _value_info(v: Value) -> onnx.ValueInfoProto:
    if v.dtype is None:
        return helper.make_empty_tensor_value_info(v.name)
    elem = helper.np_dtype_to_tensor_dtype(v.dtype)
    shape = None if v.shape is None else list(v.shape)
    return helper.make_tensor_value_info(v.name, elem, shape)
