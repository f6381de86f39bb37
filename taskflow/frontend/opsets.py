"""Upgrade old-opset ONNX nodes to taskflow's canonical (newest-opset) form.

One table, :data:`ADAPTERS`, keyed by ``(op, first opset of the new form)``. A node from a model
whose default-domain opset is below that version is rewritten by the adapter: attributes that
newer opsets take as inputs become int64/float initializers, dropped attributes are removed, and
ops whose semantics changed are re-expressed (Upsample -> Resize, coerce-to-2D Softmax). Adapters
for one op run in version order, so a Split from opset 11 first gets its ``split`` input (13)
and then ``num_outputs`` (18). An adapter that renames the op produces the newest form at once.

An adapter raises :class:`Unsupported` with a reason when an old form has no canonical
equivalent (BatchNormalization with ``spatial=0``); the importer lists it with the others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from taskflow.ir.graph import Graph, Node, Shape, Value


class Unsupported(Exception):
    """An old-opset node has no canonical equivalent; the message says why."""


@dataclass
class Context:
    """What an adapter may read and add while rewriting one node."""

    graph: Graph
    opset: int
    #: Nodes an adapter inserts *before* the node being rewritten.
    before: list[Node] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _used: set[str] | None = None

    def const(self, base: str, value: np.ndarray) -> str:
        """Add an initializer with a fresh name; return the name."""
        name = self.graph.unique_name(base)
        self.graph.initializers[name] = np.asarray(value)
        return name

    def value_name(self, base: str) -> str:
        name = self.graph.unique_name(base)
        self.graph.values[name] = Value(name)  # reserve: unique_name sees graph.values
        return name

    def shape(self, name: str) -> Shape | None:
        if name in self.graph.initializers:
            return tuple(self.graph.initializers[name].shape)
        for v in self.graph.inputs:
            if v.name == name:
                return v.shape
        v = self.graph.values.get(name)
        return v.shape if v is not None else None

    def dtype(self, name: str, default: type = np.float32) -> np.dtype:
        if name in self.graph.initializers:
            return self.graph.initializers[name].dtype
        v = next((v for v in self.graph.inputs if v.name == name), self.graph.values.get(name))
        return v.dtype if v is not None and v.dtype is not None else np.dtype(default)

    def used(self, name: str) -> bool:
        """Whether a value is read by any node or is a graph output."""
        if self._used is None:
            self._used = {i for n in self.graph.nodes for i in n.inputs if i}
            self._used.update(self.graph.output_names)
        return name in self._used


Adapter = Callable[[Node, Context], "list[Node] | None"]


def _set_input(node: Node, index: int, name: str) -> None:
    while len(node.inputs) <= index:
        node.inputs.append("")
    node.inputs[index] = name


def _attr_to_input(node: Node, ctx: Context, attr: str, index: int, dtype=np.int64) -> None:
    """Move attribute ``attr`` (if present) to input ``index`` as a constant."""
    if attr not in node.attrs:
        return
    value = np.asarray(node.attrs.pop(attr), dtype=dtype)
    _set_input(node, index, ctx.const(f"{node.name}_{attr}", value))


def _const_input(node: Node, ctx: Context, index: int) -> np.ndarray | None:
    if index < len(node.inputs) and node.inputs[index] in ctx.graph.initializers:
        return ctx.graph.initializers[node.inputs[index]]
    return None


# --- adapters ------------------------------------------------------------------------------------
def axes_to_input(node: Node, ctx: Context) -> None:
    """Reduce*/Squeeze/Unsqueeze: ``axes`` attribute -> input 1."""
    _attr_to_input(node, ctx, "axes", 1)


def split_to_input(node: Node, ctx: Context) -> None:
    _attr_to_input(node, ctx, "split", 1)


def split_num_outputs(node: Node, ctx: Context) -> None:
    """Opset 18 needs ``num_outputs`` when no ``split`` sizes are given (equal parts)."""
    if len(node.inputs) < 2 or not node.inputs[1]:
        node.attrs.setdefault("num_outputs", len(node.outputs))


def slice_to_inputs(node: Node, ctx: Context) -> None:
    for index, attr in ((1, "starts"), (2, "ends"), (3, "axes")):
        _attr_to_input(node, ctx, attr, index)


def pad_to_inputs(node: Node, ctx: Context) -> None:
    _attr_to_input(node, ctx, "pads", 1)
    value = node.attrs.pop("value", 0.0)
    if value != 0.0:
        dtype = ctx.dtype(node.inputs[0])
        _set_input(node, 2, ctx.const(f"{node.name}_value", np.asarray(value, dtype)))


def clip_to_inputs(node: Node, ctx: Context) -> None:
    dtype = ctx.dtype(node.inputs[0])
    for index, attr in ((1, "min"), (2, "max")):
        _attr_to_input(node, ctx, attr, index, dtype)


def topk_to_input(node: Node, ctx: Context) -> None:
    if "k" in node.attrs:
        node.attrs["k"] = [node.attrs["k"]]
    _attr_to_input(node, ctx, "k", 1)


def drop_dropout_attrs(node: Node, ctx: Context) -> None:
    """Dropout's ratio is an input from 12 on, and irrelevant at inference either way."""
    for attr in ("ratio", "is_test", "consumed_inputs"):
        node.attrs.pop(attr, None)


def batchnorm_drop_attrs(node: Node, ctx: Context) -> None:
    if node.attrs.pop("spatial", 1) != 1:
        raise Unsupported("spatial=0 (per-activation statistics) has no opset-9+ equivalent")
    for attr in ("is_test", "consumed_inputs"):
        node.attrs.pop(attr, None)


def batchnorm_inference_outputs(node: Node, ctx: Context) -> None:
    """Before 14, BatchNormalization listed training outputs; inference has only Y."""
    extra = [o for o in node.outputs[1:] if o]
    if any(ctx.used(o) for o in extra):
        raise Unsupported("training-mode outputs (running mean/var) are read by the graph")
    del node.outputs[1:]


def scatter_to_elements(node: Node, ctx: Context) -> list[Node]:
    return [Node("ScatterElements", node.inputs, node.outputs, node.attrs, node.name)]


def upsample_to_resize(node: Node, ctx: Context) -> list[Node]:
    """Upsample (7-10) -> Resize(X, "", scales) with the old asymmetric coordinates."""
    mode = node.attrs.get("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise Unsupported(f"mode {mode!r} (expected 'nearest' or 'linear')")
    node = Node("Upsample", list(node.inputs), list(node.outputs), dict(node.attrs), node.name)
    _attr_to_input(node, ctx, "scales", 1, np.float32)
    return _old_resize(node, ctx, mode, floor_only=True)


def resize10_to_resize(node: Node, ctx: Context) -> list[Node]:
    mode = node.attrs.get("mode", "nearest")
    if mode not in ("nearest", "linear"):
        raise Unsupported(f"mode {mode!r} (expected 'nearest' or 'linear')")
    return _old_resize(node, ctx, mode, floor_only=False)


def _old_resize(node: Node, ctx: Context, mode: str, floor_only: bool) -> list[Node]:
    """Opset <= 10 resizing: ``x_in = x_out / scale``; nearest rounds down when upsampling.

    ONNX Runtime (the reference implementation of these old ops) rounds *up* on axes that
    shrink (Resize-10 "simple" mode), so a constant mix of up- and down-scaling becomes two
    Resizes (one per direction; nearest resizing is separable). Upsample never shrinks.
    """
    x, scales = node.inputs[0], node.inputs[1]
    attrs = {"mode": mode, "coordinate_transformation_mode": "asymmetric"}
    if mode == "linear":
        return [Node("Resize", [x, "", scales], node.outputs, attrs, node.name)]
    s = _const_input(node, ctx, 1)
    if floor_only or s is None or np.all(s >= 1):
        if s is None and not floor_only:
            ctx.notes.append(f"Resize {node.name!r} (opset 10): scales are not constant; "
                             "assuming upsampling (nearest_mode='floor')")
        return [Node("Resize", [x, "", scales], node.outputs,
                     {**attrs, "nearest_mode": "floor"}, node.name)]
    if np.all(s <= 1):
        return [Node("Resize", [x, "", scales], node.outputs,
                     {**attrs, "nearest_mode": "ceil"}, node.name)]
    down = ctx.const(f"{node.name}_scales_down", np.minimum(s, 1).astype(np.float32))
    up = ctx.const(f"{node.name}_scales_up", np.maximum(s, 1).astype(np.float32))
    mid = ctx.value_name(f"{node.outputs[0]}_down")
    return [
        Node("Resize", [x, "", down], [mid], {**attrs, "nearest_mode": "ceil"},
             ctx.graph.unique_name(f"{node.name}_down")),
        Node("Resize", [mid, "", up], node.outputs, {**attrs, "nearest_mode": "floor"},
             node.name),
    ]


def resize_empty_inputs(node: Node, ctx: Context) -> None:
    """Opset 11-12 Resize passed unused roi/scales as empty tensors; 13 omits them."""
    if node.attrs.get("coordinate_transformation_mode") == "tf_half_pixel_for_nn":
        raise Unsupported("coordinate_transformation_mode 'tf_half_pixel_for_nn' was removed "
                          "in opset 13 and has no equivalent")
    for index in (1, 2):
        value = _const_input(node, ctx, index)
        if value is not None and value.size == 0:
            node.inputs[index] = ""


def softmax_axis(node: Node, ctx: Context) -> list[Node] | None:
    """Softmax/LogSoftmax/Hardmax before 13 coerce the input to 2-D at ``axis`` (default 1).

    When every dimension after ``axis`` is the last one or static 1, the new per-axis
    semantics coincide and only ``axis`` is set; otherwise Flatten -> op(axis=1) -> Reshape.
    """
    axis = int(node.attrs.get("axis", 1))
    shape = ctx.shape(node.inputs[0])
    if shape is not None:
        a = axis + len(shape) if axis < 0 else axis
        if all(d == 1 for d in shape[a + 1:]):
            node.attrs["axis"] = a
            return None
    x, out = node.inputs[0], node.outputs[0]
    flat, soft, shp = (ctx.value_name(f"{out}_{s}") for s in ("flat", "2d", "shape"))
    base = node.name or node.op
    return [
        Node("Flatten", [x], [flat], {"axis": axis}, ctx.graph.unique_name(f"{base}_flatten")),
        Node(node.op, [flat], [soft], {"axis": 1}, node.name),
        Node("Shape", [x], [shp], {}, ctx.graph.unique_name(f"{base}_shape")),
        Node("Reshape", [soft, shp], [out], {}, ctx.graph.unique_name(f"{base}_reshape")),
    ]


REDUCE_OPS = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")

#: (op, first opset of the new form) -> adapter. Applied when the model's opset is lower.
ADAPTERS: dict[tuple[str, int], Adapter] = {
    **{(op, 18): axes_to_input for op in REDUCE_OPS},
    ("ReduceSum", 13): axes_to_input,
    ("Squeeze", 13): axes_to_input,
    ("Unsqueeze", 13): axes_to_input,
    ("Split", 13): split_to_input,
    ("Split", 18): split_num_outputs,
    ("Slice", 10): slice_to_inputs,
    ("TopK", 10): topk_to_input,
    ("Pad", 11): pad_to_inputs,
    ("Clip", 11): clip_to_inputs,
    ("Dropout", 12): drop_dropout_attrs,
    ("BatchNormalization", 9): batchnorm_drop_attrs,
    ("BatchNormalization", 14): batchnorm_inference_outputs,
    ("Upsample", 11): upsample_to_resize,  # deprecated in 10, gone in 11
    ("Resize", 11): resize10_to_resize,
    ("Resize", 13): resize_empty_inputs,
    ("Scatter", 12): scatter_to_elements,  # deprecated alias of ScatterElements (11)
    ("Softmax", 13): softmax_axis,
    ("LogSoftmax", 13): softmax_axis,
    ("Hardmax", 13): softmax_axis,
}

_BY_OP: dict[str, list[tuple[int, Adapter]]] = {}
for (_op, _version), _fn in sorted(ADAPTERS.items(), key=lambda kv: kv[0][1]):
    _BY_OP.setdefault(_op, []).append((_version, _fn))


def canonical_since(op: str) -> int:
    """The first opset at which ``op``'s canonical form is valid (1 if it never changed)."""
    return max((v for v, _ in _BY_OP.get(op, [])), default=1)


def canonicalize(graph: Graph, opset: int) -> tuple[dict[str, str], list[str]]:
    """Rewrite ``graph``'s default-domain nodes in place from ``opset`` to canonical form.

    Returns
    -------
    unsupported : dict of str to str
        Node name -> reason, for nodes with no canonical equivalent (left unchanged).
    notes : list of str
        Remarks for ``graph.notes`` (assumptions an adapter made).
    """
    ctx = Context(graph, opset)
    unsupported: dict[str, str] = {}
    out: list[Node] = []
    for node in list(graph.nodes):
        if node.domain:
            out.append(node)
            continue
        current = [node]
        for version, adapt in _BY_OP.get(node.op, []):
            if opset >= version:
                continue
            try:
                result = adapt(node, ctx)
            except Unsupported as exc:
                unsupported[node.name] = f"opset {opset} form: {exc}"
                break
            if result is not None:
                current = result
                if len(result) > 1 or result[0].op != node.op:
                    break  # renamed or expanded: the adapter produced the newest form
                node = result[0]
        out.extend(current)
    graph.nodes[:] = out
    return unsupported, ctx.notes
